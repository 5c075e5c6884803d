"""`studio serve --engine vllm`: vLLM's OpenAI-compatible server on one base model and the registry's adapters.

vLLM (the optional extra ``adapter-studio[vllm]``, CUDA hosts only) serves plain LoRA
adapters with its own GPU kernels. This module decides which registered adapters it can
serve, exports each of them as a plain PEFT LoRA into ``<data dir>/serving/vllm/`` (reusing
:meth:`studio.services.adapters.AdapterService.export`; cached until the adapter changes),
builds the ``vllm serve`` command line and runs it, forwarding signals.

What vLLM loads (``vllm/lora/peft_helper.py``) and so what decides each adapter:

- one scale per adapter, ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA): ``rank_pattern`` and
  ``alpha_pattern`` are not read. An adapter whose layers have different scales is re-exported
  (the plain-LoRA export folds every scale into B, so all of them are 1; exact);
- no DoRA, no ``modules_to_save``, no biases, PEFT type LORA only: DoRA, MiSS and other PEFT
  types, and LoRAPrune's masks, need the plain-LoRA export; it is exact or approximate as the
  variants table says, and an approximate one is made only when asked (``approximate_rank``),
  with its error printed; trained whole modules (heads, norms) cannot be exported away: refused;
- ``--max-lora-rank`` takes a few values only (8, 16, 32, … 512): the largest served rank is
  rounded up, an adapter above the limit is refused;
- LoRA on the linear layers of the attention and MLP blocks (for the architectures listed in
  ``VLLM_LORA_TARGETS``); an adapter on anything else (embeddings, ``lm_head``) is refused.

Everything up to the command line is plain functions, tested without vLLM (tests/serving/test_vllm_server.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from studio.errors import StudioError, ValidationFailed
from studio.loading_recipes import VLLM_LORA_RANKS, vllm_max_lora_rank

INSTALL_HINT = "pip install 'adapter-studio[vllm]'"
# Layer-name suffixes vLLM gives LoRA layers, per architecture (the unpacked names PEFT uses: vLLM
# packs q/k/v into qkv_proj and gate/up into gate_up_proj and splits an adapter's tensors itself).
_LLAMA_LIKE = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
_PHI3 = frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})
VLLM_LORA_TARGETS: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Qwen3ForCausalLM": _LLAMA_LIKE,
    "GemmaForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": _LLAMA_LIKE,
    "GraniteForCausalLM": _LLAMA_LIKE,
    "Phi3ForCausalLM": _PHI3,
}
# adapter_config.json fields that vLLM ignores or rejects and that no export removes.
_UNSUPPORTED_FIELDS = ("layer_replication", "target_parameters", "alora_invocation_tokens", "trainable_token_indices")
_PEFT_PREFIX = "base_model.model."
_LORA_A = re.compile(r"^(?P<module>.+)\.lora_A(?:\.[^.]+)?\.weight$")
_EXPORT_MARK = "vllm_export.json"
# The rank an exact re-export is asked for: the SVD keeps min(this, each layer's numerical rank), so
# every layer keeps its true rank whatever the registry recorded (AdaLoRA's ranks move in training).
EXACT_EXPORT_RANK = 1_000_000
_LOWER_RANK_HINT = (
    "vLLM can serve a lower-rank export of it (`studio export ID --out DIR --as-lora-rank R`, approximate, "
    "with its error reported)"
)

Action = Literal["copy", "export_exact", "export_approx", "refuse"]


@dataclass(frozen=True)
class AdapterFiles:
    """What the adapter directory holds, read without loading any weights."""

    config: dict[str, Any]
    ranks: dict[str, int]  # module name (as in the base model) -> LoRA rank, from the lora_A shapes
    has_masks: bool  # LoRAPrune's pruning masks: the LoRA alone is not the trained model


@dataclass(frozen=True)
class Decision:
    """What to do with one adapter: serve a copy, export it (exactly or at a rank), or refuse it (``reason``)."""

    action: Action
    reason: str | None = None  # why it is refused, or why it needs an export


@dataclass
class VllmPlan:
    """The vLLM server to start: its command line, the served adapters and the refused ones with the reasons."""

    argv: list[str]
    base_model: str
    base_path: Path
    served_model_name: str
    adapters: dict[str, Path]  # served name -> exported plain-LoRA directory
    refused: dict[str, str]  # adapter name -> why vLLM cannot serve it
    notes: dict[str, str] = field(default_factory=dict)  # served name -> how it was exported (and its error)
    ids: dict[str, int] = field(default_factory=dict)  # adapter name (served or refused) -> registry id
    max_loras: int = 1
    max_lora_rank: int = 16

    def describe(self) -> str:
        """The plan for people: the base, each served adapter (with how it was exported), each refusal and why."""
        lines = [f"vLLM serves base model {self.base_model} as {self.served_model_name!r} ({self.base_path})"]
        lines.append(
            f"{len(self.adapters)} adapter(s) served (--max-loras {self.max_loras}, --max-lora-rank {self.max_lora_rank}):"
        )
        for name, path in self.adapters.items():
            note = f" — {self.notes[name]}" if name in self.notes else ""
            lines.append(f"  {name} (#{self.ids.get(name, '?')}): {path}{note}")
        if self.refused:
            lines.append(f"{len(self.refused)} adapter(s) refused:")
            lines += [f"  {name} (#{self.ids.get(name, '?')}): {why}" for name, why in self.refused.items()]
        lines.append("command: " + shlex.join(self.argv))
        return "\n".join(lines)


# -- pure pieces -------------------------------------------------------------------------------


def safe_names(rows: Sequence[Any], reserved: Sequence[str] = ()) -> dict[int, str]:
    """{adapter id: a unique model name} built from the adapters' names: letters, digits, ``._-`` only.

    The names are what clients send as ``"model"`` and what ``--lora-modules name=path`` parses,
    so no ``=``, spaces or slashes. Older adapters (smaller ids) keep the plain name; a clash,
    with another adapter or a ``reserved`` name (the base model's), gets ``-<id>`` appended.
    """
    taken = set(reserved)
    names: dict[int, str] = {}
    for row in sorted(rows, key=lambda r: r.id):
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(row.name or "")).strip("-.")[:64] or f"adapter-{row.id}"
        if name in taken:
            name = f"{name}-{row.id}"
        while name in taken:  # "x-3" was itself some adapter's own name
            name = f"{name}-{row.id}"
        taken.add(name)
        names[row.id] = name
    return names


def read_adapter_files(path: str | Path) -> AdapterFiles:
    """The adapter's config, its LoRA rank per module (from tensor shapes, nothing loaded) and whether it has masks."""
    from safetensors import safe_open

    from studio.variants._loraprune_masks import masks_path

    directory = Path(path)
    config_file, weights = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise StudioError(f"{directory} holds no adapter_config.json and adapter_model.safetensors")
    ranks: dict[str, int] = {}
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            match = _LORA_A.match(key.removeprefix(_PEFT_PREFIX))
            if match is not None:
                ranks[match["module"]] = int(handle.get_slice(key).get_shape()[0])
    config = json.loads(config_file.read_text())
    return AdapterFiles(config=config, ranks=ranks, has_masks=masks_path(directory) is not None)


def uniform_scale(config: dict[str, Any], modules: Sequence[str]) -> bool:
    """Whether every module's PEFT scale equals the one scale vLLM applies (``lora_alpha / r``, rsLoRA aware).

    vLLM reads ``r`` and ``lora_alpha`` only; ``rank_pattern``/``alpha_pattern`` change a module's
    scale in PEFT but not in vLLM. A plain-LoRA export has alpha = r in every module: scale 1 everywhere.
    """
    from studio.serving.bank import _pattern_value  # PEFT's own pattern lookup rule

    def scale(r: float, alpha: float) -> float:
        return alpha / (r**0.5) if config.get("use_rslora") else alpha / r

    r, alpha = float(config.get("r", 8)), float(config.get("lora_alpha", 8))
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    want = scale(r, alpha)
    for module in modules:
        got = scale(float(_pattern_value(ranks, module, r)), float(_pattern_value(alphas, module, alpha)))
        if abs(got - want) > 1e-9 * max(1.0, abs(want)):
            return False
    return True


def unsupported_targets(modules: Sequence[str], architecture: str | None) -> list[str]:
    """The adapted layers vLLM gives no LoRA layer for ``architecture`` ([] when all fit, or it is not listed)."""
    allowed = VLLM_LORA_TARGETS.get(architecture or "")
    if allowed is None:
        return []
    return sorted({m for m in modules if m.rsplit(".", 1)[-1] not in allowed})


def _export_exact(variant: str) -> bool:
    """The variants table's "plain-LoRA export" column: exact, or approximate (SVD at a chosen rank)."""
    from studio.errors import NotFoundError
    from studio.variants.registry import get_variant

    try:
        return get_variant(variant).export_exact
    except NotFoundError:  # a merge result or a variant this studio no longer has: promise nothing
        return False


def decide(
    row: Any,
    files: AdapterFiles | None,
    base_model: str,
    architecture: str | None,
    approximate_rank: int | None = None,
) -> Decision:
    """Serve a copy of ``row``, export it first (exactly, or at ``approximate_rank``), or refuse it with the reason."""
    if row.base_model != base_model:
        return Decision("refuse", f"it was trained on {row.base_model}, and this vLLM server serves {base_model} only")
    if files is None:
        return Decision("refuse", f"its files are missing from {row.path}")
    config = files.config
    if config.get("task_type") == "SEQ_CLS":
        return Decision("refuse", "it is a classifier; vLLM serves LoRA adapters of generative models only")
    if config.get("modules_to_save"):
        names = ", ".join(map(str, config["modules_to_save"]))
        return Decision(
            "refuse",
            f"it trains whole copies of {names} (modules_to_save), which vLLM does not load and no export removes",
        )
    if str(config.get("bias", "none")) != "none" or config.get("lora_bias"):
        return Decision("refuse", "it trains biases of the base layers, which vLLM does not load")
    for name in (*_UNSUPPORTED_FIELDS, "fan_in_fan_out"):
        if config.get(name):
            return Decision("refuse", f"it uses {name}, which vLLM does not support")
    outside = unsupported_targets(list(files.ranks), architecture)
    if outside:
        return Decision(
            "refuse", f"it adapts {', '.join(outside[:3])}, which vLLM gives no LoRA layer for {architecture}"
        )
    needs = _needs_export(files)
    if needs is None:
        return Decision("copy")
    if _export_exact(row.variant):
        return Decision("export_exact", needs)
    if approximate_rank is not None:
        return Decision("export_approx", needs)
    return Decision(
        "refuse",
        f"{needs}, and its plain-LoRA export is approximate ({row.variant}: SVD at a chosen rank); serve it at a rank "
        "with STUDIO_VLLM_APPROX_RANK=R after checking the error `studio export ID --out DIR --as-lora-rank R` reports",
    )


def _needs_export(files: AdapterFiles) -> str | None:
    """Why vLLM cannot read the adapter directory as it is (None when it can)."""
    config = files.config
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        return f"it is a {peft_type} adapter (vLLM loads LORA only)"
    if config.get("use_dora"):
        return "it uses DoRA (vLLM has no DoRA)"
    if files.has_masks:
        return "it is a LoRAPrune adapter whose pruning masks vLLM would ignore"
    if not uniform_scale(config, list(files.ranks)):
        return "its layers have different scales (rank_pattern/alpha_pattern), and vLLM applies one scale to all"
    return None


def vllm_argv(
    base_path: str | Path,
    served_model_name: str,
    host: str,
    port: int,
    adapters: dict[str, Path],
    max_loras: int,
    max_lora_rank: int,
    launcher: Sequence[str] = ("vllm", "serve"),
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The vLLM command line; ``launcher`` is what comes before the model path (``vllm serve``, or
    ``python -m vllm.entrypoints.openai.api_server --model``). Every adapter stays in CPU memory (``--max-cpu-loras``)."""
    argv = [*launcher, str(base_path), "--host", host, "--port", str(port)]
    argv += ["--served-model-name", served_model_name, "--enable-lora"]
    argv += ["--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank)]
    argv += ["--max-cpu-loras", str(max(max_loras, len(adapters)))]
    if adapters:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in adapters.items())]
    return argv + list(extra_args)


def lora_rank_limit(max_rank: int, requested: int | None = None) -> int:
    """``--max-lora-rank``: ``requested`` (one of vLLM's values) or the served maximum rounded up to one."""
    if requested is not None:
        if requested not in VLLM_LORA_RANKS:
            allowed = ", ".join(map(str, VLLM_LORA_RANKS))
            raise ValidationFailed(f"--max-lora-rank {requested} is not one vLLM accepts ({allowed})")
        return requested
    return vllm_max_lora_rank(max_rank) or VLLM_LORA_RANKS[-1]


# -- exports (cached under the data dir) ----------------------------------------------------------


def _fingerprint(row: Any, action: Action, rank: int | None) -> str:
    """Changes when the adapter's files or how it is exported change: the key of the cached export."""
    source = Path(row.path)
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(source.glob("*")) if p.is_file()]
    text = json.dumps([row.id, row.sha256, str(source), action, rank, stats])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def export_for_vllm(adapters: Any, row: Any, action: Action, rank: int | None, root: Path) -> tuple[Path, Any]:
    """Write ``row`` as a plain PEFT LoRA under ``root`` (or reuse the export of the same files); (dir, report).

    ``copy`` copies the directory, the exports go through ``AdapterService.export`` at ``rank``
    (an exact export passes :data:`EXACT_EXPORT_RANK`, so the SVD keeps every layer's true rank).
    Written aside and renamed into place: an interrupted export is never served.
    """
    from studio.variants.base import ExportReport

    key = _fingerprint(row, action, rank)
    target = root / f"adapter-{row.id}-{key}"
    mark = target / _EXPORT_MARK
    if mark.is_file():
        report = json.loads(mark.read_text())
        return target, ExportReport(
            **{k: report[k] for k in ("path", "ranks", "exact", "errors", "format", "output_error")}
        )
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"adapter-{row.id}-*"):  # older exports of files that changed since
        shutil.rmtree(stale, ignore_errors=True)
    partial = root / f".partial-{row.id}-{key}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    report = adapters.export(row.id, partial, as_lora_rank=None if action == "copy" else rank)
    report.path = str(target)
    if action == "copy":  # a copy is exactly the adapter; its ranks are in the files
        report.ranks = read_adapter_files(partial).ranks
    (partial / _EXPORT_MARK).write_text(json.dumps(report.as_dict(), indent=2))
    try:
        partial.rename(target)
    except OSError:
        if not mark.is_file():  # not another process that wrote the same export first
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return target, report


# -- the plan and the server ------------------------------------------------------------------------


def base_architecture(base_path: Path) -> str | None:
    """The base model's transformers architecture (``LlamaForCausalLM``), None when its config names none."""
    config = json.loads((Path(base_path) / "config.json").read_text())
    return (config.get("architectures") or [None])[0]


def served_base_name(base_model: str) -> str:
    """The base's ``"model"`` name for clients: the registry name, or a local directory's folder name."""
    from studio.models.base_models import is_local_reference

    return Path(base_model).expanduser().name if is_local_reference(base_model) else base_model


def plan_vllm_server(
    services: Any,
    base_model: str,
    host: str,
    port: int,
    max_loras: int | None = None,
    max_lora_rank: int | None = None,
    *,
    approximate_rank: int | None = None,
    launcher: Sequence[str] = ("vllm", "serve"),
    extra_args: Sequence[str] = (),
) -> VllmPlan:
    """Decide every registered adapter, export the servable ones (cached) and build the vLLM command line.

    ``services`` gives ``registry``, ``settings`` and ``adapters`` (:class:`AdapterService`).
    ``max_loras`` (adapters in one batch) defaults to the serving engine's slot count, capped by
    the served adapters; ``max_lora_rank`` defaults to the largest served rank rounded up to a value
    vLLM accepts. ``approximate_rank`` lets adapters whose plain-LoRA export is approximate (DoRA,
    MiSS, LoRAPrune) be served at that rank, each with its error in ``notes``.
    """
    from studio.models.base_models import resolve_base_model

    resolved = resolve_base_model(base_model, services.settings)
    if resolved.task != "causal-lm":
        raise StudioError(f"vLLM serves generative models; {base_model} is a {resolved.task} model")
    architecture = base_architecture(resolved.path)
    served_name = served_base_name(base_model)
    rows = services.adapters.list()
    names = safe_names(rows, reserved=[served_name])
    cap = lora_rank_limit(0, max_lora_rank) if max_lora_rank is not None else VLLM_LORA_RANKS[-1]
    if approximate_rank is not None and not 1 <= approximate_rank <= cap:
        raise ValidationFailed(f"the approximate export rank must be between 1 and --max-lora-rank {cap}")
    root = Path(services.settings.data_dir) / "serving" / "vllm"
    served: dict[str, Path] = {}
    ranks: dict[str, int] = {}
    refused: dict[str, str] = {}
    notes: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r.id):
        name = names[row.id]
        try:
            files = read_adapter_files(row.path) if row.base_model == base_model else None
        except StudioError:
            files = None
        decision = decide(row, files, base_model, architecture, approximate_rank)
        if decision.action == "refuse":
            refused[name] = decision.reason or "vLLM cannot serve it"
            continue
        if decision.action == "copy":
            rank = max(files.ranks.values(), default=1)
        elif decision.action == "export_exact":
            rank = EXACT_EXPORT_RANK
        else:
            rank = int(approximate_rank or 1)
        if decision.action == "copy" and rank > cap:
            refused[name] = f"its rank {rank} is above --max-lora-rank {cap}; {_LOWER_RANK_HINT}"
            continue
        path, report = export_for_vllm(services.adapters, row, decision.action, rank, root)
        problem = _after_export(path, architecture)
        exported_rank = max(report.ranks.values(), default=1)
        if problem is None and exported_rank > cap:  # an exact export keeps every layer's true rank
            problem = f"its rank {exported_rank} is above --max-lora-rank {cap}; {_LOWER_RANK_HINT}"
        if problem:
            refused[name] = problem
            continue
        served[name], ranks[name] = path, exported_rank
        if decision.action == "export_exact":
            notes[name] = f"re-exported exactly as a plain LoRA: {decision.reason}"
        elif decision.action == "export_approx":
            share = (
                ""
                if report.output_error is None
                else f"; its logits differ by {report.output_error:.2%} of the adapter's effect"
            )
            notes[name] = (
                f"APPROXIMATE plain-LoRA export at rank {rank} ({decision.reason}): max relative error per layer "
                f"{report.max_error:.2%}{share}"
            )
    limit = lora_rank_limit(max(ranks.values(), default=1), max_lora_rank)
    batch = max_loras if max_loras is not None else min(len(served), int(services.settings.serving_slots))
    if batch < 1 and max_loras is not None:
        raise ValidationFailed("--max-loras must be at least 1")
    batch = max(1, batch)
    argv = vllm_argv(resolved.path, served_name, host, port, served, batch, limit, launcher, extra_args)
    ids = {names[row.id]: row.id for row in rows}
    return VllmPlan(
        argv=argv,
        base_model=base_model,
        base_path=resolved.path,
        served_model_name=served_name,
        adapters=served,
        refused=refused,
        notes=notes,
        ids=ids,
        max_loras=batch,
        max_lora_rank=limit,
    )


def _after_export(path: Path, architecture: str | None) -> str | None:
    """Check the written directory as vLLM will read it (an export can name layers the config's patterns hid)."""
    files = read_adapter_files(path)
    outside = unsupported_targets(list(files.ranks), architecture)
    if outside:
        return f"it adapts {', '.join(outside[:3])}, which vLLM gives no LoRA layer for {architecture}"
    if _needs_export(files) is not None:  # never expected: the export writes plain LoRA at scale 1
        return f"its export is still not plain LoRA: {_needs_export(files)}"
    return None


def require_vllm() -> None:
    """Raise a StudioError saying how to install vLLM when it is not importable here."""
    if importlib.util.find_spec("vllm") is None:
        raise StudioError(
            f"vLLM is not installed: on a CUDA host run `{INSTALL_HINT}` (it brings its own CUDA build of torch), "
            "or use `studio serve --engine studio`, which runs on any CPU"
        )


def vllm_launcher() -> list[str]:
    """How to start vLLM here: its ``vllm`` script beside this Python (or on PATH), else its OpenAI server module."""
    script = Path(sys.executable).with_name("vllm")
    if script.is_file():
        return [str(script), "serve"]
    found = shutil.which("vllm")
    if found:
        return [found, "serve"]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]


def run_forwarding_signals(argv: Sequence[str], grace_s: float = 30.0) -> int:
    """Run ``argv`` in its own session and pass SIGINT, SIGTERM and SIGHUP on to it; returns its exit status.

    Its own session so that a Ctrl-C in the terminal reaches vLLM once (from us), not twice; if
    this process leaves for any other reason the child is terminated (killed after ``grace_s``).
    """
    proc = subprocess.Popen(list(argv), start_new_session=True)

    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    forwarded = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, forward) for s in forwarded}
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve_with_vllm(
    services: Any,
    host: str,
    port: int,
    *,
    base_model: str | None = None,
    approximate_rank: int | None = None,
    echo: Callable[[str], None] = print,
    run: Callable[[Sequence[str]], int] = run_forwarding_signals,
) -> int:
    """Start vLLM's OpenAI-compatible server on the base (default: ``settings.default_base_model``) and its adapters.

    Prints the plan (served adapters, refused ones with the reason) and runs vLLM until it ends;
    returns its exit status. Extra vLLM flags (``--gpu-memory-utilization 0.5``, ``--max-model-len``)
    come from ``STUDIO_VLLM_ARGS``; ``STUDIO_VLLM_APPROX_RANK`` is ``approximate_rank`` when it is not
    given (DoRA, MiSS and LoRAPrune adapters served through an approximate export at that rank).
    Raises a StudioError when vLLM is not installed.
    """
    require_vllm()
    base = base_model or services.settings.default_base_model
    extra = shlex.split(os.environ.get("STUDIO_VLLM_ARGS", ""))
    if approximate_rank is None and os.environ.get("STUDIO_VLLM_APPROX_RANK"):
        raw = os.environ["STUDIO_VLLM_APPROX_RANK"]
        if not raw.strip().isdigit():
            raise ValidationFailed(f"STUDIO_VLLM_APPROX_RANK={raw!r} is not a rank (a whole number such as 16)")
        approximate_rank = int(raw)
    plan = plan_vllm_server(
        services, base, host, port, approximate_rank=approximate_rank, launcher=vllm_launcher(), extra_args=extra
    )
    echo(plan.describe())
    return run(plan.argv)
