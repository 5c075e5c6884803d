"""MeteoRA: N LoRA adapters of one base model as gated experts in every targeted linear layer.

Composition spec §2. Each targeted ``nn.Linear`` of the base model is replaced by a
:class:`GatedLoRALinear`::

    g    = W_g x                      # router: nn.Linear(d_in, N, bias=False)
    I, v = topk(g, k)                 # k = 2 by default
    w    = softmax(v / T)             # T = 1 in training, larger for composite inputs
    y    = W0 x + Σ_{j∈I} w_j s_j B_j A_j dropout(x)

The experts are the adapters' own ``A``/``B`` with the scale PEFT would use (``alpha/r``, or
``alpha/sqrt(r)`` with rsLoRA, ``rank_pattern``/``alpha_pattern`` honoured), held per layer
in the serving engine's zero-padded :class:`~studio.serving.bank.LayerBank` (slot ``j + 1`` is
expert ``j``; slot 0 stays "no adapter"), so ranks may differ between experts. Two ways to
compute the expert term, both from :mod:`studio.serving.lora_ops`:

- ``gather``: the spec's fast path, every (token, chosen expert) pair is one row of a
  gather-BMM over ``T·k`` rows (:func:`~studio.serving.lora_ops.gather_bmm_delta`);
- ``loop``: one matmul pair per expert at its true rank over the rows that chose it,
  scattered back with ``index_add_`` (:func:`~studio.serving.lora_ops.segmented_delta`).

``auto`` uses gather for small inputs (decoding) and the loop for long ones, where the
gathered ``[T·k, r, d_in]`` copies of the expert weights would cost more memory than they save.

Routers are the only trainable weights unless ``train_experts=True``; the base model is always
frozen. A :class:`MixtureContext` shared by all gated layers carries the routing settings and,
only while a context manager asks for them, captures the gate logits (for the gate loss) or
records each token's top-1 expert (for the heatmap), so a plain forward pays for neither.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from studio.errors import StudioError
from studio.serving.bank import HostAdapter, LayerBank, _refusal, read_adapter
from studio.serving.lora_ops import gather_bmm_delta, segmented_delta

Strategy = Literal["auto", "gather", "loop"]
# Under "auto", inputs of at most this many (token, expert) rows take the gather-BMM path. Each row
# gathers its expert's padded A and B ([r, d_in] + [d_out, r]), so long prompts go through the loop.
GATHER_MAX_ROWS = 256


@dataclass(frozen=True)
class ExpertRef:
    """Where an expert comes from: its adapter directory and, when registered, the adapter's id and name."""

    path: str
    name: str | None = None
    adapter_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MixtureContext:
    """Routing settings and optional captures shared by every gated layer of one mixture."""

    def __init__(self, top_k: int, temperature: float, strategy: Strategy):
        self.top_k = top_k
        self.temperature = temperature
        self.strategy: Strategy = strategy
        self.forced: int | None = None  # route every token to this expert alone
        self.gate_logits: list[torch.Tensor] | None = None  # filled while capturing (gate loss)
        self.choices: dict[str, list[torch.Tensor]] | None = None  # filled while recording (charts)


def _segments(slots: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(slot, rows using it) for every slot present, rows in their original order (stable sort)."""
    order = torch.argsort(slots, stable=True)
    values, counts = torch.unique_consecutive(slots[order], return_counts=True)
    return list(zip(values.tolist(), torch.split(order, counts.tolist()), strict=True))


class GatedLoRALinear(nn.Module):
    """A frozen base ``nn.Linear`` plus a router choosing the top-k of N LoRA experts per token."""

    def __init__(self, name: str, base: nn.Linear, bank: LayerBank, n_experts: int, dropout: float, context):
        super().__init__()
        self.name = name
        self.base = base
        self.bank = bank
        # fp32 router whatever the base dtype: its logits feed a softmax and the gate loss.
        self.router = nn.Linear(base.in_features, n_experts, bias=False, device=base.weight.device)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.context = context
        self.n_experts = n_experts

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(router logits [T, N], chosen experts [T, k], their weights [T, k]) for flat tokens ``[T, d_in]``."""
        ctx = self.context
        logits = self.router(flat.to(self.router.weight.dtype))
        if ctx.forced is not None:
            experts = torch.full((flat.shape[0], 1), ctx.forced, dtype=torch.long, device=flat.device)
            return logits, experts, torch.ones(flat.shape[0], 1, dtype=flat.dtype, device=flat.device)
        values, experts = logits.topk(min(ctx.top_k, self.n_experts), dim=-1)
        weights = torch.softmax(values / ctx.temperature, dim=-1)
        return logits, experts, weights.to(flat.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        ctx = self.context
        flat = x.reshape(-1, x.shape[-1])
        logits, experts, weights = self.route(flat)
        if ctx.gate_logits is not None:
            ctx.gate_logits.append(logits.view(*x.shape[:-1], self.n_experts))
        if ctx.choices is not None:
            ctx.choices.setdefault(self.name, []).append(experts[:, 0].view(x.shape[:-1]).detach().cpu())
        n_tokens, k = experts.shape
        # Row t*k + i is token t with its i-th chosen expert.
        rows = self.dropout(flat)
        rows = rows.repeat_interleave(k, dim=0) if k > 1 else rows
        slots = experts.reshape(-1) + 1  # bank slot 0 is "no adapter"
        strategy = ctx.strategy
        if strategy == "auto":
            strategy = "gather" if rows.shape[0] <= GATHER_MAX_ROWS else "loop"
        if strategy == "gather":
            delta = gather_bmm_delta(rows.unsqueeze(1), self.bank, slots).squeeze(1)
        else:
            delta = segmented_delta(rows, self.bank, _segments(slots))
        delta = (delta.view(n_tokens, k, -1) * weights.unsqueeze(-1)).sum(dim=1)
        return out + delta.view(out.shape)


def _read_expert(ref: ExpertRef) -> tuple[HostAdapter, float]:
    """The adapter's LoRA layers and its ``lora_dropout``; refuses anything but plain linear LoRA."""
    directory = Path(ref.path)
    label = ref.name or directory.name
    config_file = directory / "adapter_config.json"
    if not config_file.is_file():
        raise StudioError(f"expert {label}: {directory} holds no adapter_config.json; is the adapter still on disk?")
    config = json.loads(config_file.read_text())
    reason = _refusal(config)  # the serving bank's rule: what a low-rank slot cannot hold
    if reason:
        raise StudioError(f"adapter {label} cannot be an expert of a mixture because {reason}")
    return read_adapter(directory, key=label), float(config.get("lora_dropout", 0.0) or 0.0)


def _as_ref(item: str | Path | ExpertRef) -> ExpertRef:
    return item if isinstance(item, ExpertRef) else ExpertRef(path=str(item), name=Path(item).name)


class MeteoRAModel(nn.Module):
    """A base model whose targeted linear layers route each token to the top-k of N LoRA experts.

    Build it with :meth:`from_adapters`. Calling it (or :meth:`generate`) runs the wrapped
    transformers model; the routing settings can be changed for a block with :meth:`routing`.
    """

    def __init__(
        self,
        base_model: nn.Module,
        experts: Sequence[HostAdapter],
        refs: Sequence[ExpertRef],
        *,
        top_k: int = 2,
        temperature: float = 1.0,
        strategy: Strategy = "auto",
        train_experts: bool = False,
        dropout: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if len(experts) < 2:
            raise StudioError(f"a mixture needs at least 2 expert adapters ({len(experts)} given)")
        if not 1 <= top_k <= len(experts):
            raise StudioError(f"top_k must be between 1 and the number of experts ({len(experts)}), not {top_k}")
        if temperature <= 0:
            raise StudioError(f"the routing temperature must be positive, not {temperature}")
        # In the model's own module order (= forward order): layer by layer, attention before MLP.
        position = {name: i for i, (name, _) in enumerate(base_model.named_modules())}
        self.targets = sorted(_common_targets(experts), key=lambda name: position.get(name, len(position)))
        self.refs = list(refs)
        self.train_experts = train_experts
        self.seed = seed
        self.context = MixtureContext(top_k, temperature, strategy)
        self.model = base_model
        for param in base_model.parameters():
            param.requires_grad_(False)
        self.gated: dict[str, GatedLoRALinear] = {}
        with torch.random.fork_rng(devices=[]):  # seeded routers without touching the caller's RNG
            torch.manual_seed(seed)
            for name in self.targets:
                self.gated[name] = self._wrap(name, experts, dropout)

    @classmethod
    def from_adapters(
        cls,
        base_model: nn.Module,
        adapters: Sequence[str | Path | ExpertRef],
        *,
        dropout: float | None = None,
        **options,
    ) -> MeteoRAModel:
        """Wrap ``base_model`` with the LoRA adapters in ``adapters`` (PEFT directories, in expert order).

        ``dropout``: on the experts' input in training; None = the largest ``lora_dropout`` of the experts.
        Other options: ``top_k``, ``temperature``, ``strategy``, ``train_experts``, ``seed``.
        """
        refs = [_as_ref(item) for item in adapters]
        read = [_read_expert(ref) for ref in refs]
        p = max(d for _, d in read) if dropout is None else dropout
        return cls(base_model, [h for h, _ in read], refs, dropout=p, **options)

    def _wrap(self, name: str, experts: Sequence[HostAdapter], dropout: float) -> GatedLoRALinear:
        parent_name, _, child = name.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            base = getattr(parent, child)
        except AttributeError:
            raise StudioError(f"the experts target {name}, which this base model does not have") from None
        if not isinstance(base, nn.Linear):
            raise StudioError(f"the experts target {name}, a {type(base).__name__}; a mixture gates nn.Linear only")
        bank = LayerBank(len(experts), base.in_features, base.out_features, base.weight.dtype, base.weight.device)
        for j, expert in enumerate(experts):
            delta = expert.layers[name]
            if tuple(delta.A.shape[1:]) != (base.in_features,) or delta.B.shape[0] != base.out_features:
                raise StudioError(
                    f"expert {expert.key} does not fit {name} of this base model: is it for another base?"
                )
            bank.write(j + 1, delta)
        if self.train_experts:  # the padded rows/columns get zero gradients, so they stay zero
            bank.A = nn.Parameter(bank.A)
            bank.B = nn.Parameter(bank.B)
        gated = GatedLoRALinear(name, base, bank, len(experts), dropout, self.context)
        setattr(parent, child, gated)
        return gated

    # -- running ----------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def n_experts(self) -> int:
        return len(self.refs)

    @property
    def top_k(self) -> int:
        return self.context.top_k

    @property
    def temperature(self) -> float:
        return self.context.temperature

    @property
    def device(self) -> torch.device:
        return next(iter(self.gated.values())).router.weight.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The routers' weights, plus the experts' A and B when ``train_experts`` is on."""
        return [p for p in self.parameters() if p.requires_grad]

    # -- context managers -------------------------------------------------------------------------
    @contextmanager
    def routing(self, top_k: int | None = None, temperature: float | None = None, strategy: Strategy | None = None):
        """Change the routing for the block (e.g. a higher temperature for composite prompts)."""
        ctx = self.context
        saved = ctx.top_k, ctx.temperature, ctx.strategy
        if top_k is not None and not 1 <= top_k <= self.n_experts:
            raise StudioError(f"top_k must be between 1 and the number of experts ({self.n_experts}), not {top_k}")
        ctx.top_k = top_k or ctx.top_k
        ctx.temperature = temperature or ctx.temperature
        ctx.strategy = strategy or ctx.strategy
        try:
            yield self
        finally:
            ctx.top_k, ctx.temperature, ctx.strategy = saved

    @contextmanager
    def force_expert(self, expert: int):
        """Route every token of every layer to ``expert`` alone (weight 1): the model is base + that adapter."""
        if not 0 <= expert < self.n_experts:
            raise StudioError(f"expert {expert} does not exist: the mixture has experts 0..{self.n_experts - 1}")
        saved, self.context.forced = self.context.forced, expert
        try:
            yield self
        finally:
            self.context.forced = saved

    @contextmanager
    def capture_gate_logits(self) -> Iterator[list[torch.Tensor]]:
        """Collect every gated layer's N-way router logits ``[batch, seq, N]`` of the forwards in the block."""
        saved, self.context.gate_logits = self.context.gate_logits, []
        try:
            yield self.context.gate_logits
        finally:
            self.context.gate_logits = saved

    @contextmanager
    def record_choices(self) -> Iterator[ChoiceRecording]:
        """Record each token's top-1 expert in every gated layer for the forwards in the block."""
        saved, self.context.choices = self.context.choices, {}
        recording = ChoiceRecording(self.context.choices, list(self.targets))
        try:
            yield recording
        finally:
            self.context.choices = saved

    # -- gates ------------------------------------------------------------------------------------
    def gate_state_dict(self) -> dict[str, torch.Tensor]:
        """What training changed: every router's weight, and the expert banks when they were trained."""
        state = {f"{name}.router.weight": g.router.weight.detach() for name, g in self.gated.items()}
        if self.train_experts:
            for name, g in self.gated.items():
                state[f"{name}.experts.A"] = g.bank.A.detach()
                state[f"{name}.experts.B"] = g.bank.B.detach()
        return state

    def load_gate_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`gate_state_dict` returned; every key must match (no silent partial load)."""
        wanted = set(self.gate_state_dict())
        if set(state) != wanted:
            missing, extra = sorted(wanted - set(state)), sorted(set(state) - wanted)
            raise StudioError(f"the gates do not match this mixture (missing {missing[:3]}, unexpected {extra[:3]})")
        with torch.no_grad():
            for name, g in self.gated.items():
                g.router.weight.copy_(state[f"{name}.router.weight"])
                if self.train_experts:
                    g.bank.A.copy_(state[f"{name}.experts.A"])
                    g.bank.B.copy_(state[f"{name}.experts.B"])


class ChoiceRecording:
    """The top-1 expert of every token in every gated layer, as recorded by :meth:`MeteoRAModel.record_choices`."""

    def __init__(self, store: dict[str, list[torch.Tensor]], modules: list[str]):
        self._store = store
        self.modules = modules

    def per_module(self) -> dict[str, torch.Tensor]:
        """Module name -> ``[batch, tokens]`` expert indices; successive forwards (decoding) are concatenated."""
        return {name: torch.cat(self._store[name], dim=-1) for name in self.modules if name in self._store}


def _common_targets(experts: Sequence[HostAdapter]) -> list[str]:
    """The modules every expert targets; experts that target different modules are refused."""
    first = set(experts[0].layers)
    for expert in experts[1:]:
        if set(expert.layers) != first:
            only_first = sorted(first - set(expert.layers))[:3]
            only_other = sorted(set(expert.layers) - first)[:3]
            raise StudioError(
                f"experts {experts[0].key} and {expert.key} target different modules (only in the first: "
                f"{only_first}; only in the second: {only_other}); train the experts with the same target modules"
            )
    return sorted(first)
