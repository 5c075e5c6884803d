"""The transfer kit on disk: seeds picked reproducibly from the rows, a PEFT discriminator, kit.json."""

from __future__ import annotations

import json

import pytest

from studio.errors import ValidationFailed
from studio.transfer.kit import KIT_DIR, load_transfer_kit
from studio.transfer.synth import fewshot_prompt, pick, task_examples


def test_seeds_are_a_reproducible_pick_of_the_rows():
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(20)
    ]
    examples = task_examples(rows)
    assert pick(examples, 5, 0) == pick(examples, 5, 0)
    assert pick(examples, 5, 0) != pick(examples, 5, 1)
    assert len(pick(examples, 5, 0)) == 5 and pick(examples[:3], 5, 0) == examples[:3]


def test_plain_text_rows_are_refused():
    with pytest.raises(ValidationFailed):
        task_examples([{"text": "no task input here"}])


def test_fewshot_prompt_ends_where_the_model_continues():
    from studio.transfer.options import FewShotFormat

    prompt = fewshot_prompt(["a b", "c\nd"], FewShotFormat(header="H", prefix="In:"))
    assert prompt == "H\nIn: a b\nIn: c d\nIn:"


@pytest.mark.slow
def test_kit_is_written_next_to_the_adapter(kit, teacher):
    from peft import PeftConfig

    adapter, rows = teacher
    assert kit.path == adapter / KIT_DIR
    inputs = {r["messages"][0]["content"] for r in rows}
    assert len(kit.seeds) == 5 and all(s["input"] in inputs for s in kit.seeds)
    assert PeftConfig.from_pretrained(str(kit.discriminator_dir)).peft_type == "LORA"
    meta = json.loads((kit.path / "kit.json").read_text())
    assert meta["positives"] == 48 and 0 < meta["negatives"] <= 48
    assert 0.0 <= meta["discriminator_train_accuracy"] <= 1.0
    again = load_transfer_kit(adapter)  # from the adapter dir too
    assert again.seeds == kit.seeds and again.fewshot == kit.fewshot
