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

# FSDP shards the base's decoder layers (studio.training.fsdp), adapter tensors included. Every
# registered variant trains sharded except these, whose hooks read whole adapter tensors (or their
# gradients) outside the forward pass, where FSDP holds only this rank's shard. The one place to say
# it: tests/training/test_distributed.py trains every other variant sharded over two processes
# against one process.
FSDP_REFUSED: dict[str, str] = {
    "adalora": (
        "PEFT's rank allocator reads each adapter's whole importance scores after every optimizer step "
        "(to rank and mask singular values across all modules)"
    ),
    "sora": (
        "its L1 penalty on the gates is computed outside the forward pass, so its gradient lands on the "
        "gathered gates instead of FSDP's shards"
    ),
    "s2_lora": (
        "its L1 penalty on the coefficients λ is computed outside the forward pass, so its gradient lands on "
        "the gathered coefficients instead of FSDP's shards"
    ),
    "increlora": (
        "its importance multiplies each whole ΔW by the ∂L/∂ΔW collected in backward, and it adds adapter "
        "components mid-run (tensors FSDP never sharded)"
    ),
    "loraprune": (
        "its head/channel importance normalises whole LoRA weights times their gradients before pruning "
        "whole rows and columns"
    ),
}
FSDP_NEEDS_PROCESSES = "fsdp: sharding the base (FSDP) needs more than one process (processes × nodes > 1)"
# A kept adapter is a PEFT export mid-run, and PEFT's save reads the layers' state dicts, which FSDP
# returns as shards: refused rather than silently keeping none.
FSDP_NO_KEPT_ADAPTERS = (
    "keep_checkpoints: adapters kept along training cannot be written from a sharded (fsdp) run yet; "
    "set keep_checkpoints to 0 or turn fsdp off"
)


def hyper_refusal(hyper: Any) -> str | None:
    """Why these training settings cannot run (over several processes), or None."""
    world = hyper.processes * getattr(hyper, "nodes", 1)
    if hyper.fsdp and world < 2:
        return FSDP_NEEDS_PROCESSES
    if hyper.fsdp and getattr(hyper, "keep_checkpoints", 0):
        return FSDP_NO_KEPT_ADAPTERS
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
    if fsdp and variant in FSDP_REFUSED:
        reason = FSDP_REFUSED[variant]
        return f"variant {variant} cannot train with fsdp (FSDP shards its tensors across the processes): {reason}"
    return None
