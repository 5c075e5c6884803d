"""Smoke test of bench/serving_engine.py on a very small random model: the code path runs, no timing asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def test_serving_bench_runs_and_engine_matches_peft(tmp_path, monkeypatch):
    from bench.serving_engine import main

    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "serving.json"
    argv = ["--hidden", "64", "--layers", "1", "--vocab", "64", "--adapters", "3", "--prompt", "6", "--new", "3"]
    result = main([*argv, "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["requests"] == 3
    assert set(result["median_seconds"]) == {"peft", "engine", "engine_base", "hf_base_batch"}
    assert result["requests_with_tokens_equal_to_peft"] == 3
    assert result["config"]["ranks"] == [8, 16, 32]
