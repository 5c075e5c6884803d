"""scripts/screenshots.py shoots every tab the studio shows (it listed 8 of the 12 by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_screenshot_script_knows_every_tab_in_display_order():
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {"Compose", "Transfer & Generate", "Federated", "Sweep", "System"} <= set(module.TABS)
    assert module.TABS[:3] == ["Datasets", "Train", "Jobs"] and module.TABS[-1] == "System"
    assert module.slug("Transfer & Generate") == "transfer-generate"
