"""Chatting with a MeteoRA mixture: playground panes and /v1 answer on the loaded bundle, one reply at a time."""

from __future__ import annotations

import pytest
import torch
from api_support import make_services, running
from conftest import load_base, save_adapter

from studio.api.app import build_server_app
from studio.composition.meteora import ExpertRef, MeteoRAModel
from studio.composition.meteora_bundle import load_bundle, save_bundle
from studio.serving.generation import GenerationSettings, prompt_text

CHAT = [{"role": "user", "content": "what color is the sky"}]
EXPERTS = [dict(r=2, lora_alpha=4), dict(r=4, lora_alpha=8, use_rslora=True)]
GREEDY = GenerationSettings(temperature=0, max_new_tokens=10, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def expert_paths(base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture-experts")
    return [
        save_adapter(base_dir, root / f"e{i}", seed=30 + i, target_modules=["q_proj", "v_proj", "up_proj"], **lora)
        for i, lora in enumerate(EXPERTS)
    ]


@pytest.fixture
def mixture_row(registry, base_dir, expert_paths, tmp_path):
    """Two registered experts and a registered mixture of them (random, clearly non-zero routers)."""
    experts = [
        registry.add_adapter(name=f"e{i}", variant="lora", base_model=str(base_dir), path=str(p), sha256="0" * 64)
        for i, p in enumerate(expert_paths)
    ]
    refs = [ExpertRef(path=e.path, name=e.name, adapter_id=e.id) for e in experts]
    mixture = MeteoRAModel.from_adapters(load_base(base_dir), refs, top_k=1, seed=4)
    with torch.no_grad():
        for layer in mixture.gated.values():
            layer.router.weight.mul_(30.0)  # decisive routing: both experts are used across tokens
    save_bundle(mixture, tmp_path / "bundle")
    return registry.add_adapter(
        name="mix",
        variant="mixture",
        base_model=str(base_dir),
        path=str(tmp_path / "bundle"),
        sha256="0" * 64,
        parents=[e.id for e in experts],
    )


def direct_greedy(base_dir, bundle, ids: list[int], max_new_tokens: int) -> tuple[list[int], str]:
    """Greedy ``generate`` on ``load_bundle``'s model: new token ids before EOS and their text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = load_bundle(load_base(base_dir), bundle).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    new = out[0, len(ids) :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return new, tokenizer.decode(new, skip_special_tokens=True)


def chat_ids(base_dir) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    return tokenizer(prompt_text(tokenizer, CHAT), add_special_tokens=False)["input_ids"]


def test_the_playground_answers_a_mixture_like_generating_on_the_bundle(settings, registry, base_dir, mixture_row):
    from studio.services.playground import PlaygroundService

    service = PlaygroundService(registry, settings)
    target = f"adapter:{mixture_row.id}"
    assert target in [t.value for t in service.targets(str(base_dir))]
    assert service.serving_info(str(base_dir), target)["served_by"] == "mixture"
    ids = chat_ids(base_dir)
    _, expected = direct_greedy(base_dir, mixture_row.path, ids, GREEDY.max_new_tokens)
    _, base_text = direct_greedy_base(base_dir, ids)
    assert expected != base_text  # the mixture really changes the reply
    replies = list(service.stream(str(base_dir), target, CHAT, GREEDY))
    assert replies[-1] == expected
    # Side by side with the base: the base pane runs on the engine, the mixture pane on its own model.
    panes = {}
    for reply in service.stream_panes(str(base_dir), [("base", CHAT), (target, CHAT)], GREEDY):
        panes[reply.pane] = reply.text
    assert panes == {0: base_text, 1: expected}
    assert service.mixtures.loaded() == [mixture_row.path]  # cached: one bundle in memory
    service.schedulers.close()


def direct_greedy_base(base_dir, ids):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with torch.no_grad():
        out = load_base(base_dir).generate(
            torch.tensor([ids]),
            max_new_tokens=GREEDY.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = [t for t in out[0, len(ids) :].tolist()]
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return new, tokenizer.decode(new, skip_special_tokens=True)


def test_v1_lists_and_answers_a_mixture(settings, registry, base_dir, mixture_row):
    import openai

    services = make_services(settings, registry)
    with running(build_server_app(services)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        models = {m.id: m for m in client.models.list()}
        assert models[f"adapter-{mixture_row.id}"].model_dump()["parent"] == str(base_dir) and "mix" in models
        ids = chat_ids(base_dir)
        new, text = direct_greedy(base_dir, mixture_row.path, ids, 10)
        reply = client.chat.completions.create(model="mix", messages=CHAT, temperature=0, max_tokens=10)
        assert reply.choices[0].message.content == text
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), len(new))
        assert reply.choices[0].finish_reason == ("length" if len(new) == 10 else "stop")
        chunks = list(
            client.chat.completions.create(
                model=f"adapter-{mixture_row.id}", messages=CHAT, temperature=0, max_tokens=10, stream=True
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text and chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    services.playground.schedulers.close()


def test_the_adapters_tab_shows_a_mixtures_routing_heatmap(settings, registry, base_dir, mixture_row):
    from app import tab_adapters

    services = make_services(settings, registry)
    shown = tab_adapters.details(services, mixture_row.id)
    assert shown["mixture_box"]["visible"] is True and "Mixed by" not in shown["details"]  # no job made it here
    prompt = "what color is the sky"
    figure = tab_adapters.mixture_routing(services, mixture_row.id, prompt)["mixture_heatmap"]
    (heatmap,) = figure.data
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(base_dir)(prompt)["input_ids"])
    assert tokens >= len(prompt.split())
    assert len(heatmap.z) == 2 * 3  # one row per gated module: 2 layers x (q_proj, v_proj, up_proj)
    assert all(len(row) == tokens for row in heatmap.z)
    assert {e for row in heatmap.z for e in row} <= {0, 1}
    # The figure's choices are the mixture's own top-1 choices.
    mixture, tokenizer = services.playground.mixtures.peek(str(base_dir), mixture_row.path)
    with mixture.record_choices() as recording, torch.no_grad():
        mixture(input_ids=tokenizer(prompt, return_tensors="pt")["input_ids"])
    assert [list(row) for row in heatmap.z] == [c[0].tolist() for c in recording.per_module().values()]
    lora = registry.add_adapter(name="plain", variant="lora", base_model=str(base_dir), path="x", sha256="0")
    assert tab_adapters.mixture_details(lora)["mixture_box"]["visible"] is False
    services.playground.schedulers.close()
