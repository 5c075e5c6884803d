"""LoRAPrune (spec §9): gradient identity, importance by hand, masked == pruned, schedule, exports."""

from __future__ import annotations

import pytest
import torch
from variant_helpers import build_variant, tiny_llama, token_batches

from studio.errors import StudioError
from studio.variants import _loraprune_masks as lp
from studio.variants import _loraprune_pruned as pruned_model
from studio.variants.base import ExportContext, OptimConfig
from studio.variants.loraprune import LoraPrune, LoraPruneParams

# -- helpers (the shared set-up is in variant_helpers) ---------------------------------------------------


def build(total: int = 30, layers: int = 2, **params):
    variant = LoraPrune(LoraPruneParams(**{"lora_dropout": 0.0, **params}))
    return variant, build_variant(variant, tiny_llama(layers=layers), total_steps=total)


def train(variant, model, steps: int, total: int, on_step=None) -> None:
    """The engine's hook order (studio.training.loop) with AdamW on the trainable tensors."""
    cfg = OptimConfig(learning_rate=1e-2, weight_decay=0.0, total_steps=total, warmup_steps=0, scheduler="linear")
    from studio.variants.base import default_optimization

    opt = default_optimization([p for p in model.parameters() if p.requires_grad], cfg)
    data = token_batches(4)
    for step in range(1, steps + 1):
        model(**data[step % 4]).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        variant.on_pre_optimizer_step(model, step)
        opt.optimizers[0].step()
        variant.on_optimizer_step(model, step)
        opt.schedulers[0].step()
        model.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step)


def randomise_lora(variant, seed: int = 3) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in variant.layers.values():
            layer.lora_B.normal_(0, 0.1)


# -- importance ------------------------------------------------------------------------------------


def test_gradient_approximation_identity():
    torch.manual_seed(0)
    a, b = torch.randn(4, 7, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    ga, gb = torch.randn_like(a), torch.randn_like(b)
    # Ĝ is exactly how much BA moves under one SGD step of size 1 on A and B
    expected = b @ a - (b - gb) @ (a - ga)
    torch.testing.assert_close(lp.lora_grad_estimate(a, b, ga, gb), expected)


def test_importance_matches_hand_computation():
    variant, model = build()
    randomise_lora(variant)
    model(**token_batches(4)[0]).loss.backward()
    scores = variant.step_importance()
    assert set(scores) == {"attn_0", "mlp_0"}  # layer 1 is the last layer: never pruned, not scored
    hd, rep, kv = 8, 2, 2

    def element_importance(proj):
        m = variant.layers[f"model.layers.0.{proj}"]
        a, b, ga, gb = m.lora_A.detach(), m.lora_B.detach(), m.lora_A.grad, m.lora_B.grad
        g_hat = gb @ a + b @ ga - gb @ ga
        return (g_hat * (m.base_layer.weight.detach() + 2.0 * b @ a)).abs()

    def unit(v):
        return v / (torch.sqrt((v**2).sum()) + 1e-8)

    attn = torch.zeros(kv)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        imp = element_importance(f"self_attn.{proj}")
        vec = torch.zeros(kv)
        for g in range(kv):
            if proj == "q_proj":  # rows of the group's 2 query heads
                vec[g] = imp[g * rep * hd : (g + 1) * rep * hd].sum()
            elif proj == "o_proj":  # columns of those heads
                vec[g] = imp[:, g * rep * hd : (g + 1) * rep * hd].sum()
            else:
                vec[g] = imp[g * hd : (g + 1) * hd].sum()
        attn += unit(vec)
    mlp = unit(element_importance("mlp.gate_proj").sum(1)) + unit(element_importance("mlp.up_proj").sum(1))
    mlp += unit(element_importance("mlp.down_proj").sum(0))
    torch.testing.assert_close(scores["attn_0"], attn, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores["mlp_0"], mlp, rtol=1e-5, atol=1e-7)
    assert variant.update_importance()
    torch.testing.assert_close(variant.ema["attn_0"], 0.1 * attn, rtol=1e-5, atol=1e-8)


def test_nan_importance_skips_the_update():
    variant, model = build()
    randomise_lora(variant)
    model(**token_batches(4)[0]).loss.backward()
    variant.layers["model.layers.0.mlp.up_proj"].lora_A.grad[0, 0] = float("nan")
    assert not variant.update_importance()
    assert all(float(v.abs().sum()) == 0 for v in variant.ema.values())


# -- schedule and pruning ----------------------------------------------------------------------------


def test_schedule_boundaries():
    p = {"total": 100, "p0": 0.0, "pf": 0.5, "wi": 0.1, "wf": 0.1}
    assert lp.sparsity_at(0, **p) == 0.0 and lp.sparsity_at(10, **p) == 0.0  # t ≤ w_i·T: p₀
    assert lp.sparsity_at(91, **p) == 0.5 and lp.sparsity_at(100, **p) == 0.5  # t > T − w_f·T: p_f
    assert lp.sparsity_at(90, **p) == pytest.approx(0.5)  # the cubic reaches p_f exactly at the boundary
    assert lp.sparsity_at(50, **p) == pytest.approx(0.5 - 0.5 * 0.5**3)  # 1 − 40/80 = 0.5
    values = [lp.sparsity_at(t, **p) for t in range(101)]
    assert all(x <= y for x, y in zip(values, values[1:], strict=False))


def test_unpruned_layers():
    def kept(n):
        return [i for i in range(n) if not lp.prunable(i, n)]

    assert kept(2) == [1] and kept(10) == [0, 9] and kept(32) == [0, 1, 2, 31]


def test_pruned_set_only_grows_and_final_prune_hits_target():
    total = 30
    variant, model = build(total=total, layers=3)
    history = []
    train(
        variant,
        model,
        total,
        total,
        on_step=lambda s: history.append({k: v.clone() for k, v in variant.masks.named_buffers()}),
    )
    for before, after in zip(history, history[1:], strict=False):
        for key in before:
            assert torch.all(after[key] <= before[key])  # a pruned group never returns
    pruned = {k: int((v == 0).sum()) for k, v in variant.masks.named_buffers()}
    # rounds at t = 10, 20 (p strictly between p₀ and p_f, t = step − 1); the final prune at the first t with
    # p = p_f: t > T − w_f·T, and 30 − 0.1·30 = 26.999… in floating point (as in the official code), so t = 27
    first_final = min(t for t in range(total) if lp.sparsity_at(t, total, 0.0, 0.5, 0.1, 0.1) >= 0.5)
    assert first_final == 27
    changed = [
        i + 2
        for i in range(len(history) - 1)
        if any(not torch.equal(history[i][k], history[i + 1][k]) for k in history[i])
    ]
    assert set(changed) <= {11, 21, first_final + 1} and first_final + 1 in changed
    assert pruned == {"attn_0": 1, "mlp_0": 24, "attn_1": 1, "mlp_1": 24, "attn_2": 0, "mlp_2": 0}
    assert variant.rank_allocation(model)["model.layers.0.self_attn"] == 2  # one KV group = 2 query heads left


# -- masked == pruned, exports ------------------------------------------------------------------------


def pruned_masks(variant):
    with torch.no_grad():
        variant.masks.get_buffer("attn_0").copy_(torch.tensor([1.0, 0.0]))
        mlp = torch.ones(48)
        mlp[torch.randperm(48, generator=torch.Generator().manual_seed(0))[:20]] = 0
        variant.masks.get_buffer("mlp_0").copy_(mlp)


def test_masked_model_equals_physically_pruned_model():
    variant, model = build()
    randomise_lora(variant)
    pruned_masks(variant)
    weights = {}
    for name, layer in variant.layers.items():
        weights[name] = ((layer.base_layer.weight + layer.lora_delta()).detach(), layer.base_layer.bias)
    groups = {
        layer.prefix: (variant.masks.get_buffer(f"attn_{layer.index}"), variant.masks.get_buffer(f"mlp_{layer.index}"))
        for layer in variant.decoder
    }
    small = lp.physically_pruned(tiny_llama(), variant.decoder, weights, groups).eval()
    assert small.model.layers[0].self_attn.q_proj.out_features == 16  # 2 of 4 query heads left
    assert small.model.layers[0].mlp.down_proj.in_features == 28
    model.eval()
    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)


def logits(model, seed: int = 5):
    ids = torch.randint(1, 64, (2, 10), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_universal_export_after_pruning(tmp_path):
    from peft import PeftModel

    total = 12
    variant, model = build(total=total, adapter_format="exact_lora")  # the plain-LoRA option
    train(variant, model, total, total)
    assert float(variant.masks.get_buffer("mlp_0").mean()) == 0.5  # pruned at p_f
    ectx = ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    variant.save_adapter(model, tmp_path / "lora", ectx)
    merged = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "lora")).merge_and_unload().eval()
    base = tiny_llama().state_dict()
    for name, delta in variant.delta_weights(model).items():
        w0 = base[f"{name}.weight"]
        diff = (merged.get_submodule(name).weight - (w0 + delta)).abs().max()
        assert float(diff) <= 1e-5 * float(w0.abs().max())
    torch.testing.assert_close(logits(merged), logits(model), atol=1e-4, rtol=0)
    assert (tmp_path / "lora" / "native" / lp.MASKS_FILE).exists()


def test_lora_with_masks_loader_and_merged_dense_model(tmp_path):
    from transformers import AutoModelForCausalLM

    total = 12
    variant, model = build(total=total, save_merged=True)  # lora_and_masks is the default
    train(variant, model, total, total)
    ectx = ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    report = variant.save_adapter(model, tmp_path / "out", ectx)
    assert not report.exact and set(report.ranks.values()) == {8}  # the rank-r LoRA alone
    expected = logits(model)
    loaded = lp.load_pruned_adapter(tiny_llama(), tmp_path / "out")
    torch.testing.assert_close(logits(loaded), expected, atol=1e-4, rtol=0)
    unmerged = lp.load_pruned_adapter(tiny_llama(), tmp_path / "out", merge=False)
    torch.testing.assert_close(logits(unmerged), expected, atol=1e-4, rtol=0)
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged")
    torch.testing.assert_close(logits(dense), expected, atol=1e-4, rtol=0)
    q = dense.model.layers[0].self_attn.q_proj.weight
    assert int((q.abs().sum(1) == 0).sum()) == 16  # one KV group = 2 query heads × head_dim 8 rows zeroed


def test_resume_restores_masks_and_importance():
    total = 12
    variant, model = build(total=total)
    train(variant, model, total, total)
    state = variant.state_dict_extra(model)
    other, model2 = build(total=total)
    other.load_state_dict_extra(model2, state)
    for key, mask in variant.masks.named_buffers():
        assert torch.equal(other.masks.get_buffer(key), mask)
    for key, value in variant.ema.items():
        assert torch.equal(other.ema[key], value)
    assert other.final_done


# -- the physically pruned model --------------------------------------------------------------------

# Runs in a fresh interpreter with torch and transformers only: the pruned model needs no studio code.
PLAIN_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
# argv: (model_dir, trust_remote_code, ids.pt, out.pt) per model; one process loads them all (a start-up is ~5 s)
for model_dir, remote_code, ids_path, out_path in zip(*[iter(sys.argv[1:])] * 4):
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=remote_code == "1").eval()
    ids = torch.load(ids_path)
    with torch.no_grad():
        out = {"logits": model(input_ids=ids).logits,
               "tokens": model.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0),
               "params": torch.tensor(sum(p.numel() for p in model.parameters()))}
    assert not [m for m in sys.modules if m == "studio" or m.startswith("studio.")], "studio code was imported"
    torch.save(out, out_path)
"""


def load_plainly(tmp_path, models: dict[str, tuple]) -> dict[str, dict]:
    """Load each ``name: (model_dir, remote_code, ids)`` with transformers alone, in one fresh process
    without studio on the path; returns each one's logits, greedy tokens and parameter count."""
    import os
    import subprocess
    import sys

    args = []
    for name, (model_dir, remote_code, ids) in models.items():
        torch.save(ids, tmp_path / f"ids-{name}.pt")
        args += [
            str(model_dir),
            "1" if remote_code else "0",
            str(tmp_path / f"ids-{name}.pt"),
            str(tmp_path / f"out-{name}.pt"),
        ]
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, *args], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: torch.load(tmp_path / f"out-{name}.pt") for name in models}


def removed_params(variant, hidden: int = 32) -> int:
    """Parameters the pruning removes, counted from the group masks: q/k/v rows, o columns, MLP channels."""
    total = 0
    for layer in variant.decoder:
        kv_gone = int((variant.masks.get_buffer(f"attn_{layer.index}") == 0).sum())
        channels_gone = int((variant.masks.get_buffer(f"mlp_{layer.index}") == 0).sum())
        total += kv_gone * (2 * layer.rep * layer.head_dim + 2 * layer.head_dim) * hidden + channels_gone * 3 * hidden
    return total


@pytest.fixture(scope="module")
def plain_loads(tmp_path_factory):
    """Two pruned checkpoints, each loaded with transformers alone (one process for both):
    "mixed" (trained; per-layer widths, so it ships its modeling file) and "uniform" (hand-set masks)."""
    tmp_path = tmp_path_factory.mktemp("plain-loads")
    total = 12
    mixed, mixed_model = build(total=total, save_pruned=True)
    train(mixed, mixed_model, total, total)
    ectx = ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    mixed.save_adapter(mixed_model, tmp_path / "out", ectx)

    uniform, uniform_model = build()
    randomise_lora(uniform)
    with torch.no_grad():  # every layer keeps KV group 1 and the same 30 channels
        for layer in uniform.decoder:
            uniform.masks.get_buffer(f"attn_{layer.index}").copy_(torch.tensor([0.0, 1.0]))
            uniform.masks.get_buffer(f"mlp_{layer.index}")[:18] = 0
    layout = pruned_model.save_pruned_model(
        uniform.dense_merged(uniform_model, ectx), uniform.row_masks(), tmp_path / "pruned", "causal-lm"
    )

    ids = {seed: torch.randint(1, 64, (2, 10), generator=torch.Generator().manual_seed(seed)) for seed in (5, 6)}
    loaded = load_plainly(
        tmp_path,
        {"mixed": (tmp_path / "out" / "pruned", True, ids[5]), "uniform": (tmp_path / "pruned", False, ids[6])},
    )
    return {
        "mixed": (mixed, mixed_model, tmp_path / "out" / "pruned", ids[5], loaded["mixed"]),
        "uniform": (uniform, uniform_model, tmp_path / "pruned", layout, loaded["uniform"]),
    }


def test_pruned_model_loads_with_transformers_alone_and_matches_the_masked_model(plain_loads):
    variant, model, out, ids, loaded = plain_loads["mixed"]
    # layer 0 lost one KV group and half its channels, the last layer is never pruned: widths differ per layer
    assert (out / pruned_model.MODELING_FILE).exists()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded["logits"], model(input_ids=ids).logits, atol=1e-5, rtol=0)
        tokens = model.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(loaded["tokens"], tokens)  # the KV cache copes with per-layer head counts
    base_params = sum(p.numel() for p in tiny_llama().parameters())
    assert removed_params(variant) > 0
    assert int(loaded["params"]) == base_params - removed_params(variant)


def test_uniform_pruning_gives_a_plain_checkpoint(plain_loads):
    _, model, out, layout, loaded = plain_loads["uniform"]
    assert layout.uniform and not (out / pruned_model.MODELING_FILE).exists()
    torch.testing.assert_close(loaded["logits"], logits(model, seed=6), atol=1e-5, rtol=0)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (2, 1, 30)
    assert config.head_dim == 8  # explicit: hidden_size // num_attention_heads would now say 16


def test_pruned_model_refuses_a_mask_that_splits_a_kv_group(tmp_path):
    variant, model = build()
    masks = variant.row_masks()
    masks["model.layers.0.self_attn.q_proj"][:8] = 0  # one query head of KV group 0, not the whole group
    ectx = ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    with pytest.raises(StudioError, match="KV group"):
        pruned_model.save_pruned_model(variant.dense_merged(model, ectx), masks, tmp_path / "p", "causal-lm")


def test_default_export_is_lora_plus_masks_and_the_model_card_recipe_applies_them(tmp_path):
    import re

    total = 12
    variant, model = build(total=total)
    train(variant, model, total, total)
    ectx = ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    report = variant.save_adapter(model, tmp_path / "out", ectx)
    assert report.format == "peft-lora+pruning-masks" and set(report.ranks.values()) == {8}
    assert (tmp_path / "out" / lp.MASKS_FILE).exists()
    card = "\n".join(variant.model_card_loading())
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    scope = {"base_model": tiny_llama(), "adapter_dir": str(tmp_path / "out")}
    exec(code, scope)  # the card's own instructions, run as written
    torch.testing.assert_close(logits(scope["model"]), logits(model), atol=1e-4, rtol=0)


def test_output_masks_apply_only_while_their_adapter_is_active(tmp_path):
    """The serving pool's way: the shared base stays intact, the masks follow the active adapter."""
    from peft import PeftModel

    total = 12
    variant, model = build(total=total)
    train(variant, model, total, total)
    ectx = ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    variant.save_adapter(model, tmp_path / "out", ectx)
    shared = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "out"), adapter_name="pruned")
    shared.load_adapter(str(tmp_path / "out"), adapter_name="unmasked")
    handles = lp.attach_output_masks(shared, "pruned", lp.saved_masks(tmp_path / "out"))
    shared.set_adapter("pruned")
    torch.testing.assert_close(logits(shared), logits(model), atol=1e-4, rtol=0)
    shared.set_adapter("unmasked")
    unpruned = logits(shared)
    assert float((unpruned - logits(model)).abs().max()) > 1e-2  # the LoRA alone is the unpruned model
    for handle in handles:
        handle.remove()
    shared.set_adapter("pruned")
    torch.testing.assert_close(logits(shared), unpruned, atol=1e-6, rtol=0)
