"""Job pages per kind: what the Jobs tab shows for a training, evaluation, merge and stopped job.

Evaluation and merge jobs really run (tiny Llama, random LoRAs, a 6-row dataset); the training
job's rows are written the way the runner writes them, without the minutes of training.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from app import job_pages, tab_datasets, tab_jobs
from studio.device import detect_device
from studio.jobs.runner import WorkerIdentity, execute_job
from studio.merging.error_meaning import merge_error_sentence, merge_error_verdict
from studio.schema import CheckRequest, EvalRequest, MergeRequest, TrainRequest

WORKER = WorkerIdentity("w1", detect_device("cpu"))


def value(update):
    return update.get("value") if isinstance(update, dict) and "__type__" in update else update


@pytest.fixture
def world(services, tiny_llama, tiny_loras, tmp_path):
    """A dataset 'colors' and two LoRAs of the tiny Llama, 'red' and 'blue', in the registry."""
    rows = [{"instruction": f"what color is thing {i}?", "output": "red"} for i in range(6)]
    path = tmp_path / "colors.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tab_datasets.import_file(services, str(path), "colors", False, None)
    [dataset] = services.datasets.list()
    adapters = [
        services.registry.add_adapter(
            name=name, variant="lora", base_model=str(tiny_llama), path=str(lora), sha256="0" * 64
        ).id
        for name, lora in zip(("red", "blue"), tiny_loras, strict=True)
    ]
    return {"dataset": dataset.id, "adapters": adapters, "base": str(tiny_llama)}


def submit(services, request):
    return services.jobs.submit(request)


# Names --------------------------------------------------------------------------------------------


def test_default_names_say_what_each_job_works_on(services, world):
    red, blue = world["adapters"]
    ds = world["dataset"]
    train = submit(services, TrainRequest(dataset_id=ds, base_model=world["base"], variant="dora"))
    named = submit(services, TrainRequest(dataset_id=ds, base_model=world["base"], name="mine"))
    loss = submit(services, EvalRequest(adapter_id=red, dataset_id=ds))
    match = submit(services, EvalRequest(adapter_ids=[red, blue], dataset_id=ds, metrics=["exact_match"]))
    merge = submit(services, MergeRequest(adapter_ids=[red, blue], method="ties", rank=2))
    check = submit(services, CheckRequest(steps=5))

    assert train.name == f"dora on 'colors' (#{ds})"
    assert named.name == f"lora on 'colors' (#{ds}) → 'mine'"
    assert loss.name == f"eval adapter 'red' (#{red}) on 'colors' (#{ds}): loss"
    assert match.name == f"eval adapter 'red' (#{red}) vs adapter 'blue' (#{blue}) on 'colors' (#{ds}): exact_match"
    assert merge.name == f"merge ties of #{red}, #{blue} at rank 2"
    assert check.name == "system check, 5 steps"
    # The id is beside the name in the queue, the picker and the page.
    queue = tab_jobs.queue_html(services)
    choices = dict((label, job_id) for label, job_id in tab_jobs.job_choices(services))
    for job in (train, named, loss, match, merge, check):
        assert f"<td>#{job.id}</td>" in queue
        assert choices[f"#{job.id} {job.name} — queued"] == job.id
        assert tab_jobs.job_detail(services, job.id)["detail"].startswith(f"**#{job.id} ")
    # A retry keeps the name; its own id tells it apart.
    services.jobs.cancel(check.id)
    again = services.jobs.retry(check.id)
    assert again.name == check.name and again.id != check.id


# Per-kind pages -----------------------------------------------------------------------------------


def test_evaluation_page_shows_scores_and_answers_never_a_loss_chart(services, world):
    red = world["adapters"][0]
    request = EvalRequest(
        adapter_id=red, dataset_id=world["dataset"], metrics=["loss", "exact_match"], max_new_tokens=4
    )
    job = submit(services, request)
    queued = tab_jobs.job_detail(services, job.id)
    assert value(queued["chart"]) is None and queued["chart"]["visible"] is False  # nothing to chart yet

    assert execute_job(job.id, services.registry, services.settings, WORKER) == "succeeded"
    out = tab_jobs.job_detail(services, job.id)
    detail, result = out["detail"], services.jobs.get(job.id).result
    assert f"Evaluates adapter 'red' (#{red}) on dataset 'colors'" in detail
    assert "**Scores** on 6 rows" in detail and "| eval_loss |" in detail and "| exact_match |" in detail
    assert f"{result['metrics']['eval_loss']:.4g}" in detail
    assert "**Sample answers** (the first 3 of" in detail and "what color is thing 0?" in detail
    assert result["samples"][0]["prediction"][:20].strip() in detail
    assert "is ready" not in detail and "Adapter #" not in detail  # an evaluation makes no adapter
    chart = value(out["chart"])
    assert out["chart"]["label"] == "Scores" and {trace.type for trace in chart.data} == {"bar"}
    batches = services.jobs.get(job.id).total_steps
    assert f"done: all {batches} batches" in detail
    assert f"{batches}/{batches} batches" in tab_jobs.queue_html(services)


def test_merge_page_names_parents_and_explains_its_error_without_step_counts(services, world):
    red, blue = world["adapters"]
    job = submit(services, MergeRequest(adapter_ids=[red, blue], method="ties", rank=1, density=0.5))
    assert execute_job(job.id, services.registry, services.settings, WORKER) == "succeeded"
    result = services.jobs.get(job.id).result
    out = tab_jobs.job_detail(services, job.id)
    detail = out["detail"]
    assert f"Merges adapter 'red' (#{red}) × 1, adapter 'blue' (#{blue}) × 1; method `ties`, density 0.5, rank 1." in (
        detail
    )
    made = services.adapters.get(result["adapter_id"])
    assert f"Adapter #{made.id} '{made.name}': {result['modules']} modules, ranks 1–1" in detail
    assert merge_error_sentence(result["merge_max_error"], 1) in detail
    assert "1000" not in detail and "step" not in detail  # a merge's progress is a share, not steps
    assert out["chart"]["visible"] is False
    row = next(r for r in tab_jobs.queue_html(services).split("<tr")[1:] if f"data-job='{job.id}'" in r)
    assert "1000" not in row


@pytest.mark.parametrize(
    ("error", "verdict", "words"),
    [
        (0.0, "exact", "Exact: the saved LoRA reproduces the exact merge to within 0e+00"),
        (0.05, "close", "within 5%"),
        (0.2, "approximate", "the rank cut drops 4% of the change. Evaluate it against its parents"),
        (0.5, "rank too low", "Rank too low: the saved LoRA reproduces the exact merge to within 50%"),
    ],
)
def test_merge_error_is_said_in_words_with_what_to_do(error, verdict, words):
    assert merge_error_verdict(error) == verdict
    sentence = merge_error_sentence(error, rank=4)
    assert words in sentence
    assert ("raise the rank (now 4" in sentence.lower()) is (verdict in ("approximate", "rank too low"))


def test_training_page_shows_progress_curves_and_the_adapter(services, world, registry):
    job = submit(services, TrainRequest(dataset_id=world["dataset"], base_model=world["base"], name="sky"))
    registry.claim_job(job.id, "w1", "cpu", {})
    registry.update_job_progress(job.id, step=10, total_steps=30, progress=1 / 3, eta_seconds=40.0, message="training")
    for step in (5, 10):
        registry.add_metrics(job.id, step, {"loss": 3.0 / step})
    running = tab_jobs.job_detail(services, job.id)
    assert "step 10 of 30 (33%), about 40 s left — training" in running["detail"]
    assert "<td>10/30</td>" in tab_jobs.queue_html(services)
    [curve] = value(running["chart"]).data
    assert list(curve.x) == [5, 10] and running["chart"]["label"] == "Loss"

    adapter = registry.add_adapter(name="sky", variant="lora", base_model=world["base"], path="/x", sha256="0")
    registry.update_job_progress(job.id, step=30, total_steps=30, progress=1.0, eta_seconds=None)
    registry.finish_job(job.id, "succeeded", result={"adapter_id": adapter.id, "final_loss": 0.25, "steps": 30})
    done = tab_jobs.job_detail(services, job.id)["detail"]
    assert f"Adapter #{adapter.id} 'sky' is ready in the Adapters and Playground tabs." in done
    assert "final training loss 0.25 after 30 steps" in done and "done: all 30 steps" in done


def test_a_cancelled_job_shows_the_step_it_stopped_at(services, registry):
    job = submit(services, CheckRequest(steps=400, step_seconds=0.02))
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.setdefault("s", execute_job(job.id, registry, services.settings, WORKER))
    )
    runner.start()
    deadline = time.monotonic() + 30
    while registry.get_job(job.id).step < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    tab_jobs.cancel_job(services, job.id)
    runner.join(30)
    assert outcome["s"] == "cancelled"
    row = services.jobs.get(job.id)
    last = max(m.step for m in registry.metrics(job.id, ["loss"]))  # the last step the job finished
    assert row.step == last < 400 and row.progress == pytest.approx(last / 400)
    detail = tab_jobs.job_detail(services, job.id)["detail"]
    assert f"stopped at step {last} of 400 ({last / 400:.0%})" in detail
    queue = tab_jobs.queue_html(services)
    assert f"stopped at {last}/400" in queue and "width:100%" not in queue
    never_ran = submit(services, CheckRequest(steps=3))
    services.jobs.cancel(never_ran.id)
    assert "stopped before it started" in tab_jobs.job_detail(services, never_ran.id)["detail"]


# Times --------------------------------------------------------------------------------------------


def test_relative_times_move_on_with_each_render(services):
    job = submit(services, CheckRequest(steps=3))
    created = job.created_at.replace(tzinfo=UTC) if job.created_at.tzinfo is None else job.created_at
    soon = job_pages.detail_markdown(services, job, now=created + timedelta(seconds=8))
    later = job_pages.detail_markdown(services, job, now=created + timedelta(minutes=5))
    for now, text, ago in ((created + timedelta(seconds=8), soon, "8 s"), (created + timedelta(minutes=5), later, "5 min")):
        # A render just after midnight names the creation day too, so the expectation follows the clock.
        day = "" if now.date() == created.date() else f"{created:%Y-%m-%d} "
        assert f"created {day}{created:%H:%M:%S} UTC ({ago} ago)" in text
    tomorrow = job_pages.when(created, now=created + timedelta(days=1))
    assert tomorrow.startswith(f"{created:%Y-%m-%d %H:%M:%S} UTC") and tomorrow.endswith("ago)")
    assert datetime.now(UTC) - created < timedelta(minutes=1)


def test_a_time_from_yesterday_names_its_day_and_one_from_today_does_not():
    late = datetime(2026, 12, 6, 23, 56, 29, tzinfo=UTC)
    assert job_pages.when(late, now=late + timedelta(minutes=2)) == "23:56:29 UTC (2 min ago)"
    assert job_pages.when(late, now=late + timedelta(minutes=5)) == "2026-12-06 23:56:29 UTC (5 min ago)"
