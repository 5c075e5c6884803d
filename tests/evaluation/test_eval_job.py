"""run_eval_job end to end on tiny random models, a SQLite registry and real PEFT adapters."""

from __future__ import annotations

import json
import math

import pytest
import torch

from studio.errors import JobCancelled, StudioError, ValidationFailed
from studio.evaluation.job import run_eval_job
from studio.progress import MemoryReporter
from studio.schema import SCHEMA_VERSION, EvalRequest

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


# The trained adapter below learns to answer "#### 5" (the first two rows); the third row wants 7.
ROWS = [chat("What is 2+3?", "#### 5"), chat("What is 1+4?", "#### 5"), chat("What is 3+4?", "#### 7")]


def lora_model(base_dir, init_lora_weights=True, seed=0):
    from peft import LoraConfig, get_peft_model

    from studio.training.models import load_base_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=LLAMA_TARGETS,
        task_type="CAUSAL_LM",
        init_lora_weights=init_lora_weights,
        modules_to_save=["lm_head"],  # a random tiny model needs its head trained to learn anything quickly
    )
    return get_peft_model(load_base_model(base_dir, "causal-lm"), config)


@pytest.fixture(scope="module")
def trained_adapter(tiny_llama_dir, tmp_path_factory):
    """A LoRA trained with training's own tokenisation and loss until it answers '#### 5'."""
    from studio.training.data import collate
    from studio.training.losses import loss_sum, target_count
    from studio.training.models import load_tokenizer_for
    from studio.training.tokenise import encode_rows

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer = load_tokenizer_for(tiny_llama_dir)
    batch = collate(encode_rows(ROWS[:2], tokenizer, task="causal-lm", max_length=128).examples, 2)
    model = lora_model(tiny_llama_dir)
    # lr 1e-2: at 2e-2 the loss reached 0.05 and then oscillated around 1 for the rest of the 1,000 steps
    # (transformers 5.25 / torch 2.13); at 1e-2 it falls below 1e-3 in ~450 steps.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    # Train until the answer is learnt rather than for a fixed count: how many steps a random
    # tiny model needs moves with the library versions that initialise it.
    for _ in range(1000):
        value, _ = loss_sum(model, batch, "causal-lm")
        loss = value / target_count(batch, "causal-lm")
        if loss.item() < 1e-3:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 1e-3, f"the fixture's adapter did not learn its answer (loss {loss.item():.4f})"
    torch.set_num_threads(threads)
    return model.eval()


def manual_response_loss(model_dir, rows) -> float:
    """Response-only mean token loss computed directly: every token after the generation prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    for row in rows:
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        targets = ids[0, start:]
        total += float(torch.nn.functional.cross_entropy(logits[start - 1 : -1], targets, reduction="sum"))
        count += len(targets)
    return total / count


def evaluate(env, **fields):
    reporter = MemoryReporter()
    return run_eval_job(EvalRequest(**fields), reporter, env.ctx), reporter


def test_zero_initialised_lora_scores_exactly_the_base_loss(env, tiny_llama_dir, single_thread):
    dataset = env.add_dataset(ROWS)
    adapter = env.add_adapter(lora_model(tiny_llama_dir), str(tiny_llama_dir), dataset.id)
    base, base_reporter = evaluate(env, base_model=str(tiny_llama_dir), dataset_id=dataset.id)
    with_adapter, _ = evaluate(env, adapter_id=adapter.id, dataset_id=dataset.id)

    loss = base["metrics"]["eval_loss"]
    assert with_adapter["metrics"]["eval_loss"] == loss  # B = 0: the adapter adds exactly nothing
    assert loss == pytest.approx(manual_response_loss(tiny_llama_dir, ROWS), rel=1e-5)
    assert base["metrics"]["perplexity"] == pytest.approx(math.exp(loss))
    assert base_reporter.series("eval_loss") == [(3, loss)]  # step = rows evaluated
    assert base_reporter.steps[-1][:2] == (1, 1)  # one loss batch, progress complete
    stored = {(r.model_key, r.metric): r.value for r in env.registry.eval_results(dataset_id=dataset.id)}
    assert stored[(f"adapter:{adapter.id}", "eval_loss")] == loss
    assert stored[(f"base:{tiny_llama_dir}", "eval_loss")] == loss
    assert env.registry.get_adapter(adapter.id).metrics == {}  # training's metrics are left alone


def test_trained_adapter_through_the_job_runner(env, tiny_llama_dir, trained_adapter, single_thread):
    from studio.device import detect_device
    from studio.jobs.runner import WorkerIdentity, execute_job

    dataset = env.add_dataset(ROWS)
    adapter = env.add_adapter(trained_adapter, str(tiny_llama_dir), dataset.id, name="trained")
    request = EvalRequest(
        adapter_id=adapter.id, dataset_id=dataset.id, metrics=["loss", "exact_match", "rouge_l"], max_new_tokens=8
    )
    job = env.registry.create_job(
        kind="eval", name="eval", request=request.model_dump(mode="json"), schema_version=SCHEMA_VERSION, seed=0
    )
    status = execute_job(job.id, env.registry, env.settings, WorkerIdentity("w1", detect_device("cpu")))
    job = env.registry.get_job(job.id)
    assert status == "succeeded", job.error

    result = job.result
    assert [s["prediction"] for s in result["samples"]] == ["#### 5", "#### 5", "#### 5"]
    assert result["samples"][2] == {
        "prompt": "user: What is 3+4?",
        "reference": "#### 7",
        "prediction": "#### 5",
        "truncated": False,
        "exact_match": False,
        "rouge_l": 0.5,  # tokens [####, 5] vs [####, 7]: LCS 1, P = R = 1/2
    }
    metrics = result["metrics"]
    assert metrics["exact_match"] == pytest.approx(2 / 3)
    assert metrics["rouge_l"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))

    stored = {row.name: (row.step, row.value) for row in env.registry.metrics(job.id)}
    assert stored == {name: (3, pytest.approx(value)) for name, value in metrics.items()}
    results = env.registry.eval_results(adapter_id=adapter.id)
    assert {r.metric: r.value for r in results} == pytest.approx(metrics)
    assert {r.job_id for r in results} == {job.id}
    assert job.progress == 1.0


def test_budget_is_sized_from_the_references_and_cut_answers_are_counted(
    env, tiny_llama_dir, trained_adapter, single_thread
):
    from studio.evaluation.generate import sized_budget
    from studio.training.models import load_tokenizer_for

    dataset = env.add_dataset(ROWS)
    adapter = env.add_adapter(trained_adapter, str(tiny_llama_dir), dataset.id, name="trained")
    # "#### 5" is 6 byte tokens: 1.25 × 6 + 8 = 15.5, rounded up.
    assert sized_budget(load_tokenizer_for(tiny_llama_dir), ["#### 5", "#### 7"], cap=1024) == 16
    assert sized_budget(load_tokenizer_for(tiny_llama_dir), ["#### 5"], cap=10) == 10

    sized, reporter = evaluate(env, adapter_id=adapter.id, dataset_id=dataset.id, metrics=["exact_match"])
    assert sized["max_new_tokens"] == 16 and sized["truncated_answers"] == 0
    assert sized["metrics"]["exact_match"] == pytest.approx(2 / 3)

    # Three tokens cannot hold "#### 5" and its end-of-turn token: every answer is cut off, and said so.
    cut, reporter = evaluate(
        env, adapter_id=adapter.id, dataset_id=dataset.id, metrics=["exact_match", "rouge_l"], max_new_tokens=3
    )
    assert cut["truncated_answers"] == 3 and cut["metrics"]["exact_match"] == 0.0
    assert [s["truncated"] for s in cut["samples"]] == [True, True, True]
    assert any("3 of 3 answers hit the 3-token budget" in message for _level, message in reporter.logs)
    stored = {r.metric: (r.truncated, r.max_new_tokens) for r in env.registry.eval_results(adapter_id=adapter.id)}
    assert stored == {"exact_match": (3, 3), "rouge_l": (3, 3)}


def test_evaluating_never_overwrites_the_training_metrics(env, tiny_llama_dir, single_thread):
    dataset = env.add_dataset(ROWS)
    adapter = env.add_adapter(lora_model(tiny_llama_dir), str(tiny_llama_dir), dataset.id)
    env.registry.update_adapter_metrics(adapter.id, {"eval_loss": 0.125, "final_loss": 0.1})  # as training wrote
    first, _ = evaluate(env, adapter_id=adapter.id, dataset_id=dataset.id)
    again, _ = evaluate(env, adapter_id=adapter.id, dataset_id=dataset.id, max_examples=2)

    assert env.registry.get_adapter(adapter.id).metrics == {"eval_loss": 0.125, "final_loss": 0.1}
    # One row per (model, dataset, metric): the later evaluation replaces the earlier one.
    rows = env.registry.eval_results(adapter_id=adapter.id)
    assert sorted(r.metric for r in rows) == ["eval_loss", "perplexity"]
    assert {r.metric: (r.value, r.examples) for r in rows}["eval_loss"] == (again["metrics"]["eval_loss"], 2)
    assert again["metrics"]["eval_loss"] != first["metrics"]["eval_loss"]


def test_batched_left_padded_generation_equals_one_by_one(tiny_llama_dir, single_thread):
    from studio.evaluation.generate import generate_answers
    from studio.training.models import load_base_model, load_tokenizer_for

    tokenizer = load_tokenizer_for(tiny_llama_dir)
    model = load_base_model(tiny_llama_dir, "causal-lm").eval()
    prompts = [[{"role": "user", "content": q}] for q in ("hi", "a much longer question, padded less", "mid size")]
    kwargs = dict(max_new_tokens=6, max_prompt_tokens=200, device="cpu")
    batched = generate_answers(model, tokenizer, prompts, **kwargs)
    assert batched == [generate_answers(model, tokenizer, [p], **kwargs)[0] for p in prompts]
    assert tokenizer.padding_side == "right"  # restored after generation


def classification_adapter(env, bert_dir, labels, dataset_id):
    """A LoRA classifier whose head ignores its input: logits = (0, 5), i.e. always class index 1."""
    from peft import LoraConfig, get_peft_model

    from studio.training.models import load_base_model

    torch.manual_seed(0)
    base = load_base_model(bert_dir, "classification", labels, pad_token_id=0)
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    head = model.base_model.model.classifier.modules_to_save["default"]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 5.0]))
    return env.add_adapter(model, str(bert_dir), dataset_id, name="classifier")


SENTIMENT = [
    {"text": "awful film", "label": "neg"},
    {"text": "great film", "label": "pos"},
    {"text": "loved it", "label": "pos"},
    {"text": "fine", "label": "pos"},
]


def test_classification_accuracy_uses_the_trained_head(env, tiny_bert_dir, single_thread):
    dataset = env.add_dataset(SENTIMENT)
    adapter = classification_adapter(env, tiny_bert_dir, ["neg", "pos"], dataset.id)
    result, _ = evaluate(env, adapter_id=adapter.id, dataset_id=dataset.id, metrics=["loss", "accuracy"])

    small = math.log1p(math.exp(-5.0))  # cross-entropy of the predicted class when logits are (0, 5)
    # Always "pos": F1 of pos 6/7 (precision 3/4, recall 1), MCC 0, AUROC 0.5 (every score equal).
    assert result["metrics"] == pytest.approx(
        {"eval_loss": (5.0 + 4 * small) / 4, "accuracy": 0.75, "f1": 6 / 7, "mcc": 0.0, "auroc": 0.5}
    )
    assert result["models"][0]["confusion"] == {"labels": ["neg", "pos"], "matrix": [[0, 1], [0, 3]]}
    assert [s["prediction"] for s in result["samples"]] == ["pos"] * 4
    assert result["samples"][0] == {"prompt": "awful film", "reference": "neg", "prediction": "pos", "correct": False}
    assert {r.metric: r.value for r in env.registry.eval_results(adapter_id=adapter.id)} == pytest.approx(
        result["metrics"]
    )


def test_label_order_saved_with_the_adapter_wins(env, tiny_bert_dir, single_thread):
    dataset = env.add_dataset(SENTIMENT)
    adapter = classification_adapter(env, tiny_bert_dir, ["neg", "pos"], dataset.id)
    # Metadata written next to the adapter says the head's index 1 is "neg".
    (env.tmp_path / "adapters" / "classifier" / "labels.json").write_text(json.dumps({"labels": ["pos", "neg"]}))
    result, _ = evaluate(env, adapter_id=adapter.id, dataset_id=dataset.id, metrics=["accuracy"])
    assert result["metrics"]["accuracy"] == 0.25
    # F1 is of the head's index 1, here "neg": precision 1/4, recall 1
    assert result["metrics"]["f1"] == pytest.approx(0.4)
    assert result["models"][0]["confusion"]["labels"] == ["pos", "neg"]


def test_metric_that_does_not_fit_the_dataset_is_refused(env, tiny_llama_dir):
    dataset = env.add_dataset(ROWS)
    with pytest.raises(
        ValidationFailed, match="accuracy needs a classification dataset.*fit: loss, exact_match, rouge_l"
    ):
        evaluate(env, base_model=str(tiny_llama_dir), dataset_id=dataset.id, metrics=["accuracy"])


def test_model_of_the_wrong_kind_is_refused(env, tiny_llama_dir, tiny_bert_dir, single_thread):
    sentiment = env.add_dataset(SENTIMENT, name="sentiment")
    chats = env.add_dataset(ROWS, name="chats")
    adapter = classification_adapter(env, tiny_bert_dir, ["neg", "pos"], sentiment.id)
    with pytest.raises(StudioError, match="is a classification model but dataset .* holds chat rows"):
        evaluate(env, adapter_id=adapter.id, dataset_id=chats.id)
    with pytest.raises(StudioError, match="has no trained classification head"):
        evaluate(env, base_model=str(tiny_llama_dir), dataset_id=sentiment.id, metrics=["accuracy"])


def test_pickled_adapter_is_refused(env, tiny_llama_dir):
    dataset = env.add_dataset(ROWS)
    folder = env.tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"task_type": "CAUSAL_LM"}))
    (folder / "adapter_model.bin").write_bytes(b"not loaded")
    row = env.registry.add_adapter(
        name="p", variant="lora", base_model=str(tiny_llama_dir), path=str(folder), sha256="0"
    )
    with pytest.raises(StudioError, match="no adapter_model.safetensors .*adapter_model.bin"):
        evaluate(env, adapter_id=row.id, dataset_id=dataset.id)


def test_cancellation_stops_before_scoring(env, tiny_llama_dir):
    dataset = env.add_dataset(ROWS)
    reporter = MemoryReporter()
    reporter.cancel_event.set()
    request = EvalRequest(base_model=str(tiny_llama_dir), dataset_id=dataset.id)
    with pytest.raises(JobCancelled):
        run_eval_job(request, reporter, env.ctx)
    assert reporter.metric_rows == []


def test_gsm8k_rows_from_the_sample_data(env, tiny_llama_dir, single_thread, samples_dir):
    """Real GSM8K rows go through ingestion; the prompt is the question, the reference the worked answer."""
    source = samples_dir / "gsm8k" / "test.jsonl"
    sample = env.tmp_path / "gsm8k.jsonl"
    sample.write_text("".join(source.read_text().splitlines(keepends=True)[:3]))
    dataset = env.datasets.add(sample, mapping={"prompt": "question", "completion": "answer"})
    result, _ = evaluate(
        env, base_model=str(tiny_llama_dir), dataset_id=dataset.id, metrics=["exact_match"], max_new_tokens=4
    )
    first = result["samples"][0]
    assert first["prompt"].startswith("user: Janet") and first["reference"].endswith("#### 18")
    assert result["generated"] == 3 and result["metrics"]["exact_match"] == 0.0  # a random model knows no maths
