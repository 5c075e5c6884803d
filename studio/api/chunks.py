"""Response bodies in OpenAI's shapes: whole completions, streamed chunks and the SSE framing."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field

DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(body: dict) -> str:
    """One server-sent event carrying ``body``."""
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


@dataclass
class Reply:
    """The ids and time one response's bodies share; ``chat`` picks the chat or the text-completion shape.

    ``include_usage``: the request's ``stream_options.include_usage``, which puts ``"usage": null``
    on every chunk before the last one that carries the counts (as OpenAI sends them).
    """

    model: str
    chat: bool
    id: str = ""
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)

    def _head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}

    def whole(self, text: str, finish_reason: str | None, prompt_tokens: int, completion_tokens: int) -> dict:
        """The non-streamed response."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
            body = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": text}
            body = self._head("text_completion")
        choice |= {"logprobs": None, "finish_reason": finish_reason}
        return body | {"choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, delta: str | None, finish_reason: str | None = None, first: bool = False) -> dict:
        """One streamed chunk: new text (chat: the first also carries the role) or, with ``finish_reason``, the end."""
        if self.chat:
            content: dict = {}
            if first:
                content["role"] = "assistant"
            if delta is not None:
                content["content"] = delta
            choice = {"index": 0, "delta": content}
            body = self._head("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": delta or ""}
            body = self._head("text_completion")
        body |= {"choices": [choice | {"logprobs": None, "finish_reason": finish_reason}]}
        # OpenAI's chunks hold the field only when usage was asked for: a client may test for the key
        return (body | {"usage": None}) if self.include_usage else body

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        """The last chunk when ``stream_options.include_usage``: no choices, just the counts."""
        name = "chat.completion.chunk" if self.chat else "text_completion"
        return self._head(name) | {"choices": [], "usage": usage(prompt_tokens, completion_tokens)}
