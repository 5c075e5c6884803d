"""The charts of a registered mixture: which expert each token of a prompt chose, and expert usage per task.

Plain functions over a registry row (variant ``mixture``) for the Adapters tab and any other
caller: the heatmap runs the prompt through the mixture loaded in the playground's mixture pool
(the same cached copy chat uses); the usage chart reads the routing report the mixture job
stored in the bundle (held-out rows of each task).
"""

from __future__ import annotations

from typing import Any

from studio.errors import ValidationFailed

MAX_PROMPT_CHARS = 2000  # a heatmap column per token: longer prompts are unreadable anyway


def _check(row: Any) -> None:
    from studio.composition.mixture_checks import is_mixture

    if not is_mixture(row):
        raise ValidationFailed(f"adapter #{row.id} is a {row.variant} adapter, not a mixture: it has no routing")


def expert_names(config: dict[str, Any]) -> list[str]:
    """``#3 colours-lora`` style names of the bundle's experts, in expert order."""
    names = []
    for j, expert in enumerate(config["experts"]):
        label = expert.get("name") or f"expert {j}"
        names.append(f"#{expert['adapter_id']} {label}" if expert.get("adapter_id") else label)
    return names


def routing_figure(pool: Any, row: Any, prompt: str) -> Any:
    """Heatmap of the top-1 expert of every token of ``prompt`` in every gated layer of mixture ``row``.

    ``pool``: a :class:`~studio.composition.mixture_serving.MixturePool` (the playground's).
    """
    from studio.composition.meteora_bundle import read_config
    from studio.composition.meteora_charts import routing_heatmap
    from studio.composition.meteora_training import prompt_routing

    _check(row)
    text = (prompt or "").strip()[:MAX_PROMPT_CHARS]
    names = expert_names(read_config(row.path))
    if not text:
        return routing_heatmap([], {}, names)
    with pool.use(row.base_model, row.path) as (mixture, tokenizer):
        tokens, choices = prompt_routing(mixture, tokenizer, text)
    return routing_heatmap(tokens, choices, names, title=f"Chosen expert per token and layer of #{row.id}")


def usage_figure(row: Any) -> Any:
    """Grouped bars of expert usage per task, from the routing report stored by the mixture job."""
    from studio.composition.meteora_bundle import read_config
    from studio.composition.meteora_charts import expert_usage_figure

    _check(row)
    config = read_config(row.path)
    report = config.get("routing_report") or {}
    tasks = [t.get("name") or f"task {j}" for j, t in enumerate(config.get("tasks", []))]
    return expert_usage_figure(report.get("usage") or [], tasks, expert_names(config))
