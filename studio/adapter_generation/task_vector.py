"""The task vector c_t of ICM-LoRA (spec §6): what the base model "thinks" at the end of a task's examples.

c_t is the mean, over up to ~30 examples of the task, of the base model's last-layer
hidden state at each example's last (non-pad) token. Rows are rendered and tokenised
exactly as training renders them (:func:`studio.training.tokenise.encode_rows`, the
chat template for chat rows, text + EOS for plain text) with every token kept
(``loss_on="full"``, so a row is never dropped for lack of a response), and batched
with the training collator (right padding), so the last real token of row i is at
``attention_mask[i].sum() - 1``.

Examples are taken in the order given (the first ``max_examples``): the same dataset
always gives the same vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from studio.errors import ValidationFailed

DEFAULT_EXAMPLES = 30


def task_vector(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    max_examples: int = DEFAULT_EXAMPLES,
    max_length: int = 512,
    batch_size: int = 8,
) -> Any:
    """c_t (float32, shape ``(hidden_size,)``) of canonical dataset ``rows`` under ``model`` (a causal LM)."""
    import torch

    from studio.training.data import collate
    from studio.training.tokenise import encode_rows

    picked = list(rows[:max_examples])
    if not picked:
        raise ValidationFailed("a task vector needs at least one example of the task")
    examples = encode_rows(picked, tokenizer, task="causal-lm", max_length=max_length, loss_on="full").examples
    examples = [e for e in examples if e["input_ids"]]
    if not examples:
        raise ValidationFailed("none of the task's examples has any text once tokenised")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = None, 0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start : start + batch_size], pad_id)
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                last = out.hidden_states[-1]  # (batch, seq, hidden), after the final norm
                positions = mask.sum(dim=1) - 1
                picked_states = last[torch.arange(last.shape[0], device=device), positions].float().sum(dim=0)
                total = picked_states if total is None else total + picked_states
                count += last.shape[0]
    finally:
        model.train(was_training)
    return (total / count).cpu()


def task_vector_for(base_path: str | Path, rows: Sequence[dict[str, Any]], **kwargs: Any) -> Any:
    """:func:`task_vector` with the base model and tokenizer loaded from ``base_path`` (fp32, CPU)."""
    from studio.training.models import load_base_model, load_tokenizer_for

    tokenizer = load_tokenizer_for(base_path)
    model = load_base_model(base_path, "causal-lm")
    return task_vector(model, tokenizer, rows, **kwargs)
