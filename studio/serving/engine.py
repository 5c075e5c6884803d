"""The serving engine: many requests, each on its own LoRA adapter (or none), decoded together on one base model.

``ServingEngine.generate(requests)`` left-pads the prompts, runs one batched
prefill for the requests it admits and then one batched forward per decode step
for every running row, each row adding its own adapter's term through the
adapter bank (studio/serving/bank.py, studio/serving/lora_ops.py). The KV cache
is transformers' ``DynamicCache``; attention is the base model's own.

Scheduling is continuous within a call: a request waits in the queue until
the batch has room (``max_batch``) and its adapter can get a slot (a slot stays
pinned while a request uses it), finished rows leave the batch after every step
and waiting requests join between decode steps, their fresh cache merged into
the running one (left-padded to the same length). One call is one
:class:`BatchRun`; requests arriving from other threads join a long-lived
``BatchRun`` through studio/serving/scheduler.py, which adds them to its
``pending`` queue, cancels rows and advances it one step at a time.
"""

from __future__ import annotations

import inspect
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, model_validator

from studio.errors import StudioError
from studio.serving.bank import AdapterBank, SlotsBusy
from studio.serving.generation import GenerationSettings, encode_prompt
from studio.serving.lora_ops import Strategy
from studio.serving.pool import AdapterRef


class EngineRequest(GenerationSettings):
    """One request to the engine: a prompt (token ids or chat messages), an adapter or none, and how to sample.

    The sampling fields are the playground's :class:`GenerationSettings` (temperature 0 =
    greedy); ``adapter`` is a PEFT LoRA directory or an :class:`AdapterRef` (key, path).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    prompt_ids: list[int] | None = Field(None, description="Prompt token ids (without padding).")
    messages: list[dict[str, str]] | None = Field(None, description="Chat messages, rendered with the chat template.")
    adapter: AdapterRef | str | None = Field(None, description="LoRA adapter directory; None for the bare base.")
    stop: list[str] = Field(default_factory=list, description="Generation ends once the reply contains one of these.")
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0, description="Discourages repeating tokens (1 = off).")

    @model_validator(mode="after")
    def _one_prompt(self) -> EngineRequest:
        if (self.prompt_ids is None) == (self.messages is None):
            raise ValueError("give either prompt_ids or messages")
        if self.prompt_ids is not None and not self.prompt_ids:
            raise ValueError("prompt_ids is empty")
        return self

    def adapter_ref(self) -> AdapterRef | None:
        """The adapter as (key, path); a plain path is its own key."""
        if self.adapter is None or isinstance(self.adapter, AdapterRef):
            return self.adapter
        return AdapterRef(key=self.adapter, path=self.adapter)


@dataclass
class EngineResult:
    """What one request produced: the new token ids, their text and why it stopped (eos, stop, length)."""

    token_ids: list[int]
    text: str
    finish_reason: Literal["eos", "stop", "length", "cancelled"]


@dataclass
class _Row:
    index: int  # position of the request in the caller's list
    request: EngineRequest
    prompt: list[int]
    slot: int = 0
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    finish: str | None = None
    text: str = ""


@dataclass
class _Batch:
    """The running rows and their shared state: KV cache, 2-D attention mask, next position and next input."""

    rows: list[_Row]
    cache: Any
    mask: torch.Tensor  # [rows, cached tokens], 0 = left padding
    positions: torch.Tensor  # [rows] position id of the next input token
    next_tokens: torch.Tensor  # [rows] the token each row feeds at the next step


class ServingEngine:
    """Batched multi-adapter generation on one base model (see the module docstring).

    One call runs at a time (a lock); inside it every decode step is one forward for all rows.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        slots: int | None = None,
        max_batch: int = 16,
        host_capacity: int | None = None,
    ):
        if slots is None:
            from studio.settings import load_settings

            slots = load_settings().serving_slots
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max(1, max_batch)
        self.bank = AdapterBank(model, slots, host_capacity)
        self._lock = threading.Lock()
        self._device = next(model.parameters()).device
        self._eos = self._eos_ids()
        # transformers >= 5.25 names the KV cache argument ``cache`` (``past_key_values`` is deprecated).
        forward_args = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad = pad if pad is not None else (min(self._eos) if self._eos else 0)

    # Public API ---------------------------------------------------------------------------

    def generate(self, requests: list[EngineRequest], strategy: Strategy = "auto") -> list[EngineResult]:
        """Generate a reply for every request, in the order given, batching them all on the one base model."""
        with self._lock, torch.inference_mode():
            return BatchRun(self, requests, strategy).run()

    @contextmanager
    def stepping(self) -> Iterator[None]:
        """Hold the engine for a few steps of a long-lived :class:`BatchRun` (what ``generate`` holds per call)."""
        with self._lock, torch.inference_mode():
            yield

    def prompt_logits(self, requests: list[EngineRequest], strategy: Strategy = "auto") -> list[torch.Tensor]:
        """Logits ``[prompt tokens, vocab]`` of every request's prompt from one batched forward (scoring, tests)."""
        with self._lock, torch.inference_mode():
            rows = [self._row(i, r) for i, r in enumerate(requests)]
            slots = self.bank.acquire(self._adapter_items(rows))
            try:
                for row, slot in zip(rows, slots, strict=True):
                    row.slot = slot
                logits, _ = self._prefill(rows, strategy, last_only=False)
            finally:
                self.bank.release(slots)
            return [logits[i, logits.shape[1] - len(row.prompt) :].clone() for i, row in enumerate(rows)]

    # Steps --------------------------------------------------------------------------------

    def _row(self, index: int, request: EngineRequest) -> _Row:
        if request.prompt_ids is not None:
            prompt = list(request.prompt_ids)
        else:
            if self.tokenizer is None:
                raise StudioError("chat messages need the engine's tokenizer; give prompt_ids or a tokenizer")
            context = getattr(self.model.config, "max_position_embeddings", 2048) or 2048
            encoded = encode_prompt(self.tokenizer, request.messages, max(16, context - request.max_new_tokens))
            prompt = encoded["input_ids"][0].tolist()
        generator = None
        if request.temperature > 0:
            generator = torch.Generator(device="cpu").manual_seed(request.seed)
        return _Row(index=index, request=request, prompt=prompt, generator=generator)

    @staticmethod
    def _adapter_items(rows: list[_Row]) -> list[tuple[str, str] | None]:
        items = []
        for row in rows:
            ref = row.request.adapter_ref()
            items.append(None if ref is None else (ref.key, ref.path))
        return items

    def _prefill(self, rows: list[_Row], strategy: Strategy, last_only: bool = True) -> tuple[torch.Tensor, _Batch]:
        """One forward over the left-padded prompts of ``rows``: logits and the new rows' batch state."""
        from transformers import DynamicCache

        width = max(len(row.prompt) for row in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt) :] = torch.tensor(row.prompt)
            mask[i, width - len(row.prompt) :] = 1
        # Positions count real tokens only, as transformers' generate does for left padding.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = DynamicCache()
        with self.bank.context.use([row.slot for row in rows], strategy, self._device):
            out = self.model(
                input_ids=ids.to(self._device),
                attention_mask=mask.to(self._device),
                position_ids=positions.to(self._device),
                use_cache=True,
                logits_to_keep=1 if last_only else 0,
                **{self._cache_arg: cache},
            )
        lengths = mask.sum(-1)
        batch = _Batch(rows, cache, mask, lengths.clone(), torch.zeros(len(rows), dtype=torch.long))
        return out.logits.float(), batch

    def _decode(self, batch: _Batch, strategy: Strategy) -> torch.Tensor:
        """One forward of every running row's next token; the logits of the token after it."""
        batch.mask = torch.cat([batch.mask, torch.ones(len(batch.rows), 1, dtype=torch.long)], dim=1)
        with self.bank.context.use([row.slot for row in batch.rows], strategy, self._device):
            out = self.model(
                input_ids=batch.next_tokens.view(-1, 1).to(self._device),
                attention_mask=batch.mask.to(self._device),
                position_ids=batch.positions.view(-1, 1).to(self._device),
                use_cache=True,
                **{self._cache_arg: batch.cache},
            )
        batch.positions += 1
        return out.logits[:, -1].float()

    def _eos_ids(self) -> set[int]:
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}

    # Sampling -----------------------------------------------------------------------------

    def _next_token(self, row: _Row, logits: torch.Tensor) -> int:
        """The row's next token from its logits, with its own repetition penalty, temperature, top-p and seed."""
        request = row.request
        if request.repetition_penalty != 1.0:
            seen = torch.tensor(row.prompt + row.generated, dtype=torch.long, device=logits.device)
            score = logits.gather(0, seen)
            score = torch.where(score < 0, score * request.repetition_penalty, score / request.repetition_penalty)
            logits = logits.scatter(0, seen, score)
        if request.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / request.temperature, dim=-1).cpu()
        if request.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest set of likeliest tokens whose mass reaches top_p (at least one).
            outside = sorted_probs.cumsum(0) - sorted_probs >= request.top_p
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _append(self, row: _Row, token: int) -> None:
        """Add ``token`` to the row's reply and decide whether the row is finished."""
        if token in self._eos:
            row.finish = "eos"
            return
        row.generated.append(token)
        if self.tokenizer is not None:
            row.text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
            hits = [row.text.index(s) for s in row.request.stop if s and s in row.text]
            if hits:
                row.text = row.text[: min(hits)]
                row.finish = "stop"
                return
        if len(row.generated) >= row.request.max_new_tokens:
            row.finish = "length"


class BatchRun:
    """A queue of waiting requests and the running batch, advanced one step at a time.

    ``generate`` runs one to the end; the scheduler (studio/serving/scheduler.py) keeps one
    open, adding and cancelling requests between steps under :meth:`ServingEngine.stepping`.
    ``on_finish(row, result)`` is told of every request that leaves (default: ``results``).
    """

    def __init__(
        self,
        engine: ServingEngine,
        requests: list[EngineRequest],
        strategy: Strategy,
        on_finish: Callable[[_Row, EngineResult], None] | None = None,
    ):
        self.engine = engine
        self.strategy = strategy
        self.pending = deque(engine._row(i, r) for i, r in enumerate(requests))
        self.results: list[EngineResult | None] = [None] * len(requests)
        self.batch: _Batch | None = None
        self._on_finish = on_finish or self._record

    def _record(self, row: _Row, result: EngineResult) -> None:
        self.results[row.index] = result

    def run(self) -> list[EngineResult]:
        try:
            while not self.idle:
                self.step()
        finally:  # an error mid-way must not leave slots pinned
            self.release()
        return [r for r in self.results if r is not None]

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        return not self.pending and self.batch is None

    def running(self) -> list[_Row]:
        """The rows in the batch now, in batch order."""
        return list(self.batch.rows) if self.batch is not None else []

    def add(self, index: int, request: EngineRequest) -> None:
        """Queue ``request`` (``index`` names it in ``on_finish``); it joins the batch at a later step."""
        self.pending.append(self.engine._row(index, request))

    def step(self) -> None:
        """Admit the waiting requests that fit, then one decode step for every running row."""
        self.admit()
        self.decode()

    def admit(self) -> None:
        """Prefill the waiting requests that fit in the batch and get an adapter slot (first token each)."""
        self._admit()

    def decode(self) -> None:
        """One decode step for every running row (nothing when none runs)."""
        if self.batch is not None:
            self._step()

    def cancel(self, indices: set[int]) -> None:
        """Remove these requests now: waiting ones leave the queue, running ones the batch (slots unpinned)."""
        for row in [r for r in self.pending if r.index in indices]:
            self.pending.remove(row)
            self._on_finish(row, self._result(row, "cancelled"))
        if self.batch is None:
            return
        for row in self.batch.rows:
            if row.index in indices:
                row.finish = "cancelled"
        self._retire()

    def release(self) -> None:
        """Unpin the slots of every running row and forget the batch (after an error, or at shutdown)."""
        if self.batch is not None:
            self.engine.bank.release(row.slot for row in self.batch.rows)
            self.batch = None

    def _result(self, row: _Row, finish: str) -> EngineResult:
        text = row.text if self.engine.tokenizer is not None else ""
        return EngineResult(list(row.generated), text, finish)  # type: ignore[arg-type]

    def _admit(self) -> None:
        """Move waiting requests into the batch while it has room and their adapters get slots, then prefill them."""
        room = self.engine.max_batch - (len(self.batch.rows) if self.batch else 0)
        joining: list[_Row] = []
        while self.pending and len(joining) < room:
            row = self.pending[0]
            try:
                (row.slot,) = self.engine.bank.acquire(self.engine._adapter_items([row]))
            except SlotsBusy:
                if self.batch is None and not joining:
                    raise  # nothing running will free a slot: another caller holds them all
                break  # waits for a running row to finish and free its slot
            joining.append(self.pending.popleft())
        if not joining:
            return
        try:
            logits, fresh = self.engine._prefill(joining, self.strategy)
            for i, row in enumerate(joining):
                token = self.engine._next_token(row, logits[i, -1])
                self.engine._append(row, token)
                fresh.next_tokens[i] = token
        except BaseException:  # not in the batch yet, so run()'s cleanup would not unpin them
            self.engine.bank.release(row.slot for row in joining)
            raise
        self.batch = fresh if self.batch is None else _merge(self.batch, fresh)
        self._retire()

    def _step(self) -> None:
        logits = self.engine._decode(self.batch, self.strategy)
        for i, row in enumerate(self.batch.rows):
            token = self.engine._next_token(row, logits[i])
            self.engine._append(row, token)
            self.batch.next_tokens[i] = token
        self._retire()

    def _retire(self) -> None:
        """Take finished rows out of the batch (their results recorded, their slots unpinned)."""
        batch = self.batch
        keep = [i for i, row in enumerate(batch.rows) if row.finish is None]
        for row in batch.rows:
            if row.finish is not None:
                self.engine.bank.release([row.slot])
                self._on_finish(row, self._result(row, row.finish))
        if len(keep) == len(batch.rows):
            return
        if not keep:
            self.batch = None
            return
        self.batch = _select(batch, keep)


def _cache_tensors(cache: Any) -> list[Any]:
    return list(cache.layers)


def _select(batch: _Batch, keep: list[int]) -> _Batch:
    """The batch without its finished rows; leading columns that are padding for every row left are dropped."""
    index = torch.tensor(keep, dtype=torch.long)
    mask = batch.mask[index]
    trim = int((mask.cumsum(-1) == 0).sum(-1).min())  # padding columns common to all rows kept
    for layer in _cache_tensors(batch.cache):
        device_index = index.to(layer.keys.device)
        layer.keys = layer.keys[device_index, :, trim:]
        layer.values = layer.values[device_index, :, trim:]
    return _Batch(
        rows=[batch.rows[i] for i in keep],
        cache=batch.cache,
        mask=mask[:, trim:],
        positions=batch.positions[index],
        next_tokens=batch.next_tokens[index],
    )


def _merge(running: _Batch, joining: _Batch) -> _Batch:
    """One batch of both: the shorter cache left-padded (masked) to the longer, rows of ``joining`` after."""
    width = max(running.mask.shape[1], joining.mask.shape[1])

    def padded(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - tensor.shape[dim]
        if not missing:
            return tensor
        shape = list(tensor.shape)
        shape[dim] = missing
        return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    for mine, theirs in zip(_cache_tensors(running.cache), _cache_tensors(joining.cache), strict=True):
        mine.keys = torch.cat([padded(mine.keys, 2), padded(theirs.keys, 2)], dim=0)
        mine.values = torch.cat([padded(mine.values, 2), padded(theirs.values, 2)], dim=0)
    return _Batch(
        rows=running.rows + joining.rows,
        cache=running.cache,
        mask=torch.cat([padded(running.mask, 1), padded(joining.mask, 1)], dim=0),
        positions=torch.cat([running.positions, joining.positions]),
        next_tokens=torch.cat([running.next_tokens, joining.next_tokens]),
    )
