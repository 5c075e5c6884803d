"""Training presets, and the rough duration guess used when this machine cannot measure the run (pure functions).

The estimate shown before submit is measured on this machine (studio.training.duration);
:func:`estimate_seconds` is only the fallback for a GPU worker seen from a machine without one (or
when measuring fails).
"""

from __future__ import annotations

import math
from typing import Any

from studio.sequences.recipes import CODING_POTENTIAL, SEQUENCE_RECIPES

# Each preset sets a few hyperparameters and variant parameters by field name; a hyperparameter another
# preset sets goes back to its schema default (preset_hyper), everything else keeps its value.
# Variant fields a variant lacks are skipped.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Quick: a few minutes on the bundled 135M model on 2 busy CPU cores (docs/results/time_estimates.md):
    # short rows, and two validation passes over a fixed sample of 32 held-out rows, not the whole split.
    "Quick": {
        "hyper": {
            "max_steps": 20,
            "epochs": 1.0,
            "batch_size": 4,
            "grad_accum": 1,
            "max_length": 128,
            "learning_rate": 3e-4,
            "log_every": 2,
            "eval_every": 10,
            "max_eval_rows": 32,
            "save_every": 20,
        },
        "variant": {"r": 8, "lora_alpha": 16.0},
    },
    "Balanced": {
        "hyper": {
            "max_steps": None,
            "epochs": 1.0,
            "batch_size": 8,
            "grad_accum": 1,
            "max_length": 512,
            "learning_rate": 2e-4,
            "log_every": 5,
            "eval_every": 50,
            "max_eval_rows": None,
            "save_every": 100,
        },
        "variant": {"r": 16, "lora_alpha": 32.0},
    },
    "Thorough": {
        "hyper": {
            "max_steps": None,
            "epochs": 3.0,
            "batch_size": 8,
            "grad_accum": 2,
            "max_length": 1024,
            "learning_rate": 1e-4,
            "log_every": 10,
            "eval_every": 100,
            "max_eval_rows": None,
            "save_every": 200,
        },
        "variant": {"r": 32, "lora_alpha": 64.0},
    },
}
PRESET_HELP = {
    "Quick": "a short run to check everything works (a few minutes on a CPU)",
    "Balanced": "one pass over your data with a medium rank",
    "Thorough": "three passes, a higher rank and longer examples",
}
# A classifier on an encoder pre-trained with the matching pre-training preset (the Train tab's "Pre-train an
# encoder" section): the recipe's LoRA run, whose window_loss and head_learning_rate the text presets never set.
for _recipe in SEQUENCE_RECIPES.values():
    PRESETS[_recipe.classifier_preset] = {"hyper": dict(_recipe.train_hyper), "variant": dict(_recipe.variant)}
    PRESET_HELP[_recipe.classifier_preset] = (
        f"DNA/RNA labels on an encoder pre-trained below with the preset “{_recipe.name}” (pick it as Base model): "
        "one pooled loss per sequence, a head with its own learning rate"
    )
SEQUENCE_CLASSIFIER = CODING_POTENTIAL.classifier_preset


def preset_hyper(preset: str) -> dict[str, Any]:
    """The hyperparameters preset ``preset`` sets: every field some preset sets, at its value or the default.

    Switching presets then leaves nothing of the previous one behind (Quick's 128-token max_length would
    cut a sequence encoder's windows; the sequence preset's pooled loss must not stay on for a chat model).
    """
    from studio.schema import TrainingHyperParams

    fields = TrainingHyperParams.model_fields
    touched = dict.fromkeys(name for entry in PRESETS.values() for name in entry["hyper"])
    chosen = PRESETS[preset]["hyper"]
    return {name: chosen.get(name, fields[name].default) for name in touched}


# Rough training throughput in tokens per second for a ~135M-parameter model.
TOKENS_PER_SECOND = {"cpu": 800.0, "cuda": 25_000.0}
TYPICAL_TOKENS_PER_ROW = 200


def total_steps(rows: int, hyper: dict[str, Any]) -> int:
    """Optimizer steps a run will take (the same rule as the trainer: max_steps wins over epochs)."""
    if hyper.get("max_steps"):
        return int(hyper["max_steps"])
    train_rows = max(1, round(rows * (1 - float(hyper.get("validation_fraction") or 0.0))))
    per_step = max(1, int(hyper.get("batch_size") or 1) * int(hyper.get("grad_accum") or 1))
    return max(1, math.ceil(train_rows / per_step * float(hyper.get("epochs") or 1.0)))


def estimate_seconds(
    rows: int,
    hyper: dict[str, Any],
    device_type: str,
    model_params: float = 135e6,
    *,
    steps: int | None = None,
    tokens_per_example: float | None = None,
) -> float:
    """A rough wall-time guess: tokens to process / typical throughput of the device, scaled by model size.

    ``steps`` and ``tokens_per_example`` replace the row-based guesses where the run's shape is
    known (a sequence encoder's windows: steps over windows or sequences, a window's tokens or a
    whole sequence's windows per example).
    """
    steps = total_steps(rows, hyper) if steps is None else steps
    if tokens_per_example is None:
        tokens_per_row: float = min(int(hyper.get("max_length") or 512), TYPICAL_TOKENS_PER_ROW)
    else:
        tokens_per_row = tokens_per_example
    examples = steps * int(hyper.get("batch_size") or 1) * int(hyper.get("grad_accum") or 1)
    throughput = TOKENS_PER_SECOND.get(device_type, TOKENS_PER_SECOND["cpu"]) * 135e6 / max(model_params, 1e6)
    return 15.0 + examples * tokens_per_row / throughput  # 15 s: loading the model and data
