"""One user's adapter straight from a saved RecLoRA bundle, with no base model: list, gate, export, cache.

The bundle holds the meta-LoRAs and the gate; a user's adapter is ``A_u = [α_1 A_1; …; α_K A_K]``,
``B_u = [B_1 … B_K]`` per module (spec §7), which needs only the gate and the tensors. So listing
users and exporting one costs a read of the bundle, not a base model load, and serving a user
means writing one small PEFT directory the first time that user is served
(:func:`cached_user_adapter`), never one per user of the bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from studio.composition.reclora import RecLoRAConfig, UserGate
from studio.composition.reclora_export import BUNDLE_TENSORS, USER_FILE, read_bundle_meta
from studio.errors import ValidationFailed

USERS_DIR = "users"
MEAN_GATE_DIR = "_mean_gate"  # the folder of the adapter every unknown (or absent) user is served


def bundle_users(bundle_dir: str | Path, search: str = "", offset: int = 0, limit: int = 50) -> tuple[list[str], int]:
    """One page of the bundle's user ids (gate order; ``search`` keeps ids containing it) and how many match."""
    users = [str(u) for u in read_bundle_meta(bundle_dir)["users"]]
    if search:
        needle = search.lower()
        users = [u for u in users if needle in u.lower()]
    return users[max(0, offset) : max(0, offset) + max(0, limit)], len(users)


def _load_gate(bundle_dir: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> UserGate:
    gate = UserGate(meta["users"], RecLoRAConfig(**meta["config"]))
    gate.load_state_dict({k.removeprefix("gate."): v for k, v in tensors.items() if k.startswith("gate.")})
    return gate.eval()


def user_alpha(bundle_dir: str | Path, user: str | None) -> tuple[torch.Tensor, bool]:
    """(α of ``user`` over the K meta-LoRAs, whether the gate knows the user); unknown users get the mean gate."""
    from safetensors.torch import load_file

    meta = read_bundle_meta(bundle_dir)
    gate = _load_gate(Path(bundle_dir), meta, load_file(str(Path(bundle_dir) / BUNDLE_TENSORS)))
    with torch.no_grad():
        return gate([user])[0].float(), user is not None and str(user) in gate.index


def users_alpha(bundle_dir: str | Path, users: list[str | None]) -> torch.Tensor:
    """The gate's α(u) of every one of ``users`` (rows) over the K meta-LoRAs (columns); unknown users: the mean gate.

    What the Compose tab draws as the users × K heatmap; one read of the bundle, no base model.
    """
    from safetensors.torch import load_file

    meta = read_bundle_meta(bundle_dir)
    gate = _load_gate(Path(bundle_dir), meta, load_file(str(Path(bundle_dir) / BUNDLE_TENSORS)))
    if not users:
        return torch.zeros(0, int(meta["config"]["n_meta"]))
    with torch.no_grad():
        return gate(list(users)).float()


def export_bundle_user(
    bundle_dir: str | Path, user: str | None, out_dir: str | Path, *, base_model_name_or_path: str = ""
) -> Path:
    """Write ``user``'s adapter as a standard PEFT LoRA of rank K·r (the mean gate for an unknown user)."""
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    bundle_dir = Path(bundle_dir)
    meta = read_bundle_meta(bundle_dir)
    config = RecLoRAConfig(**meta["config"])
    tensors = load_file(str(bundle_dir / BUNDLE_TENSORS))
    gate = _load_gate(bundle_dir, meta, tensors)
    with torch.no_grad():
        alpha = gate([user])[0].float()
    weights = alpha.repeat_interleave(config.rank)
    out_tensors = {}
    for name in meta["modules"]:
        a, b = tensors[f"meta.{name}.lora_A"].float(), tensors[f"meta.{name}.lora_B"].float()
        out_tensors[f"base_model.model.{name}.lora_A.weight"] = (a * weights[:, None]).contiguous()
        out_tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(out_tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    units = config.n_meta * config.rank
    LoraConfig(
        r=units,
        lora_alpha=config.scale * units,  # PEFT's lora_alpha / r is then the meta-LoRAs' own scale s
        target_modules=sorted(meta["modules"]),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path or meta.get("base_model") or None,
    ).save_pretrained(str(out))
    known = user is not None and str(user) in gate.index
    record = {"user": user, "known_user": known, "alpha": [float(x) for x in alpha], "rank": config.rank}
    (out / USER_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return out


def user_folder_name(user: str | None, known: bool = True) -> str:
    """A safe, collision-free folder name for a user id: a readable slug plus a hash of the exact id."""
    if user is None or not known:
        return MEAN_GATE_DIR
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(user)).strip(".-")[:40] or "user"
    return f"{slug}-{hashlib.sha256(str(user).encode()).hexdigest()[:10]}"


def cached_user_adapter(bundle_dir: str | Path, user: str | None) -> tuple[Path, bool]:
    """(``<bundle>/users/<safe name>/``, known): the user's PEFT LoRA, exported on first use only.

    Unknown and absent users share one mean-gate folder. Written to a temporary folder and
    renamed into place, so concurrent first uses never see a half-written adapter. This writes
    one small file set per user actually served or exported, never for every user of the bundle.
    """
    bundle_dir = Path(bundle_dir)
    users = {str(u) for u in read_bundle_meta(bundle_dir)["users"]}
    known = user is not None and str(user) in users
    target = bundle_dir / USERS_DIR / user_folder_name(user, known)
    if (target / "adapter_model.safetensors").is_file():
        return target, known
    if not bundle_dir.is_dir():
        raise ValidationFailed(f"the personalised adapter's folder {bundle_dir} is missing")
    staging = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        export_bundle_user(bundle_dir, user if known else None, staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process renamed its copy first: keep that one
            if not (target / "adapter_model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, known
