"""scripts/transfer_real.py: its row building and its page, on in-repo samples and a small JSON (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import transfer_real as tr  # noqa: E402

from bench.common import read_jsonl  # noqa: E402

SAMPLES = REPO_ROOT / "data" / "samples"


def _words(question: str, answer: str) -> tuple[int, int]:
    # A stand-in tokenizer: one token per word, plus 10 for the chat template.
    return len(answer.split()), len(question.split()) + len(answer.split()) + 10


def test_short_gsm8k_keeps_the_first_rows_that_fit_in_file_order():
    rows = read_jsonl(SAMPLES / "gsm8k" / "train.jsonl")
    kept = tr.short_gsm8k(rows, 6, _words, max_answer_tokens=40, max_length=80)
    assert len(kept) == 6
    for row in kept:
        answer_tokens, chat_tokens = _words(row["prompt"], row["completion"])
        assert answer_tokens <= 40 and chat_tokens <= 80 and "####" in row["completion"]
    fitting = [
        r for r in rows if _words(r["question"], r["answer"])[0] <= 40 and _words(r["question"], r["answer"])[1] <= 80
    ]
    assert [r["prompt"] for r in kept] == [r["question"] for r in fitting[:6]]
    # held-out rows: only the answer length counts (the eval job does not cut)
    loose = tr.short_gsm8k(rows, 1000, _words, max_answer_tokens=40, max_length=None)
    assert len(loose) >= len(tr.short_gsm8k(rows, 1000, _words, max_answer_tokens=40, max_length=80)) > 6


def test_e2e_rows_are_prompted_attributes_to_one_sentence():
    rows = read_jsonl(SAMPLES / "e2e_nlg" / "train.jsonl")
    made = tr.e2e_rows(rows, 3)
    assert len(made) == 3 and made[0]["prompt"] == tr.E2E_PROMPT.format(mr=rows[0]["mr"])
    assert made[0]["completion"] == rows[0]["ref"]


def _record(arms: dict) -> dict:
    config = {
        "base": "smollm2-135m-instruct", "train_rows": "48", "eval_rows": "30", "steps": "24", "lr": "0.001",
        "max_length": "128", "max_answer_tokens": "64", "samples": "32", "max_attempts": "96", "e2e_rows": "64",
        "e2e_steps": "12", "data": "/data",
    }  # fmt: skip
    setup = {
        "rows": {"gsm8k-train": 48, "gsm8k-test": 30, "e2e-train": 64},
        "source": {"seconds": 300.0, "transfer_kit": {"discriminator_train_accuracy": 0.9, "positives": 48}},
        "target": {"seconds": 60.0},
    }
    return {"config": config, "setup": setup, "arms": arms, "elapsed_s": 1800.0, "machine": {"cores": 2}}


def _arm(loss: float, em: float, **more) -> dict:
    return {"loss": loss, "exact_match": em, "eval_seconds": 30.0, **more}


FULL = {
    tr.SOURCE_BASE_ARM: _arm(1.5, 0.1),
    tr.SOURCE_ARM: _arm(1.0, 0.3, trained=48, seconds=300.0),
    tr.TARGET_ARM: _arm(1.6, 0.1),
    tr.FILTERED_ARM: _arm(1.1, 0.3, generated=40, kept=32, trained=32, seconds=200.0, truncated_answers=2, examples=30),
    tr.UNFILTERED_ARM: _arm(1.2, 0.2, generated=32, kept=32, trained=31, seconds=190.0),
    tr.SEEDS_ARM: _arm(1.4, 0.1, generated=0, kept=5, trained=5, seconds=120.0),
    tr.RETRAIN_ARM: _arm(1.0, 0.35, trained=48, seconds=250.0),
}


def test_gap_closed_is_the_share_of_the_bare_to_retrained_gap():
    assert tr.gap_closed(FULL, tr.FILTERED_ARM) == pytest.approx(5 / 6)
    assert tr.gap_closed(FULL, tr.SEEDS_ARM) == pytest.approx(2 / 6)
    assert tr.gap_closed({tr.TARGET_ARM: FULL[tr.TARGET_ARM]}, tr.FILTERED_ARM) is None


def test_the_page_of_a_full_run_says_whether_the_claim_held(tmp_path):
    page = tr.render(_record(FULL))
    assert "Partial run" not in page and "not run" not in page
    assert "| transferred, discriminator filter | 1.100 | 30% | 2 / 30 | 83% | 40 | 32 | 32 | 3.3 + 0.5 |" in page
    assert "(the paper's ablation), here: held.**" in page and "gap closed), here: yes.**" in page
    assert "One seed" in page
    # the other ordering: unfiltered beats filtered on loss and exact match
    worse = {**FULL, tr.FILTERED_ARM: _arm(1.3, 0.1, generated=90, kept=32, trained=32, seconds=200.0)}
    page = tr.render(_record(worse))
    assert "here: did not hold.**" in page and "gap closed), here: no.**" in page
    assert tr.ablation_holds([1.1, 1.2, 1.3], [0.0, 0.0, 0.0]).startswith("held on loss; exact match did not separate")
    assert tr.ablation_holds([1.1, 1.2, 1.3], [0.1, 0.2, 0.0]) == "held on loss only"
    assert tr.ablation_holds([1.3, 1.2, 1.3], [0.3, 0.2, 0.1]) == "held on exact match only"


def test_a_partial_run_is_marked_and_render_only_rebuilds_the_page(tmp_path):
    partial = {k: v for k, v in FULL.items() if k in (tr.SOURCE_BASE_ARM, tr.SOURCE_ARM, tr.TARGET_ARM)}
    out, doc = tmp_path / "r.json", tmp_path / "r.md"
    out.write_text(json.dumps(_record(partial)))
    assert tr.main(["--render-only", "--out", str(out), "--doc", str(doc)]) == 0
    page = doc.read_text()
    assert page.startswith("# Trans-LoRA on real data")
    assert "**Partial run**" in page and tr.RETRAIN_ARM in page.split("**Partial run**")[1].split("\n")[0]
    assert page.count("not run") == 4 and "paper's ablation" not in page
