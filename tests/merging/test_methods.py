"""The merge arithmetic on small tensors whose answers are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from studio.merging.methods import linear_merge, merge_deltas, ties_merge, trim_to_density


def test_linear_merge_is_the_weighted_sum():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, -2.0]])
    torch.testing.assert_close(linear_merge([a, b], [0.5, 0.25]), torch.tensor([[1.5, 0.5]]))
    assert torch.count_nonzero(linear_merge([a, a], [1.0, -1.0])) == 0  # a negative weight subtracts


def test_trim_keeps_the_largest_share_by_magnitude():
    delta = torch.tensor([[0.1, -5.0, 2.0], [-3.0, 0.2, 1.0]])
    torch.testing.assert_close(trim_to_density(delta, 0.5), torch.tensor([[0.0, -5.0, 2.0], [-3.0, 0.0, 0.0]]))
    torch.testing.assert_close(trim_to_density(delta, 0.01), torch.tensor([[0.0, -5.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(trim_to_density(delta, 1.0), delta)


def test_ties_elects_signs_and_averages_only_the_agreeing_changes():
    d1 = torch.tensor([3.0, -1.0, 0.5, 0.0])
    d2 = torch.tensor([-2.0, -2.0, 1.0, 4.0])
    # signs of the sums: + - + +; position 0: only d1 agrees; 1, 2: both; 3: only d2 changed it
    torch.testing.assert_close(ties_merge([d1, d2], [1.0, 1.0], 1.0), torch.tensor([3.0, -1.5, 0.75, 4.0]))


def test_ties_trims_before_the_election():
    d1 = torch.tensor([3.0, -1.0, 0.5, 0.0])  # keeps 3, -1
    d2 = torch.tensor([-2.0, -2.5, 1.0, 4.0])  # keeps -2.5, 4
    # sums 3, -3.5, 0, 4: position 2 has no elected sign and stays 0
    torch.testing.assert_close(ties_merge([d1, d2], [1.0, 1.0], 0.5), torch.tensor([3.0, -1.75, 0.0, 4.0]))


def test_ties_weights_scale_each_adapter_before_the_vote():
    d1, d2 = torch.tensor([2.0]), torch.tensor([-3.0])
    assert float(ties_merge([d1, d2], [1.0, 1.0], 1.0)) == -3.0  # d2 has more mass
    assert float(ties_merge([d1, d2], [2.0, 1.0], 1.0)) == 4.0  # weighted, d1 wins


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown merge method"):
        merge_deltas("average", [torch.zeros(2)], [1.0])
    with pytest.raises(ValueError, match="differ in shape"):
        linear_merge([torch.zeros(2), torch.zeros(3)], [1.0, 1.0])
    with pytest.raises(ValueError, match="weight changes for"):
        linear_merge([torch.zeros(2)], [1.0, 1.0])


def test_dare_keeps_a_random_share_scaled_up_and_is_reproducible():
    from studio.merging.methods import dare_generator, drop_and_rescale

    delta = torch.randn(200, 100, generator=torch.Generator().manual_seed(1))
    dropped = drop_and_rescale(delta, 0.3, dare_generator(0, "q_proj", 0))
    kept = dropped != 0
    assert 0.25 < float(kept.float().mean()) < 0.35
    torch.testing.assert_close(dropped[kept], delta[kept] / 0.3)  # the survivors make up for the rest
    again = drop_and_rescale(delta, 0.3, dare_generator(0, "q_proj", 0))
    assert torch.equal(dropped, again)
    for other in (dare_generator(1, "q_proj", 0), dare_generator(0, "k_proj", 0), dare_generator(0, "q_proj", 1)):
        assert not torch.equal(drop_and_rescale(delta, 0.3, other), dropped)
    assert torch.equal(drop_and_rescale(delta, 1.0, dare_generator(0, "q_proj", 0)), delta)


def test_dare_methods_are_dare_then_sum_or_ties():
    from studio.merging.methods import dare_generator, drop_and_rescale

    d1, d2 = torch.randn(30, 20), torch.randn(30, 20)
    dropped = [drop_and_rescale(d, 0.5, dare_generator(7, "m", i)) for i, d in enumerate((d1, d2))]
    torch.testing.assert_close(
        merge_deltas("dare_linear", [d1, d2], [0.5, 0.5], 0.5, seed=7, module="m"), linear_merge(dropped, [0.5, 0.5])
    )
    expected = ties_merge(dropped, [1.0, 1.0], 1.0)  # no further trimming: DARE already pruned
    torch.testing.assert_close(merge_deltas("dare_ties", [d1, d2], [1.0, 1.0], 0.5, seed=7, module="m"), expected)


def test_every_method_the_request_offers_is_implemented():
    from typing import get_args

    from studio.merging.methods import METHODS, merge_dense_module
    from studio.merging.registry import DENSE
    from studio.merging.registry import METHODS as REGISTERED
    from studio.schema import MergeRequest

    assert set(get_args(MergeRequest.model_fields["method"].annotation)) == set(REGISTERED)
    assert {name for name, method in REGISTERED.items() if method.target == DENSE} == set(METHODS)
    assert all(callable(method.load()) for method in REGISTERED.values())  # every registered entry point exists
    assert REGISTERED["linear"].load() is merge_dense_module
    deltas = [torch.randn(4, 3), torch.randn(4, 3)]
    for method in METHODS:
        assert merge_deltas(method, deltas, [1.0, 1.0], 0.5).shape == (4, 3)
