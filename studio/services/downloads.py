"""Files that leave the server: portable adapter configs, a README that says how to load them, checksums.

An adapter directory on the server names its base by the path it was loaded from
(PEFT records ``base_model_name_or_path`` at save time). A download or export names the
base by its portable id instead (see :func:`studio.models.base_models.portable_base_id`);
the studio itself never reads that field: every loader passes the resolved base itself.
An encoder pre-trained on this studio is on no hub: a small one ships inside the download in
``base_model/`` (see :mod:`studio.services.pretrained_base`).
Every archive carries ``SHA256SUMS`` (``sha256sum -c`` format) and gets a ``.sha256``
file beside it on the server, which the UI shows next to the download button.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.loading_recipes import HEADING, loading_section
from studio.services.pretrained_base import (
    BASE_DIR,
    MAX_SHIPPED_BYTES,
    encoder_files,
    folder_bytes,
    pretrained_note,
    sequence_reading_lines,
)
from studio.training.job import sha256_file

SUMS_FILE = "SHA256SUMS"
CONFIG = "adapter_config.json"
README = "README.md"
MASKS_FILE = "pruning_masks.safetensors"
# The loading section of model cards written before the three recipes (replaced in downloads).
LEGACY_LOADING = (
    "## Loading\n\n```python\nfrom peft import PeftModel\n"
    "model = PeftModel.from_pretrained(base_model, adapter_dir)  # base loaded with transformers\n```\n"
)


@dataclass(frozen=True)
class PortableBase:
    """How a download names its base: the registry's reference and the id to write instead."""

    reference: str  # what the registry row says (a bundled name, a hub id or a server path)
    portable_id: str  # what files leaving the server say
    local: bool  # the reference is a directory of the server
    bundled: bool  # the reference is a bundled model's short name
    pretrained: bool = False  # an encoder pre-trained by a studio job (registry source "pretrained")
    shipped: Path | None = None  # that encoder's server folder, when a download carries it in base_model/
    size_bytes: int = 0  # the pre-trained encoder's folder size
    encoder_dir: Path | None = None  # its server folder, shipped or not (the README reads its configs)

    @classmethod
    def of(cls, reference: str) -> PortableBase:
        from studio.models.base_models import BUNDLED_MODELS, is_local_reference, portable_base_id

        bundled = reference in BUNDLED_MODELS
        local = not bundled and is_local_reference(reference)
        return cls(reference, portable_base_id(reference), local, bundled)

    @classmethod
    def for_download(cls, reference: str, registry: Any) -> PortableBase:
        """As :meth:`of`, except for an encoder pre-trained on this studio, which the registry says is one.

        Such a base is on no hub: files leaving the server name it ``base_model`` (the folder it ships
        in, or where the user puts a copy of one too large to ship).
        """
        from studio.models.base_models import PRETRAINED_SOURCE

        row = next((m for m in registry.list_base_models() if m.name == reference), None)
        if row is None or row.source != PRETRAINED_SOURCE:
            return cls.of(reference)
        folder = Path(row.location)
        size = folder_bytes(folder)
        shipped = folder if (folder / "config.json").is_file() and size <= MAX_SHIPPED_BYTES else None
        return cls(
            reference, BASE_DIR, False, False, pretrained=True, shipped=shipped, size_bytes=size, encoder_dir=folder
        )

    def note(self) -> str | None:
        """What a reader of the README must know about a base that is not on the hub."""
        if self.pretrained:
            return pretrained_note(self.reference, self.shipped is not None, self.size_bytes)
        if not self.local:
            return None
        return (
            f"a local model directory named `{self.portable_id}` where the adapter was trained, not a Hugging Face "
            "hub id; put the path of your copy of that model in its place."
        )

    def files(self) -> dict[str, Path]:
        """Files a download adds from outside the adapter folder: the shipped encoder's, under ``base_model/``."""
        return encoder_files(self.shipped) if self.shipped is not None else {}


def portable_config(raw: bytes, base: PortableBase) -> bytes:
    """``adapter_config.json`` with ``base_model_name_or_path`` set to the base's portable id."""
    config = json.loads(raw)
    config["base_model_name_or_path"] = base.portable_id
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def download_readme(card: str | None, base: PortableBase, folder_name: str, title: str, adapter_dir: Path) -> str:
    """The archive's README: the model card without server paths, ending with the three loading recipes."""
    named = base.reference if base.pretrained else base.portable_id
    text = card or f"# {title}\n\nAn adapter for `{named}`, from Adapter Studio.\n"
    if base.local and "/" in base.reference:  # a path; a bare "." or folder name is no path to hide
        text = text.replace(base.reference, base.portable_id)
    # The recipes are regenerated with this folder's name: drop the card's own copy (and the legacy one).
    text = text.split(f"\n{HEADING}\n", 1)[0].replace(LEGACY_LOADING, "").rstrip() + "\n\n"
    return text + "\n".join(adapter_loading_section(adapter_dir, base, folder_name))


def adapter_loading_section(adapter_dir: Path, base: PortableBase, folder: str = "path/to/adapter") -> list[str]:
    """The loading recipes for the PEFT checkpoint saved in ``adapter_dir``, read from its own config."""
    config = json.loads((adapter_dir / CONFIG).read_text())
    ranks = [v for v in (config.get("rank_pattern") or {}).values() if isinstance(v, int)]
    # A pre-trained encoder is loaded from the download's own base_model/ folder, by its path.
    base_id = f"{folder}/{BASE_DIR}" if base.pretrained else base.portable_id
    lines = loading_section(
        base_id,
        "classification" if config.get("task_type") == "SEQ_CLS" else "causal-lm",
        folder,
        max_rank=max([int(config.get("r") or 0), *ranks]),
        plain_lora=config.get("peft_type") == "LORA" and not config.get("use_dora"),
        base_note=base.note(),
        caveat=MASKS_CAVEAT if (adapter_dir / MASKS_FILE).exists() else None,
    )
    if not base.pretrained:
        return lines
    from studio.sequences.windows import saved_pooling

    return lines + sequence_reading_lines(base.encoder_dir, folder, saved_pooling(adapter_dir))


MASKS_CAVEAT = (
    f"This adapter has `{MASKS_FILE}` (LoRAPrune): where the *Loading* section above applies it, these "
    "recipes load the LoRA alone, the unpruned model; apply the masks as shown there."
)


def portable_files(adapter_dir: Path, base: PortableBase, folder_name: str, title: str) -> dict[str, bytes]:
    """The files of ``adapter_dir`` that a download writes differently, by path relative to it."""
    replaced = {
        str(path.relative_to(adapter_dir)): portable_config(path.read_bytes(), base)
        for path in sorted(adapter_dir.rglob(CONFIG))
    }
    card = adapter_dir / README
    text = card.read_text(encoding="utf-8") if card.exists() else None
    replaced[README] = download_readme(text, base, folder_name, title, adapter_dir).encode()
    return replaced


def write_portable(out_dir: Path, base: PortableBase, title: str) -> None:
    """Rewrite an exported adapter directory in place so that it names its base portably.

    A shipped pre-trained encoder is copied into ``base_model/`` first, so the README describes it.
    """
    for relative, source in base.files().items():
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, out_dir / relative)
    for relative, content in portable_files(out_dir, base, out_dir.name, title).items():
        (out_dir / relative).write_bytes(content)


def write_archive(
    folder: Path,
    name: str,
    target: Path,
    compression: int,
    replaced: dict[str, bytes] | None = None,
    skip_top: Callable[[str], bool] | None = None,
    extra: dict[str, Path] | None = None,
) -> Path:
    """Zip ``folder``'s files under the top-level folder ``name``, with ``SHA256SUMS``; ``target.sha256`` beside it.

    ``replaced`` gives new contents for some files (relative paths), which may also be new files.
    ``skip_top`` leaves out top-level entries by name (the serving engine's cached exports).
    ``extra`` adds files from outside ``folder`` by their relative path in the archive (a shipped base).
    The archive is reproducible: the same files give the same bytes (fixed entry times and modes),
    so a checksum shown for one build matches the zip of any later build of the same adapter.
    Written to a file of its own, then renamed into place, so a half-written zip is never offered
    and two requests building the same download at once cannot interleave.
    """
    replaced = dict(replaced or {})
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    sums: list[str] = []
    try:
        with zipfile.ZipFile(tmp, "w", compression=compression) as archive:
            files = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
            if skip_top is not None:
                files = {rel: p for rel, p in files.items() if not skip_top(Path(rel).parts[0])}
                replaced = {rel: c for rel, c in replaced.items() if not skip_top(Path(rel).parts[0])}
            files.update(extra or {})
            for relative in sorted(set(files) | set(replaced)):
                if relative == SUMS_FILE:
                    continue  # a stale list from an earlier export; rewritten below
                entry = _fixed_entry(f"{name}/{relative}", compression)
                content = replaced.get(relative)
                if content is None:
                    entry.file_size = files[relative].stat().st_size  # zipfile picks ZIP64 from it (files > 2 GiB)
                    with open(files[relative], "rb") as source, archive.open(entry, "w") as sink:
                        shutil.copyfileobj(source, sink, _COPY_CHUNK)
                    digest = sha256_file(files[relative])
                else:
                    archive.writestr(entry, content)
                    digest = hashlib.sha256(content).hexdigest()
                sums.append(f"{digest}  {relative}\n")
            archive.writestr(_fixed_entry(f"{name}/{SUMS_FILE}", compression), "".join(sums))
        tmp.chmod(0o644)  # mkstemp's file is private; the download is not
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    target.with_name(target.name + ".sha256").write_text(f"{sha256_file(target)}  {target.name}\n")
    return target


# Zip's earliest representable time: entries carry it instead of the files' mtimes.
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_COPY_CHUNK = 1 << 20


def _fixed_entry(arcname: str, compression: int) -> zipfile.ZipInfo:
    """A zip entry with a fixed time and ``rw-r--r--`` mode, so archives are reproducible."""
    entry = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
    entry.compress_type = compression
    entry.external_attr = 0o100644 << 16
    return entry


def archive_sha256(path: Path) -> str:
    """The SHA-256 of an archive written by :func:`write_archive` (from its ``.sha256`` file when present)."""
    sidecar = Path(path).with_name(Path(path).name + ".sha256")
    if sidecar.exists():
        return sidecar.read_text().split()[0]
    return sha256_file(Path(path))
