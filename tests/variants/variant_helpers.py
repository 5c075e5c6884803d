"""Shared set-up of the hand-written variant tests: a tiny random Llama, token batches, a BuildContext, engine steps.

Each test file used to carry its own copy of these; the copies only differed in defaults, which
stay with the callers (each file binds its own seed, total steps, weight decay, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from studio.variants.base import BuildContext, ExportContext, OptimConfig, Optimization, default_optimization
from studio.variants.targets import default_target_modules


def tiny_llama(seed: int = 0, *, task: str = "causal-lm", layers: int = 2, num_labels: int = 2):
    """A random 2-layer Llama (hidden 32, vocab 64, grouped-query attention), fp32, in train mode.

    ``task`` "classification" gives a sequence-classification head with ``num_labels`` classes
    (``num_labels`` 2 is transformers' default, so causal-LM configs are unchanged by it).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: 2 query heads per KV head
        max_position_embeddings=64,
        pad_token_id=0,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    cls = LlamaForSequenceClassification if task == "classification" else LlamaForCausalLM
    return cls(config).float().train()


def token_batches(count: int, size: int = 2, length: int = 8, seed: int = 1, classes: int = 0) -> list[dict]:
    """``count`` batches of random token ids (1..63) from a seeded generator.

    Labels are the ids themselves (causal LM), or with ``classes`` one random class per row,
    drawn after that batch's ids.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(1, 64, (size, length), generator=g)
        labels = torch.randint(0, classes, (size,), generator=g) if classes else ids.clone()
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def make_ctx(
    model: Any,
    *,
    task: str = "causal-lm",
    targets: list[str] | None = None,
    heads: Sequence[str] = (),
    calibration: Sequence[dict] = (),
    total_steps: int = 10,
    seed: int = 0,
    lr: float = 1e-2,
    warmup: int = 0,
    weight_decay: float = 0.0,
    log: Callable[[str], None] = print,
) -> BuildContext:
    """A CPU BuildContext over ``model`` (default target modules unless ``targets``; no tokenizer, no work dir).

    ``calibration`` are the batches ``calibration_batches(n)`` yields (its first ``n``), ``heads``
    the trained task heads (``modules_to_save``).
    """
    return BuildContext(
        model=model,
        tokenizer=None,
        task=task,
        target_modules=targets or default_target_modules(model),
        modules_to_save=list(heads),
        calibration_batches=lambda n: iter(calibration[:n]),
        total_steps=total_steps,
        seed=seed,
        device=torch.device("cpu"),
        learning_rate=lr,
        warmup_steps=warmup,
        weight_decay=weight_decay,
        work_dir=None,
        log=log,
    )


def build_variant(variant: Any, model: Any, seed: int = 0, **ctx: Any) -> Any:
    """``variant.build`` on ``make_ctx(model, seed=seed, **ctx)``, torch seeded with ``seed`` just before."""
    context = make_ctx(model, seed=seed, **ctx)
    torch.manual_seed(seed)
    return variant.build(context)


def optimization(variant: Any, model: Any, cfg: OptimConfig) -> Optimization:
    """The variant's own optimizers, else the engine's default (AdamW over the requires_grad tensors)."""
    return variant.configure_optimization(model, cfg) or default_optimization(
        [p for p in model.parameters() if p.requires_grad], cfg
    )


def engine_step(variant: Any, model: Any, opt: Optimization, batch: dict, step: int, max_norm: float | None = None):
    """One optimizer step in the engine's hook order (studio.training.loop._Loop._step); the task loss.

    The variant's ``extra_loss`` (None for most) is added before backward; ``max_norm`` clips the
    gradients of the trainable tensors first (None: no clipping).
    """
    variant.on_step_begin(model, step)
    loss = model(**batch).loss
    extra = variant.extra_loss(model)
    (loss if extra is None else loss + extra).backward()
    if max_norm is not None:
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    variant.on_pre_optimizer_step(model, step)
    for o in opt.optimizers:
        o.step()
    variant.on_optimizer_step(model, step)
    for s in opt.schedulers:
        s.step()
    model.zero_grad(set_to_none=True)
    return loss


def run_steps(variant: Any, model: Any, data: list[dict], steps: int, cfg: OptimConfig) -> Optimization:
    """``steps`` engine steps, one micro-batch each (``data`` in turn), clipped at the variant's threshold or 1.0."""
    opt = optimization(variant, model, cfg)
    for step in range(1, steps + 1):
        engine_step(variant, model, opt, data[(step - 1) % len(data)], step, max_norm=opt.max_grad_norm or 1.0)
    return opt


def check_universal_export(
    variant: Any,
    model: Any,
    original_state: dict,
    tmp_path: Any,
    make_base: Callable[[], Any],
    task: str = "causal-lm",
    heads: Sequence[str] = (),
) -> dict:
    """Spec §0: reload as plain PEFT LoRA on the ORIGINAL base, merge, compare W and logits; the export's ranks.

    ``make_base()`` builds the untrained base model (same architecture and head) that
    ``original_state`` is loaded into.
    """
    from peft import PeftModel

    def fresh_base():
        base = make_base()
        base.load_state_dict(original_state)
        return base.eval()

    out = tmp_path / "adapter"
    ectx = ExportContext(fresh_base=fresh_base, task=task, modules_to_save=list(heads))
    report = variant.save_adapter(model, out, ectx)
    reloaded = PeftModel.from_pretrained(fresh_base(), str(out))
    ids = torch.randint(1, 64, (2, 8), generator=torch.Generator().manual_seed(7))
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    merged = reloaded.merge_and_unload()
    deltas = variant.delta_weights(model)
    assert deltas
    for name, delta in deltas.items():
        w0 = original_state[f"{name}.weight"]
        diff = (merged.get_submodule(name).weight - (w0 + delta)).abs().max()
        assert diff <= 1e-5 * w0.abs().max(), (name, float(diff))
    return report.ranks
