"""Datasets tab: upload, detected format, column mapping, validation report, import, preview, delete."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import gradio as gr

from app.ui import ago, bind, bind_submit, human_bytes, id_choices, new_submission_token
from studio.datasets.formats import FORMATS
from studio.datasets.plain_text import DEFAULT_SPLIT
from studio.errors import StudioError
from studio.services.container import Services

TITLE = "Datasets"
ELEM_ID = "tab-datasets"
FILE_TYPES = [".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".md"]
PROSE_TYPES = (".txt", ".md")  # files without rows: the user picks how they become documents
SPLIT_LABELS = [
    ("One document per paragraph (blank-line separated)", "paragraph"),
    ("The whole file is one document", "file"),
]
MAP_FIELDS = sorted({f for spec in FORMATS.values() for f in spec.fields})
NONE = "(not used)"
LIST_HEADERS = ["id", "name", "format", "rows", "size", "added"]
PROBLEM_HEADERS = ["row", "field", "reason", "detail"]
CELL_CHARS = 160


def _cell(value: Any) -> str:
    """A table cell: conversations read as 'user: … | assistant: …', other values as JSON."""
    if isinstance(value, list) and value and all(isinstance(t, dict) and "role" in t for t in value):
        text = " | ".join(f"{t['role']}: {t.get('content', '')}" for t in value)
    else:
        # default=str: Parquet cells can be bytes, dates or decimals, which JSON has no type for.
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows of dicts as a Dataframe value (headers from the union of keys, in first-seen order)."""
    headers = list(dict.fromkeys(k for row in rows for k in row)) or ["(empty)"]
    return {"headers": headers, "data": [[_cell(row.get(h, "")) for h in headers] for row in rows]}


def dataset_rows(services: Services) -> list[list[Any]]:
    """The datasets list as table rows."""
    return [
        [d.id, d.name, d.format, d.rows, human_bytes(d.size_bytes), ago(d.created_at)] for d in services.datasets.list()
    ]


def dataset_choices(services: Services) -> list[tuple[str, int]]:
    """``(label, id)`` of every dataset, for dropdowns here and in the Train tab."""
    return id_choices(services.datasets.list(), lambda d: f"#{d.id} {d.name} ({d.format}, {d.rows} rows)")


def _mapping_updates(fmt: str | None, mapping: dict[str, str], columns: list[str]) -> dict[str, Any]:
    wanted = set(FORMATS[fmt].fields) if fmt in FORMATS else set()
    return {
        f"map_{f}": gr.update(
            choices=[NONE, *columns], value=mapping.get(f, NONE), visible=f in wanted, label=_field_label(fmt, f)
        )
        for f in MAP_FIELDS
    }


def _field_label(fmt: str | None, field: str) -> str:
    spec = FORMATS.get(fmt or "")
    required = spec is not None and field in spec.required
    return f"{field} ← column" + (" (required)" if required else " (optional)")


def _report_outputs(validation: dict[str, Any] | None, rows_total: int) -> dict[str, Any]:
    if validation is None:
        return {
            "report": "Pick the format and the columns above, then **Check mapping**.",
            "problems": gr.update(value=[], visible=False),
            "import_btn": gr.update(interactive=False, value="Import"),
            "drop_btn": gr.update(visible=False),
        }
    bad, good = validation["rows_invalid"], validation["rows_valid"]
    problems = [[p["row"], p["field"], p["reason"], p["detail"]] for p in validation["problems"]]
    if bad == 0:
        text = f"✓ All **{good}** rows are valid."
    else:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in validation["counts_by_reason"].items())
        text = (
            f"⚠ **{bad}** of {rows_total} rows have problems ({reasons}). Fix the file and upload it again, "
            f"or drop exactly these rows and import the other **{good}**."
        )
        if validation.get("problems_truncated"):
            text += f" (showing the first {len(problems)} problems)"
    # With rows to fix the main button is off and says so: "Import 40 rows" there read as the way forward
    # while the drop button beside it was the one that worked.
    label = f"Import {good} row{'' if good == 1 else 's'}" if bad == 0 else "Import (fix or drop the rows above first)"
    return {
        "report": text,
        "problems": gr.update(value=problems, visible=bool(problems)),
        "import_btn": gr.update(interactive=bad == 0 and good > 0, value=label),
        "drop_btn": gr.update(
            visible=bad > 0 and good > 0, value=f"Drop {'this row' if bad == 1 else f'these {bad} rows'} and import"
        ),
    }


def is_prose(file: str | None) -> bool:
    """Whether ``file`` is a .txt/.md upload, whose split into documents the user chooses."""
    return bool(file) and str(file).lower().endswith(PROSE_TYPES)


def _split_for(file: str | None, split_by: str | None) -> str | None:
    """The split to ask the service for: the radio's value for prose, nothing for files with rows."""
    return (split_by or DEFAULT_SPLIT) if is_prose(file) else None


def _nothing_to_import(detected: str, file: str | None = None) -> dict[str, Any]:
    """The upload panel with no rows to report on: no file yet, or one that cannot be read.

    Not a validation of zero rows: that read "✓ All 0 rows are valid" beside an "Import 0 rows"
    button, and an unreadable file left the previous file's report and mapping on screen.
    """
    return {
        "detected": detected,
        "split_by": gr.update(visible=is_prose(file)),
        "mapping_box": gr.update(visible=False),
        "needs_mapping": False,
        "raw_preview": gr.update(value=None, visible=False),
        "report": "",
        "problems": gr.update(value=[], visible=False),
        "import_btn": gr.update(interactive=False, value="Import"),
        "drop_btn": gr.update(visible=False),
        "import_status": "",
    }


def inspect_file(
    services: Services, file: str | None, split_by: str | None = None, **mapping_inputs: Any
) -> dict[str, Any]:
    """Analyse an uploaded file without storing it: format, columns, mapping proposal, validation.

    A file the studio cannot read (empty, not the type its name says) is said in the panel itself,
    with what to do, instead of a toast over the previous file's report.
    """
    if not file:
        return _nothing_to_import("Upload a file to see its format and any problems.")
    try:
        found = services.datasets.inspect(file, split_by=_split_for(file, split_by))
    except StudioError as exc:
        return _nothing_to_import(f"⚠ {str(exc).rstrip('.')}. Fix the file and upload it again.", file)
    detection = found.detection
    if detection.format is None:
        summary = f"Could not tell which columns to train on ({detection.reason}). Choose a format and columns below."
    elif detection.needs_confirmation:
        summary = (
            f"Looks like **{detection.format}** ({detection.reason}). Please confirm which column is which below, "
            "then **Check mapping**."
        )
    else:
        summary = f"Detected **{detection.format}** ({detection.reason})."
    facts = (
        f"{found.rows_total} rows · {found.file_format.upper()} · {found.encoding} · {human_bytes(found.size_bytes)}"
    )
    notes = "".join(f"\n- {note}" for note in found.notes)
    if detection.sequence:
        notes += f"\n\n🧬 {detection.sequence['description']}.\nLetters: {detection.sequence['letters']}."
    return {
        "detected": f"{summary}\n\n{facts}{notes}",
        "split_by": gr.update(visible=is_prose(file)),
        "mapping_box": gr.update(visible=detection.needs_confirmation or detection.format is None),
        "needs_mapping": detection.needs_confirmation or detection.format is None,
        "map_format": gr.update(value=detection.format),
        **_mapping_updates(detection.format, detection.mapping, found.columns),
        "raw_preview": gr.update(value=_table(found.preview[:10]), visible=bool(found.preview)),
        **_report_outputs(found.validation if not detection.needs_confirmation else None, found.rows_total),
        "import_status": "",  # the last file's "✓ Imported dataset #…" is not this file's
    }


def _chosen_mapping(map_format: str | None, values: dict[str, Any]) -> dict[str, str]:
    wanted = FORMATS[map_format].fields if map_format in FORMATS else ()
    return {f: values[f"map_{f}"] for f in wanted if values.get(f"map_{f}") not in (None, "", NONE)}


def check_mapping(services: Services, file: str | None, map_format: str | None, **values: Any) -> dict[str, Any]:
    """Validate the file read through the user's mapping (nothing is stored)."""
    if not file:
        raise gr.Error("Upload a file first.")
    if map_format not in FORMATS:
        raise gr.Error("Choose the format first: it decides which columns are needed.")
    mapping = _chosen_mapping(map_format, values)
    if not mapping:
        raise gr.Error("Choose a column for each required field of the format first.")
    found = services.datasets.inspect(file, mapping=mapping)
    out = _report_outputs(found.validation, found.rows_total)
    out["detected"] = f"Using your mapping as **{found.detection.format}**: " + ", ".join(
        f"{k} ← `{v}`" for k, v in found.detection.mapping.items()
    )
    return out


def import_file(
    services: Services,
    file: str | None,
    name: str,
    needs_mapping: bool,
    map_format: str | None,
    drop_invalid: bool = False,
    split_by: str | None = None,
    submission_token: str | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Store the uploaded file as a dataset (dropping the invalid rows only when asked).

    A repeated submit with the same ``submission_token`` (a double click) finds the
    dataset the first one stored instead of adding a second.
    """
    if not file:
        raise gr.Error("Upload a file first.")
    mapping = _chosen_mapping(map_format, values) if needs_mapping else None
    row = services.datasets.add(
        file,
        name=(name or "").strip() or None,
        mapping=mapping,
        drop_invalid=drop_invalid,
        split_by=_split_for(file, split_by),
        submission_token=submission_token,
    )
    dropped = len(row.report.get("dropped_rows") or [])
    message = f"Imported dataset #{row.id} “{row.name}”: {row.rows} rows" + (
        f", {dropped} dropped." if dropped else "."
    )
    gr.Info(message)
    return {
        "import_status": f"✓ {message}",
        "datasets": dataset_rows(services),
        "selected": gr.update(choices=dataset_choices(services), value=row.id),
        **show_dataset(services, row.id),
    }


def show_dataset(services: Services, selected: int | None) -> dict[str, Any]:
    """Preview and summary of one stored dataset."""
    if not selected:
        # Hidden, not empty: an empty table without headers shows made-up columns "1 2 3".
        return {"preview": gr.update(value=None, visible=False), "dataset_info": "Select a dataset to preview it."}
    row = services.datasets.get(int(selected))
    report = row.report or {}
    mapping = ", ".join(f"{k} ← `{v}`" for k, v in (row.mapping or {}).items())
    dropped = report.get("dropped_rows") or []
    info = (
        f"**#{row.id} {row.name}** — {row.format}, {row.rows} rows, task {report.get('task', '?')}"
        f"\n\nColumns: {mapping or '—'}"
        + (f"\n\n{_rows(len(dropped))} dropped at import (invalid)." if dropped else "")
    )
    return {
        "preview": gr.update(value=_table(services.datasets.preview(row.id, 20)), visible=True),
        "dataset_info": info,
    }


def _rows(count: int) -> str:
    """``1 row was`` / ``3 rows were``."""
    return f"{count} row was" if count == 1 else f"{count} rows were"


def delete_dataset(services: Services, selected: int | None) -> dict[str, Any]:
    """Delete the selected dataset (the browser asked for confirmation first; None = not confirmed)."""
    if not selected:
        return {}
    services.datasets.delete(int(selected))
    gr.Info(f"Deleted dataset #{selected}.")
    return {
        "datasets": dataset_rows(services),
        "selected": gr.update(choices=dataset_choices(services), value=None),
        **show_dataset(services, None),
    }


def refresh(services: Services) -> dict[str, Any]:
    """Reload the list (on tab select)."""
    return {"datasets": dataset_rows(services), "selected": gr.update(choices=dataset_choices(services))}


def build(services: Services, tab: gr.Tab, demo: gr.Blocks) -> None:
    """Lay out the tab and wire its events."""
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            gr.Markdown(
                "### Add a dataset\nJSONL, JSON, CSV, TSV or Parquet: chat, instruction or prompt/answer rows; "
                "or prose as .txt/.md."
            )
            c["file"] = gr.File(label="Dataset file", file_types=FILE_TYPES, elem_id="ds-upload")
            c["split_by"] = gr.Radio(
                choices=SPLIT_LABELS,
                value=DEFAULT_SPLIT,
                label="Documents",
                info="How the text file becomes training examples (each is cut at the run's max length).",
                visible=False,
                elem_id="ds-split-by",
            )
            c["name"] = gr.Textbox(label="Name", placeholder="defaults to the file name", elem_id="ds-name")
            c["detected"] = gr.Markdown("Upload a file to see its format and any problems.", elem_id="ds-detected")
            c["needs_mapping"] = gr.State(False)
            with gr.Group(visible=False, elem_id="ds-mapping") as c["mapping_box"]:
                gr.Markdown("**Which column is which?**", padding=True)
                c["map_format"] = gr.Dropdown(
                    choices=list(FORMATS), label="Format", elem_id="ds-map-format", info="What kind of rows these are."
                )
                with gr.Row():
                    for field in MAP_FIELDS:
                        c[f"map_{field}"] = gr.Dropdown(
                            choices=[NONE],
                            value=NONE,
                            label=field,
                            visible=False,
                            elem_id=f"ds-map-{field}",
                            min_width=160,
                        )
                c["check_btn"] = gr.Button("Check mapping", elem_id="ds-check")
            c["report"] = gr.Markdown(elem_id="ds-report")
            c["problems"] = gr.Dataframe(
                headers=PROBLEM_HEADERS,
                label="Rows with problems",
                visible=False,
                interactive=False,
                elem_id="ds-problems",
            )
            with gr.Row():
                c["import_btn"] = gr.Button("Import", variant="primary", interactive=False, elem_id="ds-import")
                c["drop_btn"] = gr.Button(
                    "Drop rows and import", variant="stop", visible=False, elem_id="ds-drop-import"
                )
            c["import_status"] = gr.Markdown(elem_id="ds-import-status")
            # One token per page load, renewed after each import: a double click stores one dataset.
            c["submission_token"] = gr.State(new_submission_token)
            c["raw_preview"] = gr.Dataframe(
                label="First rows of the file", visible=False, interactive=False, max_height=300
            )
        with gr.Column(scale=6, min_width=320):
            gr.Markdown("### Your datasets")
            c["datasets"] = gr.Dataframe(headers=LIST_HEADERS, interactive=False, elem_id="ds-list", max_height=260)
            with gr.Row():
                c["selected"] = gr.Dropdown(label="Dataset", choices=[], value=None, elem_id="ds-selected", scale=4)
                c["delete_btn"] = gr.Button("Delete", variant="stop", elem_id="ds-delete", scale=1, min_width=100)
            c["dataset_info"] = gr.Markdown("Select a dataset to preview it.", elem_id="ds-info")
            c["preview"] = gr.Dataframe(
                label="Preview (as the trainer sees it)", interactive=False, elem_id="ds-preview", visible=False
            )

    map_inputs = {f"map_{f}": c[f"map_{f}"] for f in MAP_FIELDS}
    inspect_out = {
        k: c[k]
        for k in ("detected", "split_by", "mapping_box", "needs_mapping", "map_format", "raw_preview")
        + ("report", "problems", "import_btn", "drop_btn", "import_status")
    } | map_inputs
    inspect_in = {"file": c["file"], "split_by": c["split_by"]}
    bind(c["file"].change, partial(inspect_file, services), inspect_in, inspect_out)
    bind(c["split_by"].input, partial(inspect_file, services), inspect_in, inspect_out)
    bind(
        c["map_format"].input,
        lambda map_format: (
            {f"map_{f}": gr.update(visible=f in FORMATS[map_format].fields) for f in MAP_FIELDS}
            if map_format in FORMATS
            else {}
        ),
        {"map_format": c["map_format"]},
        map_inputs,
    )
    report_out = {k: c[k] for k in ("detected", "report", "problems", "import_btn", "drop_btn")}
    bind(
        c["check_btn"].click,
        partial(check_mapping, services),
        {"file": c["file"], "map_format": c["map_format"]} | map_inputs,
        report_out,
    )
    import_in = {k: c[k] for k in ("file", "name", "needs_mapping", "map_format", "split_by")} | map_inputs
    import_out = {k: c[k] for k in ("datasets", "selected", "preview", "dataset_info")}
    submit_out = import_out | {"import_status": c["import_status"]}
    token = c["submission_token"]
    bind_submit(c["import_btn"], partial(import_file, services), import_in, submit_out, "import_status", token)
    drop_and_import = partial(import_file, services, drop_invalid=True)
    bind_submit(c["drop_btn"], drop_and_import, import_in, submit_out, "import_status", token)
    bind(
        c["selected"].input,
        partial(show_dataset, services),
        {"selected": c["selected"]},
        {k: c[k] for k in ("preview", "dataset_info")},
    )
    bind(
        c["delete_btn"].click,
        partial(delete_dataset, services),
        {"selected": c["selected"]},
        import_out,
        js="(id) => (id && confirm('Delete dataset #' + id + '? Adapters trained on it are kept.')) ? id : null",
    )
    # The first tab is shown without being selected: refresh it on page load too.
    on_show = partial(gr.on, [tab.select, demo.load])
    bind(on_show, partial(refresh, services), {}, {k: c[k] for k in ("datasets", "selected")})
