"""Frozen base linears in the compute dtype (the GPU path), with exact fp32 originals restored."""

from __future__ import annotations

import pytest
import torch

from studio.training.frozen_weights import FrozenLinearStorage
from studio.variants import create_variant


def test_only_frozen_base_linears_change_dtype_and_restore_is_exact(make_build_ctx):
    ctx = make_build_ctx()
    base_ids = {id(p) for p in ctx.model.parameters()}
    originals = {name: p.detach().clone() for name, p in ctx.model.named_parameters()}
    model = create_variant("ffa_lora").build(ctx)  # its frozen A is an adapter tensor, not a base weight
    storage = FrozenLinearStorage.convert(model, torch.bfloat16, base_ids)

    low = {n for n, p in model.named_parameters() if p.dtype == torch.bfloat16}
    assert low and storage.converted == len(low)
    assert all("base_layer" in n and not n.endswith(("lora_A.default.weight", "lora_B.default.weight")) for n in low)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n or "embed" in n)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert storage.bytes_saved == sum(p.numel() * 2 for n, p in model.named_parameters() if n in low)

    storage.restore()
    storage.restore()  # idempotent
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name, param in model.named_parameters():
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if key in originals:
            assert torch.equal(param, originals[key]), name  # bit-for-bit


@pytest.mark.parametrize("variant", ["lora", "dora", "pissa", "lora_xs"])
def test_training_with_low_precision_storage_exports_exactly_for_the_fp32_base(
    variant, train_tiny, tmp_path, monkeypatch
):
    """The GPU path, forced on the CPU: bf16 storage while training, exact exports afterwards."""
    from peft import PeftModel

    from studio.progress import MemoryReporter
    from studio.training import loop

    monkeypatch.setattr(loop, "LOW_PRECISION_STORAGE_DEVICES", frozenset({"cpu"}))
    reporter = MemoryReporter()
    result = train_tiny(variant, reporter=reporter, max_steps=3, precision="bf16", learning_rate=2e-2)
    assert result.frozen_linears == "bf16" and "chunked" in result.loss_mode, result.loss_mode
    assert any("stored in bf16" in message for _, message in reporter.logs)
    assert all(torch.isfinite(torch.tensor(list(result.losses.values()))))
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # restored after training

    ids = torch.randint(8, 60, (2, 9), generator=torch.Generator().manual_seed(3))
    result.model.eval()
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
    out = tmp_path / "adapter"
    result.variant.save_adapter(result.model, out, result.export_context())
    reloaded = PeftModel.from_pretrained(result.export_context().fresh_base(), str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
