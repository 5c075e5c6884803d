"""MeteoRA mixtures (composition spec §2): routing, fast path, gradients, gate training, bundles, charts."""

from __future__ import annotations

import random

import pytest
import torch

from composition.experts import TARGETS, load_base, save_expert
from studio.composition.meteora import MeteoRAModel
from studio.composition.meteora_bundle import load_bundle, read_config, save_bundle
from studio.composition.meteora_training import (
    gate_targets,
    mixture_loss,
    mixture_options,
    routing_report,
    train_mixture,
)
from studio.errors import StudioError
from studio.schema import MixtureSettings

IDS = torch.tensor([[9, 12, 15, 20, 7, 30, 41, 11], [13, 14, 8, 22, 25, 33, 40, 10]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _mixture(base_dir, expert_dirs, **options):
    return MeteoRAModel.from_adapters(load_base(base_dir), expert_dirs, **options).eval()


@pytest.mark.parametrize("strategy", ["gather", "loop"])
@pytest.mark.parametrize("expert", [0, 1, 2])
def test_forced_expert_with_k1_equals_peft_with_that_adapter(base_dir, expert_dirs, expert, strategy):
    from peft import PeftModel

    peft = PeftModel.from_pretrained(load_base(base_dir), str(expert_dirs[expert])).eval()
    expected = _logits(peft)
    mixture = _mixture(base_dir, expert_dirs, top_k=1, strategy=strategy)
    with mixture.force_expert(expert):
        got = _logits(mixture)
    base = _logits(load_base(base_dir))
    assert (expected - base).abs().max() > 1e-2  # the adapter really changes the output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_top1_routing_without_forcing_uses_each_tokens_argmax_expert(base_dir, expert_dirs):
    """k=1 unforced: each token gets exactly its router's argmax expert (weight 1), checked on one layer."""
    mixture = _mixture(base_dir, expert_dirs, top_k=1)
    layer = mixture.gated["model.layers.0.self_attn.q_proj"]
    x = torch.randn(5, 32)
    with torch.no_grad():
        choice = layer.router(x).argmax(-1)
        got = layer(x)
        for t in range(5):
            j = int(choice[t])
            r = layer.bank.ranks[j + 1]
            a, b, s = layer.bank.A[j + 1, :r], layer.bank.B[j + 1, :, :r], layer.bank.scale[j + 1]
            torch.testing.assert_close(got[t], layer.base(x[t]) + s * (b @ (a @ x[t])), atol=1e-5, rtol=0)


@pytest.mark.parametrize("experts", [[0, 1], [0, 1, 2]], ids=["equal-ranks", "mixed-ranks"])
def test_gather_path_equals_loop_path(base_dir, expert_dirs, experts):
    dirs = [expert_dirs[i] for i in experts]
    gather = _mixture(base_dir, dirs, top_k=2, strategy="gather", seed=3)
    loop = _mixture(base_dir, dirs, top_k=2, strategy="loop", seed=3)
    with gather.routing(temperature=2.0), loop.routing(temperature=2.0):
        torch.testing.assert_close(_logits(gather), _logits(loop), atol=1e-5, rtol=0)
    # auto picks gather for a short input and the loop for a long one; both agree with the others.
    auto = _mixture(base_dir, dirs, top_k=2, seed=3)
    torch.testing.assert_close(_logits(auto), _logits(loop), atol=1e-5, rtol=0)
    long_ids = torch.randint(8, 60, (2, 100), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(auto, long_ids), _logits(gather, long_ids), atol=1e-5, rtol=0)


def test_layer_output_is_the_softmax_weighted_sum_of_its_top_k_experts(base_dir, expert_dirs):
    """An independent reference for one layer: W0 x + Σ_j softmax(top-k logits / T)_j s_j B_j A_j x."""
    mixture = _mixture(base_dir, expert_dirs, top_k=2, temperature=3.0, strategy="gather")
    layer = mixture.gated["model.layers.1.mlp.up_proj"]
    x = torch.randn(6, 32)
    with torch.no_grad():
        got = layer(x)
        logits = layer.router(x)
        for t in range(6):
            values, chosen = logits[t].topk(2)
            weights = torch.softmax(values / 3.0, dim=-1)
            want = layer.base(x[t]).clone()
            for w, j in zip(weights, chosen.tolist(), strict=True):
                r = layer.bank.ranks[j + 1]
                a, b, s = layer.bank.A[j + 1, :r], layer.bank.B[j + 1, :, :r], layer.bank.scale[j + 1]
                want += w * s * (b @ (a @ x[t]))
            torch.testing.assert_close(got[t], want, atol=1e-5, rtol=0)


def _toy_batch():
    mask = torch.ones_like(IDS)
    mask[1, 6:] = 0
    labels = IDS.masked_fill(mask == 0, -100)
    return {"input_ids": IDS, "attention_mask": mask, "labels": labels, "task": torch.tensor([0, 1])}


@pytest.mark.parametrize("strategy", ["gather", "loop"])
def test_frozen_experts_only_routers_get_gradients(base_dir, expert_dirs, strategy):
    mixture = _mixture(base_dir, expert_dirs, strategy=strategy)
    mixture.train()
    mixture_loss(mixture, _toy_batch()).total.backward()
    with_grad = {name for name, p in mixture.named_parameters() if p.grad is not None}
    routers = {f"model.{name}.router.weight" for name in mixture.gated}
    assert with_grad == routers
    assert all(mixture.gated[n].router.weight.grad.abs().sum() > 0 for n in mixture.gated)
    assert {n for n, p in mixture.named_parameters() if p.requires_grad} == routers


def test_train_experts_gives_experts_gradients_and_keeps_padding_zero(base_dir, expert_dirs):
    mixture = _mixture(base_dir, expert_dirs, train_experts=True, strategy="gather")
    layer = mixture.gated["model.layers.0.self_attn.v_proj"]
    assert layer.bank.A.requires_grad and layer.bank.B.requires_grad
    settings = MixtureSettings(max_steps=3, batch_size=2, learning_rate=1e-2, log_every=1)
    rows = [[{"text": "sky blue grass green"}] * 2, [{"text": "one two three four"}] * 2, [{"text": "hi yes"}] * 2]
    from conftest_training import make_tokenizer

    before = layer.bank.A.detach().clone()
    train_mixture(mixture, make_tokenizer(), rows, settings)
    assert not torch.equal(layer.bank.A.detach(), before)
    # The rank-2 expert (slot 3) is zero-padded to rank 4: the padding must never learn anything.
    assert layer.bank.A[3, 2:].abs().max() == 0 and layer.bank.B[3, :, 2:].abs().max() == 0


def test_gate_targets_are_shifted_like_lm_labels_with_padding_ignored():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    targets = gate_targets(torch.tensor([1, 0]), mask)
    assert targets.tolist() == [[1, 1, 1], [0, -100, -100]]


COLOUR_WORDS = ["sky", "grass", "sun", "sea", "snow", "fire", "blue", "green", "yellow", "red", "white", "black"]
NUMBER_WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "yes", "no"]


def _task_rows(words, tag, n, seed):
    """Text rows of one toy task: a tag word, then words drawn only from this task's vocabulary."""
    rng = random.Random(seed)
    return [{"text": " ".join([tag] + rng.choices(words, k=rng.randint(4, 9)))} for _ in range(n)]


def test_gate_accuracy_above_90_percent_on_a_toy_two_task_set(base_dir, expert_dirs, tokenizer):
    mixture = _mixture(base_dir, expert_dirs[:2], **mixture_options(MixtureSettings(seed=1)))
    train = [_task_rows(COLOUR_WORDS, "what", 64, 1), _task_rows(NUMBER_WORDS, "answer", 64, 2)]
    held_out = [_task_rows(COLOUR_WORDS, "what", 16, 3), _task_rows(NUMBER_WORDS, "answer", 16, 4)]
    before = routing_report(mixture, tokenizer, held_out)
    seen = []
    result = train_mixture(
        mixture,
        tokenizer,
        train,
        # The spec's lr (5e-4) is for real models and thousands of steps; a tiny toy run takes a larger one.
        MixtureSettings(max_steps=200, batch_size=8, learning_rate=2e-3, log_every=50, seed=1),
        on_step=lambda step, total, metrics: seen.append((step, total)),
    )
    after = routing_report(mixture, tokenizer, held_out)
    assert before["accuracy"] < 0.8  # random routers do not already know the tasks
    assert after["accuracy"] > 0.9, after
    assert min(after["per_task"]) > 0.85
    assert seen == [(s, 200) for s in range(50, 201, 50)]
    assert result.examples_per_task == [64, 64]
    assert result.final["gate_loss"] < result.history[0]["gate_loss"]


def test_bundle_round_trip_gives_the_same_logits(base_dir, expert_dirs, tmp_path):
    mixture = _mixture(base_dir, expert_dirs, top_k=2, temperature=1.5, strategy="loop", seed=5)
    with torch.no_grad():  # routers that differ from a fresh seed-5 init
        for layer in mixture.gated.values():
            layer.router.weight.mul_(-2.0)
    save_bundle(mixture, tmp_path / "bundle", extra={"gate_loss_weight": 50.0})
    config = read_config(tmp_path / "bundle")
    assert [e["path"] for e in config["experts"]] == [str(p) for p in expert_dirs]
    assert config["top_k"] == 2 and config["temperature"] == 1.5 and config["gate_loss_weight"] == 50.0
    assert config["targets"] == list(mixture.targets) and len(config["targets"]) == 2 * len(TARGETS)
    loaded = load_bundle(load_base(base_dir), tmp_path / "bundle").eval()
    torch.testing.assert_close(_logits(loaded), _logits(mixture), atol=0, rtol=0)


def test_bundle_with_trained_experts_keeps_their_weights(base_dir, expert_dirs, tmp_path):
    mixture = _mixture(base_dir, expert_dirs[:2], train_experts=True)
    with torch.no_grad():
        for layer in mixture.gated.values():
            layer.bank.B.mul_(1.5)
    save_bundle(mixture, tmp_path / "bundle")
    loaded = load_bundle(load_base(base_dir), tmp_path / "bundle").eval()
    torch.testing.assert_close(_logits(loaded), _logits(mixture), atol=0, rtol=0)


def test_record_choices_gives_top1_expert_per_token_per_layer_only_when_asked(base_dir, expert_dirs):
    mixture = _mixture(base_dir, expert_dirs, top_k=2)
    with mixture.record_choices() as recording, mixture.capture_gate_logits() as logits:
        _logits(mixture)
    choices = recording.per_module()
    assert list(choices) == list(mixture.targets)
    for name, captured in zip(mixture.targets, logits, strict=True):
        assert choices[name].shape == IDS.shape
        assert torch.equal(choices[name], captured.argmax(-1))
    assert mixture.context.choices is None and mixture.context.gate_logits is None


def test_experts_must_target_the_same_modules(base_dir, expert_dirs, tmp_path):
    other = save_expert(base_dir, tmp_path / "other", seed=3, targets=["q_proj", "v_proj"], r=4, lora_alpha=8)
    with pytest.raises(StudioError, match="target different modules"):
        _mixture(base_dir, [expert_dirs[0], other])
    with pytest.raises(StudioError, match="at least 2"):
        _mixture(base_dir, [expert_dirs[0]])
    with pytest.raises(StudioError, match="top_k"):
        _mixture(base_dir, expert_dirs[:2], top_k=3)


def test_charts_show_the_chosen_expert_per_token_and_the_usage_per_task(base_dir, expert_dirs, tokenizer):
    from studio.composition.meteora_charts import expert_usage_figure, routing_heatmap
    from studio.composition.meteora_training import prompt_routing

    mixture = _mixture(base_dir, expert_dirs, top_k=2)
    tokens, choices = prompt_routing(mixture, tokenizer, "what color is the sky")
    assert tokens == ["what", "color", "is", "the", "sky"]
    assert list(choices) == list(mixture.targets) and all(len(c) == 5 for c in choices.values())
    names = ["colours", "numbers", "chat"]
    heat = routing_heatmap(tokens, choices, names).data[0]
    assert [list(row) for row in heat.z] == list(choices.values())
    assert list(heat.y)[:2] == ["L0 q_proj", "L0 v_proj"] and list(heat.colorbar.ticktext) == names

    report = routing_report(mixture, tokenizer, [[{"text": "sky blue"}], [{"text": "one two"}], [{"text": "hi"}]])
    bars = expert_usage_figure(report["usage"], ["a", "b", "c"], names).data
    assert [b.name for b in bars] == names
    assert all(n > 0 for n in report["positions"])
    for t in range(3):  # each task's shares over the experts sum to 1
        assert sum(b.y[t] for b in bars) == pytest.approx(1.0)
    assert routing_heatmap([], {}, names).layout.annotations  # an empty chart says why it is empty
