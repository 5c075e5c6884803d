"""Merge methods by name: a method is one file with a ``merge_module`` function plus one line in :data:`METHODS`.

This module is imported by the request schema (the method names become its ``Literal``), by
the CLI and by the merge job, so it stays light: the methods' own modules (and torch) are
imported only when a merge runs (:meth:`MergeMethod.load`).

A method's ``merge_module(request, changes, module, weights)`` gets the parents loaded on one
base (:class:`studio.merging.deltas.ParentChanges`) and returns ``(B′, A′, error)`` for one
module: the merged change as LoRA factors at scale 1, and the relative Frobenius error of
those factors against the merged change the method defines (0 where the factors ARE the
result, as for LoRA-LEGO).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DENSE = "studio.merging.methods:merge_dense_module"


@dataclass(frozen=True)
class MergeMethod:
    """One merge method: its name, where its code is, and what the rest of the studio needs to know about it."""

    name: str
    target: str  # "module:function" of its merge_module
    title: str  # what the model card calls it ("made with {title} of: ...")
    averages: bool  # default weights: 1/n each (True: a sum would grow with n) or 1 each
    options: tuple[str, ...] = ()  # request fields the method reads besides weights and rank (logs, cards)
    rank_units: bool = False  # works on the parents' LoRA factors: plain LoRAs adapting the same modules only

    def load(self) -> Callable[..., tuple[Any, Any, float]]:
        """The method's ``merge_module`` function (imports its module)."""
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod("linear", DENSE, "a weighted sum", averages=True),
        MergeMethod("ties", DENSE, "TIES-merging", averages=False, options=("density",)),
        MergeMethod("dare_linear", DENSE, "DARE and a weighted sum", averages=True, options=("density", "seed")),
        MergeMethod("dare_ties", DENSE, "DARE and TIES", averages=False, options=("density", "seed")),
        MergeMethod(
            "lego",
            "studio.merging.lego:merge_module",
            "LoRA-LEGO (k-means clustering of rank units)",
            averages=False,
            options=("param_reweight", "output_reweight", "seed"),
            rank_units=True,
        ),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def describe_options(method: str, request: Any) -> str:
    """', density 0.2, seed 0' style text of the options ``method`` uses, for logs and model cards."""
    parts = [f"{name.replace('_', ' ')} {_text(getattr(request, name))}" for name in METHODS[method].options]
    return "".join(f", {p}" for p in parts)


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
