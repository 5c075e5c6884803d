"""Base models: the bundled GGUF converts once and loads offline; missing models explain themselves."""

from __future__ import annotations

import json

import pytest

from studio.errors import StudioError
from studio.models.base_models import (
    BUNDLED_MODELS,
    load_causal_lm,
    load_tokenizer,
    register_bundled_models,
    resolve_base_model,
)


def test_bundled_smollm2_converts_once_and_chats(settings, shared_models_dir):
    resolved = resolve_base_model("smollm2-135m-instruct", settings)
    assert resolved.source == "bundled" and resolved.task == "causal-lm"
    assert (resolved.path / "model.safetensors").exists()
    assert not list(resolved.path.glob("*.bin")), "only safetensors are written"
    config = json.loads((resolved.path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    # A second resolve is a cache hit: same directory, nothing rewritten.
    mtime = (resolved.path / "model.safetensors").stat().st_mtime
    assert resolve_base_model("smollm2-135m-instruct", settings).path == resolved.path
    assert (resolved.path / "model.safetensors").stat().st_mtime == mtime

    tokenizer = load_tokenizer(resolved)
    model = load_causal_lm(resolved)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_bundled_encoder_is_a_local_directory(settings):
    resolved = resolve_base_model("all-minilm-l6-v2", settings)
    assert resolved.source == "bundled" and (resolved.path / "model.safetensors").exists()


def test_local_directory_and_errors(settings, tmp_path):
    with pytest.raises(StudioError, match="does not exist"):
        resolve_base_model(str(tmp_path / "nowhere"), settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudioError, match="config.json"):
        resolve_base_model(str(tmp_path / "empty"), settings)


def test_missing_hub_model_offline_says_what_to_do(settings):
    settings.offline = True
    with pytest.raises(StudioError) as info:
        resolve_base_model("some-org/definitely-not-cached-model", settings)
    assert "offline" in str(info.value) and "STUDIO_OFFLINE=0" in str(info.value)


def test_bundled_models_are_registered(registry):
    register_bundled_models(registry)
    names = {m.name for m in registry.list_base_models()}
    assert set(BUNDLED_MODELS) <= names


def test_bundled_encoder_refuses_dna_sequences_and_reads_sentences(settings, samples_dir):
    """The real lncRNA file: MiniLM's WordPiece turns each sequence into one [UNK], so training is refused."""
    import json

    from studio.errors import ValidationFailed
    from studio.training.models import load_tokenizer_for
    from studio.training.tokenise import encode_rows

    tokenizer = load_tokenizer_for(resolve_base_model("all-minilm-l6-v2", settings).path)
    with open(samples_dir / "lncrna_athaliana" / "test.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(50), handle, strict=False)]
    sequences = [{"text": row["sequence"], "label": row["label"]} for row in rows]
    with pytest.raises(ValidationFailed, match="50 of 50 rows became nothing but its unknown token"):
        encode_rows(sequences, tokenizer, task="classification", max_length=128, labels=[0, 1])
    sentences = [{"text": "a gripping, funny film", "label": 1}, {"text": "dull and far too long", "label": 0}]
    out = encode_rows(sentences, tokenizer, task="classification", max_length=128, labels=[0, 1])
    assert out.unknown_tokens == 0 and len(out.examples) == 2
