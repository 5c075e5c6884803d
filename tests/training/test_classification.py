"""Sequence classification: a tiny BERT encoder and a tiny Llama, head trained in full (modules_to_save)."""

from __future__ import annotations

import pytest
import torch
from conftest_training import classification_rows, cpu_device, make_request, write_jsonl

from studio.progress import MemoryReporter
from studio.training.data import eval_batches
from studio.training.loop import run_training
from studio.training.losses import evaluate
from studio.training.setup import TrainingData
from studio.training.tokenise import encode_rows


@pytest.fixture
def sentiment(tmp_path):
    report = {"task": "classification", "labels": ["negative", "positive"]}
    return TrainingData(path=write_jsonl(tmp_path / "sent.jsonl", classification_rows(16)), report=report)


def train(base_dir, data, tmp_path, variant="lora", reporter=None, **hyper):
    settings = dict(max_steps=30, batch_size=8, learning_rate=1e-2, validation_fraction=0.25, eval_every=10)
    settings.update(hyper)
    request = make_request(variant, **settings)
    return run_training(
        request,
        reporter or MemoryReporter(),
        settings=None,
        device=cpu_device(),
        work_dir=tmp_path / "work",
        dataset=data,
        base_path=base_dir,
    )


def accuracy_on(result, rows):
    examples = encode_rows(rows, result.tokenizer, task="classification", max_length=32, labels=result.labels)
    batches = list(eval_batches(examples.examples, 8, result.pad_id))
    return evaluate(result.model, batches, "classification").accuracy


def test_encoder_classifier_separates_a_toy_set(tiny_bert_dir, sentiment, tmp_path):
    reporter = MemoryReporter()
    result = train(tiny_bert_dir, sentiment, tmp_path, reporter=reporter)
    assert result.task == "classification" and result.modules_to_save == ["classifier"]
    assert accuracy_on(result, classification_rows(16)) >= 0.9
    # Validation loss and accuracy are reported during training and at the end.
    assert [step for step, _ in reporter.series("eval_accuracy")] == [10, 20, 30]
    assert result.eval_accuracy is not None and result.eval_loss == reporter.series("eval_loss")[-1][1]


def test_causal_lm_classifier_saves_its_head_and_reloads(tiny_llama_dir, sentiment, tmp_path):
    from peft import PeftModel

    result = train(tiny_llama_dir, sentiment, tmp_path, max_steps=4, task="classification")
    assert result.modules_to_save == ["score"] and result.model.config.pad_token_id is not None
    out = tmp_path / "adapter"
    result.variant.save_adapter(result.model, out, result.export_context())
    ids = torch.randint(8, 60, (2, 6), generator=torch.Generator().manual_seed(0))
    result.model.eval()
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(result.export_context().fresh_base(), str(out)).eval()
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_task_comes_from_the_dataset_and_encoders_refuse_text_generation(tiny_bert_dir, sentiment, tmp_path):
    from studio.errors import ValidationFailed

    chat = TrainingData(path=write_jsonl(tmp_path / "t.jsonl", [{"text": "hello"}] * 4), report={"task": "causal-lm"})
    with pytest.raises(ValidationFailed, match="encoder"):
        train(tiny_bert_dir, chat, tmp_path, max_steps=1)
