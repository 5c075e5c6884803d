"""`studio serve --engine vllm` without vLLM: the plan (served, refused), the exports and the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest_training import make_llama_dir

from studio.errors import StudioError, ValidationFailed
from studio.services.adapters import AdapterService
from studio.serving import vllm_server
from studio.serving.vllm_server import (
    INSTALL_HINT,
    AdapterFiles,
    decide,
    lora_rank_limit,
    plan_vllm_server,
    safe_names,
    serve_with_vllm,
    vllm_argv,
)

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def other_base_dir(tmp_path_factory) -> Path:
    return make_llama_dir(tmp_path_factory.mktemp("other-llama"), seed=7)


@pytest.fixture
def services(settings, registry):
    return SimpleNamespace(settings=settings, registry=registry, adapters=AdapterService(registry, settings))


@pytest.fixture
def register(registry, make_adapter, tmp_path):
    """``register(name, variant, base_dir, seed, **lora)``: a PEFT adapter saved and added to the registry."""

    def add(name: str, variant: str, base_dir: Path, seed: int, **lora):
        path = make_adapter(base_dir, tmp_path / "adapters" / f"{seed}", seed, **lora)
        return registry.add_adapter(
            name=name, variant=variant, base_model=str(base_dir), path=str(path), sha256="0" * 64, ranks={}
        )

    return add


def vllm_deltas(directory: Path) -> dict[str, torch.Tensor]:
    """ΔW per module as vLLM computes it: ONE scale from ``r`` and ``lora_alpha`` (vllm/lora/peft_helper.py)."""
    from safetensors.torch import load_file

    config = json.loads((directory / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if ".lora_A." in key:
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            out[key.split(".lora_A.")[0].removeprefix("base_model.model.")] = scale * (b.double() @ a.double())
    return out


def peft_deltas(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """ΔW per module as PEFT applies the adapter (patterns, DoRA and all): merged weight minus base weight."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    before = {n: p.detach().double().clone() for n, p in base.named_parameters()}
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return {
        n.removesuffix(".weight"): p.detach().double() - before[n]
        for n, p in merged.named_parameters()
        if not torch.equal(p.detach().double(), before[n])
    }


def logits(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    ids = torch.tensor([[3, 9, 14, 27, 5, 11]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_three_adapters_give_the_expected_command_line(services, settings, register, base_dir, other_base_dir):
    small = register("alpha", "lora", base_dir, 1, r=8, lora_alpha=16, target_modules=ALL)
    large = register("beta two", "lora", base_dir, 2, r=24, lora_alpha=24, target_modules=["q_proj", "v_proj"])
    dora = register("gamma", "dora", base_dir, 3, r=8, lora_alpha=16, use_dora=True, target_modules=["q_proj"])
    other = register("alpha", "lora", other_base_dir, 4, r=8, lora_alpha=16, target_modules=ALL)

    plan = plan_vllm_server(services, str(base_dir), "127.0.0.1", 8001)

    assert list(plan.adapters) == ["alpha", "beta-two"]
    root = settings.data_dir / "serving" / "vllm"
    for name, row in (("alpha", small), ("beta-two", large)):
        assert plan.adapters[name].parent == root and plan.adapters[name].name.startswith(f"adapter-{row.id}-")
    assert plan.argv == [
        "vllm", "serve", str(base_dir.resolve()),
        "--host", "127.0.0.1", "--port", "8001",
        "--served-model-name", base_dir.name,
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "32", "--max-cpu-loras", "2",
        "--lora-modules", f"alpha={plan.adapters['alpha']}", f"beta-two={plan.adapters['beta-two']}",
    ]  # fmt: skip
    # DoRA's plain-LoRA export is approximate (variants table): refused unless a rank is given.
    assert set(plan.refused) == {"gamma", f"alpha-{other.id}"}
    assert "DoRA" in plan.refused["gamma"] and "approximate" in plan.refused["gamma"]
    assert str(other_base_dir) in plan.refused[f"alpha-{other.id}"] and "serves" in plan.refused[f"alpha-{other.id}"]
    assert plan.ids == {"alpha": small.id, "beta-two": large.id, "gamma": dora.id, f"alpha-{other.id}": other.id}
    text = plan.describe()
    assert "gamma" in text and "uses DoRA" in text and "--lora-modules" in text

    # The served directories are real PEFT LoRA folders, giving what the registered adapters give.
    for name, row in (("alpha", small), ("beta-two", large)):
        torch.testing.assert_close(logits(base_dir, plan.adapters[name]), logits(base_dir, Path(row.path)))
        config = json.loads((plan.adapters[name] / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and not config.get("use_dora") and not config.get("modules_to_save")

    # A lower rank limit refuses the rank-24 adapter instead of letting vLLM fail at start-up.
    limited = plan_vllm_server(services, str(base_dir), "127.0.0.1", 8001, max_lora_rank=16)
    assert list(limited.adapters) == ["alpha"] and "rank 24" in limited.refused["beta-two"]
    assert limited.argv[limited.argv.index("--max-lora-rank") + 1] == "16"


def test_dora_is_served_at_a_rank_when_asked_with_its_error(services, register, base_dir):
    register("gamma", "dora", base_dir, 3, r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj"])
    plan = plan_vllm_server(services, str(base_dir), "0.0.0.0", 9000, approximate_rank=8)
    assert list(plan.adapters) == ["gamma"] and plan.refused == {}
    assert "APPROXIMATE" in plan.notes["gamma"] and "rank 8" in plan.notes["gamma"]
    report = json.loads((plan.adapters["gamma"] / "export_report.json").read_text())
    assert report["exact"] is False and report["output_error"] is not None
    config = json.loads((plan.adapters["gamma"] / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and not config["use_dora"]
    assert plan.max_lora_rank == 8
    with pytest.raises(ValidationFailed, match="between 1 and"):
        plan_vllm_server(services, str(base_dir), "0.0.0.0", 9000, approximate_rank=1000)


def test_pattern_scales_are_re_exported_so_vllm_applies_them(services, register, base_dir):
    """vLLM applies one scale (alpha / r) to every layer: a rank/alpha pattern must be folded in first."""
    row = register(
        "patterns",
        "lora",
        base_dir,
        5,
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "up_proj", "down_proj"],
        rank_pattern={"down_proj": 6},
        alpha_pattern={"up_proj": 5},
    )
    want = peft_deltas(base_dir, Path(row.path))
    # The registered folder read the vLLM way is wrong: the test below could fail.
    as_is = vllm_deltas(Path(row.path))
    assert any(not torch.allclose(as_is[m], want[m], atol=1e-6) for m in want)

    plan = plan_vllm_server(services, str(base_dir), "127.0.0.1", 8001)
    served = plan.adapters["patterns"]
    assert "re-exported exactly" in plan.notes["patterns"] and "different scales" in plan.notes["patterns"]
    got = vllm_deltas(served)
    assert set(got) == set(want)
    for module, delta in want.items():
        torch.testing.assert_close(got[module], delta, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits(base_dir, served), logits(base_dir, Path(row.path)), atol=1e-5, rtol=1e-4)


def test_exports_are_cached_until_the_adapter_changes(services, register, base_dir):
    row = register("alpha", "lora", base_dir, 1, r=8, lora_alpha=16, target_modules=["q_proj"])
    first = plan_vllm_server(services, str(base_dir), "127.0.0.1", 8001).adapters["alpha"]
    mark = first / "vllm_export.json"
    stamp = mark.stat().st_mtime_ns
    again = plan_vllm_server(services, str(base_dir), "127.0.0.1", 8001).adapters["alpha"]
    assert again == first and mark.stat().st_mtime_ns == stamp

    time.sleep(0.01)
    config_file = Path(row.path) / "adapter_config.json"
    config_file.write_text(config_file.read_text() + "\n")  # the adapter's files changed
    changed = plan_vllm_server(services, str(base_dir), "127.0.0.1", 8001).adapters["alpha"]
    assert changed != first and changed.is_dir() and not first.exists()


def _row(**fields):
    values = dict(id=1, name="x", variant="lora", base_model="base", path="/nowhere", ranks={})
    return SimpleNamespace(**{**values, **fields})


def _files(ranks=None, **config):
    modules = ranks or {"model.layers.0.self_attn.q_proj": 8}
    return AdapterFiles(
        config={"peft_type": "LORA", "r": 8, "lora_alpha": 16, **config}, ranks=modules, has_masks=False
    )


def test_each_refusal_says_why():
    arch = "LlamaForCausalLM"
    assert decide(_row(), _files(), "base", arch).action == "copy"
    assert "classifier" in decide(_row(), _files(task_type="SEQ_CLS"), "base", arch).reason
    assert "modules_to_save" in decide(_row(), _files(modules_to_save=["lm_head"]), "base", arch).reason
    assert "biases" in decide(_row(), _files(bias="all"), "base", arch).reason
    embed = decide(_row(), _files({"model.embed_tokens": 8, "lm_head": 8}), "base", arch)
    assert embed.action == "refuse" and "embed_tokens" in embed.reason and "lm_head" in embed.reason
    assert "files are missing" in decide(_row(), None, "base", arch).reason
    assert "trained on other" in decide(_row(base_model="other"), _files(), "base", arch).reason
    # The variants table decides between an exact re-export and a refusal / an approximate export.
    adalora = decide(_row(variant="adalora"), _files(peft_type="ADALORA"), "base", arch)
    assert adalora.action == "export_exact" and "ADALORA" in adalora.reason
    miss = _files(peft_type="MISS")
    assert decide(_row(variant="miss"), miss, "base", arch).action == "refuse"
    assert decide(_row(variant="miss"), miss, "base", arch, approximate_rank=16).action == "export_approx"
    pruned = AdapterFiles(config=_files().config, ranks=_files().ranks, has_masks=True)
    assert "LoRAPrune" in decide(_row(variant="loraprune"), pruned, "base", arch).reason
    # An architecture without a known list is not second-guessed.
    assert decide(_row(), _files({"model.embed_tokens": 8}), "base", "SomethingNewForCausalLM").action == "copy"


def test_names_are_unique_and_safe():
    rows = [
        _row(id=3, name="my adapter"),
        _row(id=1, name="my adapter"),
        _row(id=2, name="a=b/../c"),
        _row(id=4, name="  "),
    ]
    rows.append(_row(id=5, name="smollm"))
    names = safe_names(rows, reserved=["smollm"])
    assert names == {1: "my-adapter", 2: "a-b-..-c", 3: "my-adapter-3", 4: "adapter-4", 5: "smollm-5"}
    assert all("=" not in n and "/" not in n and " " not in n for n in names.values())
    assert len(set(names.values())) == len(names)


def test_rank_limit_rounds_up_to_what_vllm_accepts():
    assert [lora_rank_limit(r) for r in (1, 8, 9, 24, 300, 512)] == [8, 8, 16, 32, 320, 512]
    assert lora_rank_limit(4, 64) == 64
    with pytest.raises(ValidationFailed, match="not one vLLM accepts"):
        lora_rank_limit(4, 48)
    argv = vllm_argv(
        "/m", "m", "h", 1, {}, 1, 16, launcher=["python", "-m", "vllm.entrypoints.openai.api_server", "--model"]
    )
    assert argv[:5] == ["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    assert "--lora-modules" not in argv and argv[-2:] == ["--max-cpu-loras", "1"]


def test_missing_vllm_is_one_clear_error(services, monkeypatch, register, base_dir, settings):
    register("alpha", "lora", base_dir, 1, r=8, lora_alpha=16, target_modules=["q_proj"])
    real = vllm_server.importlib.util.find_spec
    monkeypatch.setattr(vllm_server.importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a))
    with pytest.raises(StudioError) as caught:
        serve_with_vllm(services, "127.0.0.1", 8001, base_model=str(base_dir))
    assert INSTALL_HINT in str(caught.value) and "CUDA" in str(caught.value)
    assert not (settings.data_dir / "serving").exists()  # refused before any export


def test_serve_prints_the_plan_and_runs_vllm(services, monkeypatch, register, base_dir):
    register("alpha", "lora", base_dir, 1, r=8, lora_alpha=16, target_modules=["q_proj"])
    register("gamma", "dora", base_dir, 3, r=8, lora_alpha=16, use_dora=True, target_modules=["q_proj"])
    real = vllm_server.importlib.util.find_spec
    monkeypatch.setattr(vllm_server.importlib.util, "find_spec", lambda n, *a: object() if n == "vllm" else real(n, *a))
    monkeypatch.setenv("STUDIO_VLLM_ARGS", "--gpu-memory-utilization 0.3 --max-model-len 512")
    printed, ran = [], []
    code = serve_with_vllm(
        services, "127.0.0.1", 8001, base_model=str(base_dir), echo=printed.append, run=lambda a: ran.append(a) or 7
    )
    assert code == 7 and len(ran) == 1
    argv = ran[0]
    assert argv[: len(vllm_server.vllm_launcher())] == vllm_server.vllm_launcher()
    assert argv[-4:] == ["--gpu-memory-utilization", "0.3", "--max-model-len", "512"]
    assert any(a.startswith("alpha=") for a in argv) and not any(a.startswith("gamma=") for a in argv)
    assert "1 adapter(s) refused" in printed[0] and "DoRA" in printed[0]

    # STUDIO_VLLM_APPROX_RANK serves the DoRA adapter through an approximate export, said so in the plan.
    monkeypatch.setenv("STUDIO_VLLM_APPROX_RANK", "8")
    serve_with_vllm(services, "h", 1, base_model=str(base_dir), echo=printed.append, run=ran.append)
    assert any(a.startswith("gamma=") for a in ran[1]) and "APPROXIMATE" in printed[1]
    monkeypatch.setenv("STUDIO_VLLM_APPROX_RANK", "eight")
    with pytest.raises(ValidationFailed, match="not a rank"):
        serve_with_vllm(services, "h", 1, base_model=str(base_dir), echo=printed.append, run=ran.append)


def test_signals_reach_vllm_and_its_exit_status_comes_back(tmp_path):
    """SIGTERM sent to the studio process is passed on to the server it runs, whose exit status is returned."""
    child = textwrap.dedent(
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (print("child got SIGTERM", flush=True), sys.exit(3)))
        print("ready", flush=True)
        time.sleep(30)
        """
    )
    parent = (
        "import sys; from studio.serving.vllm_server import run_forwarding_signals; "
        f"sys.exit(run_forwarding_signals([sys.executable, '-c', {child!r}]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, cwd=Path.cwd())
    assert proc.stdout.readline().strip() == "ready"
    proc.terminate()
    out, _ = proc.communicate(timeout=20)
    assert "child got SIGTERM" in out and proc.returncode == 3
