"""Side-by-side results of several models on one dataset: directions, best, difference against the base.

Pure functions over plain dicts (the job result), so the CLI, the UI and the tests share them.
A model entry is ``{"key", "label", "metrics": {name: value | None}, ...}``; the base model's key
starts with ``base:``.
"""

from __future__ import annotations

import math
from typing import Any

from studio.errors import ValidationFailed

# Which way is better, per reported metric name.
DIRECTIONS: dict[str, str] = {
    "eval_loss": "lower",
    "perplexity": "lower",
    "accuracy": "higher",
    "window_accuracy": "higher",
    "f1": "higher",
    "mcc": "higher",
    "auroc": "higher",
    "exact_match": "higher",
    "rouge_l": "higher",
}
GENERATED_METRICS = ("exact_match", "rouge_l")
BASE_PREFIX = "base:"


def direction(metric: str) -> str:
    """``lower`` or ``higher`` (is better) for a metric name; unknown metrics count as higher."""
    return DIRECTIONS.get(metric, "higher")


def is_base(key: str) -> bool:
    """True for the key of a bare base model."""
    return key.startswith(BASE_PREFIX)


def column_name(key: str) -> str:
    """A short, readable name for a model key in tables and charts: ``base tiny-llama``, ``adapter #3``.

    A base given as a server path is named by its folder (the path means nothing to a reader).
    """
    if is_base(key):
        reference = key[len(BASE_PREFIX) :].rstrip("/")
        return f"base {reference.rsplit('/', 1)[-1]}"
    kind, _, ident = key.partition(":")
    if not ident:
        return key
    return f"{kind} #{ident}" if ident.isdigit() else f"{kind} {ident}"  # "baseline logistic-regression"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def common_base(base_model: str | None, adapters: list[Any]) -> str:
    """The one base model every compared model runs on, or a StudioError naming the mismatch."""
    bases = list(dict.fromkeys(a.base_model for a in adapters))
    if len(bases) > 1:
        listed = ", ".join(f"adapter {a.id} on {a.base_model}" for a in adapters)
        raise ValidationFailed(f"a comparison takes adapters of one base model; these differ: {listed}")
    if base_model and bases and bases[0] != base_model:
        raise ValidationFailed(
            f"adapter {adapters[0].id} is for base model {bases[0]}, not {base_model}; compare it against {bases[0]}"
        )
    return base_model or bases[0]


def compare_models(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per metric: direction, each model's value, the best model(s) and each one's Δ vs the base.

    ``best`` lists every model tied at the best value (none when no model has a number);
    ``delta_vs_base`` is empty when the base is not among the models.
    """
    names = list(dict.fromkeys(name for m in models for name in m.get("metrics", {})))
    base = next((m for m in models if is_base(m["key"])), None)
    rows = []
    for name in names:
        values = {m["key"]: _number(m.get("metrics", {}).get(name)) for m in models}
        known = [v for v in values.values() if v is not None]
        best_value = (min(known) if direction(name) == "lower" else max(known)) if known else None
        base_value = _number(base["metrics"].get(name)) if base else None
        deltas = {}
        if base_value is not None:
            deltas = {k: (v - base_value if v is not None else None) for k, v in values.items() if not is_base(k)}
        rows.append(
            {
                "metric": name,
                "direction": direction(name),
                "values": values,
                "best": [k for k, v in values.items() if best_value is not None and v == best_value],
                "delta_vs_base": deltas,
            }
        )
    return rows


def sample_table(
    prompts: list[str], references: list[str], answers: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Rows of ``{"prompt", "reference", "answers": {model key: answer dict}}`` for the first prompts.

    ``answers`` maps each model's key to its per-example answer dicts (prediction and scores),
    in prompt order; a model with fewer answers simply has none for the later prompts.
    """
    rows = []
    for i, (prompt, reference) in enumerate(zip(prompts, references, strict=True)):
        per_model = {key: items[i] for key, items in answers.items() if i < len(items)}
        rows.append({"prompt": prompt, "reference": reference, "answers": per_model})
    return rows


def format_value(value: float | None) -> str:
    """A score as the tables show it (4 significant digits, ``—`` when missing)."""
    return "—" if value is None else f"{value:.4g}"


def format_delta(value: float | None) -> str:
    """A difference with its sign (``+0.05``), ``—`` when missing."""
    return "—" if value is None else f"{value:+.4g}"


def paired_lines(result: dict[str, Any]) -> list[str]:
    """One plain-English sentence per paired comparison of the job result (none for language rows)."""
    from studio.evaluation.paired import paired_sentence

    return [paired_sentence(e, column_name(e["a"]), column_name(e["b"])) for e in result.get("paired") or []]


def comparison_lines(result: dict[str, Any]) -> list[str]:
    """The job result as a text table: metric, direction, each model (best marked *), Δ vs base; then cut-offs
    and the paired comparisons (is an accuracy gap real?)."""
    models = result.get("models") or []
    keys = [m["key"] for m in models]
    has_base = any(is_base(k) for k in keys)
    header = ["metric", "better", *keys]
    if has_base:
        header += [f"Δ {k}" for k in keys if not is_base(k)]
    table = [header]
    for row in result.get("comparison") or []:
        cells = [row["metric"], row["direction"]]
        cells += [format_value(row["values"].get(k)) + ("*" if k in row["best"] else "") for k in keys]
        if has_base:
            cells += [format_delta(row["delta_vs_base"].get(k)) for k in keys if not is_base(k)]
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.append("* best of the models compared")
    budget, generated = result.get("max_new_tokens"), result.get("generated") or 0
    if generated:
        cut = ", ".join(f"{m['key']} {m.get('truncated_answers') or 0}" for m in models)
        lines.append(f"answers cut off by the {budget}-token budget (of {generated}): {cut}")
    return lines + paired_lines(result)
