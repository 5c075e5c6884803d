"""The CVAE network and its training loop (spec §6), on synthetic θ: shapes, presets, determinism."""

from __future__ import annotations

import pytest
import torch

from studio.adapter_generation.cvae import PRESETS, CVAEConfig, build_cvae, parameter_count, preset
from studio.adapter_generation.training import epoch_batches, train_cvae
from studio.errors import ValidationFailed


def test_paper_preset_is_the_spec():
    paper = preset("paper")
    assert paper.channels == (8, 16, 32, 64, 128, 256, 256, 128, 64, 32, 16, 8)
    assert (paper.hidden_dim, paper.latent_dim, paper.pad_multiple, paper.kernel_size) == (256, 256, 4096, 7)
    assert paper.kl_weight == 0.005
    assert paper.padded_length(4097) == 8192 and paper.padded_length(4096) == 4096


def test_small_preset_is_smaller_than_the_paper_for_smollm2_sized_adapters():
    d, cond = 2_442_240, 576  # SmolLM2-135M, r=8 on all linear layers; c = its hidden size
    small, paper = parameter_count(preset("small"), d, cond), parameter_count(preset("paper"), d, cond)
    assert small < d < paper  # smaller than one adapter; the paper's widths are bigger than one
    assert small < paper / 3


def test_pad_multiple_must_fit_the_number_of_blocks():
    with pytest.raises(ValidationFailed, match="multiple of 2\\^4"):
        CVAEConfig(channels=(4, 4, 4, 4), pad_multiple=24)
    with pytest.raises(ValidationFailed, match="unknown CVAE preset"):
        preset("huge")
    assert CVAEConfig.from_dict(PRESETS["small"].to_dict()) == PRESETS["small"]


@pytest.mark.parametrize("size", [1, 63, 64, 1000])
def test_shapes_round_trip_any_length(size):
    config = preset("tiny")
    model = build_cvae(config, size, 5)
    assert model.padded % config.pad_multiple == 0 and model.padded >= size
    theta, c = torch.randn(3, size), torch.randn(3, 5)
    recon, mu, logvar = model(theta, c)
    assert recon.shape == (3, size) and mu.shape == logvar.shape == (3, config.latent_dim)
    total, mse, kl = model.loss(theta, c)
    assert torch.isclose(total, mse + config.kl_weight * kl)
    model.eval()
    assert model.sample(c).shape == (3, size)
    assert sum(p.numel() for p in model.parameters()) == parameter_count(config, size, 5)


def test_condition_is_standardised_with_training_stats():
    model = build_cvae(preset("tiny"), 64, 3)
    conds = torch.tensor([[10.0, 20.0, 30.0], [12.0, 20.0, 34.0]])
    model.fit_condition(conds)
    scaled = model._cond(conds)
    assert torch.allclose(scaled.mean(dim=0), torch.zeros(3), atol=1e-6)
    assert torch.isclose(scaled.pow(2).mean(), torch.tensor(1.0))


def test_batches_never_leave_a_single_sample():
    rng = torch.Generator().manual_seed(0)
    batches = epoch_batches(5, 2, rng)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert [len(b) for b in batches] == [2, 3]


def test_training_is_seeded_and_reports_each_epoch():
    thetas, conds = torch.randn(4, 64), torch.randn(4, 4)
    seen = []
    first = train_cvae(thetas, conds, preset("tiny"), epochs=3, progress=lambda e, n, loss: seen.append((e, n, loss)))
    second = train_cvae(thetas, conds, preset("tiny"), epochs=3)
    assert [(e, n) for e, n, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert [loss for _, _, loss in seen] == [h[0] for h in first.history]
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    third = train_cvae(thetas, conds, preset("tiny"), epochs=3, seed=7)
    assert not torch.equal(third.model.head.weight, first.model.head.weight)
    assert not first.model.training


def test_training_refuses_mismatched_rows():
    with pytest.raises(ValidationFailed, match="one row per checkpoint"):
        train_cvae(torch.randn(4, 10), torch.randn(3, 2), preset("tiny"), epochs=1)
