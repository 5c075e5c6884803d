"""AdapterService and the `adapters` / `export` CLI commands over real trained adapters."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from conftest_training import chat_rows, cpu_device, make_request, write_jsonl

from studio.errors import ValidationFailed
from studio.progress import MemoryReporter
from studio.services.adapters import AdapterService
from studio.training.job import save_trained_adapter
from studio.training.loop import run_training
from studio.training.setup import TrainingData


@pytest.fixture
def make_adapter(registry, settings, tiny_llama_dir, tmp_path):
    """Train `variant` for 3 steps, save it like the job does and register it; returns (row, result)."""

    def make(variant: str):
        data = TrainingData(path=write_jsonl(tmp_path / "d.jsonl", chat_rows(8)), sha256="d")
        request = make_request(variant, max_steps=3, learning_rate=3e-2).model_copy(
            update={"base_model": str(tiny_llama_dir)}
        )
        result = run_training(
            request,
            MemoryReporter(),
            settings=settings,
            device=cpu_device(),
            work_dir=tmp_path / variant,
            dataset=data,
        )
        out = settings.adapters_dir / variant
        saved = save_trained_adapter(result, request, out)
        row = registry.add_adapter(
            name=f"{variant} adapter",
            variant=variant,
            base_model=str(tiny_llama_dir),
            ranks=saved["ranks"],
            trainable_params=result.trainable_params,
            size_bytes=saved["size_bytes"],
            path=str(out),
            sha256=saved["sha256"],
            metrics=result.metrics(),
        )
        return row, result

    return make


def test_list_get_zip_delete(make_adapter, registry, settings):
    service = AdapterService(registry, settings)
    row, _ = make_adapter("lora")
    assert [a.id for a in service.list()] == [row.id] and service.list(variant="dora") == []
    assert service.get(row.id).name == "lora adapter"
    archive = service.zip(row.id)
    with zipfile.ZipFile(archive) as handle:
        names = set(handle.namelist())
    assert f"adapter-{row.id}/adapter_model.safetensors" in names and f"adapter-{row.id}/README.md" in names
    service.delete(row.id)
    assert service.list() == [] and not Path(row.path).exists()


def test_export_copy_and_plain_lora_with_error_report(make_adapter, registry, settings, tmp_path):
    from peft import PeftModel

    service = AdapterService(registry, settings)
    row, result = make_adapter("dora")
    copied = service.export(row.id, tmp_path / "copy")
    assert (Path(copied.path) / "adapter_model.safetensors").exists() and copied.format == "copy"

    approx = service.export(row.id, tmp_path / "r2", as_lora_rank=2)
    config = json.loads((tmp_path / "r2" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and not config["use_dora"] and max(approx.ranks.values()) <= 2
    assert 0 < approx.max_error < 1 and json.loads((tmp_path / "r2" / "export_report.json").read_text())["errors"]

    # At full rank the plain LoRA reproduces the DoRA adapter.
    full = service.export(row.id, tmp_path / "full", as_lora_rank=64)
    assert full.max_error < 1e-5
    ids = torch.randint(8, 60, (1, 7), generator=torch.Generator().manual_seed(0))
    fresh = result.export_context().fresh_base
    with torch.no_grad():
        want = PeftModel.from_pretrained(fresh(), row.path).eval()(input_ids=ids).logits
        got = PeftModel.from_pretrained(fresh(), str(tmp_path / "full")).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    with pytest.raises(ValidationFailed, match="not empty"):
        service.export(row.id, tmp_path / "full")


def test_only_safetensors_adapters_are_loaded(make_adapter, registry, settings, tmp_path):
    service = AdapterService(registry, settings)
    row, _ = make_adapter("lora")
    (Path(row.path) / "adapter_model.safetensors").rename(Path(row.path) / "adapter_model.bin")
    with pytest.raises(ValidationFailed, match="safetensors"):
        service.export(row.id, tmp_path / "x", as_lora_rank=2)


def test_cli_lists_and_exports(make_adapter, settings, tmp_path):
    from click.testing import CliRunner

    from studio.cli.adapters import adapters_cmd, export_cmd

    row, _ = make_adapter("lora")
    runner = CliRunner()
    listed = runner.invoke(adapters_cmd, [])
    assert listed.exit_code == 0, listed.output
    assert "lora adapter" in listed.output and " 8 " in listed.output
    out = tmp_path / "cli-export"
    exported = runner.invoke(export_cmd, [str(row.id), "--out", str(out), "--as-lora-rank", "4"])
    assert exported.exit_code == 0, exported.output
    assert "max relative Frobenius error" in exported.output and (out / "adapter_model.safetensors").exists()
    assert "of the adapter's whole effect" in exported.output


def test_dylora_exports_exactly_at_a_chosen_rank(make_adapter, registry, settings, tmp_path, tiny_llama_dir):
    """Issue: DyLoRA exports at any rank the user picks (nested cut, not an SVD)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.variants._adapter_wrap import adapter_layers
    from studio.variants.dylora import DyLoraLinear

    row, result = make_adapter("dylora")
    service = AdapterService(registry, settings)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    for rank in (1, 3):
        report = service.export(row.id, tmp_path / f"r{rank}", as_lora_rank=rank)
        assert report.exact and set(report.ranks.values()) == {rank}
        base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
        merged = PeftModel.from_pretrained(base, str(tmp_path / f"r{rank}")).merge_and_unload()
        for name, layer in adapter_layers(result.model, DyLoraLinear).items():
            w0 = original[f"{name}.weight"]
            expected = w0 + layer.delta_at(rank).to(w0.dtype)
            assert (merged.get_submodule(name).weight - expected).abs().max() <= 1e-5 * w0.abs().max(), name
    with pytest.raises(ValidationFailed, match="rank up to"):
        service.export(row.id, tmp_path / "too-big", as_lora_rank=64)


def test_dylora_metric_vs_rank_evaluation(make_adapter, registry, settings, tmp_path):
    """An eval job on a DyLoRA adapter reports the loss at each requested rank (the metric-vs-rank curve)."""
    from studio.device import detect_device
    from studio.evaluation.job import run_eval_job
    from studio.jobs.context import JobContext
    from studio.schema import EvalRequest
    from studio.services.datasets import DatasetService

    row, _ = make_adapter("dylora")
    stored_rank = max(row.ranks.values())
    dataset = DatasetService(registry, settings).add(write_jsonl(tmp_path / "eval.jsonl", chat_rows(6)))
    request = EvalRequest(adapter_id=row.id, dataset_id=dataset.id, metrics=["loss"], ranks=[1, stored_rank])
    job = registry.create_job(kind="eval", request=request.model_dump(mode="json"), schema_version=1, seed=0)
    ctx = JobContext(job.id, settings, registry, detect_device("cpu"), attempt=1)
    reporter = MemoryReporter()
    result = run_eval_job(request, reporter, ctx)
    by_rank = result["loss_by_rank"]
    assert set(by_rank) == {1, stored_rank}
    # At the saved rank the cut adapter is the adapter itself.
    assert by_rank[stored_rank] == pytest.approx(result["metrics"]["eval_loss"], abs=1e-6)
    assert by_rank[1] != pytest.approx(by_rank[stored_rank], abs=1e-6)
    assert reporter.series("eval_loss_by_rank") == [(1, by_rank[1]), (stored_rank, by_rank[stored_rank])]

    lora_row, _ = make_adapter("lora")
    with pytest.raises(ValidationFailed, match="DyLoRA"):
        run_eval_job(request.model_copy(update={"adapter_id": lora_row.id}), MemoryReporter(), ctx)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_merged_model_export_is_a_standalone_model_with_the_adapters_outputs(
    make_adapter, registry, settings, tmp_path, variant
):
    """The base with the adapter folded in loads with plain transformers and answers like base + adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    row, result = make_adapter(variant)
    service = AdapterService(registry, settings)
    out = service.export_merged_model(row.id, tmp_path / "merged")
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "MERGED_FROM.md"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(8, 60, (2, 9), generator=torch.Generator().manual_seed(3))
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, result.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )
    assert AutoTokenizer.from_pretrained(out)("red sky")["input_ids"]
    with pytest.raises(ValidationFailed, match="not empty"):
        service.export_merged_model(row.id, out)


def test_merged_model_zip_and_cli(make_adapter, registry, settings, tmp_path):
    from click.testing import CliRunner

    from studio.cli.adapters import export_cmd

    row, _ = make_adapter("lora")
    archive = AdapterService(registry, settings).merged_model_zip(row.id)
    with zipfile.ZipFile(archive) as handle:
        names = set(handle.namelist())
    assert {f"merged-model-{row.id}/model.safetensors", f"merged-model-{row.id}/config.json"} <= names
    assert not (settings.data_dir / "exports" / f"merged-model-{row.id}").exists()  # only the zip is kept
    runner = CliRunner()
    out = tmp_path / "cli-merged"
    done = runner.invoke(export_cmd, [str(row.id), "--out", str(out), "--merged-model"])
    assert done.exit_code == 0, done.output
    assert "merged in" in done.output and (out / "model.safetensors").exists()
    both = runner.invoke(
        export_cmd, [str(row.id), "--out", str(tmp_path / "y"), "--merged-model", "--as-lora-rank", "2"]
    )
    assert both.exit_code != 0 and "alternatives" in str(both.exception)


def test_plain_lora_export_keeps_every_trained_module(make_adapter, registry, settings, tmp_path):
    """SoRA trains the RMSNorm weights too: `--as-lora-rank` must carry them, and say how far outputs moved."""
    from peft import PeftModel

    row, result = make_adapter("sora")
    saved = json.loads((Path(row.path) / "adapter_config.json").read_text())["modules_to_save"]
    assert any("norm" in name for name in saved), saved
    service = AdapterService(registry, settings)
    ids = torch.randint(8, 60, (2, 9), generator=torch.Generator().manual_seed(5))
    fresh = result.export_context().fresh_base
    result.model.eval()
    with torch.no_grad():
        trained = result.model(input_ids=ids).logits
        base = fresh().eval()(input_ids=ids).logits
    assert (trained - base).abs().max() > 1e-3  # the adapter moved the model: the check below can fail

    exact = service.export(row.id, tmp_path / "exact", as_lora_rank=64)
    config = json.loads((tmp_path / "exact" / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == sorted(saved)
    with torch.no_grad():
        got = PeftModel.from_pretrained(fresh(), str(tmp_path / "exact")).eval()(input_ids=ids).logits
    torch.testing.assert_close(got, trained, atol=1e-5, rtol=1e-5)
    assert exact.output_error is not None and exact.output_error < 1e-4

    low = service.export(row.id, tmp_path / "r1", as_lora_rank=1)
    with torch.no_grad():
        moved = PeftModel.from_pretrained(fresh(), str(tmp_path / "r1")).eval()(input_ids=ids).logits
    # The reported output error is the export's change of the logits relative to the adapter's whole effect.
    assert low.output_error > exact.output_error
    assert json.loads((tmp_path / "r1" / "export_report.json").read_text())["output_error"] == low.output_error
    assert (moved - trained).norm() <= (trained - base).norm()


def test_loraprune_pruned_model_export_and_mask_aware_rank_export(
    make_adapter, registry, settings, tmp_path, monkeypatch
):
    """The pruned model of a trained LoRAPrune adapter answers like the masked model, with fewer parameters."""
    from click.testing import CliRunner
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from studio.cli.adapters import export_cmd

    row, result = make_adapter("loraprune")
    service = AdapterService(registry, settings)
    out = service.export_pruned_model(row.id, tmp_path / "pruned")
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md"} <= {p.name for p in out.iterdir()}
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf-modules"))
    pruned = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    base = AutoModelForCausalLM.from_pretrained(row.base_model)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in base.parameters())
    ids = torch.randint(8, 60, (2, 9), generator=torch.Generator().manual_seed(3))
    result.model.eval()
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
        torch.testing.assert_close(pruned(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    # a plain LoRA at a rank high enough to be exact still carries the pruning (the masks are folded in)
    report = service.export(row.id, tmp_path / "r64", as_lora_rank=64)
    assert report.max_error < 1e-5
    merged = PeftModel.from_pretrained(base, report.path).merge_and_unload().eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)
    lora_row, _ = make_adapter("lora")
    with pytest.raises(ValidationFailed, match="no pruning masks"):
        service.export_pruned_model(lora_row.id, tmp_path / "nope")
    done = CliRunner().invoke(export_cmd, [str(row.id), "--out", str(tmp_path / "cli"), "--pruned-model"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "cli" / "model.safetensors").exists()
