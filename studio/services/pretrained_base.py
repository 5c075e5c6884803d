"""A download's base when it is an encoder pre-trained on this studio (a ``pretrain`` job), not a hub model.

Such an encoder exists only in ``<models_dir>/pretrained/<name>/`` of this server, so no hub id
can name it. When its folder is small (:data:`MAX_SHIPPED_BYTES`; these encoders are usually
well under a megabyte) a download carries it in :data:`BASE_DIR` next to the adapter files, and
``adapter_config.json`` names that folder; a larger one is not copied, and the README says where
it comes from. The README also says how the studio reads sequences with it (k-mers, codons,
the classifier's pooling), which plain transformers does not know from the files alone.
"""

from __future__ import annotations

import json
from pathlib import Path

BASE_DIR = "base_model"  # the folder of a download that holds the encoder; also its base_model_name_or_path
MAX_SHIPPED_BYTES = 500 * 1024 * 1024


def folder_bytes(path: Path) -> int:
    """The total size of the files under ``path`` (0 when it is missing)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def encoder_files(encoder_dir: Path) -> dict[str, Path]:
    """The encoder's files as saved (config, weights, tokenizer, pretraining.json), by their path in a download.

    Hidden entries are left out: a pre-train job writes its folder under a hidden temporary name first.
    """
    return {
        f"{BASE_DIR}/{path.relative_to(encoder_dir).as_posix()}": path
        for path in sorted(encoder_dir.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(encoder_dir).parts)
    }


def pretrained_note(name: str, shipped: bool, size_bytes: int) -> str:
    """What the README says about the base: it ships inside, or where to get it; never a hub id."""
    origin = (
        f"the encoder `{name}`, pre-trained on the Adapter Studio server this adapter comes from; it is not a "
        "Hugging Face hub model"
    )
    if shipped:
        return (
            f"{origin}, so it ships inside this download in `{BASE_DIR}/` (its config, weights and tokenizer as the "
            f"studio saved them). `adapter_config.json` names it `{BASE_DIR}`, relative to this folder: tools that "
            "load the base from that field (`AutoPeftModel...`, transformers' `from_pretrained` of the adapter "
            "folder) find it when run from inside this folder; the recipes below give its path explicitly."
        )
    return (
        f"{origin}, and at {size_bytes / 1024**2:,.0f} MB it is too large to ship in this download "
        f"(the limit is {MAX_SHIPPED_BYTES // 1024**2} MB). The studio offers no download of base models: copy the "
        f"folder `models/pretrained/{name}` of that studio's data directory into `{BASE_DIR}/` next to these files, "
        "then load it as below."
    )


def sequence_reading_lines(encoder_dir: Path | None, folder: str, window_pooling: str = "mean") -> list[str]:
    """README lines on how the studio feeds sequences to the encoder and pools its classifier's input.

    ``window_pooling`` is how the adapter's evaluation combines a long sequence's windows (mean, max or sum).
    """
    if encoder_dir is None or not (encoder_dir / "config.json").is_file():
        return []
    config = json.loads((encoder_dir / "config.json").read_text())
    tokenizer_path = encoder_dir / "tokenizer_config.json"
    tok = json.loads(tokenizer_path.read_text()) if tokenizer_path.is_file() else {}
    k, frames = int(tok.get("kmer") or 1), int(tok.get("reading_frames") or 1)
    window = config.get("max_position_embeddings")
    lines = ["### Reading sequences", ""]
    if frames > 1:
        text = "codons separated by spaces, one text per reading frame (offsets 0, 1, 2)"
        prepare = (
            'def prepare(seq, frame=0):\n    return " ".join(seq[i : i + 3] for i in range(frame, len(seq) - 2, 3))'
        )
    elif k > 1:
        text = f"its overlapping {k}-mers separated by spaces"
        prepare = f'def prepare(seq, k={k}):\n    return " ".join(seq[i : i + k] for i in range(len(seq) - k + 1))'
    else:
        text = "the sequence itself, one token per letter"
        prepare = "def prepare(seq):\n    return seq"
    lines += [
        f"The tokenizer reads a sequence as {text}. Sequences longer than "
        f"the encoder's {window} positions were read by the studio as overlapping windows, and a sequence's "
        f"logits are the {window_pooling} of its windows' logits (see `reproducibility.json` for the window settings).",
        "",
        "```python",
        "import torch",
        "from transformers import AutoTokenizer",
        "",
        prepare,
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{folder}/{BASE_DIR}")',
    ]
    pooling = config.get("classifier_pooling") or "cls"
    if pooling == "cls":
        lines += [
            'batch = tokenizer([prepare("ACGTACGTTGCA")], return_tensors="pt", padding=True)',
            "with torch.no_grad():",
            "    logits = model.eval()(**batch).logits",
            "```",
            "",
        ]
        return lines
    head_input = "pooled.unsqueeze(1)" if config.get("model_type") == "roformer" else "pooled"
    lines += ["", *_pooling_lines(pooling, folder), f"    return model.classifier({head_input})", ""]
    lines += [
        "",
        'batch = tokenizer([prepare("ACGTACGTTGCA")], return_tensors="pt", padding=True)',
        "with torch.no_grad():",
        "    logits = classify(model.eval(), batch)",
        "```",
        "",
        f"This encoder's `config.json` asks for `classifier_pooling={pooling!r}`, which transformers does not "
        "implement: `model(**batch).logits` would read the [CLS] token through an untrained pooler. Use "
        "`classify` as above.",
        "",
    ]
    if pooling == "attention":
        lines += [
            "The attention pooling's weights (`token_pooler.weigher`) are saved with the head in "
            "`adapter_model.safetensors`; PEFT does not know them (it may warn that they were not used), so "
            "`classify` reads them from the file.",
            "",
        ]
    return lines


def _pooling_lines(pooling: str, folder: str) -> list[str]:
    """The README's ``classify`` up to its last line: the window's token states pooled into ``pooled``."""
    head = [
        f"def classify(model, batch):  # the studio's classifier reads the {pooling} of the window's token states",
        "    states = model(**batch, output_hidden_states=True).hidden_states[-1]",
    ]
    if pooling == "attention":
        return [
            "from safetensors.torch import load_file",
            "",
            f'saved = load_file("{folder}/adapter_model.safetensors")',
            'weigher = {k.rsplit(".", 1)[1]: v for k, v in saved.items() if ".token_pooler.weigher." in k}',
            "",
            "",
            *head,
            '    scores = (states @ weigher["weight"].T + weigher["bias"]).squeeze(-1)',
            '    scores = scores.masked_fill(batch["attention_mask"] == 0, torch.finfo(states.dtype).min)',
            "    pooled = (torch.softmax(scores, 1).unsqueeze(-1) * states).sum(1)",
        ]
    reduce = (
        "(states * keep).sum(1) / keep.sum(1).clamp(min=1.0)"
        if pooling == "mean"
        else "states.masked_fill(keep == 0, torch.finfo(states.dtype).min).max(1).values"
    )
    return [*head, '    keep = batch["attention_mask"].unsqueeze(-1).to(states.dtype)', f"    pooled = {reduce}"]
