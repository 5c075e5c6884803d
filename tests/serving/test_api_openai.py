"""The OpenAI-compatible /v1 API driven by the official ``openai`` client against a real server.

A tiny random Llama is the base model and random LoRA adapters are registered in the
test registry; the app runs under uvicorn in a thread. References are PEFT's own
greedy generations (``generate`` on a PeftModel), a path the engine shares no code with.
"""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import torch
from api_support import make_services, running

from studio.api.app import build_server_app
from studio.serving.generation import prompt_text

CHAT = [{"role": "user", "content": "what color is the sky"}]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def studio(settings, registry, base_dir, adapter_dirs):
    """Services with the tiny base and its three adapters registered; ``studio(**settings)`` starts a server."""
    registered = {}
    for name in ("r2", "r4_rslora", "r8_patterns"):
        row = registry.add_adapter(
            name=name, variant="lora", base_model=str(base_dir), path=str(adapter_dirs[name]), sha256="0" * 64
        )
        registered[name] = row.id
    started = []

    class Studio:
        base = str(base_dir)
        adapters = registered

        @staticmethod
        def serve(**overrides):
            services = make_services(settings.model_copy(update=overrides), registry)
            context = running(build_server_app(services))
            url = context.__enter__()
            started.append((context, services))
            return services, url

        @staticmethod
        def client(url: str, key: str = "unused", **kwargs) -> openai.OpenAI:
            return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60, **kwargs)

    yield Studio
    for context, services in started:
        context.__exit__(None, None, None)
        services.playground.schedulers.close()


def prompt_ids(base_dir, messages=CHAT) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    return tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]


def peft_greedy(base_dir, adapter_dir, ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
    """The greedy continuation of ``ids`` by the base (+ adapter) alone: new token ids before EOS, and their text."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    new = out[0, len(ids) :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return new, tokenizer.decode(new, skip_special_tokens=True)


def test_models_lists_bases_and_adapters_by_id_and_name(studio):
    _, url = studio.serve()
    models = {m.id: m for m in studio.client(url).models.list()}
    assert studio.base in models and models[studio.base].owned_by == "system"
    for name, adapter_id in studio.adapters.items():
        for model_id in (name, f"adapter-{adapter_id}"):
            entry = models[model_id].model_dump()
            assert entry["parent"] == studio.base and entry["owned_by"] == "user" and entry["created"] > 0
    one = studio.client(url).models.retrieve(f"adapter-{studio.adapters['r2']}")
    assert one.id == f"adapter-{studio.adapters['r2']}"


def test_chat_greedy_equals_peft_and_usage_is_the_tokenizers(studio, base_dir, adapter_dirs):
    _, url = studio.serve()
    client = studio.client(url)
    ids = prompt_ids(base_dir)
    for model, adapter_dir in [(studio.base, None), ("r4_rslora", adapter_dirs["r4_rslora"])]:
        reply = client.chat.completions.create(model=model, messages=CHAT, temperature=0, max_tokens=12)
        new, text = peft_greedy(base_dir, adapter_dir, ids, 12)
        assert reply.choices[0].message.content == text and reply.choices[0].message.role == "assistant"
        assert reply.object == "chat.completion" and reply.model == model
        assert reply.choices[0].finish_reason == ("length" if len(new) == 12 else "stop")
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), len(new))
        assert reply.usage.total_tokens == len(ids) + len(new)
    # The adapter's id names the same adapter as its name.
    by_id = client.chat.completions.create(
        model=f"adapter-{studio.adapters['r4_rslora']}", messages=CHAT, temperature=0, max_tokens=12
    )
    assert by_id.choices[0].message.content == text


def test_chat_stream_equals_the_whole_reply_and_ends_with_usage(studio):
    _, url = studio.serve()
    client = studio.client(url)
    whole = client.chat.completions.create(model="r2", messages=CHAT, temperature=0, max_tokens=16)
    chunks = list(
        client.chat.completions.create(
            model="r2",
            messages=CHAT,
            temperature=0,
            max_completion_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len([c for c in chunks if c.choices]) > 3
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == [whole.choices[0].finish_reason]
    assert not chunks[-1].choices and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    # Without include_usage no usage chunk is sent.
    plain = list(client.chat.completions.create(model="r2", messages=CHAT, temperature=0, max_tokens=4, stream=True))
    assert all(c.choices for c in plain)


def raw_stream(url: str, path: str, body: dict) -> list[dict]:
    """The JSON bodies of a streamed response's server-sent events, as sent (no client fills in missing fields)."""
    import json

    with httpx.stream("POST", f"{url}/v1/{path}", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_stream_chunks_carry_usage_null_before_the_usage_chunk_only_when_asked(studio):
    _, url = studio.serve()
    asks = {"stream": True, "temperature": 0, "max_tokens": 6}
    for path, body in (("chat/completions", {"messages": CHAT}), ("completions", {"prompt": "the sky is"})):
        chunks = raw_stream(url, path, {"model": "r2", **asks, **body, "stream_options": {"include_usage": True}})
        # OpenAI's format: "usage": null on every chunk, then one chunk with the counts and no choices
        *before, last = chunks
        assert len(before) >= 2 and all("usage" in c and c["usage"] is None for c in before), path
        assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
        plain = raw_stream(url, path, {"model": "r2", **asks, **body})
        assert plain and all("usage" not in c for c in plain), path  # not asked: the field is left out


def test_completions_stream_and_not_equal_peft(studio, base_dir, adapter_dirs):
    from transformers import AutoTokenizer

    _, url = studio.serve()
    client = studio.client(url)
    prompt = "tell me about the sea"
    ids = AutoTokenizer.from_pretrained(base_dir)(prompt)["input_ids"]
    new, text = peft_greedy(base_dir, adapter_dirs["r8_patterns"], ids, 10)
    whole = client.completions.create(model="r8_patterns", prompt=prompt, temperature=0, max_tokens=10)
    assert whole.object == "text_completion" and whole.choices[0].text == text
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(ids), len(new))
    streamed = list(
        client.completions.create(model="r8_patterns", prompt=prompt, temperature=0, max_tokens=10, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed) == text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    # Token ids are taken as they are.
    by_ids = client.completions.create(model="r8_patterns", prompt=ids, temperature=0, max_tokens=10)
    assert by_ids.choices[0].text == text


def test_stop_strings_and_seeded_sampling(studio):
    _, url = studio.serve()
    client = studio.client(url)
    full = client.chat.completions.create(model="r2", messages=CHAT, temperature=0, max_tokens=16)
    words = full.choices[0].message.content.split()
    assert len(words) >= 3, full
    stop = words[2]
    cut = client.chat.completions.create(model="r2", messages=CHAT, temperature=0, max_tokens=16, stop=[stop, "zzz"])
    text = full.choices[0].message.content
    assert cut.choices[0].message.content == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"

    def sample(seed):
        reply = client.chat.completions.create(
            model="r2", messages=CHAT, temperature=1.5, top_p=0.95, seed=seed, max_tokens=16
        )
        return reply.choices[0].message.content

    assert sample(3) == sample(3)
    assert len({sample(s) for s in range(4)}) > 1


def test_api_keys(studio, tmp_path):
    _, url = studio.serve(api_keys="k-one, k-two")
    with pytest.raises(openai.AuthenticationError) as wrong:
        studio.client(url, key="nope").models.list()
    assert wrong.value.status_code == 401 and wrong.value.body["code"] == "invalid_api_key"
    missing = httpx.get(f"{url}/v1/models")
    assert missing.status_code == 401 and set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert [m.id for m in studio.client(url, key="k-two").models.list()]
    reply = studio.client(url, key="k-one").chat.completions.create(model="r2", messages=CHAT, max_tokens=2)
    assert reply.choices[0].message.content is not None

    key_file = tmp_path / "keys"
    key_file.write_text("# serving keys\nfrom-file\n")
    _, url = studio.serve(api_keys_file=key_file)
    assert studio.client(url, key="from-file").models.list().data
    with pytest.raises(openai.AuthenticationError):
        studio.client(url, key="k-one").models.list()

    # Keys off: no header needed at all.
    _, url = studio.serve()
    assert httpx.get(f"{url}/v1/models").status_code == 200

    # A studio with a login needs keys: without any configured, /v1 says how to set them.
    _, url = studio.serve(auth="alice:pw")
    locked = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer anything"})
    assert locked.status_code == 401 and "STUDIO_API_KEYS" in locked.json()["error"]["message"]
    _, url = studio.serve(auth="alice:pw", api_keys="k")
    assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200


def test_errors_in_openai_shape(studio):
    _, url = studio.serve()
    client = studio.client(url)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert unknown.value.body["code"] == "model_not_found" and unknown.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="adapter-999999", prompt="hi")

    cases = [
        (dict(temperature=5), "temperature"),
        (dict(n=2), "n"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(top_p=0), "top_p"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
        (dict(presence_penalty=1.0), "presence_penalty"),
    ]
    for params, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="r2", messages=CHAT, **params)
        assert bad.value.status_code == 400 and bad.value.body["param"] == param, params
        assert bad.value.body["type"] == "invalid_request_error"

    long_chat = [{"role": "user", "content": "the sky " * 100}]  # the tiny model's context is 128 tokens
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="r2", messages=long_chat, max_tokens=4)
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as no_room:
        client.chat.completions.create(model="r2", messages=CHAT, max_tokens=125)
    assert no_room.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="r2", prompt=[10_000_000], max_tokens=2)

    raw = httpx.post(f"{url}/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"


def test_queue_full_is_429(studio):
    services, url = studio.serve(serving_queue=1)
    scheduler = services.playground.schedulers.get(studio.base)
    client = studio.client(url)
    first: list = []
    with scheduler.engine.stepping():  # the engine is busy: the first request waits in the queue
        waiting = threading.Thread(
            target=lambda: first.append(client.chat.completions.create(model="r2", messages=CHAT, max_tokens=2))
        )
        waiting.start()
        deadline = time.monotonic() + 20
        while scheduler.waiting() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as full:
            client.chat.completions.create(model="r4_rslora", messages=CHAT, max_tokens=2)
        assert full.value.status_code == 429 and full.value.body["type"] == "rate_limit_exceeded"
    waiting.join(30)
    assert first and first[0].choices[0].message.content is not None


def test_concurrent_streams_on_different_adapters_do_not_mix(studio):
    _, url = studio.serve()
    client = studio.client(url)
    models = [studio.base, "r2", "r4_rslora", "r8_patterns"]
    chats = [[{"role": "user", "content": text}] for text in ("what color is the sky", "tell me about the sea please")]
    jobs = [(models[i % 4], chats[i // 4]) for i in range(8)]
    solo = [
        client.chat.completions.create(model=m, messages=c, temperature=0, max_tokens=20).choices[0].message.content
        for m, c in jobs
    ]
    assert len(set(solo)) >= 6  # the references really differ, so a mix-up would show
    results: list[str | None] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def stream(i: int) -> None:
        model, chat = jobs[i]
        barrier.wait()
        chunks = client.chat.completions.create(model=model, messages=chat, temperature=0, max_tokens=20, stream=True)
        results[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == solo


def test_a_disconnected_stream_is_cancelled(studio, monkeypatch):
    services, url = studio.serve()
    scheduler = services.playground.schedulers.get(studio.base)
    engine = scheduler.engine
    decode = engine._decode

    def slow_decode(*args, **kwargs):  # about 5 s for 100 tokens: far longer than the test waits
        time.sleep(0.05)
        return decode(*args, **kwargs)

    monkeypatch.setattr(engine, "_decode", slow_decode)
    handles = []
    submit = scheduler.submit
    monkeypatch.setattr(scheduler, "submit", lambda request: handles.append(submit(request)) or handles[-1])
    stream = studio.client(url).completions.create(
        model="r2", prompt=[5, 6, 7], temperature=1.0, seed=1, max_tokens=100, stream=True
    )
    next(iter(stream))
    started = time.monotonic()
    stream.close()  # the client goes away mid-stream
    result = handles[0].result(timeout=10)
    assert result.finish_reason == "cancelled" and len(result.token_ids) < 100
    assert time.monotonic() - started < 3
    deadline = time.monotonic() + 5
    while not scheduler.idle() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scheduler.idle() and engine.bank.pinned() == {}  # its adapter slot is free again


def test_dora_is_served_through_its_export_and_what_only_peft_can_serve_is_a_400(
    studio, registry, base_dir, make_adapter, tmp_path
):
    dora = make_adapter(
        base_dir, tmp_path / "dora", seed=5, r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj"]
    )
    row = registry.add_adapter(name="dora", variant="dora", base_model=studio.base, path=str(dora), sha256="0" * 64)
    embed = make_adapter(base_dir, tmp_path / "embed", seed=6, r=2, target_modules=["embed_tokens"])
    refused = registry.add_adapter(
        name="embed", variant="lora", base_model=studio.base, path=str(embed), sha256="0" * 64
    )
    _, url = studio.serve()
    client = studio.client(url)
    # DoRA has a plain-LoRA export (SVD at its rank): the engine serves it, as in the playground.
    reply = client.chat.completions.create(model=f"adapter-{row.id}", messages=CHAT, max_tokens=3, temperature=0)
    assert reply.usage.completion_tokens >= 1
    assert any(p.name.startswith("served_lora_") for p in dora.iterdir())
    # LoRA on the embeddings has no export the engine reads: a 400 that says why.
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as error:
            client.chat.completions.create(model=f"adapter-{refused.id}", messages=CHAT, max_tokens=4, stream=stream)
        assert error.value.body["code"] == "model_not_servable" and "embedding" in error.value.body["message"].lower()
    # The engine goes on serving the others.
    assert client.chat.completions.create(model="r2", messages=CHAT, max_tokens=2).choices
