"""``auto`` on a GPU: the step probe, its cache, and the fp32-or-low-precision decision."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest_training import chat_rows, make_request, training_device

from studio.device import DeviceInfo
from studio.progress import MemoryReporter
from studio.training import precision_probe as probe
from studio.training.precision import Precision, choose_precision
from studio.training.precision_probe import StepTimings, settle_precision

GPU = DeviceInfo("cuda", "H100", 0, bf16=True)
AUTO_BF16 = choose_precision("auto", GPU)


def test_launch_bound_step_takes_fp32_and_compute_bound_keeps_bf16():
    launch_bound = settle_precision(AUTO_BF16, StepTimings(fp32_s=0.010, low_s=0.020, low_name="bf16"), True)
    assert launch_bound.name == "fp32" and launch_bound.requested == "auto"
    assert "launch-bound" in launch_bound.reason and "10.0 ms in fp32" in launch_bound.reason
    compute_bound = settle_precision(AUTO_BF16, StepTimings(fp32_s=0.030, low_s=0.012, low_name="bf16"), True)
    assert compute_bound.name == "bf16" and "12.0 ms in bf16" in compute_bound.reason
    # bf16 saves memory: a few per cent of speed is not worth giving that up
    close = settle_precision(AUTO_BF16, StepTimings(fp32_s=0.0100, low_s=0.0105, low_name="bf16"), True)
    assert close.name == "bf16"


def test_fp32_is_never_taken_when_it_would_cost_memory_savings():
    chosen = settle_precision(AUTO_BF16, StepTimings(0.010, 0.020, "bf16"), fp32_fits_as_well=False)
    assert chosen.name == "bf16" and "more memory" in chosen.reason


def test_explicit_requests_and_missing_timings_are_left_alone():
    timings = StepTimings(0.010, 0.020, "bf16")
    requested = Precision("bf16", "bf16", "cuda", "requested")
    assert settle_precision(requested, timings, True) == requested
    assert settle_precision(AUTO_BF16, None, True) == AUTO_BF16


def test_only_fresh_auto_runs_of_small_models_on_a_gpu_are_probed():
    cpu = DeviceInfo("cpu", "cpu", bf16=True)
    assert probe.wants_probe("auto", GPU, 135_000_000, None)
    assert not probe.wants_probe("bf16", GPU, 135_000_000, None)
    assert not probe.wants_probe("auto", cpu, 135_000_000, None)
    assert not probe.wants_probe("auto", GPU, 135_000_000, "bf16")  # a resumed run keeps its precision
    assert not probe.wants_probe("auto", GPU, 7_000_000_000, None)  # compute-bound: bf16 unmeasured


def test_timings_are_measured_once_per_key_and_kept(tmp_path):
    cache = tmp_path / probe.PROBE_FILE
    calls = []

    def measure():
        calls.append(1)
        return StepTimings(0.01, 0.02, "bf16")

    first, fresh = probe.cached_timings(cache, "card | model | 8x64", measure)
    again, fresh_again = probe.cached_timings(cache, "card | model | 8x64", measure)
    assert (fresh, fresh_again, len(calls)) == (True, False, 1)
    assert first == again
    other, _ = probe.cached_timings(cache, "card | model | 8x128", measure)
    assert len(calls) == 2 and other == first
    assert set(json.loads(cache.read_text())) == {"card | model | 8x64", "card | model | 8x128"}
    cache.write_text(json.dumps({"card | model | 8x64": {"fp32_s": "broken"}}))
    probe.cached_timings(cache, "card | model | 8x64", measure)  # a damaged entry is measured again
    assert len(calls) == 3


def _tiny_model_and_batch(tiny_llama_dir):
    from studio.training.data import collate
    from studio.training.models import load_base_model, load_tokenizer_for
    from studio.training.tokenise import encode_rows

    tokenizer = load_tokenizer_for(tiny_llama_dir)
    model = load_base_model(tiny_llama_dir, "causal-lm")
    examples = encode_rows(chat_rows(4), tokenizer, task="causal-lm", max_length=64).examples
    return model, collate(examples, tokenizer.pad_token_id)


def test_probe_key_buckets_the_width_and_names_the_shape(tiny_llama_dir):
    model, batch = _tiny_model_and_batch(tiny_llama_dir)
    rows, width = batch["input_ids"].shape
    key = probe.probe_key(GPU, model, batch, ["v_proj", "q_proj"])
    bucket = 1 << (width - 1).bit_length()
    assert key.startswith("H100 | torch ") and key.endswith(f"q_proj,v_proj | {rows}x{bucket}")
    assert bucket >= width > bucket // 2
    wider = {k: torch.cat([v, v], dim=1) for k, v in batch.items()}
    assert probe.probe_key(GPU, model, wider, ["q_proj"]) != probe.probe_key(GPU, model, batch, ["q_proj"])


def test_probe_measures_both_precisions_and_leaves_the_model_untouched(tiny_llama_dir):
    """On the CPU here, on CUDA with STUDIO_TEST_DEVICE=cuda (bench/gpu_check.sh stage)."""
    from studio.training.data import to_device
    from studio.variants.targets import default_target_modules

    device = torch.device(training_device().torch_device)
    model, batch = _tiny_model_and_batch(tiny_llama_dir)
    model, batch = model.to(device), to_device(batch, device)
    model.eval()
    model.lm_head.weight.requires_grad_(True)  # a mix of flags, to see them all come back
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    rng = torch.get_rng_state()
    gpu_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    seen = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: seen.append(out.dtype))

    timings = probe.time_step_precisions(
        model,
        batch,
        task="causal-lm",
        targets=default_target_modules(model),
        low_dtype=torch.bfloat16,
        chunk_tokens=16,
        repeats=2,
    )
    hook.remove()
    assert timings.fp32_s > 0 and timings.low_s > 0 and timings.low_name == "bf16"
    assert {torch.float32, torch.bfloat16} <= set(seen)  # both precisions really ran through the layer
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    if gpu_rng is not None:
        assert torch.equal(torch.cuda.get_rng_state(device), gpu_rng)
    for name, param in model.named_parameters():
        assert param.dtype == torch.float32 and param.grad is None, name
        assert param.requires_grad == flags[name], name
        assert torch.equal(param, before[name]), name
    assert not any(module._forward_hooks for module in model.modules())  # stand-in adapters removed


def test_stand_in_adapters_add_a_trainable_update_to_every_target(tiny_llama_dir):
    model, batch = _tiny_model_and_batch(tiny_llama_dir)
    targets = ["q_proj", "down_proj"]
    with torch.no_grad():
        plain = model(input_ids=batch["input_ids"]).logits
    with probe._stand_in_adapters(model, targets, torch.device("cpu")) as params:
        assert len(params) == 2 * 2 * len(model.model.layers)  # A and B per matched layer
        with torch.no_grad():
            for b in params[1::2]:
                b.fill_(0.05)  # B starts at zero, as in LoRA: make the update visible
            changed = model(input_ids=batch["input_ids"]).logits
    assert not torch.allclose(plain, changed)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=batch["input_ids"]).logits, plain, rtol=0, atol=0)


def test_a_failed_probe_keeps_the_default_and_says_why(tiny_llama_dir, monkeypatch):
    model, batch = _tiny_model_and_batch(tiny_llama_dir)

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(probe, "time_step_precisions", out_of_memory)
    reporter = MemoryReporter()
    timings = probe.probe_precision(
        model,
        batch,
        device=GPU,
        task="causal-lm",
        targets=["q_proj"],
        chunk_tokens=16,
        cache_file=None,
        log=reporter.log,
    )
    assert timings is None
    assert any(level == "warning" and "out of memory" in text for level, text in reporter.logs)


@pytest.fixture
def probed_training(tiny_llama_dir, chat_data, tmp_path, monkeypatch):
    """run(decide=None) -> (result, reporter): a tiny run whose auto precision is probed as on a GPU.

    The CPU stands in for the GPU: ``wants_probe`` is opened for it and ``auto``'s static
    choice is bf16, as on a bf16 GPU; ``decide`` replaces the fp32-or-bf16 decision.
    """
    from studio.training import loop
    from studio.training.loop import run_training

    settings = SimpleNamespace(data_dir=tmp_path / "data", memory_budget_gb=None)
    device = DeviceInfo("cpu", "stand-in GPU", None, bf16=True, memory_bytes=8 * 1024**3)
    monkeypatch.setattr(loop, "wants_probe", lambda requested, dev, n, saved: requested == "auto" and saved is None)
    monkeypatch.setattr(
        loop, "choose_precision", lambda req, dev, **kw: Precision("bf16", req, "cpu", "auto: stand-in")
    )

    def run(decide=None, work="run", probe_on=True):
        if decide is not None:
            monkeypatch.setattr(loop, "settle_precision", decide)
        if not probe_on:
            monkeypatch.setattr(loop, "wants_probe", lambda *args: False)
        reporter = MemoryReporter()
        result = run_training(
            make_request("lora", max_steps=3, learning_rate=2e-2),
            reporter,
            settings=settings,
            device=device,
            work_dir=tmp_path / work,
            dataset=chat_data,
            base_path=tiny_llama_dir,
        )
        return result, reporter

    run.cache = settings.data_dir / probe.PROBE_FILE
    return run


def test_a_probed_run_records_its_choice_and_the_next_run_reads_the_cache(probed_training):
    first, first_log = probed_training()
    assert any("precision probe: one step takes" in text for _, text in first_log.logs)
    cached = json.loads(probed_training.cache.read_text())
    (entry,) = cached.values()
    timings = StepTimings(entry["fp32_s"], entry["low_s"], entry["low"])
    expected = "fp32" if timings.fp32_speedup >= probe.MIN_FP32_ADVANTAGE else "bf16"
    assert first.precision.name == expected and "measured" in first.precision.reason

    second, second_log = probed_training(work="again")
    assert not any("precision probe: one step takes" in text for _, text in second_log.logs)  # from the cache
    assert second.precision == first.precision
    assert second.losses == first.losses


def test_the_probe_does_not_change_what_the_run_computes(probed_training):
    """Weights, RNG and data order after the probe are as without it: bit-identical losses."""
    keep = lambda static, timings, fits: static  # noqa: E731 - the same precision both ways
    probed, _ = probed_training(decide=keep, work="probed")
    plain, _ = probed_training(decide=keep, work="plain", probe_on=False)
    assert probed.precision.name == plain.precision.name == "bf16"
    assert probed.losses == plain.losses
    assert len(probed.losses) == 3


def test_fp32_chosen_by_the_probe_trains_in_fp32(probed_training):
    """When the probe says fp32, the run computes in fp32 (not just records it)."""
    launch_bound = lambda static, timings, fits: Precision("fp32", "auto", "cpu", "auto: launch-bound")  # noqa: E731
    chosen, log = probed_training(decide=launch_bound, work="fp32")
    reference, _ = probed_training(decide=lambda s, t, f: s, work="bf16")
    assert chosen.precision.name == "fp32" and reference.precision.name == "bf16"
    assert chosen.losses != reference.losses
    assert any("precision: fp32" in text for _, text in log.logs)
