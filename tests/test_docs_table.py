"""The README's variants table is generated from the registry and must not drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_variants_table_matches_registry():
    from studio.variants.registry import variant_names

    script = _script()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert script.render_readme(readme) == readme, "run `python scripts/update_docs.py` and commit README.md"
    for name in variant_names():
        assert f"| `{name}` |" in readme
