"""Adapter bank and batched LoRA ops: paging (LRU, pinning), PEFT config semantics, refusals, the two paths."""

from __future__ import annotations

import json
import math

import pytest
import torch

from studio.serving.bank import AdapterBank, AdapterNotServable, LayerBank, LayerDelta, SlotsBusy, read_adapter
from studio.serving.lora_ops import LoRAContext, gather_bmm_delta, segmented_delta


def item(adapter_dirs, name):
    return (name, str(adapter_dirs[name]))


# Paging ------------------------------------------------------------------------------------


def test_lru_paging_evicts_the_least_recently_used(base_dir, adapter_dirs, fresh_base):
    bank = AdapterBank(fresh_base(base_dir), slots=2)
    assert bank.acquire([item(adapter_dirs, "r2"), item(adapter_dirs, "r4_rslora")]) == [1, 2]
    bank.release([1, 2])
    assert bank.acquire([item(adapter_dirs, "r2")]) == [1]  # touched: r4_rslora is now the oldest
    bank.release([1])
    assert bank.acquire([item(adapter_dirs, "r8_patterns")]) == [2]  # took r4_rslora's slot
    bank.release([2])
    assert list(bank.resident()) == ["r2", "r8_patterns"]
    assert bank.acquire([item(adapter_dirs, "r4_rslora")]) == [1]  # r2 is now the oldest
    assert bank.resident() == {"r8_patterns": 2, "r4_rslora": 1}


def test_pinned_slots_are_never_evicted(base_dir, adapter_dirs, fresh_base):
    bank = AdapterBank(fresh_base(base_dir), slots=2)
    held = bank.acquire([item(adapter_dirs, "r2"), item(adapter_dirs, "r4_rslora")])
    with pytest.raises(SlotsBusy, match="all 2 adapter slots are held"):
        bank.acquire([item(adapter_dirs, "r8_patterns")])
    assert bank.resident() == {"r2": 1, "r4_rslora": 2}
    bank.release([held[0]])  # r2 free, r4_rslora still running
    assert bank.acquire([item(adapter_dirs, "r8_patterns")]) == [1]
    assert bank.resident() == {"r4_rslora": 2, "r8_patterns": 1}
    assert bank.pinned() == {1: 1, 2: 1}


def test_failed_acquire_leaves_nothing_pinned(base_dir, adapter_dirs, fresh_base):
    bank = AdapterBank(fresh_base(base_dir), slots=1)
    with pytest.raises(SlotsBusy):
        bank.acquire([item(adapter_dirs, "r2"), None, item(adapter_dirs, "r4_rslora")])
    assert bank.pinned() == {}
    assert bank.acquire([item(adapter_dirs, "r4_rslora")]) == [1]


def test_same_adapter_twice_shares_one_slot_pinned_twice(base_dir, adapter_dirs, fresh_base):
    bank = AdapterBank(fresh_base(base_dir), slots=1)
    assert bank.acquire([item(adapter_dirs, "r2"), None, item(adapter_dirs, "r2")]) == [1, 0, 1]
    assert bank.pinned() == {1: 2}
    bank.release([1])
    with pytest.raises(SlotsBusy):
        bank.acquire([item(adapter_dirs, "r4_rslora")])


def test_evicted_slot_holds_only_the_new_adapter(base_dir, adapter_dirs, fresh_base):
    """Paging r2 (q, v) out for r4_rslora (q, k, v, o) and r8 (q + mlp) leaves no stale weights behind."""
    bank = AdapterBank(fresh_base(base_dir), slots=1)
    for name in ("r2", "r4_rslora", "r8_patterns"):
        (slot,) = bank.acquire([item(adapter_dirs, name)])
        bank.release([slot])
    host = read_adapter(adapter_dirs["r8_patterns"])
    for module, layer in bank.layers.items():
        delta = host.layers.get(module)
        if delta is None:
            assert layer.ranks[1] == 0 and float(layer.scale[1]) == 0.0
            assert not layer.A[1].any() and not layer.B[1].any()
        else:
            assert layer.ranks[1] == delta.rank
            torch.testing.assert_close(layer.A[1, : delta.rank], delta.A)
            assert not layer.A[1, delta.rank :].any()  # zero padding up to the layer's r_max
    assert {m for m, layer in bank.layers.items() if layer.r_max} >= set(host.layers)


def test_serving_slots_setting(monkeypatch, tmp_path):
    from studio.errors import ConfigurationError
    from studio.settings import load_settings

    monkeypatch.setenv("STUDIO_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("STUDIO_SERVING_SLOTS", "3")
    assert load_settings().serving_slots == 3
    monkeypatch.setenv("STUDIO_SERVING_SLOTS", "0")
    with pytest.raises(ConfigurationError, match="STUDIO_SERVING_SLOTS"):
        load_settings()


# Reading adapters --------------------------------------------------------------------------


def test_scales_follow_rslora_and_patterns(adapter_dirs):
    rslora = read_adapter(adapter_dirs["r4_rslora"])
    assert [d.scale for d in rslora.layers.values()] == [pytest.approx(8 / math.sqrt(4))] * len(rslora.layers)
    patterns = read_adapter(adapter_dirs["r8_patterns"])
    layers = patterns.layers
    assert layers["model.layers.0.self_attn.q_proj"].rank == 3
    assert layers["model.layers.0.self_attn.q_proj"].scale == pytest.approx(16 / 3)
    assert layers["model.layers.1.self_attn.q_proj"].scale == pytest.approx(2 / 8)
    assert layers["model.layers.1.mlp.down_proj"].rank == 6
    assert layers["model.layers.1.mlp.down_proj"].scale == pytest.approx(16 / 6)
    assert layers["model.layers.0.mlp.up_proj"].scale == pytest.approx(5 / 8)
    assert layers["model.layers.0.mlp.gate_proj"].scale == pytest.approx(16 / 8)


@pytest.mark.parametrize(
    ("lora", "reason"),
    [
        (dict(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]), "modules_to_save"),
        (dict(r=2, target_modules=["q_proj"], use_dora=True), "DoRA"),
        (dict(r=2, target_modules=["q_proj"], bias="lora_only"), "biases"),
        (dict(r=2, target_modules=["embed_tokens"]), "embed_tokens|not a LoRA term of a linear layer"),
    ],
)
def test_adapters_no_slot_can_hold_are_refused_with_the_reason(
    base_dir, tmp_path, fresh_base, make_adapter, lora, reason
):
    path = make_adapter(base_dir, tmp_path / "odd", seed=0, **lora)
    bank = AdapterBank(fresh_base(base_dir), slots=2)
    with pytest.raises(AdapterNotServable, match=reason):
        bank.acquire([("odd", str(path))])
    assert bank.resident() == {} and bank.pinned() == {}


def test_adapter_for_another_base_is_refused(adapter_dirs, tmp_path, base_dir, fresh_base):
    config = json.loads((adapter_dirs["r2"] / "adapter_config.json").read_text())
    copy = tmp_path / "renamed"
    copy.mkdir()
    (copy / "adapter_config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    weights = load_file(adapter_dirs["r2"] / "adapter_model.safetensors")
    save_file({k.replace("layers.0.", "layers.7."): v for k, v in weights.items()}, copy / "adapter_model.safetensors")
    bank = AdapterBank(fresh_base(base_dir), slots=2)
    with pytest.raises(AdapterNotServable, match="another base"):
        bank.acquire([("renamed", str(copy))])


def test_a_loraprune_adapter_with_masks_is_refused(adapter_dirs, tmp_path, base_dir, fresh_base):
    """Its LoRA alone is the unpruned model: the bank must not serve it without the masks."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from studio.variants._loraprune_masks import MASKS_FILE

    pruned = tmp_path / "pruned"
    shutil.copytree(adapter_dirs["r2"], pruned)
    save_file({"model.layers.0.self_attn.q_proj": torch.ones(4)}, pruned / MASKS_FILE)
    bank = AdapterBank(fresh_base(base_dir), slots=2)
    bank.acquire([("plain", str(adapter_dirs["r2"]))])  # the same LoRA without masks is served
    with pytest.raises(AdapterNotServable, match="LoRAPrune"):
        bank.acquire([("pruned", str(pruned))])


# The two compute paths ---------------------------------------------------------------------


def _random_bank(ranks: list[int], d_in: int = 6, d_out: int = 5) -> tuple[LayerBank, list[LayerDelta]]:
    torch.manual_seed(0)
    bank = LayerBank(len(ranks), d_in, d_out, torch.float32, torch.device("cpu"))
    deltas = []
    for slot, rank in enumerate(ranks, start=1):
        delta = LayerDelta(A=torch.randn(rank, d_in), B=torch.randn(d_out, rank), scale=0.5 * slot)
        bank.write(slot, delta)
        deltas.append(delta)
    return bank, deltas


@pytest.mark.parametrize("tokens", [1, 4])
def test_gather_and_segments_equal_each_row_s_unpadded_term(tokens):
    bank, deltas = _random_bank([1, 4, 2])
    assert bank.r_max == 4  # ranks 1 and 2 are zero-padded to 4
    slots = torch.tensor([2, 0, 1, 3, 2, 0, 3])
    x = torch.randn(len(slots), tokens, 6)
    expected = torch.zeros(len(slots), tokens, 5)
    for row, slot in enumerate(slots.tolist()):
        if slot:
            d = deltas[slot - 1]
            expected[row] = d.scale * (x[row] @ d.A.T @ d.B.T)
    context = LoRAContext()
    with context.use(slots):
        segmented = segmented_delta(x, bank, context.segments)
    gathered = gather_bmm_delta(x, bank, slots)
    torch.testing.assert_close(gathered, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(segmented, expected, atol=1e-5, rtol=0)


def test_context_segments_group_rows_by_adapter_and_skip_the_base():
    context = LoRAContext()
    with context.use([3, 0, 1, 3, 0]):
        assert [(slot, rows.tolist()) for slot, rows in context.segments] == [(1, [2]), (3, [0, 3])]
    assert context.slots is None
    with context.use([0, 0]):
        assert context.slots is None  # base rows only: the wrapped layers add nothing
