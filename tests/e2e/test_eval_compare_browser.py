"""The Evaluate tab's comparison in a real browser: the base and two adapters of it, side by side.

Before `studio run` starts, its registry is seeded the way the CLI's `--inline` runs do it:
a dataset added through the dataset service and two adapters of a tiny random Llama trained
a few steps by training jobs run in this process. Then, in Chromium, one comparison of the
base and both adapters is submitted on the Evaluate tab, runs on the studio's own worker and,
once finished, is picked by the tab itself (no click); its result view must show every
model's column, a best mark per metric, a Δ vs the base per adapter, the bar chart and the
samples table with every model's answer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from ui.tiny_model import save_tiny_llama

from e2e.test_studio_browser import COLORS, browser, choose, studio_process, wait_text  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

EVAL_ROWS = len(COLORS)  # the first rows of the dataset: one question per colour
ADAPTERS = (("colors-short", 2), ("colors-long", 6))  # name, training steps


def seed_registry(data_dir: Path, base: Path, dataset_file: Path) -> dict:
    """Add the dataset and train the adapters with the studio's own services and job runner.

    Each training job is queued the normal way and run inline here (as `studio train --inline`
    does), so the studio started afterwards finds them finished and its worker skips them.
    """
    from studio.jobs.inline import run_job_inline
    from studio.schema import TrainingHyperParams, TrainRequest
    from studio.services.container import build_services
    from studio.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        database_url_override=None,
        broker_url_override=None,
        device="cpu",
        default_base_model=str(base),
        torch_threads=1,
    )
    services = build_services(settings)
    try:
        dataset = services.datasets.add(dataset_file)
        adapter_ids = []
        for name, steps in ADAPTERS:
            hyper = TrainingHyperParams(max_steps=steps, batch_size=8, learning_rate=1e-2, validation_fraction=0.0)
            request = TrainRequest(name=name, dataset_id=dataset.id, base_model=str(base), hyper=hyper)
            job = services.jobs.submit(request)
            job = run_job_inline(job.id, services.registry, settings, lambda i: services.jobs.wait(i, timeout=120))
            assert job.status == "succeeded", job.error
            adapter_ids.append(job.result["adapter_id"])
        return {"dataset_id": dataset.id, "adapter_ids": adapter_ids}
    finally:
        services.registry.dispose()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e-eval")
    save_tiny_llama(root / "tiny-llama")
    rows = [{"instruction": f"what color is the {thing}?", "output": color} for thing, color in COLORS.items()] * 4
    (root / "colors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def seeded(workspace) -> dict:
    return seed_registry(workspace / "data", workspace / "tiny-llama", workspace / "colors.jsonl")


@pytest.fixture(scope="module")
def studio_url(workspace, seeded):
    with studio_process(workspace, STUDIO_TORCH_THREADS="1") as url:
        yield url


def choose_many(page, elem_id: str, options: list[str]) -> None:
    """Add options to a Gradio multiselect: its list stays open between picks, Escape closes it."""
    page.locator(f"#{elem_id} input").click()
    for option in options:
        page.locator("[role=option]").filter(has_text=option).first.click()
    page.keyboard.press("Escape")


def table_cells(page, elem_id: str) -> tuple[list[str], list[list[str]]]:
    """The headers and body cells of a Gradio Dataframe, as shown."""
    return page.evaluate(
        """(id) => {
            const root = document.getElementById(id);
            const text = (el) => el.innerText.trim();
            const headers = [...root.querySelectorAll('thead th')].map(text);
            // The body is a virtual list of rows (the <tbody> only sizes the columns).
            const rows = [...root.querySelectorAll('.virtual-row')].map(
                row => [...row.querySelectorAll('[role=gridcell]')].map(text));
            return [headers, rows];
        }""",
        elem_id,
    )


def stored_result(workspace: Path, job_id: int) -> dict:
    """The finished job's result as the registry holds it (what the page must show)."""
    from models_db.registry import Registry

    registry = Registry.from_url(f"sqlite:///{workspace / 'data' / 'studio.db'}", migrate=False)
    try:
        return registry.get_job(job_id).result
    finally:
        registry.dispose()


def test_compare_base_and_two_adapters(studio_url, seeded, browser, workspace):  # noqa: F811 - the imported fixture
    base = str(workspace / "tiny-llama")
    first, second = seeded["adapter_ids"]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(studio_url, wait_until="load")
    page.wait_for_selector("#studio-tabs")

    page.get_by_role("tab", name="Evaluate").click()
    assert page.locator("#eval-base textarea, #eval-base input").first.input_value() == base
    choose_many(page, "eval-adapters", [f"#{first} ", f"#{second} "])
    choose(page, "eval-dataset", "colors")
    choose_many(page, "eval-metrics", ["exact_match", "rouge_l"])
    page.locator("#eval-max-examples input").first.fill(str(EVAL_ROWS))
    page.locator("#eval-submit").click()
    job_id = int(re.search(r"#(\d+)", wait_text(page, "eval-status", "Queued evaluation job #\\d+")).group(1))

    # The results list refreshes by itself and names the dataset; once the job has succeeded, the tab picks it
    # under "Result of" and draws its comparison without a click (nothing was picked by hand).
    results = wait_text(page, "eval-results", f"{job_id}\\s+(succeeded|failed|cancelled)", timeout_s=120)
    assert re.search(f"{job_id}\\s+succeeded", results), results
    assert f"#{seeded['dataset_id']} colors" in results, results
    wait_text(page, "eval-comparison", "★", timeout_s=30)
    picked = page.locator("#eval-job input").first.input_value()
    assert picked.startswith(f"job #{job_id} on dataset #{seeded['dataset_id']} colors"), picked

    result = stored_result(workspace, job_id)
    keys = [f"base:{base}", f"adapter:{first}", f"adapter:{second}"]
    assert [m["key"] for m in result["models"]] == keys
    metrics = {m["key"]: m["metrics"] for m in result["models"]}

    headers, rows = table_cells(page, "eval-comparison")
    columns = [f"base {Path(base).name}", f"adapter #{first}", f"adapter #{second}"]
    assert headers == ["metric", "better", *columns, f"Δ adapter #{first} vs base", f"Δ adapter #{second} vs base"]
    shown = {row[0]: row for row in rows}
    assert {"eval_loss", "perplexity", "exact_match", "rouge_l"} <= set(shown)
    for name in ("eval_loss", "perplexity", "exact_match", "rouge_l"):
        row = shown[name]
        values = [float(cell.rstrip(" ★")) for cell in row[2:5]]
        assert values == pytest.approx([metrics[k][name] for k in keys], rel=1e-3), row
        assert any(cell.endswith("★") for cell in row[2:5]), row  # the best model is marked
        for cell, key in zip(row[5:], keys[1:], strict=True):  # each adapter's signed difference to the base
            assert float(cell) == pytest.approx(metrics[key][name] - metrics[keys[0]][name], rel=1e-3, abs=1e-9), row
            assert cell[0] in "+-", row
    loss = shown["eval_loss"]
    assert loss[1] == "lower"
    # Trained a few steps at a high rate, the adapters' loss moved away from the base's.
    assert float(loss[5]) != 0 and float(loss[6]) != 0

    # One bar chart panel per metric, each with a bar per model.
    page.wait_for_function(
        "() => (document.querySelector('#eval-chart .js-plotly-plot')?.data || []).length > 0", timeout=30_000
    )
    bars = page.evaluate("() => document.querySelector('#eval-chart .js-plotly-plot').data.map(t => [...t.x])")
    assert bars and all(x == columns for x in bars)

    # The samples: each prompt with its reference and every model's answer and score.
    sample_headers, samples = table_cells(page, "eval-samples")
    assert sample_headers == ["prompt", "reference", *columns]
    assert len(samples) == len(result["sample_table"]) > 0
    for row, sample in zip(samples, result["sample_table"], strict=True):
        assert sample["reference"] in COLORS.values() and row[1] == sample["reference"]
        assert "what color is the" in row[0]
        for cell, key in zip(row[2:], keys, strict=True):
            answer = sample["answers"][key]
            assert cell.startswith(answer["prediction"].strip()), (cell, answer)
            assert f"exact_match {answer['exact_match']:.3g}" in cell and "rouge_l" in cell

    page.close()
