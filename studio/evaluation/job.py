"""The ``eval`` job: score an adapter (or a bare base model) on a registered dataset.

Steps: read the first ``max_examples`` canonical rows, refuse metrics that do not
fit them, load the model, run the loss pass (loss, perplexity, accuracy) and the
generation pass (exact_match, rouge_l), report the metrics once at
``step = number of rows``, and store them in the registry's eval results (per model,
dataset and metric), apart from the adapter's training metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from studio.errors import StudioError, ValidationFailed
from studio.evaluation import metrics as M
from studio.evaluation.examples import (
    GENERATION_METRICS,
    check_metrics,
    dataset_kind,
    generation_examples,
    prompt_text,
    read_rows,
)
from studio.evaluation.loading import ComparisonLoader, EvalModel, load_adapter
from studio.evaluation.scoring import batch_count, generation_pass, loss_pass
from studio.progress import Reporter
from studio.schema import EvalRequest

LOSS_BATCH_SIZE = 8
GENERATION_BATCH_SIZE = 8
MAX_LENGTH = 2048  # tokens per row for the loss pass, lowered to the model's context length
SAMPLES = 5


def model_key(adapter_id: int | None, base_model: str) -> str:
    """How eval results name a model: ``adapter:<id>`` or ``base:<name>``."""
    return f"adapter:{adapter_id}" if adapter_id is not None else f"base:{base_model}"


class _Ticker:
    """Counts batches across both passes: progress after each one, and a cancellation check."""

    def __init__(self, reporter: Reporter, total: int):
        self.reporter, self.total, self.step = reporter, max(1, total), 0
        self.phase: str | None = None

    def __call__(self, phase: str) -> None:
        self.step += 1
        # The message only when the phase changes: without one the registry reporter throttles its writes.
        message = phase if phase != self.phase else None
        self.phase = phase
        self.reporter.progress(self.step, self.total, message)
        self.reporter.check_cancelled()


@dataclass
class ModelScore:
    """What one model of a comparison scored: its metrics, answers and row counts."""

    key: str
    label: str
    adapter_id: int | None
    values: dict[str, float] = field(default_factory=dict)
    answers: list[dict[str, Any]] = field(default_factory=list)  # per sample: prediction and scores
    truncated_answers: int | None = None
    encoded: Any = None
    classification: dict[str, Any] | None = None  # confusion matrix and ROC curves of a classifier
    # Classifiers: per dataset row, right / wrong / None (not scored), for the paired comparisons.
    correct: list[bool | None] | None = None

    def summary(self) -> dict[str, Any]:
        """The model's entry of the job result (JSON: a diverged model's inf is stored as null)."""
        return {
            "key": self.key,
            "label": self.label,
            "adapter_id": self.adapter_id,
            "metrics": {k: (v if math.isfinite(v) else None) for k, v in self.values.items()},
            "truncated_answers": self.truncated_answers,
            "scored_rows": len(self.encoded.examples) if self.encoded else None,
            "truncated_rows": self.encoded.truncated if self.encoded else 0,
            "skipped_rows": self.encoded.dropped if self.encoded else 0,
            **(
                {"confusion": self.classification["confusion"], "roc": self.classification["roc"]}
                if self.classification
                else {}
            ),
        }


def run_eval_job(request: EvalRequest, reporter: Reporter, ctx: Any) -> dict[str, Any]:
    """Evaluate every model of ``request`` on its dataset and return the side-by-side result.

    The result holds ``models`` (each one's metrics and counts), ``comparison`` (per metric:
    direction, values, best, Δ vs the base), ``sample_table`` (the first prompts with the
    reference and every model's answer and per-example score) and, for classifiers, ``paired``
    (is an adapter's accuracy gap to the baseline, the base or another adapter real: see
    :func:`_paired`). A single-model job also keeps the flat ``metrics``/``samples`` of that model.
    """
    import torch

    from studio.evaluation.comparison import common_base, compare_models, sample_table
    from studio.sequences.baseline import MODEL_KEY

    registry = ctx.registry
    dataset = registry.get_dataset(request.dataset_id)
    label = f"{dataset.id} ({dataset.name})"
    rows = read_rows(dataset.stored_path, request.max_examples)
    if not rows:
        raise ValidationFailed(f"dataset {label} has no rows to evaluate")
    kind = dataset_kind(rows, dataset.report)
    if request.include_baseline and kind != "classification":  # before the metrics: the baseline is the reason
        raise ValidationFailed(
            f"the baseline is fit for classification datasets; dataset {dataset.id} ({dataset.name}) holds {kind} rows"
        )
    wanted = list(dict.fromkeys(request.metrics))  # the order asked, without repeats
    check_metrics(wanted, kind, label)
    adapters = [registry.get_adapter(i) for i in request.adapters()]
    base_name = common_base(request.base_model, adapters)
    # Checked before any model loads: a wrong baseline request fails in seconds, not after the models ran.
    baseline_train = _baseline_train_rows(request, registry, dataset, adapters) if request.include_baseline else None

    loss_wanted = bool({"loss", "accuracy"} & set(wanted))
    generations = _generation_examples(rows, label) if set(GENERATION_METRICS) & set(wanted) else []
    models = ([None] if request.base_model else []) + adapters
    tick = _Ticker(
        reporter,
        len(models)
        * (
            (batch_count(len(rows), LOSS_BATCH_SIZE) if loss_wanted else 0)
            + batch_count(len(generations), GENERATION_BATCH_SIZE)
        ),
    )
    reporter.progress(0, tick.total, "evaluating")
    reporter.check_cancelled()

    loader = ComparisonLoader(ctx.settings, ctx.device.torch_device, reporter.log)
    budget: int | None = None
    scores: list[ModelScore] = []
    samples: list[dict[str, Any]] = []
    for adapter in models:
        torch.manual_seed(request.seed)  # each model starts from the same seed
        if adapter is None:
            context = loader.base(base_name, "classification" if kind == "classification" else "causal-lm")
        else:
            context = loader.adapter(adapter, _fallback_labels(registry, adapter, rows, dataset))
        with context as evaluated:
            if generations and budget is None:  # one budget for every model, from the first one's tokenizer
                budget = generation_budget(request, evaluated.tokenizer, generations, ctx.settings)
                reporter.log(f"generation budget: {budget} new tokens per answer")
            score, samples = _score_model(
                evaluated, adapter, rows, kind, label, wanted, generations, budget, ctx, reporter, tick
            )
        scores.append(score)

    loss_by_rank = _loss_by_rank(request, ctx, rows, dataset, kind, reporter) if request.ranks else {}
    several = len(scores) > 1
    for score in scores:
        # One series per model in a comparison, so the Jobs tab's charts keep them apart.
        reporter.metrics(len(rows), {(f"{score.key}/{k}" if several else k): v for k, v in score.values.items()})
        # Into the eval results table, never onto the adapter: its metrics are what training measured.
        registry.record_eval_results(
            model_key=score.key,
            adapter_id=score.adapter_id,
            base_model=base_name,
            dataset_id=dataset.id,
            values={k: (float(v) if math.isfinite(v) else None) for k, v in score.values.items()},
            examples=len(rows),
            truncated={m: score.truncated_answers for m in GENERATION_METRICS if m in score.values},
            max_new_tokens=budget,
            job_id=ctx.job_id,
        )
    baseline = None
    if baseline_train is not None:
        baseline = _run_baseline(baseline_train, rows, dataset.id, base_name, ctx, reporter)
    reporter.progress(tick.total, tick.total, "done")
    # Of accuracy: only where it was asked for (the sentences would otherwise cite a score the table lacks).
    paired = _paired(scores, baseline) if kind == "classification" and "accuracy" in wanted else []

    summaries = [s.summary() for s in scores]
    # The baseline stands beside the models in the comparison; the flat single-model fields stay the model's.
    compared = summaries + ([_baseline_summary(baseline)] if baseline else [])
    prompts = [s["prompt"] for s in samples]
    answers = {s.key: s.answers[: len(prompts)] for s in scores}
    if baseline is not None:  # classification: every model's samples are the first rows, in order
        answers[MODEL_KEY] = _baseline_answers(baseline, len(prompts))
    result: dict[str, Any] = {
        "dataset_id": dataset.id,
        "base_model": base_name,
        "task": kind,
        "examples": len(rows),
        "generated": len(generations),
        "max_new_tokens": budget,
        "models": compared,
        "comparison": compare_models(compared),
        "sample_table": sample_table(prompts, [s["reference"] for s in samples], answers),
        "loss_by_rank": loss_by_rank,
        "paired": paired,
    }
    if baseline is not None:
        result["baseline"] = baseline.to_dict()
    if not several:
        only = summaries[0]
        result.update(
            metrics=only["metrics"],
            adapter_id=only["adapter_id"],
            model=only["label"],
            scored_rows=only["scored_rows"],
            truncated_rows=only["truncated_rows"],
            skipped_rows=only["skipped_rows"],
            truncated_answers=only["truncated_answers"],
            samples=[{**sample, **answer} for sample, answer in zip(samples, scores[0].answers, strict=False)],
        )
    return result


def _paired(scores: list[ModelScore], baseline: Any) -> list[dict[str, Any]]:
    """Paired comparisons on the rows both models scored: each adapter vs the baseline, vs the base, vs each other.

    Entries are ``{"a": key, "b": key, **paired_comparison(...)}`` with the keys of ``models``;
    a pair with no row scored by both (or a model without per-row answers) is left out.
    """
    from studio.evaluation.paired import paired_comparison
    from studio.sequences.baseline import MODEL_KEY

    per_row = {s.key: s.correct for s in scores if s.correct is not None}
    adapters = [s.key for s in scores if s.adapter_id is not None and s.key in per_row]
    bases = [s.key for s in scores if s.adapter_id is None and s.key in per_row]
    others = []
    if baseline is not None and baseline.test_correct:
        per_row[MODEL_KEY] = baseline.test_correct
        others.append(MODEL_KEY)
    others += bases
    pairs = [(a, b) for a in adapters for b in others]
    pairs += [(a, b) for i, a in enumerate(adapters) for b in adapters[i + 1 :]]
    entries = []
    for a, b in pairs:
        both = [(x, y) for x, y in zip(per_row[a], per_row[b], strict=True) if x is not None and y is not None]
        if both:
            entries.append({"a": a, "b": b, **paired_comparison([x for x, _ in both], [y for _, y in both])})
    return entries


def _baseline_train_rows(request: EvalRequest, registry: Any, dataset: Any, adapters: list) -> list:
    """The rows the baseline is fit on: ``baseline_dataset_id``'s, else the first adapter's training dataset."""
    train_id = request.baseline_dataset_id
    if train_id is None:
        train_id = next((a.dataset_id for a in adapters if a.dataset_id is not None), None)
    if train_id is None:
        raise ValidationFailed("give baseline_dataset_id: the rows to fit the baseline on (no adapter names its data)")
    if train_id == dataset.id:
        raise ValidationFailed(
            f"the baseline would be fit on dataset {dataset.id}, the rows it is scored on; give another "
            "baseline_dataset_id (the training rows)"
        )
    train = registry.get_dataset(train_id)
    return read_rows(train.stored_path, None)


def _run_baseline(train_rows: list, rows: list, dataset_id: int, base_name: str, ctx: Any, reporter: Reporter) -> Any:
    """Fit and score the logistic-regression baseline; stored in the eval results as ``baseline:logistic-regression``."""
    from studio.sequences.baseline import MODEL_KEY, fit_baseline

    reporter.log(f"baseline: logistic regression fit on {len(train_rows)} training rows")
    baseline = fit_baseline(train_rows, rows, text_field="text", label_field="label", seed=0)
    reporter.log(
        f"baseline ({baseline.features} features, {baseline.seconds:.1f} s): "
        + ", ".join(f"{k}={v:.4g}" for k, v in baseline.metrics.items() if v is not None)
    )
    values = {k: v for k, v in baseline.metrics.items() if v is not None}
    reporter.metrics(len(rows), {f"baseline/{k}": v for k, v in values.items()})
    ctx.registry.record_eval_results(
        model_key=MODEL_KEY,
        adapter_id=None,
        base_model=base_name,
        dataset_id=dataset_id,
        values=values,
        examples=baseline.test_rows,
        job_id=ctx.job_id,
    )
    return baseline


def _baseline_answers(baseline: Any, count: int) -> list[dict[str, Any]]:
    """The baseline's answers on the first ``count`` test rows, as the samples table shows a model's
    (``{}`` for a row it did not score)."""
    picked = zip(baseline.test_predicted[:count], baseline.test_correct[:count], strict=True)
    return [{} if right is None else {"prediction": guess, "correct": right} for guess, right in picked]


def _baseline_summary(baseline: Any) -> dict[str, Any]:
    """The baseline as a model entry of the comparison."""
    from studio.sequences.baseline import MODEL_KEY

    return {
        "key": MODEL_KEY,
        "label": f"logistic regression on {baseline.features} features",
        "adapter_id": None,
        "metrics": dict(baseline.metrics),
        "truncated_answers": None,
        "scored_rows": baseline.test_rows,
        "truncated_rows": 0,
        "skipped_rows": baseline.skipped_test_rows,
        "confusion": baseline.confusion,
        "roc": baseline.roc,
    }


def _score_model(
    evaluated: EvalModel,
    adapter: Any,
    rows: list,
    kind: str,
    label: str,
    wanted: list[str],
    generations: list,
    budget: int | None,
    ctx: Any,
    reporter: Reporter,
    tick: _Ticker,
) -> tuple[ModelScore, list[dict[str, Any]]]:
    """Both passes for one loaded model; returns its score and the sample prompts/references it answered."""
    if (evaluated.task == "classification") != (kind == "classification"):
        raise StudioError(
            f"{evaluated.description} is a {evaluated.task} model but dataset {label} holds {kind} rows; "
            "evaluate it on a dataset of the kind it was trained on"
        )
    reporter.log(f"evaluating {evaluated.description} on dataset {label}: {len(rows)} rows, {', '.join(wanted)}")
    device = ctx.device.torch_device
    max_length = _max_length(evaluated.model)
    adapter_id = adapter.id if adapter is not None else None
    score = ModelScore(model_key(adapter_id, evaluated.base_model), evaluated.description, adapter_id)
    samples: list[dict[str, Any]] = []
    if {"loss", "accuracy"} & set(wanted):
        score.encoded = _encode(rows, evaluated, max_length, reporter)
        values, samples, score.classification, score.correct = _score_loss(
            evaluated, score.encoded, rows, wanted, kind, label, device, tick
        )
        score.values.update(values)
    if generations:
        values, samples, score.truncated_answers = _score_generation(
            evaluated, generations, budget, wanted, max_length, device, tick
        )
        score.values.update(values)
        if score.truncated_answers:
            reporter.log(
                f"{evaluated.description}: {score.truncated_answers} of {len(generations)} answers hit the "
                f"{budget}-token budget before ending; their scores may be low for that reason alone",
                "warning",
            )
    reporter.log(f"{evaluated.description}: " + ", ".join(f"{k}={v:.4g}" for k, v in score.values.items()))
    # The samples' prompt and reference are shared by every model; the rest is this model's answer.
    score.answers = [{k: v for k, v in s.items() if k not in ("prompt", "reference")} for s in samples]
    return score, [{"prompt": s["prompt"], "reference": s["reference"]} for s in samples]


def _loss_by_rank(request: EvalRequest, ctx: Any, rows: list, dataset: Any, kind: str, reporter: Reporter) -> dict:
    """DyLoRA's metric vs rank: the adapter cut exactly to each rank, scored by the same loss pass.

    Each value is reported as metric ``eval_loss_by_rank`` at step = rank, so the
    Jobs chart of this evaluation is the loss-vs-rank curve.
    """
    from pathlib import Path
    from types import SimpleNamespace

    from studio.variants.dylora import cut_saved_adapter

    adapter = ctx.registry.get_adapter(request.adapter_id) if request.adapter_id else None
    if adapter is None or adapter.variant != "dylora":
        raise ValidationFailed("ranks can only be evaluated for a DyLoRA adapter (it is trained for every rank)")
    losses: dict[int, float] = {}
    for rank in sorted(set(request.ranks)):
        reporter.check_cancelled()
        cut_dir = ctx.work_dir / f"rank-{rank}"
        cut_saved_adapter(Path(adapter.path), cut_dir, rank)
        row = SimpleNamespace(
            id=adapter.id,
            base_model=adapter.base_model,
            dataset_id=adapter.dataset_id,
            variant=adapter.variant,
            name=adapter.name,
            path=str(cut_dir),
        )
        labels = _fallback_labels(ctx.registry, adapter, rows, dataset)
        evaluated = load_adapter(row, ctx.settings, ctx.device.torch_device, labels, reporter.log)
        encoded = _encode(rows, evaluated, _max_length(evaluated.model), reporter)
        result = loss_pass(
            evaluated.model,
            encoded.examples,
            task=evaluated.task,
            pad_id=evaluated.pad_id,
            batch_size=LOSS_BATCH_SIZE,
            device=ctx.device.torch_device,
            tick=lambda _phase: reporter.check_cancelled(),
        )
        losses[rank] = result.mean_loss
        reporter.metrics(rank, {"eval_loss_by_rank": result.mean_loss})
        reporter.log(f"rank {rank}: eval_loss {result.mean_loss:.4f}")
    return losses


def _score_loss(
    evaluated, encoded, rows, wanted, kind, label, device, tick
) -> tuple[dict[str, float], list, Any, list[bool | None] | None]:
    """eval_loss (+ perplexity for language rows), accuracy (+ F1, MCC, AUROC) from one teacher-forced pass.

    The third value is the classification report (confusion matrix, ROC curves) or None; the fourth,
    for classifiers, whether each of ``rows`` was predicted right (None for a row not scored), else None.
    """
    from studio.evaluation.classification import classification_report, softmax

    result = loss_pass(
        evaluated.model,
        encoded.examples,
        task=evaluated.task,
        pad_id=evaluated.pad_id,
        batch_size=LOSS_BATCH_SIZE,
        device=device,
        tick=tick,
    )
    if not result.targets:
        raise ValidationFailed(f"no row of dataset {label} has a token to score after tokenisation")
    values: dict[str, float] = {}
    if "loss" in wanted:
        values["eval_loss"] = result.mean_loss
        if kind != "classification":  # perplexity of a class distribution means nothing
            values["perplexity"] = M.perplexity(result.mean_loss)
    predicted, expected, logits = result.predicted, result.expected, result.logits
    example_rows = encoded.example_rows()  # the row each prediction is of
    pooled = result.per_sequence(evaluated.window_pooling) if kind == "classification" else None
    if pooled is not None:
        # Long sequences were read as windows: accuracy is per sequence (its windows' logits pooled
        # as the adapter was trained: mean, or max), the per-window accuracy is reported beside it.
        if "accuracy" in wanted:
            values["window_accuracy"] = M.accuracy(predicted, expected)
        logits, expected = pooled
        predicted = [max(range(len(row)), key=row.__getitem__) for row in logits]
        example_rows = list(dict.fromkeys(result.sequences))  # the pooled order (pool_logits: first seen)
    if "accuracy" in wanted:
        values["accuracy"] = M.accuracy(predicted, expected)
    details = None
    if kind == "classification" and "accuracy" in wanted:
        # F1, MCC and AUROC beside accuracy (per sequence when windowed), plus what the charts draw.
        details = classification_report(expected, softmax(logits), evaluated.labels or _indices(logits))
        values.update({k: v for k, v in details["metrics"].items() if v is not None})
    samples = []
    correct: list[bool | None] | None = None
    if kind == "classification":
        samples = _class_samples(rows, evaluated.labels or [], predicted, expected, example_rows)
        correct = [None] * len(rows)
        for row, p, e in zip(example_rows, predicted, expected, strict=True):
            correct[row] = p == e
    return values, samples, details, correct


def _indices(logits: list) -> list[int]:
    return list(range(len(logits[0]))) if logits else []


def _score_generation(
    evaluated, generations, budget, wanted, max_length, device, tick
) -> tuple[dict[str, float], list, int]:
    """exact_match and rouge_l of greedy answers against the last assistant turns, and how many were cut off."""
    from studio.training.tokenise import ensure_chat_template

    # The same fallback template training used when the tokenizer has none.
    ensure_chat_template(evaluated.tokenizer)
    answers = generation_pass(
        evaluated.model,
        evaluated.tokenizer,
        generations,
        batch_size=GENERATION_BATCH_SIZE,
        max_new_tokens=budget,
        max_prompt_tokens=max(16, max_length - budget),
        device=device,
        tick=tick,
    )
    predictions = [a.text for a in answers]
    references = [e.reference for e in generations]
    values: dict[str, float] = {}
    if "exact_match" in wanted:
        values["exact_match"] = M.exact_match_rate(predictions, references)
    if "rouge_l" in wanted:
        values["rouge_l"] = M.rouge_l_mean(predictions, references)
    return values, _generation_samples(generations, answers, wanted), sum(a.truncated for a in answers)


def generation_budget(request: EvalRequest, tokenizer: Any, generations: list, settings: Any) -> int:
    """The request's max_new_tokens, else one sized from the longest reference answer (capped by the settings)."""
    from studio.evaluation.generate import sized_budget

    if request.max_new_tokens is not None:
        return request.max_new_tokens
    return sized_budget(tokenizer, [e.reference for e in generations], settings.eval_max_new_tokens)


def _fallback_labels(registry: Any, adapter: Any, rows: list, dataset: Any) -> list | None:
    """Labels in head order when the adapter stores none: its training dataset's, else this dataset's."""
    from studio.errors import NotFoundError
    from studio.training.setup import dataset_labels

    if adapter.dataset_id is not None:
        try:
            trained_on = registry.get_dataset(adapter.dataset_id)
        except NotFoundError:
            trained_on = None
        if trained_on is not None and (trained_on.report or {}).get("labels"):
            return list(trained_on.report["labels"])
    if not any("label" in row for row in rows):
        return None
    return dataset_labels(rows, dict(dataset.report or {}))


def _max_length(model: Any) -> int:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return min(MAX_LENGTH, int(limit)) if limit else MAX_LENGTH


def _encode(rows: list, evaluated: EvalModel, max_length: int, reporter: Reporter) -> Any:
    """Training's tokenisation with response-only labels (classification: label indices in head order)."""
    from studio.training.tokenise import encode_rows

    try:
        return encode_rows(
            rows,
            evaluated.tokenizer,
            task=evaluated.task,
            max_length=max_length,
            loss_on="response",
            labels=evaluated.labels,
            log=reporter.log,
        )
    except ValueError as exc:  # a label the model's head does not know
        raise ValidationFailed(f"{exc}; {evaluated.description} was trained with labels {evaluated.labels}") from None


def _generation_examples(rows: list, label: str) -> list:
    examples = generation_examples(rows)
    if not examples:
        raise ValidationFailed(f"no row of dataset {label} has an assistant answer after a prompt to compare against")
    return examples


def _generation_samples(examples: list, answers: list, wanted: list[str]) -> list[dict[str, Any]]:
    samples = []
    for example, answer in zip(examples[:SAMPLES], answers, strict=False):
        prediction = answer.text
        sample: dict[str, Any] = {
            "prompt": prompt_text(example.prompt),
            "reference": example.reference,
            "prediction": prediction,
            "truncated": answer.truncated,
        }
        if "exact_match" in wanted:
            sample["exact_match"] = M.exact_match(prediction, example.reference)
        if "rouge_l" in wanted:
            sample["rouge_l"] = M.rouge_l(prediction, example.reference)
        samples.append(sample)
    return samples


def _class_samples(
    rows: list, labels: list, predicted: list[int], expected: list[int], example_rows: list[int]
) -> list[dict[str, Any]]:
    """The first SAMPLES rows with this model's answers: the same rows, in order, for every model and the baseline.

    ``example_rows`` is the row each prediction is of; a row left unscored (no text, a label the head
    lacks) keeps its place with its own label and no prediction, so later rows are not shifted onto it.
    """
    scored = {row: (p, e) for row, p, e in zip(example_rows, predicted, expected, strict=True)}
    samples = []
    for index, row in enumerate(rows[:SAMPLES]):
        if index in scored:
            p, e = scored[index]
            samples.append({"prompt": row["text"], "reference": labels[e], "prediction": labels[p], "correct": p == e})
        else:
            samples.append({"prompt": row.get("text", ""), "reference": row.get("label", ""), "prediction": ""})
    return samples
