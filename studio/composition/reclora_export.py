"""RecLoRA results on disk: one user's adapter as a standard PEFT LoRA, and the whole model as a bundle.

User export (spec §7): ``A_u = [α_1 A_1; …; α_K A_K]`` and ``B_u = [B_1 … B_K]`` per module,
a LoRA of rank K·r whose product equals ``Σ_k α_k B_k A_k``. The meta-LoRAs' scale is
kept as the adapter's own: ``lora_alpha = s·K·r`` so PEFT's ``lora_alpha / (K·r)`` is s
(with rsLoRA meta-LoRAs too, since the export itself is written without rsLoRA). This
is exactly PEFT's ``add_weighted_adapter(..., combination_type="cat")`` with weights α(u)
up to where the scale sits. Writing needs no base model: the tensors and the config are
written directly in PEFT's layout (keys ``base_model.model.<module>.lora_A.weight``).

Bundle: ``reclora.json`` (format, config, user map in gate order, targeted modules, base
model name) + ``reclora.safetensors`` (meta-LoRAs, gate, user features).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from studio.composition.reclora import PersonalisedModel, RecLoRAConfig

BUNDLE_FORMAT = "reclora-bundle"
BUNDLE_VERSION = 1
BUNDLE_CONFIG = "reclora.json"
BUNDLE_TENSORS = "reclora.safetensors"
USER_FILE = "reclora_user.json"


def user_factors(
    pm: PersonalisedModel, user: str | None, features: Mapping[str, Sequence[float]] | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module: (A_u, B_u, s)} of one user (fp32, CPU), ΔW_u = s B_u A_u; for serving without files.

    An unknown user gets the mean gate (or its features' gate when ``features`` has it).
    """
    with torch.no_grad():
        alpha = pm.alphas([user], features)[0].float().cpu()
    return factors_for_alpha(pm, alpha)


def factors_for_alpha(
    pm: PersonalisedModel, alpha: torch.Tensor
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module: (A_u, B_u, s)} for an explicit mixture α (K,)."""
    weights = alpha.detach().float().cpu().repeat_interleave(pm.config.rank)
    out = {}
    for name, layer in pm.meta_layers().items():
        a = layer.lora_A.detach().float().cpu() * weights[:, None]
        out[name] = (a.contiguous(), layer.lora_B.detach().float().cpu().contiguous(), layer.scale)
    return out


def user_adapter_config(pm: PersonalisedModel, base_model_name_or_path: str = ""):
    """The LoraConfig of every user export: rank K·r, scale s, exact module names, no dropout."""
    from peft import LoraConfig

    units = pm.config.n_meta * pm.config.rank
    return LoraConfig(
        r=units,
        lora_alpha=pm.config.scale * units,  # PEFT's scale lora_alpha / r is then s
        target_modules=sorted(pm.meta_layers()),
        lora_dropout=0.0,
        use_rslora=False,
        use_dora=False,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path or None,
    )


def export_user_adapter(
    pm: PersonalisedModel,
    user: str | None,
    out_dir: str | Path,
    *,
    base_model_name_or_path: str = "",
    features: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Write ``user``'s personal adapter as a standard PEFT LoRA of rank K·r in ``out_dir``; returns it."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        alpha = pm.alphas([user], features)[0].float().cpu()
    tensors = {}
    for name, (a, b, _s) in factors_for_alpha(pm, alpha).items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a
        tensors[f"base_model.model.{name}.lora_B.weight"] = b
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    user_adapter_config(pm, base_model_name_or_path).save_pretrained(str(out))
    known = user is not None and str(user) in pm.gate.index
    record = {"user": user, "known_user": known, "alpha": [float(x) for x in alpha], "rank": pm.config.rank}
    (out / USER_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return out


def save_bundle(pm: PersonalisedModel, out_dir: str | Path, *, base_model: str = "") -> Path:
    """Write the whole personalised model (meta-LoRAs, gate, user map, config) to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = pm.meta_layers()
    tensors: dict[str, Any] = {}
    for name, layer in layers.items():
        tensors[f"meta.{name}.lora_A"] = layer.lora_A.detach().cpu().contiguous()
        tensors[f"meta.{name}.lora_B"] = layer.lora_B.detach().cpu().contiguous()
    for key, value in pm.gate.state_dict().items():
        tensors[f"gate.{key}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(out / BUNDLE_TENSORS), metadata={"format": "pt"})
    meta = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "base_model": base_model,
        "config": pm.config.model_dump(),
        "users": pm.users,
        "modules": sorted(layers),
    }
    (out / BUNDLE_CONFIG).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


def read_bundle_meta(bundle_dir: str | Path) -> dict[str, Any]:
    """The bundle's JSON (config, users, modules, base model), checked to be a RecLoRA bundle."""
    meta = json.loads((Path(bundle_dir) / BUNDLE_CONFIG).read_text(encoding="utf-8"))
    if meta.get("format") != BUNDLE_FORMAT or int(meta.get("version", 0)) > BUNDLE_VERSION:
        raise ValueError(f"{bundle_dir} is not a RecLoRA bundle this studio can read")
    return meta


def load_bundle(base: torch.nn.Module, bundle_dir: str | Path) -> PersonalisedModel:
    """Rebuild a saved personalised model on ``base`` (a fresh copy of the bundle's base model)."""
    from safetensors.torch import load_file

    meta = read_bundle_meta(bundle_dir)
    config = RecLoRAConfig(**meta["config"])
    # Exact module names, so the rebuilt model adapts the very layers that were saved.
    config = config.model_copy(update={"target_modules": list(meta["modules"])})
    pm = PersonalisedModel(base, meta["users"], config)
    tensors = load_file(str(Path(bundle_dir) / BUNDLE_TENSORS))
    layers = pm.meta_layers()
    if sorted(layers) != sorted(meta["modules"]):
        raise ValueError("the bundle's modules do not match this base model's layers")
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(tensors[f"meta.{name}.lora_A"])
            layer.lora_B.copy_(tensors[f"meta.{name}.lora_B"])
    gate_state = {k.removeprefix("gate."): v for k, v in tensors.items() if k.startswith("gate.")}
    pm.gate.load_state_dict(gate_state, strict=True)
    return pm
