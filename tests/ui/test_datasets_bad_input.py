"""Datasets tab handlers with hostile files: a message for the user, never a failed handler.

Each handler runs through :func:`app.ui.friendly` as ``bind`` wires it, and what it returns
is rendered the way Gradio's server sends it (orjson), which is where a lone surrogate in
the preview used to crash.
"""

from __future__ import annotations

from functools import partial

import gradio as gr
import pytest
from gradio.routes import ORJSONResponse
from hostile_files import uploads
from hypothesis import HealthCheck, given, settings

from app import tab_datasets
from app.ui import friendly

GOOD = '{"instruction": "say hi", "output": "hi"}'
BAD_FILES = {
    "deep.jsonl": (f'{GOOD}\n{{"instruction": "a", "output": {"[" * 10_000}{"]" * 10_000}}}\n', "row 2 output"),
    "deep.json": (f'[{GOOD}, {{"instruction": "a", "output": {"[" * 10_000}{"]" * 10_000}}}]', "row 2 output"),
    "huge_int.jsonl": (f'{GOOD}\n{{"instruction": "a", "output": "b", "n": {"9" * 5000}}}\n', "row 2 n"),
    "surrogate.jsonl": (f'{GOOD}\n{{"instruction": "a \\ud800", "output": "b"}}\n', "row 2 instruction"),
    "surrogate_key.json": (f'[{GOOD}, {{"instruction": "a", "output": "b", "k\\udc00": 1}}]', "row 2 k\\udc00"),
}


@pytest.fixture(params=sorted(BAD_FILES))
def bad_file(request, tmp_path):
    text, where = BAD_FILES[request.param]
    path = tmp_path / request.param
    path.write_text(text, encoding="utf-8")
    return str(path), where


def user_message(call) -> tuple[dict | None, str]:
    """Run a wrapped handler: (outputs, "") when it returned, (None, toast text) when it refused."""
    try:
        return call(), ""
    except gr.Error as exc:
        return None, exc.message


def test_inspect_gives_a_report_or_a_message_naming_row_and_field(services, bad_file):
    file, where = bad_file
    out, toast = user_message(lambda: friendly(partial(tab_datasets.inspect_file, services))(file=file))
    assert "Something went wrong" not in toast  # that is the catch-all for unexpected exceptions
    if out is not None and out["detected"].startswith("⚠"):  # unreadable: said in the panel, not a toast
        toast = out["detected"].removeprefix("⚠ ")
        out = None
    if out is None:
        assert toast.startswith(f"{file.rsplit('/', 1)[1]}: {where} ")
        return
    ORJSONResponse._render(out)  # what the browser is sent: must be valid UTF-8 JSON
    problems = out["problems"]["value"]
    assert [f"row {p[0]} {p[1]}" for p in problems] == [where]
    assert "1** of 2 rows have problems" in out["report"]


def test_import_refuses_naming_row_and_field_and_stores_nothing(services, bad_file):
    file, where = bad_file
    handler = friendly(partial(tab_datasets.import_file, services))
    out, toast = user_message(lambda: handler(file=file, name="", needs_mapping=False, map_format=None))
    assert out is None and where in toast and "Something went wrong" not in toast
    assert services.datasets.list() == []
    assert not any(services.settings.datasets_dir.iterdir())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(upload=uploads())
def test_inspect_handler_never_fails_on_any_upload(services, tmp_path, upload):
    name, data = upload
    path = tmp_path / name
    path.write_bytes(data)
    out, toast = user_message(lambda: friendly(partial(tab_datasets.inspect_file, services))(file=str(path)))
    assert "Something went wrong" not in toast
    if out is not None:
        ORJSONResponse._render(out)
