"""What a training job over several processes accepts, checked at submit time (no torch import here).

Kept apart from :mod:`studio.training.distributed` so that the request schema can check a
request without loading torch. Why each global-decision variant agrees across ranks (or not)
is written next to its name in ``AGREEMENT``; the tests in tests/training/test_distributed.py
train each of them with one and with two processes and compare the losses.
"""

from __future__ import annotations

from typing import Any

# Variants whose steps take a global decision, and why every rank takes the same one. The engine
# sums the gradients (and a variant's ``summed_across_ranks`` tensors) across the ranks before
# clipping, so a decision taken from parameters and summed gradients is the same everywhere.
AGREEMENT: dict[str, str] = {
    "adalora": "rank allocation from |w·∂L/∂w| of the summed gradients and the (identical) parameters",
    "sora": "proximal step on the gates from the summed gradients; the same threshold on every rank",
    "increlora": "importance from ∂L/∂ΔW collected in backward, summed across the ranks (summed_across_ranks)",
    "loraprune": "head/channel importance from the summed LoRA gradients and the weights",
    "dylora": "the sampled rank comes from a generator seeded with (seed, step), never from the global RNG",
}

# Variants refused with more than one process, with the reason shown at submit time.
REFUSED: dict[str, str] = {}

# FSDP shards the base's decoder layers (studio.training.fsdp); what it does not support yet.
FSDP_VARIANTS = frozenset({"lora"})  # variants that reach into the model mid-run would see sharded tensors
FSDP_NEEDS_PROCESSES = "fsdp: sharding the base (FSDP) needs more than one process (processes × nodes > 1)"


def hyper_refusal(hyper: Any) -> str | None:
    """Why these training settings cannot run (over several processes), or None."""
    world = hyper.processes * getattr(hyper, "nodes", 1)
    if hyper.fsdp and world < 2:
        return FSDP_NEEDS_PROCESSES
    if world > 1 and hyper.batch_size * hyper.grad_accum < world:
        where = (
            f"{hyper.processes} processes" if world == hyper.processes else f"{world} processes ({hyper.nodes} nodes)"
        )
        return (
            f"processes: {where} need at least {world} examples per step "
            f"(batch_size × grad_accum is {hyper.batch_size * hyper.grad_accum})"
        )
    return None


def variant_refusal(variant: str, processes: int, fsdp: bool = False) -> str | None:
    """Why ``variant`` cannot train over ``processes`` processes (sharded with FSDP when ``fsdp``), or None."""
    if processes > 1 and variant in REFUSED:
        return f"variant {variant} cannot train over several processes: {REFUSED[variant]}"
    if fsdp and variant not in FSDP_VARIANTS:
        return (
            f"variant {variant} cannot train with fsdp (FSDP) yet: only {', '.join(sorted(FSDP_VARIANTS))}; "
            "its hooks read whole adapter tensors, which FSDP shards across the processes"
        )
    return None
