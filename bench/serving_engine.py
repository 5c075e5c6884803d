"""Serving engine: N requests on N different LoRA adapters, batched by the engine vs PEFT one request at a time.

Issue 12. A random Llama (default: hidden 256, 4 layers, vocab 4096; speed does not
depend on the weight values) gets ``--adapters`` random LoRA adapters of mixed ranks
(8/16/32 in turn) on every attention and MLP projection. Measured in one process,
interleaved over repeats, all greedy with exactly ``--new`` new tokens per request
(the model has no eos):

* **peft** — the baseline: one PeftModel holding every adapter; per request
  ``set_adapter`` + ``generate`` (what the playground's pool does, one pane after another);
* **engine** — ``ServingEngine.generate`` on all requests at once, each row on its adapter;
* **engine_base** — the engine on the same prompts with no adapter (the LoRA cost of the
  engine: users report LoRA serving 30-50 % slower than the base, spec §8);
* **hf_base_batch** — transformers' ``generate`` on the bare base, the same prompts as one
  left-padded batch (what batching alone buys).

Reported: median seconds, generated tokens/s, the speedup engine vs peft and the slowdown
engine vs engine_base, and whether the engine's tokens equal PEFT's for every request.

    python bench/serving_engine.py                       # 8 adapters, 32+32 tokens, 3 repeats, 1 thread
    python bench/serving_engine.py --hidden 576 --layers 8 --repeats 2

Writes bench/results/serving_engine.json and prints a table.
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

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANKS = [8, 16, 32]


def build(args: argparse.Namespace, root: Path) -> tuple[Path, list[Path]]:
    """A random base model directory and ``args.adapters`` random LoRA adapters saved by PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 192),
        max_position_embeddings=2048,
        bos_token_id=None,
        eos_token_id=None,  # no early stop: every request generates exactly --new tokens
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    adapters = []
    for i in range(args.adapters):
        model = load(root / "base")
        torch.manual_seed(i + 1)
        rank = RANKS[i % len(RANKS)]
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
        get_peft_model(model, lora).save_pretrained(root / f"adapter{i}")
        adapters.append(root / f"adapter{i}")
    return root / "base", adapters


def load(path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import PeftModel

    from studio.serving.engine import EngineRequest, ServingEngine

    with tempfile.TemporaryDirectory() as tmp:
        base_dir, adapters = build(args, Path(tmp))
        generator = torch.Generator().manual_seed(0)
        # Prompt lengths vary (half to full --prompt) so padding is part of what is measured.
        prompts = [
            torch.randint(
                1, args.vocab, (args.prompt // 2 + (i * args.prompt) // (2 * len(adapters)),), generator=generator
            ).tolist()
            for i in range(len(adapters))
        ]
        peft = PeftModel.from_pretrained(load(base_dir), adapters[0], adapter_name="a0")
        for i, path in enumerate(adapters[1:], start=1):
            peft.load_adapter(path, adapter_name=f"a{i}")
        peft.eval()
        bare = load(base_dir)
        engine = ServingEngine(load(base_dir), slots=len(adapters), max_batch=len(adapters))
        engine_base = ServingEngine(load(base_dir), slots=1, max_batch=len(adapters))
        requests = [
            EngineRequest(prompt_ids=p, adapter=str(a), temperature=0, max_new_tokens=args.new)
            for p, a in zip(prompts, adapters, strict=True)
        ]
        base_requests = [r.model_copy(update={"adapter": None}) for r in requests]

        def peft_sequential() -> list[list[int]]:
            tokens = []
            for i, prompt in enumerate(prompts):
                peft.set_adapter(f"a{i}")
                ids = torch.tensor([prompt])
                out = peft.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=args.new
                )
                tokens.append(out[0, len(prompt) :].tolist())
            return tokens

        def hf_base_batch() -> None:
            width = max(map(len, prompts))
            ids = torch.zeros(len(prompts), width, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(prompts):
                ids[i, width - len(p) :] = torch.tensor(p)
                mask[i, width - len(p) :] = 1
            bare.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=args.new)

        contenders = {
            "peft": peft_sequential,
            "engine": lambda: [r.token_ids for r in engine.generate(requests)],
            "engine_base": lambda: engine_base.generate(base_requests),
            "hf_base_batch": hf_base_batch,
        }
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        outputs: dict[str, Any] = {}
        with torch.inference_mode():
            for name, fn in contenders.items():  # warm-up: adapters read and paged in, first-call costs paid
                outputs[name] = fn()
            for _ in range(args.repeats):
                for name, fn in contenders.items():
                    start = time.perf_counter()
                    fn()
                    seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    tokens = len(prompts) * args.new
    same = [a == b for a, b in zip(outputs["engine"], outputs["peft"], strict=True)]
    return {
        "config": vars(args) | {"ranks": [RANKS[i % len(RANKS)] for i in range(args.adapters)]},
        "machine": machine_info(),
        "median_seconds": median,
        "seconds": seconds,
        "tokens_per_s": {name: tokens / s for name, s in median.items()},
        "speedup_engine_vs_peft": median["peft"] / median["engine"],
        "slowdown_engine_vs_engine_base": median["engine"] / median["engine_base"],
        "requests_with_tokens_equal_to_peft": sum(same),
        "requests": len(same),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (a multiple of 64)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--adapters", type=int, default=8, help="requests, one adapter each")
    parser.add_argument("--prompt", type=int, default=32, help="longest prompt, tokens")
    parser.add_argument("--new", type=int, default=32, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serving_engine.json")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    prepare_env(threads=args.threads)
    out_path = args.out
    del args.out
    result = run(args)
    write_json(out_path, result)
    rows = [
        [name, f"{result['median_seconds'][name]:.3f}", f"{result['tokens_per_s'][name]:.1f}"]
        for name in result["median_seconds"]
    ]
    print(text_table(["contender", "median s", "new tokens/s"], rows))
    print(
        f"engine vs peft {result['speedup_engine_vs_peft']:.2f}x faster, engine vs its bare base "
        f"{result['slowdown_engine_vs_engine_base']:.2f}x the time, tokens equal to PEFT for "
        f"{result['requests_with_tokens_equal_to_peft']}/{result['requests']} requests -> {out_path}"
    )
    return result


if __name__ == "__main__":
    main()
