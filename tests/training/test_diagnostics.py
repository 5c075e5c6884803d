"""Per-module diagnostics (spec "Plot" lines) are logged for fixed-rank variants too, and charted."""

from __future__ import annotations

import pytest

from studio.charts_diagnostics import diagnostic_series, diagnostics_figure
from studio.progress import MemoryReporter
from studio.variants import get_variant


@pytest.mark.parametrize(
    ("variant", "key"),
    [("ffa_lora", "b_norm"), ("allora", "b_norm"), ("lora_xs", "core_drift"), ("nlora", "core_drift")],
)
def test_fixed_rank_variants_log_their_diagnostics_every_log_step(train_tiny, variant, key):
    reporter = MemoryReporter()
    train_tiny(variant, reporter=reporter, max_steps=3, log_every=1)
    steps = sorted({step for step, _, _ in reporter.rank_extras})
    assert steps == [0, 1, 2, 3]
    values = {step: extra[key] for step, module, extra in reporter.rank_extras if module.endswith("q_proj")}
    assert values[3] != values[0]  # training moved what the chart shows
    fixed = {module: rank for step, module, rank in reporter.rank_rows if step == 3}
    assert fixed == {module: rank for step, module, rank in reporter.rank_rows if step == 0}  # ranks stay put

    rows = [{"step": s, "module": m, "extra": e} for s, m, e in reporter.rank_extras]
    series = diagnostic_series(rows)
    assert [p[0] for p in series[key]["q_proj"]] == [0, 1, 2, 3]
    layer_values = [e[key] for s, m, e in reporter.rank_extras if s == 3 and m.endswith("q_proj")]
    assert series[key]["q_proj"][-1][1] == pytest.approx(sum(layer_values) / len(layer_values))
    assert any(trace.name == "q_proj" for trace in diagnostics_figure(rows).data)


def test_plain_lora_logs_no_snapshots(train_tiny):
    reporter = MemoryReporter()
    train_tiny("lora", reporter=reporter, max_steps=2)
    assert reporter.rank_rows == [] and not get_variant("lora").records_snapshots()
    assert not diagnostics_figure([]).data
