"""Named recipes for sequence classification: the settings that worked on real data, in one place.

A recipe is plain data: the ``pretrain`` job's fields, the LoRA ``train`` job's hyperparameters and
its variant parameters. The UI offers each one as a preset (the Train tab's *Pre-train an encoder*
section and its training presets) and ``scripts/lncrna_pipeline.py --recipe codon`` runs the same
values, so the documented result and the preset cannot drift apart. A recipe is only a named
preset: the schema defaults stay the studio's official behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from studio.schema import PretrainRequest, TrainingHyperParams

EVIDENCE = "docs/results/classification_lncrna.md"


@dataclass(frozen=True)
class SequenceRecipe:
    """Pre-training fields, LoRA hyperparameters and LoRA parameters that go together (read-only)."""

    name: str  # shown in the UI
    purpose: str  # one line: what it is for and where the evidence is
    pretrain: Mapping[str, Any] = field(repr=False)  # PretrainRequest fields
    train_hyper: Mapping[str, Any] = field(repr=False)  # TrainingHyperParams fields
    variant: Mapping[str, Any] = field(repr=False)  # parameters of the "lora" variant
    classifier_preset: str = ""  # the Train tab's preset for the LoRA run on the encoder this recipe pre-trains


def _frozen(values: dict[str, Any]) -> MappingProxyType:
    # Read-only: a preset handler that edits the dict would silently change the recipe for every later user.
    return MappingProxyType(dict(values))


CODING_POTENTIAL = SequenceRecipe(
    name="Coding potential (codons, 3 frames)",
    purpose=(
        "Tells protein-coding RNA (mRNA) from long non-coding RNA (lncRNA), or any label that depends on an open "
        "reading frame, from nucleotide sequences: codon tokens read in each of the three reading frames, a small "
        "encoder with mean pooling, then a LoRA classifier trained with one pooled (smooth-max) loss per sequence. "
        "Evidence: 0.893-0.911 test accuracy over three seeds on lncrna_athaliana (LoRA; the logistic-regression "
        "baseline 0.921), "
        f"{EVIDENCE}, *The codon recipe*."
    ),
    # scripts/lncrna_pipeline.py CODON_SIZES["full"]["pretrain"]: 128 codons + [CLS] + [SEP] a window, 96 shared
    # (a new window every 32 codons; 16 shared gave 0.884, 64 gave 0.899, 96 gave 0.911 on the full split, seed 0;
    # over seeds 0-2, 64 shared averaged 0.897 and 96 shared 0.902);
    # 3,000 steps x 32 windows (~1.5 passes over the 62.8 k windows of the full training split).
    pretrain=_frozen(
        dict(
            architecture="bert",
            tokenizer="codon",
            k=None,  # codons take no k; explicit so that a k left in a form from a k-mer run is cleared
            size="tiny",  # the widths below are tiny's; named too, so the form's estimate line says the same
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            max_length=130,
            window_overlap=96,
            classifier_pooling="mean",
            max_steps=3000,
            batch_size=32,
            learning_rate=3e-3,
            warmup_ratio=0.1,
        )
    ),
    # The LoRA run: 640 steps x 8 SEQUENCES (window_loss="pooled_max" puts all of a sequence's windows in one
    # batch and batch_size counts sequences); the new head learns at its own, much larger rate.
    train_hyper=_frozen(
        dict(
            max_steps=640,
            batch_size=8,
            learning_rate=1e-3,
            window_loss="pooled_max",
            head_learning_rate=0.2,
            warmup_ratio=0.05,
            validation_fraction=0.05,
        )
    ),
    variant=_frozen(dict(r=16, lora_alpha=32.0)),  # plain LoRA ("lora"), alpha = 2 x rank
    classifier_preset="Sequence classifier (codons)",
)

ROTARY_CODING_POTENTIAL = SequenceRecipe(
    name="Coding potential, rotary encoder (codons, 3 frames, RoFormer)",
    purpose=(
        "The coding-potential recipe on an encoder with rotary (relative) positions, RoFormer, and 256-codon windows: "
        "it can learn where an open reading frame starts (an ATG, then no stop codon), which the BERT recipe cannot. "
        "Slower (about 65 min on one CPU thread for the lncRNA set). Evidence: 0.919 / 0.927 / 0.930 / 0.924 test "
        f"accuracy over four seeds on lncrna_athaliana (mean 0.925; the logistic-regression baseline 0.921), {EVIDENCE}, "
        "*A rotary encoder*."
    ),
    # The codon recipe's tokens, pooling and loss on a RoFormer encoder (rotary positions: it can learn "an ATG,
    # then no stop codon for N codons", scripts/positional_rule_probe.py) with windows long enough to hold such an
    # ORF: 256 codons + [CLS] + [SEP], a new window every 128 codons (an in-window ATG ORF alone gives 0.947-0.949
    # on this split, scripts/lncrna_window_ceilings.py); 3,000 steps x 16 windows (the codon recipe's tokens a step).
    pretrain=_frozen(
        {
            **CODING_POTENTIAL.pretrain,
            "architecture": "roformer",
            "max_length": 258,
            "window_overlap": 128,
            "batch_size": 16,
        }
    ),
    # RoFormer's head is two layers (dense + out_proj): at the codon recipe's head rate of 0.2 it collapsed to one
    # class (0.500); 0.02 trains. LoRA starts to separate the classes only after ~250 steps; 2,560 steps beat 1,280
    # on each of three seeds (0.919 / 0.927 / 0.930 against 0.917 / 0.920 / 0.929), at twice the tuning time.
    train_hyper=_frozen({**CODING_POTENTIAL.train_hyper, "max_steps": 2560, "head_learning_rate": 0.02}),
    variant=CODING_POTENTIAL.variant,
    classifier_preset="Sequence classifier (codons, rotary encoder)",
)
SEQUENCE_RECIPES: dict[str, SequenceRecipe] = {r.name: r for r in (CODING_POTENTIAL, ROTARY_CODING_POTENTIAL)}


def pretrain_request(recipe: SequenceRecipe, dataset_id: int, **fields: Any) -> PretrainRequest:
    """The recipe's pre-training job on ``dataset_id`` (``fields`` add to or override it), validated."""
    return PretrainRequest(dataset_id=dataset_id, **{**recipe.pretrain, **fields})


def training_hyper(recipe: SequenceRecipe, **fields: Any) -> TrainingHyperParams:
    """The recipe's LoRA hyperparameters (``fields`` add to or override them), validated."""
    return TrainingHyperParams(**{**recipe.train_hyper, **fields})


def lora_params(recipe: SequenceRecipe) -> dict[str, Any]:
    """The recipe's LoRA parameters, validated by the ``lora`` variant (its other fields at their defaults)."""
    from studio.variants.registry import get_variant

    return get_variant("lora").parse_params(dict(recipe.variant)).model_dump(mode="json")
