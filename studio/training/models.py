"""Loading the base model for a task (fp32, whatever the compute precision) and checkpointing it.

The compute precision lives in :mod:`studio.training.precision`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed


def load_tokenizer_for(path: str | Path) -> Any:
    """The base model's tokenizer with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer


def is_encoder_only(path: str | Path) -> bool:
    """True for BERT-like checkpoints (no causal-LM architecture in their config)."""
    config = json.loads((Path(path) / "config.json").read_text())
    architectures = config.get("architectures") or []
    return not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def load_base_model(
    path: str | Path, task: str, labels: Sequence[Any] | None = None, pad_token_id: int | None = None
) -> Any:
    """The transformers model to adapt, fp32 on CPU: a causal LM, or a sequence classifier with a new head."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from studio.sequences.pooling import apply_classifier_pooling

    if task == "classification":
        if not labels or len(labels) < 2:
            raise ValidationFailed("classification needs a dataset with at least two labels")
        names = [str(label) for label in labels]
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path),
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            dtype=torch.float32,
        )
        # A pre-trained encoder may ask for its windows to be pooled over all tokens, not [CLS].
        apply_classifier_pooling(model, path)
        if pad_token_id is not None:
            # Llama-style classifiers pool the last non-pad token: they must know the pad id.
            model.config.pad_token_id = pad_token_id
        return model
    if is_encoder_only(path):
        raise ValidationFailed(f"{path} is an encoder model: it can only be trained for classification")
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def enable_gradient_checkpointing(model: Any) -> bool:
    """Turn on (non-reentrant) activation checkpointing in the transformers model inside ``model``.

    Works through PEFT and the studio's own wrappers (they replace linears in place). Only
    active in train mode; the RNG state is preserved, so dropout masks are the same when a
    layer is recomputed. Returns False when the architecture does not support it.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and getattr(module, "supports_gradient_checkpointing", False):
            kwargs = {"use_reentrant": False}
            if hasattr(module, "activation_checkpointing_enable"):
                module.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:  # transformers < 5
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            return True
    return False
