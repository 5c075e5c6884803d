"""A merge of one adapter: refused when it would only copy the adapter, accepted when it changes it."""

from __future__ import annotations

import pytest

from studio.errors import ValidationFailed
from studio.schema import MergeRequest

COPY = "choose two or more adapters to merge; adapter #{id} alone"


@pytest.mark.parametrize(
    "fields",
    [
        {},  # the form's defaults: linear, weight 1 (the average of one), rank = its own
        {"rank": 4},  # its own rank, said explicitly
        {"rank": 16, "weights": [1.0]},  # a larger rank keeps the same ΔW
        {"method": "ties", "density": 1.0},  # ties and dare at density 1 are the plain sum
        {"method": "dare_linear", "density": 1.0},
    ],
)
def test_a_lone_plain_lora_that_would_be_copied_is_refused_in_words(merge_env, fields):
    lora = merge_env.adapter("a", seed=1, r=4)
    with pytest.raises(ValidationFailed, match=COPY.format(id=lora.id)) as refused:
        merge_env.jobs.submit(MergeRequest(adapter_ids=[lora.id], **fields))
    assert "would be copied unchanged" in str(refused.value) and "set Rank below 4" in str(refused.value)
    assert merge_env.registry.list_jobs() == []  # refused before anything was queued


@pytest.mark.parametrize(
    "fields",
    [
        {"rank": 2},  # resize: the SVD re-factorisation keeps its best rank-2 part
        {"weights": [0.5]},  # weaken it
        {"weights": [-1.0]},  # reverse it
        {"method": "ties", "density": 0.5},  # keep only its largest changes
        {"method": "dare_linear", "density": 0.5},
        {"method": "lego"},  # clustering can rescale it (output reweighting)
    ],
)
def test_a_lone_adapter_that_the_merge_changes_is_queued(merge_env, fields):
    lora = merge_env.adapter("a", seed=1, r=4)
    job = merge_env.jobs.submit(MergeRequest(adapter_ids=[lora.id], **fields))
    assert job.status == "queued"


def test_a_lone_adapter_that_is_not_a_plain_lora_is_converted_not_refused(merge_env):
    dora = merge_env.adapter("dora", seed=3, r=4, use_dora=True)  # the way round check_mergeable suggests
    assert merge_env.jobs.submit(MergeRequest(adapter_ids=[dora.id])).status == "queued"


def test_two_adapters_are_never_a_copy(merge_env):
    a, b = merge_env.adapter("a", seed=1), merge_env.adapter("b", seed=2)
    assert merge_env.jobs.submit(MergeRequest(adapter_ids=[a.id, b.id])).status == "queued"


def test_studio_merge_refuses_a_copy(merge_env, settings):
    """The CLI submits through the same service, so it refuses the copy too."""
    from click.testing import CliRunner

    from studio.cli import cli
    from studio.cli.common import services

    row = merge_env.adapter("a", seed=1)
    lone = services().registry.add_adapter(
        name=row.name, variant="lora", base_model=row.base_model, path=row.path, sha256="0"
    )
    with pytest.raises(ValidationFailed, match=COPY.format(id=lone.id)):
        CliRunner().invoke(cli, ["merge", str(lone.id)], catch_exceptions=False)
    assert services().jobs.list() == []
