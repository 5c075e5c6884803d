"""Frozen base linears stored in the compute precision on a GPU, exact fp32 originals restored after.

Under bf16/fp16 autocast every linear layer casts its fp32 weight to the low precision on
every forward pass: for a frozen weight the cast is never cached (autocast caches only
leaves that require grad), so each step pays one extra kernel and one weight-sized copy per
adapted layer. On a large GPU training a small model that doubled the step time (the step
is bound by kernel launches, docs/performance.md). Storing the frozen base linears in the
compute dtype removes those casts and halves their memory; the trainable adapter tensors,
embeddings, norms and heads stay fp32.

Exports must stay exact for the ORIGINAL fp32 base (merged weights equal W0 + ΔW to 1e-5,
PiSSA's residual, DoRA's and MiSS's merge-based ΔW), so the fp32 originals are kept on the
host and put back when training ends. A 135M model needs 0.5 GB of host memory for that; a
GPU host has it. On a CPU nothing is converted (autocast's CPU kernels were not the
bottleneck there, and the memory would be spent twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FrozenLinearStorage:
    """The frozen base linears of a model, converted to ``dtype``; :meth:`restore` undoes it exactly."""

    dtype: Any = None
    originals: list[tuple[Any, Any]] = field(default_factory=list)  # (parameter, fp32 host copy)

    @classmethod
    def convert(cls, model: Any, dtype: Any, base_params: set[int]) -> FrozenLinearStorage:
        """Store every frozen ``nn.Linear`` weight/bias that belongs to the base model in ``dtype``.

        ``base_params`` are the ``id``s of the plain base model's parameters before the
        variant wrapped it: adapter tensors a variant freezes (FFA-LoRA's A, LoRA-XS's
        factors) are never touched. Embeddings (and an lm_head tied to them) stay fp32.
        """
        import torch

        storage = cls(dtype=dtype)
        keep = {id(p) for p in _embedding_weights(model)}
        seen: set[int] = set()
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            for param in (module.weight, module.bias):
                if param is None or id(param) in seen:
                    continue
                seen.add(id(param))
                if param.requires_grad or id(param) not in base_params or id(param) in keep:
                    continue
                if not param.is_floating_point() or param.dtype == dtype:
                    continue
                storage.originals.append((param, param.data.to("cpu", copy=True)))
                param.data = param.data.to(dtype)
        return storage

    @property
    def converted(self) -> int:
        """Number of tensors stored in the low precision."""
        return len(self.originals)

    @property
    def bytes_saved(self) -> int:
        """Device memory saved: the difference in element size over the converted tensors."""
        if not self.originals:
            return 0
        import torch

        low = torch.empty((), dtype=self.dtype).element_size()
        return sum(original.numel() * (original.element_size() - low) for _, original in self.originals)

    def restore(self) -> None:
        """Put the exact fp32 originals back (on each parameter's device). Idempotent."""
        for param, original in self.originals:
            param.data = original.to(param.device)
        self.originals = []


def _embedding_weights(model: Any) -> list[Any]:
    out = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            module = None
        if module is not None and getattr(module, "weight", None) is not None:
            out.append(module.weight)
    return out
