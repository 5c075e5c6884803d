"""IncreLoRA's layer (chunked rank-1 components with a gradient hook) and its growing LR scheduler."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from studio.variants._adapter_wrap import AdapterLinear
from studio.variants.base import lr_lambda


class IncreLoraLinear(AdapterLinear):
    """A frozen linear plus chunked rank-1 components; chunk j holds A_j (c×n), B_j (m×c), E_j (c)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__(base, dropout)
        self.alpha = float(alpha)
        self.k = int(r)  # active components
        self.lora_A, self.lora_B, self.lora_E = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        self.track = False  # collect ∂L/∂ΔW during backward (until the budget is reached)
        self.grad_acc: torch.Tensor | None = None
        self.add_chunk(r, e_value=0.0, ab_trainable=True, e_trainable=True, init=True)

    def add_chunk(self, c: int, *, e_value: float, ab_trainable: bool, e_trainable: bool, init: bool) -> int:
        """Append c components; with ``init`` draw a_i, b_i ~ N(0, 0.02²) (else zeros, e.g. on resume)."""
        w = self.base_layer.weight
        m, n = w.shape
        a = torch.zeros(c, n, device=w.device, dtype=torch.float32)
        b = torch.zeros(m, c, device=w.device, dtype=torch.float32)
        if init:
            with torch.no_grad():
                for i in range(c):  # component by component, a then b, as the official add_reserve_param
                    a[i].normal_(0.0, 0.02)
                    b[:, i].normal_(0.0, 0.02)
        e = torch.full((c,), float(e_value), device=w.device, dtype=torch.float32)
        self.lora_A.append(nn.Parameter(a, requires_grad=ab_trainable))
        self.lora_B.append(nn.Parameter(b, requires_grad=ab_trainable))
        self.lora_E.append(nn.Parameter(e, requires_grad=e_trainable))
        return len(self.lora_A) - 1

    def factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A (K×n), B (m×K), coef (K)) over all stored components; coef = α/(k+1e-5)·e."""
        a = torch.cat(list(self.lora_A), 0)
        b = torch.cat(list(self.lora_B), 1)
        coef = torch.cat(list(self.lora_E), 0) * (self.alpha / (self.k + 1e-5))
        return a, b, coef

    def delta(self) -> torch.Tensor:
        a, b, coef = self.factors()
        return (b * coef) @ a

    def delta_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return self.delta().float().cpu()

    def adapter_forward(self, xd: torch.Tensor) -> torch.Tensor:
        a, b, coef = self.factors()
        xd = xd.to(a.dtype)
        y = ((xd @ a.t()) * coef) @ b.t()
        if self.track and self.training and y.requires_grad:
            # ∂L/∂ΔW = Σ_tokens g_t x_tᵀ with the dropped input, as the official W-module hook sees it
            saved = xd.detach()
            y.register_hook(lambda g, saved=saved: self._collect(g, saved))
        return y

    def _collect(self, g: torch.Tensor, saved: torch.Tensor) -> None:
        grad = g.reshape(-1, g.shape[-1]).t().float() @ saved.reshape(-1, saved.shape[-1]).float()
        self.grad_acc = grad if self.grad_acc is None else self.grad_acc + grad


class GrowingLR(LRScheduler):
    """One warmup-then-decay per param group: group i starts at scheduler step ``starts[i]`` and, like
    every group, reaches the end of its schedule at ``total`` (the official Multi_LambdaLR)."""

    def __init__(self, optimizer: Any, total: int, warmup: int, kind: str, starts: list[int]):
        self.total_steps, self.warmup_steps, self.kind = int(total), int(warmup), kind
        self.starts = [int(s) for s in starts]
        super().__init__(optimizer)

    def factor(self, i: int) -> float:
        start = self.starts[i]
        local = max(0, self.last_epoch - start)
        return lr_lambda(max(1, self.total_steps - start), self.warmup_steps, self.kind)(local)

    def get_lr(self) -> list[float]:
        return [base * self.factor(i) for i, base in enumerate(self.base_lrs)]

    def add_group(self, start: int) -> None:
        """Register the optimizer's newest param group, added at scheduler step ``start``."""
        group = self.optimizer.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])
        self.base_lrs.append(group["initial_lr"])
        self.starts.append(int(start))
        group["lr"] = self.base_lrs[-1] * self.factor(len(self.starts) - 1)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
