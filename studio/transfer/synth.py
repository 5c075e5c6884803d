"""Synthetic task inputs and teacher answers, written by the serving engine.

The rows of a causal-LM dataset are chat conversations; the task *input* of a row is the
user turn before its first assistant turn and the *output* that assistant turn (system
turns and later turns are not carried: a transfer teaches single-turn behaviour).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed
from studio.transfer.options import FewShotFormat

ENGINE_BATCH = 16  # sequences an engine decodes together: the time estimate counts the kit's waves by it


def row_example(row: dict[str, Any]) -> dict[str, str] | None:
    """``{"input", "output"}`` of a chat row (None when it has no user turn followed by an answer)."""
    messages = row.get("messages")
    if not isinstance(messages, list):
        return None
    user = None
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "user":
            user = content
        elif role == "assistant":
            if user and isinstance(content, str):
                return {"input": str(user), "output": content}
            return None
    return None


def task_examples(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Every row's ``{"input", "output"}``; refuses data without chat rows (plain text has no task input)."""
    examples = [e for e in (row_example(r) for r in rows) if e is not None]
    if not examples:
        raise ValidationFailed("a transfer kit needs chat rows (a user turn and its answer); this dataset has none")
    return examples


def pick(items: Sequence[Any], n: int, seed: int) -> list[Any]:
    """``n`` items (all when fewer) in a seeded, reproducible choice, kept in their original order."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), n))]


def fewshot_prompt(seed_inputs: Sequence[str], fmt: FewShotFormat) -> str:
    """The plain-text prompt after which a base model writes one more task input (one line)."""
    lines = [fmt.header] + [f"{fmt.prefix} {_one_line(text)}" for text in seed_inputs] + [fmt.prefix]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    # An input spanning lines would end the example early: the model's reply is cut at the first line break.
    return " ".join(text.split())


def clean_input(text: str, fmt: FewShotFormat) -> str:
    """A generated continuation as a task input: its first line, without a repeated prefix."""
    first = text.strip().split("\n", 1)[0].strip()
    if fmt.prefix and fmt.prefix in first:
        first = first.split(fmt.prefix, 1)[0].strip()  # the model went on to the next example
    return first


@dataclass
class LoadedEngine:
    """A base model in the serving engine with its tokenizer (chat template as in training)."""

    path: Path
    engine: Any
    tokenizer: Any


def open_engine(base_path: str | Path, device: Any, slots: int = 2, max_batch: int = ENGINE_BATCH) -> LoadedEngine:
    """A fresh fp32 copy of the base in a :class:`ServingEngine` (the engine wraps the copy's layers).

    The tokenizer gets the training fallback chat template when it has none, so prompts are
    rendered exactly as the training rows were (the engine's own fallback differs).
    """
    from studio.serving.engine import ServingEngine
    from studio.training.models import load_base_model, load_tokenizer_for
    from studio.training.tokenise import ensure_chat_template

    tokenizer = load_tokenizer_for(base_path)
    ensure_chat_template(tokenizer)
    model = load_base_model(base_path, "causal-lm").to(device.torch_device)
    return LoadedEngine(Path(base_path), ServingEngine(model, tokenizer, slots=slots, max_batch=max_batch), tokenizer)


def write_inputs(
    loaded: LoadedEngine,
    seed_inputs: Sequence[str],
    fmt: FewShotFormat,
    count: int,
    *,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int,
) -> list[str]:
    """``count`` new task inputs sampled from the bare base, few-shot from the seeds ('' where it wrote none).

    Each request shows the seeds in its own seeded order, so the prompts vary as well as the samples.
    """
    from studio.serving.engine import EngineRequest

    rng = random.Random(seed)
    requests = []
    for i in range(count):
        order = list(seed_inputs)
        rng.shuffle(order)
        ids = loaded.tokenizer(fewshot_prompt(order, fmt), add_special_tokens=True)["input_ids"]
        requests.append(
            EngineRequest(
                prompt_ids=list(ids),
                temperature=temperature,
                top_p=top_p,
                repetition_penalty=1.0,
                max_new_tokens=max_tokens,
                seed=(seed * 100_003 + i) % 1_000_001,
                stop=["\n"],
            )
        )
    results = loaded.engine.generate(requests)
    return [clean_input(r.text, fmt) for r in results]


def answer(loaded: LoadedEngine, adapter_dir: str | Path | None, inputs: Sequence[str], max_tokens: int) -> list[str]:
    """Greedy replies of the base (+ adapter) to each input as a one-turn chat."""
    from studio.serving.engine import EngineRequest

    adapter = str(adapter_dir) if adapter_dir is not None else None
    requests = [
        EngineRequest(
            messages=[{"role": "user", "content": text}],
            adapter=adapter,
            temperature=0.0,
            repetition_penalty=1.0,
            max_new_tokens=max_tokens,
        )
        for text in inputs
    ]
    return [r.text.strip() for r in loaded.engine.generate(requests)]


def chat_row(prompt: str, reply: str) -> dict[str, Any]:
    """One training row: a user turn and the reply to learn (the prompt is masked in training)."""
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}
