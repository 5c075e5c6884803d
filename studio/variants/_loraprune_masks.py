"""LoRAPrune's structure, importance, schedule and pruned-model tools (spec §9), as plain functions.

Pruning groups of a Llama-style decoder layer: attention *KV groups* (a KV head with its
``num_heads / num_kv_heads`` query heads; for multi-head attention a group is one head)
shared by q/k/v (output rows) and o (input columns), and MLP channels shared by gate/up
(output rows) and down (input columns). Masks are stored per group and expanded to rows.
Follows the official code (aim-uofa/LoRAPrune, ``loraprune/utils.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
MASKS_FILE = "pruning_masks.safetensors"


@dataclass
class DecoderLayer:
    """One decoder layer: its index, module-name prefix and attention geometry."""

    index: int
    prefix: str  # e.g. "model.layers.3"
    head_dim: int
    num_heads: int
    num_kv_heads: int
    intermediate: int

    @property
    def rep(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    def name(self, block: str, proj: str) -> str:
        return f"{self.prefix}.{block}.{proj}"


def decoder_layers(model: Any) -> list[DecoderLayer]:
    """The Llama-style decoder layers of ``model`` (q/k/v/o_proj under self_attn, gate/up/down_proj under mlp)."""
    found = []
    for prefix, module in model.named_modules():
        attn, mlp = getattr(module, "self_attn", None), getattr(module, "mlp", None)
        if attn is None or mlp is None:
            continue
        if not all(hasattr(attn, p) for p in ATTN) or not all(hasattr(mlp, p) for p in MLP):
            continue
        q, k = attn.q_proj, attn.k_proj
        head_dim = int(getattr(attn, "head_dim", 0) or _out(q) // attn.config.num_attention_heads)
        found.append(
            DecoderLayer(
                index=len(found),
                prefix=prefix,
                head_dim=head_dim,
                num_heads=_out(q) // head_dim,
                num_kv_heads=_out(k) // head_dim,
                intermediate=_out(mlp.gate_proj),
            )
        )
    if not found:
        raise ValueError("LoRAPrune needs a Llama-style decoder (self_attn.q/k/v/o_proj and mlp.gate/up/down_proj)")
    return found


def _out(linear: Any) -> int:
    base = getattr(linear, "base_layer", linear)
    return int(base.out_features)


def prunable(index: int, num_layers: int) -> bool:
    """The first int(0.1·L) layers and the last layer are never pruned (official ``freeze``)."""
    return not (index < int(num_layers * 0.1) or index == num_layers - 1)


def sparsity_at(step: int, total: int, p0: float, pf: float, wi: float, wf: float) -> float:
    """The cubic schedule of the official ``schedule_sparsity_ratio`` (``step`` = optimizer steps done)."""
    if step <= wi * total:
        return p0
    if step > total - wf * total:
        return pf
    warm = wi * total
    span = total - (wi + wf) * total
    coeff = 1 - (step - warm) / span
    return pf + (p0 - pf) * coeff**3


def lora_grad_estimate(a: torch.Tensor, b: torch.Tensor, grad_a: torch.Tensor, grad_b: torch.Tensor) -> torch.Tensor:
    """Ĝ = ∇B·A + B·∇A − ∇B·∇A: the change of BA under one unit-step SGD update, BA − (B−∇B)(A−∇A)."""
    return grad_b @ a + b @ grad_a - grad_b @ grad_a


def group_scores(importance: torch.Tensor, proj: str, layer: DecoderLayer) -> torch.Tensor:
    """Sum an (m × n) element importance into the layer's groups (KV groups or MLP channels)."""
    kv, hd, rep = layer.num_kv_heads, layer.head_dim, layer.rep
    if proj == "q_proj":
        return importance.reshape(kv, rep * hd, -1).sum(dim=(1, 2))
    if proj in ("k_proj", "v_proj"):
        return importance.reshape(kv, hd, -1).sum(dim=(1, 2))
    if proj == "o_proj":  # input columns, per query head of each group
        return importance.reshape(importance.shape[0], kv, rep * hd).sum(dim=(0, 2))
    if proj in ("gate_proj", "up_proj"):
        return importance.sum(dim=1)
    if proj == "down_proj":
        return importance.sum(dim=0)
    raise ValueError(f"not a pruned projection: {proj}")


def row_repeat(proj: str, layer: DecoderLayer) -> int:
    """How many output rows one group-mask entry covers in ``proj`` (0: the projection is not masked)."""
    return {
        "q_proj": layer.rep * layer.head_dim,
        "k_proj": layer.head_dim,
        "v_proj": layer.head_dim,
        "gate_proj": 1,
        "up_proj": 1,
    }.get(proj, 0)


def select_pruned(score: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """New group mask with the lowest ⌊ratio·G⌋ groups by score × mask pruned; pruned groups never return."""
    total = mask.numel()
    n_prune = int(total * ratio)
    keyed = torch.where(mask > 0, score * mask, torch.full_like(score, float("-inf")))
    order = torch.sort(keyed, stable=True).indices
    new = torch.ones_like(mask)
    new[order[:n_prune]] = 0
    return new * mask


# -- pruned models ------------------------------------------------------------------------------------


def row_masks_from_file(path: Path) -> dict[str, torch.Tensor]:
    """{module name: row mask (out_features,)} from a ``pruning_masks.safetensors``."""
    from safetensors.torch import load_file

    return load_file(str(path))


def zero_pruned_rows(model: Any, row_masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned output rows (weight, bias and PEFT lora_B) of every masked module, in place."""
    with torch.no_grad():
        for name, mask in row_masks.items():
            module = _find(model, name)
            keep = mask.to(torch.bool)
            base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            base.weight[~keep.to(base.weight.device)] = 0
            if base.bias is not None:
                base.bias[~keep.to(base.bias.device)] = 0
            for lora_b in getattr(module, "lora_B", {}).values():
                lora_b.weight[~keep.to(lora_b.weight.device)] = 0


def _find(model: Any, name: str) -> Any:
    for prefix in ("", "base_model.model."):
        try:
            return model.get_submodule(prefix + name)
        except AttributeError:
            continue
    raise KeyError(f"module {name} not found in the model")


def load_pruned_adapter(base_model: Any, adapter_dir: str | Path, merge: bool = True) -> Any:
    """Load a LoRAPrune adapter (PEFT LoRA + ``pruning_masks.safetensors``) onto ``base_model``.

    The masks are found next to the adapter or in its ``native/`` folder. With ``merge``
    the LoRA is merged and a plain transformers model is returned; otherwise the PeftModel,
    with the pruned rows of the base weights, biases and lora_B zeroed.
    """
    from peft import PeftModel

    masks = saved_masks(adapter_dir)
    if masks is None:
        raise ValueError(f"{adapter_dir} holds no {MASKS_FILE}: not a LoRAPrune adapter with masks")
    model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    if merge:
        model = model.merge_and_unload()
    zero_pruned_rows(model, masks)
    return model


def physically_pruned(model: Any, layers: list[DecoderLayer], weights: dict[str, tuple[Any, Any]], group_masks) -> Any:
    """Remove the pruned rows / columns for real; returns ``model`` with smaller plain linears.

    ``weights``: {module name: (W, bias)} effective weights; ``group_masks``: {layer prefix:
    (attention group mask, MLP channel mask)}. Used to check that masking equals pruning.
    """
    from torch import nn

    def put(name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, linear.to(weight.device))

    for layer in layers:
        attn_mask, mlp_mask = group_masks[layer.prefix]
        for block, proj in [("self_attn", p) for p in ATTN] + [("mlp", p) for p in MLP]:
            name = layer.name(block, proj)
            weight, bias = weights[name]
            if proj in ("o_proj", "down_proj"):
                keep = (attn_mask if proj == "o_proj" else mlp_mask).repeat_interleave(
                    layer.rep * layer.head_dim if proj == "o_proj" else 1
                )
                put(name, weight[:, keep.bool()], bias)
            else:
                keep = (mlp_mask if block == "mlp" else attn_mask).repeat_interleave(row_repeat(proj, layer))
                put(name, weight[keep.bool()], None if bias is None else bias[keep.bool()])
    return model


def model_card_loading(adapter_format: str) -> list[str]:
    """The model card's "Loading" section of a LoRAPrune adapter: plain PEFT + safetensors, no studio code."""
    if adapter_format == "exact_lora":
        return [
            "## Loading",
            "",
            "A plain PEFT LoRA that already removes the pruned rows (its rank is r + the pruned rows of each masked "
            "module). Exact for bias-free q/k/v (Llama); `pruning_masks.safetensors` also lists the pruned rows.",
            "",
            "```python",
            "from peft import PeftModel",
            "model = PeftModel.from_pretrained(base_model, adapter_dir)  # base loaded with transformers",
            "```",
            "",
        ]
    return [
        "## Loading",
        "",
        "A rank-r LoRA plus `pruning_masks.safetensors`: for each masked projection (q/k/v: whole KV groups, "
        "gate/up: MLP channels) a row mask, 1 = kept output row. PEFT alone loads the LoRA without the pruning "
        "(the unpruned adapted model); apply the masks after merging:",
        "",
        "```python",
        "from pathlib import Path",
        "from peft import PeftModel",
        "from safetensors.torch import load_file",
        "",
        "model = PeftModel.from_pretrained(base_model, adapter_dir).merge_and_unload()",
        'for name, keep in load_file(str(Path(adapter_dir) / "pruning_masks.safetensors")).items():',
        "    linear = model.get_submodule(name)",
        "    linear.weight.data[keep == 0] = 0  # a pruned output row",
        "    if linear.bias is not None:",
        "        linear.bias.data[keep == 0] = 0",
        "```",
        "",
        "The masked rows are zeros: the physically pruned model (heads and channels removed, smaller and "
        "faster) is written by `studio export ID --out DIR --pruned-model` or the Adapters tab's "
        '"Download pruned model".',
        "",
    ]


def masked_deltas(model: Any, deltas: dict[str, torch.Tensor], row_masks: dict[str, torch.Tensor]) -> dict[str, Any]:
    """ΔW of the pruned model, diag(mask)(W0 + ΔW) − W0, for a PEFT model whose base weights are W0.

    Masked modules without a LoRA get the pruned rows of −W0. Idempotent: an exact-LoRA
    adapter's ΔW already cancels the pruned rows.
    """
    out = dict(deltas)
    with torch.no_grad():
        for name, mask in row_masks.items():
            module = _find(model, name)
            base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            w0 = base.weight.detach().float().cpu()
            delta = out.get(name)
            delta = torch.zeros_like(w0) if delta is None else delta.float().cpu()
            out[name] = mask.float()[:, None] * (w0 + delta) - w0
    return out


def masks_path(adapter_dir: str | Path) -> Path | None:
    """Where a LoRAPrune adapter keeps its masks (next to it or in ``native/``), or None for other adapters."""
    for path in (Path(adapter_dir) / MASKS_FILE, Path(adapter_dir) / "native" / MASKS_FILE):
        if path.exists():
            return path
    return None


def saved_masks(adapter_dir: str | Path) -> dict[str, torch.Tensor] | None:
    """The row masks saved with a LoRAPrune adapter, or None for other adapters."""
    path = masks_path(adapter_dir)
    return row_masks_from_file(path) if path is not None else None


def attach_output_masks(peft_model: Any, adapter_name: str, row_masks: dict[str, torch.Tensor]) -> list[Any]:
    """Zero the pruned output rows of the masked modules while ``adapter_name`` is active; returns hook handles.

    For a base shared by several adapters (the serving pool): the base weights stay intact and
    the other adapters are unaffected. Exact: a zero output row is what the pruned model computes.
    Inside ``peft_model.disable_adapter()`` (the pool's "no adapter") the masks are off too.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    # disable_adapter() switches every tuner layer off but leaves the active adapter name as it was:
    # ask a tuner layer of this wrapper (a masked module itself may have no LoRA).
    tuner = next((m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)), None)

    def masks_on() -> bool:
        return adapter_name in peft_model.active_adapters and not (tuner is not None and tuner.disable_adapters)

    handles = []
    for name, mask in row_masks.items():
        module = _find(peft_model, name)

        def hook(_mod: Any, _inputs: Any, output: torch.Tensor, keep: torch.Tensor = mask) -> torch.Tensor | None:
            if not masks_on():
                return None
            return output * keep.to(device=output.device, dtype=output.dtype)

        handles.append(module.register_forward_hook(hook))
    return handles
