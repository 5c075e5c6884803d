"""Playground serving on a tiny random Llama: streaming, adapters switching outputs, the LRU limit."""

from __future__ import annotations

import pytest

from studio.errors import ValidationFailed
from studio.services.playground import PlaygroundService
from studio.serving.generation import GenerationSettings, prompt_text

GREEDY = GenerationSettings(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)
CHAT = [{"role": "user", "content": "what is the capital of france?"}]


def add_adapter(registry, path, base, name="a"):
    return registry.add_adapter(name=name, variant="lora", base_model=base, path=str(path), sha256="0" * 64)


@pytest.fixture
def playground(registry, settings):
    service = PlaygroundService(registry, settings.model_copy(update={"serving_slots": 2}), max_adapters=2)
    yield service
    service.schedulers.close()


def test_stream_yields_growing_text(playground, tiny_llama):
    pieces = list(playground.stream(str(tiny_llama), "base", CHAT, GREEDY))
    assert len(pieces) >= 2, "tokens are streamed one by one"
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:], strict=False))
    assert pieces[-1].strip()


def test_chat_template_is_applied(tiny_llama):
    from transformers import AutoTokenizer

    text = prompt_text(AutoTokenizer.from_pretrained(tiny_llama), CHAT)
    assert text == "<|user|>what is the capital of france?</s><|assistant|>"


def test_adapters_switch_outputs_and_base_stays_base(playground, registry, tiny_llama, tiny_loras):
    base = str(tiny_llama)
    a1, a2 = (add_adapter(registry, p, base, f"a{i}") for i, p in enumerate(tiny_loras))
    reply = {t: list(playground.stream(base, t, CHAT, GREEDY))[-1] for t in ("base", f"adapter:{a1.id}")}
    reply[f"adapter:{a2.id}"] = list(playground.stream(base, f"adapter:{a2.id}", CHAT, GREEDY))[-1]
    assert len(set(reply.values())) == 3, reply
    # Back to the bare base after adapters were attached: the same reply as before.
    assert list(playground.stream(base, "base", CHAT, GREEDY))[-1] == reply["base"]
    assert list(playground.stream(base, f"adapter:{a1.id}", CHAT, GREEDY))[-1] == reply[f"adapter:{a1.id}"]
    assert [t.value for t in playground.targets(base)] == ["base", f"adapter:{a2.id}", f"adapter:{a1.id}"]


def test_lru_keeps_at_most_serving_slots_adapters(playground, registry, tiny_llama, tiny_loras, tmp_path):
    """LoRA adapters are served by the engine: its bank keeps the 2 (STUDIO_SERVING_SLOTS) most recent; no PEFT."""
    from ui.tiny_model import save_random_lora

    base = str(tiny_llama)
    third = save_random_lora(tiny_llama, tmp_path / "lora3", seed=9)
    ids = [add_adapter(registry, p, base).id for p in [*tiny_loras, third]]
    for adapter_id in ids:
        list(playground.stream(base, f"adapter:{adapter_id}", CHAT, GREEDY))
    assert list(playground.schedulers.get(base).engine.bank.resident()) == [f"adapter_{i}" for i in ids[1:]]
    assert playground.pool.loaded() == {}


def test_adapter_of_another_base_is_refused(playground, registry, tiny_llama, tiny_loras):
    row = add_adapter(registry, tiny_loras[0], "some-other-model")
    with pytest.raises(ValidationFailed, match="trained on some-other-model"):
        list(playground.stream(str(tiny_llama), f"adapter:{row.id}", CHAT, GREEDY))


def test_a_stream_may_be_advanced_from_several_threads(playground, tiny_llama):
    """Gradio advances sync generators from worker threads: the pool's lock must allow that."""
    from concurrent.futures import ThreadPoolExecutor

    stream = playground.stream(str(tiny_llama), "base", CHAT, GREEDY)
    threads = [ThreadPoolExecutor(max_workers=1), ThreadPoolExecutor(max_workers=1)]
    pieces: list[str] = []
    while (piece := threads[len(pieces) % 2].submit(next, stream, None).result()) is not None:
        pieces.append(piece)
    for executor in threads:
        executor.shutdown()
    assert pieces
    assert list(playground.stream(str(tiny_llama), "base", CHAT, GREEDY))[-1] == pieces[-1]  # lock released
