"""Transfer & Generate tab, generation half: both ICM-LoRA forms queue their jobs, and refuse plainly.

The forms' handlers are plain functions (:mod:`app.generate_section`): a generator job over the
adapters of two tasks, then a generate job from a generator and a dataset of the new task.
"""

from __future__ import annotations

import gradio as gr
import pytest
from conftest_training import chat_rows, register_chat_dataset, write_jsonl

from app import generate_section
from studio.errors import ValidationFailed


@pytest.fixture
def task_adapters(services, tiny_llama, tiny_loras, tmp_path):
    """Two LoRAs of one base and shape, each trained (as the registry says) on its own dataset."""
    ids = []
    for i, path in enumerate(tiny_loras[:2]):
        dataset = register_chat_dataset(services.registry, write_jsonl(tmp_path / f"task{i}.jsonl", chat_rows(12)))
        row = services.registry.add_adapter(
            name=f"task{i}", variant="lora", base_model=str(tiny_llama), path=str(path), sha256="0" * 64,
            dataset_id=dataset.id,
        )  # fmt: skip
        ids.append(row.id)
    return ids


def test_the_section_builds_both_forms_from_their_schemas(services):
    with gr.Blocks() as demo, gr.Tab("Transfer & Generate") as tab:
        parts = generate_section.build_generate_section(services, tab, demo)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {
        "generator-adapters",
        "generator-submit",
        "generate-generator",
        "generate-dataset",
        "generate-submit",
    } <= ids
    assert set(parts["forms"]["generator"].names) == set(generate_section.GENERATOR_FIELDS)
    assert set(parts["forms"]["generate"].names) == set(generate_section.GENERATE_FIELDS)


def test_a_generator_then_a_generate_job_are_queued_from_the_forms(services, task_adapters, tiny_llama, tmp_path):
    assert [value for _, value in generate_section.source_choices(services)] == sorted(task_adapters, reverse=True)
    line = generate_section.submit_generator(services, task_adapters, {"preset": "tiny", "epochs": 5})
    job = services.jobs.list(kind="generator")[0]
    assert line.startswith(
        f"Queued generator job #{job.id} over #{task_adapters[0]}, #{task_adapters[1]} (tiny, 5 epochs)"
    )
    assert job.request["adapter_ids"] == task_adapters and job.request["epochs"] == 5
    assert services.jobs.dispatcher.sent == [job.id]

    # once the generator is registered it is offered (and not as a source adapter to learn)
    generator = services.registry.add_adapter(
        name="gen", variant=generate_section.GENERATOR_VARIANT, base_model=str(tiny_llama), path=str(tmp_path),
        sha256="0" * 64, parents=task_adapters,
    )  # fmt: skip
    assert [value for _, value in generate_section.generator_choices(services)] == [generator.id]
    assert generator.id not in [value for _, value in generate_section.source_choices(services)]
    new_task = register_chat_dataset(services.registry, write_jsonl(tmp_path / "new.jsonl", chat_rows(30)), rows=30)
    assert new_task.id in [value for _, value in generate_section.dataset_choices(services)]
    line = generate_section.submit_generate(services, generator.id, new_task.id, {"examples": 30, "seed": 3})
    made = services.jobs.list(kind="generate")[0]
    assert line.startswith(f"Queued generate job #{made.id}; the new adapter appears in Adapters")
    assert made.request["generator_id"] == generator.id and made.request["dataset_id"] == new_task.id
    assert made.request["seed"] == 3


def test_refusals_name_the_field_and_queue_nothing(services, task_adapters, tiny_llama):
    with pytest.raises(ValidationFailed, match="Adapters: choose the adapters of at least two tasks"):
        generate_section.submit_generator(services, task_adapters[:1], {})
    with pytest.raises(ValidationFailed, match="Generator: choose a trained generator"):
        generate_section.submit_generate(services, None, 1, {})
    with pytest.raises(ValidationFailed, match="Dataset: choose a dataset"):
        generate_section.submit_generate(services, task_adapters[0], None, {})
    # a plain LoRA is not a generator: refused at submit with the reason
    dataset = services.registry.get_adapter(task_adapters[0]).dataset_id
    with pytest.raises(ValidationFailed, match="is a lora adapter, not a generator"):
        generate_section.submit_generate(services, task_adapters[0], dataset, {})
    assert services.jobs.list(kind="generator") == [] and services.jobs.list(kind="generate") == []


def test_a_source_without_a_training_dataset_says_so_in_words(services, task_adapters, tiny_llama, tiny_loras):
    """A merged or transferred adapter has no dataset: its label said 'dataset #None'."""
    merged = services.registry.add_adapter(
        name="merged", variant="lora", base_model=str(tiny_llama), path=str(tiny_loras[0]), sha256="0" * 64
    )
    labels = dict((value, label) for label, value in generate_section.source_choices(services))
    assert "None" not in labels[merged.id]
    assert labels[merged.id].endswith("no training dataset: cannot be a task)")
    dataset = services.registry.get_adapter(task_adapters[0]).dataset_id
    assert labels[task_adapters[0]].endswith(f", dataset #{dataset})")
