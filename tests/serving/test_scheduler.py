"""The scheduler: requests from any thread join one running batch and each gets exactly what it gets alone.

Tiny random Llama in fp32 on one thread. The tiny model decodes a step in about a
millisecond, so where a test needs "while A is running" it holds the scheduler's
thread before decode steps with :class:`StepGate` instead of racing it.
"""

from __future__ import annotations

import gc
import threading

import pytest
import torch

from studio.serving.bank import AdapterNotServable
from studio.serving.engine import EngineRequest, ServingEngine
from studio.serving.scheduler import QueueFull, Scheduler, Schedulers, visible_text

# Prompts that run to max_new_tokens (no eos) on the base, r2 and r4_rslora for at least 40 tokens.
LONG_A = [5, 6, 7, 8, 9]
LONG_B = [12, 13, 14, 15, 16, 17, 18]
WAIT = 60  # seconds; only a hung scheduler gets near it


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture
def make_engine(base_dir, tokenizer, fresh_base):
    def make(**kwargs) -> ServingEngine:
        return ServingEngine(fresh_base(base_dir), tokenizer, **kwargs)

    return make


@pytest.fixture
def schedulers():
    """Schedulers made by the test, shut down after it."""
    made: list[Scheduler] = []

    def make(engine: ServingEngine, **kwargs) -> Scheduler:
        made.append(Scheduler(engine, **{"queue_size": 16} | kwargs))
        return made[-1]

    yield make
    for scheduler in made:
        scheduler.close()


@pytest.fixture(scope="module")
def solo(base_dir, tokenizer, fresh_base):
    """Each request's result run alone on an engine of its own (the reference for every comparison)."""
    engine = ServingEngine(fresh_base(base_dir), tokenizer, slots=4)
    return lambda request: engine.generate([request])[0]


def request(adapter_dirs, prompt, name=None, **settings) -> EngineRequest:
    settings = {"temperature": 0, "max_new_tokens": 12} | settings
    adapter = None if name is None else str(adapter_dirs[name])
    return EngineRequest(prompt_ids=prompt, adapter=adapter, **settings)


class StepGate:
    """Holds the scheduler's thread before every decode step until the test lets it go; records batch sizes."""

    def __init__(self, engine: ServingEngine):
        self._cond = threading.Condition()
        self.started = 0  # decode steps begun
        self.allowed = 0
        self.free = False
        self.rows: list[int] = []  # rows in the batch at every decode step
        original = engine._decode

        def gated(batch, strategy):
            with self._cond:
                self.started += 1
                self.rows.append(len(batch.rows))
                self._cond.notify_all()
                assert self._cond.wait_for(lambda: self.free or self.allowed >= self.started, timeout=WAIT)
            return original(batch, strategy)

        engine._decode = gated

    def wait_started(self, steps: int) -> None:
        """Wait until the scheduler's thread is held before decode step ``steps`` (1-based)."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.started >= steps, timeout=WAIT), self.started

    def allow(self, steps: int) -> None:
        with self._cond:
            self.allowed += steps
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self.free = True
            self._cond.notify_all()


def test_request_joining_mid_generation_gets_its_solo_tokens(make_engine, schedulers, adapter_dirs, solo):
    engine = make_engine(slots=4)
    gate = StepGate(engine)
    scheduler = schedulers(engine)
    first = request(adapter_dirs, LONG_A, "r2", max_new_tokens=12)
    late = request(adapter_dirs, LONG_B, "r4_rslora", max_new_tokens=4)
    a = scheduler.submit(first)
    gate.wait_started(1)  # a is prefilled and held before its first decode step
    gate.allow(3)
    gate.wait_started(4)  # a has 4 tokens now
    b = scheduler.submit(late)
    gate.open()
    assert a.result(WAIT).token_ids == solo(first).token_ids
    assert b.result(WAIT).token_ids == solo(late).token_ids
    assert a.result().finish_reason == "length" and b.result().finish_reason == "length"
    # b joined the running batch at decode step 5, while a was still running, and left before a ended.
    assert gate.rows[:4] == [1, 1, 1, 1] and gate.rows[4] == 2 and gate.rows[-1] == 1
    assert engine.bank.pinned() == {}


def test_concurrent_submits_from_threads_each_equal_their_solo_result(
    make_engine, schedulers, adapter_dirs, tokenizer, solo
):
    """Six threads submit at once: different adapters, sampling settings, seeds, lengths and a stop string."""
    stop_source = request(adapter_dirs, LONG_A, None, max_new_tokens=16)
    words = solo(stop_source).text.split()
    assert len(words) >= 3
    requests = [
        request(adapter_dirs, LONG_A, "r2", max_new_tokens=10),
        request(adapter_dirs, LONG_B, None, max_new_tokens=14),
        request(adapter_dirs, LONG_A, "r4_rslora", temperature=1.2, top_p=0.8, seed=3, max_new_tokens=12),
        request(adapter_dirs, [20, 21, 22], "r8_patterns", max_new_tokens=9),
        request(adapter_dirs, LONG_A, "r2", temperature=0.9, seed=7, repetition_penalty=1.3, max_new_tokens=11),
        stop_source.model_copy(update={"stop": [words[2]]}),
    ]
    scheduler = schedulers(make_engine(slots=4))
    barrier = threading.Barrier(len(requests))
    streamed: dict[int, list] = {}

    def client(i: int) -> None:
        barrier.wait()
        handle = scheduler.submit(requests[i])
        streamed[i] = list(handle.updates(timeout=WAIT))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(streamed) == list(range(len(requests)))
    for i, req in enumerate(requests):
        expected = solo(req)
        updates = streamed[i]
        last = updates[-1]
        assert (last.finish_reason, last.tokens, last.text) == (
            expected.finish_reason,
            len(expected.token_ids),
            expected.text,
        ), i
        assert "".join(u.delta for u in updates) == expected.text  # deltas add up, nothing retracted
        assert all(u.finish_reason is None for u in updates[:-1])
    assert streamed[5][-1].finish_reason == "stop" and words[2] not in streamed[5][-1].text
    assert all(words[2] not in u.text for u in streamed[5])  # a stop string is never shown, even in part


@pytest.mark.parametrize("how", ["cancel", "close_stream", "drop_handle"])
def test_cancel_frees_the_slot_and_the_others_finish_unchanged(make_engine, schedulers, adapter_dirs, solo, how):
    """One slot: b's adapter waits for a's slot; cancelling a lets b in at the next step, c runs on untouched."""
    engine = make_engine(slots=1)
    gate = StepGate(engine)
    scheduler = schedulers(engine)
    long_a = request(adapter_dirs, LONG_A, "r2", max_new_tokens=40)
    base_c = request(adapter_dirs, LONG_B, None, max_new_tokens=20)
    b_req = request(adapter_dirs, LONG_B, "r4_rslora", max_new_tokens=6)
    a, c, b = scheduler.submit_many([long_a, base_c, b_req])
    stream = a.updates()
    gate.wait_started(1)
    assert scheduler.waiting() == 1  # b: no free slot while a holds it
    gate.allow(2)
    gate.wait_started(3)
    assert engine.bank.pinned() == {1: 1}
    ticket = a._ticket
    if how == "cancel":
        a.cancel()
    elif how == "close_stream":
        next(stream)  # a reader that started and then went away (a disconnected client)
        stream.close()
    else:
        del a, stream
        gc.collect()
    gate.open()
    assert b.result(WAIT).token_ids == solo(b_req).token_ids
    assert c.result(WAIT).token_ids == solo(base_c).token_ids
    assert ticket.finished.wait(WAIT)
    cancelled = ticket.result
    assert cancelled.finish_reason == "cancelled"
    assert 3 <= len(cancelled.token_ids) < 40
    assert cancelled.token_ids == solo(long_a).token_ids[: len(cancelled.token_ids)]
    # a left after decode step 3 and b took its slot: all was done long before a's 40 tokens would have been.
    assert gate.rows[:3] == [2, 2, 2] and len(gate.rows) < 39
    assert engine.bank.pinned() == {}


def test_full_queue_refuses_new_requests(make_engine, schedulers, adapter_dirs, solo):
    engine = make_engine(slots=2, max_batch=1)
    gate = StepGate(engine)
    scheduler = schedulers(engine, queue_size=2)
    running = request(adapter_dirs, LONG_A, None, max_new_tokens=5)
    waiting = [request(adapter_dirs, LONG_B, "r2", max_new_tokens=4), request(adapter_dirs, LONG_A, None)]
    with pytest.raises(QueueFull, match="STUDIO_SERVING_QUEUE"):
        scheduler.submit_many([running, *waiting])  # three at once into a queue of two: none is queued
    assert scheduler.waiting() == 0
    handles = [scheduler.submit(running)]
    gate.wait_started(1)  # running is in the batch (max_batch=1); the queue is empty again
    handles += scheduler.submit_many(waiting)
    assert scheduler.waiting() == 2
    with pytest.raises(QueueFull, match="2 requests are already waiting"):
        scheduler.submit(running)
    gate.open()
    for handle, req in zip(handles, [running, *waiting], strict=True):
        assert handle.result(WAIT).token_ids == solo(req).token_ids
    assert scheduler.submit(running).result(WAIT).token_ids == solo(running).token_ids  # room again


def test_unservable_adapter_fails_its_request_alone(
    make_engine, schedulers, adapter_dirs, base_dir, make_adapter, solo, tmp_path
):
    dora = make_adapter(
        base_dir, tmp_path / "dora", seed=5, r=2, lora_alpha=4, use_dora=True, target_modules=["q_proj"]
    )
    scheduler = schedulers(make_engine(slots=2))
    fine = request(adapter_dirs, LONG_A, "r2")
    refused, ok = scheduler.submit_many([EngineRequest(prompt_ids=LONG_A, adapter=str(dora), temperature=0), fine])
    with pytest.raises(AdapterNotServable, match="DoRA"):
        list(refused.updates(timeout=WAIT))
    assert ok.result(WAIT).token_ids == solo(fine).token_ids


def test_visible_text_holds_back_what_may_become_a_stop_string():
    assert visible_text("hello\nUs", ["\nUser:"]) == "hello"
    assert visible_text("hello\nUser", ["\nUser:", "xyz"]) == "hello"
    assert visible_text("hello wor", ["\nUser:"]) == "hello wor"
    assert visible_text("caf\ufffd", []) == "caf"
    assert visible_text("abc", ["c!", "bc?"]) == "a"  # the longest held-back tail wins


def test_one_scheduler_per_base_created_on_first_use(base_dir, tokenizer, fresh_base):
    loads: list[str] = []

    def loader(name: str) -> ServingEngine:
        loads.append(name)
        return ServingEngine(fresh_base(base_dir), tokenizer, slots=1)

    schedulers = Schedulers(loader, max_bases=1, queue_size=4)
    try:
        first = schedulers.get("a")
        assert schedulers.get("a") is first and loads == ["a"]
        second = schedulers.get("b")  # "a" is idle: shut down to make room
        assert second is not first and loads == ["a", "b"] and schedulers.loaded() == ["b"]
        with pytest.raises(Exception, match="shut down"):
            first.submit(EngineRequest(prompt_ids=[1, 2], temperature=0))
    finally:
        schedulers.close()
