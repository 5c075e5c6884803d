"""scripts/federated_real.py: its own logic without training (category split, run plan, resume, page).

The instruction categories and the Alpaca split are checked on the in-repo sample
(data/samples/alpaca); the page and its verdict on hand-made runs whose outcome is known.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import federated_real  # noqa: E402

from bench import common  # noqa: E402
from studio.federated.partition import split_rows  # noqa: E402


@pytest.mark.parametrize(
    ("instruction", "category"),
    [
        ("Generate a story about a mysterious creature living in the forest.", "write"),
        ("Explain the concept of cash flow.", "explain"),
        ("What is the capital of France?", "explain"),
        ("Categorize the following fruit as either a citrus or a non-citrus fruit.", "classify"),
        ("Given a list of numbers, sort them from smallest to largest.", "classify"),  # the leading clause skipped
        ("Please rewrite the sentence in the passive voice.", "rewrite"),
        ("Translate 'hello' into French.", "rewrite"),
        ("Output the first ten prime numbers.", "other"),
        ("", "other"),
    ],
)
def test_instruction_category(instruction, category):
    assert federated_real.instruction_category(instruction) == category


def test_alpaca_rows_split_by_category(monkeypatch):
    monkeypatch.setattr(common, "SHARED_DATA", common.SAMPLES_DIR)
    rows = federated_real.alpaca_category_rows(80)
    assert len(rows) == 80
    assert all(
        len(r["instruction"]) + len(r["input"]) + len(r["output"]) <= federated_real.ALPACA_MAX_CHARS for r in rows
    )
    kinds = Counter(r["category"] for r in rows)
    assert set(kinds) <= {"write", "explain", "classify", "rewrite", "other"}
    assert len(kinds) >= 4 and kinds["other"] < len(rows) / 4  # the verb map covers most instructions
    assert rows == federated_real.alpaca_category_rows(80)  # deterministic
    # the request the script makes for Alpaca splits this column among 3 clients, none empty
    item = next(p for p in federated_real.plan_runs({"alpaca"}, [3]) if p["method"] == "fedit")
    fields = federated_real.request_fields(item, local_steps=1)
    assert fields["label_column"] == "category" and fields["split"] == "dirichlet" and fields["clients"] == 3
    params = SimpleNamespace(seed=0, validation_fraction=0.2, label_shares=None, client_column="client", **fields)
    val, parts = split_rows(rows, params)
    assert len(parts) == 3 and all(parts)
    assert sorted(val + [i for p in parts for i in p]) == list(range(80))
    mixes = [Counter(rows[i]["category"] for i in p) for p in parts]
    assert mixes[0] != mixes[1]  # non-IID: the clients hold different kinds of task


def test_plan_order_and_resume_keys():
    groups = {"centralised", "dirichlet", "label_shares", "dp", "alpaca"}
    plan = federated_real.plan_runs(groups, [3, 5])
    keys = [federated_real.run_key(p) for p in plan]
    assert len(keys) == len(set(keys)) == 25
    assert keys[:5] == [("centralised", "central", 3, None)] + [
        ("dirichlet", m, 3, None) for m in federated_real.STRATEGIES
    ]
    # 5 clients only for the centralised and Dirichlet runs, after every 3-client run; Alpaca last
    five = [i for i, k in enumerate(keys) if k[2] == 5]
    assert {keys[i][0] for i in five} == {"centralised", "dirichlet"}
    assert max(i for i, k in enumerate(keys) if k[0] in ("label_shares", "dp")) < min(five)
    assert [k[0] for k in keys[-5:]] == ["alpaca"] * 5
    dp = [k for k in keys if k[0] == "dp"]
    ends = [("dp", m, 3, e) for e in (6.0, 1.0) for m in ("ffa", "fedit")]
    assert dp[:4] == ends  # the claim's two ends before ε 3
    assert {(m, e) for _, m, _, e in dp} == {(m, e) for m in ("ffa", "fedit") for e in (1.0, 3.0, 6.0)}
    central5 = federated_real.request_fields(plan[keys.index(("centralised", "central", 5, None))], local_steps=2)
    assert central5["clients"] == 1 and central5["local_steps"] == 10  # the 5-client federation's total steps
    dp1 = federated_real.request_fields(plan[keys.index(("dp", "fedit", 3, 1.0))], local_steps=1)
    assert dp1["privacy"]["target_epsilon"] == 1.0 and dp1["split"] == "iid"


def _state(runs, **config):
    base = {"rows": 80, "dev_rows": 32, "rounds": 2, "local_steps": 1, "clients": 3, "learning_rate": 0.002,
            "base_model": "smollm2-135m-instruct", "threads": 1, "quick": False, "loadavg_start": [1.0, 1.0, 1.0],
            "command": "python scripts/federated_real.py --rows 80"}  # fmt: skip
    return {"script": "federated_real", "config": {**base, **config}, "base_accuracy": 0.8125, "runs": runs,
            "machine": {"cpu": "cpu", "cores": 2, "loadavg_1_5_15": [1.0, 1.0, 1.0]}, "elapsed_s": 600.0,
            "finished": False}  # fmt: skip


def _run(group, method, loss, acc=0.75, clients=None, eps=None, mix=None):
    row = {"group": group, "method": method, "initial_loss": 0.97, "val_loss": loss, "accuracy": acc,
           "bytes_sent": 1e6, "epsilon": eps, "partitions": [20, 20, 24], "wall_s": 60.0, "job_id": 1,
           "label_mix": mix or {"client 1": {"negative": 3, "positive": 1}}}  # fmt: skip
    if clients is not None:
        row["clients"] = clients
    if eps is not None:
        row["target_epsilon"] = eps
    return row


def test_resume_skips_saved_runs_and_refuses_other_settings(tmp_path):
    out = tmp_path / "runs.json"
    # an older file: runs without 'clients', a single 'command'
    out.write_text(json.dumps(_state([_run("centralised", "central", 0.2), _run("dp", "fedit", 0.9, eps=6.0)])))
    config = {"rows": 80, "dev_rows": 32, "rounds": 2, "local_steps": 1, "learning_rate": 0.002,
              "base_model": "smollm2-135m-instruct"}  # fmt: skip
    saved = federated_real.resume_state(out, config)
    assert saved["config"]["commands"] == ["python scripts/federated_real.py --rows 80"]
    done = {federated_real.run_key(r) for r in saved["runs"]}
    plan = federated_real.plan_runs({"centralised", "dp"}, [3])
    todo = [federated_real.run_key(p) for p in plan if federated_real.run_key(p) not in done]
    assert ("centralised", "central", 3, None) not in todo and ("dp", "fedit", 3, 6.0) not in todo
    assert ("dp", "ffa", 3, 6.0) in todo and len(todo) == len(plan) - 2
    with pytest.raises(SystemExit, match="rounds"):
        federated_real.resume_state(out, {**config, "rounds": 3})
    assert federated_real.resume_state(tmp_path / "absent.json", config) is None


def test_render_every_group_and_the_verdict(tmp_path):
    runs = [
        _run("centralised", "central", 0.20, clients=3),
        _run("dirichlet", "fedit", 0.30, clients=3),
        _run("dirichlet", "lora_fair", 0.25, clients=3),  # LoRA-FAIR lower: held
        _run("centralised", "central", 0.21, clients=5),
        _run("dirichlet", "fedit", 0.30, clients=5),
        _run("dirichlet", "lora_fair", 0.35, clients=5),  # FedIT lower: did not hold
        _run("label_shares", "fedit", 0.300, clients=3),
        _run("label_shares", "lora_fair", 0.305, clients=3),  # within 0.01: a tie
        _run("dp", "fedit", 0.50, acc=0.8, clients=3, eps=6.0),
        _run("dp", "fedit", 0.90, acc=0.6, clients=3, eps=1.0),  # LoRA's loss rises 0.40
        _run("dp", "ffa", 0.60, acc=0.8, clients=3, eps=6.0),
        _run("dp", "ffa", 0.70, acc=0.7, clients=3, eps=1.0),  # FFA-LoRA's rises 0.10: held
        _run("alpaca", "fedit", 1.80, acc=None, clients=3, mix={"client 1": {"write": 4, "other": 0}}),
        _run("alpaca", "lora_fair", 1.70, acc=None, clients=3),
        _run("alpaca", "central", 1.60, acc=None, clients=3),
    ]
    out, doc = tmp_path / "runs.json", tmp_path / "page.md"
    out.write_text(json.dumps(_state(runs, clients=[3, 5])))
    assert federated_real.main(["--render-only", "--out", str(out), "--doc", str(doc)]) == 0
    page = doc.read_text(encoding="utf-8")
    for title in (
        "## SST-2, Dirichlet α = 0.5, 3 clients",
        "## SST-2, Dirichlet α = 0.5, 5 clients",
        "## SST-2, FFA-LoRA's label split, 3 clients",
        "## DP-SGD: FFA-LoRA vs LoRA (FedIT)",
        "## Alpaca split by instruction category, Dirichlet α = 0.5, 3 clients",
        "## Did the papers' claims hold here?",
    ):
        assert title in page
    alpaca = page.split("## Alpaca")[1].split("##")[0]
    assert alpaca.index("| centralised |") < alpaca.index("| FedIT |")  # the reference first
    assert "| 0.9700 → 1.8000 | — |" in alpaca  # no label accuracy for Alpaca
    assert "client 1 4 write" in alpaca and "0 other" not in alpaca
    claims = page.split("## Did the papers' claims hold here?")[1]
    assert "3 clients: held-out loss 0.2500 vs 0.3000 → held" in claims
    assert "5 clients: held-out loss 0.3500 vs 0.3000 → did not hold" in claims
    assert "label split" in claims and "→ a tie" in claims
    assert "over the 4 splits: held on 2, a tie on 1, did not hold on 1" in claims
    assert "rises by +0.1000 (FFA-LoRA) vs +0.4000 (LoRA) → held" in claims
    assert "Caveat" in claims and "Partial" in page
    assert "always answers the same word scores 0.562" in page  # 18 of the first 32 SST-2 dev rows
    assert "`python scripts/federated_real.py --rows 80`" in page  # an older file's single command
