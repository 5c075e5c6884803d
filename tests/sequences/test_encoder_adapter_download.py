"""A LoRA classifier on an encoder pre-trained in the studio downloads WITH that encoder (base_model/),
and loads elsewhere with plain transformers + PEFT from the unzipped files alone, giving the logits
the studio's own evaluation model gives; a too-large encoder is not copied and the README says so."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from studio.jobs.handlers import get_handler
from studio.progress import MemoryReporter
from studio.schema import TrainingHyperParams, TrainRequest

WINDOW = 34  # [CLS] + 32 3-mers + [SEP]
NAME = "lnc-bert"
# Shorter than a window, of different lengths: one window each, padded in a batch.
PROBES = ["ACGTTGCAACGTAGCTAGGATCCA", "TTGACCATGCAAGTCGATCGATCGGATCAAC", "GATTACAGATTACAGATTACAGATTACAGA"]


def pretrained_encoder(studio, pooling: str) -> Path:
    """A tiny 3-mer BERT saved and registered exactly where and how the pretrain job leaves one."""
    from studio.models.base_models import pretrained_model_path, register_pretrained_model
    from studio.sequences.pretrain import build_encoder
    from studio.sequences.tokenizers import build_tokenizer

    out = pretrained_model_path(studio.settings, NAME)
    tokenizer = build_tokenizer("kmer", 3, model_max_length=WINDOW)
    model = build_encoder(tokenizer, 16, 1, 2, WINDOW, seed=0, pooling=pooling)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "pretraining.json").write_text(json.dumps({"steps": 0}))
    register_pretrained_model(studio.registry, NAME, out, "tiny test encoder")
    return out


def trained_adapter(studio, tmp_path) -> object:
    """A LoRA classifier trained for 3 steps on the registered encoder by the real train handler."""
    rng = random.Random(0)
    rows = [
        {"text": "".join(rng.choice("ACGT") for _ in range(rng.randint(40, 90))), "label": i % 2} for i in range(16)
    ]
    path = tmp_path / "dna.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = studio.datasets.add(path)
    train = TrainRequest(
        dataset_id=dataset.id,
        base_model=NAME,
        task="classification",
        variant="lora",
        hyper=TrainingHyperParams(
            max_steps=3, batch_size=4, learning_rate=5e-2, validation_fraction=0.0, eval_every=1000, log_every=1
        ),
    )
    summary = get_handler("train")(train, MemoryReporter(), studio.ctx(train))
    return studio.registry.get_adapter(summary["adapter_id"])


def unzip(archive: Path, into: Path) -> Path:
    """Unzip into an empty folder; the one top-level folder of the archive."""
    into.mkdir()
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(into)
    (top,) = list(into.iterdir())
    return top


def python_blocks(readme: str, after: str) -> str:
    """The first ```python block that follows the line ``after``."""
    tail = readme.split(after, 1)[1]
    return re.search(r"```python\n(.*?)```", tail, re.S).group(1)


def check_sums(folder: Path) -> set[str]:
    """Verify SHA256SUMS as `sha256sum -c` would; the relative paths it lists."""
    listed = set()
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, relative = line.split("  ", 1)
        assert hashlib.sha256((folder / relative).read_bytes()).hexdigest() == digest, relative
        listed.add(relative)
    return listed


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["cls", "mean", "attention"])
def test_download_ships_the_encoder_and_loads_elsewhere_with_the_studio_logits(studio, tmp_path, pooling):
    from app.tab_adapters import adapter_download
    from studio.evaluation.loading import load_adapter
    from studio.sequences.tokenizers import encode_sequences

    encoder = pretrained_encoder(studio, pooling)
    adapter = trained_adapter(studio, tmp_path)
    assert adapter.base_model == NAME

    class Services:  # what the Adapters tab's handler reads
        adapters = studio.adapters

    shown = adapter_download(Services(), adapter.id)
    archive = Path(shown["zip_btn"]["value"])
    folder = unzip(archive, tmp_path / "elsewhere")

    # the encoder's files as saved, next to the adapter's, every one of them in SHA256SUMS
    saved = {p.name for p in encoder.iterdir() if p.is_file()}
    assert saved >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert {p.name for p in (folder / "base_model").iterdir()} == saved
    assert (folder / "base_model" / "model.safetensors").read_bytes() == (encoder / "model.safetensors").read_bytes()
    listed = check_sums(folder)
    assert {f"base_model/{n}" for n in saved} <= listed
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "labels.json"} <= listed

    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "base_model"
    readme = (folder / "README.md").read_text()
    assert f'from_pretrained("{folder.name}/base_model"' in readme
    assert f'from_pretrained("{NAME}"' not in readme and "(Hugging Face hub id)" not in readme
    assert "ships inside this download in `base_model/`" in readme
    assert str(studio.settings.data_dir) not in readme

    # Elsewhere: the README's own recipes, run in a fresh Python from the unzipped folder's parent.
    script = "\n".join(
        [
            python_blocks(readme, "With PEFT:"),
            python_blocks(readme, "### Reading sequences"),
            f"probes = {PROBES!r}",
            'batch = tokenizer([prepare(s) for s in probes], return_tensors="pt", padding=True)',
            "with torch.no_grad():",
            "    out = classify(model.eval(), batch)" if pooling != "cls" else "    out = model.eval()(**batch).logits",
            'json.dump({"ids": batch["input_ids"].tolist(), "logits": out.tolist()}, open("result.json", "w"))',
        ]
    )
    if pooling != "cls":
        assert f"classifier_pooling='{pooling}'" in readme and "def classify" in readme
    if pooling == "attention":  # trained weights, so logits match only if classify reads them from the file
        from safetensors.torch import load_file

        saved = load_file(str(folder / "adapter_model.safetensors"))
        (weigher,) = [v for k, v in saved.items() if k.endswith("token_pooler.weigher.weight")]
        assert weigher.abs().sum() > 0
    run = subprocess.run([sys.executable, "-c", script], cwd=folder.parent, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    elsewhere = json.loads((folder.parent / "result.json").read_text())

    # The studio's evaluation model (server adapter dir + registered base) on the same windows.
    labels = json.loads((Path(adapter.path) / "labels.json").read_text())  # as the eval job passes them
    evaluated = load_adapter(adapter, studio.settings, "cpu", labels, lambda _: None)
    batch = encode_sequences(evaluated.tokenizer, PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = evaluated.model(**batch).logits
    assert elsewhere["ids"] == batch["input_ids"].tolist()  # the README's prepare() = the studio's windows
    got = torch.tensor(elsewhere["logits"])
    assert got.shape == expected.shape == (len(PROBES), 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # The head is not the untrained one: the classifier's logits differ between the probes.
    assert not torch.allclose(expected[0], expected[1])


@pytest.mark.slow
def test_a_too_large_encoder_is_not_copied_and_the_readme_says_where_it_comes_from(studio, tmp_path, monkeypatch):
    import studio.services.downloads as downloads

    pretrained_encoder(studio, "cls")
    adapter = trained_adapter(studio, tmp_path)
    monkeypatch.setattr(downloads, "MAX_SHIPPED_BYTES", 1024)  # the tiny encoder is larger than this

    folder = unzip(studio.adapters.zip(adapter.id), tmp_path / "elsewhere")
    assert not (folder / "base_model").exists()
    assert not any(rel.startswith("base_model/") for rel in check_sums(folder))
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "base_model"
    readme = (folder / "README.md").read_text()
    assert "pre-trained on the Adapter Studio server this adapter comes from" in readme
    assert f"`{NAME}`" in readme and "too large to ship" in readme and f"models/pretrained/{NAME}" in readme
    assert f'from_pretrained("{NAME}"' not in readme and "(Hugging Face hub id)" not in readme

    # the CLI's export: the same naming, and the encoder copied when it is small enough
    monkeypatch.setattr(downloads, "MAX_SHIPPED_BYTES", 500 * 1024 * 1024)
    out = tmp_path / "export"
    studio.adapters.export(adapter.id, out)
    assert (out / "base_model" / "model.safetensors").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "base_model"
    assert 'from_pretrained("export/base_model"' in (out / "README.md").read_text()


def test_a_registered_local_base_is_named_as_before(studio, tmp_path):
    """Only the registry's "pretrained" rows change: a hub-like name the registry does not know stays a hub id."""
    from studio.services.downloads import PortableBase

    assert PortableBase.for_download("org/some-model", studio.registry) == PortableBase.of("org/some-model")
    studio.registry.upsert_base_model(NAME, "hub", NAME, "encoder")
    assert PortableBase.for_download(NAME, studio.registry).portable_id == NAME
