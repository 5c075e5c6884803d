"""Datasets tab with prose uploads: the split choice shows for .txt/.md only, and imports follow it."""

from __future__ import annotations

import json
from functools import partial

import gradio as gr
import pytest

from app import tab_datasets
from app.ui import friendly

PROSE = "First paragraph,\nstill the first.\n\nSecond paragraph.\n"


def value(update):
    """The value of a gr.update dict, or the plain value a handler returned."""
    return update.get("value") if isinstance(update, dict) and "__type__" in update else update


@pytest.fixture(params=[".txt", ".md"])
def prose_file(request, tmp_path):
    path = tmp_path / f"essay{request.param}"
    path.write_text(PROSE, encoding="utf-8")
    return str(path)


def test_split_choice_is_shown_for_prose_and_changes_the_rows(services, prose_file):
    by_paragraph = tab_datasets.inspect_file(services, prose_file, split_by="paragraph")
    assert by_paragraph["split_by"]["visible"] is True
    assert "Detected **text**" in by_paragraph["detected"] and "2 rows" in by_paragraph["detected"]
    assert by_paragraph["needs_mapping"] is False
    assert value(by_paragraph["raw_preview"])["data"] == [["First paragraph,\nstill the first."], ["Second paragraph."]]
    assert by_paragraph["import_btn"]["interactive"] is True and by_paragraph["import_btn"]["value"] == "Import 2 rows"

    whole = tab_datasets.inspect_file(services, prose_file, split_by="file")
    assert "1 rows" in whole["detected"] and "the whole file is one document" in whole["detected"]
    assert whole["import_btn"]["value"] == "Import 1 row"
    assert services.datasets.list() == []  # inspecting stores nothing


def test_split_choice_is_hidden_for_files_with_rows_and_when_nothing_is_uploaded(services, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"text": "hello"}) + "\n", encoding="utf-8")
    # The radio keeps its value while hidden; it must not reach the service for a JSONL file.
    out = tab_datasets.inspect_file(services, str(path), split_by="paragraph")
    assert out["split_by"]["visible"] is False and "Detected **text**" in out["detected"]
    assert tab_datasets.inspect_file(services, None)["split_by"]["visible"] is False
    tab_datasets.import_file(services, str(path), "", False, None, split_by="file")
    [row] = services.datasets.list()
    assert row.rows == 1 and "split_by" not in row.report


@pytest.mark.parametrize(("split_by", "texts"), [
    ("paragraph", ["First paragraph,\nstill the first.", "Second paragraph."]),
    ("file", [PROSE]),
    (None, ["First paragraph,\nstill the first.", "Second paragraph."]),  # the radio's default
])  # fmt: skip
def test_import_prose_by_the_chosen_split(services, prose_file, split_by, texts):
    out = tab_datasets.import_file(services, prose_file, "My essay", False, None, split_by=split_by)
    [row] = services.datasets.list()
    assert (row.name, row.format, row.rows) == ("My essay", "text", len(texts))
    assert [r["text"] for r in services.datasets.load_rows(row.id)] == texts
    assert out["datasets"][0][:4] == [row.id, "My essay", "text", len(texts)]
    assert "task causal-lm" in out["dataset_info"]


def test_prose_named_jsonl_says_not_json_in_the_panel_and_on_import(services, tmp_path):
    path = tmp_path / "essay.jsonl"
    path.write_text(PROSE, encoding="utf-8")
    said = (
        "essay.jsonl: line 1, column 1: not JSON (Expecting value) — is this a .txt file? "
        "rename it to .txt to import it as text"
    )
    out = friendly(partial(tab_datasets.inspect_file, services))(file=str(path))
    assert out["detected"] == f"⚠ {said}. Fix the file and upload it again."
    with pytest.raises(gr.Error) as info:
        friendly(partial(tab_datasets.import_file, services))(
            file=str(path), name="", needs_mapping=False, map_format=None
        )
    assert info.value.message == said
    assert services.datasets.list() == []


def test_the_tab_offers_md_uploads_and_wires_the_split_choice(services):
    assert {".txt", ".md"} <= set(tab_datasets.FILE_TYPES)
    with gr.Blocks() as demo, gr.Tab("Datasets") as tab:
        tab_datasets.build(services, tab, demo)
    radios = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "ds-split-by"]
    assert len(radios) == 1 and radios[0].visible is False
    [radio] = radios
    # The upload, the radio itself and both import buttons read the radio.
    readers = {fn.name for fn in demo.fns.values() if radio in fn.inputs}
    assert readers == {"inspect_file", "import_file"}
    assert sum(1 for fn in demo.fns.values() if radio in fn.inputs) == 4
