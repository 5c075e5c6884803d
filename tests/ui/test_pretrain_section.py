"""Train tab, "Pre-train an encoder" section: the form queues a pretrain job, shows problems beside their
fields and an estimate before submitting, and the finished encoder is a base-model choice of the Train tab.

Handlers are called as Gradio calls them: the built tab's functions, found by name and output, with the
components' values (no server, no browser).
"""

from __future__ import annotations

import json

import pytest
import torch

from app import pretrain_section
from ui.train_tab_handlers import add_lncrna_sample, build_train_tab, call, handler

TINY = {"pretrain-size": "tiny", "pretrain-max-length": 32, "pretrain-window-overlap": 4, "pretrain-batch-size": 4}


@pytest.fixture
def sequences(services, tmp_path):
    """A registered dataset of 12 lncRNA/mRNA sequences (the import detects the DNA column)."""
    return add_lncrna_sample(services, tmp_path)


@pytest.fixture
def words(services, tmp_path):
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": t[0]}) + "\n" for t in ["good", "bad"] * 4))
    return services.datasets.add(path)


@pytest.fixture
def demo(services):
    return build_train_tab(services)


def flagged(outputs: dict) -> dict[str, str]:
    """``{elem_id: info}`` of the widgets the handler marked as wrong."""
    return {
        key: update["info"]
        for key, update in outputs.items()
        if isinstance(update, dict) and update.get("elem_classes") == ["field-error"]
    }


def test_the_section_sits_in_the_train_tab_with_fields_from_the_schema(demo, services, sequences, words):
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    wanted = {"pretrain-dataset", "pretrain-submit", "pretrain-estimate", "pretrain-tokenizer", "pretrain-k"}
    assert wanted | {"pretrain-size", "pretrain-max-steps", "pretrain-learning-rate"} <= ids, wanted - ids
    choices = pretrain_section.sequence_dataset_choices(services)
    assert [value for _, value in choices] == [sequences.id]  # only datasets holding sequences
    assert "dna in 'sequence'" in choices[0][0] and "3-mers" in choices[0][0]


def test_a_field_error_is_shown_beside_its_field_and_nothing_is_queued(demo, services, sequences, words):
    submit = handler(demo, "on_submit", "pretrain-status")
    with pytest.warns(UserWarning, match="Please fix 1 setting"):  # the pop-up (gr.Warning) beside the notices
        out = call(submit, **{"pretrain-dataset": sequences.id, "pretrain-tokenizer": "nucleotide", "pretrain-k": 4})
    assert out["pretrain-status"] == pretrain_section.NEEDS_FIXING
    assert flagged(out) == {"pretrain-k": "⚠ only k-mer tokenizers take a k"}
    out = call(submit, **{"pretrain-dataset": sequences.id, "pretrain-window-overlap": 600})
    assert set(flagged(out)) == {"pretrain-window-overlap"}
    out = call(submit, **{"pretrain-dataset": words.id})  # a dataset of words: said under the dataset
    assert set(flagged(out)) == {"pretrain-dataset"}
    assert "no column of DNA, RNA or protein" in flagged(out)["pretrain-dataset"]
    out = call(submit, **{"pretrain-dataset": sequences.id, "pretrain-tokenizer": "protein"})
    assert flagged(out) == {
        "pretrain-tokenizer": "⚠ a protein tokenizer cannot read dna sequences; pick nucleotide, kmer or codon"
    }
    out = call(submit)  # no dataset chosen
    assert set(flagged(out)) == {"pretrain-dataset"}
    assert services.jobs.list(kind="pretrain") == []


def test_the_estimate_is_shown_before_submitting(demo, sequences):
    torch.set_num_threads(1)
    estimate = handler(demo, "on_estimate", "pretrain-estimate")
    out = call(estimate, **{"pretrain-dataset": sequences.id, "pretrain-max-steps": 20, **TINY})
    text = out["pretrain-estimate"]
    assert text.startswith("**20 steps** · **") and "encoder tiny: hidden 64, 2 layers" in text, text
    assert flagged(out) == {}
    out = call(estimate, **{"pretrain-dataset": sequences.id, "pretrain-mask-prob": 1.0})
    assert out["pretrain-estimate"].startswith("⚠ To see an estimate") and set(flagged(out)) == {"pretrain-mask-prob"}


def test_the_form_queues_a_pretrain_job_whose_encoder_becomes_a_train_base(demo, services, sequences):
    from studio.jobs.context import JobContext
    from studio.jobs.handlers import get_handler
    from studio.progress import MemoryReporter
    from studio.schema import parse_request

    torch.set_num_threads(1)
    submit = handler(demo, "on_submit", "pretrain-status")
    fields = {"pretrain-dataset": sequences.id, "pretrain-name": " dna-enc ", "pretrain-max-steps": 2, **TINY}
    out = call(submit, **fields, **{"pretrain-tokenizer": "kmer", "pretrain-k": 4})
    [job] = services.jobs.list(kind="pretrain")
    assert (
        out["pretrain-status"].startswith(f"✓ Queued pre-train job #{job.id}") and "dna-enc" in out["pretrain-status"]
    )
    assert flagged(out) == {}
    assert services.jobs.dispatcher.sent == [job.id]
    assert {k: job.request[k] for k in ("dataset_id", "name", "tokenizer", "k", "size", "max_steps")} == {
        "dataset_id": sequences.id,
        "name": "dna-enc",
        "tokenizer": "kmer",
        "k": 4,
        "size": "tiny",
        "max_steps": 2,
    }

    # The worker runs it; the Train tab's base-model list then offers the new encoder.
    request = parse_request(job.request)
    ctx = JobContext(job_id=job.id, settings=services.settings, registry=services.registry, device=_cpu(), attempt=1)
    get_handler("pretrain")(request, MemoryReporter(), ctx)
    bases = call(handler(demo, "on_tab", "train-base"))["train-base"]["choices"]
    assert ("dna-enc (encoder: classification only)", "dna-enc") in [tuple(c) for c in bases]
    assert tuple(bases[0]) == (services.settings.default_base_model,) * 2  # the default stays first


def _cpu():
    from studio.device import detect_device

    return detect_device("cpu")
