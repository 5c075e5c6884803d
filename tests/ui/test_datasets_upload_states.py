"""The Datasets tab's upload panel with no file, or with one it cannot read: nothing claims rows are valid."""

from __future__ import annotations

import json
from functools import partial

import gradio as gr
import pytest

from app import tab_datasets
from app.ui import friendly


def test_no_file_reports_nothing_and_offers_no_import(services):
    out = tab_datasets.inspect_file(services, None)
    assert "valid" not in out["report"]  # was "✓ All 0 rows are valid."
    assert out["import_btn"]["interactive"] is False and out["import_btn"]["value"] == "Import"
    assert out["drop_btn"]["visible"] is False and out["problems"]["visible"] is False


def test_an_empty_file_is_said_in_the_panel_and_clears_the_previous_report(services, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    # Wrapped as the tab wires it: a refusal there is a toast beside the last file's report and buttons.
    out = friendly(partial(tab_datasets.inspect_file, services))(file=str(empty))
    assert out["detected"] == "⚠ empty.jsonl is empty. Fix the file and upload it again."
    assert out["report"] == "" and out["import_btn"]["interactive"] is False
    assert out["mapping_box"]["visible"] is False and out["raw_preview"]["visible"] is False


def _write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_a_file_with_bad_rows_does_not_offer_its_good_rows_on_the_disabled_button(services, tmp_path):
    rows = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(3)]
    out = tab_datasets.inspect_file(services, _write_rows(tmp_path / "a.jsonl", [*rows, "not json"]))
    assert out["import_btn"]["interactive"] is False
    assert out["import_btn"]["value"] == "Import (fix or drop the rows above first)"  # was "Import 3 rows"
    assert out["drop_btn"]["visible"] is True and out["drop_btn"]["value"] == "Drop this row and import"


def test_a_new_upload_clears_the_last_import_message(services, tmp_path):
    rows = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(2)]
    path = _write_rows(tmp_path / "b.jsonl", rows)
    assert tab_datasets.inspect_file(services, path)["import_status"] == ""
    assert tab_datasets.inspect_file(services, None)["import_status"] == ""


def test_check_mapping_without_a_format_asks_for_the_format(services, tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("question,answer\nwhat is 1+1,2\n")
    maps = {f"map_{f}": tab_datasets.NONE for f in tab_datasets.MAP_FIELDS}
    with pytest.raises(gr.Error, match="Choose the format first"):
        tab_datasets.check_mapping(services, str(path), None, **maps)


def test_the_stored_preview_is_hidden_until_a_dataset_is_chosen_and_counts_dropped_rows(services, tmp_path):
    # An empty table without headers showed made-up columns "1 2 3".
    assert tab_datasets.show_dataset(services, None)["preview"]["visible"] is False
    rows = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(2)]
    out = tab_datasets.import_file(
        services, _write_rows(tmp_path / "c.jsonl", [*rows, "not json"]), "c", False, None, drop_invalid=True
    )
    assert out["preview"]["visible"] is True and out["preview"]["value"]["headers"] == ["messages"]
    assert "1 row was dropped at import (invalid)." in out["dataset_info"]  # was "1 invalid rows were dropped"
