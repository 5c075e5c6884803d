"""The model card's "how to load it elsewhere" section: PEFT, transformers' ``load_adapter`` and vLLM.

Written into every adapter's README at save time and again (with the folder's real name)
into every downloaded archive, so that a file taken off the server says how to use it with
the base's portable id, never with a path of the server.
"""

from __future__ import annotations

HEADING = "## Loading with PEFT, transformers or vLLM"
# vLLM's --max-lora-rank accepts these values only (its default is 16).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(max_rank: int) -> int | None:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds ``max_rank``; None above vLLM's limit."""
    return next((r for r in VLLM_LORA_RANKS if r >= max(max_rank, 1)), None)


def loading_section(
    base_id: str,
    task: str,
    folder: str = "path/to/adapter",
    *,
    max_rank: int = 0,
    plain_lora: bool = True,
    base_note: str | None = None,
    caveat: str | None = None,
) -> list[str]:
    """Lines of the three loading recipes for an adapter of ``base_id`` stored in ``folder``.

    ``task`` is ``causal-lm`` or ``classification`` (classifiers load on a sequence-classification
    head, with the labels of ``labels.json``). vLLM serves plain LoRA adapters of causal LMs only;
    otherwise the section says what to do instead. ``base_note`` explains a base that is not a hub
    id (a user's own directory); ``caveat`` is a variant's warning about these generic recipes.
    """
    classifier = task == "classification"
    auto = "AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM"
    # A classifier's head size and label names travel in labels.json.
    load_base = (
        f'base = {auto}.from_pretrained("{base_id}", num_labels=len(labels), id2label=dict(enumerate(labels)))'
        if classifier
        else f'base = {auto}.from_pretrained("{base_id}")'
    )
    read_labels = [f'labels = json.load(open("{folder}/labels.json"))'] if classifier else []
    imports = ["import json"] if classifier else []
    lines = [
        HEADING,
        "",
        f"Base model: `{base_id}`" + (f" — {base_note}" if base_note else " (Hugging Face hub id)."),
        "",
    ]
    if caveat:
        lines += [caveat, ""]
    lines += [
        "With PEFT:",
        "",
        "```python",
        *imports,
        "from peft import PeftModel",
        f"from transformers import {auto}",
        "",
        *read_labels,
        load_base,
        f'model = PeftModel.from_pretrained(base, "{folder}")',
        "```",
        "",
        "With transformers alone (`load_adapter`; `peft` must be installed):",
        "",
        "```python",
        *imports,
        f"from transformers import {auto}",
        "",
        *read_labels,
        load_base.replace("base = ", "model = "),
        f'model.load_adapter("{folder}")',
        "```",
        "",
        "With vLLM:",
        "",
    ]
    return lines + _vllm_lines(base_id, folder, classifier, plain_lora, max_rank)


def _vllm_lines(base_id: str, folder: str, classifier: bool, plain_lora: bool, max_rank: int) -> list[str]:
    if classifier:
        return ["vLLM serves LoRA adapters of generative models only; load this classifier with PEFT as above.", ""]
    if not plain_lora:
        return [
            "vLLM loads plain LoRA adapters only: export this one as a plain LoRA first "
            "(`studio export ID --out DIR --as-lora-rank R`), then serve that folder as shown here.",
            "",
        ]
    name = folder.rstrip("/").rsplit("/", 1)[-1] or "adapter"
    rank = vllm_max_lora_rank(max_rank)
    rank_flag = f" --max-lora-rank {rank}" if rank and rank > 16 else ""
    lines = [
        "```bash",
        f"vllm serve {base_id} --enable-lora --lora-modules {name}={folder}{rank_flag}",
        "```",
        "",
        f'Then ask for `"model": "{name}"` in the OpenAI-compatible requests.',
        "",
    ]
    if rank is None:
        lines += [f"Its rank {max_rank} is above vLLM's largest `--max-lora-rank` (512): export it lower first.", ""]
    return lines
