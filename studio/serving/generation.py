"""Chat prompts and streamed generation: chat template in, text pieces out."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


class GenerationSettings(BaseModel):
    """How replies are sampled; the playground's settings form is built from this schema."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(128, ge=1, le=1024, description="Longest reply, in tokens.")
    temperature: float = Field(
        0.7, ge=0.0, le=2.0, description="Randomness: 0 always picks the likeliest token, higher is more varied."
    )
    top_p: float = Field(0.9, ge=0.05, le=1.0, description="Sample only from the likeliest tokens covering this share.")
    repetition_penalty: float = Field(
        1.1, ge=1.0, le=2.0, description="Discourages repeating the same words (1 = off)."
    )
    seed: int = Field(
        0, ge=0, le=1_000_000, description="Same seed, same settings and same prompt give the same reply."
    )


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The conversation rendered with the model's chat template (a plain transcript when it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{FALLBACK_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def encode_prompt(tokenizer: Any, messages: list[dict[str, str]], max_prompt_tokens: int) -> dict[str, Any]:
    """Token ids of the prompt, keeping the most recent ``max_prompt_tokens`` when the chat is long."""
    encoded = tokenizer(prompt_text(tokenizer, messages), return_tensors="pt", add_special_tokens=False)
    if encoded["input_ids"].shape[1] > max_prompt_tokens:
        encoded = {k: v[:, -max_prompt_tokens:] for k, v in encoded.items()}
    return dict(encoded)


def stream_reply(
    model: Any, tokenizer: Any, messages: list[dict[str, str]], settings: GenerationSettings
) -> Iterator[str]:
    """Yield the reply as it grows (the whole text so far each time), token by token.

    Generation runs in a thread feeding a TextIteratorStreamer; closing this
    generator early stops that thread at its next token and waits for it, so the
    caller may switch adapters right after.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    stop = threading.Event()

    class _StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> bool:
            return stop.is_set()

    context = getattr(model.config, "max_position_embeddings", 2048) or 2048
    inputs = encode_prompt(tokenizer, messages, max(16, context - settings.max_new_tokens))
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    sample = settings.temperature > 0
    kwargs: dict[str, Any] = dict(
        **inputs,
        streamer=streamer,
        max_new_tokens=settings.max_new_tokens,
        do_sample=sample,
        repetition_penalty=settings.repetition_penalty,
        stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    if sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            torch.manual_seed(settings.seed)
            with torch.no_grad():
                model.generate(**kwargs)
        except BaseException as exc:  # surfaced to the caller below
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, name="playground-generate", daemon=True)
    thread.start()
    text = ""
    try:
        for piece in streamer:
            text += piece
            yield text
    finally:
        stop.set()
        thread.join()
    if failure:
        raise failure[0]
