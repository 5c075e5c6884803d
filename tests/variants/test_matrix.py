"""The checks every registered variant must pass, parametrised from the registry (spec §0).

For each variant, through the real training loop on a tiny random Llama:
- the loss falls on a repeated batch; the same seed gives the same loss curve; a crash +
  resume from the last checkpoint gives the same subsequent losses;
- the saved adapter reloads with plain ``PeftModel.from_pretrained`` on a fresh base (LoRAPrune:
  plus its pruning masks, ``Variant.load_saved_adapter``) and gives the in-memory logits; merged
  weights equal W0 + delta_weights (the contract);
- the plain-LoRA export reproduces the model and reports its error when truncated.
"""

from __future__ import annotations

import pytest
import torch
from conftest_training import chat_rows, write_jsonl

from studio.progress import MemoryReporter
from studio.training.setup import TrainingData
from studio.variants.registry import get_variant, variant_names

VARIANTS = variant_names()


def fresh_base(result):
    return result.export_context().fresh_base()


def probe_ids(vocab: int = 60) -> torch.Tensor:
    return torch.randint(8, vocab, (2, 9), generator=torch.Generator().manual_seed(3))


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.fixture
def repeated_batch(tmp_path):
    """Four rows and batch size 4: every step sees the same batch."""
    return TrainingData(path=write_jsonl(tmp_path / "four.jsonl", chat_rows(4)), sha256="four")


@pytest.mark.parametrize("name", VARIANTS)
def test_saved_adapter_reloads_with_plain_peft_and_matches_delta_weights(name, train_tiny, tmp_path):
    from peft import PeftModel

    result = train_tiny(name, max_steps=3, learning_rate=2e-2)
    variant, model = result.variant, result.model
    ids = probe_ids()
    expected = logits(model, ids)
    out = tmp_path / "adapter"
    variant.save_adapter(model, out, result.export_context())
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()

    reloaded = variant.load_saved_adapter(fresh_base(result), out)
    torch.testing.assert_close(logits(reloaded, ids), expected, atol=1e-5, rtol=1e-5)

    # The contract: merging the saved adapter adds exactly delta_weights to the original W0.
    deltas = variant.delta_weights(model)
    assert deltas and all(d.dtype == torch.float32 for d in deltas.values())
    base = dict(fresh_base(result).named_parameters())
    merged = dict(reloaded.merge_and_unload().named_parameters())
    for module, delta in deltas.items():
        w0 = base[f"{module}.weight"].detach()
        diff = (merged[f"{module}.weight"].detach() - (w0 + delta)).abs().max()
        assert diff <= 1e-5 * w0.abs().max(), (module, float(diff))

    # Also as a plain PEFT LoRA (spec §0): exact at the true ranks, and approximate at rank 1 with errors.
    report = variant.export_plain_lora(model, tmp_path / "plain", result.export_context())
    config = (tmp_path / "plain" / "adapter_config.json").read_text()
    assert '"peft_type": "LORA"' in config and '"use_dora": false' in config
    plain = PeftModel.from_pretrained(fresh_base(result), str(tmp_path / "plain"))
    torch.testing.assert_close(logits(plain, ids), expected, atol=1e-4, rtol=1e-4)
    assert report.ranks and all(r >= 1 for r in report.ranks.values())
    approx = variant.export_plain_lora(model, tmp_path / "rank1", result.export_context(), rank=1)
    assert not approx.exact and max(approx.ranks.values()) == 1
    assert set(approx.errors) >= set(approx.ranks) and 0.0 <= approx.max_error <= 1.0


class CrashAt(MemoryReporter):
    """A reporter that kills the run (like a dying worker) when step ``at`` starts to report."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def progress(self, step, total=None, message=None):
        if step == self.at:
            raise RuntimeError("simulated worker crash")
        super().progress(step, total, message)


@pytest.mark.parametrize("name", VARIANTS)
def test_learns_deterministically_and_resumes_after_a_crash(name, train_tiny, repeated_batch):
    hyper = dict(data=repeated_batch, max_steps=6, learning_rate=2e-2, save_every=3)
    straight = train_tiny(name, work="straight", **hyper)
    losses = [straight.losses[step] for step in range(1, 7)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < losses[0] - 1e-3, f"the loss does not fall on a repeated batch: {losses}"

    crash = CrashAt(4)
    with pytest.raises(RuntimeError, match="simulated"):
        train_tiny(name, reporter=crash, work="crashed", **hyper)
    # Same request, same seed -> the same loss curve, bit for bit.
    assert [value for _, value in crash.series("loss")] == losses[:3]
    assert [step for _, step in crash.checkpoints] == [3]

    resumed = train_tiny(name, work="crashed", resume=crash.checkpoints[-1][0], **hyper)
    assert resumed.resumed_from_step == 3 and sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == pytest.approx(straight.losses[step], abs=1e-6), step


@pytest.mark.parametrize("name", VARIANTS)
def test_catalogue_entry_is_complete(name):
    cls = get_variant(name)
    info = cls.info()
    assert info["name"] == name and info["title"] and info["summary"] and info["description"]
    assert info["when_to_use"] and set(info["tasks"]) <= {"causal-lm", "classification"}
    props = info["params_schema"]["properties"]
    assert {"r", "lora_alpha", "lora_dropout", "target_modules"} <= set(props)
    assert all(p.get("description") for p in props.values()), name
    cls.parse_params({})  # defaults are valid


@pytest.mark.parametrize("name", VARIANTS)
def test_presets_are_valid_parameters_of_their_variant(name):
    cls = get_variant(name)
    names = [preset.name for preset in cls.presets]
    assert len(names) == len(set(names))
    for preset in cls.presets:
        assert preset.title and preset.description and preset.values
        assert set(preset.values) <= set(cls.Params.model_fields), preset.name
        parsed = cls.parse_params(preset.values)
        assert {k: getattr(parsed, k) for k in preset.values} == preset.values
    assert cls.info()["presets"] == [preset.as_dict() for preset in cls.presets]
