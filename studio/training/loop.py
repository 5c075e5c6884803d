"""The training loop: one variant, one dataset, hooks in a fixed order, resumable to the bit.

Not the HF Trainer: an explicit loop keeps the variant hooks, resume and
determinism easy to reason about. Per optimizer step (see studio.variants.base):
on_step_begin -> micro-batches (loss + extra_loss, backward) -> clip ->
on_pre_optimizer_step -> optimizer.step -> on_optimizer_step -> scheduler.step -> zero_grad.

Determinism: the seed is applied before the base model loads and again before the
variant builds; the data order is a pure function of (seed, step); checkpoints
hold the RNG state, so a resumed run produces the same losses as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.device import DeviceInfo
from studio.errors import JobCancelled, StudioError
from studio.progress import Reporter
from studio.schema import TrainRequest
from studio.training import checkpoint as ckpt
from studio.training.data import eval_batches
from studio.training.losses import evaluate, loss_sum, target_count
from studio.training.models import autocast, compute_dtype, load_base_model
from studio.training.setup import RunSetup, TrainingData, prepare_run
from studio.variants import BuildContext, ExportContext, OptimConfig, create_variant, default_optimization
from studio.variants.targets import default_modules_to_save, default_target_modules


@dataclass
class TrainingResult:
    """A finished run: the trained model in memory plus what the job records about it."""

    model: Any
    variant: Any
    tokenizer: Any
    task: str
    labels: list[Any] | None
    base_path: Path
    modules_to_save: list[str]
    pad_id: int
    total_steps: int
    trainable_params: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> training loss of that step (this run)
    final_loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    truncated: int = 0
    elapsed_s: float = 0.0
    resumed_from_step: int = 0

    def export_context(self) -> ExportContext:
        """How to build a fresh ORIGINAL base for exports (CPU, fp32, with this task's head)."""
        return ExportContext(
            fresh_base=lambda: load_base_model(self.base_path, self.task, self.labels, self.pad_id),
            task=self.task,
            modules_to_save=list(self.modules_to_save),
        )

    def metrics(self) -> dict[str, float]:
        values = {"final_loss": self.final_loss, "eval_loss": self.eval_loss, "eval_accuracy": self.eval_accuracy}
        return {k: v for k, v in values.items() if v is not None}


def run_training(
    request: TrainRequest,
    reporter: Reporter,
    *,
    settings: Any,
    device: DeviceInfo,
    work_dir: Path,
    resume_checkpoint: str | None = None,
    dataset: TrainingData,
    base_path: Path | None = None,
) -> TrainingResult:
    """Train ``request.variant`` on ``dataset``; returns the trained model and its metrics.

    ``base_path`` is the resolved base model directory (resolved from the request
    through the settings when omitted). Raises JobCancelled after writing a checkpoint
    when cancellation is requested.
    """
    import torch

    if base_path is None:
        from studio.models.base_models import resolve_base_model

        base_path = resolve_base_model(request.base_model, settings, progress=reporter.log).path
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(device.torch_device)
    torch.manual_seed(request.seed)  # classification heads are initialised while the base loads
    setup = prepare_run(request, dataset, Path(base_path), torch_device, reporter.log)
    variant = create_variant(request.variant, request.variant_params)
    if setup.task not in variant.tasks:
        raise StudioError(f"variant {variant.name} does not support {setup.task}; it supports {variant.tasks}")
    targets = variant.params.target_modules or default_target_modules(setup.model)
    heads = default_modules_to_save(setup.model, setup.task)
    hyper = request.hyper
    ctx = BuildContext(
        model=setup.model,
        tokenizer=setup.tokenizer,
        task=setup.task,
        target_modules=list(targets),
        modules_to_save=heads,
        calibration_batches=setup.calibration_batches(torch_device),
        total_steps=setup.total_steps,
        seed=request.seed,
        device=torch_device,
        learning_rate=hyper.learning_rate,
        warmup_steps=setup.warmup_steps,
        weight_decay=hyper.weight_decay,
        work_dir=work_dir,
        log=reporter.log,
    )
    torch.manual_seed(request.seed)
    model = variant.build(ctx).to(torch_device)
    model.train()

    start = 0
    resumed = ckpt.read_checkpoint(resume_checkpoint) if resume_checkpoint else None
    if resumed is not None:
        _check_compatible(resumed, request, setup)
        variant.load_state_dict_extra(model, ckpt.load_variant_extra(resumed))
        ckpt.load_trainable(resumed, model)
        start = resumed.step
    cfg = OptimConfig(
        learning_rate=hyper.learning_rate,
        weight_decay=hyper.weight_decay,
        total_steps=setup.total_steps,
        warmup_steps=setup.warmup_steps,
        scheduler=hyper.lr_scheduler,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimization = variant.configure_optimization(model, cfg) or default_optimization(trainable, cfg)
    if resumed is not None:
        ckpt.set_rng_state(ckpt.load_trainer_state(resumed, optimization))
        reporter.log(f"resumed from {resumed.path} at step {start}")
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reporter.log(
        f"training {variant.name} on {device.label}: {n_trainable:,} trainable parameters, "
        f"targets {', '.join(targets)}" + (f", heads {', '.join(heads)}" if heads else "")
    )
    result = TrainingResult(
        model=model,
        variant=variant,
        tokenizer=setup.tokenizer,
        task=setup.task,
        labels=setup.labels,
        base_path=Path(base_path),
        modules_to_save=heads,
        pad_id=setup.pad_id,
        total_steps=setup.total_steps,
        trainable_params=n_trainable,
        truncated=setup.truncated,
        resumed_from_step=start,
    )
    meta = {
        "variant": variant.name,
        "base_model": request.base_model,
        "dataset_sha256": dataset.sha256,
        "seed": request.seed,
        "total_steps": setup.total_steps,
    }
    _Loop(request, reporter, setup, variant, model, optimization, work_dir, meta, result, torch_device).run(start)
    return result


def _check_compatible(resumed: ckpt.Checkpoint, request: TrainRequest, setup: RunSetup) -> None:
    meta = resumed.meta
    if meta.get("variant") != request.variant or meta.get("total_steps") != setup.total_steps:
        raise StudioError(
            f"checkpoint {resumed.path} was written by a different run "
            f"(variant {meta.get('variant')}, {meta.get('total_steps')} steps); it cannot be resumed here"
        )


class _Loop:
    """The step loop of one run (state shared by the step, log, eval and checkpoint helpers)."""

    def __init__(self, request, reporter, setup, variant, model, optimization, work_dir, meta, result, device):
        self.request, self.hyper, self.reporter, self.setup = request, request.hyper, reporter, setup
        self.variant, self.model, self.opt = variant, model, optimization
        self.work_dir, self.meta, self.result, self.device = work_dir, meta, result, device
        self.dtype = compute_dtype(self.hyper.precision, device)
        self.max_norm = (
            optimization.max_grad_norm if optimization.max_grad_norm is not None else self.hyper.max_grad_norm
        )
        self.last_saved = -1
        self.window: list[float] = []
        self.window_tokens = 0
        self.window_start = time.monotonic()

    def run(self, start: int) -> None:
        total = self.setup.total_steps
        if self.variant.changes_rank and start == 0:
            self._report_ranks(0)
        self.last_saved = start
        step = start
        try:
            for step in range(start + 1, total + 1):
                self.reporter.check_cancelled()
                self._step(step)
                self._after_step(step, total)
        except JobCancelled:
            done = step - 1
            if done > self.last_saved:
                self._save(done)
            raise
        self._finish(total)

    def _step(self, step: int) -> None:
        import torch

        self.variant.on_step_begin(self.model, step)
        batches = [self.setup.micro_batch(k, self.device) for k in self._micro_indices(step)]
        n_targets = max(1, sum(target_count(b, self.setup.task) for b in batches))
        step_loss = 0.0
        for batch in batches:
            with autocast(self.device, self.dtype):
                value, _ = loss_sum(self.model, batch, self.setup.task)
            loss = value / n_targets
            extra = self.variant.extra_loss(self.model)
            if extra is not None:
                loss = loss + extra / len(batches)
            loss.backward()
            step_loss += float(value.detach()) / n_targets
            self.window_tokens += int(batch["attention_mask"].sum())
        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm if self.max_norm > 0 else float("inf"))
        self.variant.on_pre_optimizer_step(self.model, step)
        for optimizer in self.opt.optimizers:
            optimizer.step()
        self.variant.on_optimizer_step(self.model, step)
        for scheduler in self.opt.schedulers:
            scheduler.step()
        for optimizer in self.opt.optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)  # parameters outside every optimizer too
        self.result.losses[step] = step_loss
        self.result.final_loss = step_loss
        self.window.append(step_loss)
        self.grad_norm = float(norm)

    def _micro_indices(self, step: int) -> range:
        first = (step - 1) * self.hyper.grad_accum
        return range(first, first + self.hyper.grad_accum)

    def _after_step(self, step: int, total: int) -> None:
        self.reporter.progress(step, total)
        if step % self.hyper.log_every == 0 or step == total:
            self._log(step)
        if step % self.hyper.eval_every == 0 and step != total:
            self._eval(step)
        if step % self.hyper.save_every == 0 and step != total:
            self._save(step)

    def _log(self, step: int) -> None:
        seconds = max(1e-9, time.monotonic() - self.window_start)
        lr = self.opt.optimizers[0].param_groups[0]["lr"]
        self.reporter.metrics(
            step,
            {
                "loss": sum(self.window) / len(self.window),
                "learning_rate": float(lr),
                "grad_norm": self.grad_norm,
                "tokens_per_s": self.window_tokens / seconds,
                "elapsed_s": self.reporter.elapsed,
            },
        )
        self.window, self.window_tokens, self.window_start = [], 0, time.monotonic()
        if self.variant.changes_rank:
            self._report_ranks(step)

    def _report_ranks(self, step: int) -> None:
        ranks = self.variant.rank_allocation(self.model)
        if ranks is not None:
            self.reporter.ranks(step, ranks, self.variant.rank_extra(self.model) or None)

    def _eval(self, step: int) -> Any:
        if not self.setup.val:
            return None
        batches = [
            {k: v.to(self.device) for k, v in b.items()}
            for b in eval_batches(self.setup.val, self.hyper.batch_size, self.setup.pad_id)
        ]
        result = evaluate(self.model, batches, self.setup.task, self.variant, lambda: autocast(self.device, self.dtype))
        self.reporter.metrics(step, result.metrics())
        return result

    def _save(self, step: int) -> None:
        path = ckpt.save_checkpoint(self.work_dir, step, self.model, self.variant, self.opt, self.meta)
        self.last_saved = step
        self.reporter.checkpoint(str(path), step)

    def _finish(self, total: int) -> None:
        final = self._eval(total)
        if final is not None:
            self.result.eval_loss = final.loss
            self.result.eval_accuracy = final.accuracy
        self.result.elapsed_s = self.reporter.elapsed
        self.model.eval()
