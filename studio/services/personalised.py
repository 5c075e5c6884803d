"""Personalised (RecLoRA) adapters: their users, and one user's adapter as a standard PEFT LoRA.

A RecLoRA adapter in the registry (variant ``reclora``) is a bundle: meta-LoRAs + gate + user
map. Nothing per user is written until a user is exported or served; then that user's LoRA
is cached in the bundle under ``users/<safe name>/``.
"""

from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from models_db.registry import Registry
from studio.composition.reclora_job import VARIANT
from studio.composition.reclora_users import bundle_users, cached_user_adapter, user_folder_name, users_alpha
from studio.errors import ValidationFailed
from studio.settings import Settings


@dataclass(frozen=True)
class UserExport:
    """Where a user's adapter was written and whether the gate knew the user (else: the mean gate)."""

    path: Path
    user: str | None
    known_user: bool


class PersonalisedService:
    """Users and per-user adapters of registered RecLoRA bundles."""

    def __init__(self, registry: Registry, settings: Settings):
        self.registry = registry
        self.settings = settings

    def bundle(self, adapter_id: int):
        """The registry row of a RecLoRA bundle; ValidationFailed for any other adapter."""
        row = self.registry.get_adapter(adapter_id)
        if row.variant != VARIANT:
            raise ValidationFailed(
                f"adapter #{adapter_id} is a {row.variant} adapter, not a personalised (RecLoRA) one"
            )
        return row

    def users(self, adapter_id: int, search: str = "", offset: int = 0, limit: int = 50) -> tuple[list[str], int]:
        """One page of the bundle's user ids (``search``: ids containing it) and how many match."""
        return bundle_users(self.bundle(adapter_id).path, search, offset, limit)

    def user_adapter(self, adapter_id: int, user: str | None) -> UserExport:
        """The user's cached PEFT LoRA in the bundle (exported on first use; unknown users: the mean gate)."""
        path, known = cached_user_adapter(self.bundle(adapter_id).path, user)
        return UserExport(path, user, known)

    def export_user(self, adapter_id: int, user: str | None, out_dir: str | Path) -> UserExport:
        """Copy the user's standard PEFT LoRA (rank K·r) to ``out_dir``, with the bundle's tokenizer files."""
        cached = self.user_adapter(adapter_id, user)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for item in cached.path.iterdir():
            shutil.copy2(item, out / item.name)
        bundle = Path(self.bundle(adapter_id).path)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            if (bundle / name).is_file():
                shutil.copy2(bundle / name, out / name)
        return UserExport(out, user, cached.known_user)

    def gates(self, adapter_id: int, users: list[str]) -> list[list[float]]:
        """α(u) over the K meta-LoRAs for each of ``users`` (rows in that order); unknown users get the mean gate."""
        return users_alpha(self.bundle(adapter_id).path, list(users)).tolist()

    def user_zip(self, adapter_id: int, user: str | None) -> Path:
        """A zip of the user's standard PEFT LoRA for download, named like other adapter downloads.

        Its ``adapter_config.json`` names the base portably and its README says how to load it;
        ``SHA256SUMS`` inside and ``<zip>.sha256`` beside it, as :meth:`AdapterService.zip` writes.
        """
        from studio.services.downloads import PortableBase, portable_files, write_archive

        row = self.bundle(adapter_id)
        folder = user_folder_name(user, True)
        work = Path(self.settings.data_dir) / "exports" / f"user-{adapter_id}-{folder}"
        if work.exists():
            shutil.rmtree(work)
        try:
            done = self.export_user(adapter_id, user, work)
            name = f"adapter-{adapter_id}-user-{folder}" if done.known_user else f"adapter-{adapter_id}-mean-gate"
            who = f"user {user!r}" if done.known_user else "an unknown user (the mean gate)"
            replaced = portable_files(work, PortableBase.of(row.base_model), name, f"{row.name}: {who}")
            target = work.parent / f"{name}.zip"
            return write_archive(work, name, target, zipfile.ZIP_DEFLATED, replaced)
        finally:
            shutil.rmtree(work, ignore_errors=True)
