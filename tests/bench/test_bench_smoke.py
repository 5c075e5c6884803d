"""Smoke tests of the benchmarks and experiment scripts: each core function runs on a tiny random model.

1-2 training steps each, no timing asserted: these only prove the code paths work
(bench/studio_overhead.py, bench/variant_throughput.py, scripts/real_data_lora.py,
scripts/compare_variants.py and bench/common.py). The full-size runs are documented in
docs/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
from conftest_training import chat_rows, make_llama_dir, write_jsonl

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return make_llama_dir(tmp_path_factory.mktemp("bench-tiny-llama"))


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", chat_rows(12))


@pytest.fixture
def studio_env(tmp_path, monkeypatch):
    """Let the benches set STUDIO_* variables; monkeypatch restores them afterwards."""
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "STUDIO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_common_windows_and_tables():
    from bench.common import markdown_table, summarise_windows, text_table, windows_from_metrics

    rows = [(1, "tokens_per_s", 10.0), (1, "loss", 2.0), (3, "tokens_per_s", 20.0)]
    windows = windows_from_metrics(rows, [10, 20, 20])
    assert [w["tokens"] for w in windows] == [10, 40]
    assert [w["seconds"] for w in windows] == [1.0, 2.0]
    summary = summarise_windows(windows)
    assert summary["tokens_per_s"] == pytest.approx(50 / 3)
    assert summary["steady_tokens_per_s"] == pytest.approx(20.0)
    assert "| a | b |" in markdown_table(["a", "b"], [[1, 2.5]])
    assert "a" in text_table(["a", "b"], [[1, None]])


def test_bare_loop_does_the_studio_s_work(tiny_dir, chat_file):
    """The bare PEFT loop of studio_overhead, given the studio's decisions, gives the studio's losses."""
    from bench.common import worker_device
    from bench.studio_overhead import bare_train, make_request, studio_decisions
    from studio.progress import MemoryReporter
    from studio.training.loop import run_training
    from studio.training.setup import TrainingData

    args = argparse.Namespace(seed=3, steps=2, batch_size=4, max_length=64, log_every=1)
    request = make_request(1, "tiny", args)
    studio = run_training(
        request,
        MemoryReporter(),
        settings=None,
        device=worker_device(),
        work_dir=chat_file.parent / "work",
        dataset=TrainingData(path=chat_file),
        base_path=tiny_dir,
    )
    describe = getattr(studio, "training_setup", None)
    decisions = studio_decisions(describe(request.hyper) if describe else None, request)
    bare = bare_train(request, chat_file, tiny_dir, decisions)
    assert len(bare["windows"]) == 2 and bare["peak_rss_mb"] > 0
    # bf16 autocast (on CPUs with native bf16) and a fused vs plain loss differ in rounding only.
    assert [studio.losses[k] for k in sorted(studio.losses)] == pytest.approx(bare["losses"], rel=2e-2)


@pytest.mark.slow
@pytest.mark.integration
def test_studio_overhead_measure_through_a_worker(tiny_dir, chat_file, studio_env, tmp_path):
    """The whole studio side: registry, embedded broker, a real worker subprocess, metrics read back."""
    from bench.studio_overhead import measure

    args = argparse.Namespace(
        rows=12, steps=2, batch_size=4, max_length=64, log_every=1, seed=1, repeats=1, timeout=300
    )
    result = measure(rows_path=chat_file, base_model=str(tiny_dir), data_dir=studio_env, args=args)
    summary = result["summary"]
    assert summary["ratio_tokens_per_s"] > 0
    assert summary["studio_worker_peak_rss_mb"] > 0
    assert summary["max_window_loss_difference"] < 0.05
    json.dumps(result, default=str)


def test_variant_throughput_measure_and_report(tiny_dir, chat_file, tmp_path):
    from bench import variant_throughput as vt

    runs = [
        vt.measure_variant(name, data_path=chat_file, base_path=tiny_dir, steps=2, batch_size=4, max_length=64)
        for name in ("lora", "dylora", "lora")
    ]
    assert all(r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["build_s"] >= 0 for r in runs)
    assert runs[1]["hooks"]  # DyLoRA draws a rank every step
    table = vt.summarise(runs)
    assert [t["variant"] for t in table] == ["lora", "dylora"]
    assert table[0]["ratio_tokens_per_s"] == pytest.approx(1.0)
    result = {
        "config": {"base_model": "tiny", "rows": 12, "steps": 2, "batch_size": 4, "max_length": 64, "seed": 42},
        "table": table,
        "runs": runs,
        "loadavg_start": [0.0],
        "command": "test",
        "machine": {"cpu": "cpu", "cores": 1, "torch_threads": 1, "versions": {"torch": "x"}, "loadavg_1_5_15": []},
    }
    vt.write_markdown(tmp_path / "vt.md", result)
    assert "`dylora`" in (tmp_path / "vt.md").read_text()


def test_real_data_lora_run(tiny_dir, tmp_path):
    from scripts import real_data_lora as rd

    rows = chat_rows(12)
    prompts = [[rows[0]["messages"][0]]]
    res = rd.run(
        base_path=tiny_dir,
        train_rows=rows,
        val_rows=rows[:4],
        prompts=prompts,
        steps=2,
        batch_size=4,
        max_length=64,
        eval_every=1,
        learning_rate=1e-2,
        max_new_tokens=4,
        base_model="tiny",
        echo=False,
    )
    assert [c["step"] for c in res["curve"]] == [0, 1, 2]
    assert len(res["samples_before"]) == len(res["samples_after"]) == 1
    cfg = {
        "base_model": "tiny",
        "max_chars": 600,
        "val_rows": 4,
        "eval_every": 1,
        "prompt_rows": rows[:1],
        "loadavg_start": [0.0],
        "command": "test",
    }
    machine = {
        "cpu": "cpu",
        "cores": 1,
        "loadavg_1_5_15": [],
        "versions": {"torch": "x", "transformers": "y", "peft": "z"},
    }
    rd.write_markdown(tmp_path / "rd.md", res, cfg, machine)
    assert "Validation loss" in (tmp_path / "rd.md").read_text()


def test_compare_variants_through_the_registry(tiny_dir, chat_file, studio_env, tmp_path):
    from scripts import compare_variants as cv

    result = cv.compare(
        data_dir=studio_env,
        variants=["lora", "dylora", "ffa_lora"],
        seeds=[1],
        steps=2,
        batch_size=4,
        max_length=64,
        learning_rate=1e-2,
        train_rows=12,
        max_chars=None,
        validation_fraction=0.25,
        eval_every=1,
        eval_rows=4,
        rank_checks=[1, 2],
        base_model=str(tiny_dir),
        train_file=chat_file,
        test_file=chat_file,
        echo=False,
    )
    runs = result["runs"]
    assert [r["status"] for r in runs] == ["succeeded"] * 3, [r.get("error") for r in runs]
    assert all("eval_loss" in r["test"] for r in runs)
    assert set(runs[1]["rank_curve"]) == {1, 2}
    analysis = cv.analyse(runs, [1, 2])
    assert {"dylora", "ffa_lora"} <= set(analysis["claims"])
    out = {
        "config": {
            "base_model": "tiny",
            "variants": ["lora", "dylora", "ffa_lora"],
            "not_run": [],
            "sst2_variants": [],
            "seeds": [1],
            "steps": 2,
            "batch_size": 4,
            "max_length": 64,
            "learning_rate": 1e-2,
            "train_rows": 12,
            "max_chars": None,
            "validation_fraction": 0.25,
            "eval_every": 1,
            "eval_rows": 4,
        },
        "analysis": analysis,
        "runs": runs,
        "registry": result["registry"],
        "machine": {"cpu": "cpu", "cores": 1, "loadavg_1_5_15": []},
        "loadavg_start": [0.0],
        "total_s": 1.0,
        "command": "test",
    }
    cv.write_markdown(tmp_path / "cv.md", out)
    assert "FFA-LoRA" in (tmp_path / "cv.md").read_text()
    # The convergence overlay beside it (studio.comparison, shared with comparison sweeps): a line per variant.
    svg = (tmp_path / cv.OVERLAY_SVG).read_text()
    assert f"]({cv.OVERLAY_SVG})" in (tmp_path / "cv.md").read_text()
    assert sorted(svg.split('data-variant="')[i].split('"')[0] for i in (1, 2, 3)) == ["dylora", "ffa_lora", "lora"]


def test_loraprune_pruned_bench_runs_on_a_tiny_model(tmp_path, monkeypatch):
    from bench import loraprune_pruned

    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    out = tmp_path / "lp.json"
    result = loraprune_pruned.main(
        ["--layers", "3", "--vocab", "64", "--batch", "1", "--seq", "8", "--repeats", "1", "--out", str(out)]
    )
    saved = json.loads(out.read_text())
    assert saved["params"]["pruned"] < saved["params"]["dense"] == saved["params"]["masked"]
    assert saved["widths"]["num_key_value_heads"] == [2, 2, 3]  # ⌊0.5·3⌋ groups off; the last layer stays whole
    assert result["max_abs_logit_diff_pruned_vs_masked"] < 1e-4


def test_registry_scale_loads_and_times_both_tabs(tmp_path, studio_env):
    """bench/registry_scale.py on a few hundred rows: loads every table and times every view (no timing asserted)."""
    from bench.registry_scale import main

    out = tmp_path / "registry_scale.md"
    argv = ["--adapters", "300", "--jobs", "200", "--metrics", "20000", "--long-jobs", "2", "--repeats", "1"]
    assert main([*argv, "--database", f"sqlite:///{tmp_path / 'scale.db'}", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## sqlite: 300 adapters, 200 jobs" in text
    # Five Adapters views (first page, page 1000, filtered + sorted, a narrow and a broad search), three Jobs views.
    assert text.count("| adapters |") == 5 and text.count("| jobs |") == 3
    # A non-empty database is refused rather than mixed with generated rows.
    assert main([*argv, "--database", f"sqlite:///{tmp_path / 'scale.db'}", "--out", str(out)]) == 2
