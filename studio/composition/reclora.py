"""RecLoRA: K shared meta-LoRAs per targeted linear, mixed per user by a learned gate (spec §7).

Every targeted ``nn.Linear`` (d_in -> d_out) gets the concatenated meta-LoRAs
``A_cat`` (K·r × d_in) and ``B_cat`` (d_out × K·r); meta-LoRA k is rows
``k·r:(k+1)·r`` of ``A_cat`` and the same columns of ``B_cat``. The user gate
gives ``α(u) = softmax(G h_u)`` over the K meta-LoRAs and the layer computes

    y = W0 x + s · B_cat (repeat_interleave(α, r) ⊙ (A_cat x))

which equals ``W0 x + s Σ_k α_k B_k A_k x`` (a weighted sum of products, no cross
terms). α is per ROW of the batch, so one batch may mix users.

``h_u`` is either a learned per-user embedding (``nn.Embedding`` over the known users)
or a given per-user feature vector (``feature_dim`` set; ``G`` is then
``Linear(feature_dim, K)`` on the features). A user the gate has not seen gets the
**mean gate**: the average of α over all known users (not a learned "unknown" row: the
average is what the meta-LoRAs were trained under on average, and it needs no
training data of its own). In feature mode a new user whose feature vector is given
gets ``softmax(G f)`` from it instead (cold start).

Defaults: K = 4 meta-LoRAs of rank r = 8 with ``lora_alpha = 16`` (s = 2). The spec
suggests K = 4–8, r = 8 and marks both **[verify]**: they are configurable.
User ids are strings from any grouping column (customer, persona, author).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from studio.variants._adapter_wrap import AdapterLinear, adapter_layers, wrap_linears
from studio.variants.targets import default_target_modules


class RecLoRAConfig(BaseModel):
    """How the personalised model is built (saved in the bundle, reused to rebuild it)."""

    model_config = ConfigDict(extra="forbid")

    n_meta: int = Field(4, ge=1, le=64, description="K: meta-LoRAs per module (spec: 4-8 [verify]).")
    rank: int = Field(8, ge=1, le=1024, description="r: rank of each meta-LoRA (spec: 8 [verify]).")
    lora_alpha: float = Field(16.0, gt=0, description="Scale s = lora_alpha / r (or / sqrt(r) with rsLoRA).")
    use_rslora: bool = Field(False, description="Scale by lora_alpha / sqrt(r) instead of lora_alpha / r.")
    target_modules: list[str] | None = Field(
        None, description="Linear layer names (suffixes) to adapt; empty: every attention/MLP linear."
    )
    gate_dim: int = Field(16, ge=1, le=4096, description="Size of the learned user embedding h_u.")
    feature_dim: int | None = Field(
        None, ge=1, description="Size of given user-feature vectors; set: the gate reads features, not embeddings."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the meta-LoRAs' input.")
    zero_init_b: bool = Field(True, description="B starts at zero (the model starts as the base), as in LoRA.")

    @property
    def scale(self) -> float:
        """s, the factor of every meta-LoRA's product."""
        return self.lora_alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


class _GateState:
    """The α of the batch being run, shared by every RecLoRA layer of one model."""

    def __init__(self) -> None:
        self.alpha: torch.Tensor | None = None  # (batch, K) or (1, K) for the whole batch


class RecLoRALinear(AdapterLinear):
    """A frozen linear layer plus K meta-LoRAs in concatenated form, mixed by the current α."""

    def __init__(self, base_layer: nn.Linear, config: RecLoRAConfig, state: _GateState):
        super().__init__(base_layer, config.dropout)
        self.n_meta, self.rank, self.scale = config.n_meta, config.rank, config.scale
        self._state = state
        units = config.n_meta * config.rank
        weight = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(units, self.in_features, dtype=torch.float32, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, units, dtype=torch.float32, device=weight.device))
        # PEFT's LoRA init per meta-LoRA block, so each meta-LoRA alone is an ordinary LoRA.
        for k in range(config.n_meta):
            nn.init.kaiming_uniform_(self.lora_A.data[k * self.rank : (k + 1) * self.rank], a=math.sqrt(5))
        if not config.zero_init_b:
            nn.init.normal_(self.lora_B, std=1.0 / math.sqrt(units))

    def unit_weights(self, x: torch.Tensor) -> torch.Tensor:
        """repeat_interleave(α, r) shaped to broadcast over ``x``'s rows (and its tokens)."""
        alpha = self._state.alpha
        if alpha is None:
            raise RuntimeError("a RecLoRA model was run without users: call it with users= or alphas=")
        if alpha.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"{alpha.shape[0]} users for a batch of {x.shape[0]} rows")
        weights = alpha.to(self.lora_A.dtype).repeat_interleave(self.rank, dim=-1)
        return weights.reshape(weights.shape[0], *([1] * (x.dim() - 2)), weights.shape[-1])

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.linear(x.to(self.lora_A.dtype), self.lora_A)  # (..., K·r)
        return self.scale * nn.functional.linear(hidden * self.unit_weights(x), self.lora_B)

    def delta_for(self, alpha: torch.Tensor) -> torch.Tensor:
        """ΔW_u = s Σ_k α_k B_k A_k for one user's α (K,), fp32 on the CPU."""
        weights = alpha.detach().float().cpu().repeat_interleave(self.rank)
        b, a = self.lora_B.detach().float().cpu(), self.lora_A.detach().float().cpu()
        return self.scale * (b * weights) @ a

    def delta_weight(self) -> torch.Tensor:
        """ΔW under the α currently set, which must be one user's."""
        alpha = self._state.alpha
        if alpha is None or alpha.shape[0] != 1:
            raise RuntimeError("delta_weight needs exactly one user set; use delta_for(alpha)")
        return self.delta_for(alpha[0])


class UserGate(nn.Module):
    """α(u) = softmax(G h_u) for user ids (strings); unknown users get the mean gate over known users."""

    def __init__(self, users: Sequence[str], config: RecLoRAConfig, features: torch.Tensor | None = None):
        super().__init__()
        self.users = [str(u) for u in users]
        if len(set(self.users)) != len(self.users):
            raise ValueError("user ids must be unique")
        if not self.users:
            raise ValueError("a personalised model needs at least one user")
        self.index = {u: i for i, u in enumerate(self.users)}
        if config.feature_dim is None:
            self.embedding = nn.Embedding(len(self.users), config.gate_dim)
            self.proj = nn.Linear(config.gate_dim, config.n_meta)
        else:
            if features is None:
                features = torch.zeros(len(self.users), config.feature_dim)  # filled by a bundle load
            if tuple(features.shape) != (len(self.users), config.feature_dim):
                raise ValueError(f"user features must be {len(self.users)} × {config.feature_dim}")
            self.embedding = None
            self.register_buffer("features", features.detach().float().clone())
            self.proj = nn.Linear(config.feature_dim, config.n_meta)

    def known_alphas(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """α of known users (all when ``indices`` is None), shape (n, K)."""
        device = self.proj.weight.device
        if indices is None:
            indices = torch.arange(len(self.users), device=device)
        h = self.embedding(indices) if self.embedding is not None else self.features[indices]
        return torch.softmax(self.proj(h), dim=-1)

    def mean_alpha(self) -> torch.Tensor:
        """The gate an unknown user gets: the mean of α over every known user, shape (K,)."""
        return self.known_alphas().mean(dim=0)

    def alpha_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """softmax(G f) for feature vectors (n, feature_dim) of users the gate need not know."""
        if self.embedding is not None:
            raise ValueError("this gate learns user embeddings; it does not read user features")
        return torch.softmax(self.proj(features.to(self.proj.weight)), dim=-1)

    def forward(self, users: Sequence[str | None], features: Mapping[str, Sequence[float]] | None = None):
        """α (len(users), K): known users from the gate, new users from ``features`` if given, else the mean."""
        rows: list[torch.Tensor | None] = [None] * len(users)
        known = [(i, self.index[str(u)]) for i, u in enumerate(users) if u is not None and str(u) in self.index]
        if known:
            device = self.proj.weight.device
            found = self.known_alphas(torch.tensor([j for _, j in known], device=device))
            for (i, _), alpha in zip(known, found, strict=True):
                rows[i] = alpha
        mean = None
        for i, user in enumerate(users):
            if rows[i] is not None:
                continue
            if features is not None and user is not None and str(user) in features:
                rows[i] = self.alpha_from_features(torch.tensor([list(features[str(user)])]))[0]
                continue
            mean = self.mean_alpha() if mean is None else mean
            rows[i] = mean
        return torch.stack(rows)


class PersonalisedModel(nn.Module):
    """A base model whose targeted linears carry K meta-LoRAs, plus the user gate and the user map.

    Run it as ``pm(input_ids=..., users=[...])`` (one user per row, or one for the whole
    batch) or with explicit ``alphas`` (rows, K); or wrap any call of the base model
    (``generate`` included) in ``with pm.using(users): ...``. The base weights are frozen.
    With activation checkpointing on, run the backward pass inside ``pm.using(...)`` too: the
    recomputed layers read α from there (``pm(...)`` alone clears it on return).
    """

    def __init__(
        self,
        model: nn.Module,
        users: Sequence[str],
        config: RecLoRAConfig | None = None,
        features: torch.Tensor | None = None,
    ):
        super().__init__()
        self.config = config or RecLoRAConfig()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self._state = _GateState()
        targets = list(self.config.target_modules or default_target_modules(model))
        wrap_linears(model, targets, lambda _name, linear: RecLoRALinear(linear, self.config, self._state))
        self.gate = UserGate(users, self.config, features).to(next(model.parameters()).device)

    @property
    def users(self) -> list[str]:
        """The known user ids, in gate order."""
        return list(self.gate.users)

    def meta_layers(self) -> dict[str, RecLoRALinear]:
        """{module name inside the base model: RecLoRA layer}, the names PEFT keys on."""
        return adapter_layers(self.model, RecLoRALinear)

    def alphas(self, users: Sequence[str | None], features: Mapping[str, Sequence[float]] | None = None):
        """α (len(users), K) of these users (see :class:`UserGate`)."""
        return self.gate(list(users), features)

    @contextmanager
    def using(
        self,
        users: Sequence[str | None] | str | None = None,
        *,
        alphas: torch.Tensor | None = None,
        features: Mapping[str, Sequence[float]] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Every forward inside runs with these users' α (or ``alphas``); yields the α used."""
        if (users is None) == (alphas is None):
            raise ValueError("give either users or alphas")
        if isinstance(users, str):
            users = [users]
        alpha = self.alphas(users, features) if alphas is None else alphas
        if alpha.dim() == 1:
            alpha = alpha[None]
        if alpha.shape[-1] != self.config.n_meta:
            raise ValueError(f"α has {alpha.shape[-1]} weights for {self.config.n_meta} meta-LoRAs")
        previous, self._state.alpha = self._state.alpha, alpha
        try:
            yield alpha
        finally:
            self._state.alpha = previous

    def forward(self, *args: Any, users=None, alphas=None, features=None, **kwargs: Any):
        with self.using(users, alphas=alphas, features=features):
            return self.model(*args, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The meta-LoRAs and the gate: everything that training updates."""
        params = [p for layer in self.meta_layers().values() for p in (layer.lora_A, layer.lora_B)]
        return params + [p for p in self.gate.parameters()]
