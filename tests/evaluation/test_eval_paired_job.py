"""The evaluation job's paired comparisons: every adapter vs the baseline, vs the base and vs each other."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from studio.evaluation.comparison import comparison_lines
from studio.evaluation.job import ModelScore, _paired, run_eval_job
from studio.progress import MemoryReporter
from studio.schema import EvalRequest
from studio.sequences.baseline import MODEL_KEY

LABELS = ["at", "gc"]


def dna_rows(n, seed):
    """Alternating "at" (AT-rich) and "gc" (GC-rich) rows: the baseline's 1-mer shares separate them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 2]
        gc = 0.65 if label == "gc" else 0.35
        text = "".join(rng.choice("GC") if rng.random() < gc else rng.choice("AT") for _ in range(rng.randint(60, 100)))
        rows.append({"text": text, "label": label})
    return rows


def set_constant_head(head, answer: int) -> None:
    """A head that always answers class ``answer`` whatever the text."""
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([5.0 if i == answer else 0.0 for i in range(len(LABELS))]))


@pytest.fixture
def classifier_base(tiny_bert_dir, tmp_path):
    """The tiny BERT saved with a trained-looking head (always "at"), so the base itself can be evaluated."""
    from transformers import AutoTokenizer

    from studio.training.models import load_base_model

    torch.manual_seed(0)
    model = load_base_model(tiny_bert_dir, "classification", LABELS, pad_token_id=0)
    set_constant_head(model.classifier, 0)
    path = tmp_path / "classifier-base"
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(path)
    return path


def constant_adapter(env, base_dir, dataset_id, answer: int, name: str):
    from peft import LoraConfig, get_peft_model

    from studio.training.models import load_base_model

    torch.manual_seed(0)
    base = load_base_model(base_dir, "classification", LABELS, pad_token_id=0)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    set_constant_head(model.base_model.model.classifier.modules_to_save["default"], answer)
    return env.add_adapter(model, str(base_dir), dataset_id, name=name)


def test_every_adapter_is_paired_with_the_baseline_the_base_and_each_other(env, classifier_base, single_thread):
    train = env.add_dataset(dna_rows(80, 0), name="train")
    test = env.add_dataset(dna_rows(40, 1), name="test")
    says_gc = constant_adapter(env, classifier_base, train.id, 1, "says-gc")
    says_at = constant_adapter(env, classifier_base, train.id, 0, "says-at")
    request = EvalRequest(
        base_model=str(classifier_base),
        adapter_ids=[says_gc.id, says_at.id],
        dataset_id=test.id,
        metrics=["accuracy"],
        include_baseline=True,
    )
    result = run_eval_job(request, MemoryReporter(), env.ctx)

    gc_key, at_key, base_key = f"adapter:{says_gc.id}", f"adapter:{says_at.id}", f"base:{classifier_base}"
    accuracy = {m["key"]: m["metrics"]["accuracy"] for m in result["models"]}
    assert accuracy[gc_key] == accuracy[at_key] == accuracy[base_key] == 0.5
    pairs = {(e["a"], e["b"]): e for e in result["paired"]}
    assert list(pairs) == [
        (gc_key, MODEL_KEY),
        (gc_key, base_key),
        (at_key, MODEL_KEY),
        (at_key, base_key),
        (gc_key, at_key),
    ]
    for (a, b), entry in pairs.items():
        assert entry["rows"] == 40  # every row scored by every model
        assert entry["accuracy_a"] == pytest.approx(accuracy[a]) and entry["accuracy_b"] == pytest.approx(accuracy[b])
        assert entry["only_a"] - entry["only_b"] == round(entry["difference"] * entry["rows"])
    # The base always answers "at", like one adapter: nothing to tell apart.
    same = pairs[(at_key, base_key)]
    assert same["only_a"] == same["only_b"] == 0 and same["p_value"] == 1.0
    # "gc" and "at" each get their own 20 rows right: a real disagreement, no difference in accuracy.
    opposite = pairs[(gc_key, at_key)]
    assert (opposite["only_a"], opposite["only_b"], opposite["verdict"]) == (20, 20, "no clear difference")
    # The baseline separates the classes well: clearly better than an adapter that answers one class.
    versus_baseline = pairs[(gc_key, MODEL_KEY)]
    assert versus_baseline["verdict"] == "B better" and versus_baseline["ci_high"] < 0
    assert "test_correct" not in result["baseline"]  # the per-row list stays out of the stored result
    assert "test_predicted" not in result["baseline"]
    # The samples table has the baseline's column too: the same first rows, each with its prediction.
    test_rows = dna_rows(40, 1)
    assert [s["prompt"] for s in result["sample_table"]] == [r["text"] for r in test_rows[:5]]
    for sample, row in zip(result["sample_table"], test_rows, strict=False):
        assert sample["reference"] == row["label"]
        assert sample["answers"][gc_key] == {"prediction": "gc", "correct": row["label"] == "gc"}
        guess = sample["answers"][MODEL_KEY]
        assert guess["prediction"] in LABELS and guess["correct"] == (guess["prediction"] == row["label"])
    baseline_right = sum(s["answers"][MODEL_KEY]["correct"] for s in result["sample_table"])
    assert baseline_right >= 4  # it separates these classes well (see the paired verdict above)
    lines = comparison_lines(result)
    assert f"adapter #{says_gc.id} vs baseline logistic-regression: " in "\n".join(lines)
    assert lines[-1].endswith("no clear difference on these 40 rows.")  # the adapter pair comes last


def test_a_language_dataset_has_no_paired_comparison(env, tiny_llama_dir, single_thread):
    chats = env.add_dataset(
        [{"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "#### 5"}]}] * 3
    )
    result = run_eval_job(
        EvalRequest(base_model=str(tiny_llama_dir), dataset_id=chats.id, metrics=["loss"]), MemoryReporter(), env.ctx
    )
    assert result["paired"] == []


def test_pairs_use_only_rows_both_models_scored():
    adapter = ModelScore("adapter:1", "a", 1, correct=[True, True, None, False, True])
    baseline = SimpleNamespace(test_correct=[True, None, True, True, False])
    [entry] = _paired([adapter], baseline)
    assert (entry["a"], entry["b"]) == ("adapter:1", MODEL_KEY)
    assert entry["rows"] == 3 and entry["only_a"] == 1 and entry["only_b"] == 1  # rows 0, 3, 4
    # No row in common: no entry rather than an error.
    assert _paired([adapter], SimpleNamespace(test_correct=[None, None, True, None, None])) == []


def test_the_baseline_marks_each_test_row_right_wrong_or_unscored():
    from studio.sequences.baseline import fit_baseline

    test = dna_rows(10, 1)
    test[2] = {"label": "gc"}  # no text
    test[5] = {**test[5], "label": "unseen"}  # a label the train rows never had
    result = fit_baseline(dna_rows(60, 0), test)
    assert len(result.test_correct) == 10
    assert result.test_correct[2] is None and result.test_correct[5] is None
    scored = [c for c in result.test_correct if c is not None]
    assert len(scored) == result.test_rows == 8
    assert sum(scored) / len(scored) == pytest.approx(result.metrics["accuracy"])
    assert result.test_predicted[2] is None and result.test_predicted[5] is None
    for guess, right, row in zip(result.test_predicted, result.test_correct, test, strict=True):
        if right is not None:
            assert guess in LABELS and type(guess) is str and right == (guess == row["label"])
    assert "test_correct" not in result.to_dict() and "test_predicted" not in result.to_dict()


def test_class_samples_keep_each_row_in_its_place_when_one_is_not_scored():
    from studio.evaluation.job import _class_samples

    rows = [{"text": f"seq{i}", "label": LABELS[i % 2]} for i in range(7)]
    # Row 1 was left out (say, a label the head lacks): the predictions are of rows 0, 2, 3, 4, 5, 6.
    samples = _class_samples(rows, LABELS, [0, 1, 1, 0, 0, 1], [0, 0, 1, 0, 1, 0], [0, 2, 3, 4, 5, 6])
    assert [s["prompt"] for s in samples] == ["seq0", "seq1", "seq2", "seq3", "seq4"]
    assert samples[1] == {"prompt": "seq1", "reference": "gc", "prediction": ""}
    assert samples[2] == {"prompt": "seq2", "reference": "at", "prediction": "gc", "correct": False}
    assert samples[3]["prediction"] == "gc" and samples[3]["correct"] is True
