"""The discriminator: a LoRA that answers "yes" (a real task input) or "no" (a generated one).

P(real) is read from one forward: the softmax over the two answer tokens ("yes", "no") at
the position where the reply begins, with the discriminator adapter on its base.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studio.errors import StudioError

YES, NO = "yes", "no"


def question_prompt(question: str, text: str) -> str:
    """The user turn the discriminator answers."""
    return f"{question}\n{text}"


def training_rows(positives: Sequence[str], negatives: Sequence[str], question: str) -> list[dict[str, Any]]:
    """Chat rows: real inputs answered "yes", generated ones "no" (interleaved, so any prefix is balanced)."""
    from studio.transfer.synth import chat_row

    rows = []
    for i in range(max(len(positives), len(negatives))):
        if i < len(positives):
            rows.append(chat_row(question_prompt(question, positives[i]), YES))
        if i < len(negatives):
            rows.append(chat_row(question_prompt(question, negatives[i]), NO))
    return rows


def answer_token_ids(tokenizer: Any, question: str) -> tuple[int, int]:
    """The first token the model writes for "yes" and for "no" after the chat's generation prompt.

    Taken from the training encoding itself (the first labelled token of the reply), so it is
    the token the discriminator was trained to put first, whatever the template and tokenizer.
    """
    from studio.training.tokenise import IGNORE_INDEX, encode_chat

    firsts = []
    for word in (YES, NO):
        messages = [{"role": "user", "content": question_prompt(question, "x")}, {"role": "assistant", "content": word}]
        _, labels = encode_chat(tokenizer, messages, "response")
        firsts.append(next(t for t in labels if t != IGNORE_INDEX))
    if firsts[0] == firsts[1]:
        raise StudioError("this tokenizer starts 'yes' and 'no' with the same token; it cannot host the discriminator")
    return firsts[0], firsts[1]


def p_real(loaded: Any, adapter_dir: str | Path, inputs: Sequence[str], question: str, batch: int = 16) -> list[float]:
    """The discriminator's P(real) of every input (softmax over the yes/no tokens of the first reply token)."""
    import torch

    from studio.serving.engine import EngineRequest

    yes, no = answer_token_ids(loaded.tokenizer, question)
    scores: list[float] = []
    for start in range(0, len(inputs), batch):
        requests = [
            EngineRequest(
                messages=[{"role": "user", "content": question_prompt(question, text)}], adapter=str(adapter_dir)
            )
            for text in inputs[start : start + batch]
        ]
        for logits in loaded.engine.prompt_logits(requests):
            pair = logits[-1, [yes, no]].float()
            scores.append(float(torch.softmax(pair, dim=-1)[0]))
    return scores


def keep_real(scores: Sequence[float], threshold: float, limit: int | None = None) -> list[int]:
    """Indices whose P(real) is strictly above ``threshold``, in order, at most ``limit`` of them."""
    kept = [i for i, score in enumerate(scores) if score > threshold]
    return kept if limit is None else kept[: max(0, limit)]
