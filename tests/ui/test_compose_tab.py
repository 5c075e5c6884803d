"""Compose tab: the MeteoRA mixture form (field errors, the job it queues), the RecLoRA section (users, gates,
a user's zip that plain PEFT loads) and the playground's per-pane user box for a personalised adapter."""

from __future__ import annotations

import json
import zipfile

import gradio as gr
import pytest
import torch

from app import compose_mixture, compose_personalise, tab_compose
from app.compose_errors import FormErrors
from studio.schema import MixtureSettings

USERS = ["alice", "bob", "carol"]
GOOD_SETTINGS = MixtureSettings().model_dump()
TOP = {"name": None, "steps": 20, "seed": 3, "validation_fraction": 0.1}


def load_base(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def add_dataset(services, tmp_path, name: str, rows: list[dict]):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return services.datasets.add(path)


@pytest.fixture
def experts(services, tiny_llama, tiny_loras, tmp_path):
    """Two LoRA adapters of the tiny base and a labelled dataset for each one's task."""
    adapters = [
        services.registry.add_adapter(
            name=f"lora{i}", variant="lora", base_model=str(tiny_llama), path=str(path), sha256="0" * 64
        )
        for i, path in enumerate(tiny_loras)
    ]
    datasets = [
        add_dataset(services, tmp_path, task, [{"text": f"{task} {i}"} for i in range(6)])
        for task in ("colours", "numbers")
    ]
    return [a.id for a in adapters], [d.id for d in datasets]


@pytest.fixture
def bundle(services, tiny_llama, tmp_path):
    """A registered RecLoRA bundle on the tiny base with clearly different (nearly one-hot) user gates."""
    from studio.composition.reclora import PersonalisedModel, RecLoRAConfig
    from studio.composition.reclora_export import save_bundle

    torch.manual_seed(5)
    config = RecLoRAConfig(n_meta=3, rank=2, lora_alpha=4.0, target_modules=["q_proj", "v_proj"], zero_init_b=False)
    pm = PersonalisedModel(load_base(tiny_llama), USERS, config).eval()
    with torch.no_grad():
        for layer in pm.meta_layers().values():
            layer.lora_B.mul_(6.0)  # visible changes on the tiny model
        pm.gate.proj.weight.mul_(8.0)  # nearly one-hot gates: users differ clearly
    path = save_bundle(pm, tmp_path / "bundle", base_model=str(tiny_llama))
    row = services.registry.add_adapter(
        name="personal", variant="reclora", base_model=str(tiny_llama), path=str(path), sha256="0" * 64
    )
    return row, pm


def test_the_tab_builds_with_both_sections(services):
    with gr.Blocks() as demo, gr.Tab("Compose") as tab:
        tab_compose.build(services, tab, demo)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    wanted = {"mix-submit", "mix-adapter-0", "mix-dataset-7", "mix-set-top-k", "mix-steps", "mix-heatmap", "mix-usage"}
    wanted |= {"reclora-submit", "reclora-user-column", "reclora-n-meta", "reclora-gates", "reclora-download"}
    assert wanted <= ids, wanted - ids
    assert "mix-set-seed" not in ids and "mix-set-max-steps" not in ids  # the request's steps and seed set them


def test_mixture_form_puts_each_problem_next_to_its_field(experts):
    (a1, a2), (d1, d2) = experts
    with pytest.raises(FormErrors) as caught:
        compose_mixture.build_mixture_request([(a1, d1), (a1, None)], TOP, GOOD_SETTINGS)
    assert caught.value.errors == {
        "expert.1.adapter": "Already expert 1: pick another.",
        "expert.1.dataset": "Choose the dataset of this expert's task.",
    }
    bad = {**GOOD_SETTINGS, "top_k": 3, "temperature": 0.0}
    with pytest.raises(FormErrors) as caught:
        compose_mixture.build_mixture_request([(a1, d1), (a2, d2)], {**TOP, "validation_fraction": 1.0}, bad)
    assert caught.value.errors == {
        "settings.temperature": "must be more than 0",
        "validation_fraction": "must be less than 1",
    }
    with pytest.raises(FormErrors) as caught:  # the model validator names a nested field
        compose_mixture.build_mixture_request([(a1, d1), (a2, d2)], TOP, {**GOOD_SETTINGS, "top_k": 3})
    assert caught.value.errors == {"settings.top_k": "at most the number of experts (2), not 3"}
    with pytest.raises(FormErrors) as caught:
        compose_mixture.build_mixture_request([(a1, d1)], TOP, GOOD_SETTINGS)
    assert caught.value.errors["expert.0.adapter"].startswith("a mixture needs at least 2 expert adapters")


def test_error_updates_reach_the_settings_widget_and_clear_others():
    from app.compose_errors import form_error_updates
    from app.forms import SchemaForm

    with gr.Blocks():
        form = SchemaForm(MixtureSettings.model_json_schema(), "mix-set", skip=compose_mixture.SKIP_SETTINGS)
    updates = form_error_updates(form, "settings", {"settings.top_k": "at most 2", "steps": "x"}, "settings.")
    assert set(updates) == {f"settings.{n}" for n in form.names}
    assert updates["settings.top_k"]["info"] == "⚠ at most 2"
    assert updates["settings.top_k"]["elem_classes"] == ["field-error"]
    assert updates["settings.temperature"]["elem_classes"] == []  # restored, not flagged


def test_submitting_the_mixture_form_queues_a_mixture_job(services, experts):
    (a1, a2), (d1, d2) = experts
    assert {a1, a2} <= {value for _, value in compose_mixture.expert_choices(services)}
    request = compose_mixture.build_mixture_request([(a2, d2), (a1, d1)], {**TOP, "name": " mix "}, GOOD_SETTINGS)
    line = compose_mixture.submit_mixture(services, request, "token-1")
    job = services.jobs.list(kind="mixture")[0]
    assert line.startswith(f"Queued mixture job #{job.id} (#{a2} on dataset #{d2}, #{a1} on dataset #{d1})")
    assert job.request["adapter_ids"] == [a2, a1] and job.request["dataset_ids"] == [d2, d1]
    assert job.request["name"] == "mix" and job.request["settings"]["max_steps"] == 20
    assert services.jobs.dispatcher.sent == [job.id]
    compose_mixture.submit_mixture(services, request, "token-1")  # a double click: still one job
    assert len(services.jobs.list(kind="mixture")) == 1


def test_routing_charts_need_a_mixture(services, experts):
    from studio.errors import ValidationFailed

    charts = compose_mixture.mixture_charts(services, None, "hello")
    assert charts["heatmap"].layout.annotations[0].text == "Pick a mixture first."
    with pytest.raises(ValidationFailed, match="is a lora adapter, not a mixture"):
        compose_mixture.mixture_charts(services, experts[0][0], "hello")


def test_personalise_form_offers_the_uploaded_columns_and_queues_the_job(services, tiny_llama, tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}", "persona": USERS[i % 3]} for i in range(6)]
    dataset = add_dataset(services, tmp_path, "personas", rows)
    assert "persona" in compose_personalise.column_choices(services, dataset.id)
    options = {"n_meta": 2, "rank": 2, "steps": 0, "name": "", "user_features_path": ""}
    with pytest.raises(FormErrors) as caught:
        compose_personalise.build_personalise_request(services, dataset.id, "author", str(tiny_llama), options)
    assert set(caught.value.errors) == {"user_column", "steps"}
    assert (
        "no column 'author'" in caught.value.errors["user_column"] and "'persona'" in caught.value.errors["user_column"]
    )
    request = compose_personalise.build_personalise_request(
        services, dataset.id, "persona", str(tiny_llama), {**options, "steps": 5}
    )
    line = compose_personalise.submit_personalise(services, request)
    job = services.jobs.list(kind="personalise")[0]
    assert line.startswith(f"Queued personalise job #{job.id}")
    assert job.request["user_column"] == "persona" and job.request["steps"] == 5 and job.request["name"] is None


def test_user_page_searches_and_its_heatmap_is_the_bundles_gates(services, bundle):
    row, pm = bundle
    assert compose_personalise.bundle_choices(services)[0][1] == row.id
    shown = compose_personalise.user_page(services, row.id, "", 1)
    assert shown["users"] == USERS and shown["page_info"].startswith("3 user(s) match")
    heat = shown["gates"].data[0]
    with torch.no_grad():
        want = pm.gate(USERS).float()
    torch.testing.assert_close(torch.tensor(heat.z, dtype=torch.float32), want, atol=1e-6, rtol=1e-6)
    assert list(heat.y) == USERS and len(heat.x) == 3
    assert compose_personalise.user_page(services, row.id, "AR", 1)["users"] == ["carol"]


def test_a_users_download_is_a_zip_that_plain_peft_loads_with_the_bundles_logits(
    services, bundle, tiny_llama, tmp_path
):
    from peft import PeftModel

    row, pm = bundle
    path = compose_personalise.user_download(services, row.id, "bob")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "unzipped")
    folder = tmp_path / "unzipped" / names[0].split("/")[0]
    assert {"adapter_config.json", "adapter_model.safetensors", "SHA256SUMS", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 6  # K·r
    ids = torch.tensor([[1, 12, 13, 14, 15, 16]])
    peft_model = PeftModel.from_pretrained(load_base(tiny_llama), str(folder)).eval()
    with torch.no_grad():
        got = peft_model(input_ids=ids).logits
        want = pm(input_ids=ids, users=["bob"]).logits
        other = pm(input_ids=ids, users=["alice"]).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - other).abs().max() > 1e-3  # the zip is bob's, not anyone's


def test_playground_user_box_shows_for_a_bundle_and_changes_its_reply(services, bundle, tiny_loras, tiny_llama):
    from app import tab_playground
    from studio.serving.generation import GenerationSettings

    row, _ = bundle
    lora = services.registry.add_adapter(
        name="plain", variant="lora", base_model=str(tiny_llama), path=str(tiny_loras[0]), sha256="0" * 64
    )
    playground = services.playground
    try:
        assert tab_playground.user_box(playground, f"adapter:{row.id}")["visible"] is True
        assert tab_playground.user_box(playground, f"adapter:{lora.id}")["visible"] is False
        assert tab_playground.user_box(playground, "base")["visible"] is False

        with gr.Blocks():
            gen = tab_playground.SchemaForm(GenerationSettings.model_json_schema(), "gen")
        greedy = {f"gen.{n}": v for n, v in {"max_new_tokens": 8, "temperature": 0.0}.items()}
        raw = {f"gen.{n}": w.value for n, w in gen.widgets.items()} | greedy

        def reply(user: str) -> str:
            target = f"adapter:{row.id}"
            steps = list(
                tab_playground.send(
                    playground,
                    gen,
                    str(tiny_llama),
                    1,
                    "what is the capital of france?",
                    target_0=target,
                    chat_0=[],
                    user_0=user,
                    **raw,
                )
            )
            return steps[-1]["chat_0"][-1]["content"]

        replies = {user: reply(user) for user in ("alice", "carol", "")}
        assert replies["alice"] != replies["carol"], replies
        assert replies["alice"] == reply("alice")  # the same user, the same (greedy) reply
        # An empty box is the mean gate, which is what an unknown user gets too.
        assert replies[""] == reply("nobody")
    finally:
        playground.schedulers.close()
