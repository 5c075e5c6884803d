"""LoRAPrune: forward time of the physically pruned model against the masked models, measured in the same run.

Issue 11, item 6. A Llama with SmolLM2-135M's geometry (hidden 576, 30 layers, 9 query /
3 KV heads, 1536 MLP channels; random weights — speed does not depend on their values) gets
the LoRAPrune variant with a random LoRA; the variant's own pruning round (``prune`` on random
importance) brings every prunable layer to exactly ``--sparsity`` (the first int(0.1·L) layers
and the last stay whole, as in training). Then, in one process, interleaved over repeats:

* **masked** — the training-time model: frozen base + LoRA + output masks (studio wrappers);
* **dense** — the merged dense model with the pruned rows zeroed (``merged/``, what the
  studio offered before): same size as the base;
* **pruned** — ``save_pruned_model`` written to disk and loaded back with
  ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``.

Reported: parameters of each, median forward seconds, the ratios pruned/dense and
pruned/masked (< 1 = faster), and the largest logit difference pruned vs masked.

    python bench/loraprune_pruned.py                  # batch 2 x 128 tokens, 5 repeats, 1 thread
    python bench/loraprune_pruned.py --layers 8 --repeats 3

Writes bench/results/loraprune_pruned.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS_DIR, add_threads_argument, machine_info, prepare_env, text_table, write_json  # noqa: E402


def llama(args: argparse.Namespace, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=args.layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2048,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()


def masked_variant(args: argparse.Namespace) -> tuple[Any, Any]:
    """The LoRAPrune variant on the model, with a random LoRA and masks at exactly the target sparsity."""
    import torch

    from studio.variants.base import BuildContext
    from studio.variants.loraprune import LoraPrune, LoraPruneParams
    from studio.variants.targets import default_target_modules

    variant = LoraPrune(LoraPruneParams(target_sparsity=args.sparsity, lora_dropout=0.0))
    model = llama(args)
    ctx = BuildContext(
        model=model,
        tokenizer=None,
        task="causal-lm",
        target_modules=default_target_modules(model),
        modules_to_save=[],
        calibration_batches=lambda n: iter(()),
        total_steps=1,
        seed=0,
        device=torch.device("cpu"),
        learning_rate=1e-3,
        warmup_steps=0,
        weight_decay=0.0,
        work_dir=None,
    )
    model = variant.build(ctx)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in variant.layers.values():
            if layer.r > 0:
                layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.01)
        for key in variant.ema:  # random importance; the variant's own round picks the groups
            variant.ema[key] = torch.rand(variant.ema[key].shape, generator=generator)
    variant.prune(args.sparsity)
    return variant, model.eval()


def forward_seconds(model: Any, ids: Any) -> float:
    import torch

    with torch.no_grad():
        start = time.perf_counter()
        model(input_ids=ids)
        return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from studio.variants import _loraprune_masks as lp
    from studio.variants._loraprune_pruned import save_pruned_model
    from studio.variants.base import ExportContext

    variant, masked = masked_variant(args)
    ectx = ExportContext(fresh_base=lambda: llama(args), task="causal-lm", modules_to_save=[])
    dense = variant.dense_merged(masked, ectx).eval()
    lp.zero_pruned_rows(dense, variant.row_masks())
    with tempfile.TemporaryDirectory() as tmp:
        layout = save_pruned_model(variant.dense_merged(masked, ectx), variant.row_masks(), Path(tmp), "causal-lm")
        pruned = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=True).eval()
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(2))
    models = {"masked": masked, "dense": dense, "pruned": pruned}
    with torch.no_grad():
        diff = float((pruned(input_ids=ids).logits - masked(input_ids=ids).logits).abs().max())
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():  # warm-up
        forward_seconds(model, ids)
    for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits all three
        for name, model in models.items():
            times[name].append(forward_seconds(model, ids))
    median = {name: statistics.median(values) for name, values in times.items()}
    params = {
        "masked": sum(p.numel() for n, p in masked.named_parameters() if "lora_" not in n),
        "dense": sum(p.numel() for p in dense.parameters()),
        "pruned": sum(p.numel() for p in pruned.parameters()),
    }
    return {
        "config": vars(args),
        "machine": machine_info(),
        "widths": layout.widths(),
        "params": params,
        "forward_seconds": times,
        "median_seconds": median,
        "ratio_pruned_vs_dense": median["pruned"] / median["dense"],
        "ratio_pruned_vs_masked": median["pruned"] / median["masked"],
        "params_ratio_pruned_vs_dense": params["pruned"] / params["dense"],
        "max_abs_logit_diff_pruned_vs_masked": diff,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "loraprune_pruned.json")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    prepare_env(threads=args.threads)
    out_path = args.out
    del args.out
    result = run(args)
    write_json(out_path, result)
    rows = [
        [name, f"{result['params'][name]:,}", f"{result['median_seconds'][name]:.3f}"]
        for name in ("masked", "dense", "pruned")
    ]
    print(text_table(["model", "params", "median forward s"], rows))
    print(
        f"pruned/dense time {result['ratio_pruned_vs_dense']:.3f}, pruned/masked time "
        f"{result['ratio_pruned_vs_masked']:.3f}, params {result['params_ratio_pruned_vs_dense']:.3f}, "
        f"max |Δlogit| {result['max_abs_logit_diff_pruned_vs_masked']:.2e} -> {out_path}"
    )
    return result


if __name__ == "__main__":
    main()
