"""Memory of a pooled window loss: a micro-batch holds whole sequences (all their windows), so the
plan counts a sequence's windows × the window length, and splits micro-batches by sequences."""

from __future__ import annotations

from studio.training.memory import GIB, ModelShape, estimate_memory, plan_memory, pooled_row

BERT_TINY = {
    "architectures": ["BertForSequenceClassification"],
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 69,
}
SHAPE = ModelShape.from_config(BERT_TINY)


def test_pooled_row_counts_the_windows_of_the_largest_sequence():
    lengths = [130] * 10 + [40]  # window lengths of 11 windows
    units = [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9], [10]]  # 7, 3 and 1 windows
    assert pooled_row(lengths, units, max_length=130) == (7 * 130, 130)
    assert pooled_row(lengths, units, max_length=64) == (7 * 64, 64)  # windows never exceed max_length


def test_attention_reaches_one_window_not_the_whole_sequence():
    common = dict(batch_size=8, precision="fp32", task="classification", attention="eager")
    whole = estimate_memory(SHAPE, seq_len=300 * 130, **common)
    windowed = estimate_memory(SHAPE, seq_len=300 * 130, attention_len=130, **common)
    assert windowed.activations < whole.activations
    # the same tokens as 300 × 8 windows of 130, read as rows: equal to the windowed estimate
    rows = estimate_memory(SHAPE, seq_len=130, **{**common, "batch_size": 8 * 300})
    assert rows.activations == windowed.activations


def test_a_pooled_run_is_split_by_sequences_where_a_window_count_would_not_be():
    """8 sequences of 300 windows each: the per-window view fits, the whole-sequence view must split.

    (The measured case: such a run was killed at 12 GB while the per-window estimate said 0.5 GiB;
    the whole-sequence estimate below is ~10.5 GiB.)"""
    lengths = [130] * 2400
    units = [list(range(i * 300, (i + 1) * 300)) for i in range(8)]
    seq_len, attention_len = pooled_row(lengths, units, 130)
    budget = 4 * GIB
    common = dict(budget=budget, checkpointing="off", precision="fp32", task="classification")
    per_window = plan_memory(SHAPE, batch_size=8, seq_len=130, **common)
    assert per_window.fits and not per_window.split and per_window.estimate.total < GIB
    pooled = plan_memory(SHAPE, batch_size=8, seq_len=seq_len, attention_len=attention_len, **common)
    assert pooled.fits and pooled.split and 1 <= pooled.micro_batch_size < 8
    whole_batch = estimate_memory(
        SHAPE, batch_size=8, seq_len=seq_len, attention_len=attention_len, precision="fp32", task="classification"
    )
    assert whole_batch.total > budget > pooled.estimate.total  # the plan's micro-batch of whole sequences fits
