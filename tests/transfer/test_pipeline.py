"""The transfer end to end: synthetic inputs, filtered, answered by the teacher, learned by a student LoRA."""

from __future__ import annotations

import json

import pytest
from conftest import TEMPLATES, THINGS, cpu_device, fast_hyper

from studio.transfer.options import TransferOptions
from studio.transfer.pipeline import transfer
from studio.transfer.synth import answer, open_engine

pytestmark = pytest.mark.slow


def _options(**changes) -> TransferOptions:
    values = dict(
        samples=32,
        max_attempts=96,
        generation_batch=16,
        max_input_tokens=12,
        max_answer_tokens=4,
        hyper=fast_hyper(max_steps=40),
    )
    values.update(changes)
    return TransferOptions(**values)


def _held_out_prompts(kit) -> list[str]:
    seeds = set(kit.seed_inputs)
    return [t.format(thing) for t in TEMPLATES for thing in sorted(THINGS) if t.format(thing) not in seeds]


def test_transfer_to_the_same_base_agrees_with_the_teacher(kit, teacher, llama_base, tmp_path):
    adapter, _ = teacher
    seen = []
    result = transfer(
        llama_base,
        adapter,
        kit,
        llama_base,
        tmp_path / "student",
        options=_options(),
        device=cpu_device(),
        work_dir=tmp_path / "work",
        on_progress=seen.append,
    )
    counts = result.counts
    assert counts.stage == "done" and counts.generated <= 96 and 0 < counts.kept <= 32
    assert counts.trained == len(result.examples) <= counts.kept
    assert [c.generated for c in seen if c.stage == "generating"] == sorted(
        c.generated for c in seen if c.stage == "generating"
    )
    assert {c.stage for c in seen} == {"generating", "answering", "training", "done"}
    lineage = json.loads((result.adapter_dir / "transfer.json").read_text())
    assert lineage["source_adapter"] == str(adapter) and lineage["counts"]["kept"] == counts.kept

    prompts = _held_out_prompts(kit)
    engine = open_engine(llama_base, cpu_device(), slots=2)
    teacher_says = answer(engine, adapter, prompts, 4)
    student_says = answer(engine, result.adapter_dir, prompts, 4)
    bare_says = answer(engine, None, prompts, 4)
    agree = sum(s == t for s, t in zip(student_says, teacher_says, strict=True)) / len(prompts)
    bare = sum(b == t for b, t in zip(bare_says, teacher_says, strict=True)) / len(prompts)
    assert agree >= 0.9, (agree, list(zip(prompts, teacher_says, student_says, strict=True)))
    assert bare < agree


def test_transfer_to_another_architecture_loads_in_plain_peft(kit, teacher, llama_base, neox_base, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter, _ = teacher
    result = transfer(
        llama_base,
        adapter,
        kit.path,
        neox_base,
        tmp_path / "student",
        options=_options(samples=16, max_attempts=48, hyper=fast_hyper(max_steps=10)),
        device=cpu_device(),
        work_dir=tmp_path / "work",
    )
    base = AutoModelForCausalLM.from_pretrained(neox_base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(result.adapter_dir))
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)  # trained, not the zero init
    assert any("query_key_value" in name for name, _ in model.named_parameters() if "lora_A" in name)
    ids = torch.tensor([[2, 5, 6]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_seeds_only_trains_on_the_teachers_answers_to_the_kit_seeds(kit, teacher, llama_base, tmp_path):
    """samples = 0: nothing is generated or filtered; the student learns the teacher's replies to the 5 seeds."""
    adapter, _ = teacher
    seen = []
    result = transfer(
        llama_base,
        adapter,
        kit,
        llama_base,
        tmp_path / "student",
        options=_options(samples=0, hyper=fast_hyper(max_steps=5)),
        device=cpu_device(),
        work_dir=tmp_path / "work",
        on_progress=seen.append,
    )
    counts = result.counts
    assert (counts.generated, counts.kept, counts.trained) == (0, len(kit.seeds), len(kit.seeds))
    assert [e["input"] for e in result.examples] == kit.seed_inputs
    engine = open_engine(llama_base, cpu_device(), slots=2)
    assert [e["output"] for e in result.examples] == answer(engine, adapter, kit.seed_inputs, 4)
    assert all(c.generated == 0 for c in seen) and seen[-1].stage == "done"
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
