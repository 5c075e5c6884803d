"""The discriminator filter keeps exactly the inputs whose P(real) is above its threshold."""

from __future__ import annotations

import random

import pytest
from conftest import PREFIX, TEMPLATES, THINGS, cpu_device

from studio.transfer.discriminator import keep_real, p_real
from studio.transfer.synth import open_engine


def test_keep_real_is_strictly_above_the_threshold_in_order_and_capped():
    scores = [0.2, 0.5, 0.51, 0.9, 0.49, 0.7, 1.0]
    assert keep_real(scores, 0.5) == [2, 3, 5, 6]
    assert keep_real(scores, 0.5, limit=2) == [2, 3]
    assert keep_real(scores, 0.0) == [0, 1, 2, 3, 4, 5, 6]
    assert keep_real(scores, 0.95) == [6]
    assert keep_real(scores, 0.5, limit=0) == []


@pytest.mark.slow
def test_a_trained_discriminator_filters_at_its_threshold(kit):
    """On a real tiny discriminator: P(real) is a probability that batching does not change, and the
    filter at any threshold keeps exactly the inputs scored above it.

    (Whether it tells real from generated depends on the base: these tiny bases write near-perfect
    task inputs, so their discriminator is close to chance.)"""
    rng = random.Random(11)
    real = [rng.choice(TEMPLATES).format(rng.choice(sorted(THINGS))) for _ in range(12)]
    words = sorted(set(" ".join(TEMPLATES).replace("{}", "").split()) | set(THINGS))
    noise = [" ".join(rng.choice(words + [PREFIX]) for _ in range(rng.randint(1, 9))) for _ in range(12)]
    judge = open_engine(kit.discriminator_base, cpu_device())
    scores = p_real(judge, kit.discriminator_dir, real + noise, kit.question, batch=5)
    assert len(scores) == 24 and all(0.0 <= s <= 1.0 for s in scores)
    # batching does not change a score
    again = p_real(judge, kit.discriminator_dir, list(reversed(real + noise)), kit.question, batch=24)
    assert list(reversed(again)) == pytest.approx(scores, abs=1e-5)
    for threshold in (sorted(scores)[11], sorted(scores)[18]):
        kept = keep_real(scores, threshold)
        assert kept == [i for i, s in enumerate(scores) if s > threshold]
        assert all(scores[i] > threshold for i in kept) and len(kept) < len(scores)
