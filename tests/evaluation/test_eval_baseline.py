"""The evaluation job's optional baseline: logistic regression beside the model, stored next to its scores."""

from __future__ import annotations

import random

import pytest
import torch
from pydantic import ValidationError

from studio.errors import ValidationFailed
from studio.evaluation.comparison import column_name
from studio.evaluation.job import run_eval_job
from studio.progress import MemoryReporter
from studio.schema import EvalRequest
from studio.sequences.baseline import MODEL_KEY


def gc_rows(n, seed):
    """ "gc" rows are GC-rich, "at" rows AT-rich: a logistic regression on 1-mer shares separates them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("at", "gc")[i % 2]
        gc = 0.65 if label == "gc" else 0.35
        length = rng.randint(60, 100)
        rows.append(
            {
                "text": "".join(rng.choice("GC") if rng.random() < gc else rng.choice("AT") for _ in range(length)),
                "label": label,
            }
        )
    return rows


def constant_classifier(env, bert_dir, dataset_id):
    """A LoRA classifier on the tiny BERT whose head always answers class index 1 ("gc")."""
    from peft import LoraConfig, get_peft_model

    from studio.training.models import load_base_model

    torch.manual_seed(0)
    base = load_base_model(bert_dir, "classification", ["at", "gc"], pad_token_id=0)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    head = model.base_model.model.classifier.modules_to_save["default"]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 5.0]))
    return env.add_adapter(model, str(bert_dir), dataset_id, name="classifier")


def test_baseline_stands_beside_the_model(env, tiny_bert_dir, single_thread):
    train = env.add_dataset(gc_rows(80, 0), name="train")
    test = env.add_dataset(gc_rows(40, 1), name="test")
    adapter = constant_classifier(env, tiny_bert_dir, train.id)
    request = EvalRequest(adapter_id=adapter.id, dataset_id=test.id, metrics=["accuracy"], include_baseline=True)
    result = run_eval_job(request, MemoryReporter(), env.ctx)

    # The model always answers "gc": half right, F1 of "gc" 2/3 (precision 1/2, recall 1), no correlation,
    # no ranking (every score equal).
    assert result["metrics"] == pytest.approx({"accuracy": 0.5, "f1": 2 / 3, "mcc": 0.0, "auroc": 0.5})
    model = result["models"][0]
    assert model["confusion"] == {"labels": ["at", "gc"], "matrix": [[0, 20], [0, 20]]}
    assert model["roc"][0]["label"] == "gc" and model["roc"][0]["fpr"] == [0.0, 1.0]
    baseline = result["baseline"]
    assert baseline["train_rows"] == 80 and baseline["test_rows"] == 40  # fit on the adapter's training rows
    assert baseline["features"] == "nucleotide"
    assert baseline["metrics"]["accuracy"] >= 0.9 and baseline["metrics"]["auroc"] >= 0.95
    assert sum(map(sum, baseline["confusion"]["matrix"])) == 40
    assert baseline["roc"][0]["auroc"] == baseline["metrics"]["auroc"]  # its curve, for the ROC chart
    keys = [m["key"] for m in result["models"]]
    assert keys == [f"adapter:{adapter.id}", MODEL_KEY]
    accuracy = next(r for r in result["comparison"] if r["metric"] == "accuracy")
    assert accuracy["values"] == {f"adapter:{adapter.id}": 0.5, MODEL_KEY: baseline["metrics"]["accuracy"]}
    assert accuracy["best"] == [MODEL_KEY]
    stored = {r.metric: r.value for r in env.registry.eval_results(dataset_id=test.id, model_key=MODEL_KEY)}
    assert stored == pytest.approx(baseline["metrics"])
    assert column_name(MODEL_KEY) == "baseline logistic-regression"


def test_baseline_refusals(env, tiny_bert_dir, tiny_llama_dir):
    train = env.add_dataset(gc_rows(20, 0), name="train")
    test = env.add_dataset(gc_rows(10, 1), name="test")
    # A base model alone names no training rows.
    with pytest.raises(ValidationFailed, match="give baseline_dataset_id"):
        run_eval_job(
            EvalRequest(base_model=str(tiny_bert_dir), dataset_id=test.id, metrics=["accuracy"], include_baseline=True),
            MemoryReporter(),
            env.ctx,
        )
    with pytest.raises(ValidationError, match="other rows than it is scored on"):
        EvalRequest(base_model="x", dataset_id=test.id, include_baseline=True, baseline_dataset_id=test.id)
    with pytest.raises(ValidationError, match="set include_baseline"):
        EvalRequest(base_model="x", dataset_id=test.id, baseline_dataset_id=train.id)
    chat = env.add_dataset([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    with pytest.raises(ValidationFailed, match="baseline is fit for classification datasets"):
        run_eval_job(
            EvalRequest(
                base_model=str(tiny_llama_dir), dataset_id=chat.id, include_baseline=True, baseline_dataset_id=train.id
            ),
            MemoryReporter(),
            env.ctx,
        )


def test_cli_queues_the_baseline(monkeypatch, settings, tmp_path):
    import json

    from click.testing import CliRunner

    from studio.cli import cli
    from studio.cli.common import services

    monkeypatch.setenv("STUDIO_DATA_DIR", str(settings.data_dir))
    services.cache_clear()
    for name, seed in (("train", 0), ("test", 1)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gc_rows(6, seed)))
    runner = CliRunner()
    args = ["eval", "--base", "m", "--dataset", str(tmp_path / "train.jsonl")]
    assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0  # imports train as dataset 1
    args = ["eval", "--base", "m", "--dataset", str(tmp_path / "test.jsonl"), "--baseline-dataset", "1"]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    request = services().jobs.get(2).request
    assert request["include_baseline"] is True and request["baseline_dataset_id"] == 1
    assert services().jobs.get(1).request["include_baseline"] is False
