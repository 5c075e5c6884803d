"""One eval job comparing the base and several adapters: side-by-side metrics, Δ vs base, samples, one base load."""

from __future__ import annotations

import pytest

from studio.errors import ValidationFailed
from studio.evaluation.comparison import compare_models
from studio.schema import EvalRequest
from tests.evaluation.test_eval_job import ROWS, evaluate, lora_model, trained_adapter  # noqa: F401 - a fixture


def test_compare_models_marks_direction_best_and_delta():
    models = [
        {"key": "base:m", "metrics": {"eval_loss": 2.0, "exact_match": 0.25}},
        {"key": "adapter:1", "metrics": {"eval_loss": 1.5, "exact_match": 0.5}},
        {"key": "adapter:2", "metrics": {"eval_loss": 1.75, "exact_match": 0.5}},
    ]
    loss, match = compare_models(models)
    assert loss["metric"] == "eval_loss" and loss["direction"] == "lower"
    assert loss["best"] == ["adapter:1"]
    assert loss["delta_vs_base"] == {"adapter:1": -0.5, "adapter:2": -0.25}
    assert match["direction"] == "higher" and match["best"] == ["adapter:1", "adapter:2"]  # a tie marks both
    assert match["delta_vs_base"] == {"adapter:1": 0.25, "adapter:2": 0.25}

    without_base = compare_models(models[1:])
    assert without_base[0]["delta_vs_base"] == {} and without_base[0]["best"] == ["adapter:1"]
    diverged = compare_models([{"key": "base:m", "metrics": {"perplexity": None}}, models[1]])
    assert diverged[0]["metric"] == "perplexity" and diverged[0]["best"] == []


@pytest.mark.usefixtures("single_thread")
def test_one_job_compares_base_and_adapters_on_one_loaded_base(env, tiny_llama_dir, monkeypatch, request):
    from studio.evaluation import loading

    learnt = request.getfixturevalue("trained_adapter")  # the module fixture of test_eval_job

    dataset = env.add_dataset(ROWS)
    base = str(tiny_llama_dir)
    zero = env.add_adapter(lora_model(tiny_llama_dir), base, dataset.id, name="zero")
    trained = env.add_adapter(learnt, base, dataset.id, name="trained")
    metrics = ["loss", "exact_match", "rouge_l"]
    alone = {
        key: evaluate(env, dataset_id=dataset.id, metrics=metrics, **fields)[0]["metrics"]
        for key, fields in (
            (f"base:{base}", {"base_model": base}),
            (f"adapter:{zero.id}", {"adapter_id": zero.id}),
            (f"adapter:{trained.id}", {"adapter_id": trained.id}),
        )
    }

    loads = []
    real_load_base = loading.load_base
    monkeypatch.setattr(loading, "load_base", lambda *a, **k: loads.append(a[0]) or real_load_base(*a, **k))
    result, reporter = evaluate(
        env, base_model=base, adapter_ids=[zero.id, trained.id], dataset_id=dataset.id, metrics=metrics
    )
    assert loads == [base]  # the base was loaded once; the adapters were swapped onto it

    keys = [m["key"] for m in result["models"]]
    assert keys == [f"base:{base}", f"adapter:{zero.id}", f"adapter:{trained.id}"]
    # Swapping adapters on one base scores each model exactly as evaluating it alone does.
    for model in result["models"]:
        assert model["metrics"] == pytest.approx(alone[model["key"]])
    assert "metrics" not in result  # no flat metrics: they would belong to one model of several

    by_metric = {row["metric"]: row for row in result["comparison"]}
    assert [row["metric"] for row in result["comparison"]] == ["eval_loss", "perplexity", "exact_match", "rouge_l"]
    assert by_metric["eval_loss"]["direction"] == "lower" and by_metric["exact_match"]["direction"] == "higher"
    assert by_metric["eval_loss"]["best"] == [f"adapter:{trained.id}"]
    base_loss = alone[f"base:{base}"]["eval_loss"]
    assert by_metric["eval_loss"]["delta_vs_base"] == pytest.approx(
        {k: alone[k]["eval_loss"] - base_loss for k in keys[1:]}
    )
    assert by_metric["eval_loss"]["delta_vs_base"][f"adapter:{zero.id}"] == 0.0  # B = 0 adds nothing

    table = result["sample_table"]
    assert [row["prompt"] for row in table] == ["user: What is 2+3?", "user: What is 1+4?", "user: What is 3+4?"]
    third = table[2]
    assert third["reference"] == "#### 7" and list(third["answers"]) == keys
    assert third["answers"][f"adapter:{trained.id}"] == {
        "prediction": "#### 5",
        "truncated": False,
        "exact_match": False,
        "rouge_l": 0.5,
    }
    # Every model's series is kept apart in the job's metrics.
    assert reporter.series(f"adapter:{trained.id}/exact_match") == [(3, pytest.approx(2 / 3))]
    stored = {(r.model_key, r.metric) for r in env.registry.eval_results(dataset_id=dataset.id)}
    assert {(k, "rouge_l") for k in keys} <= stored


def test_a_comparison_takes_adapters_of_one_base(env, tiny_llama_dir):
    dataset = env.add_dataset(ROWS)
    on_llama = env.add_adapter(lora_model(tiny_llama_dir), str(tiny_llama_dir), dataset.id, name="llama")
    other = env.registry.add_adapter(
        name="other", variant="lora", base_model="another-base", path=on_llama.path, sha256="0" * 64
    )
    with pytest.raises(ValidationFailed, match="adapters of one base model; these differ"):
        evaluate(env, adapter_ids=[on_llama.id, other.id], dataset_id=dataset.id)
    with pytest.raises(ValidationFailed, match=f"adapter {on_llama.id} is for base model .*, not another-base"):
        evaluate(env, base_model="another-base", adapter_ids=[on_llama.id], dataset_id=dataset.id)


def test_eval_request_models():
    request = EvalRequest(adapter_id=3, adapter_ids=[4, 3, 5], dataset_id=1)
    assert request.adapters() == [3, 4, 5]
    with pytest.raises(ValueError, match="give a base model, an adapter, or both"):
        EvalRequest(dataset_id=1)
    with pytest.raises(ValueError, match="ranks: measure the loss by rank of one DyLoRA adapter alone"):
        EvalRequest(adapter_ids=[1, 2], dataset_id=1, ranks=[2])
    with pytest.raises(ValueError, match="at most 8"):
        EvalRequest(adapter_ids=list(range(1, 10)), dataset_id=1)
