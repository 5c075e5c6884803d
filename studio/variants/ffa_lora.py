"""FFA-LoRA (Sun et al., 2024): LoRA with A random, seeded and frozen; only B is trained (spec §2).

``h = W0 x + s B A x``. A is drawn from its own seed (``a_seed`` and the module name), so
every client of a federated run holds bit-for-bit the same A without sending it; it has
``requires_grad=False`` and is not in the optimizer. B starts at zero. This is not PEFT's
LoRA-FA *optimizer* (which rewrites B's gradient): here A is simply a constant.

Federated learning needs only B: the server average of B is exact because
``mean_k(B_k A) = (mean_k B_k) A`` (:func:`federated_average`), and a client uploads
r·m numbers per module instead of r·(m+n) (:func:`client_payload`, :func:`traffic_per_round`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from studio.variants.base import BuildContext, Paper, VariantParams
from studio.variants.peft_common import PeftVariant, tuner_layers


class FfaLoraParams(VariantParams):
    a_init: Literal["kaiming_uniform", "gaussian"] = Field(
        "kaiming_uniform",
        description="Distribution of the frozen A: Kaiming-uniform (PEFT's default LoRA init) or "
        "Gaussian with std 1/r.",
    )
    a_seed: int = Field(
        0,
        ge=0,
        le=2**31 - 1,
        description="Seed of the frozen A. Every client of a federated run must use the same value.",
    )


def frozen_a(module_name: str, r: int, n: int, seed: int, init: str = "kaiming_uniform") -> torch.Tensor:
    """The frozen A (r × n, fp32, CPU) of one module: a function of (seed, module name) only.

    Kaiming-uniform with a=√5 on an (r × n) weight is U(−1/√n, 1/√n); Gaussian uses std 1/r
    (PEFT's ``init_lora_weights="gaussian"``).
    """
    # torch's CPU generator only uses 32 bits of its seed: hash (seed, name) into them.
    digest = hashlib.blake2b(f"{seed}/{module_name}".encode(), digest_size=4).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
    if init == "gaussian":
        return torch.randn(r, n, generator=gen) / r
    bound = 1.0 / math.sqrt(n)
    return (torch.rand(r, n, generator=gen) * 2.0 - 1.0) * bound


class FfaLora(PeftVariant):
    name = "ffa_lora"
    title = "FFA-LoRA (frozen A)"
    summary = "LoRA with the first matrix fixed at a shared random value; only the second one is trained."
    description = (
        "LoRA learns two small matrices per layer. FFA-LoRA fixes the first one at random numbers that "
        "everyone can recreate from a seed and trains only the second. That halves what is trained and, "
        "when several parties train together without sharing data (federated learning), what they have "
        "to send; averaging their results is then exact, which makes collaborative and privacy-preserving "
        "training more stable than with plain LoRA."
    )
    when_to_use = (
        "Federated or differentially private training, or when you want half of LoRA's trainable parameters. "
        "With A frozen, alpha only rescales B's learning rate: fix alpha and tune the learning rate."
    )
    paper = Paper("Improving LoRA in Privacy-preserving Federated Learning", 2024, "2403.12313")
    Params = FfaLoraParams

    def peft_config(self, ctx: BuildContext) -> Any:
        return self.lora_config(ctx)

    def build(self, ctx: BuildContext) -> Any:
        model = super().build(ctx)
        p = self.params
        for name, layer in tuner_layers(model).items():
            weight = layer.lora_A["default"].weight
            r, n = weight.shape
            with torch.no_grad():
                weight.copy_(frozen_a(name, r, n, p.a_seed, p.a_init).to(weight.device, weight.dtype))
            weight.requires_grad_(False)
        return model

    def rank_extra(self, model: Any) -> dict[str, dict[str, float]]:
        """‖B‖_F per module (what the FFA-LoRA chart shows)."""
        return {name: {"b_norm": float(b.norm())} for name, b in client_payload(model).items()}


# -- federated helpers (pure functions on {module name: B}) ---------------------------------------------


def client_payload(model: Any) -> dict[str, torch.Tensor]:
    """What a client uploads after local training: B of every module (unscaled, CPU copies), never A."""
    return {name: layer.lora_B["default"].weight.detach().cpu().clone() for name, layer in tuner_layers(model).items()}


def payload_bytes(payload: dict[str, torch.Tensor]) -> int:
    """Bytes sent for one payload (tensor data only)."""
    return sum(t.numel() * t.element_size() for t in payload.values())


def federated_average(
    payloads: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Σ_k p_k B_k per module with p_k = w_k / Σ w (equal weights when ``weights`` is None).

    With A shared and frozen this is exactly the average of the clients' updates:
    (Σ p_k B_k) A = Σ p_k (B_k A).
    """
    if not payloads:
        raise ValueError("no client payloads to average")
    w = torch.tensor([1.0] * len(payloads) if weights is None else list(weights), dtype=torch.float64)
    if len(w) != len(payloads) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError("weights must be one non-negative number per client, not all zero")
    w = w / w.sum()
    keys = set(payloads[0])
    if any(set(p) != keys for p in payloads):
        raise ValueError("clients sent different module sets")
    out = {}
    for key in payloads[0]:
        acc = sum(float(wk) * p[key].double() for wk, p in zip(w, payloads, strict=True))
        out[key] = acc.to(payloads[0][key].dtype)
    return out


def load_payload(model: Any, payload: dict[str, torch.Tensor]) -> None:
    """Set every module's B to the (averaged) payload; A is untouched."""
    layers = tuner_layers(model)
    with torch.no_grad():
        for name, b in payload.items():
            target = layers[name].lora_B["default"].weight
            target.copy_(b.to(target.device, target.dtype))


def traffic_per_round(model: Any) -> dict[str, int]:
    """Bytes one client uploads per round: FFA-LoRA (B only, r·m) vs plain LoRA (A and B, r·(m+n))."""
    ffa = lora = 0
    for layer in tuner_layers(model).values():
        b, a = layer.lora_B["default"].weight, layer.lora_A["default"].weight
        ffa += b.numel() * b.element_size()
        lora += b.numel() * b.element_size() + a.numel() * a.element_size()
    return {"ffa_lora": ffa, "lora": lora}


VARIANT = FfaLora
