"""Helpers shared by the benchmarks in bench/ and the experiment scripts in scripts/.

Nothing here trains: it prepares data files, reads memory from /proc, describes the
machine (load matters on a shared CPU box), aggregates throughput from the studio's
own ``tokens_per_s`` metrics and writes tables / JSON.

Run any bench or script from the repository root, e.g. ``python bench/studio_overhead.py``;
each one puts the repository root on ``sys.path`` itself.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.comparison import fmt, markdown_table  # noqa: F401  (the tables of every bench and script)
from studio.progress import MemoryReporter

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DOCS_RESULTS_DIR = REPO_ROOT / "docs" / "results"
# The real data sets, one folder each (alpaca/, gsm8k/, sst2/, ...). By default the samples shipped
# in the repository (data/samples: the first rows of each public file, see its SOURCE.md files);
# ``--data DIR`` (or STUDIO_SHARED_DATA) points at the full files laid out the same way.
SAMPLES_DIR = REPO_ROOT / "data" / "samples"
SHARED_DATA = Path(os.environ.get("STUDIO_SHARED_DATA") or SAMPLES_DIR)
DEFAULT_BASE = "smollm2-135m-instruct"
DEFAULT_MODELS_DIR = "/tmp/studio-models"


def prepare_env(models_dir: str | None = None, threads: int | None = None) -> None:
    """Offline Hugging Face, no tokenizer threads, one shared converted copy of the bundled models.

    ``threads`` (> 0) pins the intra-op threads of this process and of every subprocess it
    starts (a studio worker, a bare child) through OMP_NUM_THREADS / MKL_NUM_THREADS. On a
    shared, oversubscribed machine two OpenMP threads spin at every barrier while the other
    is descheduled: measured here at load ~4, 2 threads ran 5-10 tokens/s and burned ~45
    CPU-seconds per step, 1 thread ran 65-80 tokens/s at ~5 CPU-seconds per step.
    """
    if threads and threads > 0:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("STUDIO_MODELS_DIR", models_dir or DEFAULT_MODELS_DIR)


def add_threads_argument(parser: Any) -> None:
    """``--threads`` (default 1) for a bench or script; pass the value to :func:`prepare_env`."""
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (OMP_NUM_THREADS) of every training process; 0 = torch's default. "
        "1 keeps rates stable on a shared, oversubscribed CPU (see bench/common.prepare_env).",
    )


def embedded_settings(data_dir: str | Path) -> Any:
    """Studio settings on ``data_dir`` with the embedded SQLite registry and broker (env URLs ignored)."""
    from studio.settings import Settings

    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STUDIO_AUTH"):
        os.environ.pop(name, None)
    os.environ["STUDIO_DATA_DIR"] = str(data_dir)
    settings = Settings(data_dir=Path(data_dir))
    settings.ensure_dirs()
    return settings


def resolve_base(name: str, data_dir: str | Path | None = None) -> Path:
    """A loadable directory for ``name`` (bundled name, local dir or cached hub id)."""
    from studio.models.base_models import resolve_base_model
    from studio.settings import Settings

    settings = Settings(data_dir=Path(data_dir or "/tmp/adapter-studio-bench"))
    return resolve_base_model(name, settings).path


# --- data -------------------------------------------------------------------------------------------------------


def add_data_argument(parser: Any) -> None:
    """``--data DIR``: where the real data sets are (default: the in-repo samples); apply it with :func:`use_data`."""
    parser.add_argument(
        "--data",
        type=Path,
        default=SHARED_DATA,
        help=f"folder of the data sets, one sub-folder each (alpaca/, gsm8k/, ...); default {SHARED_DATA} "
        "(the samples shipped in the repository: the first rows of each file)",
    )


def add_run_arguments(
    parser: Any,
    *,
    out: str | None = None,
    doc: str | None = None,
    resume: str | None = None,
    quick: str | None = None,
) -> None:
    """The options the real-data scripts share: ``--data`` and ``--threads``, then those a script asks for.

    ``out`` / ``doc`` name the default files of ``--out`` (in bench/results) and ``--doc`` (in
    docs/results); ``resume`` / ``quick`` are the help texts of those switches (each script says
    what it skips or shrinks). Apply ``--data`` and ``--threads`` with :func:`start_run`.
    """
    add_data_argument(parser)
    add_threads_argument(parser)
    if out:
        parser.add_argument("--out", default=str(RESULTS_DIR / out))
    if doc:
        parser.add_argument("--doc", default=str(DOCS_RESULTS_DIR / doc))
    if resume:
        parser.add_argument("--resume", action="store_true", help=resume)
    if quick:
        parser.add_argument("--quick", action="store_true", help=quick)


def start_run(args: Any) -> None:
    """The start-up of a run: the data sets from ``args.data`` (:func:`use_data`), then :func:`prepare_env` at ``args.threads``."""
    use_data(args.data)
    prepare_env(threads=args.threads)


def use_data(path: str | Path) -> Path:
    """Read the data sets from ``path`` from now on (what ``--data`` sets); refuses a folder that is not there."""
    global SHARED_DATA
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise SystemExit(f"error: --data {path} is not a folder (expected one sub-folder per data set, e.g. alpaca/)")
    SHARED_DATA = path
    return path


def data_file(dataset: str, name: str) -> Path:
    """``<data>/<dataset>/<name>``, or a clear exit naming ``--data`` when the file is missing."""
    path = SHARED_DATA / dataset / name
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: pass --data with a folder that has {dataset}/{name}")
    return path


def take_rows(rows: list[dict[str, Any]], n: int | None, source: str | Path) -> list[dict[str, Any]]:
    """The first ``n`` rows, saying so on stderr when the file has fewer (a sample rather than the full set)."""
    if n is not None and len(rows) < n:
        print(
            f"note: only {len(rows)} of the {n} rows asked for are in {source}; pass --data for more", file=sys.stderr
        )
    return rows[:n] if n is not None else rows


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def alpaca_rows(
    split: str = "train", n: int | None = None, *, offset: int = 0, max_chars: int | None = None
) -> list[dict[str, Any]]:
    """Alpaca rows (instruction/input/output) from the data folder (``--data``), in file order.

    ``max_chars`` keeps only rows whose instruction+input+output is at most that long
    (a cheap proxy for "moderate length" before tokenising); ``offset`` skips rows first.
    """
    path = data_file("alpaca", f"{split}.jsonl")
    rows = read_jsonl(path)[offset:]
    if max_chars is not None:
        rows = [r for r in rows if len(r["instruction"]) + len(r.get("input", "")) + len(r["output"]) <= max_chars]
    return take_rows(rows, n, path)


def alpaca_canonical(row: dict[str, Any]) -> dict[str, Any]:
    """The studio's canonical chat row for one Alpaca record (what DatasetService.add stores)."""
    from studio.datasets.normalise import to_canonical

    return to_canonical(
        "alpaca", {"instruction": row["instruction"], "input": row.get("input", ""), "output": row["output"]}
    )


# Alpaca has no label, so its tasks differ by kind of instruction: the leading verb (or question
# word) mapped to five categories (federated_real.py's client split, generate_real.py's tasks).
# Hand-made from the verbs of the first 2,000 rows; an unknown verb is "other". Deterministic: a
# pure function of the instruction text.
CATEGORY_VERBS = {
    "write": (
        "write", "generate", "create", "compose", "design", "construct", "make", "come", "brainstorm", "develop",
        "suggest", "produce", "imagine", "formulate", "invent", "draft", "propose", "give", "provide", "offer",
        "compile", "build", "recommend",
    ),
    "explain": (
        "explain", "describe", "what", "how", "why", "who", "when", "where", "which", "summarize", "summarise",
        "tell", "discuss", "compare", "analyze", "analyse", "evaluate", "is", "are", "does", "do", "can", "outline",
        "define", "answer",
    ),
    "classify": (
        "classify", "identify", "categorize", "categorise", "label", "name", "list", "find", "select", "determine",
        "detect", "choose", "pick", "rank", "calculate", "compute", "predict", "match", "group", "sort", "extract",
        "estimate", "infer", "solve",
    ),
    "rewrite": (
        "rewrite", "edit", "change", "convert", "translate", "paraphrase", "transform", "rearrange", "reorder",
        "replace", "correct", "modify", "improve", "shorten", "simplify", "reword", "rephrase", "insert", "add",
        "remove", "delete", "arrange", "complete", "fill", "reverse", "format",
    ),
}  # fmt: skip
CATEGORY_OF_VERB = {verb: cat for cat, verbs in CATEGORY_VERBS.items() for verb in verbs}
# "Given a list of numbers, sort them": the verb comes after a leading clause, which is skipped
LEADING_CLAUSE = re.compile(r"^\s*(given|based on|using|in|for|from|with)\b[^,]*,\s*", re.IGNORECASE)


def instruction_category(instruction: str) -> str:
    """The kind of an Alpaca instruction: write, explain, classify, rewrite or other (see CATEGORY_VERBS).

    The first word after an optional leading clause ("Given ..., ") and an optional "please" decides.
    """
    words = re.findall(r"[a-z]+", LEADING_CLAUSE.sub("", instruction).lower())
    if words and words[0] == "please":
        words = words[1:]
    return CATEGORY_OF_VERB.get(words[0], "other") if words else "other"


# --- memory and machine --------------------------------------------------------------------------------------------


def _proc_status(pid: int | str, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """Peak resident set size (VmHWM) of a live process, MiB."""
    return _proc_status(pid, "VmHWM")


def rss_mb(pid: int | str = "self") -> float | None:
    """Current resident set size (VmRSS) of a live process, MiB."""
    return _proc_status(pid, "VmRSS")


def cpu_seconds(pid: int | str = "self") -> float | None:
    """User + system CPU time of a live process (all its threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class CpuSampler:
    """Samples (wall time, CPU seconds) of another process in a thread, to attribute CPU time to time windows.

    On a shared machine wall-clock rates move with other people's load; the CPU time a
    process spends per token moves much less, so benches report both.
    """

    def __init__(self, pid: int, interval: float = 0.2):
        import threading

        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = cpu_seconds(self.pid)
            if value is not None:
                self.samples.append((time.time(), value))
            self._stop.wait(self.interval)

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


def cpu_at(samples: Sequence[tuple[float, float]], when: float) -> float | None:
    """CPU seconds at wall time ``when``, linearly interpolated between samples."""
    if not samples or when < samples[0][0] or when > samples[-1][0]:
        return None
    for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
        if t0 <= when <= t1:
            return c0 + (c1 - c0) * ((when - t0) / (t1 - t0) if t1 > t0 else 0.0)
    return samples[-1][1]


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    """Where a number was measured: CPU, cores, load, library versions."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - reporting only
            versions[name] = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": loadavg(),
        "cuda": torch.cuda.is_available(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --- throughput --------------------------------------------------------------------------------------------------


def step_tokens_of(setup: Any, steps: int, grad_accum: int = 1) -> list[int]:
    """Tokens (attention-mask ones) of each optimizer step 1..steps, as the loop counts them."""
    out = []
    for step in range(1, steps + 1):
        if hasattr(setup, "step_batches"):
            batches = setup.step_batches(step, "cpu")
        else:  # engines before micro-batch planning
            first = (step - 1) * grad_accum
            batches = [setup.micro_batch(k, "cpu") for k in range(first, first + grad_accum)]
        out.append(sum(int(b["attention_mask"].sum()) for b in batches))
    return out


def worker_device() -> Any:
    """The device a studio worker on this machine would use (CPU bf16 support included)."""
    from studio.device import detect_device

    return detect_device(os.environ.get("STUDIO_DEVICE", "auto"))


def windows_from_metrics(rows: Iterable[tuple[int, str, float]], step_tokens: Sequence[int]) -> list[dict[str, float]]:
    """Log windows of a run from its ``tokens_per_s`` metric rows: (last step, tokens, seconds, tokens/s).

    The loop reports tokens/s per log window; with the tokens of each step known, each
    window's duration is tokens / rate, so windows can be summed into one honest rate.
    """
    points = sorted((int(step), float(value)) for step, name, value in rows if name == "tokens_per_s")
    windows, previous = [], 0
    for step, rate in points:
        tokens = sum(step_tokens[previous:step])
        windows.append(
            {
                "first_step": previous + 1,
                "last_step": step,
                "tokens": tokens,
                "seconds": tokens / rate,
                "tokens_per_s": rate,
            }
        )
        previous = step
    return windows


def summarise_windows(windows: Sequence[dict[str, float]]) -> dict[str, float | None]:
    """Overall tokens/s (all windows) and steady tokens/s (all but the first window, when there are several)."""
    if not windows:
        return {"tokens_per_s": None, "steady_tokens_per_s": None, "seconds": None, "tokens": 0}
    tokens = sum(w["tokens"] for w in windows)
    seconds = sum(w["seconds"] for w in windows)
    rest = windows[1:] or windows
    steady = sum(w["tokens"] for w in rest) / max(1e-9, sum(w["seconds"] for w in rest))
    return {
        "tokens_per_s": tokens / max(1e-9, seconds),
        "steady_tokens_per_s": steady,
        "seconds": seconds,
        "tokens": tokens,
    }


@dataclass
class TimingReporter(MemoryReporter):
    """A MemoryReporter that also stamps the wall and CPU time of every progress() call (one per optimizer step)."""

    step_times: dict[int, float] = field(default_factory=dict)
    cpu_times: dict[int, float] = field(default_factory=dict)  # process CPU seconds (all threads)

    def progress(self, step: int, total: int | None = None, message: str | None = None) -> None:
        self.step_times[step] = time.perf_counter()
        self.cpu_times[step] = time.process_time()
        super().progress(step, total, message)


# --- subprocesses -------------------------------------------------------------------------------------------------


def run_child(argv: Sequence[str], timeout: float | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python argv...`` from the repo root; its last stdout line must be a JSON object."""
    cmd = [sys.executable, *argv]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        return {"error": f"exit {proc.returncode}", "stderr_tail": tail}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": "no JSON result", "stdout_tail": proc.stdout[-3000:], "stderr_tail": proc.stderr[-2000:]}


# --- output -------------------------------------------------------------------------------------------------------


def write_json(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def open_record(args: Any, config: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """The record of a resumable run: the JSON at ``args.out`` with ``args.resume``, else ``config`` + ``fresh``.

    A saved record made with another ``config`` is refused (its numbers would not be this run's).
    The record is stamped with this command, the machine, the load at the first start and
    ``finished`` False; :func:`record_saver` writes it as the run goes.
    """
    out = Path(args.out)
    record: dict[str, Any] = json.loads(out.read_text()) if args.resume and out.is_file() else {}
    if record and record.get("config") != config:
        raise SystemExit(f"{out} was made with another set-up; run without --resume (or with its options)")
    record = record or {"config": config, **fresh, "elapsed_s": 0.0}
    record["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    record["machine"] = machine_info()
    record.setdefault("load_start", loadavg())
    record["finished"] = False
    return record


def record_saver(record: dict[str, Any], out: str | Path, doc: str | Path, render: Any) -> Any:
    """A ``save()`` that writes ``record`` to ``out`` and ``render(record)`` to ``doc``.

    Each save sets ``elapsed_s`` (the time since this call plus what earlier, resumed runs spent)
    and ``load_end``, so a run cut short still says how long it took and under what load.
    """
    began, spent_before = time.perf_counter(), float(record.get("elapsed_s") or 0.0)

    def save() -> None:
        record["elapsed_s"] = spent_before + time.perf_counter() - began
        record["load_end"] = loadavg()
        write_json(out, record)
        Path(doc).write_text(render(record), encoding="utf-8")

    return save


def text_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    body = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(out)
