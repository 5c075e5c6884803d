"""How a pre-trained encoder's classifier summarises a window: its [CLS] token, or all its tokens.

``BertForSequenceClassification`` reads the ``[CLS]`` token through a pooler (dense + tanh). The
encoders of :mod:`studio.sequences.pretrain` are pre-trained as masked LMs, which have no pooler:
its weights are new when the classifier is built, and a ``[CLS]`` state that was never trained to
summarise the window says little about a short motif somewhere in it. With
``classifier_pooling="mean"`` (saved in the encoder's ``config.json``, so training, evaluation and
exports read it alike) the pooler is replaced by the mean of the window's token states, padding
left out: every token of the window reaches the head directly, and the pooler has no weights, so
nothing random is left outside the trained adapter. ``"max"`` takes the largest value of each
feature over the window's tokens instead (a motif that lights up a few tokens is not averaged away).
"""

from __future__ import annotations

from typing import Any

CLASSIFIER_POOLINGS = ("cls", "mean", "max")


def classifier_pooling(config: Any) -> str:
    """The pooling saved in a model config (``classifier_pooling``); ``"cls"`` when it has none."""
    value = getattr(config, "classifier_pooling", None) or "cls"
    if value not in CLASSIFIER_POOLINGS:
        raise ValueError(f"classifier_pooling must be one of {CLASSIFIER_POOLINGS}, not {value!r}")
    return value


def pool_tokens(hidden_states: Any, attention_mask: Any | None, mode: str) -> Any:
    """``[batch, hidden]``: the mean or max of ``hidden_states`` over the tokens the mask keeps."""
    import torch

    if attention_mask is None:
        attention_mask = torch.ones(hidden_states.shape[:2], device=hidden_states.device)
    keep = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden_states * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
    if mode == "max":
        lowest = torch.finfo(hidden_states.dtype).min
        return hidden_states.masked_fill(keep == 0, lowest).max(dim=1).values
    raise ValueError(f"pooling over tokens is mean or max, not {mode!r}")


def _token_pooler_class() -> Any:
    import torch

    class TokenPooler(torch.nn.Module):
        """Stands in for BERT's pooler (or RoFormer's first-token read): mean/max of the token states (no weights).

        BERT calls its pooler with the hidden states only, so the attention mask of the current
        forward is handed over by a pre-hook on the encoder (:func:`apply_classifier_pooling`).
        """

        def __init__(self, mode: str):
            super().__init__()
            self.mode = mode
            self.attention_mask = None

        def forward(self, hidden_states):
            return pool_tokens(hidden_states, self.attention_mask, self.mode)

        def extra_repr(self) -> str:
            return f"mode={self.mode}"

    return TokenPooler


def _remember_mask(pooler: Any):
    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        pooler.attention_mask = mask

    return hook


def _pool_before_head(pooler: Any):
    # RoFormer's head reads features[:, 0]: hand it the pooled vector in that place instead.
    def hook(module, args):
        return (pooler(args[0]).unsqueeze(1), *args[1:])

    return hook


def apply_classifier_pooling(model: Any) -> str:
    """Give a BERT-like sequence classifier the pooling its config asks for; returns that pooling.

    Call right after ``from_pretrained`` (before PEFT wraps the model). ``"cls"`` leaves the model
    untouched. BERT (an encoder under ``model.bert`` with a pooler): the pooler is replaced.
    RoFormer (``model.roformer``, a head that reads the first token): the head is handed the pooled
    vector in the first token's place, so its dense + out_proj layers (trained with the classifier)
    read the pooling. Other models are refused for ``"mean"``/``"max"`` rather than silently read
    through ``[CLS]``.
    """
    mode = classifier_pooling(model.config)
    if mode == "cls":
        return mode
    pooler = _token_pooler_class()(mode)
    bert = getattr(model, "bert", None)
    roformer = getattr(model, "roformer", None)
    if bert is not None and getattr(bert, "pooler", None) is not None:
        bert.pooler = pooler
        bert.register_forward_pre_hook(_remember_mask(pooler), with_kwargs=True)
    elif roformer is not None and getattr(model, "classifier", None) is not None:
        roformer.register_forward_pre_hook(_remember_mask(pooler), with_kwargs=True)
        model.classifier.register_forward_pre_hook(_pool_before_head(pooler))
    else:
        raise ValueError(f"classifier_pooling={mode!r} needs a BERT-like classifier, not {type(model).__name__}")
    return mode
