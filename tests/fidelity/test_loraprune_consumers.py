"""Issue 20, defect 2: a LoRAPrune adapter (LoRA + pruning masks, the default format) is evaluated and
chatted WITH its masks, and its masks touch nothing else.

PEFT alone loads the LoRA without the pruning: the unpruned model. Each test first shows that this
unmasked model differs clearly from what training produced, so it fails if a consumer drops the masks.
"""

from __future__ import annotations

import torch
from fidelity_lab import FidelityLab, logits_of

from studio.variants._loraprune_masks import saved_masks

EXACT = dict(atol=1e-5, rtol=1e-5)


def pruned_adapter(lab: FidelityLab):
    """The trained LoRAPrune adapter, checked to have pruned rows that change the outputs clearly."""
    from peft import PeftModel

    trained = lab.trained("loraprune")
    masks = saved_masks(trained.row.path)
    assert masks and any(float(mask.min()) == 0.0 for mask in masks.values()), "training pruned nothing"
    unmasked = logits_of(PeftModel.from_pretrained(lab.fresh_base(), trained.row.path), lab.ids)
    assert float((unmasked - trained.reference).abs().max()) > 1e-2, "the masks do not matter on these prompts"
    return trained


def test_evaluation_loads_a_loraprune_adapter_with_its_masks(lab):
    from studio.evaluation.loading import load_adapter

    trained = pruned_adapter(lab)
    evaluated = load_adapter(trained.row, lab.settings, "cpu", None, lambda *_: None)
    torch.testing.assert_close(logits_of(evaluated.model, lab.ids), trained.reference, **EXACT)


def test_playground_chats_with_a_loraprune_adapter_with_its_masks_and_only_with_it(lab):
    """Its masks apply while it is the active adapter, not to "no adapter" nor to another adapter on the same base."""
    from studio.services.playground import PlaygroundService

    pruned, other = pruned_adapter(lab), lab.trained("lora")
    service = PlaygroundService(lab.registry, lab.settings)  # a fresh pool: the pruned adapter wraps the base in place
    base = pruned.row.base_model

    def chat_logits(target: str):
        with service.pool.use(base, service._adapter_ref(base, target)) as (model, _):
            return logits_of(model, lab.ids)

    torch.testing.assert_close(chat_logits(f"adapter:{pruned.row.id}"), pruned.reference, **EXACT)
    torch.testing.assert_close(chat_logits("base"), lab.base_logits, **EXACT)
    torch.testing.assert_close(chat_logits(f"adapter:{other.row.id}"), other.reference, **EXACT)
    assert service.pool.loaded() == {base: [f"adapter_{pruned.row.id}", f"adapter_{other.row.id}"]}
    torch.testing.assert_close(chat_logits(f"adapter:{pruned.row.id}"), pruned.reference, **EXACT)
