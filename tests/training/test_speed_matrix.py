"""Every registered variant trains and exports with all speed features on (parametrised from the registry).

bf16 autocast + length grouping + gradient checkpointing + the chunked loss (small chunks,
so several per batch): the loss is finite, the features were really used, and the saved
adapter reloaded with plain PEFT gives the in-memory model's logits. bf16 changes logits,
so both sides are compared in fp32 eval mode (no autocast).

On a GPU machine ``STUDIO_TEST_DEVICE=cuda pytest tests/training/test_speed_matrix.py`` runs
the same matrix on CUDA (see bench/gpu_check.sh).
"""

from __future__ import annotations

import pytest
import torch
from conftest_training import chat_rows, write_jsonl

from studio.progress import MemoryReporter
from studio.training.setup import TrainingData
from studio.variants.registry import variant_names

SPEED = dict(
    precision="bf16",
    group_by_length=True,
    gradient_checkpointing="on",
    loss_chunk_tokens=3,
    max_steps=2,
    batch_size=3,
    learning_rate=2e-2,
)


@pytest.fixture
def varied(tmp_path):
    rows = chat_rows(10)
    for i, row in enumerate(rows):
        row["messages"][0]["content"] += " please" * (i % 4)
    return TrainingData(path=write_jsonl(tmp_path / "varied.jsonl", rows), sha256="varied")


def fp32_logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids.to(next(model.parameters()).device)).logits.float()


@pytest.mark.parametrize("name", variant_names())
def test_variant_trains_and_exports_with_speed_features_on(name, train_tiny, varied, tmp_path):

    reporter = MemoryReporter()
    result = train_tiny(name, reporter=reporter, data=varied, **SPEED)
    losses = list(result.losses.values())
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), losses
    assert result.precision.name == "bf16" and result.memory.gradient_checkpointing
    if getattr(result.variant, "needs_full_logits", False):
        assert "full logits" in result.loss_mode
    else:
        assert "chunked" in result.loss_mode, result.loss_mode
    assert all(p.dtype == torch.float32 for p in result.model.parameters() if p.requires_grad)

    ids = torch.randint(8, 60, (2, 9), generator=torch.Generator().manual_seed(3))
    expected = fp32_logits(result.model, ids)
    out = tmp_path / "adapter"
    result.variant.save_adapter(result.model, out, result.export_context())
    # The variant's own loader: plain PEFT for most, LoRA + masks for LoRAPrune (its model card says how).
    reloaded = result.variant.load_saved_adapter(result.export_context().fresh_base(), out)
    reloaded.to(next(result.model.parameters()).device)  # the GPU when STUDIO_TEST_DEVICE=cuda
    torch.testing.assert_close(fp32_logits(reloaded, ids), expected, atol=1e-5, rtol=1e-5)
