"""The Datasets tab's upload panel with no file, or with one it cannot read: nothing claims rows are valid."""

from __future__ import annotations

from functools import partial

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
