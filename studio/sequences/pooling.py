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
``"attention"`` weighs the tokens by a learnt score (one linear layer on each token's state, softmax
over the window): a short reading frame in a long window is not diluted by the rest of it, as the mean
dilutes it. Its weights live inside the classification head (``classifier.token_pooler``), so they
are trained and saved with the head by every variant (``modules_to_save``); they start at zero, so an
untrained attention pooling is exactly the mean. No library ships this pooling for transformers'
BERT/RoFormer classifiers (sentence-transformers' poolers are for embedding models), hence this
module.
"""

from __future__ import annotations

from typing import Any

CLASSIFIER_POOLINGS = ("cls", "mean", "max", "attention")
TOKEN_POOLER = "token_pooler"  # the attention pooler's name inside the classification head


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


def attention_pool(hidden_states: Any, attention_mask: Any | None, scores: Any) -> Any:
    """``[batch, hidden]``: ``hidden_states`` weighted by ``softmax(scores)`` over the tokens the mask keeps.

    ``scores`` is ``[batch, tokens]`` (or ``[batch, tokens, 1]``); padding gets no weight.
    """
    import torch

    scores = scores.squeeze(-1) if scores.dim() == 3 else scores
    if attention_mask is not None:
        scores = scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=1).unsqueeze(-1)
    return (weights * hidden_states).sum(dim=1)


def attention_pooler(hidden_size: int) -> Any:
    """A new (zero-initialised) attention pooler for token states of width ``hidden_size``; call it as
    ``pooler(hidden_states, attention_mask)``."""
    return _attention_pooler_class()(hidden_size)


def _attention_pooler_class() -> Any:
    import torch

    class AttentionPooler(torch.nn.Module):
        """A learnt score per token (``weigher``: hidden -> 1), softmax over the window, weighted sum.

        Zero-initialised: before training every token weighs the same and the pooling is the mean,
        so nothing random is left in a classifier whose head was not trained yet.
        """

        def __init__(self, hidden_size: int):
            super().__init__()
            self.weigher = torch.nn.Linear(hidden_size, 1)
            torch.nn.init.zeros_(self.weigher.weight)
            torch.nn.init.zeros_(self.weigher.bias)

        def forward(self, hidden_states, attention_mask=None):
            return attention_pool(hidden_states, attention_mask, self.weigher(hidden_states))

    return AttentionPooler


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


class _Forward:
    """What the current forward of one model handed to its encoder (mask) and pooler (token states).

    Shared by the hooks of one model through their closures, never stored on a module: PEFT
    deep-copies a head it trains (``modules_to_save``), and a copy must read the same forward.
    """

    attention_mask: Any = None
    hidden_states: Any = None


def _stash_states_class() -> Any:
    import torch

    class StashTokenStates(torch.nn.Module):
        """Stands in for BERT's pooler under attention pooling: keeps the token states for the head (no weights)."""

        def __init__(self, forward: _Forward):
            super().__init__()
            self._forward = forward

        def forward(self, hidden_states):
            self._forward.hidden_states = hidden_states
            return hidden_states[:, 0]  # the shape BERT expects; the head's hook reads the stashed states

    return StashTokenStates


def _attention_before_head(forward: _Forward, states_from_args: bool):
    # ``module`` is the head that runs (PEFT's trained copy included), so its own token_pooler weighs.
    def hook(module, args):
        pooler = getattr(module, TOKEN_POOLER)
        if states_from_args:  # RoFormer's head gets the token states and reads features[:, 0]
            return (pooler(args[0], forward.attention_mask).unsqueeze(1), *args[1:])
        return (pooler(forward.hidden_states, forward.attention_mask), *args[1:])

    return hook


def _apply_attention_pooling(model: Any, bert: Any, roformer: Any) -> None:
    head = getattr(model, "classifier", None)
    if head is None or (bert is None and roformer is None):
        raise ValueError(f"classifier_pooling='attention' needs a BERT-like classifier, not {type(model).__name__}")
    forward = _Forward()
    head.add_module(TOKEN_POOLER, attention_pooler(model.config.hidden_size))
    if roformer is not None:
        roformer.register_forward_pre_hook(_remember_mask(forward), with_kwargs=True)
        head.register_forward_pre_hook(_attention_before_head(forward, states_from_args=True))
        return
    if getattr(bert, "pooler", None) is None:
        raise ValueError("classifier_pooling='attention' needs BERT's pooler slot to read the token states")
    bert.pooler = _stash_states_class()(forward)
    bert.register_forward_pre_hook(_remember_mask(forward), with_kwargs=True)
    head.register_forward_pre_hook(_attention_before_head(forward, states_from_args=False))


def _restore_saved_pooler(head: Any, checkpoint_dir: Any) -> None:
    # A whole classifier saved with its trained pooler (a merged export, a fully fine-tuned model):
    # transformers drops the weights it does not know on load, so they are read back here.
    from pathlib import Path

    from safetensors import safe_open

    prefix = f"classifier.{TOKEN_POOLER}."
    saved = {}
    for file in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            names = handle.keys()  # safe_open is not iterable: the key list is asked for
            saved.update({k[len(prefix) :]: handle.get_tensor(k) for k in names if k.startswith(prefix)})
    if saved:
        getattr(head, TOKEN_POOLER).load_state_dict(saved)


def apply_classifier_pooling(model: Any, checkpoint_dir: Any = None) -> str:
    """Give a BERT-like sequence classifier the pooling its config asks for; returns that pooling.

    Call right after ``from_pretrained`` (before PEFT wraps the model). ``"cls"`` leaves the model
    untouched. BERT (an encoder under ``model.bert`` with a pooler): the pooler is replaced.
    RoFormer (``model.roformer``, a head that reads the first token): the head is handed the pooled
    vector in the first token's place, so its dense + out_proj layers (trained with the classifier)
    read the pooling. ``"attention"`` adds its (zero-initialised) weights to the head as
    ``classifier.token_pooler`` (BERT: the pooler slot only hands the token states over, and the
    head's input is the weighted pooling, so BERT's dropout before the head is skipped). Other models
    are refused rather than silently read through ``[CLS]``. ``checkpoint_dir`` (the folder the model
    was loaded from) gives back a trained attention pooler saved with a whole classifier.
    """
    mode = classifier_pooling(model.config)
    if mode == "cls":
        return mode
    bert = getattr(model, "bert", None)
    roformer = getattr(model, "roformer", None)
    if mode == "attention":
        _apply_attention_pooling(model, bert, roformer)
        if checkpoint_dir is not None:
            _restore_saved_pooler(model.classifier, checkpoint_dir)
        return mode
    pooler = _token_pooler_class()(mode)
    if bert is not None and getattr(bert, "pooler", None) is not None:
        bert.pooler = pooler
        bert.register_forward_pre_hook(_remember_mask(pooler), with_kwargs=True)
    elif roformer is not None and getattr(model, "classifier", None) is not None:
        roformer.register_forward_pre_hook(_remember_mask(pooler), with_kwargs=True)
        model.classifier.register_forward_pre_hook(_pool_before_head(pooler))
    else:
        raise ValueError(f"classifier_pooling={mode!r} needs a BERT-like classifier, not {type(model).__name__}")
    return mode
