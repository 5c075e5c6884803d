"""LoRA-LEGO (spec §1): rank units pooled, folded, clustered; the merge job end to end; the CLI's options."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from studio.errors import ValidationFailed
from studio.merging.lego import centroids, cluster_units, default_k, fold_units, lego_merge
from studio.schema import MergeRequest


def lora(r: int, d_in: int = 12, d_out: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (A (r × d_in), B (d_out × r)) in float64, as a trained LoRA's factors."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(r, d_in, generator=generator, dtype=torch.float64)
    b = torch.randn(d_out, r, generator=generator, dtype=torch.float64)
    return a, b


def delta(source) -> torch.Tensor:
    a, b, scale = source
    return scale * (b.double() @ a.double())


def merged(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return b.double() @ a.double()


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    error = float(torch.linalg.matrix_norm(got - want) / torch.linalg.matrix_norm(want))
    assert error < tol, f"relative error {error:.2e}"


# The method on tensors ----------------------------------------------------------------------------


def test_self_merge_reproduces_the_adapter():
    a, b = lora(4, seed=1)
    source = (a, b, 8 / 4)
    b1, a1 = lego_merge([source], [1.0], k=4)
    assert b1.shape == (10, 4) and a1.shape == (4, 12)
    assert_close(merged(b1, a1), delta(source))
    # LEGO([L, L], k = r): every unit twice, each pair one cluster whose centre is the unit.
    b2, a2 = lego_merge([source, source], [1.0, 1.0], k=4)
    assert b2.shape == (10, 4)
    assert_close(merged(b2, a2), delta(source))
    # rsLoRA's scale (alpha / √r) is folded in the same way.
    rs = (a, b, 8 / math.sqrt(4))
    assert_close(merged(*lego_merge([rs], [1.0], k=4)), delta(rs))


def test_k_of_all_units_gives_gamma_times_the_weighted_sum():
    first, second = (*lora(4, seed=1), 2.0), (*lora(2, seed=2), 8 / math.sqrt(2))
    weights = [0.7, -0.3]  # a negative weight subtracts: its sign goes into b
    b, a = lego_merge([first, second], weights, k=6)
    assert b.shape == (10, 6)
    gamma = math.sqrt(((4 + 2) / 2) / 6)  # √(r̄ / k')
    want = gamma * (weights[0] * delta(first) + weights[1] * delta(second))
    assert_close(merged(b, a), want)
    b, a = lego_merge([first, second], weights, k=6, output_reweight="none")
    assert_close(merged(b, a), weights[0] * delta(first) + weights[1] * delta(second))


def test_parameter_reweighting_gives_each_centre_its_members_mean_norm():
    sources = [(*lora(4, seed=s), 1.5) for s in (1, 2, 3)]
    units, d_in = fold_units(sources, [1.0, 0.5, 2.0])
    assert units.shape == (12, 12 + 10) and d_in == 12
    labels, clusters = cluster_units(units, 3, seed=0)
    assert clusters == 3 and sorted(labels.unique().tolist()) == [0, 1, 2]
    plain = centroids(units, labels, param_reweight=False)
    reweighted = centroids(units, labels, param_reweight=True)
    for c in range(3):
        members = units[labels == c]
        mean_norm = float(members.norm(dim=1).mean())
        torch.testing.assert_close(plain[c], members.mean(dim=0))
        assert float(reweighted[c].norm()) == pytest.approx(mean_norm, rel=1e-12)
        # same direction as the plain centre, which is shorter wherever members disagree (norm decay)
        cosine = float(torch.nn.functional.cosine_similarity(reweighted[c], plain[c], dim=0))
        assert cosine == pytest.approx(1.0, abs=1e-12)
        if len(members) > 1:
            assert float(plain[c].norm()) < mean_norm


def test_lego_merge_writes_the_reweighted_centres_as_units():
    sources = [(*lora(4, seed=s), 2.0) for s in (4, 5)]
    weights = [1.0, 1.0]
    b, a = lego_merge(sources, weights, k=3, output_reweight="none", seed=3)
    assert b.shape == (10, 3)  # k < Σr prunes: 8 units into 3
    written = torch.cat([a.double(), b.double().T], dim=1)
    units, _ = fold_units(sources, weights)
    # the written units are centres of clusters of the pool, each as long as its members on average
    norms = sorted(float(n) for n in written.norm(dim=1))
    assert all(n > 0 for n in norms)
    pooled_norms = units.norm(dim=1)
    assert min(pooled_norms) - 1e-6 <= norms[0] and norms[-1] <= max(pooled_norms) + 1e-6
    # output reweighting multiplies B′ by γ = √(r̄ / k) (or by a number given), A′ is unchanged
    b_sqrt, a_sqrt = lego_merge(sources, weights, k=3, seed=3)
    torch.testing.assert_close(a_sqrt, a)
    torch.testing.assert_close(b_sqrt, b * math.sqrt(4 / 3))
    b_fixed, _ = lego_merge(sources, weights, k=3, seed=3, output_reweight=0.25)
    torch.testing.assert_close(b_fixed, b * 0.25)


def test_parents_or_units_in_another_order_change_nothing():
    sources = [(*lora(4, seed=7), 2.0), (*lora(2, seed=8), 4.0), (*lora(4, seed=9), 0.5)]
    weights = [1.0, 0.6, -0.8]
    reference = merged(*lego_merge(sources, weights, k=4, seed=1))
    order = [2, 0, 1]
    swapped = lego_merge([sources[i] for i in order], [weights[i] for i in order], k=4, seed=1)
    assert_close(merged(*swapped), reference, tol=1e-6)
    a, b, s = sources[0]
    perm = torch.tensor([3, 1, 0, 2])
    permuted = [(a[perm], b[:, perm], s), *sources[1:]]  # (B P)(Pᵀ A) = B A
    assert_close(merged(*lego_merge(permuted, weights, k=4, seed=1)), reference, tol=1e-6)


def test_default_k_is_the_mean_rank_and_dead_units_are_dropped():
    assert default_k([4, 2]) == 3 and default_k([4, 5]) == 5 and default_k([8, 8, 8]) == 8
    first, second = lora(4, seed=1), lora(2, seed=2)
    b, _ = lego_merge([(*first, 1.0), (*second, 1.0)], [1.0, 1.0])
    assert b.shape[1] == 3
    dead_b = first[1].clone()
    dead_b[:, 1] = 0  # a unit whose b is zero changes nothing
    units, _ = fold_units([(first[0], dead_b, 1.0), (*second, 1.0)], [1.0, 1.0])
    assert len(units) == 5
    units, _ = fold_units([(*first, 1.0), (*second, 1.0)], [0.0, 1.0])  # a zero weight drops the parent
    assert len(units) == 2
    # a parent that does not adapt the module (None) takes no part
    b, a = lego_merge([(*first, 2.0), None], [1.0, 1.0], k=4)
    assert_close(merged(b, a), 2.0 * first[1] @ first[0])


# The merge job on a tiny Llama --------------------------------------------------------------------


def lego_job(env, **fields):
    """run_merge_job with method lego, called directly as the worker would, under a job row of its own."""
    from studio.merging.job import run_merge_job
    from studio.progress import MemoryReporter
    from studio.schema import SCHEMA_VERSION

    request = MergeRequest(method="lego", **fields)
    job = env.registry.create_job(
        kind="merge", name="merge", request=request.model_dump(mode="json"), schema_version=SCHEMA_VERSION, seed=0
    )
    env.ctx.job_id = job.id
    reporter = MemoryReporter()
    return run_merge_job(request, reporter, env.ctx), reporter


def saved_factors(adapter_dir: Path, module: str):
    """(A, B, scale) of ``module`` read from the saved files, independently of PEFT (scale from the config)."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    key = f"base_model.model.{module}"
    a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
    r = a.shape[0]
    scale = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
    return a, b, scale


def peft_deltas(env, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """{module: ΔW} of an adapter as plain PEFT loads it."""
    from peft import PeftModel

    from studio.training.models import load_base_model
    from studio.variants.peft_common import tuner_layers

    model = PeftModel.from_pretrained(load_base_model(env.base_dir, "causal-lm"), str(adapter_dir))
    return {name: layer.get_delta_weight("default").double() for name, layer in tuner_layers(model).items()}


def test_lego_job_writes_a_plain_peft_lora_with_the_delta_lego_computes(merge_env):
    a = merge_env.adapter("a", seed=1)
    b = merge_env.adapter("b", seed=2, r=2, lora_alpha=16, use_rslora=True)
    result, reporter = lego_job(merge_env, adapter_ids=[a.id, b.id], weights=[1.0, 0.5], seed=4)
    assert result["method"] == "lego" and result["weights"] == [1.0, 0.5]
    row = merge_env.registry.get_adapter(result["adapter_id"])
    assert row.variant == "merge" and row.parents == [a.id, b.id]
    assert set(row.ranks.values()) == {3}  # k = the mean of ranks 4 and 2
    out = Path(row.path)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_alpha"] == config["r"] == 3 and not config["use_rslora"]
    assert "LoRA-LEGO" in (out / "README.md").read_text()
    got = peft_deltas(merge_env, out)
    assert set(got) == set(row.ranks) and len(got) == 2 * 4
    for module, loaded in got.items():
        parents = [saved_factors(Path(p.path), module) for p in (a, b)]
        b_want, a_want = lego_merge(parents, [1.0, 0.5], seed=4)
        assert_close(loaded, merged(b_want, a_want), tol=1e-6)
    assert any("lego merge of" in line and "output reweight sqrt_r_over_k" in line for _, line in reporter.logs)


def test_lego_self_merge_job_gives_the_parents_logits(merge_env):
    from peft import PeftModel

    from studio.training.models import load_base_model

    a = merge_env.adapter("a", seed=3)
    result, _ = lego_job(merge_env, adapter_ids=[a.id], rank=4)
    ids = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(0))  # ids the tiny vocab has
    with torch.no_grad():
        parent = PeftModel.from_pretrained(load_base_model(merge_env.base_dir, "causal-lm"), a.path).eval()
        want = parent(input_ids=ids).logits
        made = PeftModel.from_pretrained(load_base_model(merge_env.base_dir, "causal-lm"), result["adapter_path"])
        got = made.eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    base = load_base_model(merge_env.base_dir, "causal-lm").eval()
    with torch.no_grad():
        assert float((base(input_ids=ids).logits - want).abs().max()) > 1e-3  # the adapter does change them


def test_lego_refuses_adapters_of_other_modules_or_not_plain_loras(merge_env):
    a = merge_env.adapter("a", seed=1)
    other = merge_env.adapter("other", seed=2, target_modules=["q_proj", "v_proj"])
    with pytest.raises(ValidationFailed, match="same target modules") as refused:
        merge_env.jobs.submit(MergeRequest(adapter_ids=[a.id, other.id], method="lego"))
    assert f"#{other.id} lacks" in str(refused.value) and "up_proj" in str(refused.value)
    dora = merge_env.adapter("dora", seed=3, use_dora=True)
    with pytest.raises(ValidationFailed, match="not a plain LoRA"):
        merge_env.jobs.submit(MergeRequest(adapter_ids=[a.id, dora.id], method="lego"))
    assert merge_env.registry.list_jobs() == []  # refused before anything was queued
    # the dense methods still merge adapters of different modules
    merge_env.jobs.submit(MergeRequest(adapter_ids=[a.id, other.id], method="linear"))


# Request, CLI and form --------------------------------------------------------------------------


def test_request_defaults_and_output_reweight_values():
    request = MergeRequest(adapter_ids=[1, 2], method="lego")
    assert request.resolved_weights() == [1.0, 1.0]  # LEGO averages through its clusters itself
    assert request.param_reweight is True and request.output_reweight == "sqrt_r_over_k"
    assert MergeRequest(adapter_ids=[1], method="lego", output_reweight="0.5").output_reweight == 0.5
    with pytest.raises(ValueError, match="output_reweight"):
        MergeRequest(adapter_ids=[1], method="lego", output_reweight=0)
    with pytest.raises(ValueError):
        MergeRequest(adapter_ids=[1], method="lego", output_reweight="sqrt")


def test_cli_parses_the_lego_options(merge_env, monkeypatch):
    from click.testing import CliRunner

    import studio.cli.merge as merge_cli
    from studio.cli import cli

    a, b = merge_env.adapter("a", seed=1), merge_env.adapter("b", seed=2)
    monkeypatch.setattr(merge_cli, "services", lambda: SimpleNamespace(settings=merge_env.settings, jobs=merge_env.jobs))
    args = ["merge", str(a.id), str(b.id), "--method", "lego", "-k", "3", "--no-param-reweight"]
    outcome = CliRunner().invoke(cli, [*args, "--output-reweight", "0.5", "--seed", "7"], catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.output
    assert f"(lego: {a.id} × 1, {b.id} × 1)" in outcome.output
    request = merge_env.registry.list_jobs()[0].request
    assert request["method"] == "lego" and request["rank"] == 3 and request["seed"] == 7
    assert request["param_reweight"] is False and request["output_reweight"] == 0.5
    outcome = CliRunner().invoke(cli, ["merge", str(a.id), "--method", "lego", "--output-reweight", "half"])
    assert outcome.exit_code != 0 and "output reweight: give sqrt_r_over_k" in str(outcome.exception).lower()


def test_merge_form_offers_lego_and_takes_a_typed_output_factor():
    from app.forms import coerce, parse_schema
    from app.tab_merge import FORM_FIELDS

    specs = {s.name: s for s in parse_schema(MergeRequest.model_json_schema()) if s.name in FORM_FIELDS}
    assert "lego" in specs["method"].choices
    assert specs["param_reweight"].kind == "bool"
    spec = specs["output_reweight"]
    assert spec.kind == "choice" and spec.choices == ["sqrt_r_over_k", "none"] and spec.number_too
    assert coerce(spec, "none") == "none" and coerce(spec, "0.5") == 0.5


def test_merge_tab_queues_a_lego_merge_with_its_options(merge_env):
    from app import tab_merge

    a, b = merge_env.adapter("a", seed=1), merge_env.adapter("b", seed=2)
    options = {"method": "lego", "rank": 3, "seed": 2, "param_reweight": False, "output_reweight": "none"}
    line = tab_merge.submit_merge(SimpleNamespace(jobs=merge_env.jobs), [a.id, b.id], "", options)
    assert f"(lego: #{a.id} × 1, #{b.id} × 1)" in line
    request = merge_env.registry.list_jobs()[0].request
    assert (request["rank"], request["param_reweight"], request["output_reweight"]) == (3, False, "none")
