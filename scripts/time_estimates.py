"""Estimate vs reality: the Quick preset on the bundled SmolLM2-135M, estimated at submit and then run.

Issue 11, item 7. Goes through the studio's own code paths: the dataset is imported with
``DatasetService.add`` (Alpaca rows -> canonical chat rows), the estimate is the one
``studio train`` prints and the Train tab shows (``studio.training.duration.estimate_for_request``,
measured now, under the current load), and the job is submitted to the registry and executed
by the worker's ``execute_job`` in this process (no Celery hop; the worker's thread setting
applied as ``workers/runtime.py`` does). The job's own timing record (setup, train, validation,
save) is compared with the estimate's parts.

    python scripts/time_estimates.py --data ../shared/data/alpaca/train.jsonl          # writes the doc
    python scripts/time_estimates.py --data rows.jsonl --rows 500 --doc /tmp/x.md       # a quick look

Writes docs/results/time_estimates.md (``--doc``) and bench/results/time_estimates.json (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    DOCS_RESULTS_DIR,
    RESULTS_DIR,
    add_data_argument,
    data_file,
    embedded_settings,
    loadavg,
    machine_info,
    markdown_table,
    prepare_env,
    use_data,
    write_json,
)


def quick_request(dataset_id: int, base_model: str) -> Any:
    """The request the Train tab submits with the Quick preset and the default variant."""
    from app.train_presets import PRESETS
    from studio.schema import TrainingHyperParams, TrainRequest

    quick = PRESETS["Quick"]
    return TrainRequest(
        dataset_id=dataset_id,
        base_model=base_model,
        variant="lora",
        variant_params=dict(quick["variant"]),
        hyper=TrainingHyperParams(**quick["hyper"]),
    )


def run(data: Path, rows: int, threads: int, work: Path) -> dict[str, Any]:
    """Import ``rows`` rows of ``data``, estimate the Quick run, run it, return both."""
    from studio.device import apply_torch_threads, detect_device
    from studio.jobs.runner import WorkerIdentity, execute_job
    from studio.services.container import build_services
    from studio.training.duration import estimate_for_request

    if threads:
        os.environ["STUDIO_TORCH_THREADS"] = str(threads)
    settings = embedded_settings(work / "data")
    svc = build_services(settings)
    subset = work / "alpaca.jsonl"
    with open(data, encoding="utf-8") as source, open(subset, "w", encoding="utf-8") as target:
        target.writelines(itertools.islice((line for line in source if line.strip()), rows))
    dataset = svc.datasets.add(subset)
    request = quick_request(dataset.id, settings.default_base_model)
    device = detect_device(settings.device)
    task = dataset.report.get("task", "causal-lm")

    # the first estimate converts the bundled model (once per data dir): not part of the measurement
    from studio.models.base_models import resolve_base_model

    resolve_base_model(request.base_model, settings)
    load_at_submit = loadavg()
    began = time.perf_counter()
    estimate = estimate_for_request(request, settings, device, dataset.stored_path, task)
    estimate_s = time.perf_counter() - began
    print(f"estimate ({estimate_s:.0f} s to measure): {estimate.describe()}; {estimate.breakdown()}", flush=True)

    job = svc.jobs.submit(request, name="quick preset timing")
    worker = WorkerIdentity(f"timing-{os.getpid()}", device)
    apply_torch_threads(settings.torch_threads)  # as workers/runtime.py does at start
    began = time.perf_counter()
    state = execute_job(job.id, svc.registry, settings, worker)
    actual_s = time.perf_counter() - began
    load_after = loadavg()
    finished = svc.registry.get_job(job.id)
    if state != "succeeded":
        raise SystemExit(f"job {job.id} ended {state}: {finished.error}")
    timings = finished.result["timings"]
    print(f"actual: {actual_s:.0f} s; {json.dumps(timings)}", flush=True)
    return {
        "rows": rows,
        "request": request.model_dump(mode="json"),
        "device": device.label,
        "torch_threads": settings.torch_threads,
        "loadavg_at_submit": load_at_submit,
        "loadavg_after_run": load_after,
        "seconds_to_estimate": estimate_s,
        "estimate": estimate.as_dict(),
        "estimate_text": f"{estimate.describe()}; {estimate.breakdown()}",
        "actual_s": actual_s,
        "actual_timings": timings,
        "machine": machine_info(),
    }


def write_doc(path: Path, result: dict[str, Any], command: str) -> None:
    est, act = result["estimate"], result["actual_timings"]
    parts = [
        ("setup (read, tokenise, load) + saving", est["setup_s"], act["setup_s"] + act["save_s"]),
        (f"training ({act['steps']} steps)", est["train_s"], act["train_s"]),
        (f"validation ({act['eval_passes']} passes)", est["eval_s"], act["eval_s"]),
        ("whole job (worker wall time)", est["total_s"], result["actual_s"]),
    ]
    rows = [(name, f"{e:.0f}", f"{a:.0f}", f"{(e - a) / a:+.0%}") for name, e, a in parts]
    hyper = result["request"]["hyper"]
    machine = result["machine"]
    lines = [
        "# Time estimates: estimate at submit vs the run",
        "",
        "Issue 11, item 7. The Quick preset on the bundled SmolLM2-135M-Instruct, on "
        f"{result['rows']} Alpaca rows, estimated the way `studio train` and the Train tab do it "
        "(`studio.training.duration.estimate_for_request`: a real step of the base timed at the run's "
        "shape, now) and then run through the worker's `execute_job`.",
        "",
        f"- Quick preset: {hyper['max_steps']} steps of {hyper['batch_size']} rows of up to "
        f"{hyper['max_length']} tokens, validation every {hyper['eval_every']} steps over "
        f"{hyper['max_eval_rows']} held-out rows",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, torch threads {result['torch_threads']} "
        "(`STUDIO_TORCH_THREADS`), shared with other busy processes",
        f"- Load average (1, 5, 15 min) at submit: {', '.join(f'{x:.2f}' for x in result['loadavg_at_submit'])}; "
        f"after the run: {', '.join(f'{x:.2f}' for x in result['loadavg_after_run'])}",
        f"- Estimate shown: {result['estimate_text']}",
        f"- Measuring took {result['seconds_to_estimate']:.0f} s (kept for "
        "10 minutes per machine, model and step shape)",
        "",
        markdown_table(["part", "estimate (s)", "actual (s)", "error"], rows),
        "",
        "The first run on a machine has no learnt correction; each finished run records its time split "
        "in the data dir (`run-timings.json`) and later estimates for the same machine and model are "
        "multiplied by the median actual/measured ratio of the last runs.",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser)
    parser.add_argument("--rows", type=int, default=2000, help="rows of --data to import")
    parser.add_argument(
        "--threads", type=int, default=1, help="STUDIO_TORCH_THREADS for the estimate and the worker (0 = torch's)"
    )
    parser.add_argument("--doc", type=Path, default=DOCS_RESULTS_DIR / "time_estimates.md")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "time_estimates.json")
    args = parser.parse_args()
    use_data(args.data)
    prepare_env()
    with tempfile.TemporaryDirectory(prefix="studio-time-") as work:
        result = run(data_file("alpaca", "train.jsonl"), args.rows, args.threads, Path(work))
    write_json(args.out, result)
    command = f"python scripts/time_estimates.py --data {args.data} --rows {args.rows} --threads {args.threads}"
    write_doc(args.doc, result, command)
    print(f"wrote {args.doc} and {args.out}")


if __name__ == "__main__":
    main()
