"""The registry at scale: an Adapters page and a Jobs refresh with 100,000 adapters, 100,000 jobs, 10 M metrics.

Bulk-loads a fresh registry (COPY on PostgreSQL, executemany on SQLite), then times
the tabs' own handlers, so the figures include building the table and the plotly charts:

* Adapters page: ``tab_adapters.filter_choices`` + ``tab_adapters.table`` (one page of the
  table, the pickers' choices and the sampled params-vs-metric scatter), unfiltered, filtered
  and sorted by a metric, and searched (a narrow and a broad search);
* Jobs refresh: ``tab_jobs.refresh`` (workers line, one page of the queue, the job picker,
  and the selected job's detail, logs and downsampled loss curves), for the newest job, which
  has one of the longest curves.

Each is run ``--repeats`` times after one warm-up; the medians are compared with the targets
(< 200 ms per Adapters page, < 300 ms per Jobs refresh). Metric rows: half go to ``--long-jobs``
jobs with long curves (loss and learning rate every step, eval loss every 100), the rest are
spread over the other jobs.

    python bench/registry_scale.py [--database URL] [--adapters 100000] [--jobs 100000] [--metrics 10000000]

``--database`` must name an empty database (default: a new SQLite file in a temporary
directory); the results are appended to ``--out`` (bench/results/registry_scale.md).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine_info, markdown_table  # noqa: E402

TARGET_ADAPTERS_MS = 200.0
TARGET_JOBS_MS = 300.0
VARIANTS = ("lora", "dora", "adalora", "vera", "loha", "ia3", "sora", "dylora")
BASE_MODELS = ("smollm2-135m-instruct", "qwen2.5-0.5b", "llama-3.2-1b", "phi-3-mini", "gemma-2-2b")
KINDS = ("train",) * 7 + ("eval", "eval", "merge")
STATUSES = ("succeeded",) * 8 + ("failed", "cancelled")
DATASETS = 200
START = datetime(2026, 1, 1, tzinfo=UTC)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", help="URL of an empty database (default: a new SQLite file)")
    parser.add_argument("--adapters", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--metrics", type=int, default=10_000_000)
    parser.add_argument("--long-jobs", type=int, default=20, help="jobs sharing half of the metric rows")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "registry_scale.md"))
    return parser.parse_args(argv)


# --- data ---------------------------------------------------------------------------------------------------------


class Stamp:
    """Timestamps as each backend's bulk path takes them (SQLite: naive UTC text; PostgreSQL: with zone)."""

    def __init__(self, dialect: str):
        self.postgres = dialect == "postgresql"

    def __call__(self, moment: datetime) -> Any:
        return moment if self.postgres else moment.replace(tzinfo=None).isoformat(sep=" ")


def dataset_rows(stamp: Stamp) -> Iterator[tuple]:
    for i in range(1, DATASETS + 1):
        yield (i, f"dataset {i}", "jsonl", 1000, "0" * 64, "/bench/in", "/bench/stored", 0, "{}", "{}", stamp(START))


def job_rows(count: int, long_ids: set[int], stamp: Stamp, rng: random.Random) -> Iterator[tuple]:
    for i in range(1, count + 1):
        kind = "train" if i in long_ids else KINDS[i % len(KINDS)]
        status = "running" if i == count else STATUSES[rng.randrange(len(STATUSES))]
        created = START + timedelta(seconds=30 * i)
        variant = VARIANTS[i % len(VARIANTS)] if kind == "train" else None
        request = json.dumps({"kind": kind, "variant": variant, "dataset_id": 1 + i % DATASETS})
        yield (
            i, kind, status, f"{kind} job {i} {variant or ''}".strip(), request, 1, i, "{}",
            1 + i % DATASETS, BASE_MODELS[i % len(BASE_MODELS)], variant, 1, False,
            0.5 if status == "running" else 1.0, 100, 200, "", "{}",
            stamp(created), stamp(created), None if status == "running" else stamp(created + timedelta(minutes=5)),
            stamp(created), 1,
        )  # fmt: skip


JOB_COLUMNS = [
    "id", "kind", "status", "name", "request", "schema_version", "seed", "library_versions", "dataset_id",
    "base_model", "variant", "attempts", "cancel_requested", "progress", "step", "total_steps", "message", "result",
    "created_at", "started_at", "finished_at", "sent_at", "sends",
]  # fmt: skip


def adapter_rows(count: int, jobs: int, stamp: Stamp, rng: random.Random) -> Iterator[tuple[tuple, list[tuple]]]:
    """(adapter row, its adapter_metrics rows): eval_loss on 90 %, accuracy on 30 %."""
    for i in range(1, count + 1):
        variant = VARIANTS[rng.randrange(len(VARIANTS))]
        rank = 2 ** rng.randrange(1, 7)
        params = rank * 9_000 * (1 + rng.randrange(8))
        metrics = {}
        if rng.random() < 0.9:
            metrics["eval_loss"] = round(0.5 + 2.0 * rng.random() + 1.0 / math.log2(params), 4)
        if rng.random() < 0.3:
            metrics["accuracy"] = round(rng.random(), 4)
        row = (
            i, f"{variant}-r{rank}-run{i}", variant, BASE_MODELS[rng.randrange(len(BASE_MODELS))],
            1 + rng.randrange(DATASETS), json.dumps({"model.layers.0.self_attn.q_proj": rank}), params, params * 4,
            f"/bench/adapters/{i}", "0" * 64, 1 + (i * 7919) % jobs, "[]", json.dumps(metrics),
            stamp(START + timedelta(seconds=30 * i)),
        )  # fmt: skip
        yield row, [(i, name, value) for name, value in metrics.items()]


ADAPTER_COLUMNS = [
    "id", "name", "variant", "base_model", "dataset_id", "ranks", "trainable_params", "size_bytes", "path", "sha256",
    "source_job_id", "parents", "metrics", "created_at",
]  # fmt: skip


def metric_rows(total: int, jobs: int, long_ids: list[int], stamp: Stamp, rng: random.Random) -> Iterator[tuple]:
    """Half of ``total`` on the long jobs (loss + learning_rate per step, eval_loss every 100), half spread."""
    created = stamp(START)
    per_long = (total // 2) // max(1, len(long_ids))
    for job_id in long_ids:
        steps = int(per_long / 2.01)
        for step in range(1, steps + 1):
            loss = 3.0 * math.exp(-step / (steps / 4)) + 0.4 + 0.2 * rng.random()
            yield (job_id, step, "loss", loss, step * 0.25, created)
            yield (job_id, step, "learning_rate", 2e-4 * (1 - step / steps), step * 0.25, created)
            if step % 100 == 0:
                yield (job_id, step, "eval_loss", loss + 0.1, step * 0.25, created)
    long_set = set(long_ids)
    short_jobs = [j for j in range(1, jobs + 1) if j not in long_set]
    per_short = max(1, (total - per_long * len(long_ids)) // max(1, len(short_jobs)))
    for job_id in short_jobs:
        for step in range(1, per_short + 1):
            yield (job_id, step, "loss", 3.0 / step + 0.1 * rng.random(), float(step), created)


METRIC_COLUMNS = ["job_id", "step", "name", "value", "elapsed_seconds", "created_at"]


def load(registry: Any, args: argparse.Namespace) -> dict[str, float]:
    """Fill the registry; returns seconds per table."""
    rng = random.Random(args.seed)
    stamp = Stamp(registry.engine.dialect.name)
    # The newest job is one of the long ones: the Jobs tab selects it by default.
    long_ids = sorted({args.jobs} | {max(1, args.jobs - 1 - k * 997) for k in range(args.long_jobs - 1)})
    seconds = {}
    started = time.perf_counter()
    registry.bulk_insert(
        "datasets",
        ["id", "name", "format", "rows", "sha256", "original_path", "stored_path", "size_bytes", "mapping", "report",
         "created_at"],
        dataset_rows(stamp),
    )  # fmt: skip
    registry.bulk_insert("jobs", JOB_COLUMNS, job_rows(args.jobs, set(long_ids), stamp, rng))
    seconds["jobs"] = time.perf_counter() - started
    started = time.perf_counter()
    adapter_metric_rows: list[tuple] = []

    def adapters() -> Iterator[tuple]:
        for row, metrics in adapter_rows(args.adapters, args.jobs, stamp, rng):
            adapter_metric_rows.extend(metrics)
            yield row

    registry.bulk_insert("adapters", ADAPTER_COLUMNS, adapters())
    registry.bulk_insert("adapter_metrics", ["adapter_id", "name", "value"], adapter_metric_rows)
    seconds["adapters"] = time.perf_counter() - started
    started = time.perf_counter()
    seconds["metric_rows"] = registry.bulk_insert(
        "metrics", METRIC_COLUMNS, metric_rows(args.metrics, args.jobs, long_ids, stamp, rng)
    )
    seconds["metrics"] = time.perf_counter() - started
    started = time.perf_counter()
    registry.refresh_statistics()
    seconds["analyze"] = time.perf_counter() - started
    return seconds


# --- timing -------------------------------------------------------------------------------------------------------


class NoQueue:
    """The benchmark only reads: nothing is ever sent to a queue."""

    def send(self, job_id: int) -> str:
        raise RuntimeError("the benchmark does not queue jobs")

    def revoke(self, task_id: str | None) -> None:
        return None


def median_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median, max) wall milliseconds of ``fn`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def scenarios(services: Any) -> list[tuple[str, str, Callable[[], Any]]]:
    """(tab, what, handler call) of every timed view."""
    from app import tab_adapters, tab_jobs

    def adapters_page(**view: Any) -> Callable[[], Any]:
        return lambda: (tab_adapters.filter_choices(services), tab_adapters.table(services, **view))

    newest = services.jobs.page(limit=1)[0][0].id
    return [
        ("adapters", "first page, no filter", adapters_page()),
        ("adapters", "page 1000 (offset 49,950)", adapters_page(page=1000)),
        ("adapters", "variant + base model, sorted by eval_loss", adapters_page(
            variant="dora", base_model=BASE_MODELS[1], metric="eval_loss", sort="metric_asc")),
        ("adapters", "search 'r16-run12'", adapters_page(search="r16-run12")),
        ("adapters", "search 'lora' (a third of the adapters match)", adapters_page(search="lora")),
        ("jobs", f"refresh, job #{newest} selected (long curves)", lambda: tab_jobs.refresh(services, newest, None)),
        ("jobs", "refresh, status filter + search", lambda: tab_jobs.refresh(
            services, newest, None, search="merge job 9", status="succeeded")),
        ("jobs", "refresh, page 100", lambda: tab_jobs.refresh(services, newest, None, page=100)),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from models_db.registry import Registry
    from studio.services.container import Services
    from studio.services.jobs import JobService
    from studio.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="registry-scale-"))
    url = args.database or f"sqlite:///{work / 'studio.db'}"
    registry = Registry.from_url(url)
    if any(registry.counts().get(k) for k in ("datasets", "adapters")) or registry.page_jobs(limit=1)[1]:
        print(f"{registry.engine.url.render_as_string()} is not empty; give the benchmark an empty database")
        return 2
    dialect = registry.engine.dialect.name
    print(f"loading {args.adapters:,} adapters, {args.jobs:,} jobs, {args.metrics:,} metric rows into {dialect} …")
    loaded = load(registry, args)
    print("  " + ", ".join(f"{k} {v:,.1f} s" if k != "metric_rows" else f"{v:,} metric rows"
                            for k, v in loaded.items()))  # fmt: skip

    settings = Settings(data_dir=work / "data", database_url_override=url)
    services = Services(settings=settings, registry=registry, jobs=JobService(registry, NoQueue()))
    before_s = None
    if args.adapters <= 200_000:
        started = time.perf_counter()
        registry.list_adapters()  # what the tab did before: every adapter, then filtered in Python
        before_s = time.perf_counter() - started
    results = []
    for tab, what, fn in scenarios(services):
        median, worst = median_ms(fn, args.repeats)
        target = TARGET_ADAPTERS_MS if tab == "adapters" else TARGET_JOBS_MS
        results.append([tab, what, median, worst, target, "yes" if median < target else "NO"])
        print(f"  {tab:8} {what:50} median {median:7.1f} ms  max {worst:7.1f} ms  (target < {target:.0f} ms)")
    write_results(args, dialect, loaded, before_s, results)
    registry.dispose()
    return 0


def write_results(args: argparse.Namespace, dialect: str, loaded: dict, before_s: float | None, rows: list) -> None:
    info = machine_info()
    lines = [
        f"## {dialect}: {args.adapters:,} adapters, {args.jobs:,} jobs, {int(loaded['metric_rows']):,} metric rows",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {info.get('cpu', '')} · load {info.get('loadavg_1_5_15', '')} · "
        f"bulk load: jobs {loaded['jobs']:.0f} s, adapters {loaded['adapters']:.0f} s, "
        f"metrics {loaded['metrics']:.0f} s, analyze {loaded['analyze']:.0f} s · median of {args.repeats} runs",
        "",
        markdown_table(["tab", "view", "median ms", "max ms", "target ms", "met"], rows),
        "",
    ]
    if before_s is not None:
        lines += [
            f"Before (every adapter loaded, as the tab used to): `list_adapters()` alone took {before_s:.2f} s.",
            "",
        ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        out.write_text(
            "# Registry at scale\n\n`bench/registry_scale.py`: the Adapters and Jobs tabs' handlers on a bulk-loaded "
            "registry (times include building the table and the plotly figures).\n\n",
            encoding="utf-8",
        )
    with out.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"results appended to {out}")


if __name__ == "__main__":
    raise SystemExit(main())
