"""A biologist's whole sequence flow in a real browser, from the UI only: no adapter or encoder is seeded.

`studio run` starts on an empty data dir (its default base is a tiny random Llama, so start-up converts
nothing). In Chromium: the Datasets tab imports the lncRNA/mRNA sample (train and test files) and says it
found DNA with a proposed k-mer tokenizer; the Train tab's "Pre-train an encoder" section pre-trains a
tiny codon encoder with the coding-potential preset (a few steps); the Train tab then trains a LoRA
classifier on that encoder with the matching "Sequence classifier" preset; the Evaluate tab scores the
adapter on the test set beside the logistic-regression baseline. Every job runs on the studio's own
worker. The page must show the adapter's and the baseline's accuracy (equal to the stored result) and
one plain sentence saying whether their difference is real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from ui.tiny_model import save_tiny_llama

from e2e.test_eval_compare_browser import choose_many, stored_result, table_cells
from e2e.test_studio_browser import REPO, browser, choose, studio_process, wait_text  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

SAMPLE = REPO / "data" / "samples" / "lncrna_athaliana"
ENCODER = "dna-enc"
PRETRAIN_PRESET = "Coding potential (codons, 3 frames)"
CLASSIFIER_PRESET = "Sequence classifier (codons)"
PRETRAIN_STEPS = 20  # the recipe's 3,000, cut: the test checks the flow, not the encoder's quality
TRAIN_STEPS = 12  # the recipe's 640, cut likewise
BASELINE = "baseline logistic-regression"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e-seq")
    save_tiny_llama(root / "tiny-llama")  # the default base only: nothing of the flow uses it
    return root


@pytest.fixture(scope="module")
def studio_url(workspace):
    with studio_process(workspace, STUDIO_TORCH_THREADS="1") as url:
        yield url


def import_dataset(page, path: Path, name: str, rows: int) -> int:
    """Upload ``path`` in the Datasets tab, confirm the proposed columns, import it as ``name``; its id."""
    page.locator("#ds-upload input[type=file]").set_input_files(str(path))
    detected = wait_text(page, "ds-detected", "Looks like")
    # A sequence column is recognised and a nucleotide tokenizer proposed for it.
    assert "classification" in detected and f"{rows} rows" in detected, detected
    assert "DNA sequences" in detected and "3-mer tokenizer" in detected, detected
    # The proposed mapping is shown for confirmation: the sequences are the text, the label the label.
    assert page.locator("#ds-map-text input").input_value() == "sequence"
    assert page.locator("#ds-map-label input").input_value() == "label"
    page.locator("#ds-name textarea, #ds-name input").first.fill(name)
    page.locator("#ds-check").click()
    wait_text(page, "ds-report", f"All {rows} rows are valid")
    page.locator("#ds-import").click()
    line = wait_text(page, "ds-import-status", f"Imported dataset #\\d+ “{name}”: {rows} rows")
    wait_text(page, "ds-list", name)
    return int(re.search(r"#(\d+)", line).group(1))


def wait_job(page, job_id: str, timeout_s: float) -> str:
    """Pick the job in the Jobs tab and wait until it is over; its detail text, which must say succeeded."""
    page.get_by_role("tab", name="Jobs").click()
    choose(page, "jobs-selected", f"#{job_id} ")
    detail = wait_text(page, "jobs-detail", f"#{job_id} .*(succeeded|failed|cancelled)", timeout_s=timeout_s)
    assert "succeeded" in detail, detail + "\n" + page.locator("#jobs-logs textarea").input_value()
    return detail


def test_pretrain_classify_and_compare_with_the_baseline(studio_url, browser, workspace):  # noqa: F811 - fixture
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(studio_url, wait_until="load")
    page.wait_for_selector("#studio-tabs")

    # 1. Datasets: the training and the test sequences.
    train_id = import_dataset(page, SAMPLE / "train.jsonl", "lnc-train", 200)
    page.locator("#ds-upload button[aria-label='Clear']").click()  # the file area takes a new file
    test_id = import_dataset(page, SAMPLE / "test.jsonl", "lnc-test", 100)
    assert test_id != train_id

    # 2. Train tab, "Pre-train an encoder": the coding-potential preset, a few steps, on the training set.
    page.get_by_role("tab", name="Train").click()
    page.locator("#pretrain .label-wrap").first.click()
    choose(page, "pretrain-dataset", "lnc-train")
    picked = page.locator("#pretrain-dataset input").input_value()
    assert "dna in 'sequence'" in picked and "200 rows" in picked, picked
    choose(page, "pretrain-preset", PRETRAIN_PRESET)
    wait_text(page, "pretrain-preset-info", "protein-coding RNA")
    page.wait_for_function("() => document.querySelector('#pretrain-max-steps input')?.value === '3000'")
    page.locator("#pretrain-max-steps input").fill(str(PRETRAIN_STEPS))
    page.locator("#pretrain-name textarea, #pretrain-name input").first.fill(ENCODER)
    page.locator("#pretrain-estimate-button").click()
    estimate = wait_text(page, "pretrain-estimate", f"{PRETRAIN_STEPS} steps", timeout_s=120)
    assert "encoder tiny" in estimate, estimate
    page.locator("#pretrain-submit").click()
    queued = wait_text(page, "pretrain-status", "Queued pre-train job #\\d+")
    assert ENCODER in queued
    wait_job(page, re.search(r"#(\d+)", queued).group(1), timeout_s=240)

    # 3. Train tab: the new encoder is a base model; a LoRA classifier on it with the matching preset.
    page.get_by_role("tab", name="Train").click()  # selecting the tab lists the new base
    choose(page, "train-base", f"{ENCODER} (encoder")
    choose(page, "train-dataset", "lnc-train")
    page.locator("#train-preset label").filter(has_text=f"{CLASSIFIER_PRESET} —").click()
    page.locator("#train-advanced .label-wrap").first.click()
    page.wait_for_function("() => document.querySelector('#hp-max-steps input')?.value === '640'")
    page.locator("#hp-max-steps input").fill(str(TRAIN_STEPS))
    page.locator("#train-name textarea, #train-name input").first.fill("coding-lora")
    wait_text(page, "train-estimate", f"{TRAIN_STEPS} steps", timeout_s=120)
    page.locator("#train-submit").click()
    queued = wait_text(page, "train-status", "Queued training job #\\d+")
    detail = wait_job(page, re.search(r"#(\d+)", queued).group(1), timeout_s=300)
    adapter_id = re.search(r"Adapter #(\d+)", detail).group(1)

    # 4. Evaluate: the adapter alone (no base: an encoder has no answers of its own) on the test set,
    # beside the baseline fit on the adapter's training rows.
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-base textarea, #eval-base input").first.fill("")
    choose_many(page, "eval-adapters", [f"#{adapter_id} "])
    choose(page, "eval-dataset", "lnc-test")
    page.locator("#eval-include-baseline input[type=checkbox]").check()
    page.locator("#eval-submit").click()
    job_id = int(re.search(r"#(\d+)", wait_text(page, "eval-status", "Queued evaluation job #\\d+")).group(1))
    results = wait_text(page, "eval-results", f"{job_id}\\s+(succeeded|failed|cancelled)", timeout_s=180)
    assert re.search(f"{job_id}\\s+succeeded", results), results
    choose(page, "eval-job", f"job #{job_id} ")
    wait_text(page, "eval-comparison", "accuracy")

    adapter = f"adapter #{adapter_id}"
    headers, rows = table_cells(page, "eval-comparison")
    assert headers[:4] == ["metric", "better", adapter, BASELINE], headers
    shown = {row[0]: row for row in rows}
    assert "accuracy" in shown, rows
    accuracy = shown["accuracy"]
    assert accuracy[1] == "higher"

    # What the page shows is what the job stored.
    result = stored_result(workspace, job_id)
    metrics = {m["key"]: m["metrics"] for m in result["models"]}
    assert set(metrics) == {f"adapter:{adapter_id}", "baseline:logistic-regression"}, list(metrics)
    values = [float(cell.rstrip(" ★")) for cell in accuracy[2:4]]
    stored = [metrics[f"adapter:{adapter_id}"]["accuracy"], metrics["baseline:logistic-regression"]["accuracy"]]
    assert values == pytest.approx(stored, abs=1e-3), accuracy
    assert all(0.0 <= v <= 1.0 for v in values)
    assert any(cell.endswith("★") for cell in accuracy[2:4])  # the better of the two is marked

    # The paired block: its title and one sentence naming both models, on the 100 test rows.
    paired = wait_text(page, "eval-paired", "Is the difference real")
    sentences = [line for line in paired.splitlines() if " vs " in line]
    assert len(sentences) == 1, paired
    assert adapter in sentences[0] and BASELINE in sentences[0] and "on these 100 rows" in sentences[0], paired

    # The samples: the first test rows with the adapter's and the baseline's answers, as the job stored them.
    sample_headers, samples = table_cells(page, "eval-samples")
    assert sample_headers == ["prompt", "reference", adapter, BASELINE], sample_headers
    assert len(samples) == len(result["sample_table"]) > 0
    for row, sample in zip(samples, result["sample_table"], strict=True):
        assert row[1] == str(sample["reference"])
        for cell, key in zip(row[2:], [f"adapter:{adapter_id}", "baseline:logistic-regression"], strict=True):
            answer = sample["answers"][key]
            verdict = "correct" if answer["correct"] else "wrong"
            assert cell.split()[0] == str(answer["prediction"]) and f"[{verdict}]" in cell, (cell, answer)
    page.close()
