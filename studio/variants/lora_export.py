"""Turn any variant's ΔW into a standard PEFT LoRA (spec §0 "Export to a plain PEFT LoRA").

Every scale, gate and middle matrix is folded into B′, so the written adapter has
scale 1 everywhere (``lora_alpha == r`` per module via ``rank_pattern``/``alpha_pattern``).
Factors come from the variant when it has them (exact by construction) or from a
float64 SVD of ΔW at the module's numerical rank (exact up to fp32 rounding) or at a
requested rank (approximate; the relative Frobenius error per module is reported).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from studio.variants.base import ExportContext, ExportReport

# Singular values below this fraction of the largest are fp32 rounding noise of a low-rank product.
RANK_TOLERANCE = 1e-5


def factorise(delta: Any, rank: int | None = None) -> tuple[Any, Any, float]:
    """(B′, A′, relative Frobenius error) with B′A′ ≈ ΔW; at ``rank`` or the numerical rank.

    The singular values are split evenly between the factors (B′ = U√S, A′ = √S Vᵀ) so
    neither factor carries a huge norm. A zero ΔW gives rank-0 factors and error 0.
    """
    import torch

    work = delta.detach().to(device="cpu", dtype=torch.float64)
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    total = float(s.square().sum())
    if total == 0.0:
        keep = 0
    else:
        numerical = int((s > s[0] * RANK_TOLERANCE).sum())
        keep = numerical if rank is None else min(rank, numerical)
    root = s[:keep].sqrt()
    b = (u[:, :keep] * root).to(torch.float32)
    a = (root[:, None] * vh[:keep]).to(torch.float32)
    error = 0.0 if total == 0.0 else float((s[keep:].square().sum() / total).sqrt())
    return b, a, error


def factors_from_deltas(
    deltas: dict[str, Any], rank: int | None = None
) -> tuple[dict[str, tuple[Any, Any]], dict[str, float]]:
    """Factorise every ΔW; returns ({module: (B′, A′)}, {module: relative error})."""
    factors, errors = {}, {}
    for name, delta in deltas.items():
        b, a, err = factorise(delta, rank)
        factors[name], errors[name] = (b, a), err
    return factors, errors


def plain_lora_config(ranks: dict[str, int], task: str, modules_to_save: list[str]):
    """The LoraConfig of spec §0: exact target names, per-module rank = alpha, no dropout/rsLoRA/DoRA."""
    from peft import LoraConfig

    r_default = Counter(ranks.values()).most_common(1)[0][0]
    # PEFT matches pattern keys as regexes anchored at a dot boundary: escape the dots of full names.
    pattern = {re.escape(name): r for name, r in ranks.items()}
    return LoraConfig(
        r=r_default,
        lora_alpha=r_default,
        target_modules=sorted(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        lora_dropout=0.0,
        use_rslora=False,
        use_dora=False,
        bias="none",
        init_lora_weights=False,  # the factors are written below; skip the random init
        modules_to_save=list(modules_to_save) or None,
        task_type="SEQ_CLS" if task == "classification" else "CAUSAL_LM",
    )


# Fixed, ordinary text for measuring how far an export moves a model's outputs.
PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the gate.",
    "Write a short answer: what is the capital of France, and why is it famous for art?",
)


def saved_module_names(model: Any, names: list[str]) -> list[str]:
    """Full names of the fully trained modules (``modules_to_save``) that ``names`` designate in ``model``.

    PEFT matches these names as suffixes of module paths (``score`` or a full
    ``model.layers.0.input_layernorm``) and lists both ``classifier`` and ``score`` for
    classifiers: a name with no module in this model designates nothing.
    """
    root = model.base_model.model if hasattr(model, "peft_config") else model
    found: list[str] = []
    for full, _ in root.named_modules():
        inside_found = any(full.startswith(f"{outer}.") for outer in found)  # a wrapper's own copies
        if not inside_found and any(full == n or full.endswith(f".{n}") for n in names):
            found.append(full)
    return found


def output_change(trained: Any, exported: Any, base: Any, input_ids: Any) -> float:
    """‖logits(exported) − logits(trained)‖ / ‖logits(trained) − logits(base)‖ on ``input_ids`` (0 when equal).

    The error a user cares about: a ΔW error says nothing of the modules an export may drop,
    and a small ΔW error can still move the outputs. Measured in fp32 on the CPU.
    """
    import torch

    def logits(model: Any) -> Any:
        model.eval()
        with torch.no_grad():
            return model(input_ids=input_ids).logits.float()

    want, got, plain = logits(trained), logits(exported), logits(base)
    effect = float((want - plain).norm())
    change = float((got - want).norm())
    if effect == 0.0:
        return 0.0 if change == 0.0 else float("inf")
    return change / effect


def trained_head_state(model: Any, head: str) -> dict[str, Any]:
    """Trained tensors of a fully trained head (``modules_to_save``) of a PEFT or plain model."""
    root = model.base_model.model if hasattr(model, "peft_config") else model
    module = root.get_submodule(head)
    if hasattr(module, "modules_to_save"):  # PEFT's ModulesToSaveWrapper: the trained copy
        module = module.modules_to_save[module.active_adapters[0]]
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def write_plain_lora(
    factors: dict[str, tuple[Any, Any]], out_dir: Path, ectx: ExportContext, heads: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """Write ``factors`` (scale 1) + head tensors as a PEFT LoRA on a fresh base; returns ranks."""
    import torch
    from peft import get_peft_model

    factors = {name: (b, a) for name, (b, a) in factors.items() if b.shape[1] > 0}
    if not factors:
        raise ValueError("nothing to export: the adapter adds nothing to any module")
    ranks = {name: int(b.shape[1]) for name, (b, a) in factors.items()}
    config = plain_lora_config(ranks, ectx.task, list(heads))
    peft_model = get_peft_model(ectx.fresh_base(), config)
    root = peft_model.base_model.model
    with torch.no_grad():
        for name, (b, a) in factors.items():
            layer = root.get_submodule(name)
            target_b, target_a = layer.lora_B["default"].weight, layer.lora_A["default"].weight
            if tuple(target_b.shape) != tuple(b.shape) or tuple(target_a.shape) != tuple(a.shape):
                raise ValueError(f"export of {name}: shapes {tuple(b.shape)}/{tuple(a.shape)} do not fit the base")
            target_b.copy_(b)
            target_a.copy_(a)
        for head, state in heads.items():
            wrapper = root.get_submodule(head)
            wrapper.modules_to_save["default"].load_state_dict(state, strict=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    return ranks


def export_delta_as_lora(
    model: Any,
    out_dir: Path,
    ectx: ExportContext,
    *,
    deltas: dict[str, Any] | None = None,
    factors: dict[str, tuple[Any, Any]] | None = None,
    rank: int | None = None,
) -> ExportReport:
    """Export a trained variant as a plain PEFT LoRA from explicit ``factors`` or from ``deltas`` by SVD.

    With ``rank`` set every module is truncated to at most that rank and the relative
    Frobenius error of each module is reported; without it the export is exact.
    """
    errors: dict[str, float] = {}
    if factors is None:
        if deltas is None:
            raise ValueError("export needs either factors or delta weights")
        factors, errors = factors_from_deltas(deltas, rank)
    factors = {name: (b.detach().float().cpu(), a.detach().float().cpu()) for name, (b, a) in factors.items()}
    if all(b.shape[1] == 0 for b, _ in factors.values()):
        # An untrained adapter (ΔW = 0 everywhere) still exports as a valid, zero LoRA.
        name = sorted(factors)[0]
        b, a = factors[name]
        factors[name] = (b.new_zeros(b.shape[0], 1), a.new_zeros(1, a.shape[1]))
    heads = {name: trained_head_state(model, name) for name in saved_module_names(model, ectx.modules_to_save)}
    ranks = write_plain_lora(factors, Path(out_dir), ectx, heads)
    report = ExportReport(
        path=str(out_dir),
        ranks=ranks,
        exact=rank is None,
        errors=errors,
    )
    report.write(out_dir)
    return report


def save_trainable_state(model: Any, out_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """Write every ``requires_grad`` tensor (+ tensor-valued ``extra``) as safetensors, other extras as JSON."""
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    meta = {}
    for key, value in (extra or {}).items():
        if isinstance(value, torch.Tensor):
            tensors[f"extra::{key}"] = value.detach().cpu().contiguous()
        else:
            meta[key] = value
    save_file(tensors, str(out_dir / "variant_state.safetensors"))
    (out_dir / "variant_state.json").write_text(json.dumps(meta, indent=2))
