"""Less padding: length-grouped batch plans and packing without cross-contamination."""

from __future__ import annotations

import pytest
import torch
from conftest_training import chat_rows, write_jsonl

from studio.progress import MemoryReporter
from studio.training.data import BatchPlan, collate, collate_packed, grouped_order, pack_bins
from studio.training.losses import LossFunction, loss_sum
from studio.training.models import load_base_model, load_tokenizer_for
from studio.training.setup import TrainingData
from studio.training.tokenise import IGNORE_INDEX, encode_rows

LENGTHS = [(i * 37) % 101 + 5 for i in range(90)]


def padded_slots(plan: BatchPlan, steps: int) -> int:
    return sum(
        len(batch) * max(LENGTHS[i] for i in batch) for step in range(1, steps + 1) for batch in plan.step_batches(step)
    )


def test_grouped_order_is_a_seeded_permutation_of_similar_length_groups():
    order = grouped_order(LENGTHS, 8, seed=3, epoch=0)
    assert sorted(order) == list(range(len(LENGTHS)))
    assert order == grouped_order(LENGTHS, 8, seed=3, epoch=0)  # deterministic for a seed
    assert order != grouped_order(LENGTHS, 8, seed=4, epoch=0)  # the seed changes the order
    assert order != grouped_order(LENGTHS, 8, seed=3, epoch=1)  # and so does the epoch
    # Full groups have similar lengths; the one partial group (90 = 11×8 + 2) comes last.
    groups = [order[i : i + 8] for i in range(0, 88, 8)]
    spread = max(max(LENGTHS[i] for i in g) - min(LENGTHS[i] for i in g) for g in groups)
    assert spread <= 20
    assert len(order[88:]) == 2


def test_grouping_cuts_padding_and_keeps_steps_deterministic():
    grouped = BatchPlan(len(LENGTHS), 8, 1, seed=1, lengths=LENGTHS)
    plain = BatchPlan(len(LENGTHS), 8, 1, seed=1)
    assert padded_slots(grouped, 11) < 0.7 * padded_slots(plain, 11)
    again = BatchPlan(len(LENGTHS), 8, 1, seed=1, lengths=LENGTHS)
    assert [again.step_batches(s) for s in (7, 3, 12)] == [grouped.step_batches(s) for s in (7, 3, 12)]


def test_smaller_micro_batches_cover_the_same_examples_per_step():
    whole = BatchPlan(len(LENGTHS), 8, 2, seed=5, lengths=LENGTHS)
    split = BatchPlan(len(LENGTHS), 8, 2, seed=5, lengths=LENGTHS, micro_batch_size=3)
    for step in (1, 2, 9):
        assert [i for b in split.step_batches(step) for i in b] == [i for b in whole.step_batches(step) for i in b]
        assert [len(b) for b in split.step_batches(step)] == [3, 3, 3, 3, 3, 1]
    # Calibration batches (micro_batch) are the first batch_size-sized slices of the stream.
    assert whole.micro_batch(0) + whole.micro_batch(1) == whole.step_examples(1)


def test_token_budgeted_micro_batches_split_only_long_rows():
    budget = 2 * max(LENGTHS)  # what the memory plan sets: micro_batch_size 2 × the longest row
    plan = BatchPlan(len(LENGTHS), 8, 1, seed=5, lengths=LENGTHS, micro_batch_size=2, micro_tokens=budget)
    whole = BatchPlan(len(LENGTHS), 8, 1, seed=5, lengths=LENGTHS)
    sizes = []
    for step in range(1, 12):
        batches = plan.step_batches(step)
        assert [i for b in batches for i in b] == whole.step_examples(step)  # same examples, same order
        for batch in batches:
            assert len(batch) <= 8 and (len(batch) == 1 or len(batch) * max(LENGTHS[i] for i in batch) <= budget)
        sizes += [len(b) for b in batches]
    assert max(sizes) > 2 and min(sizes) <= 2  # short rows travel together, long ones are split
    assert plan.step_batches(4) == BatchPlan(
        len(LENGTHS), 8, 1, seed=5, lengths=LENGTHS, micro_batch_size=2, micro_tokens=budget
    ).step_batches(4)


def test_pack_bins_first_fit_decreasing():
    bins = pack_bins([5, 9, 3, 7, 1], capacity=10)
    assert sorted(i for b in bins for i in b) == [0, 1, 2, 3, 4]
    assert all(sum([5, 9, 3, 7, 1][i] for i in b) <= 10 for b in bins) and len(bins) == 3


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    torch.manual_seed(0)
    model = load_base_model(tiny_llama_dir, "causal-lm").eval()
    tokenizer = load_tokenizer_for(tiny_llama_dir)
    rows = chat_rows(6)
    rows[1]["messages"][0]["content"] += " please tell me about the sky and the sea"
    examples = encode_rows(rows, tokenizer, task="causal-lm", max_length=64).examples
    return model, tokenizer, examples


@pytest.mark.parametrize("implementation,style", [("sdpa", "bool"), ("eager", "additive")])
def test_packed_rows_get_exactly_their_unpacked_logits_and_loss(tiny, implementation, style):
    model, tokenizer, examples = tiny
    model.config._attn_implementation = implementation
    try:
        packed = collate_packed(examples, tokenizer.pad_token_id, capacity=40, mask_style=style)
        assert packed["input_ids"].shape[0] < len(examples)  # several rows share a sequence
        with torch.no_grad():
            out = model(
                input_ids=packed["input_ids"], attention_mask=packed["packed_mask"], position_ids=packed["position_ids"]
            ).logits
            for example in examples:
                alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
                row, start = locate(packed["input_ids"], packed["position_ids"], example["input_ids"])
                torch.testing.assert_close(out[row, start : start + len(alone)], alone, atol=1e-5, rtol=1e-5)
                # The row's own loss, and no label on its first token (it follows another row).
                labels = packed["labels"][row, start : start + len(alone)]
                assert labels[0] == IGNORE_INDEX
                assert labels[1:].tolist() == example["labels"][1:]
            total_packed, _ = loss_sum(model, packed, "causal-lm")
            total_padded, _ = loss_sum(model, collate(examples, tokenizer.pad_token_id), "causal-lm")
        torch.testing.assert_close(total_packed, total_padded, atol=1e-5, rtol=1e-5)
    finally:
        model.config._attn_implementation = "sdpa"


def locate(ids, positions, wanted):
    """(row, start) of the packed copy of ``wanted`` (a row starts where its position id is 0)."""
    n = len(wanted)
    for row in range(ids.shape[0]):
        for start in (positions[row] == 0).nonzero().flatten().tolist():
            if ids[row, start : start + n].tolist() == wanted and positions[row, start + n - 1] == n - 1:
                return row, start
    raise AssertionError("row not found in the packed batch")


def test_chunked_loss_on_packed_batches_equals_padded(tiny):
    model, tokenizer, examples = tiny
    fn = LossFunction.for_model(model, "causal-lm", chunk_tokens=4)
    with torch.no_grad():
        packed, _ = fn(model, collate_packed(examples, tokenizer.pad_token_id, 40, "bool"))
        padded, _ = loss_sum(model, collate(examples, tokenizer.pad_token_id), "causal-lm")
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)


@pytest.fixture
def varied_data(tmp_path):
    rows = chat_rows(16)
    for i, row in enumerate(rows):
        row["messages"][0]["content"] += " please" * (i % 5) + " tell me" * (i % 3)
    return TrainingData(path=write_jsonl(tmp_path / "varied.jsonl", rows), sha256="varied")


def test_packing_trains_like_padding(train_tiny, varied_data):
    # Same examples per step, no dropout: packed and padded runs follow the same loss curve.
    common = dict(data=varied_data, max_steps=3, batch_size=4, learning_rate=1e-2)
    padded = train_tiny("lora", {"lora_dropout": 0.0}, work="padded", **common)
    reporter = MemoryReporter()
    packed = train_tiny("lora", {"lora_dropout": 0.0}, work="packed", reporter=reporter, packing=True, **common)
    for step in (1, 2, 3):
        assert packed.losses[step] == pytest.approx(padded.losses[step], abs=1e-5)
    assert packed.padded_tokens < padded.padded_tokens and packed.real_tokens == padded.real_tokens
    assert any("packed" in message for _, message in reporter.logs)


def test_grouped_run_resumes_with_the_same_batches(train_tiny, varied_data):
    common = dict(data=varied_data, max_steps=4, batch_size=3, save_every=2, learning_rate=1e-2)
    straight = train_tiny("lora", work="straight", **common)
    reporter = MemoryReporter()
    train_tiny("lora", work="first", reporter=reporter, **{**common, "max_steps": 4})
    resumed = train_tiny("lora", work="second", resume=reporter.checkpoints[0][0], **common)
    assert sorted(resumed.losses) == [3, 4]
    for step in (3, 4):
        assert resumed.losses[step] == pytest.approx(straight.losses[step], abs=1e-6)
    with pytest.raises(Exception, match="group_by_length"):
        train_tiny("lora", work="third", resume=reporter.checkpoints[0][0], group_by_length=False, **common)
