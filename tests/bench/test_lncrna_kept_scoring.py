"""scripts/lncrna_pipeline.py --score-kept: adapters kept along the LoRA run are scored like the final one;
--keep leaves a studio data folder whose jobs are recorded as run (none left queued for a worker).

Runs the rotary recipe's quick settings end to end on the in-repo lncRNA sample (seconds): the last kept
adapter IS the final adapter, so its test metrics must equal row (a)'s exactly, and the kept steps lie in the
run's last half, in order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
for path in (REPO_ROOT, REPO_ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import lncrna_pipeline  # noqa: E402


def test_kept_adapters_are_scored_in_step_order_and_the_last_is_the_final_adapter(tmp_path, monkeypatch):
    out = tmp_path / "run.json"
    argv = ["lncrna_pipeline.py", "--recipe", "rotary", "--quick", "--score-kept", "2"]
    argv += ["--set", "full_ft.max_steps=1", "--out", str(out), "--keep", str(tmp_path / "kept-run")]
    monkeypatch.setattr(sys, "argv", argv)
    lncrna_pipeline.main()

    result = json.loads(out.read_text())
    total = result["lora_train"]["steps"]
    kept = result["lora_along_training"]
    steps = [entry["step"] for entry in kept]
    assert len(kept) == 2 and steps == sorted(steps) and steps[-1] == total
    assert steps[0] >= total // 2
    final_row = result["rows"][0]
    assert final_row["model"].startswith("(a)")
    assert kept[-1]["metrics"] == final_row["metrics"]
    for entry in kept:  # a full classification report per kept adapter, per sequence
        assert {"accuracy", "f1", "mcc", "auroc"} <= set(entry["metrics"])
        matrix, labels = entry["confusion"]["matrix"], entry["confusion"]["labels"]
        assert labels == final_row["confusion"]["labels"]
        assert sum(map(sum, matrix)) == sum(map(sum, final_row["confusion"]["matrix"]))

    # (a) against the baseline on the same rows, in the run's JSON
    [paired] = result["paired"]
    baseline = result["rows"][2]["metrics"]
    assert (paired["a"], paired["b"]) == (
        f"adapter:{result['lora_train']['adapter_id']}",
        "baseline:logistic-regression",
    )
    assert paired["accuracy_a"] == final_row["metrics"]["accuracy"] and paired["accuracy_b"] == baseline["accuracy"]
    assert paired["rows"] == sum(map(sum, final_row["confusion"]["matrix"]))

    # the kept folder is a studio data dir: `STUDIO_DATA_DIR=DIR studio run` finds its registry
    from studio.settings import Settings

    assert Settings(data_dir=tmp_path / "kept-run", database_url_override=None).database_url.endswith(
        "kept-run/studio.db"
    )
    assert (tmp_path / "kept-run" / "studio.db").exists()

    # --rescore: the kept run's adapters (final + 2 kept) and the baseline in one job, every pair compared
    rescored = tmp_path / "rescored.json"
    monkeypatch.setattr(
        sys, "argv", ["lncrna_pipeline.py", "--rescore", str(tmp_path / "kept-run"), "--out", str(rescored)]
    )
    lncrna_pipeline.main()
    pairs = json.loads(rescored.read_text())["paired"]
    assert len(pairs) == 3 + 3  # each adapter vs the baseline, and each pair of adapters
    final_key = f"adapter:{result['lora_train']['adapter_id']}"
    by_pair = {(e["a"], e["b"]): e for e in pairs}
    assert by_pair[(final_key, "baseline:logistic-regression")]["accuracy_a"] == final_row["metrics"]["accuracy"]
    # the last kept adapter IS the final one: the same answer on every row, so no discordant row at all
    same = [e for e in pairs if final_key in (e["a"], e["b"]) and e["b"] != "baseline:logistic-regression"]
    assert any(e["only_a"] == e["only_b"] == 0 and e["p_value"] == 1.0 for e in same)

    # every job of the kept run is recorded as run, none left queued: opened in the studio
    # (STUDIO_DATA_DIR=DIR studio run), its outbox must not send them to a worker to run again
    from models_db.registry import Registry

    kept_registry = Registry.from_url(f"sqlite:///{tmp_path / 'kept-run' / 'studio.db'}")
    jobs = kept_registry.list_jobs()
    kinds = [job.kind for job in jobs]
    assert kinds.count("pretrain") == kinds.count("train") == 1 and set(kinds) == {"pretrain", "train", "eval"}
    assert {job.status for job in jobs} == {"succeeded"}
    assert all(job.result and job.started_at and job.finished_at for job in jobs)
    assert kept_registry.jobs_awaiting_delivery() == []
