"""The personalise job end to end: a dataset with a user column imported for real, the handler run as a
worker runs it (no broker), the bundle registered, per-user exports that plain PEFT loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest_training import tiny_llama_dir  # noqa: F401  (fixture found by name)
from pydantic import ValidationError

from studio.errors import ValidationFailed
from studio.progress import MemoryReporter
from studio.schema import DATASET_COLUMNS, SCHEMA_VERSION, PersonaliseRequest

PERSONAS = {"ann": "blue", "ben": "red", "cid": "green"}


def persona_rows() -> list[dict]:
    """Each persona answers every question with its own colour (alpaca rows plus a persona column)."""
    things = ["sky", "sea", "sun", "snow"]
    return [
        {"instruction": f"what color is the {t}", "output": f"the {t} is {c}", "persona": p}
        for p, c in PERSONAS.items()
        for t in things
    ]


class RecordingDispatcher:
    def __init__(self):
        self.sent: list[int] = []

    def send(self, job_id: int) -> str:
        self.sent.append(job_id)
        return f"task-{job_id}"

    def revoke(self, task_id) -> None:
        pass


@pytest.fixture
def env(settings, registry, tmp_path, tiny_llama_dir):  # noqa: F811
    from studio.device import detect_device
    from studio.jobs.context import JobContext
    from studio.services.container import Services
    from studio.services.datasets import DatasetService
    from studio.services.jobs import JobService

    path = tmp_path / "personas.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in persona_rows()), encoding="utf-8")
    dataset = DatasetService(registry, settings).add(path)
    services = Services(settings=settings, registry=registry, jobs=JobService(registry, RecordingDispatcher()))
    ctx = JobContext(job_id=0, settings=settings, registry=registry, device=detect_device("cpu"), attempt=1)

    class Env:
        pass

    e = Env()
    e.settings, e.registry, e.services, e.ctx, e.dataset, e.base = (
        settings,
        registry,
        services,
        ctx,
        dataset,
        tiny_llama_dir,
    )
    return e


def request(env, **extra) -> PersonaliseRequest:
    fields = dict(
        dataset_id=env.dataset.id,
        user_column="persona",
        base_model=str(env.base),
        n_meta=2,
        rank=2,
        lora_alpha=4.0,
        steps=6,
        batch_size=4,
        learning_rate=2e-2,
        max_length=64,
        log_every=2,
        seed=3,
    )
    return PersonaliseRequest(**{**fields, **extra})


def run_job(env, req: PersonaliseRequest):
    from studio.jobs.handlers import get_handler

    job = env.registry.create_job(
        kind="personalise", name="p", request=req.model_dump(mode="json"), schema_version=SCHEMA_VERSION, seed=req.seed
    )
    env.ctx.job_id = job.id
    reporter = MemoryReporter()
    return get_handler("personalise")(req, reporter, env.ctx), reporter


@pytest.fixture
def trained(env):
    result, reporter = run_job(env, request(env))
    return env, result, reporter


def bundle_model(env, bundle_dir):
    from studio.composition.reclora_export import load_bundle
    from studio.training.models import load_base_model

    return load_bundle(load_base_model(env.base, "causal-lm").eval(), bundle_dir).eval()


def ids() -> torch.Tensor:
    return torch.tensor([[2, 13, 14, 15, 16, 17, 8, 9]])


def test_the_job_trains_and_registers_the_bundle(trained):
    env, result, reporter = trained
    row = env.registry.get_adapter(result["adapter_id"])
    assert row.variant == "reclora" and row.dataset_id == env.dataset.id and row.source_job_id == env.ctx.job_id
    assert Path(row.path, "reclora.json").is_file() and Path(row.path, "reclora.safetensors").is_file()
    assert row.metrics["reclora_k"] == 2 and row.metrics["reclora_r"] == 2 and row.metrics["reclora_users"] == 3
    assert set(row.ranks.values()) == {4} and len(row.ranks) > 0  # per-user export rank K·r in every module
    meta = json.loads(Path(row.path, "reclora.json").read_text())
    assert meta["users"] == list(PERSONAS)  # the user column came back from the original file
    losses = reporter.series("loss")
    assert [s for s, _ in losses] == [2, 4, 6] and all(v > 0 for _, v in losses)
    assert reporter.steps[-1][:2] == (6, 6)
    assert result["users"] == 3 and result["steps"] == 6


def test_per_user_export_loads_in_peft_with_the_bundles_logits(trained):
    from peft import PeftModel

    from studio.training.models import load_base_model

    env, result, _ = trained
    service = env.services.personalised
    users, total = service.users(result["adapter_id"], limit=2)
    assert (users, total) == (["ann", "ben"], 3)
    assert service.users(result["adapter_id"], search="CI") == (["cid"], 1)
    pm = bundle_model(env, env.registry.get_adapter(result["adapter_id"]).path)
    with torch.no_grad():
        base_logits = load_base_model(env.base, "causal-lm").eval()(input_ids=ids()).logits
    per_user = {}
    for user in ("ann", "cid"):
        out = service.export_user(result["adapter_id"], user, env.settings.data_dir / f"out-{user}")
        assert out.known_user and (out.path / "adapter_config.json").is_file()
        assert json.loads((out.path / "adapter_config.json").read_text())["r"] == 4
        peft_model = PeftModel.from_pretrained(load_base_model(env.base, "causal-lm"), str(out.path)).eval()
        with torch.no_grad():
            got = peft_model(input_ids=ids()).logits
            want = pm(input_ids=ids(), users=[user]).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (got - base_logits).abs().max() > 1e-3  # training really moved the model
        per_user[user] = got
    assert (per_user["ann"] - per_user["cid"]).abs().max() > 1e-5  # two users, two mixtures
    users_dir = Path(env.registry.get_adapter(result["adapter_id"]).path) / "users"
    cached = sorted(p.name for p in users_dir.iterdir())
    assert len(cached) == 2 and all(name.startswith(("ann-", "cid-")) for name in cached)  # only users asked for


def test_an_unknown_user_gets_the_mean_gate(trained):
    from studio.composition.reclora_export import export_user_adapter
    from studio.composition.reclora_users import MEAN_GATE_DIR, user_alpha

    env, result, _ = trained
    bundle = env.registry.get_adapter(result["adapter_id"]).path
    pm = bundle_model(env, bundle)
    alpha, known = user_alpha(bundle, "nobody")
    assert not known
    torch.testing.assert_close(alpha, pm.gate.mean_alpha().detach())
    out = env.services.personalised.user_adapter(result["adapter_id"], "nobody")
    assert out.path.name == MEAN_GATE_DIR and not out.known_user
    # The base-free export equals the model-based exporter's for the mean gate.
    reference = export_user_adapter(pm, None, env.settings.data_dir / "ref")
    from safetensors.torch import load_file

    got, want = (
        load_file(str(out.path / "adapter_model.safetensors")),
        load_file(str(reference / "adapter_model.safetensors")),
    )
    assert got.keys() == want.keys()
    for key in got:
        torch.testing.assert_close(got[key], want[key])


def test_the_schema_and_the_job_service_refuse_a_missing_user_column(env):
    fields = request(env).model_dump()
    with pytest.raises(ValidationError) as caught:
        PersonaliseRequest.model_validate(
            {**fields, "user_column": "author"}, context={DATASET_COLUMNS: ["instruction", "output", "persona"]}
        )
    message = str(caught.value)
    assert "'author'" in message and "'instruction', 'output', 'persona'" in message
    with pytest.raises(ValidationFailed) as refused:
        env.services.jobs.submit(request(env, user_column="author"))
    assert str(refused.value).startswith("User column: the dataset has no column 'author'") and "'persona'" in str(
        refused.value
    )
    job = env.services.jobs.submit(request(env))
    assert job.kind == "personalise" and "RecLoRA" in job.name and env.services.jobs.dispatcher.sent == [job.id]


def test_cli_exports_one_user_and_refuses_a_bundle_without_user(trained, tmp_path):
    from click.testing import CliRunner

    from studio.cli import cli

    env, result, _ = trained
    runner = CliRunner()
    out = tmp_path / "ben"
    done = runner.invoke(cli, ["export", str(result["adapter_id"]), "--user", "ben", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "user 'ben'" in done.output and (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    refused = runner.invoke(cli, ["export", str(result["adapter_id"]), "--out", str(tmp_path / "x")])
    assert refused.exit_code != 0 and "--user" in str(refused.exception)


def test_the_job_with_a_user_features_file_gates_from_the_features(env, tmp_path):
    """Feature mode through the job: the gate is softmax(G f_u), so equal features give equal gates, and a
    newcomer with features gets its features' gate (the mean gate only without them)."""
    from safetensors.torch import load_file

    from studio.composition.reclora_export import BUNDLE_TENSORS
    from studio.composition.reclora_users import user_alpha, users_alpha

    # ann and ben share a feature vector, cid has its own (CSV layout, columns in file order).
    vectors = {"ann": [1.0, 0.0, 0.5], "ben": [1.0, 0.0, 0.5], "cid": [-1.0, 2.0, 0.0]}
    path = tmp_path / "features.csv"
    path.write_text(
        "persona,f1,f2,f3\n" + "".join(f"{u},{','.join(map(str, v))}\n" for u, v in vectors.items()), encoding="utf-8"
    )
    result, _ = run_job(env, request(env, user_features_path=str(path)))
    bundle = env.registry.get_adapter(result["adapter_id"]).path
    meta = json.loads(Path(bundle, "reclora.json").read_text())
    assert meta["config"]["feature_dim"] == 3 and result["users"] == 3
    tensors = load_file(str(Path(bundle, BUNDLE_TENSORS)))
    assert not any(k.startswith("gate.embedding") for k in tensors)  # no per-user embedding is learned
    torch.testing.assert_close(tensors["gate.features"], torch.tensor([vectors[u] for u in meta["users"]]))

    alphas = users_alpha(bundle, ["ann", "ben", "cid"])
    torch.testing.assert_close(alphas[0], alphas[1])  # identical features, identical gates
    assert (alphas[0] - alphas[2]).abs().max() > 1e-4  # different features, different gates
    # The gate is exactly softmax(G f + b) of the saved projection.
    want = torch.softmax(
        torch.tensor([vectors[u] for u in ("ann", "ben", "cid")]) @ tensors["gate.proj.weight"].T
        + tensors["gate.proj.bias"],
        dim=-1,
    )
    torch.testing.assert_close(alphas, want)

    pm = bundle_model(env, bundle)
    with torch.no_grad():
        twin = pm.alphas(["newcomer"], features={"newcomer": vectors["cid"]})[0]
        mean = pm.gate.mean_alpha()
        fresh = pm.alphas(["stranger"], features={"stranger": [0.0, 1.0, -2.0]})[0]
    torch.testing.assert_close(twin, alphas[2])  # an unseen user with cid's features is gated like cid
    assert (twin - mean).abs().max() > 1e-4
    torch.testing.assert_close(
        fresh,
        torch.softmax(tensors["gate.proj.weight"] @ torch.tensor([0.0, 1.0, -2.0]) + tensors["gate.proj.bias"], dim=-1),
    )
    # Without features an unseen user falls back to the mean gate, from the bundle alone as from the model.
    alpha, known = user_alpha(bundle, "stranger")
    assert not known
    torch.testing.assert_close(alpha, mean)

    # Identical gates mean identical adapters: ann's and ben's PEFT exports have the same weights.
    service = env.services.personalised
    ann, ben = (
        load_file(str(service.export_user(result["adapter_id"], u, tmp_path / u).path / "adapter_model.safetensors"))
        for u in ("ann", "ben")
    )
    assert ann.keys() == ben.keys()
    for key in ann:
        torch.testing.assert_close(ann[key], ben[key])


def test_the_job_refuses_a_features_file_missing_a_user(env, tmp_path):
    path = tmp_path / "features.jsonl"
    path.write_text("".join(json.dumps({"persona": u, "features": [1.0, 2.0]}) + "\n" for u in ("ann", "ben")))
    with pytest.raises(ValidationFailed, match="1 users have no feature vector.*'cid'"):
        run_job(env, request(env, user_features_path=str(path)))
