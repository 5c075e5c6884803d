"""Precision per device: the policy, the CPU bf16 check, fp32 adapters and the record of the choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from studio.device import DeviceInfo, _cpu_bf16
from studio.progress import MemoryReporter
from studio.training.checkpoint import read_checkpoint
from studio.training.job import save_trained_adapter
from studio.training.precision import choose_precision

CPU_BF16 = DeviceInfo("cpu", "cpu with AVX512-BF16", bf16=True)
CPU_PLAIN = DeviceInfo("cpu", "old cpu", bf16=False)
GPU_BF16 = DeviceInfo("cuda", "H100", 0, bf16=True)
GPU_FP16 = DeviceInfo("cuda", "T4", 0, bf16=False)


@pytest.mark.parametrize(
    "device,requested,expected,scaler",
    [
        (CPU_BF16, "auto", "bf16", False),
        (CPU_PLAIN, "auto", "fp32", False),
        (GPU_BF16, "auto", "bf16", False),
        (GPU_FP16, "auto", "fp16", True),
        (CPU_BF16, "fp32", "fp32", False),
        (GPU_BF16, "fp16", "fp16", True),
        (CPU_PLAIN, "bf16", "bf16", False),
    ],
)
def test_precision_policy(device, requested, expected, scaler):
    chosen = choose_precision(requested, device, cpu_bf16_speedup=1.5)
    assert chosen.name == expected and chosen.uses_grad_scaler is scaler and chosen.requested == requested
    assert (chosen.grad_scaler() is not None) is scaler
    assert chosen.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[expected]
    assert chosen.as_dict()["precision"] == expected and expected in chosen.describe()


def test_cpu_auto_picks_bf16_only_where_it_is_faster(monkeypatch):
    import studio.training.precision as precision

    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    slow = choose_precision("auto", CPU_BF16, cpu_bf16_speedup=0.6)
    assert slow.name == "fp32" and "0.60x" in slow.reason
    assert choose_precision("auto", CPU_BF16, cpu_bf16_speedup=1.8).name == "bf16"
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    assert choose_precision("auto", CPU_BF16, cpu_bf16_speedup=0.6).name == "bf16"  # AMX: no measurement needed
    measured = precision.measure_cpu_bf16_speedup()
    assert measured > 0 and measured == precision.measure_cpu_bf16_speedup()  # measured once per process


def test_slow_overrides_warn():
    assert choose_precision("bf16", CPU_PLAIN).warning
    assert choose_precision("fp16", CPU_BF16).warning
    assert choose_precision("bf16", CPU_BF16).warning is None


def test_cpu_bf16_detection_matches_the_cpu_flags():
    # torch.cpu._is_avx512_bf16_supported / _is_amx_tile_supported read CPUID; /proc/cpuinfo lists the same.
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    native = bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert _cpu_bf16() == native


def test_bf16_run_keeps_fp32_adapters_and_records_the_precision(train_tiny, tmp_path):
    from studio.schema import TrainingHyperParams, TrainRequest

    reporter = MemoryReporter()
    result = train_tiny("lora", reporter=reporter, max_steps=2, precision="bf16")
    assert result.precision.name == "bf16" and all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    trainable = [p for p in result.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # the base is not converted
    assert any("precision: bf16 autocast" in message for _, message in reporter.logs)

    request = TrainRequest(dataset_id=1, base_model="tiny", hyper=TrainingHyperParams(precision="bf16"))
    save_trained_adapter(result, request, tmp_path / "adapter")
    repro = json.loads((tmp_path / "adapter" / "reproducibility.json").read_text())
    assert repro["precision"] == "bf16"
    assert repro["training_setup"]["precision"]["precision"] == "bf16"
    assert "bf16 autocast" in (tmp_path / "adapter" / "README.md").read_text()


def test_test_device_without_bf16_trains_in_fp32(train_tiny):
    result = train_tiny("lora", max_steps=1)
    assert result.precision.name == "fp32" and result.precision.requested == "auto"


def test_fp16_uses_a_grad_scaler_that_is_checkpointed(train_tiny):
    reporter = MemoryReporter()
    result = train_tiny("lora", reporter=reporter, max_steps=3, save_every=2, precision="fp16")
    assert result.precision.uses_grad_scaler
    assert all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    checkpoint = read_checkpoint(reporter.checkpoints[0][0])
    state = torch.load(checkpoint.path / "trainer_state.pt", weights_only=True)
    assert "scaler" in state and checkpoint.meta["precision"] == "fp16"


def test_auto_measures_a_machine_once_so_runs_stay_reproducible(tmp_path, monkeypatch):
    from studio.training import precision as module

    readings = iter([1.3, 0.5, 0.7])
    monkeypatch.setattr(module, "measure_cpu_bf16_speedup", lambda: next(readings))
    monkeypatch.setattr(module, "cpu_has_amx", lambda: False)
    cache = tmp_path / "data" / module.MEASUREMENT_FILE
    first = choose_precision("auto", CPU_BF16, cache_file=cache)
    again = choose_precision("auto", CPU_BF16, cache_file=cache)  # a noisy re-measurement would say 0.5
    assert first.name == again.name == "bf16" and "1.30x" in again.reason
    stored = json.loads(cache.read_text())
    assert list(stored.values()) == [1.3] and f"{torch.get_num_threads()} threads" in next(iter(stored))
    # Another thread count is another configuration: measured (and kept) separately.
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(before + 1)
        assert choose_precision("auto", CPU_BF16, cache_file=cache).name == "fp32"
    finally:
        torch.set_num_threads(before)
    assert sorted(json.loads(cache.read_text()).values()) == [0.5, 1.3]
    # Garbage in the file is replaced by a measurement, not an error.
    cache.write_text("not json")
    assert choose_precision("auto", CPU_BF16, cache_file=cache).name == "fp32"  # 0.7 measured
