"""Which adapters can be merged: refused at submission, with what to do instead, not on a worker later."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed


def check_mergeable(adapters: list[Any], method: str = "linear") -> None:
    """Raise ValidationFailed unless ``adapters`` (registry rows) can be merged into one plain LoRA by ``method``.

    All must be causal-LM adapters of one base model, stored as PEFT safetensors, without
    fully trained modules (``modules_to_save``: a classifier's head, say) and without
    LoRAPrune's pruning masks, neither of which is a weight change a LoRA can carry. A
    method that works on rank units (LoRA-LEGO) also needs plain LoRAs of the same modules
    (:func:`check_rank_units`).
    """
    from studio.errors import StudioError
    from studio.evaluation.loading import ADAPTER_CONFIG, check_adapter_dir
    from studio.merging.registry import METHODS
    from studio.variants._loraprune_masks import MASKS_FILE

    bases = {row.base_model for row in adapters}
    if len(bases) > 1:
        listed = "; ".join(f"#{row.id} is for {row.base_model}" for row in adapters)
        raise ValidationFailed(f"adapters of different base models cannot be merged ({listed}); pick one base model")
    kinds: dict[str, list[int]] = {}
    for row in adapters:
        folder = Path(row.path)
        try:
            check_adapter_dir(folder, row.id)
        except StudioError as exc:
            raise ValidationFailed(str(exc)) from None
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        if config.get("task_type") == "SEQ_CLS":
            raise ValidationFailed(
                f"adapter #{row.id} is a classifier: its head is trained in full, not as a weight change, "
                "so classifiers cannot be merged yet"
            )
        if config.get("modules_to_save"):
            raise ValidationFailed(
                f"adapter #{row.id} trains {', '.join(config['modules_to_save'])} in full (modules_to_save); "
                "only low-rank weight changes can be merged"
            )
        if (folder / MASKS_FILE).is_file() or (folder / "native" / MASKS_FILE).is_file():
            raise ValidationFailed(
                f"adapter #{row.id} is a LoRAPrune adapter: its pruning masks would be lost in a merge"
            )
        kinds.setdefault(str(config.get("peft_type", "LORA")), []).append(row.id)
    if len(kinds) > 1:
        # PEFT loads adapters of one type onto one model; a merge of one adapter writes it as a plain LoRA.
        listed = "; ".join(f"{kind}: {', '.join(f'#{i}' for i in ids)}" for kind, ids in sorted(kinds.items()))
        others = [f"#{i}" for kind, ids in sorted(kinds.items()) if kind != "LORA" for i in ids]
        raise ValidationFailed(
            f"the adapters are of different PEFT types ({listed}); merge {', '.join(others)} alone first "
            "(a merge of one adapter writes it as a plain LoRA) and merge the result"
        )
    if METHODS[method].rank_units:
        check_rank_units(adapters, method)


def check_rank_units(adapters: list[Any], method: str = "lego") -> None:
    """Raise ValidationFailed unless every adapter is a plain LoRA (no DoRA, no LoRA bias) adapting the same modules.

    The modules are read from the saved tensor names, so a regex or ``all-linear`` target
    list is compared by what it actually adapted.
    """
    from studio.evaluation.loading import ADAPTER_CONFIG

    modules: dict[int, frozenset[str]] = {}
    for row in adapters:
        folder = Path(row.path)
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        kind = not_plain_lora(config)
        if kind:
            raise ValidationFailed(
                f"adapter #{row.id} is not a plain LoRA ({kind}), so it has no rank units for {method}; "
                f"merge it alone with linear first (that writes it as a plain LoRA) and use the result"
            )
        modules[row.id] = adapted_modules(folder)
    first_id, first = next(iter(modules.items()))
    for row_id, names in modules.items():
        if names != first:
            missing, extra = sorted(first - names), sorted(names - first)
            what = "; ".join(
                part
                for part in (
                    f"lacks {_listed(missing)}" if missing else "",
                    f"also adapts {_listed(extra)}" if extra else "",
                )
                if part
            )
            raise ValidationFailed(
                f"{method} needs adapters of the same target modules: #{row_id} {what} compared with #{first_id}; "
                "use linear, ties or dare for adapters of different modules"
            )


def not_plain_lora(config: dict[str, Any]) -> str:
    """What makes a saved adapter (its ``adapter_config.json``) more than a plain LoRA ("use_dora", "ADALORA"), or ""."""
    odd = [k for k in ("use_dora", "lora_bias") if config.get(k)]
    if config.get("peft_type", "LORA") != "LORA" or odd:
        return ", ".join(odd) or str(config.get("peft_type"))
    return ""


def check_not_a_copy(request: Any, adapters: list[Any]) -> None:
    """Raise ValidationFailed when a merge of one adapter would write that adapter back unchanged.

    One adapter alone is a real use when the result differs from it, and is accepted then: a
    ``rank`` below its own (the SVD re-factorisation resizes it), a weight other than 1 (scales
    or reverses it), a method that changes a lone adapter (ties or dare below density 1,
    lego's clustering, whose output reweighting can rescale it), or an adapter that is not a
    plain LoRA (DoRA, AdaLoRA, ...: the merge rewrites it as one, the way round that
    :func:`check_mergeable` suggests). What is left is a copy under a new id, refused in words.
    """
    from studio.evaluation.loading import ADAPTER_CONFIG

    if len(adapters) != 1 or request.resolved_weights() != [1.0] or not _lone_change_kept(request):
        return
    row = adapters[0]
    folder = Path(row.path)
    if not_plain_lora(json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))):
        return
    own = max(lora_ranks(folder).values(), default=0)
    if not own or (request.rank is not None and request.rank < own):
        return
    at = "its own rank" if request.rank in (None, own) else f"rank {request.rank}, above its own"
    raise ValidationFailed(
        f"choose two or more adapters to merge; adapter #{row.id} alone ({request.method}, weight 1, {at} {own}) "
        f"would be copied unchanged. To make it smaller, set Rank below {own}; to scale or reverse it, give it "
        "a weight other than 1"
    )


def _lone_change_kept(request: Any) -> bool:
    """True when ``request.method`` gives a single adapter's ΔW back as it is (at weight 1).

    linear is Σ wᵢ ΔWᵢ; at density 1 ties keeps every change and its sign, and dare drops
    none, so those are the same sum. lego is left out: its cluster count is capped by the
    distinct non-zero units, which can make √(r̄ / k) above 1 and so change even one adapter.
    """
    if request.method == "linear":
        return True
    return request.method in ("ties", "dare_linear", "dare_ties") and request.density >= 1.0


def lora_ranks(folder: Path) -> dict[str, int]:
    """``{module: rank}`` of a saved PEFT LoRA, from the shapes of its A factors (rank patterns included)."""
    from safetensors import safe_open

    from studio.evaluation.loading import ADAPTER_WEIGHTS

    ranks = {}
    with safe_open(str(folder / ADAPTER_WEIGHTS), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (not a dict)
            for marker in (".lora_A", ".lora_embedding_A"):
                if marker in key:
                    ranks[key.split(marker)[0]] = int(handle.get_slice(key).get_shape()[0])
    return ranks


def adapted_modules(folder: Path) -> frozenset[str]:
    """The module paths a saved PEFT LoRA adapts (from its ``….lora_A.weight`` tensor names)."""
    from safetensors import safe_open

    from studio.evaluation.loading import ADAPTER_WEIGHTS

    with safe_open(str(folder / ADAPTER_WEIGHTS), "pt") as handle:
        return frozenset(key.split(".lora_A")[0] for key in handle.keys() if ".lora_A" in key)  # noqa: SIM118 (not a dict)


def _listed(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
