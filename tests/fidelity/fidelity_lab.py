"""The studio shared by the fidelity tests: one data dir, one SQLite registry, adapters trained once per session.

Every consumer of an adapter (the evaluation job, the playground, the download, the exports) is
checked against the logits the trained model gave in memory, right after training. Training each
variant once (a few steps on the tiny Llama of ``conftest_training``) and reusing it for every
consumer keeps the whole matrix within a few minutes on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest_training import chat_rows, cpu_device, make_request, make_tokenizer, write_jsonl

# Chat prompts the trained adapters were taught to answer; equal lengths, so no padding is involved.
PROMPTS = ("what color is the sky", "what color is the grass", "what color is the fire")
TRAIN_STEPS = 3
LEARNING_RATE = 2e-2
# An adapter must move some logit by this much on the prompts: 200x the tolerance of the exact paths,
# so a comparison can never pass because the adapter did nothing. (After 3 steps the weakest variants,
# AdaLoRA and S2-LoRA, move the logits by ~6e-3 to 1e-2; most by 0.2 to 0.7.)
MIN_EFFECT = 2e-3
# The two trained LoRAs that the merge job combines, and their weights.
MERGE_PARENTS = (("lora", 0.7), ("rslora", -0.4))


def prompt_ids(tokenizer: Any) -> torch.Tensor:
    """PROMPTS as the playground sends them: the chat template with the generation prompt."""
    rows = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for p in PROMPTS
    ]
    assert len({len(r) for r in rows}) == 1, "the prompts must tokenise to equal lengths"
    return torch.tensor(rows)


def logits_of(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """fp32 logits of ``model`` on ``ids`` (CPU), in eval mode."""
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


@dataclass
class Trained:
    """An adapter as training left it: its registry row and the logits it gave in memory."""

    name: str
    row: Any
    reference: torch.Tensor  # logits of the trained model in memory on PROMPTS
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)  # ΔW per module (the variant contract)
    model: Any = None  # the in-memory model (kept for variant-specific references such as DyLoRA's cuts)


class FidelityLab:
    """A data dir, registry and services in ``root``; trains, saves and registers adapters on demand, once each."""

    def __init__(self, root: Path, base_dir: Path):
        from models_db.registry import Registry
        from studio.services.adapters import AdapterService
        from studio.services.playground import PlaygroundService
        from studio.settings import Settings

        self.root, self.base_dir = root, base_dir
        self.settings = Settings(data_dir=root / "data")
        self.settings.ensure_dirs()
        self.registry = Registry.from_url(f"sqlite:///{root}/registry.db")
        self.adapters = AdapterService(self.registry, self.settings)
        # One playground for the whole matrix, as in a web process: adapters of every type share the pool.
        self.playground = PlaygroundService(self.registry, self.settings)
        self.ids = prompt_ids(make_tokenizer())
        self.base_logits = logits_of(self.fresh_base(), self.ids)
        self._trained: dict[str, Trained] = {}
        data = write_jsonl(root / "chat.jsonl", chat_rows(8))
        from studio.training.setup import TrainingData

        self.data = TrainingData(path=data, sha256="fidelity", name="chat")

    def fresh_base(self) -> Any:
        """The base model as a user loads it: plain transformers, fp32."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.base_dir, dtype=torch.float32)

    def work(self, *parts: str) -> Path:
        """A fresh, empty directory for one check's files."""
        path = self.root.joinpath("work", *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def trained(self, name: str) -> Trained:
        """Variant ``name`` trained for a few steps, saved like the training job saves it and registered."""
        if name not in self._trained:
            self._trained[name] = self._train(name)
        return self._trained[name]

    def _train(self, name: str) -> Trained:
        from studio.progress import MemoryReporter
        from studio.training.job import save_trained_adapter
        from studio.training.loop import run_training

        request = make_request(name, max_steps=TRAIN_STEPS, learning_rate=LEARNING_RATE).model_copy(
            update={"base_model": str(self.base_dir)}
        )
        result = run_training(
            request,
            MemoryReporter(),
            settings=self.settings,
            device=cpu_device(),
            work_dir=self.root / "runs" / name,
            dataset=self.data,
        )
        out = self.settings.adapters_dir / name
        saved = save_trained_adapter(result, request, out)
        row = self.registry.add_adapter(
            name=f"{name} adapter",
            variant=name,
            base_model=str(self.base_dir),
            ranks=saved["ranks"],
            trainable_params=result.trainable_params,
            size_bytes=saved["size_bytes"],
            path=str(out),
            sha256=saved["sha256"],
            metrics=result.metrics(),
        )
        deltas = {k: v.detach().float().cpu() for k, v in result.variant.delta_weights(result.model).items()}
        return Trained(name, row, logits_of(result.model, self.ids), deltas, result.model)

    def merged(self) -> Trained:
        """A linear merge job of two trained LoRAs; its reference is the arithmetic W0 + Σ wᵢ ΔWᵢ."""
        if "merge" not in self._trained:
            self._trained["merge"] = self._merge()
        return self._trained["merge"]

    def _merge(self) -> Trained:
        from studio.jobs.context import JobContext
        from studio.merging.job import run_merge_job
        from studio.progress import MemoryReporter
        from studio.schema import SCHEMA_VERSION, MergeRequest

        parents = [(self.trained(name), weight) for name, weight in MERGE_PARENTS]
        request = MergeRequest(adapter_ids=[p.row.id for p, _ in parents], weights=[w for _, w in parents])
        job = self.registry.create_job(
            kind="merge", name="merge", request=request.model_dump(mode="json"), schema_version=SCHEMA_VERSION, seed=0
        )
        ctx = JobContext(job.id, self.settings, self.registry, cpu_device(), attempt=1)
        result = run_merge_job(request, MemoryReporter(), ctx)
        row = self.registry.get_adapter(result["adapter_id"])

        # The expectation, computed without the merge code: every parent's ΔW from its in-memory model.
        expected = self.fresh_base()
        deltas: dict[str, torch.Tensor] = {}
        for parent, weight in parents:
            for module, delta in parent.deltas.items():
                deltas[module] = deltas.get(module, torch.zeros_like(delta)) + weight * delta
        with torch.no_grad():
            for module, delta in deltas.items():
                expected.get_submodule(module).weight.add_(delta)
        return Trained("merge", row, logits_of(expected, self.ids), deltas, expected)

    def close(self) -> None:
        self.registry.dispose()


@pytest.fixture(scope="session")
def lab(tmp_path_factory, tiny_llama_dir):
    """The shared studio of the fidelity tests (trains each adapter at most once per session)."""
    value = FidelityLab(tmp_path_factory.mktemp("fidelity"), tiny_llama_dir)
    yield value
    value.close()
