"""Download archives are reproducible: the checksum shown beside a button matches any later build.

The adapter zip is rebuilt on every request; the browser test once downloaded a second build
whose entries carried a later time than the build whose checksum the page showed.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path

from studio.services.downloads import archive_sha256, write_archive


def _folder(root: Path) -> Path:
    folder = root / "adapter"
    (folder / "sub").mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(50_000))
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "sub" / "labels.json").write_text("[0, 1]")
    return folder


def test_rebuilding_gives_the_same_bytes_whatever_the_file_times(tmp_path):
    folder = _folder(tmp_path)
    target = tmp_path / "out" / "adapter-1.zip"
    first = write_archive(folder, "adapter-1", target, zipfile.ZIP_DEFLATED, {"README.md": b"card"}).read_bytes()
    for path in folder.rglob("*"):
        os.utime(path, (1_900_000_000, 1_900_000_000))  # files touched after the first build
    second = write_archive(folder, "adapter-1", target, zipfile.ZIP_DEFLATED, {"README.md": b"card"}).read_bytes()
    assert first == second
    assert archive_sha256(target) == hashlib.sha256(second).hexdigest()
    with zipfile.ZipFile(target) as archive:
        assert sorted(archive.namelist()) == [
            "adapter-1/README.md",
            "adapter-1/SHA256SUMS",
            "adapter-1/adapter_config.json",
            "adapter-1/adapter_model.safetensors",
            "adapter-1/sub/labels.json",
        ]
        assert (
            archive.read("adapter-1/adapter_model.safetensors") == (folder / "adapter_model.safetensors").read_bytes()
        )
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_changed_content_changes_the_archive(tmp_path):
    folder = _folder(tmp_path)
    target = tmp_path / "adapter-1.zip"
    first = write_archive(folder, "adapter-1", target, zipfile.ZIP_STORED).read_bytes()
    (folder / "adapter_config.json").write_text('{"r": 8}')
    assert write_archive(folder, "adapter-1", target, zipfile.ZIP_STORED).read_bytes() != first


def test_builds_at_the_same_time_leave_one_whole_archive(tmp_path):
    folder = _folder(tmp_path)
    target = tmp_path / "adapter-1.zip"
    errors: list[BaseException] = []

    def build():
        try:
            write_archive(folder, "adapter-1", target, zipfile.ZIP_DEFLATED)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None
    assert archive_sha256(target) == hashlib.sha256(target.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
