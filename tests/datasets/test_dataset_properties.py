"""Property: any bytes under any supported name give a dataset or a StudioError, nothing else.

Supported names include prose (.txt, .md), read per paragraph or per file.

And a refusal leaves nothing behind: no registry row and no files in the datasets folder;
a success stores exactly one row whose canonical JSONL is valid UTF-8 JSON, line by line.
"""

from __future__ import annotations

import json
from pathlib import Path

from hostile_files import PROSE_SUFFIXES, uploads
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from studio.errors import StudioError

# The service fixture is shared by all examples of one test; each example checks what it changed.
splits = st.sampled_from([None, "paragraph", "file"])
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def contents(service) -> tuple[set[int], set[str]]:
    """Registry ids and dataset folders right now."""
    return {d.id for d in service.list()}, {p.name for p in service.settings.datasets_dir.iterdir()}


def split_for(name: str, split_by: str | None) -> str | None:
    """The drawn split for prose; None (the file's own rows) for every other name."""
    return split_by if name.endswith(PROSE_SUFFIXES) else None


@PROPERTY
@given(upload=uploads(), split_by=splits)
def test_inspect_gives_an_inspection_or_a_studio_error(service, tmp_path, upload, split_by):
    name, data = upload
    path = tmp_path / name
    path.write_bytes(data)
    before = contents(service)
    try:
        found = service.inspect(path, split_by=split_for(name, split_by))
    except StudioError as exc:
        assert str(exc).strip() and "\n" not in str(exc)
    else:
        # Everything shown to the user must encode as strict UTF-8: no lone surrogate got through.
        json.dumps(found.to_dict(), ensure_ascii=False).encode("utf-8")
        assert found.rows_total >= 1
    assert contents(service) == before  # inspecting never stores


@PROPERTY
@given(upload=uploads(), drop_invalid=..., split_by=splits)
def test_add_stores_a_whole_dataset_or_nothing(service, tmp_path, upload, drop_invalid: bool, split_by):
    name, data = upload
    path = tmp_path / name
    path.write_bytes(data)
    (ids, folders) = contents(service)
    try:
        row = service.add(path, drop_invalid=drop_invalid, split_by=split_for(name, split_by))
    except StudioError as exc:
        event("refused")
        assert str(exc).strip()
        assert contents(service) == (ids, folders), "a refusal left a registry row or files behind"
        return
    event(f"stored a {path.suffix} file")
    new_ids, new_folders = contents(service)
    assert new_ids == ids | {row.id} and len(new_folders - folders) == 1
    stored = Path(row.stored_path)
    assert Path(row.original_path).read_bytes() == data
    lines = stored.read_bytes().decode("utf-8").splitlines()  # strict UTF-8: no surrogate got through
    assert len(lines) == row.rows >= 1
    for line in lines:
        json.loads(line)
    json.dumps(row.report, ensure_ascii=False).encode("utf-8")
    service.delete(row.id)
