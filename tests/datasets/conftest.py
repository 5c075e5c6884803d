"""Fixtures for the dataset ingestion tests: tiny files written into tmp_path, and a service."""

from __future__ import annotations

import csv
import json

import pytest

from models_db.registry import Registry
from studio.services.datasets import DatasetService
from studio.settings import Settings


@pytest.fixture
def write_jsonl(tmp_path):
    """Write rows (dicts, or raw strings for broken lines) as a .jsonl file."""

    def write(rows, name="data.jsonl"):
        path = tmp_path / name
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_csv(tmp_path):
    """Write rows of a header + values as .csv (or .tsv when the name says so)."""

    def write(header, rows, name="data.csv"):
        path = tmp_path / name
        delimiter = "\t" if name.endswith(".tsv") else ","
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow(header)
            writer.writerows(rows)
        return path

    return write


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(data_dir=tmp_path / "studio")
    s.ensure_dirs()
    return s


@pytest.fixture
def registry(tmp_path):
    reg = Registry.from_url(f"sqlite:///{tmp_path}/r.db")
    yield reg
    reg.dispose()


@pytest.fixture
def service(registry, settings) -> DatasetService:
    return DatasetService(registry, settings)
