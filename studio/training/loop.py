"""The training loop: one variant, one dataset, hooks in a fixed order, resumable to the bit.

Not the HF Trainer: an explicit loop keeps the variant hooks, resume and
determinism easy to reason about. Per optimizer step (see studio.variants.base):
on_step_begin -> micro-batches (loss + extra_loss, backward) -> clip ->
on_pre_optimizer_step -> optimizer.step -> on_optimizer_step -> scheduler.step -> zero_grad.

Determinism: the seed is applied before the base model loads and again before the
variant builds; the data order is a pure function of (seed, step); checkpoints
hold the RNG state, so a resumed run produces the same losses as an uninterrupted one.

Speed and memory (docs/performance.md): the compute precision is chosen per device
(:mod:`studio.training.precision`), batches are length-grouped (optionally packed), the
loss is computed only at labelled tokens in chunks (:mod:`studio.training.losses`), and a
memory estimate decides checkpointing and the micro-batch size before the first step
(:mod:`studio.training.memory`). All of it is recorded with the job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.device import DeviceInfo
from studio.errors import JobCancelled, StudioError, ValidationFailed
from studio.progress import Reporter
from studio.schema import TrainRequest
from studio.sequences.windows import pooling_for
from studio.training import checkpoint as ckpt
from studio.training.data import eval_batches
from studio.training.frozen_weights import FrozenLinearStorage
from studio.training.kept_adapters import kept_steps, save_kept_adapter
from studio.training.losses import LossFunction, evaluate
from studio.training.memory import (
    MemoryPlan,
    ModelShape,
    longest_row,
    memory_budget,
    plan_memory,
    pooled_row,
    release_memory,
    tune_allocator,
)
from studio.training.models import enable_gradient_checkpointing, load_base_model
from studio.training.precision import Precision, choose_precision, precision_cache
from studio.training.precision_probe import probe_cache, probe_precision, settle_precision, wants_probe
from studio.training.setup import RunSetup, TrainingData, prepare_run
from studio.variants import BuildContext, ExportContext, OptimConfig, create_variant, default_optimization
from studio.variants.targets import default_modules_to_save, default_target_modules

# Rows of the training set scored at each stage end (memorisation): as many as the validation set, within bounds.
STAGE_SUBSET_MIN, STAGE_SUBSET_MAX = 32, 256
# Where frozen base linears are stored in the autocast dtype while training (see frozen_weights.py).
LOW_PRECISION_STORAGE_DEVICES = frozenset({"cuda"})
# torch's CPU RNG is one per process, and runs may train on threads of one process (a sweep's trials
# with --inline, inline jobs): seeding and the random initialisation that follows it hold this lock,
# so two runs with one seed start from the same weights whichever thread gets there first. (Draws
# made while training, e.g. dropout, still share the RNG: such runs are only reproducible one per process.)
SEEDED_INIT = threading.RLock()


def head_param_groups(model: Any, heads: list[str], head_lr: float | None) -> list[Any]:
    """The trainable tensors, or two AdamW groups when the heads get their own learning rate.

    A head is a module trained in full (``modules_to_save``: ``classifier``/``score``); its
    parameters are the trainable ones whose dotted name holds the head's name. The LambdaLR
    schedule scales each group's own peak rate, so warm-up and decay apply to both.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if head_lr is None or not heads:
        return [p for _, p in trainable]
    in_head = [any(f".{h}." in f".{n}" for h in heads) for n, _ in trainable]
    body = [p for (_, p), h in zip(trainable, in_head, strict=True) if not h]
    head = [p for (_, p), h in zip(trainable, in_head, strict=True) if h]
    return [{"params": body}, {"params": head, "lr": head_lr}] if head else body


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
    precision: Precision | None = None
    memory: MemoryPlan | None = None
    loss_mode: str = ""
    real_tokens: int = 0  # non-pad tokens trained on (this run)
    padded_tokens: int = 0  # token slots of the padded micro-batches (this run)
    train_seconds: float = 0.0  # time inside optimizer steps (this run)
    train_cpu_seconds: float = 0.0  # CPU time of this process inside optimizer steps (all threads)
    eval_seconds: float = 0.0  # time inside validation passes (this run)
    eval_passes: int = 0
    eval_tokens: int = 0  # padded token slots scored in validation passes (this run)
    setup_seconds: float = 0.0  # reading, tokenising, loading the base and building the variant
    stages: list[dict[str, Any]] = field(default_factory=list)  # memorisation/generalisation per stage end
    frozen_linears: str | None = None  # dtype the frozen base linears were stored in while training (GPU)
    allreduce_seconds: float = 0.0  # time summing gradients across the ranks (a job over several processes)

    def training_setup(self, hyper: Any) -> dict[str, Any]:
        """How the run computed: precision, batching, checkpointing, loss, memory (for the job record)."""
        memory = self.memory
        return {
            "precision": self.precision.as_dict() if self.precision else None,
            "group_by_length": hyper.group_by_length,
            "packing": hyper.packing and self.task == "causal-lm",
            "gradient_checkpointing": bool(memory and memory.gradient_checkpointing),
            "micro_batch_size": memory.micro_batch_size if memory else hyper.batch_size,
            "micro_tokens": memory.micro_tokens if memory else None,
            "frozen_linears": self.frozen_linears or "fp32",
            "loss": self.loss_mode,
            "memory": memory.as_dict() if memory else None,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "real_tokens_per_s": self.real_tokens / self.train_seconds if self.train_seconds else None,
        }

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
    init_model: Callable[[Any], None] | None = None,
    group: Any = None,
) -> TrainingResult:
    """Train ``request.variant`` on ``dataset``; returns the trained model and its metrics.

    ``base_path`` is the resolved base model directory (resolved from the request
    through the settings when omitted). Raises JobCancelled after writing a checkpoint
    when cancellation is requested. ``init_model`` is called on the built (wrapped) model
    before the optimizer exists: a federated client loads the server's global adapter there.
    ``group`` (a :class:`studio.training.distributed.RankGroup`) makes this one rank of a job
    over several processes: it trains on its share of each step and sums the gradients with
    the other ranks; only rank 0 validates, saves checkpoints and reports.
    """
    import torch

    began = time.monotonic()
    if base_path is None:
        from studio.models.base_models import resolve_base_model

        base_path = resolve_base_model(request.base_model, settings, progress=reporter.log).path
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cpu":
        tune_allocator()
    torch_device = torch.device(device.torch_device)
    with SEEDED_INIT:
        torch.manual_seed(request.seed)  # classification heads are initialised while the base loads
        setup = prepare_run(request, dataset, Path(base_path), torch_device, reporter.log)
    base_params = sum(p.numel() for p in setup.model.parameters())
    base_ids = {id(p) for p in setup.model.parameters()}  # the plain base, before the variant wraps it
    variant = create_variant(request.variant, request.variant_params)
    if setup.task not in variant.tasks:
        raise StudioError(f"variant {variant.name} does not support {setup.task}; it supports {variant.tasks}")
    targets = variant.params.target_modules or default_target_modules(setup.model)
    heads = default_modules_to_save(setup.model, setup.task)
    hyper = request.hyper
    resumed = ckpt.read_checkpoint(resume_checkpoint) if resume_checkpoint else None
    saved_precision = resumed.meta.get("precision") if resumed is not None else None
    timings = None
    if wants_probe(hyper.precision, device, base_params, saved_precision):
        # before the variant wraps the base: the probe hooks stand-in adapters onto it
        timings = probe_precision(
            setup.model,
            setup.micro_batch(0, torch_device),
            device=device,
            task=setup.task,
            targets=list(targets),
            chunk_tokens=hyper.loss_chunk_tokens,
            cache_file=probe_cache(settings),
            log=reporter.log,
        )
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
    with SEEDED_INIT:
        torch.manual_seed(request.seed)
        model = variant.build(ctx).to(torch_device)
    if init_model is not None:
        init_model(model)
    model.train()
    start = 0
    if resumed is not None:
        _check_compatible(resumed, request, setup)
        variant.load_state_dict_extra(model, ckpt.load_variant_extra(resumed))
        ckpt.load_trainable(resumed, model)  # before sharding (FSDP): every rank loads the whole tensors
        start = resumed.step
    sharded = group is not None and hyper.fsdp
    if sharded:
        from studio.training import fsdp

        # before the optimizer: it must hold the sharded tensors
        reporter.log(f"fsdp: {fsdp.shard(model)} decoder layers sharded over {group.world} processes")
    cfg = OptimConfig(
        learning_rate=hyper.learning_rate,
        weight_decay=hyper.weight_decay,
        total_steps=setup.total_steps,
        warmup_steps=setup.warmup_steps,
        scheduler=hyper.lr_scheduler,
    )
    trainable = head_param_groups(model, heads, hyper.head_learning_rate)
    optimization = variant.configure_optimization(model, cfg) or default_optimization(trainable, cfg)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    if hyper.precision == "auto" and saved_precision:
        # auto may measure the device: a resumed run computes exactly as it started
        precision = replace(choose_precision(saved_precision, device), requested="auto", reason="as in the checkpoint")
    else:
        precision = choose_precision(hyper.precision, device, cache_file=precision_cache(settings))
    if timings is not None:
        fp32_as_well = _fp32_fits_as_well(request, setup, settings, device, precision, n_trainable, base_params)
        precision = settle_precision(precision, timings, fp32_as_well)
    reporter.log(f"precision: {precision.describe()}")
    if precision.warning:
        reporter.log(precision.warning, "warning")
    memory = _plan_memory(request, setup, settings, device, precision, n_trainable, base_params, resumed)
    setup.plan.micro_batch_size = memory.micro_batch_size
    setup.plan.micro_tokens = memory.micro_tokens
    reporter.log(memory.describe())
    if memory.gradient_checkpointing and not enable_gradient_checkpointing(model):
        reporter.log("this model does not support gradient checkpointing; training without it", "warning")
        memory.gradient_checkpointing = False
    loss_fn = LossFunction.for_model(
        model, setup.task, hyper.loss_chunk_tokens, precision.dtype, variant, pooling_for(hyper.window_loss)
    )
    if loss_fn.chunked:
        loss_fn.verify(model, setup.micro_batch(0, torch_device))
    # After the probe above (it runs the model outside autocast, on the fp32 weights).
    frozen = None
    # not under FSDP: the conversion swaps plain tensors, and FSDP already owns (and shards) the layers' weights
    if precision.dtype is not None and device.type in LOW_PRECISION_STORAGE_DEVICES and not sharded:
        frozen = FrozenLinearStorage.convert(model, precision.dtype, base_ids)
        if frozen.converted:
            reporter.log(
                f"frozen base linears stored in {precision.name} on the GPU ({frozen.converted} tensors, "
                f"{frozen.bytes_saved / 1024**3:.2f} GiB saved); their fp32 originals come back after training"
            )
    result_frozen = frozen.dtype if frozen is not None and frozen.converted else None
    grouping = "length-grouped" if hyper.group_by_length else "shuffled"
    reporter.log(
        f"batches: {grouping}{', packed' if setup.packing else ''}, {_micro_text(memory, hyper)}; "
        f"loss: {loss_fn.describe()}"
    )

    if resumed is not None:
        # sharded: torch's engine slices the saved (whole) optimizer state like the parameters, on every rank
        load = (lambda optimizer, saved: fsdp.load_optimizer_state(model, optimizer, saved)) if sharded else None
        rng = ckpt.load_trainer_state(resumed, optimization, load)
        ckpt.set_rng_state(rng)
        reporter.log(f"resumed from {resumed.path} at step {start}")
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
        precision=precision,
        memory=memory,
        loss_mode=loss_fn.describe(),
        frozen_linears=precision.name if result_frozen is not None else None,
    )
    meta = {
        "variant": variant.name,
        "base_model": request.base_model,
        "dataset_sha256": dataset.sha256,
        "seed": request.seed,
        "total_steps": setup.total_steps,
        "group_by_length": hyper.group_by_length,
        "packing": setup.packing,
        "micro_batch_size": memory.micro_batch_size,
        "micro_tokens": memory.micro_tokens,
        "precision": precision.name,
    }
    loop = _Loop(request, reporter, setup, variant, model, optimization, work_dir, meta, result, torch_device)
    loop.group, loop.main = group, group is None or group.rank == 0
    loop.sharded = sharded
    loop.precision, loop.loss_fn, loop.frozen = precision, loss_fn, frozen
    loop.scaler = precision.grad_scaler()
    if resumed is not None and loop.scaler is not None:
        ckpt.load_scaler_state(resumed, loop.scaler)
    result.setup_seconds = time.monotonic() - began
    loop.run(start)
    return result


def _plan_memory(request, setup, settings, device, precision, n_trainable, base_params, resumed) -> MemoryPlan:
    """Checkpointing and micro-batch size from the memory estimate (a resumed run keeps its micro-batches)."""
    hyper = request.hyper
    shape = ModelShape.from_model(setup.model)
    shape = ModelShape(**{**shape.__dict__, "n_params": base_params})
    lengths = [len(e["input_ids"]) for e in setup.train]
    attention = str(getattr(setup.model.config, "_attn_implementation", "sdpa") or "sdpa")
    seq_len = attention_len = longest_row(lengths, hyper.max_length)
    if setup.units is not None:  # pooled window loss: a row is a whole sequence's windows
        seq_len, attention_len = pooled_row(lengths, setup.units, hyper.max_length)
    plan = plan_memory(
        shape,
        batch_size=hyper.batch_size,
        seq_len=seq_len,
        attention_len=attention_len,
        budget=memory_budget(settings, device),
        checkpointing=hyper.gradient_checkpointing,
        precision=precision.name,
        loss_chunk_tokens=hyper.loss_chunk_tokens,
        trainable_params=n_trainable,
        task=setup.task,
        device_type=device.type,
        attention=attention,
    )
    if plan.split:
        # a token budget, so that short rows still travel in full micro-batches
        plan.micro_tokens = plan.micro_batch_size * plan.estimate.seq_len
    if resumed is not None and "micro_batch_size" in resumed.meta:
        saved = (resumed.meta["micro_batch_size"], resumed.meta.get("micro_tokens"))
        if saved != (plan.micro_batch_size, plan.micro_tokens):
            plan.notes.append("micro-batches as in the checkpoint")
            plan.micro_batch_size, plan.micro_tokens = int(saved[0]), saved[1]
    return plan


def _fp32_fits_as_well(request, setup, settings, device, precision, n_trainable, base_params) -> bool:
    """Whether fp32 gets the same checkpointing and micro-batches as ``precision`` (so it costs no speed there)."""
    low = _plan_memory(request, setup, settings, device, precision, n_trainable, base_params, None)
    fp32 = replace(precision, name="fp32")
    try:
        full = _plan_memory(request, setup, settings, device, fp32, n_trainable, base_params, None)
    except ValidationFailed:
        return False
    same = (full.gradient_checkpointing, full.micro_batch_size) == (low.gradient_checkpointing, low.micro_batch_size)
    return same and full.fits


def _micro_text(memory: MemoryPlan, hyper: Any) -> str:
    if memory.micro_tokens:
        return (
            f"micro-batches of up to {memory.micro_tokens} padded tokens ({memory.micro_batch_size} of the "
            f"longest rows, up to {hyper.batch_size} short ones), {hyper.batch_size}×{hyper.grad_accum} "
            "examples per step"
        )
    return f"micro-batches of {memory.micro_batch_size} rows, {hyper.batch_size}×{hyper.grad_accum} per step"


def _check_compatible(resumed: ckpt.Checkpoint, request: TrainRequest, setup: RunSetup) -> None:
    meta = resumed.meta
    if meta.get("variant") != request.variant or meta.get("total_steps") != setup.total_steps:
        raise StudioError(
            f"checkpoint {resumed.path} was written by a different run "
            f"(variant {meta.get('variant')}, {meta.get('total_steps')} steps); it cannot be resumed here"
        )
    grouped = meta.get("group_by_length", False)  # checkpoints from before grouping were not grouped
    if grouped != request.hyper.group_by_length or meta.get("packing", False) != setup.packing:
        raise StudioError(
            f"checkpoint {resumed.path} was written with group_by_length={grouped}, "
            f"packing={meta.get('packing', False)}; resume with the same settings so the data order matches"
        )


class _Loop:
    """The step loop of one run (state shared by the step, log, eval and checkpoint helpers)."""

    def __init__(self, request, reporter, setup, variant, model, optimization, work_dir, meta, result, device):
        self.request, self.hyper, self.reporter, self.setup = request, request.hyper, reporter, setup
        self.variant, self.model, self.opt = variant, model, optimization
        self.work_dir, self.meta, self.result, self.device = work_dir, meta, result, device
        self.precision: Precision = Precision("fp32", "fp32", device.type, "default")
        self.loss_fn: Any = LossFunction(setup.task)
        self.scaler: Any = None
        self.max_norm = (
            optimization.max_grad_norm if optimization.max_grad_norm is not None else self.hyper.max_grad_norm
        )
        self.last_saved = -1
        self.pending: list[tuple[int, Any]] = []  # (step, loss tensor) not yet read back
        self.frozen: FrozenLinearStorage | None = None
        self.window: list[float] = []
        self.window_tokens = 0
        self.window_start = time.monotonic()
        self.group: Any = None  # a RankGroup when this is one rank of a job over several processes
        self.main = True  # rank 0 (or the only process): validates, saves and reports
        self.sharded = False  # FSDP: the decoder layers are split across the ranks until _finish

    def run(self, start: int) -> None:
        total = self.setup.total_steps
        self.stage_ends = set(self.variant.stage_ends(total))
        # The final step's kept adapter is the saved adapter itself (copied by the train job).
        self.kept_steps = set(kept_steps(total, self.hyper.keep_checkpoints)) - {total}
        if self.variant.records_snapshots() and start == 0:
            with self._whole_view():
                if self.main:
                    self._report_ranks(0)
        self.last_saved = start
        step = start
        try:
            for step in range(start + 1, total + 1):
                if self.group is None:  # ranks agree on cancelling inside the step (RankGroup.agree)
                    self.reporter.check_cancelled()
                began, began_cpu = time.monotonic(), time.process_time()
                self._step(step)
                self.result.train_seconds += time.monotonic() - began
                self.result.train_cpu_seconds += time.process_time() - began_cpu
                self._after_step(step, total)
        except JobCancelled:
            done = step - 1
            # every rank stops here together (RankGroup.agree); sharded, every rank takes part in the save
            if done > self.last_saved and (self.main or self.sharded):
                self._save(done)
            raise
        finally:
            self._read_losses()
            if self.frozen is not None:
                self.frozen.restore()  # exact fp32 base weights again, for the exports
        self._finish(total)

    def _step(self, step: int) -> None:
        import torch

        group = self.group
        rank, world = (group.rank, group.world) if group is not None else (0, 1)
        batches = self.setup.counted_step_batches(step, self.device, rank, world)
        counts_sum = [sum(getattr(c, k) for _, c in batches) for k in ("targets", "real_tokens", "padded_tokens")]
        if group is not None:
            counts_sum = group.agree(counts_sum)  # the whole step's counts; raises JobCancelled on every rank
        n_targets = max(1, counts_sum[0])
        self.variant.on_step_begin(self.model, step)
        step_loss: Any = None  # a device tensor: read back at log time, not every step
        scaler = self.scaler
        for batch, _counts in batches:
            with self.precision.autocast():
                value, _ = self.loss_fn(self.model, batch)
            loss = value / n_targets
            extra = self.variant.extra_loss(self.model)
            if extra is not None:
                # once per step in all: every rank adds its 1/world share, the sum across ranks restores it
                loss = loss + extra / (len(batches) * world)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            part = value.detach().float() / n_targets
            step_loss = part if step_loss is None else step_loss + part
        self.window_tokens += counts_sum[1]
        self.result.real_tokens += counts_sum[1]
        self.result.padded_tokens += counts_sum[2]
        if group is not None:
            # before unscaling and clipping: the clip norm and every variant decision see the whole step
            # FSDP already summed the sharded tensors' gradients (reduce-scatter in backward)
            grads = [
                p.grad for p in self.model.parameters() if p.requires_grad and p.grad is not None and not _dtensor(p)
            ]
            began = time.monotonic()
            step_loss = group.sum_tensors([*grads, *self.variant.summed_across_ranks(self.model)], step_loss)
            self.result.allreduce_seconds += time.monotonic() - began
        if scaler is not None:
            for optimizer in self.opt.optimizers:
                scaler.unscale_(optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm if self.max_norm > 0 else float("inf"))
        self.variant.on_pre_optimizer_step(self.model, step)
        for optimizer in self.opt.optimizers:
            if scaler is not None:
                scaler.step(optimizer)  # skipped when the scaled gradients overflowed
            else:
                optimizer.step()
        if scaler is not None:
            scaler.update()
        self.variant.on_optimizer_step(self.model, step)
        for scheduler in self.opt.schedulers:
            scheduler.step()
        for optimizer in self.opt.optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.model.zero_grad(set_to_none=True)  # parameters outside every optimizer too
        self.pending.append((step, step_loss))
        self.grad_norm = norm

    def _read_losses(self) -> None:
        """Bring the pending step losses to the host in one transfer (one synchronisation per log)."""
        import torch

        if not self.pending:
            return
        values = torch.stack([loss for _, loss in self.pending]).tolist()
        for (step, _), value in zip(self.pending, values, strict=True):
            self.result.losses[step] = value
            self.result.final_loss = value
            self.window.append(value)
        self.pending = []

    def _after_step(self, step: int, total: int) -> None:
        saves = step % self.hyper.save_every == 0 and step != total
        logs = step % self.hyper.log_every == 0 or step == total
        with self._whole_view() if logs and self.variant.records_snapshots() else nullcontext():
            if self.main:
                self.reporter.progress(step, total)
                if logs:
                    self._log(step)
            elif step % self.hyper.log_every == 0:
                self._read_losses()
        if not self.main and not self.sharded:  # the other ranks only train; rank 0 reports
            return
        # Sharded, rank 0 alone cannot run the model: every rank validates (the same rows, so the same
        # all-gathers) and takes part in a checkpoint's gathers; only rank 0's reporter records them.
        if step % self.hyper.eval_every == 0 and step != total:
            self._eval(step)
        if self.sharded:
            if saves:
                self._save(step)
            return  # no stage ends (SoRA) nor kept adapters: refused with FSDP at submit
        if step in self.stage_ends:
            self._stage_eval(step)
        if saves:
            self._save(step)
        if step in self.kept_steps:
            save_kept_adapter(self.work_dir, step, self.model, self.variant, self.result.export_context())

    def _whole_view(self) -> Any:
        """Sharded: every rank gathers the whole weights, so rank 0 can read them for the rank chart."""
        if not self.sharded:
            return nullcontext()
        from studio.training import fsdp

        return fsdp.whole(self.model)

    def _log(self, step: int) -> None:
        self._read_losses()
        seconds = max(1e-9, time.monotonic() - self.window_start)
        lr = self.opt.optimizers[0].param_groups[0]["lr"]
        self.reporter.metrics(
            step,
            {
                "loss": sum(self.window) / len(self.window),
                "learning_rate": float(lr),
                "grad_norm": float(self.grad_norm),
                "tokens_per_s": self.window_tokens / seconds,
                "elapsed_s": self.reporter.elapsed,
            },
        )
        self.window, self.window_tokens, self.window_start = [], 0, time.monotonic()
        if self.variant.records_snapshots():
            self._report_ranks(step)

    def _report_ranks(self, step: int) -> None:
        ranks = self.variant.snapshot_ranks(self.model)
        if ranks:
            self.reporter.ranks(step, ranks, self.variant.rank_extra(self.model) or None)

    def _stage_eval(self, step: int) -> None:
        """Memorisation (a fixed training subset) and generalisation (validation) at a stage end."""
        memorised = self._evaluate(
            self.setup.memorisation_subset(min(STAGE_SUBSET_MAX, max(STAGE_SUBSET_MIN, len(self.setup.val))))
        )
        general = self._evaluate(self.setup.val)
        ranks = self.variant.snapshot_ranks(self.model)
        stage = sorted(self.stage_ends).index(step)  # from the step, so a resumed run numbers stages alike
        row: dict[str, Any] = {"stage": stage, "step": step, "active_components": sum(ranks.values())}
        for prefix, res in (("train", memorised), ("val", general)):
            if res is not None:
                row[f"{prefix}_loss"] = res.loss
                if res.accuracy is not None:
                    row[f"{prefix}_accuracy"] = res.accuracy
        self.result.stages.append(row)
        self.reporter.metrics(step, {f"stage_{k}": float(v) for k, v in row.items() if k != "step"})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("stage", "step"))
        self.reporter.log(f"stage {row['stage']} ends at step {step}: {shown}")
        self._report_ranks(step)

    def _evaluate(self, examples: list[dict[str, Any]]) -> Any:
        if not examples:
            return None
        began = time.monotonic()
        batches = [
            {k: v.to(self.device) for k, v in b.items()}
            for b in eval_batches(examples, self.hyper.batch_size, self.setup.pad_id, self.setup.pooled)
        ]
        result = evaluate(
            self.model, batches, self.setup.task, self.variant, self.precision.autocast, loss_fn=self.loss_fn
        )
        # timed for the duration estimates (studio.training.duration): one pass, its token slots
        self.result.eval_seconds += time.monotonic() - began
        self.result.eval_passes += 1
        self.result.eval_tokens += sum(int(b["input_ids"].numel()) for b in batches)
        return result

    def _eval(self, step: int) -> Any:
        result = self._evaluate(self.setup.val)
        if result is not None:
            self.reporter.metrics(step, result.metrics())
        return result

    def _save(self, step: int) -> None:
        """Write the checkpoint of ``step`` (rank 0); a sharded run's ranks all call it, to gather the state."""
        gathered = None
        if self.sharded:
            from studio.training import fsdp

            gathered = fsdp.gather_checkpoint(self.model, self.variant, self.opt.optimizers, self.main)
            if not self.main:
                self.last_saved = step
                return
        path = ckpt.save_checkpoint(
            self.work_dir, step, self.model, self.variant, self.opt, self.meta, scaler=self.scaler, gathered=gathered
        )
        self.last_saved = step
        self.reporter.checkpoint(str(path), step)

    def _finish(self, total: int) -> None:
        if self.sharded:
            from studio.training import fsdp

            fsdp.release(self.model)  # every rank: the whole model again, so rank 0 validates and saves alone
            self.sharded = False
        if not self.main:
            self.model.eval()
            return
        final = self._eval(total)
        if final is not None:
            self.result.eval_loss = final.loss
            self.result.eval_accuracy = final.accuracy
        self.result.elapsed_s = self.reporter.elapsed
        result = self.result
        if result.padded_tokens:
            padding = 1 - result.real_tokens / result.padded_tokens
            speed = result.real_tokens / max(1e-9, result.train_seconds)
            self.reporter.log(
                f"trained on {result.real_tokens:,} real tokens ({padding:.0%} padding) at {speed:.1f} tokens/s"
            )
        self.model.eval()
        release_memory()  # the activations' heap: give it back before the export loads a fresh base


def _dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is an FSDP shard (only a sharded run imports the distributed tensor module)."""
    return type(tensor).__name__ == "DTensor"
