"""`studio adapters` (list) and `studio export ID --out DIR [--as-lora-rank R | --merged-model | --pruned-model | --user U]`."""

from __future__ import annotations

from pathlib import Path

import click

from studio.cli.common import table
from studio.errors import StudioError


def _services():
    """The adapter service of this CLI process, from the environment's settings."""
    from studio.cli.common import services

    return services().adapters


def _rank_summary(ranks: dict) -> str:
    values = [int(v) for v in (ranks or {}).values()]
    if not values:
        return "-"
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


@click.command("adapters")
@click.option("--variant", default=None, help="Only adapters of this variant.")
@click.option("--base-model", default=None, help="Only adapters of this base model.")
def adapters_cmd(variant: str | None, base_model: str | None) -> None:
    """List trained adapters."""
    rows = _services().list(variant=variant, base_model=base_model)
    shown = [
        {
            "id": row.id,
            "name": row.name,
            "variant": row.variant,
            "base": row.base_model,
            "ranks": _rank_summary(row.ranks),
            "params": f"{row.trainable_params:,}",
            "size": f"{row.size_bytes / 1e6:.2f} MB",
            "eval_loss": f"{row.metrics['eval_loss']:.4f}" if "eval_loss" in (row.metrics or {}) else "-",
            "created": row.created_at.strftime("%Y-%m-%d %H:%M") if row.created_at else "",
        }
        for row in rows
    ]
    click.echo(table(shown, ["id", "name", "variant", "base", "ranks", "params", "size", "eval_loss", "created"]))


@click.command("export")
@click.argument("adapter_id", type=int)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--as-lora-rank",
    type=click.IntRange(min=1),
    default=None,
    help="Write a plain LoRA of at most this rank (SVD, error reported; DyLoRA adapters are cut exactly).",
)
@click.option(
    "--merged-model",
    is_flag=True,
    help="Write the base model with the adapter merged into its weights (a standalone transformers model).",
)
@click.option(
    "--pruned-model",
    is_flag=True,
    help="LoRAPrune adapters: write the physically pruned model (LoRA merged in, pruned heads and channels removed).",
)
@click.option(
    "--user",
    default=None,
    help="Personalised (RecLoRA) adapters: write this user's adapter as a standard PEFT LoRA of rank K·r "
    "(a user the adapter does not know gets the mean gate).",
)
def export_cmd(
    adapter_id: int, out_dir: Path, as_lora_rank: int | None, merged_model: bool, pruned_model: bool, user: str | None
) -> None:
    """Export adapter ADAPTER_ID to a directory as a standard PEFT checkpoint (or a merged or pruned model)."""
    if sum([merged_model, pruned_model, as_lora_rank is not None, user is not None]) > 1:
        raise StudioError("--merged-model, --pruned-model, --as-lora-rank and --user are alternatives; choose one")
    if user is not None or _is_personalised(adapter_id):
        if user is None:
            raise StudioError(f"adapter {adapter_id} is personalised (RecLoRA): name the user with --user")
        from studio.cli.common import services

        done = services().personalised.export_user(adapter_id, user, out_dir)
        who = f"user {user!r}" if done.known_user else f"unknown user {user!r} (the mean gate)"
        click.echo(f"exported {who} of adapter {adapter_id} to {done.path} (a standard PEFT LoRA)")
        return
    if pruned_model:
        path = _services().export_pruned_model(adapter_id, out_dir)
        click.echo(f"wrote the pruned model of adapter {adapter_id} to {path} (see its README.md to load it)")
        return
    if merged_model:
        path = _services().export_merged_model(adapter_id, out_dir)
        click.echo(f"wrote the base model with adapter {adapter_id} merged in to {path}")
        return
    report = _services().export(adapter_id, out_dir, as_lora_rank=as_lora_rank)
    click.echo(f"exported adapter {adapter_id} to {report.path} ({report.format})")
    if as_lora_rank is not None:
        worst = max(report.errors, key=report.errors.get) if report.errors else "-"
        click.echo(
            f"plain LoRA at rank <= {as_lora_rank}: {len(report.ranks)} modules, "
            f"max relative Frobenius error {report.max_error:.3e} ({worst})"
        )
        if report.output_error is not None:
            click.echo(
                f"on fixed text the export's logits differ from the adapter's by {report.output_error:.2%} "
                "of the adapter's whole effect on the base model"
            )


def _is_personalised(adapter_id: int) -> bool:
    from studio.cli.common import services

    return services().registry.get_adapter(adapter_id).variant == "reclora"
