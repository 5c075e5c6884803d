"""/v1 with a personalised (RecLoRA) bundle: the ``user`` field picks that user's mixture.

References are plain PEFT greedy generations with each user's adapter written by the model-based
exporter (:func:`export_user_adapter`), a path the serving side (base-free export + engine) does
not share.
"""

from __future__ import annotations

import threading

import pytest
import torch
from api_support import make_services, running
from conftest import load_base
from test_api_openai import CHAT, peft_greedy, prompt_ids

from studio.api.app import build_server_app

USERS = ["alice", "bob", "carol"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bundle(base_dir, tmp_path):
    """A RecLoRA bundle on the tiny base with random, clearly different users, plus each user's PEFT export."""
    from studio.composition.reclora import PersonalisedModel, RecLoRAConfig
    from studio.composition.reclora_export import export_user_adapter, save_bundle

    torch.manual_seed(5)
    config = RecLoRAConfig(n_meta=3, rank=2, lora_alpha=4.0, target_modules=["q_proj", "v_proj", "up_proj"])
    pm = PersonalisedModel(load_base(base_dir), USERS, config.model_copy(update={"zero_init_b": False})).eval()
    with torch.no_grad():
        for layer in pm.meta_layers().values():
            layer.lora_B.mul_(6.0)  # visible changes on the tiny model
        pm.gate.proj.weight.mul_(8.0)  # nearly one-hot gates: users differ clearly
    root = tmp_path / "reclora"
    path = save_bundle(pm, root / "bundle", base_model=str(base_dir))
    refs = {u: export_user_adapter(pm, u, root / f"ref-{u}") for u in USERS}
    refs[None] = export_user_adapter(pm, None, root / "ref-mean")
    return path, refs


@pytest.fixture
def served(settings, registry, base_dir, bundle):
    row = registry.add_adapter(
        name="personal", variant="reclora", base_model=str(base_dir), path=str(bundle[0]), sha256="0" * 64
    )
    services = make_services(settings, registry)
    with running(build_server_app(services)) as url:
        import openai

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        yield client, row.id
    services.playground.schedulers.close()


def chat(client, model: str, user: str | None, messages=CHAT) -> str:
    extra = {"user": user} if user is not None else {}
    reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=10, **extra)
    return reply.choices[0].message.content


def test_user_field_serves_that_users_mixture_and_unknown_users_the_mean_gate(served, base_dir, bundle):
    client, adapter_id = served
    ids = prompt_ids(base_dir)
    replies = {}
    for user in ["alice", "bob", "nobody", None]:
        reference = bundle[1].get(user if user in USERS else None)
        _, want = peft_greedy(base_dir, reference, ids, 10)
        got = chat(client, f"adapter-{adapter_id}", user)
        assert got == want, user
        replies[user] = got
    assert replies["alice"] != replies["bob"]  # the users' mixtures really differ
    assert replies["nobody"] == replies[None]  # unknown and absent users share the mean gate
    users_dir = bundle[0] / "users"
    assert len(list(users_dir.iterdir())) == 3  # alice, bob, the mean gate: never carol, who was not served


def test_two_users_in_one_batch_do_not_mix(served):
    client, adapter_id = served
    model = f"adapter-{adapter_id}"
    jobs = [
        ("alice", CHAT),
        ("bob", CHAT),
        ("carol", CHAT),
        ("alice", [{"role": "user", "content": "tell me about the sea"}]),
    ]
    solo = [chat(client, model, u, m) for u, m in jobs]
    assert len(set(solo[:3])) >= 2
    results: list[str | None] = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def stream(i: int) -> None:
        user, messages = jobs[i]
        barrier.wait()
        chunks = client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=10, stream=True, user=user
        )
        results[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == solo
