"""The variant interface: what every LoRA variant declares and which hooks the trainer calls.

A *variant* is one way of adapting a frozen base model with low-rank updates
(plain LoRA, DoRA, AdaLoRA, SoRA, ...). The training engine
(:mod:`studio.training.loop`) knows nothing about any particular variant; it
only calls the hooks below, in this order:

Build (once per run, also when resuming — it must be deterministic given the seed)
    ``build(ctx) -> model``: wrap ``ctx.model`` (a plain transformers model, fp32,
    on ``ctx.device``) and return the model to train, with ``requires_grad`` set
    on exactly the trainable tensors. ``ctx.calibration_batches(n)`` yields ``n``
    training micro-batches for data-driven inits (LoRA-GA, EVA, LoRA-SB); it does
    not disturb the training data order or RNG.

Resume (only when continuing from a checkpoint)
    ``load_state_dict_extra(model, state)`` runs right after ``build`` and BEFORE
    the trainable tensors and optimizer state are loaded: restore any structure
    that changed during training there (ranks grown, masks, allocator state).

Optimisation
    ``configure_optimization(model, cfg) -> Optimization | None``: return your own
    optimizers + schedulers (SoRA's two optimizers, LoRA+ param groups, IncreLoRA
    adding parameters mid-run), or None for AdamW + the requested schedule over all
    ``requires_grad`` parameters (:func:`default_optimization` builds exactly that,
    and :func:`lr_lambda` is the schedule if you build your own).

Every optimizer step ``step`` (1-based; the number reported in metrics):
    1. ``on_step_begin(model, step)``          before the first micro-batch (DyLoRA samples b)
    2. for each micro-batch: loss = task loss + ``extra_loss(model)`` (or None),
       divided by grad_accum, backward
    3. gradient clipping over all trainable parameters (in a job over several processes,
       after the gradients and ``summed_across_ranks(model)`` were summed across the ranks)
    4. ``on_pre_optimizer_step(model, step)``  grads available, clipped (importance scores)
    5. ``optimizer.step()`` for every optimizer
    6. ``on_optimizer_step(model, step)``      after the step, before zero_grad
                                               (SoRA thresholding, AdaLoRA update_and_allocate)
    7. ``scheduler.step()`` for every scheduler, then ``zero_grad``
    8. every log step, for a variant whose ranks change or that defines ``rank_extra``:
       ``snapshot_ranks(model)`` and ``rank_extra(model)`` go to ``reporter.ranks``
       (the rank chart and the per-module diagnostics chart)
    9. after each step in ``stage_ends(total_steps)`` (SoRA's sparsifying stages): the
       engine evaluates a fixed training subset (memorisation) and the validation rows
       (generalisation) and reports them with the number of active rank components
Evaluation wraps validation in ``on_eval_begin(model)`` / ``on_eval_end(model)``.

Checkpoints: the engine saves every ``requires_grad`` tensor, the optimizer and
scheduler states, RNG states and the data position; ``state_dict_extra(model)``
adds anything else (tensors go to safetensors, other values must be JSON).

Saving and export (all written for the ORIGINAL base weights W0)
    ``delta_weights(model) -> {module_name: ΔW}``: the contract. ΔW is fp32 (out × in),
    on CPU, equal to exactly what the adapter adds to W0 at inference. Module names
    are relative to the transformers model (``model.layers.0.self_attn.q_proj``),
    never prefixed with ``base_model.model.``.
    ``plain_lora_factors(model)``: exact (B′, A′) per module when the variant has them
    (folding every scale and gate into B′); default None → truncated SVD of ΔW.
    ``export_plain_lora(model, out_dir, ectx, rank=None)``: a standard PEFT LoRA
    (spec §0), exact at each module's true rank, approximate with the error reported
    when ``rank`` is given. Most variants get it for free from the two methods above.
    ``save_native(model, out_dir)``: the variant's own format (PEFT's for PEFT types).
    ``final_ranks(model)``: rank per module recorded with the adapter in the registry.
    ``save_adapter(model, out_dir, ectx)``: the primary artifact of a training job,
    loadable by ``PeftModel.from_pretrained(original_base, out_dir)``: ``save_native``
    when ``peft_native`` else ``export_plain_lora`` plus ``save_native`` into ``native/``.

How to add a variant
--------------------
1. Create ``studio/variants/<name>.py`` with a ``Variant`` subclass and a ``Params``
   model (subclass :class:`VariantParams`; each field has a description, ranges and
   ``Literal`` choices — the UI form is built from ``Params.model_json_schema()``).
   End the module with ``VARIANT = YourClass`` (or ``VARIANTS = [A, B]``).
2. Add ``"<name>"`` to ``VARIANT_MODULES`` in :mod:`studio.variants.registry`.
3. Optionally declare ``presets`` (:class:`VariantPreset`): named parameter sets such as the
   official settings vs what works on small models; the Train form and ``--variant-preset`` use them.
The test matrix, the UI dropdown and the docs table all come from the registry.
Helpers: :mod:`studio.variants.targets` (find the linear layers to adapt),
:mod:`studio.variants.lora_export` (SVD factorisation, plain-LoRA export).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

TASKS = ("causal-lm", "classification")


class VariantParams(BaseModel):
    """Parameters every variant shares; subclass it to add the variant's own knobs."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    r: int = Field(8, ge=1, le=1024, description="Rank of the low-rank update (more = more capacity, bigger file).")
    lora_alpha: float = Field(
        16.0, gt=0, le=8192, description="Scaling numerator: the update is multiplied by alpha / r."
    )
    lora_dropout: float = Field(0.05, ge=0.0, le=0.9, description="Dropout on the adapter's input while training.")
    target_modules: list[str] | None = Field(
        None,
        description="Layer names to adapt (name suffixes such as q_proj); empty = every linear layer of "
        "the attention and MLP blocks.",
    )


@dataclass(frozen=True)
class Paper:
    """Where a variant comes from."""

    title: str
    year: int
    arxiv: str

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"


@dataclass(frozen=True)
class VariantPreset:
    """A named set of a variant's parameters, declared next to the variant in ``Variant.presets``.

    The Train form and ``studio train --variant-preset`` read presets from the registry. A preset only
    fills in parameters (what the user sets explicitly wins); the job records the resulting values.
    """

    name: str  # what the CLI takes, e.g. "official"
    title: str  # what the form shows
    description: str  # when to pick it, with the evidence
    values: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description, "values": dict(self.values)}


@dataclass
class BuildContext:
    """Everything ``Variant.build`` may use. Built by the training engine."""

    model: Any  # plain transformers model (fp32, on device, in train mode); wrap it
    tokenizer: Any
    task: str  # "causal-lm" | "classification"
    target_modules: list[str]  # resolved: params.target_modules or the model's default linears
    modules_to_save: list[str]  # trained heads (e.g. ["score"] / ["classifier"]); keep them trainable
    calibration_batches: Callable[[int], Iterator[dict[str, Any]]]  # n -> n micro-batches on device
    total_steps: int
    seed: int
    device: Any  # torch.device
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    work_dir: Path  # scratch space of this run (e.g. an initial adapter for LoRA-GA)
    log: Callable[[str], None] = print

    @property
    def peft_task_type(self) -> str:
        return "SEQ_CLS" if self.task == "classification" else "CAUSAL_LM"


@dataclass
class OptimConfig:
    """The optimisation settings a variant's ``configure_optimization`` receives."""

    learning_rate: float
    weight_decay: float
    total_steps: int
    warmup_steps: int
    scheduler: str  # linear | cosine | constant
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class Optimization:
    """Optimizers and schedulers a variant owns; the engine steps, checkpoints and restores all of them.

    ``max_grad_norm`` overrides the request's clipping threshold when set (SoRA clips at 0.1).
    """

    optimizers: list[Any]
    schedulers: list[Any] = field(default_factory=list)
    max_grad_norm: float | None = None


@dataclass
class ExportContext:
    """What exporting needs besides the trained model."""

    fresh_base: Callable[[], Any]  # loads the ORIGINAL base model (fp32, CPU), with the trained task head
    task: str
    modules_to_save: list[str] = field(default_factory=list)
    log: Callable[[str], None] = print


@dataclass
class ExportReport:
    """Result of writing an adapter: per-module ranks and, for approximate exports, the error."""

    path: str
    ranks: dict[str, int]
    exact: bool = True
    errors: dict[str, float] = field(default_factory=dict)  # relative Frobenius error per module
    format: str = "peft-lora"
    # ‖logits(export) − logits(adapter)‖ / ‖logits(adapter) − logits(base)‖ on fixed text, when measured:
    # what the export changes in the outputs, as a share of everything the adapter changes.
    output_error: float | None = None

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "exact": self.exact,
            "ranks": self.ranks,
            "errors": self.errors,
            "max_error": self.max_error,
            "output_error": self.output_error,
        }

    def write(self, out_dir: str | Path) -> None:
        """Write this report as ``export_report.json`` in ``out_dir``."""
        (Path(out_dir) / "export_report.json").write_text(json.dumps(self.as_dict(), indent=2))


def lr_lambda(total_steps: int, warmup_steps: int, scheduler: str) -> Callable[[int], float]:
    """The learning-rate multiplier at scheduler step ``k`` (0-based): warmup then linear/cosine/constant."""

    def factor(k: int) -> float:
        if warmup_steps > 0 and k < warmup_steps:
            return (k + 1) / (warmup_steps + 1)  # never 0: the first step should move the weights
        if scheduler == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (k - warmup_steps) / span)
        if scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


def default_optimization(params: list[Any] | list[dict[str, Any]], cfg: OptimConfig) -> Optimization:
    """AdamW over ``params`` (tensors or param-group dicts) with the configured schedule."""
    import torch

    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.total_steps, cfg.warmup_steps, cfg.scheduler)
    )
    return Optimization([optimizer], [scheduler])


def module_key(name: str) -> str:
    """A module's name relative to the transformers model (drops PEFT's ``base_model.model.`` prefix)."""
    return name.removeprefix("base_model.model.")


class Variant:
    """Base class of every variant. Subclasses set the class attributes and override ``build``.

    One instance serves one training run (hooks may keep run state on ``self``).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]  # one line
    description: ClassVar[str]  # one paragraph for people who never trained a model
    when_to_use: ClassVar[str]
    paper: ClassVar[Paper | None] = None
    Params: ClassVar[type[VariantParams]] = VariantParams
    changes_rank: ClassVar[bool] = False  # rank allocation moves during training -> reporter.ranks
    export_exact: ClassVar[bool] = True  # export_plain_lora is exact at the true ranks
    peft_native: ClassVar[bool] = False  # save_native writes a checkpoint PeftModel.from_pretrained loads
    tasks: ClassVar[tuple[str, ...]] = TASKS
    presets: ClassVar[tuple[VariantPreset, ...]] = ()  # named parameter sets (official vs small-model settings)

    def __init__(self, params: VariantParams | None = None):
        self.params = params if params is not None else self.Params()

    # -- catalogue -------------------------------------------------------------------------

    @classmethod
    def parse_params(cls, raw: dict[str, Any] | None) -> VariantParams:
        """Validate user-given parameters against ``Params`` (raises pydantic.ValidationError)."""
        return cls.Params.model_validate(raw or {})

    @classmethod
    def info(cls) -> dict[str, Any]:
        """Everything the UI and docs show about this variant, including the form schema."""
        return {
            "name": cls.name,
            "title": cls.title,
            "summary": cls.summary,
            "description": cls.description,
            "when_to_use": cls.when_to_use,
            "paper": None if cls.paper is None else {**cls.paper.__dict__, "url": cls.paper.url},
            "changes_rank": cls.changes_rank,
            "export_exact": cls.export_exact,
            "peft_native": cls.peft_native,
            "tasks": list(cls.tasks),
            "params_schema": cls.Params.model_json_schema(),
            "presets": [preset.as_dict() for preset in cls.presets],
        }

    @classmethod
    def preset(cls, name: str) -> VariantPreset:
        """The preset called ``name`` (StudioError naming the known presets otherwise)."""
        from studio.errors import NotFoundError

        for preset in cls.presets:
            if preset.name == name:
                return preset
        known = ", ".join(p.name for p in cls.presets) or "none"
        raise NotFoundError(f"variant {cls.name} has no preset {name!r}; its presets: {known}")

    # -- build and optimisation ----------------------------------------------------------------

    def build(self, ctx: BuildContext) -> Any:
        """Wrap ``ctx.model`` and return the model to train (only adapter tensors + heads trainable)."""
        raise NotImplementedError

    def configure_optimization(self, model: Any, cfg: OptimConfig) -> Optimization | None:
        """Own optimizers/schedulers, or None for AdamW + schedule over the ``requires_grad`` tensors."""
        return None

    # -- training hooks (defaults do nothing) ------------------------------------------------------

    def on_step_begin(self, model: Any, step: int) -> None:
        """Before the first micro-batch of optimizer step ``step``."""

    def extra_loss(self, model: Any) -> Any | None:
        """A regulariser added to every micro-batch's task loss (a scalar tensor), or None."""
        return None

    def summed_across_ranks(self, model: Any) -> list[Any]:
        """Tensors this variant collects from the data in backward, besides the gradients.

        A training job over several processes sums them across the ranks together with the
        gradients (before clipping), so that decisions taken from them agree on every rank.
        The list must have the same shapes on every rank (IncreLoRA's ∂L/∂ΔW accumulators).
        """
        return []

    def on_pre_optimizer_step(self, model: Any, step: int) -> None:
        """After backward and clipping, before the optimizer step: gradients are available."""

    def on_optimizer_step(self, model: Any, step: int) -> None:
        """After the optimizer step, before the schedulers step and gradients are zeroed."""

    def on_eval_begin(self, model: Any) -> None:
        """Before a validation pass (the model is already in eval mode)."""

    def on_eval_end(self, model: Any) -> None:
        """After a validation pass (the model goes back to train mode afterwards)."""

    def rank_allocation(self, model: Any) -> dict[str, int] | None:
        """Active rank per module now (for the rank chart), or None when ranks are fixed."""
        return None

    def rank_extra(self, model: Any) -> dict[str, dict[str, float]]:
        """Method-specific scalars per module to go with ``rank_allocation`` (importance, sparsity)."""
        return {}

    @classmethod
    def records_snapshots(cls) -> bool:
        """Whether the engine logs per-module snapshots: ranks move, or the variant has diagnostics."""
        return cls.changes_rank or cls.rank_extra is not Variant.rank_extra

    def snapshot_ranks(self, model: Any) -> dict[str, int]:
        """Ranks to log with a snapshot: the live allocation, or the fixed ranks (computed once)."""
        ranks = self.rank_allocation(model)
        if ranks is not None:
            return ranks
        if getattr(self, "_fixed_ranks", None) is None:
            self._fixed_ranks = self.final_ranks(model)
        return self._fixed_ranks

    def stage_ends(self, total_steps: int) -> list[int]:
        """Steps after which memorisation and generalisation are measured (none by default)."""
        return []

    # -- checkpoints -------------------------------------------------------------------------------

    def state_dict_extra(self, model: Any) -> dict[str, Any]:
        """State beyond the trainable tensors and optimizers: tensors and JSON-serialisable values."""
        return {}

    def load_state_dict_extra(self, model: Any, state: dict[str, Any]) -> None:
        """Restore ``state_dict_extra``; runs after ``build``, before trainable tensors are loaded."""

    # -- the contract and export ----------------------------------------------------------------------

    def delta_weights(self, model: Any) -> dict[str, Any]:
        """{module name: ΔW (out × in, fp32, CPU)} — exactly what the adapter adds to W0 at inference."""
        raise NotImplementedError

    def final_ranks(self, model: Any) -> dict[str, int]:
        """Rank per adapted module at the end of training (stored with the adapter)."""
        ranks = self.rank_allocation(model)
        if ranks is not None:
            return ranks
        return {name: min(self.params.r, *delta.shape) for name, delta in self.delta_weights(model).items()}

    def plain_lora_factors(self, model: Any) -> dict[str, tuple[Any, Any]] | None:
        """Exact factors {module: (B′ (m × r), A′ (r × n))} with B′A′ = ΔW, or None to use SVD."""
        return None

    def export_plain_lora(
        self, model: Any, out_dir: Path, ectx: ExportContext, rank: int | None = None
    ) -> ExportReport:
        """Write a standard PEFT LoRA (scale 1) equal to ``delta_weights``; truncate to ``rank`` if given."""
        from studio.variants.lora_export import export_delta_as_lora

        factors = self.plain_lora_factors(model) if rank is None else None
        deltas = None if factors is not None else self.delta_weights(model)
        return export_delta_as_lora(model, Path(out_dir), ectx, deltas=deltas, factors=factors, rank=rank)

    def save_native(self, model: Any, out_dir: Path) -> None:
        """The variant's own format: PEFT's ``save_pretrained`` for PEFT models, else its tensors + params."""
        from studio.variants.lora_export import save_trainable_state

        out_dir = Path(out_dir)
        if hasattr(model, "peft_config") and hasattr(model, "save_pretrained"):
            model.save_pretrained(str(out_dir), safe_serialization=True)
            return
        save_trainable_state(model, out_dir, self.state_dict_extra(model))
        (out_dir / "variant.json").write_text(
            json.dumps({"variant": self.name, "params": self.params.model_dump(mode="json")}, indent=2)
        )

    def load_saved_adapter(self, base_model: Any, adapter_dir: Path) -> Any:
        """What :meth:`save_adapter` wrote, on ``base_model``: plain ``PeftModel.from_pretrained`` by default."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, str(adapter_dir))

    def model_card_loading(self) -> list[str] | None:
        """Lines of the model card's "Loading" section, or None for the plain PEFT instructions."""
        return None

    def save_adapter(self, model: Any, out_dir: Path, ectx: ExportContext) -> ExportReport:
        """The primary artifact of a training job: a PEFT checkpoint for the original base."""
        out_dir = Path(out_dir)
        if self.peft_native:
            self.save_native(model, out_dir)
            return ExportReport(path=str(out_dir), ranks=self.final_ranks(model), format="peft-native")
        report = self.export_plain_lora(model, out_dir, ectx)
        self.save_native(model, out_dir / "native")
        return report
