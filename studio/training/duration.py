"""How long a training run will take on this machine: measured at submit, corrected by earlier runs.

A guess from a typical throughput was 4x off on a busy 2-core machine (the Quick preset took
17 minutes, "minutes on a CPU" promised): the speed of a CPU step depends on the model, the
step shape, the precision, the thread count and the load at that moment, and validation
passes can cost as much as training. So the estimate is built from measurements:

1. :func:`profile_data` tokenises a seeded sample of the dataset's rows: their lengths give
   the padded tokens of a typical step and validation batch (length-grouped or not; with a
   pooled window loss a step holds batch_size whole sequences, all their windows), and the
   examples each row becomes give the run's steps and validation rows (a long sequence is
   several windows: a per-window run steps over windows, validation scores windows);
2. :func:`measure_speed` loads the base model and times a real forward + backward pass of a
   representative batch at the run's shape (rank-8 stand-in adapters on the target layers,
   the run's precision and loss), and a forward-only pass as validation runs it. It is kept
   per (device, torch, threads, model, precision, task, step shape) in the data dir for
   :data:`MEASUREMENT_TTL_S`: long enough that editing a form does not re-measure, short
   enough that the load the run will meet is the load that was measured;
3. :func:`estimate_run_seconds` (pure) adds steps × step time + validation passes × tokens
   × forward time + setup (reading and tokenising the rows, loading the base twice: to
   train and to export) + the transfer kit built after the last step (:func:`kit_seconds`:
   writing inputs with the base, a small discriminator run, scoring), at the same rates;
4. after each run, :func:`record_run` keeps the actual split (setup, train, validation,
   save) and its ratio to the measurement; later estimates on the same machine and model
   are multiplied by the median of the last :data:`HISTORY` ratios (:func:`corrections`).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.datasets.splits import split_rows
from studio.training.data import epoch_steps

MEASUREMENTS_FILE = "speed-measurements.json"  # in the data dir
RUNS_FILE = "run-timings.json"  # in the data dir: the actual time split of recent runs
MEASUREMENT_TTL_S = 600.0
HISTORY = 5  # recent runs whose actual/predicted ratios correct the estimate
SAMPLE_ROWS = 256  # rows tokenised to learn the lengths
WIDTH_BUCKET = 32  # measured step widths are rounded up to a multiple of this (the cache key)
FIXED_OVERHEAD_S = 5.0  # picking the job up, building the variant, writing the adapter and registry rows


@dataclass(frozen=True)
class DataProfile:
    """What the estimate needs to know about a dataset: its size and the token lengths of a sample."""

    rows: int
    lengths: tuple[int, ...]  # tokens per sampled row, after truncation to max_length
    # A pooled window loss: the indices in ``lengths`` of each sampled sequence's windows, since a
    # step then draws batch_size whole sequences with all their windows; None = a step draws rows.
    units: tuple[tuple[int, ...], ...] | None = None
    # The dataset indices of the sampled rows, and for each entry of ``lengths`` the sampled row it
    # came from: how many examples (windows) a row becomes. Empty = one example per row.
    sampled: tuple[int, ...] = ()
    example_rows: tuple[int, ...] = ()

    @property
    def windowed(self) -> bool:
        """True when some sampled row became several examples (a long sequence read as windows)."""
        return len(set(self.example_rows)) < len(self.example_rows)

    def examples_in(self, indices: Sequence[int]) -> int:
        """Examples (a long sequence: its windows) the dataset rows ``indices`` become: what validation scores."""
        return self._count(indices, self.example_rows)

    def step_units_in(self, indices: Sequence[int]) -> int:
        """What a run's steps draw from the rows ``indices``: whole sequences with ``units``, else examples."""
        if self.units is None:
            return self.examples_in(indices)
        return self._count(indices, tuple(self.example_rows[u[0]] for u in self.units if u))

    def _count(self, indices: Sequence[int], owners: Sequence[int]) -> int:
        """Items of the rows ``indices``, given each sampled item's row: counted where sampled, else the mean."""
        if not self.sampled:
            return len(indices)  # a profile without its rows: one item per row
        per_row = Counter(owners)
        wanted = set(indices)
        sampled = [i for i in self.sampled if i in wanted]
        mean = len(owners) / len(self.sampled)  # the sample is seeded-random: its mean stands for the rest
        return round(sum(per_row[i] for i in sampled) + mean * (len(wanted) - len(sampled)))


@dataclass(frozen=True)
class MeasuredSpeed:
    """Timings of this machine for one model and step shape, and the corrections learnt from its runs."""

    step_s: float  # one forward + backward pass of step_tokens padded tokens
    step_tokens: int
    forward_s: float  # one forward-only pass (validation) of the same batch
    load_s: float  # loading the base model
    tokenise_s_per_row: float = 0.0  # reading and tokenising one row
    threads: int = 1
    loadavg: float | None = None  # 1-minute load average when measured
    measured_at: float = 0.0
    train_ratio: float = 1.0  # actual / measured, from earlier runs (1 = none yet)
    eval_ratio: float = 1.0
    setup_ratio: float = 1.0
    runs_learnt: int = 0
    step_rows: int = 1  # sequences in the timed batch (step_tokens / step_rows: its width)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunEstimate:
    """The estimate by part (seconds), and the numbers behind it."""

    setup_s: float
    train_s: float
    eval_s: float
    steps: int
    step_s: float
    eval_passes: int
    eval_rows: int
    measured: MeasuredSpeed
    eval_unit: str = "row"  # what eval_rows counts: "window" when long sequences are read as windows
    kit_s: float = 0.0  # the transfer kit built after the last step (0: none will be)

    @property
    def total_s(self) -> float:
        return self.setup_s + self.train_s + self.eval_s + self.kit_s

    def headline(self) -> str:
        """'about N minutes' (or seconds, for short runs) for the whole job."""
        return _about(self.total_s)

    def describe(self) -> str:
        """'about N minutes [+ ~M s for the transfer kit] (measured on this machine: X s per step, …)'."""
        passes = f"{self.eval_passes} validation pass{'' if self.eval_passes == 1 else 'es'}"
        if self.eval_passes:
            passes += f" of {self.eval_rows} {self.eval_unit}{'' if self.eval_rows == 1 else 's'}"
        step = f"{self.step_s:.1f}" if self.step_s >= 1 else f"{self.step_s:.2f}"
        lead = self.headline()
        if self.kit_s:
            # said apart: the kit runs after the last step, where a job's progress already reads 100 %
            lead = f"{_about(self.total_s - self.kit_s)} + ~{_seconds(self.kit_s)} for the transfer kit"
        return f"{lead} (measured on this machine: {step} s per step, {passes})"

    def breakdown(self) -> str:
        """Where the time goes, and what the measurement saw."""
        m = self.measured
        parts = [
            f"{self.steps} steps {_seconds(self.train_s)}",
            f"validation {_seconds(self.eval_s)}",
            f"loading and saving {_seconds(self.setup_s)}",
        ]
        if self.kit_s:
            parts.append(f"transfer kit after the last step {_seconds(self.kit_s)}")
        seen = f"{m.threads} thread{'s' if m.threads != 1 else ''}"
        if m.loadavg is not None:
            seen += f", load average {m.loadavg:.1f}"
        if m.runs_learnt:
            seen += f"; corrected by {m.runs_learnt} earlier run(s) here (train ×{m.train_ratio:.2f})"
        return f"{', '.join(parts)} ({seen})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_s": self.total_s,
            "setup_s": self.setup_s,
            "train_s": self.train_s,
            "eval_s": self.eval_s,
            "steps": self.steps,
            "step_s": self.step_s,
            "eval_passes": self.eval_passes,
            "eval_rows": self.eval_rows,
            "kit_s": self.kit_s,
            "measured": self.measured.as_dict(),
        }


def _about(seconds: float) -> str:
    """'about N minutes', or 'about N seconds' (to the nearest 10, at least 10) under a minute and a half."""
    if seconds < 90:
        return f"about {max(10, round(seconds / 10) * 10)} seconds"
    return f"about {max(2, round(seconds / 60))} minutes"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


# --- the run's shape (pure) ----------------------------------------------------------------------------------------


def run_steps(train_units: int, hyper: Any) -> int:
    """Optimizer steps of a run (the trainer's rule: max_steps, else epochs over what its steps draw).

    ``train_units`` counts what a step's batch_size counts: training examples (a per-window run's
    windows), or sequences under a pooled window loss (:meth:`DataProfile.step_units_in`).
    """
    if hyper.max_steps:
        return int(hyper.max_steps)
    return epoch_steps(train_units, hyper.epochs, hyper.batch_size * hyper.grad_accum)


def planned_steps(request: Any, data: DataProfile) -> int:
    """Optimizer steps of ``request`` on ``data``: over the training split's windows, or sequences when pooled.

    The one count the measured estimate and the Train tab's rough fallback share: a long
    sequence's windows (a per-window run) or the sequence itself (a pooled window loss) per
    training row, from the profile's sample (:meth:`DataProfile.step_units_in`).
    """
    train_idx, _ = split_rows(data.rows, request.hyper.validation_fraction, request.seed)
    return run_steps(data.step_units_in(train_idx), request.hyper)


def micro_batch_tokens(request: Any, data: DataProfile) -> float:
    """Mean padded tokens of one micro-batch of ``request`` on ``data`` (a pooled one: whole sequences' windows).

    Divided by batch_size it is the tokens per example a step processes: a window's length per
    window, or windows × window length per sequence under a pooled window loss.
    """
    hyper = request.hyper
    return padded_batch_tokens(data.lengths, hyper.batch_size, bool(hyper.group_by_length), request.seed, data.units)


def validation_passes(steps: int, eval_every: int, has_validation: bool) -> int:
    """Validation passes of a run: every ``eval_every`` steps before the last, and one at the end."""
    return (steps - 1) // eval_every + 1 if has_validation else 0


def padded_batch_tokens(
    lengths: Sequence[int],
    batch_size: int,
    grouped: bool,
    seed: int = 0,
    units: Sequence[Sequence[int]] | None = None,
) -> float:
    """Mean padded tokens (rows × longest row) of a batch of ``batch_size`` rows drawn from ``lengths``.

    Length-grouped batches hold rows of similar length (sorted neighbours); shuffled ones pad
    to the longest of random rows (averaged over a few seeded shuffles). With ``units`` (a pooled
    window loss: each sequence's indices in ``lengths``) a batch is ``batch_size`` whole sequences.
    """
    if units is not None:
        return _pooled_batch_tokens(lengths, units, batch_size, grouped, seed)
    if not lengths:
        return 0.0
    size = max(1, min(batch_size, len(lengths)))
    orders: list[list[int]]
    if grouped:
        orders = [sorted(lengths, reverse=True)]
    else:
        rng = random.Random(seed)
        orders = [rng.sample(list(lengths), len(lengths)) for _ in range(8)]
    widths = [max(order[i : i + size]) for order in orders for i in range(0, len(order) - size + 1, size)]
    return size * statistics.fmean(widths)


def _pooled_batch_tokens(
    lengths: Sequence[int], units: Sequence[Sequence[int]], batch_size: int, grouped: bool, seed: int
) -> float:
    """Mean padded tokens of a batch of ``batch_size`` sequences: all their windows × the longest window.

    Grouped, the sequences are sorted by their tokens (what the batch plan groups a pooled run by).
    """
    sequences = [(len(u), max(lengths[i] for i in u), sum(lengths[i] for i in u)) for u in units if u]
    if not sequences:
        return 0.0
    size = max(1, min(batch_size, len(sequences)))
    if grouped:
        orders = [sorted(sequences, key=lambda s: -s[2])]
    else:
        rng = random.Random(seed)
        orders = [rng.sample(sequences, len(sequences)) for _ in range(8)]
    batches = [order[i : i + size] for order in orders for i in range(0, len(order) - size + 1, size)]
    return statistics.fmean(sum(s[0] for s in batch) * max(s[1] for s in batch) for batch in batches)


def estimate_run_seconds(request: Any, data: DataProfile, measured: MeasuredSpeed, kit: Any = None) -> RunEstimate:
    """Seconds a run of ``request`` on ``data`` takes on the machine that gave ``measured`` (pure).

    train = steps × (padded tokens per step × measured seconds per token of a training step);
    validation = passes × padded tokens per pass × measured seconds per token of a forward pass;
    setup = reading and tokenising every row + loading the base twice (train, export) + a fixed
    overhead. Each part is multiplied by the actual/measured ratio of earlier runs. With a pooled
    window loss (``data.units``) a step is batch_size sequences × their windows, and an epoch is
    the training sequences; per window, an epoch is the training windows. Validation scores
    every window of the sequences it keeps in both (as the loop does). ``kit``: the
    :class:`~studio.transfer.after_training.KitPlan` of the kit built after training (None: none).
    """
    hyper = request.hyper
    _, val_idx = split_rows(data.rows, hyper.validation_fraction, request.seed)
    steps = planned_steps(request, data)
    grouped = bool(hyper.group_by_length)
    step_tokens = micro_batch_tokens(request, data) * hyper.grad_accum
    per_token_train = measured.step_s / max(1, measured.step_tokens)
    step_s = step_tokens * per_token_train * measured.train_ratio
    val_examples = data.examples_in(val_idx)
    if data.units is not None and hyper.max_eval_rows and val_idx:
        # the loop's scored_validation: under a pooled loss max_eval_rows counts sequences, each with its windows
        eval_rows = round(val_examples * min(1.0, hyper.max_eval_rows / len(val_idx)))
    else:
        eval_rows = min(val_examples, hyper.max_eval_rows or val_examples)  # the loop's scored_validation
    passes = validation_passes(steps, hyper.eval_every, eval_rows > 0)
    per_row = padded_batch_tokens(data.lengths, hyper.batch_size, grouped, request.seed) / max(1, hyper.batch_size)
    per_token_eval = measured.forward_s / max(1, measured.step_tokens)
    eval_s = passes * eval_rows * per_row * per_token_eval * measured.eval_ratio
    setup_s = predicted_setup_seconds(data.rows, measured) * measured.setup_ratio
    return RunEstimate(
        setup_s=setup_s,
        train_s=steps * step_s,
        eval_s=eval_s,
        steps=steps,
        step_s=step_s,
        eval_passes=passes,
        eval_rows=eval_rows,
        measured=measured,
        eval_unit="window" if data.windowed else "row",
        kit_s=kit_seconds(kit, measured) if kit is not None else 0.0,
    )


def kit_seconds(kit: Any, measured: MeasuredSpeed) -> float:
    """Seconds to build a transfer kit (:class:`~studio.transfer.after_training.KitPlan`) at ``measured``'s rates.

    The kit loads the base to write inputs few-shot, trains a discriminator (its own run: steps,
    tokenising, loading to train and again to judge) and scores every discriminator row once.
    Writing is ``inputs / batch`` waves of up to ``max_new_tokens`` decode steps after a prefill
    of the prompts; a decode step is priced as one row of the timed forward pass: it reads all the
    weights for a token per sequence, so its share of the batch's tokens would be far too cheap.
    """
    per_token_eval = measured.forward_s / max(1, measured.step_tokens) * measured.eval_ratio
    decode_step_s = measured.forward_s / max(1, measured.step_rows) * measured.eval_ratio
    waves = -(-kit.inputs // max(1, kit.batch))
    writing = (
        measured.load_s * measured.setup_ratio
        + kit.inputs * kit.prompt_tokens * per_token_eval
        + waves * kit.max_new_tokens * decode_step_s
    )
    rows = DataProfile(len(kit.discriminator_lengths), kit.discriminator_lengths)
    discriminator = estimate_run_seconds(kit.discriminator, rows, measured)  # no validation, and no kit of its own
    scoring = sum(kit.discriminator_lengths) * per_token_eval
    return writing + discriminator.total_s + scoring


def predicted_setup_seconds(rows: int, measured: MeasuredSpeed) -> float:
    """Tokenising every row, loading the base twice (to train, and fresh for the export), fixed overhead."""
    return rows * measured.tokenise_s_per_row + 2 * measured.load_s + FIXED_OVERHEAD_S


# --- keys and files ---------------------------------------------------------------------------------------------


def machine_key(device: Any, threads: int, base_path: str | Path, n_params: int, precision: str, task: str) -> str:
    """This machine and model: what the learnt corrections are kept under."""
    import torch

    return (
        f"{device.name} | torch {torch.__version__} | {threads} threads | {Path(base_path).name} {n_params} | "
        f"{precision} | {task}"
    )


def shape_key(machine: str, rows: int, width: int) -> str:
    """A measurement's key: the machine and model, and the step shape (width rounded up to a bucket)."""
    bucket = max(WIDTH_BUCKET, -(-int(width) // WIDTH_BUCKET) * WIDTH_BUCKET)
    return f"{machine} | {rows}x{bucket}"


def _read(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _write(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    temporary.replace(path)  # a reader never sees half a file


def cached_measurement(
    cache_file: Path | None, key: str, measure: Callable[[], MeasuredSpeed], now: float | None = None
) -> tuple[MeasuredSpeed, bool]:
    """(measurement, measured now?): a fresh entry of ``cache_file`` under ``key``, or measured and stored."""
    now = time.time() if now is None else now
    known = _read(cache_file)
    entry = known.get(key)
    if isinstance(entry, dict) and now - float(entry.get("measured_at", 0)) < MEASUREMENT_TTL_S:
        try:
            return MeasuredSpeed(**entry), False
        except TypeError:
            pass  # written by another version: measure again
    measured = measure()
    known[key] = measured.as_dict()
    _write(cache_file, known)
    return measured, True


def latest_measurement(cache_file: Path | None, machine: str) -> MeasuredSpeed | None:
    """The newest measurement of ``machine`` (any step shape), or None."""
    entries = [v for k, v in _read(cache_file).items() if k.startswith(machine + " | ") and isinstance(v, dict)]
    if not entries:
        return None
    try:
        return MeasuredSpeed(**max(entries, key=lambda v: float(v.get("measured_at", 0))))
    except TypeError:
        return None


# --- learning from runs -----------------------------------------------------------------------------------------


@dataclass
class ActualTimes:
    """Where a finished run's time went (seconds), and how much it did."""

    setup_s: float
    train_s: float
    eval_s: float
    save_s: float
    steps: int
    train_tokens: int  # padded token slots trained on
    eval_tokens: int  # padded token slots scored in validation
    eval_passes: int
    rows: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.setup_s + self.train_s + self.eval_s + self.save_s


def run_ratios(actual: ActualTimes, measured: MeasuredSpeed) -> dict[str, float]:
    """actual / measured for each part of a run (the factors later estimates are multiplied by)."""
    ratios: dict[str, float] = {}
    per_token_train = measured.step_s / max(1, measured.step_tokens)
    per_token_eval = measured.forward_s / max(1, measured.step_tokens)
    if actual.train_tokens and per_token_train > 0:
        ratios["train"] = actual.train_s / (actual.train_tokens * per_token_train)
    if actual.eval_tokens and per_token_eval > 0:
        ratios["eval"] = actual.eval_s / (actual.eval_tokens * per_token_eval)
    ratios["setup"] = (actual.setup_s + actual.save_s) / predicted_setup_seconds(actual.rows, measured)
    return ratios


def record_run(
    runs_file: Path | None, machine: str, actual: ActualTimes, measured: MeasuredSpeed | None
) -> dict[str, float]:
    """Keep ``actual`` (and its ratios to ``measured``, when there is one) for ``machine``; returns the ratios."""
    ratios = run_ratios(actual, measured) if measured is not None else {}
    known = _read(runs_file)
    history = known.get(machine) if isinstance(known.get(machine), list) else []
    entry = {**asdict(actual), "total_s": actual.total_s, "ratios": ratios, "finished_at": time.time()}
    known[machine] = [*history, entry][-4 * HISTORY :]
    _write(runs_file, known)
    return ratios


def corrections(runs_file: Path | None, machine: str) -> dict[str, Any]:
    """Median actual/measured ratio per part over the last :data:`HISTORY` runs of ``machine`` (1 without)."""
    history = _read(runs_file).get(machine)
    runs = (
        [r for r in history if isinstance(r, dict) and r.get("ratios")][-HISTORY:] if isinstance(history, list) else []
    )
    out: dict[str, Any] = {"runs_learnt": len(runs)}
    for part in ("train", "eval", "setup"):
        values = [float(r["ratios"][part]) for r in runs if isinstance(r["ratios"].get(part), int | float)]
        out[f"{part}_ratio"] = statistics.median(values) if values else 1.0
    return out


# --- measuring (loads the model) ----------------------------------------------------------------------------------


def profile_data(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    *,
    task: str,
    max_length: int,
    loss_on: str,
    labels: list[Any] | None,
    seed: int,
    sample: int = SAMPLE_ROWS,
    window_loss: str = "per_window",
) -> tuple[DataProfile, list[dict[str, Any]], float]:
    """(profile, the sample's encoded examples, seconds to tokenise one row) of a seeded sample of ``rows``.

    A sampled row may become several examples (a long sequence's windows): the profile keeps
    which row each example came from (the run's steps and validation rows count examples), and
    with a pooled ``window_loss`` which windows belong to which sequence.
    """
    from studio.training.setup import training_units
    from studio.training.tokenise import encode_rows

    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(sample, len(rows))))
    picked = [rows[i] for i in chosen]
    began = time.perf_counter()
    encoded = encode_rows(picked, tokenizer, task=task, max_length=max_length, loss_on=loss_on, labels=labels)
    per_row = (time.perf_counter() - began) / max(1, len(picked))
    examples = list(encoded.examples)
    units = training_units(examples, task, window_loss)
    lengths = tuple(len(e["input_ids"]) for e in examples)
    profile = DataProfile(
        len(rows),
        lengths,
        None if units is None else tuple(tuple(u) for u in units),
        sampled=tuple(chosen),
        example_rows=tuple(chosen[i] for i in encoded.example_rows()),
    )
    return profile, examples, per_row


def representative_batch(examples: list[dict[str, Any]], batch_size: int, pad_id: int) -> dict[str, Any]:
    """The length-sorted group of ``batch_size`` examples whose padded width is the median one."""
    from studio.training.data import collate

    ordered = sorted(examples, key=lambda e: -len(e["input_ids"]))
    size = max(1, min(batch_size, len(ordered)))
    groups = [ordered[i : i + size] for i in range(0, len(ordered) - size + 1, size)]
    return collate(groups[len(groups) // 2], pad_id)


def time_step(
    model: Any,
    batch: dict[str, Any],
    *,
    task: str,
    targets: list[str],
    precision: Any,
    chunk_tokens: int,
    repeats: int = 2,
) -> tuple[float, float]:
    """(seconds of a forward + backward pass, seconds of a forward-only pass) of ``batch``: medians after a warm-up.

    Stand-in rank-8 adapters are hooked onto ``targets`` (as the precision probe does) and the
    model is left as it was found. Medians, not minimums: the run will meet the same load.
    """
    import torch

    from studio.training.losses import LossFunction
    from studio.training.precision_probe import _stand_in_adapters, _untouched

    device = batch["input_ids"].device
    loss_fn = LossFunction.for_model(model, task, chunk_tokens, precision.dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def train_pass(adapters: list[Any]) -> float:
        sync()
        began = time.perf_counter()
        with precision.autocast():
            value, _ = loss_fn(model, batch)
        if value.requires_grad:
            value.backward()
        sync()
        for param in adapters:
            param.grad = None
        return time.perf_counter() - began

    def forward_pass() -> float:
        sync()
        began = time.perf_counter()
        with torch.no_grad(), precision.autocast():
            loss_fn(model, batch)
        sync()
        return time.perf_counter() - began

    with _untouched(model, device), _stand_in_adapters(model, targets, device) as adapters:
        train_pass(adapters)  # warm-up: kernel choice, first-touch of the activation memory
        steps = [train_pass(adapters) for _ in range(repeats)]
        model.eval()
        forwards = [forward_pass() for _ in range(repeats)]
    return statistics.median(steps), statistics.median(forwards)


def current_loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _torch_threads(threads: int | None) -> Any:
    """A context that runs with the worker's thread count (STUDIO_TORCH_THREADS), then puts torch's back."""
    import contextlib

    import torch

    @contextlib.contextmanager
    def threads_set() -> Any:
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))
        try:
            yield torch.get_num_threads()
        finally:
            torch.set_num_threads(before)

    return threads_set()


def measurement_cache(settings: Any) -> Path | None:
    data_dir = getattr(settings, "data_dir", None)
    return Path(data_dir) / MEASUREMENTS_FILE if data_dir else None


def runs_cache(settings: Any) -> Path | None:
    data_dir = getattr(settings, "data_dir", None)
    return Path(data_dir) / RUNS_FILE if data_dir else None


@dataclass(frozen=True)
class RequestData:
    """A request's resolved base model and tokenizer, and the profile of a seeded sample of its dataset."""

    base_path: Path
    tokenizer: Any
    labels: list[Any] | None
    max_length: int  # the loop's: the request's, lowered to an encoder's positions (its window length)
    profile: DataProfile
    examples: list[dict[str, Any]]
    tokenise_s: float  # reading and tokenising one row
    kit: Any = None  # the transfer kit the job builds after training (a KitPlan), None: none


def profile_request(request: Any, settings: Any, data_path: str | Path, task: str) -> RequestData:
    """Resolve ``request``'s base model (a bundled one is converted once) and profile its dataset as the loop reads it."""
    from studio.models.base_models import resolve_base_model
    from studio.training.models import load_tokenizer_for

    base_path = Path(resolve_base_model(request.base_model, settings).path)
    return _profile_with(request, base_path, load_tokenizer_for(base_path), data_path, task)


def windowed_request_data(request: Any, settings: Any, data_path: str | Path, task: str) -> RequestData | None:
    """:func:`profile_request` where the run reads long sequences as windows, else None (nothing profiled).

    Windows are a classification run on a sequence encoder (a base the ``pretrain`` job saved with
    its sequence tokenizer). A bundled model is a causal LM: it is not resolved (no conversion).
    """
    from studio.models.base_models import BUNDLED_MODELS, resolve_base_model
    from studio.sequences.windows import is_sequence_tokenizer
    from studio.training.models import load_tokenizer_for

    if task != "classification" or request.base_model in BUNDLED_MODELS:
        return None
    base_path = Path(resolve_base_model(request.base_model, settings).path)
    tokenizer = load_tokenizer_for(base_path)
    if not is_sequence_tokenizer(tokenizer):
        return None
    return _profile_with(request, base_path, tokenizer, data_path, task)


def _profile_with(request: Any, base_path: Path, tokenizer: Any, data_path: str | Path, task: str) -> RequestData:
    from studio.training.data import read_jsonl
    from studio.training.setup import dataset_labels, encoder_max_length
    from studio.transfer.after_training import kit_plan

    hyper = request.hyper
    rows = read_jsonl(data_path)
    labels = dataset_labels(rows, {}) if task == "classification" else None
    max_length = encoder_max_length(base_path, hyper.max_length)  # the loop's windows
    profile, examples, tokenise_s = profile_data(
        rows,
        tokenizer,
        task=task,
        max_length=max_length,
        loss_on=hyper.loss_on,
        labels=labels,
        seed=request.seed,
        window_loss=hyper.window_loss,
    )
    kit = kit_plan(request, task, rows, base_path, tokenizer)
    return RequestData(base_path, tokenizer, labels, max_length, profile, examples, tokenise_s, kit)


def estimate_for_request(
    request: Any, settings: Any, device: Any, data_path: str | Path, task: str, log: Callable[..., Any] | None = None
) -> RunEstimate:
    """How long ``request`` will take on ``device`` (this machine), measured now or within the last minutes.

    Resolves the base model (a bundled one is converted once), tokenises a sample of the rows,
    and, unless a fresh measurement of this shape is kept, loads the base and times a step.
    """
    import torch

    from studio.training.data import to_device
    from studio.training.memory import ModelShape
    from studio.training.models import load_base_model
    from studio.training.precision import choose_precision, precision_cache
    from studio.variants.targets import default_target_modules

    hyper = request.hyper
    profiled = profile_request(request, settings, data_path, task)
    base_path, labels, tokenizer = profiled.base_path, profiled.labels, profiled.tokenizer
    data, examples, tokenise_s = profiled.profile, profiled.examples, profiled.tokenise_s
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Timed at batch_size windows even when a step holds whole sequences: time scales by the
    # padded tokens, and the measurement must not need the memory of a whole pooled step.
    precision = choose_precision(hyper.precision, device, cache_file=precision_cache(settings))
    batch = representative_batch(examples, hyper.batch_size, pad_id)
    rows_in_batch, width = batch["input_ids"].shape
    with _torch_threads(settings.torch_threads) as threads:
        machine = machine_key(
            device, threads, base_path, ModelShape.from_path(base_path).n_params, precision.name, task
        )

        def measure() -> MeasuredSpeed:
            if log is not None:
                log(f"timing a training step of {rows_in_batch}x{width} tokens on this machine")
            began = time.perf_counter()
            model = load_base_model(base_path, task, labels, pad_id).to(torch.device(device.torch_device))
            load_s = time.perf_counter() - began
            targets = list(request.variant_params.get("target_modules") or default_target_modules(model))
            step_s, forward_s = time_step(
                model,
                to_device(batch, torch.device(device.torch_device)),
                task=task,
                targets=targets,
                precision=precision,
                chunk_tokens=hyper.loss_chunk_tokens,
            )
            return MeasuredSpeed(
                step_s=step_s,
                step_tokens=int(batch["input_ids"].numel()),
                forward_s=forward_s,
                load_s=load_s,
                tokenise_s_per_row=tokenise_s,  # kept, so that a finished run's setup ratio compares like with like
                threads=threads,
                loadavg=current_loadavg(),
                measured_at=time.time(),
                step_rows=rows_in_batch,
            )

        measured, _ = cached_measurement(measurement_cache(settings), shape_key(machine, rows_in_batch, width), measure)
    learnt = corrections(runs_cache(settings), machine)
    # step_rows: the shape key holds it, so a measurement kept by an older version gets it here
    measured = replace(measured, tokenise_s_per_row=tokenise_s, step_rows=rows_in_batch, **learnt)
    return estimate_run_seconds(request, data, measured, profiled.kit)


def record_finished_run(
    settings: Any, device: Any, result: Any, base_path: str | Path, rows: int, save_s: float
) -> dict[str, Any]:
    """Keep a finished run's time split (and its ratios to this machine's measurement); returns it for the job record."""
    import torch

    from studio.training.memory import ModelShape

    precision = result.precision.name if result.precision else "fp32"
    n_params = ModelShape.from_path(base_path).n_params
    machine = machine_key(device, torch.get_num_threads(), base_path, n_params, precision, result.task)
    actual = ActualTimes(
        setup_s=result.setup_seconds,
        train_s=result.train_seconds,
        eval_s=result.eval_seconds,
        save_s=save_s,
        steps=result.total_steps - result.resumed_from_step,
        train_tokens=result.padded_tokens,
        eval_tokens=result.eval_tokens,
        eval_passes=result.eval_passes,
        rows=rows,
    )
    ratios = record_run(runs_cache(settings), machine, actual, latest_measurement(measurement_cache(settings), machine))
    out = {k: v for k, v in asdict(actual).items() if k != "extra"}
    return {**out, "total_s": actual.total_s, "ratios_to_measurement": ratios}
