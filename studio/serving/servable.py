"""Plain-LoRA exports for serving: DoRA, MiSS, LoRAPrune and other PEFT types through the batched engine.

The engine's slots hold plain LoRA only (``scale · B @ A`` per linear layer, see
:mod:`studio.serving.bank`). An adapter it refuses but whose every adapted layer is
an ``nn.Linear`` still has a plain-LoRA export: its effective ΔW per layer (what
PEFT's own merge adds to W0 — for DoRA the whole change including the magnitude
rescaling, for LoRAPrune the pruned rows folded in) factorised by a float64 SVD
(:func:`studio.variants.lora_export.factorise`). :func:`served_lora` writes that
export once, next to the adapter (``<adapter>/served_lora_r<rank>/`` or
``served_lora_exact/``), with the measured relative error
‖ΔW − B′A′‖_F / ‖ΔW‖_F of every layer; later calls read it back (keyed by the
rank and by a fingerprint of the adapter's files, so a changed adapter is
exported again).

Rank policy (what :func:`served_lora` picks when no rank is given):

- variants whose export the variants table calls exact (AdaLoRA, PiSSA, ...;
  PEFT type ADALORA when the variant is unknown): every layer at its numerical
  rank, so the export equals the adapter up to fp32 rounding ("exact");
- DoRA, MiSS, LoRAPrune and unknown types: at most the adapter's own rank
  (``r``, the largest of ``rank_pattern``), so the served copy costs the slot
  memory the adapter was trained with and no more. A layer whose numerical rank
  is lower keeps that (then it is exact). The error is measured and shown; ask
  for a higher rank when it is too large (LoRAPrune's pruned rows are rank
  ``#pruned rows`` each, so its error at rank r is large when it pruned much).

Why this replaces PEFT's pool for them (the pool answers one pane at a time under
a lock): the export costs one PEFT load and one SVD per layer, once per adapter
and rank (a fraction of a second on the tiny test model, seconds on SmolLM2),
after which the adapter rides in the batch with everything else.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.serving.bank import AdapterNotServable, refusal_reason

REPORT_FILE = "served_report.json"
SERVED_PREFIX = "served_lora"
# Relative errors below this are fp32 rounding of an exact factorisation: call the export exact.
EXACT_ERROR = 1e-5
# PEFT types whose ΔW is a low-rank product, so their export is exact at the numerical rank.
EXACT_PEFT_TYPES = frozenset({"LORA", "ADALORA"})
# Config fields whose content no plain-LoRA export of linear layers can carry.
_NO_EXPORT_FIELDS = (
    "modules_to_save",
    "layer_replication",
    "target_parameters",
    "alora_invocation_tokens",
    "trainable_token_indices",
    "fan_in_fan_out",
)


class NoPlainExport(AdapterNotServable):
    """The adapter has no plain-LoRA export (trained biases, embeddings, whole layers): PEFT must serve it."""


@dataclass(frozen=True)
class ServedLora:
    """A plain PEFT LoRA written for the engine in place of an adapter it refuses, with its measured error."""

    path: str  # the plain LoRA directory the bank reads
    source: str  # the adapter it stands for
    reason: str  # why the engine refused the adapter itself
    rank: int  # the largest rank of any layer
    exact: bool
    max_error: float  # relative Frobenius error ‖ΔW − B′A′‖/‖ΔW‖, worst layer
    mean_error: float  # ... mean over layers
    errors: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""

    def describe(self) -> str:
        """One line for the user: how the adapter is served and how far the served copy is from it."""
        if self.exact:
            return f"served as an exact rank-{self.rank} plain LoRA (max layer error {self.max_error:.1e})"
        return (
            f"served as a rank-{self.rank} LoRA approximation: max layer error {self.max_error:.1%}, "
            f"mean {self.mean_error:.1%}"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what ``served_report.json`` holds), plus the one-line description."""
        return {**asdict(self), "description": self.describe()}


def needs_export(adapter_dir: str | Path) -> str | None:
    """Why the engine refuses ``adapter_dir`` as it is (None: it serves it directly)."""
    return refusal_reason(adapter_dir)


def _config(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "adapter_config.json").read_text())


def own_rank(config: dict[str, Any]) -> int:
    """The rank the adapter was trained with: ``r`` (AdaLoRA: ``init_r``), or the largest of ``rank_pattern``."""
    base = config.get("init_r") if str(config.get("peft_type", "")).upper() == "ADALORA" else config.get("r")
    ranks = [int(base or 8), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def _no_export_reason(config: dict[str, Any]) -> str | None:
    for name in _NO_EXPORT_FIELDS:
        if config.get(name):
            return f"it uses {name}, which a plain LoRA of linear layers cannot carry"
    if str(config.get("bias", "none")) != "none" or config.get("lora_bias"):
        return "it trains biases, which a plain LoRA cannot carry"
    return None


def _fingerprint(directory: Path) -> str:
    """Names, sizes and modification times of the adapter's own files: a changed adapter gets a new export."""
    from studio.variants._loraprune_masks import masks_path

    files = [directory / "adapter_config.json"]
    files += [directory / n for n in ("adapter_model.safetensors", "adapter_model.bin")]
    masks = masks_path(directory)
    if masks is not None:
        files.append(masks)
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(directory)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def _read_cached(out: Path, fingerprint: str) -> ServedLora | None:
    report = out / REPORT_FILE
    if not report.is_file():
        return None
    try:
        data = json.loads(report.read_text())
        data.pop("description", None)
        served = ServedLora(**data)
    except (ValueError, TypeError):
        return None  # a report from another version: export again
    if served.fingerprint != fingerprint or not (out / "adapter_model.safetensors").is_file():
        return None
    return served if served.path == str(out) else ServedLora(**{**asdict(served), "path": str(out)})


def effective_deltas(adapter_dir: str | Path, base: Any) -> dict[str, Any]:
    """{module name: ΔW (fp32, CPU)} the adapter adds to ``base``'s weights, as PEFT computes it at inference.

    ``base`` is a fresh copy of the ORIGINAL base model (fp32); it is wrapped in place.
    LoRAPrune masks are folded in (ΔW = diag(mask)(W0 + ΔW) − W0). Raises
    :class:`NoPlainExport` when an adapted layer is not an ``nn.Linear``.
    """
    from peft import PeftModel
    from torch import nn

    from studio.variants._loraprune_masks import masked_deltas, saved_masks
    from studio.variants.peft_common import layer_delta, tuner_layers

    directory = Path(adapter_dir)
    model = PeftModel.from_pretrained(base, str(directory), is_trainable=False)
    layers = tuner_layers(model)
    for name, layer in layers.items():
        if not isinstance(layer.get_base_layer(), nn.Linear):
            kind = type(layer.get_base_layer()).__name__
            raise NoPlainExport(f"adapter {directory.name} adapts {name}, a {kind}; the engine serves linear layers")
    deltas = {name: layer_delta(layer, model.active_adapter) for name, layer in layers.items()}
    masks = saved_masks(directory)
    if masks is not None:
        deltas = masked_deltas(model, deltas, masks)
    return deltas


def _write(out: Path, factors: dict[str, tuple[Any, Any]]) -> dict[str, int]:
    """Write ``factors`` (B′, A′) as a PEFT LoRA with scale 1 in every layer (alpha = r per module)."""
    from safetensors.torch import save_file

    from studio.variants.lora_export import plain_lora_config

    kept = {name: (b, a) for name, (b, a) in factors.items() if b.shape[1] > 0}
    if not kept:  # an untrained adapter: still a valid (zero) LoRA
        name = sorted(factors)[0]
        b, a = factors[name]
        kept = {name: (b.new_zeros(b.shape[0], 1), a.new_zeros(1, a.shape[1]))}
    ranks = {name: int(b.shape[1]) for name, (b, _) in kept.items()}
    plain_lora_config(ranks, "causal-lm", []).save_pretrained(str(out))
    tensors = {}
    for name, (b, a) in kept.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return ranks


def export_is_exact(variant: str | None, config: dict[str, Any], has_masks: bool = False) -> bool:
    """Whether the variants table calls this adapter's plain-LoRA export exact (PEFT type when unknown).

    A LoRAPrune adapter (``has_masks``) is not: each pruned row adds a rank to ΔW.
    """
    if has_masks:
        return False
    if variant:
        from studio.errors import NotFoundError
        from studio.variants.registry import get_variant

        try:
            return bool(get_variant(variant).export_exact) and not config.get("use_dora")
        except NotFoundError:
            pass
    return str(config.get("peft_type", "LORA")).upper() in EXACT_PEFT_TYPES and not config.get("use_dora")


def served_lora(
    adapter_dir: str | Path,
    load_base: Callable[[], Any],
    *,
    rank: int | None = None,
    variant: str | None = None,
) -> ServedLora | None:
    """The plain LoRA the engine serves for ``adapter_dir``: None when the engine reads the adapter itself.

    Written once per rank under ``adapter_dir`` and read back afterwards (``load_base`` —
    a fresh fp32 copy of the original base — is only called when exporting). ``rank``
    caps every layer's rank; without it see the module docstring (exact at the numerical
    rank for exact variants, at most the adapter's own rank otherwise). Raises
    :class:`NoPlainExport` for adapters only PEFT can serve.
    """
    from studio.variants._loraprune_masks import masks_path
    from studio.variants.lora_export import factorise

    directory = Path(adapter_dir)
    reason = needs_export(directory)
    if reason is None:
        return None
    config = _config(directory)
    blocked = _no_export_reason(config)
    if blocked:
        raise NoPlainExport(f"adapter {directory.name} cannot be served in a batch because {reason}, and {blocked}")
    if rank is not None and rank < 1:
        raise ValueError("the served rank must be at least 1")
    cap = (
        rank
        if rank is not None
        else (None if export_is_exact(variant, config, masks_path(directory) is not None) else own_rank(config))
    )
    out = directory / (f"{SERVED_PREFIX}_r{cap}" if cap is not None else f"{SERVED_PREFIX}_exact")
    fingerprint = _fingerprint(directory)
    cached = _read_cached(out, fingerprint)
    if cached is not None:
        return cached

    deltas = effective_deltas(directory, load_base())
    factors, errors = {}, {}
    for name, delta in sorted(deltas.items()):
        b, a, errors[name] = factorise(delta, cap)
        factors[name] = (b, a)
    # Write beside the final place, then rename: a reader never sees half an export, and two
    # processes exporting at once both end with one complete directory.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=directory))
    try:
        ranks = _write(staging, factors)
        max_error = max(errors.values(), default=0.0)
        served = ServedLora(
            path=str(out),
            source=str(directory),
            reason=reason,
            rank=max(ranks.values()),
            exact=max_error <= EXACT_ERROR,
            max_error=max_error,
            mean_error=math.fsum(errors.values()) / max(1, len(errors)),
            errors=errors,
            ranks=ranks,
            fingerprint=fingerprint,
        )
        (staging / REPORT_FILE).write_text(json.dumps(served.as_dict(), indent=2))
        if out.exists():
            shutil.rmtree(out)  # a stale export (the adapter changed since)
        os.replace(staging, out)
    except OSError:
        if out.is_dir() and _read_cached(out, fingerprint) is not None:
            return _read_cached(out, fingerprint)  # another process finished first
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return served


def is_served_copy(name: str) -> bool:
    """Whether a file name inside an adapter directory is one of these exports (copies of the adapter skip them)."""
    return bool(re.match(rf"^\.?{SERVED_PREFIX}_", name))
