"""Typed request bodies of the /v1 API, in OpenAI's field names; one schema per endpoint.

Fields the engine cannot honour are refused (400) rather than silently ignored:
``n`` other than 1, non-zero penalties, ``logprobs``, ``echo``, ``suffix``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SEED_MAX = 1_000_000  # the engine's seed range (GenerationSettings)


class ApiModel(BaseModel):
    """Unknown fields are errors, as in every studio request schema."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StreamOptions(ApiModel):
    include_usage: bool = Field(False, description="Send one last chunk with the request's token usage.")


class TextPart(ApiModel):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(ApiModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(description="The text, or a list of text parts (joined).")
    name: str | None = None

    def as_engine_message(self) -> dict[str, str]:
        """``{"role", "content"}`` as the chat template takes it (developer messages are system messages)."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class SamplingFields(ApiModel):
    """What both endpoints share: the model, sampling, limits, stop strings and streaming."""

    model: str = Field(min_length=1, description="A base model name, an adapter's name or `adapter-<id>`.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, description="Only 1 is supported.")
    max_tokens: int | None = Field(None, ge=1, description="Longest reply, in tokens (default: what fits).")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Same seed and prompt, same sampled reply.")
    stop: str | list[str] | None = Field(None, description="Up to 4 strings that end the reply (not included).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = Field(
        None,
        description="A unique identifier of your end-user (OpenAI's field). For a personalised (RecLoRA) adapter "
        "it picks that user's mixture; an unknown user gets the mean gate. Other models ignore it.",
    )

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported; leave them at 0")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def requested_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name of max_tokens.")
    logprobs: bool = False

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool) -> bool:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @model_validator(mode="after")
    def _ends_with_user(self) -> ChatCompletionRequest:
        if self.messages[-1].role not in ("user", "system", "developer"):
            raise ValueError("the conversation must end with a user message")
        return self

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``: one prompt (a string, a list of one string, or token ids)."""

    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[int]:
        if isinstance(value, list) and value and isinstance(value[0], str):
            if len(value) != 1:
                raise ValueError("only one prompt per request is supported")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported")
        return value

    @field_validator("logprobs", "suffix")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        if value is not None:
            raise ValueError("not supported")
        return value
