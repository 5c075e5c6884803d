"""Adapters kept along training carry the final adapter's class names and run settings.

Without them a kept adapter of a windowed classifier trained with ``window_loss="pooled_max"`` was
scored with mean pooling (the default when reproducibility.json is missing): a different classifier.
"""

from __future__ import annotations

import json

from studio.sequences.windows import saved_pooling
from studio.training.kept_adapters import PEFT_FILES, kept_steps, move_into_adapter, step_dir


def test_every_kept_adapter_gets_the_labels_and_run_settings(tmp_path):
    work, adapter = tmp_path / "job", tmp_path / "adapter"
    adapter.mkdir()
    for name in PEFT_FILES:
        (adapter / name).write_text(f"final {name}")
    (adapter / "labels.json").write_text(json.dumps(["mRNA", "lncRNA"]))
    repro = {"request": {"hyper": {"window_loss": "pooled_max"}}}
    (adapter / "reproducibility.json").write_text(json.dumps(repro))
    total, keep = 8, 2
    earlier = [step for step in kept_steps(total, keep) if step != total]
    for step in earlier:  # what the loop wrote while training: the variant's export only
        folder = step_dir(work / "kept_adapters", step)
        folder.mkdir(parents=True)
        for name in PEFT_FILES:
            (folder / name).write_text(f"step {step} {name}")

    kept = move_into_adapter(work, adapter, total, keep)

    assert [int(p.name.removeprefix("step-")) for p in kept] == earlier + [total]
    assert saved_pooling(adapter) == "max"
    for folder in kept:
        assert json.loads((folder / "labels.json").read_text()) == ["mRNA", "lncRNA"]
        assert saved_pooling(folder) == "max"
    assert (kept[0] / PEFT_FILES[1]).read_text() == f"step {earlier[0]} {PEFT_FILES[1]}"  # its own weights
    assert (kept[-1] / PEFT_FILES[1]).read_text() == f"final {PEFT_FILES[1]}"


def test_a_run_without_labels_or_settings_keeps_adapters_all_the_same(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name in PEFT_FILES:
        (adapter / name).write_text(name)
    kept = move_into_adapter(tmp_path / "job", adapter, total=4, keep=1)
    assert [p.name for p in kept] == ["step-000004"]
    assert sorted(p.name for p in kept[0].iterdir()) == sorted(PEFT_FILES)
