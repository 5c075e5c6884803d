"""Regenerate the variants table in README.md and docs/variants.md from the variant registry.

The table is never edited by hand: `python scripts/update_docs.py` rewrites the
part of README.md between the VARIANTS markers, and a test fails when the
README disagrees with the registry.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START, END = "<!-- VARIANTS:START -->", "<!-- VARIANTS:END -->"
MATRIX = "matrix"


def verification(name: str) -> str:
    """Which tests exercise a variant: the files that import its module or name it, plus the matrix."""
    own = sorted(
        p.name
        for p in (ROOT / "tests" / "variants").glob("test_*.py")
        if p.name != "test_matrix.py"
        and (f'"{name}"' in (text := p.read_text(encoding="utf-8")) or f"from studio.variants.{name} import" in text)
    )
    return ", ".join([MATRIX, *own])


def variants_table() -> str:
    """The Markdown table: name, what it does, paper, export, how it was verified."""
    from studio.variants.registry import variant_catalog

    lines = [
        "| name | variant | what it does | paper | plain-LoRA export | verified by |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for v in variant_catalog():
        paper = v["paper"]
        paper_cell = f"[{paper['year']}, arXiv:{paper['arxiv']}]({paper['url']})" if paper else "—"
        export = "exact" if v["export_exact"] else "approximate (SVD at a chosen rank)"
        summary = v["summary"].replace("|", "\\|")
        lines.append(
            f"| `{v['name']}` | {v['title']} | {summary} | {paper_cell} | {export} | {verification(v['name'])} |"
        )
    return "\n".join(lines)


def render_readme(text: str) -> str:
    """README text with the generated table between the markers."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{variants_table()}\n{END}{tail}"


def main() -> None:
    readme = ROOT / "README.md"
    readme.write_text(render_readme(readme.read_text(encoding="utf-8")), encoding="utf-8")
    print("README.md variants table updated")


if __name__ == "__main__":
    main()
