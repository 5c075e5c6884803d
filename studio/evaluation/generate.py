"""Greedy, batched generation of answers to chat prompts.

Prompts are rendered with the tokenizer's chat template plus the generation prompt
(the same rendering training used for the turns before each answer) and padded on
the LEFT, so every row's last prompt token sits at the end of the batch and new
tokens follow directly. Generation stops at EOS or at the template's end-of-turn
token (``<|im_end|>`` for ChatML), whichever the template uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_PROBE = "\u2063probe\u2063"  # an answer text no template rewrites, to find what follows it
BUDGET_FACTOR = 1.25  # room above the longest reference: a model may phrase the answer a little longer
BUDGET_MARGIN = 8  # and a few tokens for the end-of-turn token and stray whitespace


@dataclass(frozen=True)
class Answer:
    """One generated answer, and whether it hit the token budget before a stop token (cut off)."""

    text: str
    truncated: bool


def sized_budget(tokenizer: Any, references: Sequence[str], cap: int) -> int:
    """A generation budget above the longest reference: ``1.25 × its tokens + 8``, at most ``cap``.

    A fixed small budget cuts worked answers (GSM8K) before their final line, which
    scores exact match 0 for a reason that has nothing to do with the model.
    """
    longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references), default=0)
    return max(1, min(int(cap), math.ceil(BUDGET_FACTOR * longest) + BUDGET_MARGIN))


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token a template puts right after an assistant answer, if it is one token."""
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that refuses this probe: EOS alone must do
        return None
    if _PROBE not in text:
        return None
    suffix = text.split(_PROBE, 1)[1]
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if ids and ids[0] in set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values()):
        return int(ids[0])
    return None


def stop_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an answer: EOS and the template's end-of-turn token."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    turn = end_of_turn_id(tokenizer)
    if turn is not None and turn not in ids:
        ids.append(turn)
    return ids


def render_prompts(tokenizer: Any, prompts: Sequence[Sequence[dict[str, str]]]) -> list[str]:
    """Chat-template text of each prompt, ending with the assistant's generation prompt."""
    return [tokenizer.apply_chat_template(list(p), tokenize=False, add_generation_prompt=True) for p in prompts]


@contextmanager
def _left_side(tokenizer: Any):
    """Pad and truncate on the left for generation, then restore the tokenizer's sides."""
    saved = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = saved


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[dict[str, str]]],
    *,
    max_new_tokens: int,
    max_prompt_tokens: int,
    device: Any,
    stop: Sequence[int] | None = None,
) -> list[str]:
    """Greedy answers (decoded, special tokens removed, stripped) to one batch of chat prompts.

    Prompts longer than ``max_prompt_tokens`` lose their beginning: the question at the end matters most.
    """
    return [
        a.text
        for a in generate_batch(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            device=device,
            stop=stop,
        )
    ]


def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[dict[str, str]]],
    *,
    max_new_tokens: int,
    max_prompt_tokens: int,
    device: Any,
    stop: Sequence[int] | None = None,
) -> list[Answer]:
    """Like :func:`generate_answers`, with each answer marked truncated when it never reached a stop token."""
    import torch
    from transformers import GenerationConfig

    stop = list(stop) if stop is not None else stop_ids(tokenizer)
    texts = render_prompts(tokenizer, prompts)
    with _left_side(tokenizer):
        enc = tokenizer(
            texts,
            add_special_tokens=False,  # the template already wrote any BOS it wants
            padding=True,
            truncation=True,
            max_length=max_prompt_tokens,
            return_tensors="pt",
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop[0] if stop else 0)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=stop or None,
    )
    input_ids = enc["input_ids"].to(device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=enc["attention_mask"].to(device), generation_config=config
        )
    answers = []
    for row in out[:, input_ids.shape[1] :].tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), None)
        # No stop token: generation only ended because the budget ran out, so the answer is cut off.
        text = tokenizer.decode(row[:cut], skip_special_tokens=True).strip()
        answers.append(Answer(text=text, truncated=cut is None))
    return answers
