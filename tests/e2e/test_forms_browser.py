"""Forms in a real browser: a double click imports one dataset; the Train tab's notices clear when fixed.

Runs `studio run` without a worker (nothing is trained), like test_login_browser.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e.test_studio_browser import browser, choose, studio_process, wait_text, workspace  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def forms_url(workspace):  # noqa: F811 - the imported fixture
    with studio_process(workspace, STUDIO_EMBEDDED_WORKER="false") as url:
        yield url


def open_studio(browser, url):  # noqa: F811 - the imported fixture
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url, wait_until="load")
    page.wait_for_selector("#studio-tabs")
    return page


def upload(page, path) -> None:
    page.locator("#ds-upload input[type=file]").set_input_files(str(path))
    wait_text(page, "ds-detected", "Detected")
    page.wait_for_selector("#ds-import:not([disabled])")


def stored_datasets(root: Path, name: str) -> list[int]:
    """The ids of the datasets called ``name`` in the registry of the studio run in ``root``."""
    from models_db.registry import Registry
    from studio.settings import Settings

    registry = Registry.from_url(Settings(data_dir=root / "data").database_url, migrate=False)
    try:
        return [row.id for row in registry.list_datasets() if row.name == name]
    finally:
        registry.dispose()


def test_a_double_click_on_import_creates_one_dataset(forms_url, browser, workspace):  # noqa: F811
    page = open_studio(browser, forms_url)
    page.locator("#ds-name input, #ds-name textarea").first.fill("double")
    upload(page, workspace / "colors.jsonl")
    page.locator("#ds-import").dblclick()
    status = wait_text(page, "ds-import-status", "Imported dataset #\\d+")
    assert "“double”" in status
    # Let a second submission, if one got through, finish; then read the list as a fresh page does.
    page.wait_for_selector("#ds-import:not([disabled])")
    page.wait_for_timeout(2000)
    page.reload(wait_until="load")
    assert wait_text(page, "ds-list", "double").count("double") == 1
    assert len(stored_datasets(workspace, "double")) == 1
    page.close()


def test_train_notices_clear_after_the_dataset_is_chosen(forms_url, browser, workspace):  # noqa: F811
    page = open_studio(browser, forms_url)
    page.locator("#ds-name input, #ds-name textarea").first.fill("notices")
    upload(page, workspace / "colors.jsonl")
    page.locator("#ds-import").click()
    wait_text(page, "ds-import-status", "Imported dataset #\\d+")

    page.get_by_role("tab", name="Train").click()
    page.locator("#train-submit").click()
    wait_text(page, "train-status", "Some settings need fixing")
    wait_text(page, "train-dataset", "⚠ Choose a dataset")

    choose(page, "train-dataset", "notices")
    page.wait_for_function(
        "() => !/Some settings need fixing/.test(document.getElementById('train-status')?.innerText || '')"
        " && !/⚠/.test(document.getElementById('train-dataset')?.innerText || '')",
        timeout=30_000,
    )
    assert "Rows to learn from" in page.locator("#train-dataset").inner_text()
    page.close()


def test_a_refusal_reads_as_words_beside_the_form_with_no_traceback_in_the_log(forms_url, browser, workspace):  # noqa: F811
    page = open_studio(browser, forms_url)
    page.get_by_role("tab", name="Merge").click()
    page.locator("#merge-submit").click()
    assert wait_text(page, "merge-status", "⚠").startswith("⚠ Adapters: choose the adapters to merge")
    # The results table keeps its content: no red Error badge replaces it.
    assert page.locator("#merge-results .error").count() == 0
    page.wait_for_selector("#merge-submit:not([disabled])")
    page.close()
    logs = "".join(path.read_text() for path in workspace.glob("studio-*.log"))
    assert "Adapters: choose the adapters to merge" in logs and "Traceback" not in logs


def test_a_variants_settings_stack_without_gaps(forms_url, browser):  # noqa: F811
    """The variant's settings (a column) once took the grid's 250px flex-basis as each field's height."""
    page = open_studio(browser, forms_url)
    page.get_by_role("tab", name="Train").click()
    page.get_by_text("Advanced settings").click()
    heights = {}
    for elem_id in ("vp-lora-r", "vp-lora-lora-alpha", "vp-lora-lora-dropout"):  # LoRA's own settings
        field = page.locator(f"#{elem_id}")
        field.wait_for()
        heights[elem_id] = field.bounding_box()["height"]
    # A slider field with its label and help line is ~90px tall; the bug made each one 250px.
    assert max(heights.values()) < 160, heights
    page.close()
