"""A federated client's local round under DP-SGD (issue #14 §3, spec composition.md §4).

The plain client trains with :func:`studio.training.loop.run_training`; a private one cannot,
since every step must be Poisson-sampled, clipped per row and noised. It builds the same LoRA
(rank, alpha, targets; FFA-LoRA: the server's seeded A, frozen) on a fresh copy of the base,
loads the global state with the same ``init`` hook, and drives :func:`studio.privacy.dp_sgd.make_dp_trainer`
for the round's local steps. The client's :class:`~studio.privacy.accounting.PrivacyLedger` is
passed in and kept by the caller across rounds, so the ε it reports covers every step its rows
were used in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from studio.federated.flower_app import Factors, LocalUpdate
from studio.federated.planning import client_sample_rate
from studio.privacy.accounting import PrivacyLedger


def dp_local_round(
    params: Any,
    *,
    rows: list[dict[str, Any]],
    base_path: Path,
    targets: list[str],
    init: Callable[[Any], None],
    ledger: PrivacyLedger,
    seed: int,
) -> LocalUpdate:
    """``params.local_steps`` DP-SGD steps on ``rows`` from the global state ``init`` loads; ε in ``extra``."""
    from peft import LoraConfig, get_peft_model

    from studio.privacy.dp_sgd import make_dp_trainer
    from studio.training.models import load_base_model, load_tokenizer_for
    from studio.training.tokenise import encode_rows
    from studio.variants.ffa_lora import frozen_a
    from studio.variants.peft_common import tuner_layers

    privacy = params.privacy
    tokenizer = load_tokenizer_for(base_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    torch.manual_seed(seed)
    model = load_base_model(base_path, "causal-lm", None, pad_id)
    config = LoraConfig(r=params.r, lora_alpha=params.lora_alpha, lora_dropout=0.0, target_modules=targets)
    model = get_peft_model(model, config)
    layers = tuner_layers(model)
    if params.method == "ffa":  # the server's A, never trained: only B gets per-sample gradients and noise
        with torch.no_grad():
            for name, layer in layers.items():
                weight = layer.lora_A["default"].weight
                weight.copy_(frozen_a(name, weight.shape[0], weight.shape[1], params.a_seed))
                weight.requires_grad_(False)
    init(model)
    model.train()
    examples = encode_rows(rows, tokenizer, task="causal-lm", max_length=params.max_length).examples
    trainable = [p for p in model.parameters() if p.requires_grad]
    # AdamW as the plain client's run_training uses; DP-SGD only fixes what the gradient is (spec §4).
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=0.0)
    trainer = make_dp_trainer(
        model,
        optimizer,
        examples,
        pad_id=pad_id,
        noise_multiplier=float(privacy.noise_multiplier),
        max_grad_norm=privacy.max_grad_norm,
        sample_rate=client_sample_rate(privacy, params.batch_size, len(rows)),  # as planned
        target_epsilon=privacy.target_epsilon,
        delta=privacy.delta,
        seed=seed,  # a simulation is reproducible; a real site would pass None (OS entropy)
        ledger=ledger,
    )
    steps = trainer.run(params.local_steps)
    losses = [s.loss for s in steps if s.loss is not None]
    factors: Factors = {}
    for name, layer in layers.items():
        a = layer.lora_A["default"].weight.detach().cpu().clone()
        b = layer.lora_B["default"].weight.detach().cpu().clone()
        factors[name] = (None if params.method == "ffa" else a, b)
    loss = sum(losses) / len(losses) if losses else math.nan  # nan: no step sampled a row (tiny q)
    return LocalUpdate(factors, len(rows), loss, extra={"epsilon": trainer.epsilon()})
