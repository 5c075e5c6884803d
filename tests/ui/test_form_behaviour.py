"""Forms that behave: one submission per click, notices that clear, estimates of valid input only,
and errors in plain words beside the form (no error badge over results, no traceback in the log).

Handlers are called as Gradio calls them: the built app's functions, by name, with the
components' values (no server, no browser).
"""

from __future__ import annotations

import json
import logging

import gradio as gr
import pytest

from app import tab_train
from app.ui import bind_submit, friendly, new_submission_token
from studio.errors import ValidationFailed
from studio.schema import MergeRequest


def write_rows(path, count=6):
    path.write_text("".join(json.dumps({"instruction": f"say {i}", "output": str(i)}) + "\n" for i in range(count)))
    return str(path)


@pytest.fixture
def dataset(services, tmp_path):
    return services.datasets.add(write_rows(tmp_path / "rows.jsonl"), name="rows")


@pytest.fixture
def demo(services):
    from app.main import build_app

    return build_app(services)


def handler(demo, name: str, output_elem_id: str):
    """The function Gradio runs for handler ``name`` that writes the component ``output_elem_id``."""
    for block_fn in demo.fns.values():
        if block_fn.name == name and any(getattr(o, "elem_id", None) == output_elem_id for o in block_fn.outputs):
            return block_fn
    raise AssertionError(f"no handler {name} writes #{output_elem_id}")


def call(block_fn, state: dict | None = None, **by_elem_id):
    """Run ``block_fn`` with each input's initial value, ``by_elem_id`` overriding; outputs keyed by elem_id.

    States (no elem_id) come from ``state`` by their position among the state inputs, else their default.
    """
    states = list(state or ())
    values = []
    for component in block_fn.inputs:
        if isinstance(component, gr.State):
            default = component.value() if callable(component.value) else component.value
            values.append(states.pop(0) if states else default)
        else:
            values.append(by_elem_id.get(component.elem_id, component.value))
    result = block_fn.fn(*values)
    return {getattr(c, "elem_id", None) or c: v for c, v in result.items()}


def info_of(update):
    return update.get("info") if isinstance(update, dict) else None


# Errors: plain words, a status line, one log line ------------------------------------------


def test_user_errors_become_plain_messages_and_log_one_line_without_a_traceback(caplog):
    def refuse():
        MergeRequest.model_validate({"adapter_ids": [1, 2], "weights": [1.0]})

    def upload_first():
        raise gr.Error("Upload a file first.")

    caplog.set_level(logging.INFO, logger="app.ui")
    with pytest.raises(gr.Error) as caught:
        friendly(refuse)()
    assert caught.value.message == "Weights: give one weight per adapter (1 given for 2 adapters)"
    assert caught.value.print_exception is False
    with pytest.raises(gr.Error) as caught:
        friendly(upload_first)()
    assert caught.value.print_exception is False  # Gradio would print its traceback otherwise
    assert [(r.levelname, r.exc_info) for r in caplog.records] == [("INFO", None), ("INFO", None)]
    assert "refused: Weights: give one weight per adapter" in caplog.records[0].getMessage()


def test_unexpected_errors_keep_their_traceback_in_the_log(caplog):
    def broken():
        raise RuntimeError("disk on fire")

    with pytest.raises(gr.Error, match="Something went wrong \\(disk on fire\\)"):
        friendly(broken)()
    [record] = caplog.records
    assert record.levelname == "ERROR" and record.exc_info is not None


def test_errors_to_writes_the_status_and_leaves_the_other_outputs_alone():
    def refuse(**_):
        raise ValidationFailed("Dataset: choose one")

    def stream(**_):
        yield {"status": "working"}
        MergeRequest.model_validate({"adapter_ids": []})

    assert friendly(refuse, errors_to="status")() == {"status": "⚠ Dataset: choose one"}
    assert list(friendly(stream, errors_to="status")()) == [
        {"status": "working"},
        {"status": "⚠ Adapter ids: needs at least 1 item"},
    ]


# One submission per click -------------------------------------------------------------------


def test_bind_submit_disables_the_button_while_it_runs_and_renews_the_token_after_success():
    made: list[str | None] = []

    def create(name: str, submission_token: str | None = None) -> dict:
        if not name:
            raise ValidationFailed("Name: is required")
        made.append(submission_token)
        return {"status": f"made {name}"}

    with gr.Blocks() as blocks:
        name = gr.Textbox(elem_id="name")
        button = gr.Button(elem_id="go")
        status = gr.Markdown(elem_id="status")
        token = gr.State(new_submission_token)
        bind_submit(button, create, {"name": name}, {"status": status}, "status", token)

    by_name = {f.name: f for f in blocks.fns.values()}
    disable, run, enable = by_name["_disabled"], by_name["create"], by_name["_enabled"]
    assert disable.targets == [(button._id, "click")] and disable.outputs == [button] and not disable.queue
    assert run.trigger_after == disable._id and run.trigger_mode == "once"
    # Re-enabled after a failure too (not only on success).
    assert enable.trigger_after == run._id and not enable.trigger_only_on_success and enable.outputs == [button]

    out = call(run, ["token-1"], name="a")
    assert out["status"] == "made a" and made == ["token-1"]
    fresh = out[token]
    assert isinstance(fresh, str) and fresh != "token-1"
    refused = call(run, ["token-2"], name="")
    assert refused == {"status": "⚠ Name: is required"}  # no token change: nothing was made
    assert made == ["token-1"]


def test_a_double_click_on_import_stores_one_dataset(services, demo, tmp_path):
    path = write_rows(tmp_path / "colors.jsonl")
    run = handler(demo, "import_file", "ds-import-status")
    needs_mapping = False  # the other state of the form, before its token
    first = call(run, [needs_mapping, "page-token"], **{"ds-upload": path})
    again = call(run, [needs_mapping, "page-token"], **{"ds-upload": path})  # the second click of a double click
    [row] = services.datasets.list()
    assert first["ds-import-status"] == again["ds-import-status"] == f"✓ Imported dataset #{row.id} “colors”: 6 rows."
    renewed = next(v for k, v in first.items() if isinstance(k, gr.State))
    call(run, [needs_mapping, renewed], **{"ds-upload": path})
    assert len(services.datasets.list()) == 2  # the renewed token: a deliberate second import


def test_a_double_click_on_start_training_queues_one_job(services, demo, dataset):
    run = handler(demo, "on_submit", "train-status")
    for _ in range(2):
        out = call(run, ["page-token"], **{"train-dataset": dataset.id})
        assert out["train-status"].startswith("✓ Queued training job #")
    assert len(services.jobs.list(kind="train")) == 1 and len(services.jobs.dispatcher.sent) == 1


# Notices that clear -------------------------------------------------------------------------


def test_train_notices_clear_once_the_dataset_is_chosen(services, demo, dataset):
    submit = handler(demo, "on_submit", "train-status")
    refused = call(submit, ["page-token"], **{"train-dataset": None})
    assert refused["train-status"] == tab_train.NEEDS_FIXING
    assert info_of(refused["train-dataset"]).startswith("⚠ Choose a dataset")
    show_problems = next(v for k, v in refused.items() if isinstance(k, gr.State))
    assert show_problems is True and services.jobs.list() == []

    recheck = handler(demo, "on_form_change", "train-status")
    dataset_dropdown = next(c for c in recheck.inputs if getattr(c, "elem_id", None) == "train-dataset")
    assert (dataset_dropdown._id, "change") in recheck.targets
    still = call(recheck, [True], **{"train-dataset": None})
    assert still["train-status"] == tab_train.NEEDS_FIXING
    fixed = call(recheck, [True], **{"train-dataset": dataset.id})
    assert fixed["train-status"] == ""
    assert info_of(fixed["train-dataset"]) == tab_train.TOP_INFO["dataset_id"]
    assert fixed["train-dataset"]["elem_classes"] == []
    # Before any refused submit nothing is flagged (no warnings on a form being filled in).
    assert call(recheck, [False], **{"train-dataset": None}) == gr.skip()  # every output left as it is


def test_a_field_fixed_after_a_refusal_loses_its_warning(demo, dataset):
    recheck = handler(demo, "on_form_change", "train-status")
    bad = call(recheck, [True], **{"train-dataset": dataset.id, "hp-batch-size": 0})
    assert bad["train-status"] == tab_train.NEEDS_FIXING and info_of(bad["hp-batch-size"]) == "⚠ must be at least 1"
    good = call(recheck, [True], **{"train-dataset": dataset.id, "hp-batch-size": 4})
    assert good["train-status"] == "" and not info_of(good["hp-batch-size"]).startswith("⚠")


# Estimates of valid input only --------------------------------------------------------------


def test_an_invalid_field_gets_what_to_fix_instead_of_an_estimate(services, dataset):
    text = tab_train.estimate_markdown(services, dataset.id, "smollm2-135m-instruct", {"max_steps": -5})
    assert text == "⚠ To see an estimate, fix max steps: must be at least 1."
    both = tab_train.estimate_markdown(services, dataset.id, None, {"max_steps": -5, "batch_size": 0})
    assert "max steps: must be at least 1" in both and "batch size: must be at least 1" in both
    assert "estimated" not in both and "steps**" not in both


# Merge and Evaluate: refusals beside the form, results kept ---------------------------------


def test_a_merge_refusal_is_a_status_line_and_the_results_table_is_untouched(services, demo):
    run = handler(demo, "on_submit", "merge-status")
    out = call(run, ["page-token"], **{"merge-adapters": [1, 2], "merge-weights": "1"})
    assert out == {"merge-status": "⚠ Weights: give one weight per adapter (1 given for 2 adapters)"}
    assert services.jobs.list() == []


def test_an_evaluate_refusal_is_a_status_line_and_the_results_table_is_untouched(services, demo):
    run = handler(demo, "on_submit", "eval-status")
    assert call(run, **{"eval-dataset": None}) == {"eval-status": "⚠ Choose a dataset to evaluate on."}


def test_a_double_click_on_evaluate_queues_one_job(services, dataset):
    from app import tab_evaluate

    options = {"metrics": ["loss"], "max_examples": 4}
    lines = [tab_evaluate.submit_eval(services, [], "tiny-base", dataset.id, options, "page-token") for _ in range(2)]
    assert lines[0] == lines[1] and len(services.jobs.list(kind="eval")) == 1
    tab_evaluate.submit_eval(services, [], "tiny-base", dataset.id, options, "renewed-token")
    assert len(services.jobs.list(kind="eval")) == 2  # a new token: a deliberate second evaluation
