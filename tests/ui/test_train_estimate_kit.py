"""Train tab: the time estimate follows the 'Keep a transfer kit' checkbox and says the kit's part apart."""

from __future__ import annotations

import json

from app import tab_datasets, tab_train

HYPER = {"max_steps": 2, "batch_size": 2, "validation_fraction": 0.0, "max_length": 64}


def chat_dataset(services, tmp_path) -> int:
    """A registered chat dataset of 6 rows (a kit can be made from it)."""
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(6)))
    tab_datasets.import_file(services, str(path), "chat", False, None)
    [dataset] = services.datasets.list()
    return dataset.id


def test_the_estimate_adds_the_kit_when_it_is_kept_and_drops_it_when_not(services, tmp_path, tiny_llama):
    dataset_id = chat_dataset(services, tmp_path)
    kept = tab_train.estimate_markdown(services, dataset_id, str(tiny_llama), HYPER)
    assert "measured on this machine:" in kept
    assert "for the transfer kit (measured on this machine:" in kept and "transfer kit after the last step" in kept
    skipped = tab_train.estimate_markdown(services, dataset_id, str(tiny_llama), HYPER, transfer_kit=False)
    assert "measured on this machine:" in skipped and "transfer kit" not in skipped
    # the rough guess (a base this machine cannot load) does not price the kit, and says so
    rough = tab_train.estimate_markdown(services, dataset_id, "/no/such/model", HYPER)
    assert "Rough estimate" in rough and "transfer kit made after training is not counted" in rough
    assert "transfer kit" not in tab_train.estimate_markdown(services, dataset_id, "/no/such/model", HYPER, False)
    assert "not in the time estimate" not in tab_train.KIT_COST  # the checkbox's help said so before


def test_the_estimate_says_it_is_measuring_before_the_step_is_timed(services, tmp_path, tiny_llama):
    """Timing a first step takes seconds on a CPU: the old 'Choose a dataset' line stood there meanwhile."""
    from ui.train_tab_handlers import build_train_tab, handler

    dataset_id = chat_dataset(services, tmp_path)
    block_fn = handler(build_train_tab(services), "on_estimate", "train-estimate")
    chosen = {"train-dataset": dataset_id, "train-base": str(tiny_llama)}
    values = [chosen.get(getattr(c, "elem_id", None), c.value) for c in block_fn.inputs]
    shown = [next(iter(update.values())) for update in block_fn.fn(*values)]
    assert shown[0] == tab_train.ESTIMATING and len(shown) == 2
    assert "measured on this machine:" in shown[1]
    # no dataset: the hint at once, no measuring line
    values = [
        None if getattr(c, "elem_id", None) == "train-dataset" else v
        for c, v in zip(block_fn.inputs, values, strict=True)
    ]
    assert [next(iter(u.values())) for u in block_fn.fn(*values)] == [
        "Choose a dataset to see how long training might take."
    ]
