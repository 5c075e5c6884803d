"""The training loop: metrics, schedule, gradient accumulation, validation, cancellation, seeds."""

from __future__ import annotations

import pytest

from studio.errors import JobCancelled
from studio.progress import MemoryReporter
from studio.variants.base import lr_lambda


def test_reports_metrics_progress_and_final_eval(train_tiny):
    reporter = MemoryReporter()
    result = train_tiny("lora", reporter=reporter, max_steps=4, log_every=2, validation_fraction=0.25, eval_every=2)
    names = {name for _, name, _ in reporter.metric_rows}
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "elapsed_s", "eval_loss"} <= names
    assert [step for step, _ in reporter.series("loss")] == [2, 4]
    assert [step for step, _ in reporter.series("eval_loss")] == [2, 4]  # every 2 steps, and at the end
    assert [s for s, total, _ in reporter.steps] == [1, 2, 3, 4] and all(t == 4 for _, t, _ in reporter.steps)
    assert result.eval_loss == reporter.series("eval_loss")[-1][1] and result.eval_accuracy is None
    assert result.final_loss == result.losses[4] and result.trainable_params > 0


def test_learning_rate_schedules():
    linear, cosine, constant = (lr_lambda(10, 2, kind) for kind in ("linear", "cosine", "constant"))
    assert [round(linear(k), 3) for k in (0, 1, 2, 6, 10)] == [0.333, 0.667, 1.0, 0.5, 0.0]
    assert cosine(2) == 1.0 and cosine(6) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    assert constant(0) == pytest.approx(1 / 3) and constant(9) == 1.0


def test_warmup_and_decay_are_reported(train_tiny):
    reporter = MemoryReporter()
    train_tiny("lora", reporter=reporter, max_steps=5, warmup_ratio=0.4, learning_rate=1e-2)
    lrs = [value for _, value in reporter.series("learning_rate")]
    assert lrs[0] < lrs[1] and lrs[1] == pytest.approx(1e-2) and lrs[-1] == pytest.approx(0.0)


def test_gradient_accumulation_equals_one_big_batch(train_tiny):
    # Same examples per optimizer step; the loss is normalised by the step's target tokens.
    params = {"lora_dropout": 0.0}
    big = train_tiny("lora", params, work="big", max_steps=3, batch_size=4, grad_accum=1)
    small = train_tiny("lora", params, work="small", max_steps=3, batch_size=2, grad_accum=2)
    for step in (1, 2, 3):
        assert small.losses[step] == pytest.approx(big.losses[step], abs=1e-5)


def test_same_seed_same_curve_other_seed_other_curve(train_tiny):
    first = train_tiny("lora", work="a", max_steps=3, seed=1)
    again = train_tiny("lora", work="b", max_steps=3, seed=1)
    other = train_tiny("lora", work="c", max_steps=3, seed=2)
    assert first.losses == again.losses
    assert first.losses != other.losses


def test_runs_on_threads_at_once_start_from_the_same_weights(train_tiny, monkeypatch):
    # A sweep's --inline trials train on threads of one process, which share torch's one CPU RNG. Each build
    # is slowed so that the two runs' seeded initialisations would interleave if nothing kept them apart.
    import threading
    import time

    from studio.training import loop

    real = loop.create_variant

    def slow_variant(*args, **kwargs):
        variant = real(*args, **kwargs)
        build = variant.build

        def slow_build(ctx):
            time.sleep(0.2)
            return build(ctx)

        variant.build = slow_build
        return variant

    monkeypatch.setattr(loop, "create_variant", slow_variant)
    results: dict[str, object] = {}

    def run(work: str) -> None:
        results[work] = train_tiny("lora", {"lora_dropout": 0.0}, work=work, max_steps=3, seed=3)

    threads = [threading.Thread(target=run, args=(work,)) for work in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["a"].losses == results["b"].losses


class CancelAfter(MemoryReporter):
    def __init__(self, step: int):
        super().__init__()
        self.after = step

    def progress(self, step, total=None, message=None):
        super().progress(step, total, message)
        if step == self.after:
            self.cancel_event.set()


def test_cancel_saves_a_checkpoint_then_resume_finishes(train_tiny, tmp_path):
    reporter = CancelAfter(2)
    with pytest.raises(JobCancelled):
        train_tiny("lora", reporter=reporter, work="job", max_steps=5)
    assert [step for _, step in reporter.checkpoints] == [2]
    path = reporter.checkpoints[0][0]
    files = {p.name for p in (tmp_path / "job" / "checkpoints" / "step-000002").iterdir()}
    assert {"trainable.safetensors", "trainer_state.pt", "checkpoint.json", "extra.json"} <= files
    resumed = train_tiny("lora", work="job", resume=path, max_steps=5)
    assert sorted(resumed.losses) == [3, 4, 5]


def test_periodic_checkpoints_keep_the_last_two(train_tiny, tmp_path):
    reporter = MemoryReporter()
    train_tiny("lora", reporter=reporter, work="ck", max_steps=7, save_every=2)
    assert [step for _, step in reporter.checkpoints] == [2, 4, 6]
    kept = sorted(p.name for p in (tmp_path / "ck" / "checkpoints").iterdir())
    assert kept == ["step-000004", "step-000006"]


def test_resume_refuses_a_checkpoint_of_another_variant(train_tiny):
    from studio.errors import StudioError

    reporter = MemoryReporter()
    train_tiny("lora", reporter=reporter, work="x", max_steps=3, save_every=2)
    with pytest.raises(StudioError, match="different run"):
        train_tiny("rslora", work="y", resume=reporter.checkpoints[0][0], max_steps=3)


def test_rank_allocation_is_reported_for_rank_changing_variants(train_tiny):
    reporter = MemoryReporter()
    params = {"init_r": 4, "target_r": 2, "delta_t": 1, "tinit_ratio": 0.0, "tfinal_ratio": 0.25}
    train_tiny("adalora", params, reporter=reporter, max_steps=8, log_every=4)
    steps = sorted({step for step, _, _ in reporter.rank_rows})
    assert steps == [0, 4, 8]
    start = [rank for step, _, rank in reporter.rank_rows if step == 0]
    end = [rank for step, _, rank in reporter.rank_rows if step == 8]
    assert set(start) == {4} and sum(end) == 2 * len(end)  # budget reached: average rank = target_r
