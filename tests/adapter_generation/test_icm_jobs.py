"""The generator and generate jobs end to end on a tiny Llama (no broker): adapters trained with
keep_checkpoints, a generator over two tasks, a generated adapter that plain PEFT loads and the
eval job scores; and the refusals, in words."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest_training import chat_rows, make_request, tiny_llama_dir  # noqa: F401  (fixture found by name)
from icm_lab import number_rows
from pydantic import ValidationError

from studio.errors import NotFoundError, StudioError, ValidationFailed
from studio.progress import MemoryReporter
from studio.schema import SCHEMA_VERSION, EvalRequest, GenerateRequest, GeneratorRequest
from studio.training.kept_adapters import kept_adapter_dirs, kept_steps

STEPS, KEEP = 6, 3


class NullDispatcher:
    def send(self, job_id: int) -> str:
        return f"task-{job_id}"

    def revoke(self, task_id) -> None:
        pass


@pytest.fixture
def env(settings, registry, tmp_path, tiny_llama_dir):  # noqa: F811
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.services.datasets import DatasetService
    from studio.services.jobs import JobService

    datasets = {}
    for task, rows in (("colours", chat_rows(30)), ("numbers", number_rows(30))):
        path = tmp_path / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        datasets[task] = DatasetService(registry, settings).add(path)

    class Env:
        pass

    e = Env()
    e.settings, e.registry, e.base, e.datasets = settings, registry, tiny_llama_dir, datasets
    e.jobs = JobService(registry, NullDispatcher())
    e.ctx = lambda job_id: JobContext(job_id, settings, registry, detect_device("cpu"), attempt=1)
    return e


def run(env, request, reporter=None):
    """Run ``request``'s handler as a worker would (a job row, the job's context), no broker."""
    from studio.jobs.handlers import get_handler

    job = env.registry.create_job(
        kind=request.kind, name="t", request=request.model_dump(mode="json"), schema_version=SCHEMA_VERSION
    )
    reporter = reporter or MemoryReporter()
    return get_handler(request.kind)(request, reporter, env.ctx(job.id)), reporter


def train(env, task: str, keep: int = KEEP, seed: int = 7, r: int = 2, steps: int = STEPS):
    request = make_request("lora", {"r": r, "lora_alpha": 2 * r}, seed=seed, max_steps=steps, keep_checkpoints=keep)
    request = request.model_copy(
        update={"base_model": str(env.base), "dataset_id": env.datasets[task].id, "name": task}
    )
    result, _ = run(env, request)
    return env.registry.get_adapter(result["adapter_id"]), result


def test_kept_steps_spread_over_the_last_half():
    assert kept_steps(100, 4) == [63, 75, 88, 100]  # 100 - floor(k · 50 / 4)
    assert kept_steps(6, 3) == [4, 5, 6]  # a short run keeps its last steps
    assert kept_steps(4, 10) == [1, 2, 3, 4]
    assert kept_steps(10, 0) == []


@pytest.mark.slow
def test_keep_generator_generate_end_to_end(env):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    colours, summary = train(env, "colours")
    numbers, _ = train(env, "numbers", seed=8)

    # 1. Training kept KEEP PEFT adapters; the last is the final adapter, the adapter's size is its own.
    kept = kept_adapter_dirs(colours.path)
    assert [p.name for p in kept] == [f"step-{s:06d}" for s in kept_steps(STEPS, KEEP)]
    assert summary["kept_checkpoints"] == KEEP
    final = Path(colours.path) / "adapter_model.safetensors"
    assert (kept[-1] / "adapter_model.safetensors").read_bytes() == final.read_bytes()
    assert (kept[0] / "adapter_model.safetensors").read_bytes() != final.read_bytes()  # trained on after it
    assert colours.size_bytes < sum(p.stat().st_size for p in Path(colours.path).rglob("*") if p.is_file())
    base = AutoModelForCausalLM.from_pretrained(env.base)
    PeftModel.from_pretrained(base, str(kept[0]))  # a standard PEFT LoRA

    # 2. The generator job over both tasks: registered as an icm_generator row with its sources as parents.
    request = GeneratorRequest(adapter_ids=[colours.id, numbers.id], preset="tiny", epochs=30, examples=20, seed=3)
    result, reporter = run(env, request)
    gen = env.registry.get_adapter(result["generator_id"])
    assert (gen.variant, gen.base_model, gen.parents) == ("icm_generator", str(env.base), [colours.id, numbers.id])
    assert result["checkpoints"] == 2 * KEEP and gen.metrics["checkpoints"] == 2 * KEEP
    assert (Path(gen.path) / "generator.safetensors").is_file() and gen.size_bytes > 0
    losses = [v for _, name, v in reporter.metric_rows if name == "loss"]
    assert len(losses) == 30 and losses[-1] < losses[0]
    assert reporter.steps[-1][0] == reporter.steps[-1][1]  # the bar ends full
    assert not [m for level, m in reporter.logs if level == "warning"]

    # 3. Generate for the colours task: a plain `lora` adapter with the generator as parent, loadable in PEFT.
    result, _ = run(env, GenerateRequest(generator_id=gen.id, dataset_id=env.datasets["colours"].id, seed=5))
    made = env.registry.get_adapter(result["adapter_id"])
    assert (made.variant, made.base_model, made.parents) == ("lora", str(env.base), [gen.id])
    assert made.ranks == colours.ranks and result["reference_task"] == f"adapter-{colours.id}"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(env.base), made.path)
    ids = torch.tensor([[2, 13, 14, 15, 16]])
    with torch.no_grad():
        out = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert torch.isfinite(out).all() and not torch.allclose(out, plain)  # it changes the model
    assert "ICM-LoRA" in (Path(made.path) / "README.md").read_text()

    # 4. It evaluates like any adapter; the generator itself is refused by eval and the playground.
    eval_request = EvalRequest(adapter_id=made.id, dataset_id=env.datasets["colours"].id, max_examples=8)
    env.jobs._check_references(eval_request)
    scores, _ = run(env, eval_request)
    assert scores  # the eval handler loaded and scored the generated adapter
    with pytest.raises(StudioError, match="generator, not an adapter"):
        env.jobs._check_references(EvalRequest(adapter_id=gen.id, dataset_id=env.datasets["colours"].id))
    from studio.services.playground import PlaygroundService

    playground = PlaygroundService(env.registry, env.settings)
    targets = [t.value for t in playground.targets(str(env.base))]
    assert f"adapter:{made.id}" in targets and f"adapter:{gen.id}" not in targets

    # 5. A generator over adapters that kept no checkpoints says so and uses the final adapters.
    # (one step each: only their shapes and missing checkpoints matter from here on)
    plain_a, _ = train(env, "colours", keep=0, steps=1)
    plain_b, _ = train(env, "numbers", keep=0, seed=8, steps=1)
    request = GeneratorRequest(adapter_ids=[plain_a.id, plain_b.id], preset="tiny", epochs=2, examples=5)
    result, reporter = run(env, request)
    assert result["checkpoints"] == 2
    assert any(level == "warning" and "kept no checkpoints" in m for level, m in reporter.logs)

    # Refusals: another shape, a generator as a source, a plain adapter as a generator.
    other_rank, _ = train(env, "numbers", keep=0, r=4, steps=1)
    with pytest.raises(ValidationFailed, match="same LoRA tensors"):
        env.jobs._check_references(GeneratorRequest(adapter_ids=[plain_a.id, other_rank.id]))
    with pytest.raises(ValidationFailed, match="is a generator"):
        env.jobs._check_references(GeneratorRequest(adapter_ids=[plain_a.id, gen.id]))
    with pytest.raises(ValidationFailed, match="not a generator"):
        env.jobs._check_references(GenerateRequest(generator_id=plain_a.id, dataset_id=env.datasets["colours"].id))


def test_requests_refuse_too_few_and_repeated_adapters():
    with pytest.raises(ValidationError, match="at least 2"):
        GeneratorRequest(adapter_ids=[1])
    with pytest.raises(ValidationError, match="given once"):
        GeneratorRequest(adapter_ids=[1, 1])
    with pytest.raises(ValidationError):
        GeneratorRequest(adapter_ids=[1, 2], preset="huge")


def test_generator_sources_one_base_and_a_dataset(env):
    from studio.adapter_generation.jobs import check_generator_sources

    def add(base: str, dataset_id):
        return env.registry.add_adapter(
            name="a", variant="lora", base_model=base, dataset_id=dataset_id, ranks={}, trainable_params=1,
            size_bytes=1, path=str(env.settings.adapters_dir / "missing"), sha256="0" * 64, parents=[], metrics={},
        )  # fmt: skip

    a = add("base-a", env.datasets["colours"].id)
    b = add("base-b", env.datasets["numbers"].id)
    merged = add("base-a", None)
    with pytest.raises(ValidationFailed, match=f"one base model.*#{a.id} on base-a, #{b.id} on base-b"):
        check_generator_sources(env.registry, GeneratorRequest(adapter_ids=[a.id, b.id]))
    with pytest.raises(ValidationFailed, match=f"adapter #{merged.id} has no training dataset"):
        check_generator_sources(env.registry, GeneratorRequest(adapter_ids=[a.id, merged.id]))
    with pytest.raises(NotFoundError):
        check_generator_sources(env.registry, GeneratorRequest(adapter_ids=[a.id, 999]))


def test_generate_section_builds_and_submits(env):
    import gradio as gr

    from app.generate_section import build_generate_section, submit_generate, submit_generator
    from studio.services.container import Services

    services = Services(settings=env.settings, registry=env.registry, jobs=env.jobs)
    with gr.Blocks() as demo, gr.Tab("Transfer & Generate") as tab:
        c = build_generate_section(services, tab, demo)
    assert set(c["forms"]["generator"].names) == {"preset", "epochs", "learning_rate", "examples", "seed", "name"}
    assert c["forms"]["generator"].specs["preset"].choices == ["tiny", "small", "paper"]
    with pytest.raises(ValidationFailed, match="at least two tasks"):
        submit_generator(services, [1], {})
    with pytest.raises(ValidationFailed, match="Generator: choose"):
        submit_generate(services, None, env.datasets["colours"].id, {})
    with pytest.raises(NotFoundError):
        submit_generate(services, 12345, env.datasets["colours"].id, {})


def test_cli_generate_commands_parse_and_refuse():
    from click.testing import CliRunner

    from studio.cli import cli

    runner = CliRunner()
    assert "train-generator" in runner.invoke(cli, ["generate", "--help"]).output
    result = runner.invoke(cli, ["generate"])
    assert result.exit_code == 2 and "--generator ID and --dataset ID" in result.output
    result = runner.invoke(cli, ["generate", "train-generator", "3", "--preset", "tiny"])
    assert isinstance(result.exception, StudioError) and "at least 2" in str(result.exception)
    result = runner.invoke(cli, ["generate", "train-generator", "3", "4", "--preset", "huge"])
    assert result.exit_code == 2 and "huge" in result.output
