"""scripts/personalise_real.py: its data building and arm sizing on the in-repo samples (no model, no training)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import personalise_real  # noqa: E402

from bench import common  # noqa: E402


@pytest.fixture
def pools(monkeypatch):
    monkeypatch.setattr(common, "SHARED_DATA", common.SAMPLES_DIR)  # the in-repo samples, whatever --data was
    return {
        t: (personalise_real.task_pool(t, 1, 360), personalise_real.task_pool(t, 2, 360))
        for t in ("gsm8k", "e2e", "alpaca", "sst2")
    }


def test_mixes_sum_to_one_and_are_seeded():
    mixes = personalise_real.dirichlet_mixes(20, 4, 0.5, seed=0)
    assert len(mixes) == 20 and all(len(m) == 4 and sum(m) == pytest.approx(1.0) for m in mixes)
    assert all(x >= 0 for m in mixes for x in m)
    assert mixes == personalise_real.dirichlet_mixes(20, 4, 0.5, seed=0)
    assert mixes != personalise_real.dirichlet_mixes(20, 4, 0.5, seed=1)


def test_counts_follow_the_mix_and_add_up():
    assert personalise_real.counts_for([0.5, 0.25, 0.25, 0.0], 8) == [4, 2, 2, 0]
    assert sum(personalise_real.counts_for([0.34, 0.33, 0.33], 7)) == 7
    assert personalise_real.counts_for([0.9, 0.1], 4, minimum=1) == [3, 1]


def test_users_are_built_seeded_with_held_out_rows_and_no_shared_rows(pools):
    users = personalise_real.build_users(pools, n_users=8, train_rows=32, eval_rows=6, concentration=0.5, seed=0)
    again = personalise_real.build_users(pools, n_users=8, train_rows=32, eval_rows=6, concentration=0.5, seed=0)
    assert users == again
    assert [u["user"] for u in users] == [f"user{i:02d}" for i in range(8)]
    for u in users:
        assert sum(u["mix"].values()) == pytest.approx(1.0)
        assert len(u["train"]) == 32 and len(u["eval"]) == 6  # every user has held-out rows
        assert all(r["user"] == u["user"] and r["prompt"] and r["completion"] for r in u["train"] + u["eval"])
        # The user's rows follow its mix: the most wanted task has the most training rows.
        top = max(u["mix"], key=u["mix"].get)
        tally = personalise_real._tally(u["train"])
        assert tally.get(top, 0) == max(tally.values())
    seen = [(r["task"], r["prompt"], r["completion"]) for u in users for r in u["train"]]
    assert len(seen) == len(set(seen))  # no training row given to two users
    held = {(r["prompt"], r["completion"]) for u in users for r in u["eval"]}
    assert not held & {(p, c) for _, p, c in seen}  # held-out rows come from other splits
    other = personalise_real.build_users(pools, n_users=8, train_rows=32, eval_rows=6, concentration=0.5, seed=1)
    assert [u["mix"] for u in other] != [u["mix"] for u in users]


def test_instruction_rows_of_every_task():
    assert personalise_real.instruction_row("sst2", {"sentence": "great fun ", "label": 1})["completion"] == "positive"
    row = personalise_real.instruction_row("alpaca", {"instruction": "Add one", "input": "2", "output": "3"})
    assert row == {"prompt": "Add one\n\n2", "completion": "3"}
    assert "name[X]" in personalise_real.instruction_row("e2e", {"mr": "name[X]", "ref": "X is."})["prompt"]


def test_arm_sizes_match_units_and_steps():
    args = argparse.Namespace(n_meta=4, rank=4, users=8, steps=64)
    assert personalise_real.arm_sizes(args) == {"units": 16, "shared_rank": 16, "per_user_rank": 2, "per_user_steps": 8}
    with pytest.raises(SystemExit):
        personalise_real.arm_sizes(argparse.Namespace(n_meta=4, rank=4, users=5, steps=64))


def test_gate_agreement_is_one_for_gates_equal_to_permuted_mixes():
    mixes = personalise_real.dirichlet_mixes(6, 4, 0.5, seed=3)
    gates = [[m[2], m[0], m[3], m[1]] for m in mixes]
    got = personalise_real.gate_agreement(mixes, gates)
    assert got["distance_correlation"] == pytest.approx(1.0)
    assert got["best_matching"]["mean_correlation"] == pytest.approx(1.0)
    assert got["best_matching"]["meta_for_task"] == [1, 3, 0, 2]
    flat = personalise_real.gate_agreement(mixes, [[0.25] * 4] * 6)
    assert flat["gate_spread"] == 0.0 and flat["distance_correlation"] is None  # one gate for all: no correlation
    assert flat["best_matching"]["mean_correlation"] is None
