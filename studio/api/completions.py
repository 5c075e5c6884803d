"""From an API request to the engine and back: the prompt's token ids, the limits, the submitted request.

Requests run on the playground's schedulers (one serving engine per base model and
process), so API clients and playground panes share the same running batch. The
prompt is tokenised here, with the tokenizer of the engine that will run it, so the
``usage`` counts are the engine's own and an over-long prompt is refused (400)
instead of being cut.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from studio.api.catalog import Catalog, Target
from studio.api.errors import ApiError, bad_request, model_not_found
from studio.api.schemas import SEED_MAX, ChatCompletionRequest, CompletionRequest, SamplingFields
from studio.composition.mixture_serving import MixtureScheduler
from studio.errors import NotFoundError
from studio.services.playground import PlaygroundService
from studio.serving.engine import EngineRequest
from studio.serving.generation import prompt_text
from studio.serving.scheduler import RequestHandle, Scheduler

MAX_NEW_TOKENS = 1024  # the engine's limit (GenerationSettings.max_new_tokens)
MIN_TOP_P = 0.05  # the engine's smallest top_p; smaller values keep (almost) only the likeliest token anyway


@dataclass
class Prepared:
    """A request ready to submit: where it runs, what the engine gets and how long its prompt is."""

    target: Target
    scheduler: Scheduler | MixtureScheduler  # a mixture's runner has the scheduler's shape
    request: EngineRequest
    prompt_tokens: int

    def submit(self) -> RequestHandle:
        """Queue it on the engine (raises QueueFull when the queue is full)."""
        return self.scheduler.submit(self.request)


class Completions:
    """Turns /v1 requests into engine requests on the shared schedulers."""

    def __init__(self, playground: PlaygroundService, catalog: Catalog):
        self.playground = playground
        self.catalog = catalog

    def prepare_chat(self, body: ChatCompletionRequest) -> Prepared:
        """The chat rendered with the model's chat template, tokenised and checked against the context."""
        target, scheduler = self._target(body.model, body.user)
        tokenizer = scheduler.engine.tokenizer
        text = prompt_text(tokenizer, [m.as_engine_message() for m in body.messages])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._prepared(body, target, scheduler, list(ids), "messages")

    def prepare_completion(self, body: CompletionRequest) -> Prepared:
        """The prompt as given (token ids are taken as they are; text gets the tokenizer's special tokens)."""
        target, scheduler = self._target(body.model, body.user)
        if isinstance(body.prompt, str):
            ids = list(scheduler.engine.tokenizer(body.prompt)["input_ids"])
        else:
            vocab = scheduler.engine.model.config.vocab_size
            if any(not 0 <= t < vocab for t in body.prompt):
                raise bad_request(f"prompt token ids must be between 0 and {vocab - 1}", "prompt")
            ids = list(body.prompt)
        return self._prepared(body, target, scheduler, ids, "prompt")

    def _target(self, model: str, user: str | None = None) -> tuple[Target, Scheduler | MixtureScheduler]:
        """Where ``model`` runs; for a personalised (RecLoRA) adapter ``user`` picks the user's mixture.

        OpenAI's ``user`` field ("a unique identifier representing your end-user") is reused:
        a personalised adapter serves that user's own mixture (an unknown or absent user: the
        mean gate), exported once per user actually served; other models ignore it.
        """
        try:
            target = self.catalog.resolve(model)
        except NotFoundError:
            raise model_not_found(model) from None
        if target.adapter is not None:
            # A MeteoRA mixture routes per token: answered on its own model, one request at a time.
            mixture = self.playground.mixture_scheduler(target.base_model, f"adapter:{target.adapter_id}")
            if mixture is not None:
                return target, mixture
            # DoRA, MiSS, LoRAPrune…: the playground's plain-LoRA export (same cache, same slot).
            engine_ref = self.playground.engine_adapter(target.base_model, f"adapter:{target.adapter_id}", user)
            target = replace(target, adapter=engine_ref)
        return target, self.playground.schedulers.get(target.base_model)

    def _prepared(
        self,
        body: SamplingFields,
        target: Target,
        scheduler: Scheduler | MixtureScheduler,
        ids: list[int],
        prompt_param: str,
    ) -> Prepared:
        if not ids:
            raise bad_request("the prompt is empty after tokenisation", prompt_param)
        context = int(getattr(scheduler.engine.model.config, "max_position_embeddings", 2048) or 2048)
        requested = body.requested_tokens()
        max_param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        if requested is not None and requested > MAX_NEW_TOKENS:
            raise bad_request(f"{max_param} is at most {MAX_NEW_TOKENS} here; you asked for {requested}", max_param)
        room = context - len(ids)
        if room < 1 or (requested is not None and requested > room):
            asked = len(ids) + (requested or 1)
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested {asked} tokens "
                f"({len(ids)} in the {prompt_param}, {requested or 1} in the completion). "
                f"Please reduce the length of the {prompt_param} or completion.",
                "invalid_request_error",
                prompt_param,
                "context_length_exceeded",
            )
        request = EngineRequest(
            prompt_ids=ids,
            adapter=target.adapter,
            max_new_tokens=requested or min(MAX_NEW_TOKENS, room),
            temperature=body.temperature,
            top_p=max(MIN_TOP_P, body.top_p),
            seed=body.seed if body.seed is not None else secrets.randbelow(SEED_MAX + 1),
            stop=body.stops,
            repetition_penalty=1.0,  # OpenAI's API has no repetition penalty; its penalties are refused
        )
        return Prepared(target, scheduler, request, len(ids))


def finish_reason(engine_reason: str | None) -> str | None:
    """OpenAI's finish reason: the end-of-sequence token and stop strings are both ``stop``."""
    return {"eos": "stop", "stop": "stop", "length": "length"}.get(engine_reason or "", engine_reason)
