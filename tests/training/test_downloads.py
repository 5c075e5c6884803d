"""Downloads that work elsewhere: portable base ids, the README's three loading recipes, SHA256SUMS.

A tiny LoRA is trained and registered like the train job does, zipped by AdapterService, and
the archive is checked as a stranger would use it: the config names no path of the server,
and the README's own Python recipes, run as written in a fresh offline interpreter, load it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest_training import chat_rows, cpu_device, make_request, write_jsonl

from studio.models.base_models import portable_base_id
from studio.progress import MemoryReporter
from studio.services.adapters import AdapterService
from studio.services.downloads import archive_sha256
from studio.training.job import save_trained_adapter
from studio.training.loop import run_training

SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def trained_lora(registry, settings, tiny_llama_dir, tmp_path):
    """trained_lora(base_model) -> adapter row: a 3-step LoRA of the tiny Llama, registered under ``base_model``.

    Training always uses the tiny Llama's directory, so its saved config holds that server path
    whatever the registry says the base is.
    """

    def make(base_model: str):
        from studio.training.setup import TrainingData

        data = TrainingData(path=write_jsonl(tmp_path / "d.jsonl", chat_rows(8)), sha256="d")
        request = make_request("lora", max_steps=3, learning_rate=3e-2).model_copy(update={"base_model": base_model})
        result = run_training(
            request,
            MemoryReporter(),
            settings=settings,
            device=cpu_device(),
            work_dir=tmp_path / "run",
            dataset=data,
            base_path=tiny_llama_dir,
        )
        out = settings.adapters_dir / "lora"
        saved = save_trained_adapter(result, request, out)
        return registry.add_adapter(
            name="colours",
            variant="lora",
            base_model=base_model,
            ranks=saved["ranks"],
            trainable_params=result.trainable_params,
            size_bytes=saved["size_bytes"],
            path=str(out),
            sha256=saved["sha256"],
        )

    return make


def unzip(archive: Path, into: Path) -> Path:
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(into)
    (folder,) = into.iterdir()
    return folder


def test_portable_base_ids():
    assert portable_base_id("smollm2-135m-instruct") == SMOLLM2_HUB_ID
    assert portable_base_id("all-minilm-l6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_base_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert portable_base_id("/srv/models/my-llama") == "my-llama"
    snapshot = "/root/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-360M/snapshots/0123abc"
    assert portable_base_id(snapshot) == "HuggingFaceTB/SmolLM2-360M"


def test_zip_names_the_hub_id_lists_checksums_and_says_how_to_load(trained_lora, registry, settings, tiny_llama_dir):
    row = trained_lora("smollm2-135m-instruct")
    saved_config = json.loads((Path(row.path) / "adapter_config.json").read_text())
    assert saved_config["base_model_name_or_path"] == str(tiny_llama_dir)  # what PEFT wrote on the server

    archive = AdapterService(registry, settings).zip(row.id)
    name = f"adapter-{row.id}"
    with zipfile.ZipFile(archive) as handle:
        files = {n.removeprefix(f"{name}/"): handle.read(n) for n in handle.namelist()}

    config = json.loads(files["adapter_config.json"])
    assert config["base_model_name_or_path"] == SMOLLM2_HUB_ID
    assert files["adapter_model.safetensors"] == (Path(row.path) / "adapter_model.safetensors").read_bytes()

    readme = files["README.md"].decode()
    assert f'AutoModelForCausalLM.from_pretrained("{SMOLLM2_HUB_ID}")' in readme
    assert f'PeftModel.from_pretrained(base, "{name}")' in readme
    assert f'model.load_adapter("{name}")' in readme
    assert f"vllm serve {SMOLLM2_HUB_ID} --enable-lora --lora-modules {name}={name}" in readme
    assert readme.count("## Loading") == 1  # the card's placeholder recipes were replaced, not repeated

    # No file that leaves the server names a directory of the server.
    for path, content in files.items():
        text = content.decode("utf-8", errors="ignore")
        assert str(tiny_llama_dir) not in text and str(settings.data_dir) not in text, path

    # SHA256SUMS lists every other file with its real digest; the zip's own digest is kept beside it.
    sums = dict(reversed(line.split("  ", 1)) for line in files["SHA256SUMS"].decode().splitlines())
    assert set(sums) == set(files) - {"SHA256SUMS"}
    assert all(sums[path] == hashlib.sha256(content).hexdigest() for path, content in files.items() if path in sums)
    assert archive_sha256(archive) == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (archive.parent / f"{archive.name}.sha256").read_text().split() == [archive_sha256(archive), archive.name]


def test_the_readme_recipes_load_the_zip_offline_on_a_local_base(trained_lora, registry, settings, tiny_llama_dir):
    """A base given as a local directory: the config keeps its folder name, and the README's code runs as written."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    row = trained_lora(str(tiny_llama_dir))
    archive = AdapterService(registry, settings).zip(row.id)
    elsewhere = settings.data_dir.parent / "elsewhere"
    folder = unzip(archive, elsewhere)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_llama_dir.name
    readme = (folder / "README.md").read_text()
    assert f"local model directory named `{tiny_llama_dir.name}`" in readme and str(tiny_llama_dir) not in readme

    # Another machine: the user's copy of the base sits beside the adapter under the name the README gives.
    (elsewhere / tiny_llama_dir.name).symlink_to(tiny_llama_dir, target_is_directory=True)
    peft_recipe, transformers_recipe = re.findall(r"```python\n(.*?)```", readme, re.S)[-2:]
    ids = [[2, 5, 6, 7, 8, 9]]
    script = "\n".join(
        [
            "import json, sys, torch",
            peft_recipe,
            "peft_model = model",
            transformers_recipe,
            f"ids = torch.tensor({ids})",
            "with torch.no_grad():",
            "    print(json.dumps([peft_model(ids).logits.tolist(), model(ids).logits.tolist()]))",
        ]
    )
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=offline, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    via_peft, via_load_adapter = (torch.tensor(x) for x in json.loads(run.stdout.strip().splitlines()[-1]))

    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        plain = base(torch.tensor(ids)).logits
        studio = PeftModel.from_pretrained(base, row.path)(torch.tensor(ids)).logits
    assert not torch.allclose(studio, plain, atol=1e-4)  # the adapter changes the outputs ...
    torch.testing.assert_close(via_peft, studio, atol=1e-5, rtol=0)  # ... and both recipes load it exactly
    torch.testing.assert_close(via_load_adapter, studio, atol=1e-5, rtol=0)


def test_export_writes_the_portable_config(trained_lora, registry, settings, tmp_path):
    row = trained_lora("smollm2-135m-instruct")
    AdapterService(registry, settings).export(row.id, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        SMOLLM2_HUB_ID
    )
    assert "--lora-modules out=out" in (tmp_path / "out" / "README.md").read_text()
