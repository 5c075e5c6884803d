"""Smoke test of bench/serving.py --quick on a tiny random Llama: both parts run, no timing asserted.

Checks what the full run's conclusions rest on: the engine's tokens equal PEFT's, the mixed
requests really use their mixed ranks, part (b) pages adapters in once the set outgrows the
slots, the host cache stays at its capacity, and the generated adapter set is real PEFT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import serving  # noqa: E402


def test_quick_run_on_a_tiny_model(base_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "serving.json"
    result = serving.main(
        ["--model", str(base_dir), "--quick", "--counts", "1,8,20", "--host-capacity", "12", "--out", str(out)]
    )
    assert json.loads(out.read_text())["mixed"]["requests"] == 4
    mixed = result["mixed"]
    assert set(mixed["median_seconds"]) == {"engine_mixed", "engine_mixed_segments", "engine_one", "engine_base",
                                            "peft_sequential", "peft_batched"}
    assert mixed["ranks"] == serving.RANKS[:4] and mixed["one_adapter_rank"] == 16
    assert mixed["agreement_with_peft_sequential"]["engine_mixed"]["equal"] == 4
    assert mixed["agreement_with_peft_sequential"]["engine_mixed_segments"]["equal"] == 4
    assert set(mixed["engine_mixed_speedup_vs"]) == set(serving.TARGET_RATIOS)

    scale = result["scale"]["summary"]
    assert list(scale) == [1, 8, 20]
    assert scale[1]["paged_in_per_round"] == 0 and scale[8]["paged_in_per_round"] == 0  # all resident
    assert scale[20]["paged_in_per_round"] == 8  # 20 > 8 slots: every round brings 8 new adapters
    assert scale[8]["host_cache_adapters"] == 8 and scale[20]["host_cache_adapters"] == 12  # capped
    assert scale[1]["vs_first"] == 1.0


def test_scale_set_is_real_peft_and_the_child_entry_prints_json(base_dir, tmp_path, capsys):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    model = serving.load_base(base_dir)
    paths, _ = serving.write_lora_set(model, tmp_path / "set", count=3, rank=2)
    peft = PeftModel.from_pretrained(serving.load_base(base_dir), paths[2])
    saved = load_file(str(paths[2] / "adapter_model.safetensors"))
    loaded = {k.replace(".default", ""): v for k, v in peft.state_dict().items() if "lora_" in k}
    assert set(loaded) == set(saved) and len(saved) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)

    spec = {"model_dir": str(base_dir), "adapters": [str(p) for p in paths], "prompts": [[1, 2, 3], [4, 5]],
            "new": 2, "rounds": 2, "slots": 2, "host_capacity": None}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    serving.main(["--scale-child", str(spec_file)])
    child = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert child["registered"] == 3 and child["rounds"] == 2 and len(child["round_seconds"]) == 2
    assert child["host_cache_capacity"] == 8 and child["bank_slot_mb"] > 0
    # Where a count's time goes: setup (load + bare-base round), paging one round alone, the whole case.
    assert 0 < child["setup_seconds"] < child["case_seconds"]
    assert child["page_round_cpu_seconds"] >= 0 and 0 < child["page_round_seconds"] < child["case_seconds"]
    assert len(child["loadavg_before"]) == len(child["loadavg_after"]) == 3
