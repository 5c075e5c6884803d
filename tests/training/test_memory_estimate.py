"""The memory estimate, the plan made from it, and what a run and `studio train` do with it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest_training import chat_rows, cpu_device, make_request, register_chat_dataset, write_jsonl

from studio.errors import ValidationFailed
from studio.progress import MemoryReporter
from studio.training.memory import (
    GIB,
    HEAP_SLACK,
    TIGHT_FRACTION,
    ModelShape,
    estimate_memory,
    memory_budget,
    plan_memory,
)

SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}
SHAPE = ModelShape.from_config(SMOLLM2)


def test_shape_from_config_counts_smollm2_parameters():
    assert SHAPE.n_params == 134_515_008  # SmolLM2-135M: tied embeddings, 30 Llama layers
    assert SHAPE.lora_params(8) == 2_442_240  # r=8 on q/k/v/o/gate/up/down


def test_estimate_adds_up_and_each_feature_saves_memory():
    plain = estimate_memory(SHAPE, batch_size=8, seq_len=400, precision="fp32", loss_chunk_tokens=0)
    assert plain.total == plain.weights + plain.adapter + plain.activations + plain.logits + plain.runtime
    assert plain.weights == SHAPE.n_params * 4 and plain.adapter == SHAPE.lora_params(8) * 16
    bf16 = estimate_memory(SHAPE, batch_size=8, seq_len=400, precision="bf16", loss_chunk_tokens=0)
    chunked = estimate_memory(SHAPE, batch_size=8, seq_len=400, precision="bf16", loss_chunk_tokens=1024)
    ckpt = estimate_memory(
        SHAPE, batch_size=8, seq_len=400, precision="bf16", loss_chunk_tokens=1024, gradient_checkpointing=True
    )
    assert bf16.activations < plain.activations
    assert chunked.logits < bf16.logits / 4
    assert ckpt.activations < chunked.activations / 2
    assert ckpt.total < 0.4 * plain.total
    # Activations grow with batch × length; the logits chunk does not.
    double = estimate_memory(SHAPE, batch_size=16, seq_len=400, precision="bf16", gradient_checkpointing=True)
    assert double.activations == pytest.approx(2 * ckpt.activations, abs=2)
    assert double.logits - ckpt.logits == pytest.approx(8 * 400 * 576 * 8 * HEAP_SLACK, abs=2)
    gpu = estimate_memory(SHAPE, batch_size=8, seq_len=400, precision="bf16", device_type="cuda")
    cpu = estimate_memory(SHAPE, batch_size=8, seq_len=400, precision="bf16")
    assert cpu.activations == pytest.approx(gpu.activations * HEAP_SLACK, abs=2)  # the CPU heap keeps freed memory
    assert "GiB" in ckpt.describe() and ckpt.as_dict()["total"] == ckpt.total


def test_plan_makes_a_tight_job_smaller_the_cheap_way_per_device_then_refuses():
    common = dict(batch_size=8, seq_len=512, precision="fp32")
    roomy = plan_memory(SHAPE, budget=200 * GIB, **common)
    assert not roomy.gradient_checkpointing and roomy.micro_batch_size == 8 and roomy.fits and not roomy.notes

    without = estimate_memory(SHAPE, **common).total
    # Over a quarter of the budget: a CPU takes smaller micro-batches (no recomputation) ...
    cpu = plan_memory(SHAPE, budget=int(without * 2), **common)
    assert not cpu.gradient_checkpointing and cpu.split and cpu.fits
    assert cpu.estimate.total <= TIGHT_FRACTION * cpu.budget and "smaller micro-batches" in cpu.notes[0]
    # ... a GPU turns checkpointing on and keeps the batch.
    gpu_without = estimate_memory(SHAPE, device_type="cuda", **common).total
    gpu = plan_memory(SHAPE, budget=int(gpu_without * 2), device_type="cuda", **common)
    assert gpu.gradient_checkpointing and gpu.micro_batch_size == 8 and "checkpointing on" in gpu.notes[0]
    # Micro-batches stay above MIN_MICRO_TOKENS on a CPU: with short rows it checkpoints instead.
    short = dict(batch_size=8, seq_len=128, precision="fp32")
    floor = estimate_memory(SHAPE, batch_size=4, seq_len=128).total
    assert plan_memory(SHAPE, budget=int(floor * 2.5), **short).gradient_checkpointing

    one = estimate_memory(SHAPE, batch_size=1, seq_len=512, gradient_checkpointing=True).total
    eight = estimate_memory(SHAPE, **common, gradient_checkpointing=True).total
    small = plan_memory(SHAPE, budget=(one + eight) // 2, **common)
    assert small.gradient_checkpointing and small.split and 1 <= small.micro_batch_size < 8 and small.fits
    assert any("micro-batches of" in note for note in small.notes)

    off = plan_memory(SHAPE, budget=int(without * 2), checkpointing="off", **common)
    assert not off.gradient_checkpointing and off.micro_batch_size == 8  # it fits the budget: nothing to do
    on = plan_memory(SHAPE, budget=None, checkpointing="on", **common)
    assert on.gradient_checkpointing and on.budget is None and on.fits

    with pytest.raises(ValidationFailed, match="STUDIO_MEMORY_BUDGET_GB"):
        plan_memory(SHAPE, budget=int(one * 0.5), **common)
    assert not plan_memory(SHAPE, budget=int(one * 0.5), refuse=False, **common).fits


def test_budget_comes_from_the_setting_or_the_device():
    cpu = SimpleNamespace(type="cpu", memory_bytes=24 * GIB)
    gpu = SimpleNamespace(type="cuda", memory_bytes=80 * GIB)
    assert memory_budget(SimpleNamespace(memory_budget_gb=3.0), cpu) == 3 * GIB
    assert memory_budget(SimpleNamespace(memory_budget_gb=None), cpu) == 12 * GIB
    assert memory_budget(None, gpu) == int(80 * GIB * 0.9)


def test_setting_reads_the_environment(monkeypatch):
    from studio.settings import Settings

    monkeypatch.setenv("STUDIO_MEMORY_BUDGET_GB", "6.5")
    assert Settings().memory_budget_gb == 6.5
    monkeypatch.delenv("STUDIO_MEMORY_BUDGET_GB")
    assert Settings().memory_budget_gb is None


def run(tiny_llama_dir, data, tmp_path, budget_gb, work, reporter=None, **hyper):
    from studio.training.loop import run_training

    request = make_request("lora", {"lora_dropout": 0.0}, **hyper)
    return run_training(
        request,
        reporter or MemoryReporter(),
        settings=SimpleNamespace(memory_budget_gb=budget_gb),
        device=cpu_device(),
        work_dir=tmp_path / work,
        dataset=data,
        base_path=tiny_llama_dir,
    )


def test_a_tight_budget_gives_smaller_micro_batches_with_the_same_losses(tiny_llama_dir, chat_data, tmp_path):
    hyper = dict(max_steps=3, batch_size=4, gradient_checkpointing="off")
    roomy = run(tiny_llama_dir, chat_data, tmp_path, 100.0, "roomy", **hyper)
    assert roomy.memory.micro_batch_size == 4 and not roomy.memory.split
    # The tiny model's estimate is the runtime plus a few MB: 1 example fits in this budget, 4 do not.
    four = roomy.memory.estimate
    one = estimate_memory(
        ModelShape.from_path(tiny_llama_dir),
        batch_size=1,
        seq_len=four.seq_len,
        precision=four.precision,
        loss_chunk_tokens=four.loss_chunk_tokens,
        trainable_params=roomy.trainable_params,
    )
    budget = (one.total + four.total) / 2 / GIB
    reporter = MemoryReporter()
    tight = run(tiny_llama_dir, chat_data, tmp_path, budget, "tight", reporter=reporter, **hyper)
    assert tight.memory.split and tight.memory.micro_batch_size < 4
    assert any("micro-batches of" in message for _, message in reporter.logs)
    for step in (1, 2, 3):
        assert tight.losses[step] == pytest.approx(roomy.losses[step], abs=1e-5)
    assert tight.training_setup(make_request().hyper)["micro_batch_size"] == tight.memory.micro_batch_size

    with pytest.raises(ValidationFailed, match="memory budget"):
        run(tiny_llama_dir, chat_data, tmp_path, 0.01, "refused", **hyper)


def test_auto_checkpointing_turns_on_under_a_small_budget(tiny_llama_dir, chat_data, tmp_path):
    result = run(tiny_llama_dir, chat_data, tmp_path, 100.0, "roomy", max_steps=1)
    assert not result.memory.gradient_checkpointing
    on = run(tiny_llama_dir, chat_data, tmp_path, 100.0, "on", max_steps=1, gradient_checkpointing="on")
    assert on.memory.gradient_checkpointing
    assert on.losses[1] == pytest.approx(result.losses[1], abs=1e-6)
    tight_budget = result.memory.estimate.total * 1.5 / GIB  # more than a third of it
    tight = run(tiny_llama_dir, chat_data, tmp_path, tight_budget, "auto", max_steps=1)
    assert tight.memory.gradient_checkpointing


def test_cli_prints_the_estimate_before_submitting(settings, registry, tiny_llama_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from studio.cli import cli

    path = write_jsonl(tmp_path / "chat.jsonl", chat_rows(12))
    row = register_chat_dataset(registry, path)
    args = ["train", "--dataset", str(row.id), "--base", str(tiny_llama_dir), "--set", "max_length=64"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    estimate = next(i for i, line in enumerate(lines) if line.startswith("memory estimate"))
    queued = next(i for i, line in enumerate(lines) if line.startswith("queued training job"))
    assert estimate < queued and "GiB" in lines[estimate] and "budget" in lines[estimate]
    timed = next(i for i, line in enumerate(lines) if "time estimate: about " in line)
    assert timed < queued and "measured on this machine" in lines[timed] and "validation pass" in lines[timed]

    monkeypatch.setenv("STUDIO_MEMORY_BUDGET_GB", "0.01")
    from studio.cli.common import services

    services.cache_clear()
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code != 0 and "memory budget" in str(refused.exception)
    assert "queued" not in refused.output
