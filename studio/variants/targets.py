"""Which layers a variant adapts: default targets and PEFT-compatible name matching."""

from __future__ import annotations

from typing import Any

# Heads are trained whole (modules_to_save) or not at all, never given a low-rank update.
HEAD_NAMES = ("lm_head", "score", "classifier", "qa_outputs", "cls")


def default_target_modules(model: Any) -> list[str]:
    """Name suffixes of every linear layer in the attention and MLP blocks (heads excluded).

    For Llama-like models this is q/k/v/o/gate/up/down_proj; for BERT-like encoders
    query/key/value/dense. Suffixes (not full names) are what PEFT's ``target_modules`` takes.
    """
    import torch

    suffixes: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or not name:
            continue
        parts = name.split(".")
        if parts[0] in HEAD_NAMES or any(p in HEAD_NAMES for p in parts[:-1]):
            continue
        suffixes.add(parts[-1])
    return sorted(suffixes)


def matches(name: str, targets: list[str]) -> bool:
    """PEFT's list semantics: a target matches a module name exactly or as its last dotted parts."""
    return any(name == t or name.endswith("." + t) for t in targets)


def find_target_linears(model: Any, targets: list[str]) -> dict[str, Any]:
    """{full module name: nn.Linear} of the layers matching ``targets``, heads excluded."""
    import torch

    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or not matches(name, targets):
            continue
        if name.split(".")[0] in HEAD_NAMES:
            continue
        found[name] = module
    return found


def default_modules_to_save(model: Any, task: str) -> list[str]:
    """The task head trained in full: ``score``/``classifier`` for sequence classification, else none."""
    if task != "classification":
        return []
    return [name for name in ("score", "classifier") if getattr(model, name, None) is not None]
