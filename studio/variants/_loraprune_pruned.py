"""The physically pruned model of a LoRAPrune adapter: heads and channels removed, written for transformers.

LoRAPrune's masks remove whole KV groups (a KV head with all its query heads, so the
grouped-query layout stays valid) and MLP channels, but never in the first int(0.1·L)
layers nor in the last one, and each pruned layer keeps its own best groups. The pruned
model therefore has *different widths per layer*.

What plain transformers can load (checked on transformers 5.x): ``LlamaConfig`` (and
Mistral/Qwen2) hold one ``num_attention_heads``, ``num_key_value_heads`` and
``intermediate_size`` for all layers, and ``from_pretrained`` refuses weights whose shape
differs from the one the config builds (``ignore_mismatched_sizes`` re-initialises them
randomly). The only decoder configs with per-layer widths (Gemma3n's ``intermediate_size``
list, Laguna's ``num_attention_heads_per_layer``) belong to other architectures (AltUp,
gated attention, q/k norms) that cannot reproduce a Llama layer. Padding every layer to the
widest one with zero heads/channels would be exact and load plainly, but the unpruned layers
are at full width, so the padded model would be exactly as large and slow as the base.

So the choice here is:

* **uniform widths** (every layer keeps the same number of heads and channels): a plain
  checkpoint of the base architecture with the reduced ``num_attention_heads`` /
  ``num_key_value_heads`` / ``intermediate_size`` (and ``head_dim`` set explicitly), loaded by
  ``AutoModelForCausalLM.from_pretrained(dir)`` with nothing else;
* **per-layer widths** (LoRAPrune's normal case): the same checkpoint layout with the widest
  layer's values in the usual config fields, the per-layer widths in ``pruned_layers`` and a
  20-line ``modeling_pruned.py`` next to the weights, referenced by ``auto_map``. It
  subclasses the base class from transformers and only resizes each layer's q/k/v/o and
  gate/up/down linears before the weights load; the forward pass is transformers' own
  (Llama-style attention infers the head count from the projection size, and the number of
  query heads per KV head is the same in every layer). Load with
  ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``; no studio code.

The weights are the masked model's effective weights (W0 + sBA of the merged LoRA): q/k/v
rows and o columns of removed groups, gate/up rows and down columns of removed channels are
cut, so the pruned model computes the same logits as the masked one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from studio.errors import StudioError
from studio.variants import _loraprune_masks as lp

MODELING_FILE = "modeling_pruned.py"
# The shipped model class: imports only torch and transformers (``{base}`` is the base class name).
MODELING_TEMPLATE = '''"""{base} with per-layer attention heads and MLP channels (a LoRAPrune pruned model).

Written by Adapter Studio. transformers builds every decoder layer at one width from
config.json; this class resizes each layer's linears to the widths in
``config.pruned_layers`` before the weights are loaded. The forward pass is transformers' own.
"""

from torch import nn
from transformers import {base} as _Base


def _resized(linear, in_features=None, out_features=None):
    return nn.Linear(
        in_features or linear.in_features,
        out_features or linear.out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )


class Pruned{base}(_Base):
    def __init__(self, config):
        super().__init__(config)
        widths, head_dim = config.pruned_layers, config.head_dim
        for i, layer in enumerate(self.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            q_rows = widths["num_attention_heads"][i] * head_dim
            kv_rows = widths["num_key_value_heads"][i] * head_dim
            channels = widths["intermediate_size"][i]
            attn.q_proj = _resized(attn.q_proj, out_features=q_rows)
            attn.k_proj = _resized(attn.k_proj, out_features=kv_rows)
            attn.v_proj = _resized(attn.v_proj, out_features=kv_rows)
            attn.o_proj = _resized(attn.o_proj, in_features=q_rows)
            mlp.gate_proj = _resized(mlp.gate_proj, out_features=channels)
            mlp.up_proj = _resized(mlp.up_proj, out_features=channels)
            mlp.down_proj = _resized(mlp.down_proj, in_features=channels)
        self.post_init()
'''
AUTO_CLASS = {"causal-lm": "AutoModelForCausalLM", "classification": "AutoModelForSequenceClassification"}


@dataclass
class PrunedLayout:
    """Kept KV groups / MLP channels of each decoder layer (True = kept) and the layer geometry."""

    layers: list[lp.DecoderLayer]
    attn_keep: list[torch.Tensor]  # (num_kv_heads,) bool per layer
    mlp_keep: list[torch.Tensor]  # (intermediate,) bool per layer

    def widths(self) -> dict[str, list[int]]:
        """Per-layer num_attention_heads, num_key_value_heads and intermediate_size after pruning."""
        kv = [int(k.sum()) for k in self.attn_keep]
        return {
            "num_attention_heads": [n * layer.rep for n, layer in zip(kv, self.layers, strict=True)],
            "num_key_value_heads": kv,
            "intermediate_size": [int(k.sum()) for k in self.mlp_keep],
        }

    @property
    def uniform(self) -> bool:
        return all(len(set(values)) == 1 for values in self.widths().values())


def layout_from_row_masks(model: Any, row_masks: dict[str, torch.Tensor]) -> PrunedLayout:
    """The group layout behind LoRAPrune's row masks; refuses masks that do not remove whole groups.

    A KV head can only go together with all its query heads (grouped-query attention); q, k
    and v must agree on the groups and gate/up on the channels. Unmasked modules keep all.
    """
    layers = lp.decoder_layers(model)
    attn_keep, mlp_keep = [], []
    for layer in layers:
        groups = []
        for proj, rows_per_group in (("q_proj", layer.rep * layer.head_dim), ("k_proj", layer.head_dim)):
            mask = row_masks.get(layer.name("self_attn", proj))
            groups.append(None if mask is None else _group_mask(mask, layer.num_kv_heads, rows_per_group, layer, proj))
        v_mask = row_masks.get(layer.name("self_attn", "v_proj"))
        groups.append(None if v_mask is None else _group_mask(v_mask, layer.num_kv_heads, layer.head_dim, layer, "v"))
        attn = _agree([g for g in groups if g is not None], layer.num_kv_heads, f"{layer.prefix}.self_attn q/k/v")
        channels = [row_masks.get(layer.name("mlp", p)) for p in ("gate_proj", "up_proj")]
        mlp = _agree([c.bool() for c in channels if c is not None], layer.intermediate, f"{layer.prefix}.mlp gate/up")
        if not attn.any():
            raise StudioError(f"{layer.prefix} has no attention head left; a pruned model needs at least one per layer")
        attn_keep.append(attn)
        mlp_keep.append(mlp)
    return PrunedLayout(layers, attn_keep, mlp_keep)


def _group_mask(mask: torch.Tensor, groups: int, rows: int, layer: lp.DecoderLayer, proj: str) -> torch.Tensor:
    blocks = mask.reshape(groups, rows).bool()
    if not torch.equal(blocks.all(dim=1), blocks.any(dim=1)):
        raise StudioError(
            f"the {proj} mask of {layer.prefix} removes parts of a KV group; with grouped-query attention a KV "
            "head can only be removed with all its query heads. Re-export the adapter from a LoRAPrune run."
        )
    return blocks.all(dim=1)


def _agree(masks: list[torch.Tensor], size: int, what: str) -> torch.Tensor:
    if not masks:
        return torch.ones(size, dtype=torch.bool)
    if any(not torch.equal(m, masks[0]) for m in masks[1:]):
        raise StudioError(f"the masks of {what} disagree; LoRAPrune prunes them together")
    return masks[0].cpu()


def prune_in_place(model: Any, layout: PrunedLayout) -> None:
    """Replace each decoder layer's q/k/v/o and gate/up/down by linears without the removed groups.

    ``model`` holds the effective weights (the LoRA merged in); its config gets the new widths.
    """
    for layer, attn, mlp in zip(layout.layers, layout.attn_keep, layout.mlp_keep, strict=True):
        q_rows = attn.repeat_interleave(layer.rep * layer.head_dim)
        kv_rows = attn.repeat_interleave(layer.head_dim)
        for block, proj, rows in (
            ("self_attn", "q_proj", q_rows),
            ("self_attn", "k_proj", kv_rows),
            ("self_attn", "v_proj", kv_rows),
            ("mlp", "gate_proj", mlp),
            ("mlp", "up_proj", mlp),
        ):
            _cut(model, layer.name(block, proj), rows=rows)
        _cut(model, layer.name("self_attn", "o_proj"), cols=q_rows)
        _cut(model, layer.name("mlp", "down_proj"), cols=mlp)
    _update_config(model.config, layout)


def _cut(model: Any, name: str, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    old = model.get_submodule(name)
    weight, bias = old.weight.detach(), None if old.bias is None else old.bias.detach()
    if rows is not None:
        keep = rows.to(weight.device)
        weight, bias = weight[keep], None if bias is None else bias[keep]
    if cols is not None:
        weight = weight[:, cols.to(weight.device)]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _update_config(config: Any, layout: PrunedLayout) -> None:
    widths = layout.widths()
    # head_dim must be explicit: the default hidden_size // num_attention_heads changes with the head count
    config.head_dim = layout.layers[0].head_dim
    config.num_attention_heads = max(widths["num_attention_heads"])
    config.num_key_value_heads = max(widths["num_key_value_heads"])
    config.intermediate_size = max(widths["intermediate_size"])
    if not layout.uniform:
        config.pruned_layers = widths


def save_pruned_model(model: Any, row_masks: dict[str, torch.Tensor], out_dir: Path, task: str) -> PrunedLayout:
    """Physically prune ``model`` (LoRA merged in) by ``row_masks`` and write it as a transformers model.

    Uniform widths give a plain checkpoint; per-layer widths add ``modeling_pruned.py`` and
    ``auto_map`` (see the module docstring). A README.md says how to load it.
    """
    if task not in AUTO_CLASS:
        raise StudioError(f"a pruned model can be written for {', '.join(AUTO_CLASS)} adapters, not {task}")
    layout = layout_from_row_masks(model, row_masks)
    before = sum(p.numel() for p in model.parameters())
    prune_in_place(model, layout)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = type(model).__name__
    if not layout.uniform:
        (out_dir / MODELING_FILE).write_text(MODELING_TEMPLATE.format(base=base), encoding="utf-8")
        model.config.auto_map = {AUTO_CLASS[task]: f"{MODELING_FILE[:-3]}.Pruned{base}"}
    model.save_pretrained(str(out_dir), safe_serialization=True)
    after = sum(p.numel() for p in model.parameters())
    (out_dir / "pruning.json").write_text(
        json.dumps({"params_before": before, "params_after": after, **layout.widths()}, indent=2)
    )
    (out_dir / "README.md").write_text(_readme(layout, base, task, before, after), encoding="utf-8")
    return layout


def _readme(layout: PrunedLayout, base: str, task: str, before: int, after: int) -> str:
    widths = layout.widths()
    flag = "" if layout.uniform else ", trust_remote_code=True"
    why = (
        "Every layer keeps the same widths, so this is a plain checkpoint."
        if layout.uniform
        else "Layers keep different numbers of heads and channels, which one transformers config value cannot "
        f"express: `{MODELING_FILE}` (a {base} subclass that only resizes each layer's linears to "
        "`config.pruned_layers`) is loaded through `auto_map`, hence `trust_remote_code=True`."
    )
    return "\n".join(
        [
            "# LoRAPrune pruned model",
            "",
            f"The base `{base}` with the LoRA merged in and the pruned attention heads and MLP channels removed "
            f"(written by Adapter Studio): {after:,} parameters instead of {before:,} "
            f"({100 * (1 - after / before):.1f}% fewer).",
            "",
            f"- Query heads per layer: {widths['num_attention_heads']}",
            f"- KV heads per layer: {widths['num_key_value_heads']}",
            f"- MLP channels per layer: {widths['intermediate_size']}",
            "",
            why,
            "",
            "```python",
            f"from transformers import {AUTO_CLASS[task]}",
            f"model = {AUTO_CLASS[task]}.from_pretrained(this_dir{flag})",
            "```",
            "",
        ]
    )
