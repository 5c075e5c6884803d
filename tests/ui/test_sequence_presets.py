"""The sequence recipe as presets: the pre-train section and the Train tab fill their widgets with the
recipe's values (studio/sequences/recipes.py), and the submitted jobs carry them.

Handlers are called as Gradio calls them: the built tab's functions, found by name and output, with the
components' values (no server, no browser).
"""

from __future__ import annotations

import pytest

from app import pretrain_section
from app.train_presets import PRESETS, SEQUENCE_CLASSIFIER, preset_hyper
from studio.schema import PretrainRequest, TrainingHyperParams
from studio.sequences.recipes import CODING_POTENTIAL, ROTARY_CODING_POTENTIAL
from ui.train_tab_handlers import add_lncrna_sample, build_train_tab, call, handler


@pytest.fixture
def sequences(services, tmp_path):
    """A registered dataset of 12 labelled lncRNA/mRNA sequences (the import detects the DNA column)."""
    return add_lncrna_sample(services, tmp_path)


@pytest.fixture
def demo(services):
    return build_train_tab(services)


def filled(outputs: dict) -> dict:
    """``{elem_id: value}`` of the widgets a handler set a value on (what the browser then shows)."""
    return {k: u["value"] for k, u in outputs.items() if isinstance(u, dict) and "value" in u}


def elem(prefix: str, field: str) -> str:
    return f"{prefix}-{field.replace('_', '-')}"


def train_preset_values(demo) -> list[str]:
    """The values the Train tab's preset radio offers."""
    [radio] = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "train-preset"]
    return [value for _, value in radio.choices]


@pytest.mark.parametrize("recipe", [CODING_POTENTIAL, ROTARY_CODING_POTENTIAL], ids=["bert", "roformer"])
def test_the_pretrain_preset_fills_the_form_and_the_job_gets_the_recipe(demo, services, sequences, recipe):
    preset = handler(demo, "on_preset", "pretrain-preset-info")
    assert pretrain_section.preset_choices() == [
        pretrain_section.DEFAULTS,
        CODING_POTENTIAL.name,
        ROTARY_CODING_POTENTIAL.name,
    ]
    out = call(preset, **{"pretrain-preset": recipe.name})
    assert out["pretrain-preset-info"] == recipe.purpose
    values = filled(out)
    assert values == {elem("pretrain", k): v for k, v in recipe.pretrain.items()}

    submit = handler(demo, "on_submit", "pretrain-status")
    done = call(submit, **values, **{"pretrain-dataset": sequences.id, "pretrain-name": "codon-enc"})
    assert done["pretrain-status"].startswith("✓ Queued pre-train job"), done["pretrain-status"]
    [job] = services.jobs.list(kind="pretrain")
    assert {k: job.request[k] for k in recipe.pretrain} == dict(recipe.pretrain)
    assert job.request["architecture"] == recipe.pretrain["architecture"]

    # Defaults puts every field the recipe set back to the schema's default.
    back = call(preset, **{"pretrain-preset": pretrain_section.DEFAULTS})
    defaults = {elem("pretrain", k): PretrainRequest.model_fields[k].default for k in recipe.pretrain}
    assert filled(back) == defaults and back["pretrain-preset-info"] == pretrain_section.DEFAULTS_INFO


def test_the_rotary_classifier_preset_sets_its_own_head_rate(demo):
    preset = handler(demo, "on_preset", "hp-window-loss")
    name = ROTARY_CODING_POTENTIAL.classifier_preset
    assert name in train_preset_values(demo) and name != SEQUENCE_CLASSIFIER
    values = filled(call(preset, **{"train-preset": name, "train-variant": "lora"}))
    assert values["hp-head-learning-rate"] == 0.02 and values["hp-max-steps"] == 2560
    back = filled(call(preset, **{"train-preset": SEQUENCE_CLASSIFIER, "train-variant": "lora"}))
    assert back["hp-head-learning-rate"] == CODING_POTENTIAL.train_hyper["head_learning_rate"]


def test_the_train_preset_fills_hyper_and_variant_widgets(demo):
    preset = handler(demo, "on_preset", "hp-window-loss")
    assert SEQUENCE_CLASSIFIER in train_preset_values(demo)
    values = filled(call(preset, **{"train-preset": SEQUENCE_CLASSIFIER, "train-variant": "lora"}))
    for field, value in CODING_POTENTIAL.train_hyper.items():
        assert values[elem("hp", field)] == value, field
    for field, value in CODING_POTENTIAL.variant.items():
        assert values[elem("vp-lora", field)] == value, field
    # Fields the recipe leaves out go to the schema default, not what the last preset left (Quick's 128 tokens).
    assert values["hp-max-length"] == TrainingHyperParams.model_fields["max_length"].default
    # Every preset sets only real widgets (a missing one would raise here), and Quick undoes the pooled loss.
    for name in PRESETS:
        assert {k.removeprefix("hp-") for k in filled(call(preset, **{"train-preset": name}))} >= {
            f.replace("_", "-") for f in preset_hyper(name)
        }
    quick = filled(call(preset, **{"train-preset": "Quick"}))
    assert quick["hp-window-loss"] == "per_window" and quick["hp-head-learning-rate"] is None


def test_submitting_with_the_sequence_preset_queues_its_hyperparameters(demo, services, sequences):
    values = filled(call(handler(demo, "on_preset", "hp-window-loss"), **{"train-preset": SEQUENCE_CLASSIFIER}))
    submit = handler(demo, "on_submit", "train-status")
    form = {"train-dataset": sequences.id, "train-base": "codon-enc", "train-variant": "lora"}
    out = call(submit, **values, **form)
    assert out["train-status"].startswith("✓ Queued training job"), out["train-status"]
    [job] = services.jobs.list(kind="train")
    hyper = TrainingHyperParams.model_validate(job.request["hyper"])
    assert hyper.window_loss == "pooled_max"
    assert hyper.head_learning_rate == CODING_POTENTIAL.train_hyper["head_learning_rate"]
    assert {k: getattr(hyper, k) for k in CODING_POTENTIAL.train_hyper} == dict(CODING_POTENTIAL.train_hyper)
    assert {k: job.request["variant_params"][k] for k in CODING_POTENTIAL.variant} == dict(CODING_POTENTIAL.variant)
    assert job.request["variant"] == "lora" and job.request["base_model"] == "codon-enc"


def test_the_auto_task_is_the_datasets_so_the_worker_trains_a_classifier(demo, services, sequences):
    """Task left at "auto" on a classification dataset: the queued job is a classification job.

    The stored request holds every field; an unresolved auto task reached the worker as an explicit
    causal-lm, and a LoRA run on a pre-trained sequence encoder failed ("dna-enc is an encoder model").
    """
    from studio.schema import parse_request
    from studio.training.setup import TrainingData, resolve_task

    out = call(handler(demo, "on_submit", "train-status"), **{"train-dataset": sequences.id, "train-base": "dna-enc"})
    assert out["train-status"].startswith("✓ Queued training job"), out["train-status"]
    [job] = services.jobs.list(kind="train")
    assert job.request["task"] == "classification"
    request = parse_request(job.request)  # as the worker reads it
    assert resolve_task(request, TrainingData.from_row(sequences), services.settings.data_dir) == "classification"
