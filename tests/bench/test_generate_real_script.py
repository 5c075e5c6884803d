"""scripts/generate_real.py: its tasks (Alpaca kinds included), options and page, on in-repo samples (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import generate_real as gr  # noqa: E402

from bench import common  # noqa: E402

SAMPLES = REPO_ROOT / "data" / "samples"


@pytest.fixture(autouse=True)
def _samples(monkeypatch):
    monkeypatch.setattr(common, "SHARED_DATA", SAMPLES)


def _instruction(prompt: str) -> str:
    return prompt.split("\n\n", 1)[0]


@pytest.mark.parametrize("kind", gr.ALPACA_KINDS)
def test_an_alpaca_kind_holds_only_its_instructions_and_held_out_rows_are_disjoint(kind):
    built = gr.build_task(f"alpaca-{kind}", 40, 20)
    assert len(built["train"]) == 40 and len(built["eval"]) == 20
    for row in built["train"] + built["eval"]:
        assert common.instruction_category(_instruction(row["prompt"])) == kind
        assert len(row["prompt"]) + len(row["completion"]) <= gr.MAX_CHARS
    assert not {r["prompt"] for r in built["train"]} & {r["prompt"] for r in built["eval"]}
    # held-out rows come from alpaca/test.jsonl first, in file order
    test_rows = gr.source_rows(f"alpaca-{kind}", "held-out")
    assert built["eval"][: min(20, len(test_rows))] == test_rows[:20]


def test_a_kind_with_few_test_rows_is_topped_up_with_training_rows_after_those_trained_on():
    test_rows = gr.source_rows("alpaca-explain", "held-out")
    assert len(test_rows) < 30  # the sample's test split has ~16 explain rows
    built = gr.build_task("alpaca-explain", 10, 30)
    train_all = gr.source_rows("alpaca-explain", "train")
    assert built["train"] == train_all[:10]
    assert built["eval"] == test_rows + train_all[10 : 10 + 30 - len(test_rows)]


def test_the_input_follows_the_instruction_after_a_blank_line():
    assert gr._alpaca_prompt({"instruction": " Sort these. ", "input": "3, 1, 2"}) == "Sort these.\n\n3, 1, 2"
    assert gr._alpaca_prompt({"instruction": "Name a colour.", "input": ""}) == "Name a colour."


def test_sst2_is_instruction_rows_with_the_label_word_and_no_label_column():
    built = gr.build_task("sst2", 12, 6)
    raw = common.read_jsonl(SAMPLES / "sst2" / "dev.jsonl")
    assert built["eval"][0]["completion"] == gr.SST2_WORDS[int(raw[0]["label"])]
    for row in built["train"] + built["eval"]:
        assert set(row) == {"prompt", "completion"}  # a label column would make it a classification set
        assert row["completion"] in {"positive", "negative"} and row["prompt"].startswith("Is the sentiment")


def test_gsm8k_and_e2e_read_their_held_out_splits():
    gsm = gr.build_task("gsm8k", 5, 5)
    first_test = next(
        r for r in common.read_jsonl(SAMPLES / "gsm8k" / "test.jsonl") if len(r["question"]) + len(r["answer"]) <= 500
    )
    assert gsm["eval"][0] == {"prompt": first_test["question"], "completion": first_test["answer"]}
    e2e = gr.build_task("e2e_nlg", 5, 5)
    dev = common.read_jsonl(SAMPLES / "e2e_nlg" / "dev.jsonl")
    assert e2e["eval"][0] == {"prompt": gr.E2E_PROMPT.format(mr=dev[0]["mr"]), "completion": dev[0]["ref"]}


def test_an_unknown_task_is_refused():
    with pytest.raises(SystemExit, match="unknown task"):
        gr.source_rows("poetry", "train")


def test_options_quick_held_out_and_the_adapter_cache_key():
    args = gr.parse_args(["--quick"])
    assert args.held_out == "gsm8k" and gr.held_out_tasks(args) == ["gsm8k"]
    assert gr.held_out_tasks(gr.parse_args([])) == list(gr.TASKS)
    with pytest.raises(SystemExit, match="not among"):
        gr.held_out_tasks(gr.parse_args(["--held-out", "oasst_chat"]))
    with pytest.raises(SystemExit):
        gr.parse_args(["--tasks", "gsm8k,sst2"])  # a generator needs two tasks besides the left-out one
    with pytest.raises(SystemExit):
        gr.parse_args(["--tasks", "gsm8k,sst2,poetry"])
    base = gr.parse_args([])
    # the generator's settings do not touch the task adapters: they stay cached across them
    assert gr.training_key("sst2", base) == gr.training_key("sst2", gr.parse_args(["--epochs", "7"]))
    assert gr.training_key("sst2", base) != gr.training_key("sst2", gr.parse_args(["--steps", "7"]))
    assert gr.training_key("sst2", base) != gr.training_key("gsm8k", base)
    assert gr.lora_params(base) == {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    assert gr.hyper(base)["keep_checkpoints"] == 8


def _result(bare: float, generated: float, trained: float, nearest: float | None = None) -> dict:
    gen = {
        "id": 9, "tasks": [], "parameters": 40_000, "checkpoints": 48, "vs_one_adapter": 0.35, "vs_checkpoints": 0.0073,
        "bytes_vs_checkpoints": 0.0075, "final_loss": 0.1, "final_mse": 0.05, "seconds": 120.0,
    }  # fmt: skip
    return {
        "bare": {"loss": bare, "eval_seconds": 5.0},
        "generated": {"loss": generated, "reference_task": "sst2", "generator": gen, "eval_seconds": 5.0},
        "trained": {"loss": trained, "eval_seconds": 5.0},
        "nearest": {"loss": bare if nearest is None else nearest, "task": "sst2", "eval_seconds": 5.0},
    }


def _record(results: dict) -> dict:
    args = gr.parse_args(["--tasks", "gsm8k,sst2,e2e_nlg", "--held-out", "gsm8k,e2e_nlg"])
    setup = {
        "tasks": ["gsm8k", "sst2", "e2e_nlg"],
        "rows": {t: {"train": 64, "eval": 24, "examples": 30} for t in ("gsm8k", "sst2", "e2e_nlg")},
        "adapters": {"gsm8k": {"final_loss": 1.2, "checkpoints": 8, "seconds": 90.0}},
        "network": {"D": 115_200, "cond_dim": 576, "presets": {"paper": 1_000_000, "small": 60_000, "tiny": 2_000_000}},
    }
    return {
        "config": gr.config_of(args), "setup": setup, "results": results, "held_out": ["gsm8k", "e2e_nlg"],
        "elapsed_s": 600.0, "machine": {"cores": 2}, "command": "python scripts/generate_real.py",
    }  # fmt: skip


def test_gap_closed_and_verdict():
    assert gr.gap_closed(_result(2.0, 1.5, 1.0)) == pytest.approx(0.5)
    assert gr.gap_closed(_result(2.0, 2.5, 1.0)) == pytest.approx(-0.5)
    assert gr.gap_closed(_result(2.0, 1.5, 2.0)) is None
    assert gr.gap_closed({"bare": {"loss": 2.0}}) is None
    assert gr.gap_closed(_result(2.0, 1.5, 1.0, nearest=1.75), "nearest") == pytest.approx(0.25)
    lines = gr.verdict({"a": _result(2.0, 1.5, 1.0, nearest=1.75), "b": _result(2.0, 2.5, 1.0, nearest=1.25)})
    assert "1 of 2" in lines[0] and "(a)" in lines[0]
    assert "0%" in lines[1]  # mean of +50 % and -50 %
    # against reusing the nearest task's adapter: a wins (1.5 < 1.75), b loses (2.5 > 1.25); it closes 25 % and 75 %
    assert "nearest task's trained adapter: 1 of 2** (a)" in lines[2] and "closes 50% of the gap" in lines[2]


def test_the_page_of_a_full_and_of_a_partial_run():
    full = gr.render(_record({"gsm8k": _result(2.0, 1.5, 1.0), "e2e_nlg": _result(3.0, 2.0, 1.0)}))
    assert "Partial" not in full and "Not yet run" not in full
    assert "| gsm8k | 2.000 | 1.500 | 1.000 | 50% | 2.000 (0%) |  | sst2 | 2.0 |" in full  # no norms recorded
    assert "| e2e_nlg | 3.000 | 2.000 | 1.000 | 50% |" in full
    assert "2 of 2" in full and "40,000" in full and "0.7%" in full  # the generator against its checkpoints
    assert "D = 115,200" in full and "`small` 60,000" in full
    partial = gr.render(_record({"gsm8k": _result(2.0, 1.5, 1.0)}))
    assert "**Partial run**: not yet scored for the left-out task(s) e2e_nlg" in partial
    assert "| e2e_nlg | not run | not run | not run |  | not run |" in partial


def test_render_only_without_results_writes_a_not_yet_run_page(tmp_path):
    doc = tmp_path / "generation.md"
    assert gr.main(["--render-only", "--out", str(tmp_path / "none.json"), "--doc", str(doc)]) == 0
    page = doc.read_text()
    assert "**Not yet run.**" in page and "`python scripts/generate_real.py --data /work/shared/data`" in page
    out = tmp_path / "run.json"
    out.write_text(json.dumps(_record({"gsm8k": _result(2.0, 1.5, 1.0)})))
    assert gr.main(["--render-only", "--out", str(out), "--doc", str(doc)]) == 0
    assert "| gsm8k | 2.000 | 1.500 | 1.000 |" in doc.read_text()


def test_update_norm_is_the_norm_of_every_b_times_a(tmp_path):
    import torch
    from safetensors.torch import save_file

    a1, b1 = torch.randn(2, 6), torch.randn(5, 2)
    a2, b2 = torch.randn(2, 4), torch.randn(3, 2)
    save_file(
        {
            "m.q.lora_A.weight": a1, "m.q.lora_B.weight": b1,
            "m.v.lora_A.weight": a2, "m.v.lora_B.weight": b2,
        },
        str(tmp_path / "adapter_model.safetensors"),
    )  # fmt: skip
    expected = ((b1 @ a1).norm() ** 2 + (b2 @ a2).norm() ** 2) ** 0.5
    assert gr.update_norm(tmp_path) == pytest.approx(float(expected), rel=1e-6)


def test_other_generator_settings_are_shown_from_their_json(tmp_path):
    result = _result(2.0, 1.9, 1.0, nearest=1.5)
    result["generated"]["update_norm"] = 0.25
    extra = _record({"gsm8k": result})
    extra["config"].update(epochs="300", gen_lr="0.001")
    extra["setup"]["adapters"]["gsm8k"]["update_norm"] = 1.0
    path = tmp_path / "strong.json"
    path.write_text(json.dumps(extra))
    lines = gr.extra_section([str(path), str(tmp_path / "missing.json")])
    table = "\n".join(lines)
    assert "## Other generator settings" in table
    assert (
        "| gsm8k | small, 300 epochs, lr 0.001 | 0.05 | 2.0 | 2.000 | 1.900 | 1.500 | 1.000 | 10% | 0.25 | `strong.json` |"
        in table
    )
    assert gr.extra_section([str(tmp_path / "missing.json")]) == []
    page = gr.render({**_record({"gsm8k": result}), "extra": [str(path)]})
    assert "## Other generator settings" in page and "| 0.25 |" in page


def test_the_verdict_reports_how_far_generated_adapters_move_the_base():
    a, b = _result(2.0, 1.9, 1.0), _result(2.0, 1.8, 1.0)
    a["generated"]["update_norm"], b["generated"]["update_norm"] = 0.1, 0.6
    adapters = {"a": {"update_norm": 1.0}, "b": {"update_norm": 2.0}}
    lines = gr.verdict({"a": a, "b": b}, adapters)
    assert "‖ΔW‖ 0.10–0.30 of the left-out task's trained adapter's" in lines[2]
    assert not any("‖ΔW‖" in line for line in gr.verdict({"a": a, "b": b}))  # no norms recorded: no sentence
