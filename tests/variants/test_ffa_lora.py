"""FFA-LoRA (spec §2): A seeded and frozen, only B trained, exact federated averaging of B."""

from __future__ import annotations

import math

import pytest
import torch
from variant_helpers import build_variant, tiny_llama, token_batches
from variant_helpers import run_steps as shared_run_steps

from studio.variants.base import ExportContext, OptimConfig
from studio.variants.ffa_lora import (
    FfaLora,
    client_payload,
    federated_average,
    frozen_a,
    load_payload,
    payload_bytes,
    traffic_per_round,
)
from studio.variants.peft_common import tuner_layers

# -- helpers (the shared set-up is in variant_helpers) ---------------------------------------------------


def build(params: dict | None = None, seed: int = 0):
    variant = FfaLora(FfaLora.parse_params(params or {}))
    return variant, build_variant(variant, tiny_llama(), seed=seed)


def run_steps(variant, model, data, steps: int, lr: float = 2e-2, wd: float = 0.1):
    """The engine's hook order and default optimizer (AdamW over requires_grad tensors), clipped at 1.0."""
    config = OptimConfig(learning_rate=lr, weight_decay=wd, total_steps=steps, warmup_steps=0, scheduler="constant")
    return shared_run_steps(variant, model, data, steps, config)


def a_and_b(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        n: (layer.lora_A["default"].weight, layer.lora_B["default"].weight) for n, layer in tuner_layers(model).items()
    }


# -- tests -------------------------------------------------------------------------------------------


def test_a_is_bit_for_bit_unchanged_after_training_and_b_moves():
    variant, model = build({"r": 4})
    before = {n: (a.detach().clone(), b.detach().clone()) for n, (a, b) in a_and_b(model).items()}
    for a, b in a_and_b(model).values():
        assert not a.requires_grad and b.requires_grad
        assert torch.count_nonzero(b) == 0 and torch.count_nonzero(a) == a.numel()  # B = 0, A random non-zero
    opt = run_steps(variant, model, token_batches(2), 4)
    in_optimizer = {id(p) for group in opt.optimizers[0].param_groups for p in group["params"]}
    for name, (a, b) in a_and_b(model).items():
        assert id(a) not in in_optimizer and id(b) in in_optimizer
        assert torch.equal(a, before[name][0]), name
        assert not torch.equal(b, before[name][1]), name


def test_a_is_a_function_of_its_seed_and_module_name_only():
    _, m1 = build({"r": 4, "a_seed": 5}, seed=0)
    _, m2 = build({"r": 4, "a_seed": 5}, seed=123)  # another client: different run seed, same A
    _, m3 = build({"r": 4, "a_seed": 6}, seed=0)
    ab1, ab2, ab3 = a_and_b(m1), a_and_b(m2), a_and_b(m3)
    for name, (a, _) in ab1.items():
        n = a.shape[1]
        assert torch.equal(a, ab2[name][0])
        assert not torch.equal(a, ab3[name][0])
        assert a.abs().max() <= 1 / math.sqrt(n)  # Kaiming-uniform (a=√5): U(−1/√n, 1/√n)
        assert a.abs().max() > 0.5 / math.sqrt(n)
    names = list(ab1)
    assert not torch.equal(ab1[names[0]][0], ab1[names[1]][0][: ab1[names[0]][0].shape[0]])
    g = frozen_a("x", 4, 1000, 0, "gaussian")
    assert abs(float(g.std()) - 1 / 4) < 0.02  # PEFT's gaussian init: std 1/r


def train_clients(count: int = 3, steps: int = 3) -> list[tuple[FfaLora, torch.nn.Module]]:
    """Clients of one federated round: same broadcast (B = 0, A from a_seed), own run seed, own data."""
    clients = []
    for k in range(count):
        variant, model = build({"r": 4}, seed=100 + k)
        run_steps(variant, model, token_batches(2, seed=10 + k), steps)
        clients.append((variant, model))
    return clients


def test_average_of_products_equals_product_of_averages():
    clients = train_clients()
    deltas = [variant.delta_weights(model) for variant, model in clients]  # each client's real ΔW = s·B_k·A
    payloads = [client_payload(model) for _, model in clients]
    weights = [10.0, 30.0, 60.0]
    p = [w / sum(weights) for w in weights]

    # the server: a fresh model from the same broadcast, given only the averaged B
    server_variant, server = build({"r": 4}, seed=7)
    load_payload(server, federated_average(payloads, weights))
    server_deltas = server_variant.delta_weights(server)
    assert set(server_deltas) == set(deltas[0])
    for name, delta in server_deltas.items():
        mean_of_products = sum(pk * d[name].double() for pk, d in zip(p, deltas, strict=True))
        assert (delta.double() - mean_of_products).abs().max() <= 1e-6, name
        assert (deltas[0][name] - deltas[1][name]).abs().max() > 1e-4  # the clients really differ
        assert (delta - deltas[2][name]).abs().max() > 1e-4  # and the average is none of them

    # equal weights: the plain mean of the clients' ΔW
    load_payload(server, federated_average(payloads))
    for name, delta in server_variant.delta_weights(server).items():
        mean = sum(d[name].double() for d in deltas) / len(deltas)
        assert (delta.double() - mean).abs().max() <= 1e-6, name


def test_a_client_sends_only_b():
    (variant, client), *_ = train_clients(count=1)
    payload = client_payload(client)
    layers = tuner_layers(client)
    assert set(payload) == set(layers)
    total = 0
    for name, tensor in payload.items():
        a, b = layers[name].lora_A["default"].weight, layers[name].lora_B["default"].weight
        assert torch.equal(tensor, b.detach()) and tensor.abs().max() > 0  # the trained B itself
        assert tensor.shape == b.shape != a.shape  # B (m × r), never A (r × n)
        total += b.numel() * 4  # r·m fp32 numbers
    assert payload_bytes(payload) == total
    traffic = traffic_per_round(client)
    expected_lora = sum(4 * sum(layer.base_layer.weight.shape) * 4 for layer in layers.values())
    assert traffic == {"ffa_lora": total, "lora": expected_lora}
    norms = variant.rank_extra(client)
    assert all(norms[name]["b_norm"] == pytest.approx(float(payload[name].norm())) for name in payload)

    # B alone is enough: a receiver with another run seed rebuilds A and reproduces the client exactly
    receiver_variant, receiver = build({"r": 4}, seed=999)
    load_payload(receiver, payload)
    received = receiver_variant.delta_weights(receiver)
    for name, delta in variant.delta_weights(client).items():
        assert torch.equal(received[name], delta), name
    client.eval()
    receiver.eval()
    ids = token_batches(1, seed=9)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(receiver(ids).logits, client(ids).logits, rtol=0, atol=0)


def test_universal_export(tmp_path):
    from peft import PeftModel

    variant, model = build({"r": 4, "lora_alpha": 8})
    run_steps(variant, model, token_batches(2), 4)
    original = tiny_llama().state_dict()
    report = variant.save_adapter(
        model, tmp_path / "adapter", ExportContext(fresh_base=tiny_llama, task="causal-lm", modules_to_save=[])
    )
    assert report.exact
    merged = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "adapter")).merge_and_unload().eval()
    deltas = variant.delta_weights(model)
    for name, (a, b) in a_and_b(model).items():
        torch.testing.assert_close(deltas[name], (8 / 4) * b.detach() @ a.detach())
        w0 = original[f"{name}.weight"]
        assert (merged.get_submodule(name).weight - (w0 + deltas[name])).abs().max() <= 1e-5 * w0.abs().max()
    model.eval()
    ids = token_batches(1, seed=9)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, rtol=0, atol=1e-4)
