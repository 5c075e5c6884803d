"""DoRA, MiSS and LoRAPrune adapters served by the batched engine through their plain-LoRA export.

Tiny random Llama in fp32 on one thread. The references are PEFT's own models
(for LoRAPrune: PEFT + its masks, as its loader applies them); the "real" error is
recomputed here from PEFT's merged weights and the written factors, a path the
export shares no code with.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from studio.serving.bank import AdapterNotServable, read_adapter
from studio.serving.engine import EngineRequest, ServingEngine
from studio.serving.servable import NoPlainExport, served_lora
from studio.variants import _loraprune_masks as lp

TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [20, 21, 22, 23, 24]]
FULL_RANK = 64  # >= min(out, in) of every layer of the tiny model (hidden 32, intermediate 64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scaled_up(peft_model, seed: int) -> None:
    """Make every trained tensor clearly non-trivial (a random init barely moves the outputs)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(4.0)
            elif "magnitude" in name:  # DoRA: move the magnitudes away from ‖W0 + BA‖ (as training does)
                param.mul_(1 + 0.2 * torch.randn_like(param))
            elif "miss_block" in name:
                param.normal_(0, 0.15)


@pytest.fixture(scope="module")
def variant_dirs(base_dir, fresh_base, tmp_path_factory):
    """{name: adapter dir}: DoRA, MiSS (bat: generally full rank) and LoRAPrune (a LoRA + pruning masks)."""
    from peft import LoraConfig, MissConfig, get_peft_model
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("servable")
    configs = {
        "dora": LoraConfig(r=4, lora_alpha=8, use_dora=True, init_lora_weights=False, target_modules=TARGETS),
        "miss": MissConfig(r=4, init_weights="bat", target_modules=TARGETS),
        "loraprune": LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=TARGETS),
    }
    out = {}
    for seed, (name, config) in enumerate(configs.items(), start=11):
        torch.manual_seed(seed)
        model = get_peft_model(fresh_base(base_dir), config)
        _scaled_up(model, seed)
        model.save_pretrained(root / name)
        out[name] = root / name
    # LoRAPrune's saved format: row masks per module (1 = kept). Layer 0: one KV group of q (2 heads x 8
    # rows) and k, v (8 rows each; k has no LoRA); layer 1: a third of the MLP channels of gate (no LoRA) and up.
    keep_q = torch.ones(32)
    keep_q[16:] = 0
    keep_kv = torch.ones(16)
    keep_kv[8:] = 0
    keep_mlp = torch.ones(64)
    keep_mlp[::3] = 0
    masks = {
        "model.layers.0.self_attn.q_proj": keep_q,
        "model.layers.0.self_attn.k_proj": keep_kv,
        "model.layers.0.self_attn.v_proj": keep_kv.clone(),
        "model.layers.1.mlp.gate_proj": keep_mlp,
        "model.layers.1.mlp.up_proj": keep_mlp.clone(),
    }
    save_file(masks, str(out["loraprune"] / lp.MASKS_FILE))
    return out


def reference_model(name, path, base_dir, fresh_base):
    """What PEFT computes for the adapter (LoRAPrune: with its masks applied, merged)."""
    from peft import PeftModel

    if name == "loraprune":
        return lp.load_pruned_adapter(fresh_base(base_dir), path, merge=True).eval()
    return PeftModel.from_pretrained(fresh_base(base_dir), str(path)).eval()


def true_deltas(name, path, base_dir, fresh_base) -> dict[str, torch.Tensor]:
    """ΔW = merged weight − W0 of every linear layer the adapter (and its masks) changes."""
    model = reference_model(name, path, base_dir, fresh_base)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    base = fresh_base(base_dir).state_dict()
    out = {}
    for key, weight in model.state_dict().items():
        if key.endswith("proj.weight"):
            delta = weight.double() - base[key].double()
            if delta.abs().max() > 0:
                out[key.removesuffix(".weight")] = delta
    return out


def exported_products(path) -> dict[str, torch.Tensor]:
    """scale · B @ A of every layer of a written plain LoRA, read by the engine's own reader."""
    adapter = read_adapter(path)
    return {name: d.scale * (d.B.double() @ d.A.double()) for name, d in adapter.layers.items()}


def make_loader(base_dir, fresh_base):
    calls = []

    def load():
        calls.append(1)
        return fresh_base(base_dir)

    return load, calls


@pytest.mark.parametrize("name", ["dora", "miss", "loraprune"])
def test_engine_refuses_the_adapter_itself(variant_dirs, name):
    with pytest.raises(AdapterNotServable):
        read_adapter(variant_dirs[name])


@pytest.mark.parametrize("name", ["dora", "miss", "loraprune"])
def test_reported_error_is_the_real_error(variant_dirs, base_dir, fresh_base, name):
    load, _ = make_loader(base_dir, fresh_base)
    served = served_lora(variant_dirs[name], load)
    want = true_deltas(name, variant_dirs[name], base_dir, fresh_base)
    got = exported_products(served.path)
    assert set(served.errors) == set(want)  # every changed layer (LoRAPrune: also the masked ones without LoRA)
    real = {}
    for module, delta in want.items():
        product = got.get(module, torch.zeros_like(delta))
        real[module] = float((delta - product).norm() / delta.norm())
        assert served.errors[module] == pytest.approx(real[module], abs=2e-5), module
    assert served.max_error == pytest.approx(max(real.values()), abs=2e-5)
    assert served.mean_error == pytest.approx(math.fsum(real.values()) / len(real), abs=2e-5)
    # The default rank is the adapter's own (4); these variants really are approximations there.
    assert served.rank == 4 and not served.exact and served.max_error > 0.01
    assert served.describe().startswith("served as a rank-4 LoRA approximation: max layer error")
    report = json.loads((variant_dirs[name] / "served_lora_r4" / "served_report.json").read_text())
    assert report["max_error"] == served.max_error and report["ranks"] == served.ranks


def engine_and_reference_logits(name, path, served_path, base_dir, fresh_base):
    from transformers import AutoTokenizer

    engine = ServingEngine(fresh_base(base_dir), AutoTokenizer.from_pretrained(base_dir), slots=2)
    requests = [EngineRequest(prompt_ids=p, adapter=str(served_path), max_new_tokens=1) for p in PROMPTS]
    got = engine.prompt_logits(requests)
    reference, bare = reference_model(name, path, base_dir, fresh_base), fresh_base(base_dir)
    with torch.no_grad():
        want = [reference(input_ids=torch.tensor([p])).logits[0] for p in PROMPTS]
        plain = [bare(input_ids=torch.tensor([p])).logits[0] for p in PROMPTS]
    return got, want, plain


@pytest.mark.parametrize("name", ["dora", "miss", "loraprune"])
def test_engine_logits_are_close_to_peft_within_the_measured_error(variant_dirs, base_dir, fresh_base, name):
    load, _ = make_loader(base_dir, fresh_base)
    served = served_lora(variant_dirs[name], load)
    got, want, plain = engine_and_reference_logits(name, variant_dirs[name], served.path, base_dir, fresh_base)
    for g, w, p in zip(got, want, plain, strict=True):
        effect = float((w - p).norm())
        assert effect > 0.1  # the adapter visibly changes the outputs, so "close" means something
        # The logits move by about the share of ΔW the approximation drops: at most twice the worst layer's.
        assert float((g - w).norm()) <= 2 * served.max_error * effect, (name, float((g - w).norm()) / effect)
        assert float((g - w).norm()) > 1e-4 * effect  # and it is an approximation, not the adapter itself


@pytest.mark.parametrize("name", ["dora", "miss", "loraprune"])
def test_full_rank_export_is_exact(variant_dirs, base_dir, fresh_base, name):
    load, _ = make_loader(base_dir, fresh_base)
    served = served_lora(variant_dirs[name], load, rank=FULL_RANK)
    assert served.exact and served.max_error < 1e-5
    assert served.describe().startswith("served as an exact rank-")
    got, want, _ = engine_and_reference_logits(name, variant_dirs[name], served.path, base_dir, fresh_base)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_export_is_cached_and_redone_when_the_adapter_changes(variant_dirs, base_dir, fresh_base, tmp_path):
    import os
    import shutil

    path = tmp_path / "dora"
    shutil.copytree(variant_dirs["dora"], path)
    load, calls = make_loader(base_dir, fresh_base)
    first = served_lora(path, load, rank=2)
    weights = path / "served_lora_r2" / "adapter_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = served_lora(path, load, rank=2)
    assert len(calls) == 1 and second == first and weights.stat().st_mtime_ns == stamp
    served_lora(path, load, rank=3)  # another rank is another export, beside the first
    assert len(calls) == 2 and weights.exists() and (path / "served_lora_r3").is_dir()
    source = path / "adapter_model.safetensors"
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    served_lora(path, load, rank=2)  # the adapter changed: its export is written again
    assert len(calls) == 3
    assert not [p for p in path.iterdir() if p.name.startswith(".served_lora")]  # no staging left behind


def test_exact_variants_are_exported_at_their_numerical_rank(base_dir, fresh_base, tmp_path):
    """AdaLoRA (exact per the variants table): no rank cap, error at fp32 rounding, described as exact."""
    from peft import AdaLoraConfig, get_peft_model

    torch.manual_seed(3)
    model = get_peft_model(
        fresh_base(base_dir), AdaLoraConfig(init_r=6, target_r=4, total_step=10, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "adalora")
    load, _ = make_loader(base_dir, fresh_base)
    served = served_lora(tmp_path / "adalora", load, variant="adalora")
    assert served.exact and served.max_error < 1e-5 and served.rank == 6
    assert (tmp_path / "adalora" / "served_lora_exact").is_dir()


def test_plain_lora_needs_no_export_and_embeddings_have_none(
    adapter_dirs, base_dir, fresh_base, make_adapter, tmp_path
):
    load, calls = make_loader(base_dir, fresh_base)
    assert served_lora(adapter_dirs["r2"], load) is None and not calls
    saved = make_adapter(
        base_dir, tmp_path / "head", seed=3, r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]
    )
    with pytest.raises(NoPlainExport, match="modules_to_save"):
        served_lora(saved, load)


def test_playground_serves_them_on_the_engine_and_shows_the_error(registry, settings, variant_dirs, base_dir):
    from app.tab_playground import pane_note
    from studio.services.playground import PlaygroundService
    from studio.serving.generation import GenerationSettings

    base = str(base_dir)
    playground = PlaygroundService(registry, settings)
    try:
        targets = {}
        for name, path in variant_dirs.items():
            row = registry.add_adapter(name=name, variant=name, base_model=base, path=str(path), sha256="0" * 64)
            targets[name] = f"adapter:{row.id}"
        chat = [{"role": "user", "content": "what color is the sky"}]
        greedy = GenerationSettings(max_new_tokens=6, temperature=0.0, repetition_penalty=1.0)
        panes = [("base", chat)] + [(targets[n], chat) for n in variant_dirs]
        replies = list(playground.stream_panes(base, panes, greedy))
        assert sum(r.done for r in replies) == len(panes)
        # Every pane went to the engine: PEFT's pool never loaded a model and nothing was refused.
        assert playground.pool.loaded() == {} and playground._peft_only == {}
        resident = playground.schedulers.get(base).engine.bank.resident()
        assert sorted(k.split("@")[1] for k in resident) == ["served_lora_r4"] * 3
        for name, target in targets.items():
            info = playground.serving_info(base, target)
            report = json.loads((variant_dirs[name] / "served_lora_r4" / "served_report.json").read_text())
            assert info["served_by"] == "engine-export" and not info["exact"]
            assert info["max_error"] == report["max_error"] and info["mean_error"] == report["mean_error"]
            assert pane_note(playground, base, target) == f"*{info['description']}*"
            assert f"max layer error {report['max_error']:.1%}" in info["description"]
            metrics = registry.get_adapter(int(target.split(":")[1])).metrics
            assert metrics["served_lora_max_error"] == report["max_error"] and metrics["served_lora_rank"] == 4
        assert pane_note(playground, base, "base") == ""
    finally:
        playground.schedulers.close()


def test_downloads_and_copies_leave_the_served_export_out(
    registry, settings, variant_dirs, base_dir, fresh_base, tmp_path
):
    import shutil
    import zipfile

    from studio.services.adapters import AdapterService

    path = tmp_path / "dora"
    shutil.copytree(variant_dirs["dora"], path)
    load, _ = make_loader(base_dir, fresh_base)
    served_lora(path, load, rank=2)
    assert (path / "served_lora_r2").is_dir()
    row = registry.add_adapter(name="dora", variant="dora", base_model=str(base_dir), path=str(path), sha256="0" * 64)
    service = AdapterService(registry, settings)
    with zipfile.ZipFile(service.zip(row.id)) as handle:
        names = handle.namelist()
    assert f"adapter-{row.id}/adapter_model.safetensors" in names
    assert not [n for n in names if "served_lora" in n]
    copied = service.export(row.id, tmp_path / "copy")
    assert (tmp_path / "copy" / "adapter_model.safetensors").exists() and copied.format == "copy"
    assert not list((tmp_path / "copy").glob("served_lora*"))
