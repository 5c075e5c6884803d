"""A trained mixture on disk: ``mixture.json`` (experts in order + routing settings) and ``gates.safetensors``.

A mixture is not one LoRA (composition spec §2: not exportable as one adapter), so the bundle
keeps references to its experts rather than copies: each expert's adapter directory and, when
it is registered, its adapter id and name. Loading rebuilds the wrapper from a fresh base model
and the expert directories, then loads the routers (and the experts' weights when they were
trained, since the directories then no longer hold them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.composition.meteora import ExpertRef, MeteoRAModel
from studio.errors import StudioError

FORMAT = "meteora-mixture"
FORMAT_VERSION = 1
CONFIG_FILE = "mixture.json"
GATES_FILE = "gates.safetensors"


def save_bundle(mixture: MeteoRAModel, out_dir: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``mixture`` to ``out_dir``; ``extra`` (base model, gate loss weight, metrics...) goes into the JSON."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "experts": [ref.as_dict() for ref in mixture.refs],
        "top_k": mixture.top_k,
        "temperature": mixture.temperature,
        "strategy": mixture.context.strategy,
        "targets": list(mixture.targets),
        "train_experts": mixture.train_experts,
        "dropout": _dropout(mixture),
        "seed": mixture.seed,
        **(extra or {}),
    }
    state = {name: tensor.contiguous().cpu() for name, tensor in mixture.gate_state_dict().items()}
    save_file(state, str(out / GATES_FILE), metadata={"format": FORMAT})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return out


def read_config(bundle_dir: str | Path) -> dict[str, Any]:
    """The bundle's ``mixture.json``, checked to be a mixture this version can load."""
    path = Path(bundle_dir) / CONFIG_FILE
    if not path.is_file():
        raise StudioError(f"{bundle_dir} holds no {CONFIG_FILE}; is it a mixture bundle?")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT or int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise StudioError(f"{path} is not a mixture bundle this studio version can read")
    return config


def load_bundle(
    base_model: Any,
    bundle_dir: str | Path,
    resolve: Callable[[ExpertRef], str | Path] | None = None,
) -> MeteoRAModel:
    """Rebuild the mixture of ``bundle_dir`` on ``base_model`` (a fresh copy: its layers get wrapped).

    ``resolve``: maps an expert reference to its adapter directory (e.g. through the registry
    by ``adapter_id``, when adapters have moved); default: the stored path.
    """
    from safetensors.torch import load_file

    directory = Path(bundle_dir)
    config = read_config(directory)
    refs = [ExpertRef(**item) for item in config["experts"]]
    if resolve is not None:
        refs = [ExpertRef(path=str(resolve(ref)), name=ref.name, adapter_id=ref.adapter_id) for ref in refs]
    mixture = MeteoRAModel.from_adapters(
        base_model,
        refs,
        top_k=int(config["top_k"]),
        temperature=float(config["temperature"]),
        strategy=config.get("strategy", "auto"),
        train_experts=bool(config.get("train_experts", False)),
        dropout=float(config.get("dropout", 0.0)),
        seed=int(config.get("seed", 0)),
    )
    if list(mixture.targets) != list(config["targets"]):
        raise StudioError(f"the experts of {directory.name} no longer target the modules the gates were trained for")
    gates = load_file(str(directory / GATES_FILE), device=str(mixture.device))
    mixture.load_gate_state_dict(gates)
    return mixture


def _dropout(mixture: MeteoRAModel) -> float:
    layer = next(iter(mixture.gated.values())).dropout
    return float(getattr(layer, "p", 0.0))
