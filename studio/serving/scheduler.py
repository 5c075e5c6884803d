"""Continuous batching across threads: one background thread owns a ServingEngine and runs every request on it.

``Scheduler.submit(request)`` may be called from any thread; it returns a
:class:`RequestHandle` at once. The scheduler's thread keeps one long-lived
:class:`~studio.serving.engine.BatchRun` open: between two decode steps it
adds the requests that arrived (they join the running batch at the next
prefill), drops the cancelled ones (their adapter slots unpinned) and, after
every step, pushes each running request's new text to its handle. A request
leaves the batch as soon as it finishes, so short replies do not wait for long
ones and a new request never waits for a whole batch to end.

A handle is read as a stream of :class:`Update` (thread-safe: a queue filled by
the scheduler's thread). ``cancel()``, closing the stream before its end (a
disconnected client) or dropping the handle removes the request at the next
step. Requests waiting to join are bounded (``STUDIO_SERVING_QUEUE``): when the
queue is full, ``submit`` raises :class:`QueueFull` rather than letting replies
wait without end.

Adapters the bank cannot hold (DoRA, ``modules_to_save``, other PEFT types;
:class:`~studio.serving.bank.AdapterNotServable`) fail their handle with that
error before any compute; callers that can serve them another way (the
playground's PEFT pool) catch it. :class:`Schedulers` keeps one scheduler per
base model, created on first use.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from studio.errors import StudioError
from studio.serving.engine import BatchRun, EngineRequest, EngineResult, ServingEngine
from studio.serving.lora_ops import Strategy

logger = logging.getLogger(__name__)

EngineLoader = Callable[[str], ServingEngine]  # base model name -> an engine on a fresh copy of it


class QueueFull(StudioError):
    """More requests are waiting to join the batch than the queue holds."""


@dataclass(frozen=True)
class Update:
    """One step of a reply: the text so far, what is new since the last update, and why it ended (last one only)."""

    text: str
    delta: str
    tokens: int
    finish_reason: str | None = None


def visible_text(text: str, stops: list[str]) -> str:
    """The part of ``text`` that can be shown already: no tail that may still become a stop string or a broken character.

    A reply is cut before its first stop string, so a tail that is the start of one
    ("\\nUs" of "\\nUser:") may vanish at the next token; a tail ending in U+FFFD is a
    multi-byte character whose other bytes are still to come.
    """
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    shown = text[: len(text) - held] if held else text
    return shown.rstrip("\ufffd")


class _Ticket:
    """The scheduler's side of a request: its stream queue, its result and whether it was cancelled."""

    def __init__(self, number: int, request: EngineRequest):
        self.number = number
        self.request = request
        self.updates: queue.Queue[Update | BaseException] = queue.Queue()
        self.finished = threading.Event()
        self.cancelled = threading.Event()
        self.result: EngineResult | None = None
        self.error: BaseException | None = None
        self.shown = ""  # text already sent in updates
        self.tokens = 0

    def progress(self, text: str, tokens: int) -> None:
        """Send the newly visible text (scheduler thread only)."""
        shown = visible_text(text, self.request.stop)
        if tokens == self.tokens or not shown.startswith(self.shown) or shown == self.shown:
            self.tokens = tokens
            return  # nothing new to show yet (or the decoder rewrote a held-back tail: wait for more)
        self.updates.put(Update(shown, shown[len(self.shown) :], tokens))
        self.shown, self.tokens = shown, tokens

    def finish(self, result: EngineResult) -> None:
        text = result.text
        delta = text[len(self.shown) :] if text.startswith(self.shown) else text
        self.result = result
        self.updates.put(Update(text, delta, len(result.token_ids), result.finish_reason))
        self.finished.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.updates.put(error)
        self.finished.set()


class RequestHandle:
    """A submitted request: iterate it (or :meth:`updates`) for its reply as it grows, :meth:`cancel` to drop it.

    Dropping the last reference to a handle whose request still runs cancels it.
    """

    def __init__(self, ticket: _Ticket, scheduler: Scheduler):
        self._ticket = ticket
        self._scheduler = scheduler

    @property
    def request(self) -> EngineRequest:
        return self._ticket.request

    @property
    def done(self) -> bool:
        """True once the request finished, failed or was cancelled."""
        return self._ticket.finished.is_set()

    def cancel(self) -> None:
        """Remove the request at the scheduler's next step (no effect once it finished)."""
        if not self.done:
            self._ticket.cancelled.set()
            self._scheduler._wake()

    def updates(self, timeout: float | None = None) -> Iterator[Update]:
        """Yield :class:`Update` as the reply grows, the last with its ``finish_reason``; raise if the request failed.

        Closing the iterator before the end (or ``timeout`` seconds without news) cancels the request.
        """
        finished = False
        try:
            while True:
                try:
                    item = self._ticket.updates.get(timeout=timeout)
                except queue.Empty:
                    raise StudioError(
                        f"no reply after {timeout:g} s; the serving engine may be overloaded, try again later"
                    ) from None
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
                if item.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self.cancel()

    __iter__ = updates

    def deltas(self) -> Iterator[str]:
        """Just the new text of every update."""
        for update in self.updates():
            if update.delta:
                yield update.delta

    def result(self, timeout: float | None = None) -> EngineResult:
        """Wait for the request to end and return what it produced (raises what made it fail)."""
        if not self._ticket.finished.wait(timeout):
            raise StudioError(f"no result after {timeout:g} s; the serving engine may be overloaded")
        if self._ticket.error is not None:
            raise self._ticket.error
        assert self._ticket.result is not None
        return self._ticket.result

    def __del__(self) -> None:  # a client that went away without cancelling frees its slot all the same
        with contextlib.suppress(Exception):  # at interpreter shutdown there is nothing left to free
            self.cancel()


class Scheduler:
    """One background thread running every submitted request on ``engine`` with continuous batching."""

    def __init__(
        self, engine: ServingEngine, queue_size: int | None = None, strategy: Strategy = "auto", name: str = "engine"
    ):
        if queue_size is None:
            from studio.settings import load_settings

            queue_size = load_settings().serving_queue
        self.engine = engine
        self.queue_size = max(1, queue_size)
        self.strategy = strategy
        self._cond = threading.Condition()
        self._inbox: deque[_Ticket] = deque()
        self._waiting_in_run = 0  # requests queued in the BatchRun, not yet in the batch
        self._tickets: dict[int, _Ticket] = {}  # scheduler thread only: requests in the BatchRun
        self._numbers = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"serving-{name}", daemon=True)
        self._thread.start()

    # Any thread ---------------------------------------------------------------------------

    def submit(self, request: EngineRequest) -> RequestHandle:
        """Queue ``request``; it joins the running batch at the next step. Raises :class:`QueueFull` when full."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: list[EngineRequest]) -> list[RequestHandle]:
        """Queue several requests at once: all join the batch at the same step (one prefill), or none is queued."""
        with self._cond:
            if self._closed:
                raise StudioError("the serving engine was shut down; reload the page to start a new one")
            waiting = len(self._inbox) + self._waiting_in_run
            if waiting + len(requests) > self.queue_size:
                raise QueueFull(
                    f"{waiting} requests are already waiting for the serving engine (at most {self.queue_size}); "
                    "try again in a moment or raise STUDIO_SERVING_QUEUE"
                )
            tickets = [_Ticket(next(self._numbers), request) for request in requests]
            self._inbox.extend(tickets)
            self._cond.notify()
        return [RequestHandle(ticket, self) for ticket in tickets]

    def waiting(self) -> int:
        """Requests submitted and not yet in the batch."""
        with self._cond:
            return len(self._inbox) + self._waiting_in_run

    def idle(self) -> bool:
        """Nothing waiting and nothing running."""
        with self._cond:
            return not self._inbox and not self._tickets

    def close(self, timeout: float | None = 30) -> None:
        """Stop the thread; requests still waiting or running are cancelled."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # The scheduler's thread --------------------------------------------------------------

    def _loop(self) -> None:
        run = BatchRun(self.engine, [], self.strategy, on_finish=self._finished)
        while True:
            with self._cond:
                while not self._closed and not self._inbox and run.idle:
                    self._cond.wait()
                arrivals = list(self._inbox)
                self._inbox.clear()
                self._waiting_in_run += len(arrivals)  # still waiting, now inside the run
                closed = self._closed
            try:
                with self.engine.stepping():
                    self._add(run, arrivals)
                    cancelled = {n for n, t in self._tickets.items() if closed or t.cancelled.is_set()}
                    if cancelled:
                        run.cancel(cancelled)
                    run.admit()
                    with self._cond:
                        self._waiting_in_run = len(run.pending)
                    run.decode()
                    for row in run.running():
                        self._tickets[row.index].progress(row.text, len(row.generated))
            except Exception as exc:  # a failed step fails the requests in it, never the thread
                logger.exception("serving step failed; failing the %d requests in it", len(self._tickets))
                run.release()
                for ticket in self._tickets.values():
                    ticket.fail(exc)
                self._tickets.clear()
                run = BatchRun(self.engine, [], self.strategy, on_finish=self._finished)
            with self._cond:
                self._waiting_in_run = len(run.pending)
            if closed and run.idle:
                return

    def _add(self, run: BatchRun, arrivals: list[_Ticket]) -> None:
        """Put arrivals in the run; one whose adapter or prompt is refused fails alone, before any compute."""
        for ticket in arrivals:
            if ticket.cancelled.is_set():
                ticket.finish(EngineResult([], "", "cancelled"))
                continue
            try:
                ref = ticket.request.adapter_ref()
                if ref is not None:  # reads it into host RAM now: AdapterNotServable surfaces here
                    self.engine.bank.host_adapter(ref.key, ref.path)
                run.add(ticket.number, ticket.request)
            except Exception as exc:
                if not isinstance(exc, StudioError):
                    logger.exception("request refused by the serving engine")
                ticket.fail(exc)
                continue
            self._tickets[ticket.number] = ticket

    def _finished(self, row: Any, result: EngineResult) -> None:
        self._tickets.pop(row.index).finish(result)


class Schedulers:
    """One :class:`Scheduler` per base model, each created on first use; at most ``max_bases`` idle ones kept.

    A base that is not in use is shut down (its memory freed) when another base is
    needed beyond ``max_bases``; busy ones are never stopped under their requests.
    """

    def __init__(self, loader: EngineLoader, max_bases: int = 1, queue_size: int | None = None):
        self._loader = loader
        self.max_bases = max(1, max_bases)
        self.queue_size = queue_size
        self._schedulers: OrderedDict[str, Scheduler] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, base: str) -> Scheduler:
        """The scheduler of ``base`` (loading the model and starting its thread the first time)."""
        with self._lock:
            scheduler = self._schedulers.get(base)
            if scheduler is None:
                for name in [n for n, s in self._schedulers.items() if s.idle()]:
                    if len(self._schedulers) < self.max_bases:
                        break
                    self._schedulers.pop(name).close()
                scheduler = Scheduler(self._loader(base), self.queue_size, name=base)
                self._schedulers[base] = scheduler
            self._schedulers.move_to_end(base)
            return scheduler

    def loaded(self) -> list[str]:
        """Base models with a running scheduler, least recently used first."""
        with self._lock:
            return list(self._schedulers)

    def close(self) -> None:
        """Shut every scheduler down."""
        with self._lock:
            while self._schedulers:
                self._schedulers.popitem(last=False)[1].close()
