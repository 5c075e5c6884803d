"""Refresh docs/screenshots/<tab>.png: every tab of a running studio at 1280x800, with Debian's Chromium.

    .venv/bin/python scripts/screenshots.py --url http://127.0.0.1:7860 [--out docs/screenshots] [--narrow]
        [--diagnostics nlora] [--tabs Merge Adapters] [--full-page]

Start the studio first (``studio run``); screenshots show whatever data it holds.
``--narrow`` also writes <tab>-narrow.png at 420x900 to check small windows; ``--full-page`` captures each tab's
whole page, not the first 800 px (e.g. the Evaluate tab's result down to its ROC curve and confusion matrix).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def tab_titles() -> list[str]:
    """Every tab of the studio, in display order, from the app's own list (a new tab is shot without an edit here)."""
    from app.main import tab_modules

    return [module.TITLE for module in tab_modules()]


TABS = tab_titles()


def slug(title: str) -> str:
    """'Jobs' -> 'jobs'."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def open_tab(page, title: str) -> bool:
    """Click a tab, through the "More tabs" menu when a narrow window hides it; False if absent."""
    tab = page.get_by_role("tab", name=title, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return True
    more = page.locator("#studio-tabs button[aria-label='More tabs']")
    if more.count() and more.first.is_visible():
        more.first.click()
        # Skip the hidden copies Gradio keeps for measuring (tabindex -1).
        item = page.locator("#studio-tabs button:not([tabindex='-1']):not([role=tab]):visible", has_text=title)
        if item.count():
            item.first.click()
            return True
        page.keyboard.press("Escape")
    return False


def pick_first(page, elem_id: str, settle_ms: int) -> None:
    """Choose the first option of a dropdown, if it has any (so charts show real data)."""
    page.locator(f"#{elem_id} input").click()
    options = page.locator("[role=option]")
    if options.count():
        options.first.click()
        page.wait_for_timeout(settle_ms)
    else:
        page.keyboard.press("Escape")


def pick_option(page, elem_id: str, text: str, settle_ms: int) -> bool:
    """Choose the first option of a dropdown whose label contains ``text``; False if none does."""
    page.locator(f"#{elem_id} input").click()
    options = page.locator("[role=option]", has_text=text)
    if not options.count():
        page.keyboard.press("Escape")
        return False
    options.first.click()
    page.wait_for_timeout(settle_ms)
    return True


def show_merge_form(page, settle_ms: int) -> None:
    """Fill the Merge form with two trained (not merged) adapters, as a user about to merge them would."""
    page.locator("#merge-adapters input").click()
    page.wait_for_timeout(500)
    for _ in range(2):
        options = page.locator("[role=option][aria-selected=false]").filter(has_not_text="merge,")
        if options.count():
            options.last.click()
            page.wait_for_timeout(300)
    page.keyboard.press("Escape")
    page.locator("#merge-weights textarea, #merge-weights input").first.fill("1, 1")
    page.wait_for_timeout(settle_ms)


def show_eval_result(page, settle_ms: int) -> None:
    """The Evaluate tab's result view of the newest finished comparison, from its picker down."""
    if not pick_option(page, "eval-job", "job #", settle_ms):
        return
    page.wait_for_function(
        "() => document.querySelector('#eval-chart .js-plotly-plot')", timeout=max(settle_ms * 10, 15_000)
    )
    page.evaluate("() => document.getElementById('eval-job').scrollIntoView({block: 'start'})")
    page.wait_for_timeout(settle_ms)


def capture_diagnostics(page, out_dir: Path, variant: str, settle_ms: int) -> Path | None:
    """The Adapters tab's per-module diagnostics and stage charts for an adapter of ``variant``."""
    if not pick_option(page, "adapters-selected", f"({variant})", settle_ms):
        return None
    chart = page.locator("#adapters-diagnostics")
    chart.scroll_into_view_if_needed()
    page.wait_for_timeout(settle_ms)
    path = out_dir / "adapters-diagnostics.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def capture(
    url: str,
    out_dir: Path,
    narrow: bool = False,
    settle_ms: int = 1500,
    diagnostics: str | None = None,
    tabs: list[str] | None = None,
    full_page: bool = False,
) -> list[Path]:
    """Click through the tabs (all, or ``tabs``) and screenshot each; returns the files written."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    sizes = [("", {"width": 1280, "height": 800})] + ([("-narrow", {"width": 420, "height": 900})] if narrow else [])
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for suffix, viewport in sizes:
            page = browser.new_page(viewport=viewport)
            page.goto(url, wait_until="load")
            page.wait_for_selector("#studio-tabs")
            for title in tabs or TABS:
                if not open_tab(page, title):
                    continue  # e.g. Evaluate where the eval job kind is not installed
                page.wait_for_timeout(settle_ms)
                if title == "Adapters":
                    pick_first(page, "adapters-selected", settle_ms)
                if title == "Merge":
                    show_merge_form(page, settle_ms)
                if title == "Evaluate":
                    show_eval_result(page, settle_ms)
                path = out_dir / f"{slug(title)}{suffix}.png"
                page.screenshot(path=str(path), full_page=full_page)
                written.append(path)
                if title == "Adapters" and diagnostics and not suffix:
                    extra = capture_diagnostics(page, out_dir, diagnostics, settle_ms)
                    written += [extra] if extra else []
            page.close()
        browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "screenshots")
    parser.add_argument("--narrow", action="store_true", help="also capture a 420 px wide window")
    parser.add_argument(
        "--diagnostics",
        metavar="VARIANT",
        help="also write adapters-diagnostics.png for the first adapter of this variant (e.g. nlora)",
    )
    parser.add_argument("--tabs", nargs="+", choices=TABS, help="only these tabs (default: all)")
    parser.add_argument("--full-page", action="store_true", help="the whole page of each tab, not the first 800 px")
    args = parser.parse_args()
    shots = capture(
        args.url, args.out, args.narrow, diagnostics=args.diagnostics, tabs=args.tabs, full_page=args.full_page
    )
    for path in shots:
        print(path)


if __name__ == "__main__":
    main()
