"""`studio variants`: the variant registry (the same data the UI and the docs table use)."""

from __future__ import annotations

import json

import click

from studio.cli.common import table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Name, description, paper and parameter schema as JSON.")
def variants(as_json: bool) -> None:
    """List the LoRA variants this studio can train."""
    from studio.variants.registry import variant_catalog

    catalog = variant_catalog()
    if as_json:
        click.echo(json.dumps(catalog, indent=2))
        return
    rows = [
        {
            "name": v["name"],
            "title": v["title"],
            "paper": f"{v['paper']['year']} arXiv:{v['paper']['arxiv']}" if v["paper"] else "",
            "summary": v["summary"],
        }
        for v in catalog
    ]
    click.echo(table(rows, ["name", "title", "paper", "summary"]))
