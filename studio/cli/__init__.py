"""The `studio` command. Each sub-command lives in its own module and goes through the services."""

from __future__ import annotations

import importlib
import sys

import click

from studio.errors import StudioError

# name -> "module:attribute". Adding a command is one line here.
COMMANDS = {
    "run": "studio.cli.run:run",
    "migrate": "studio.cli.migrate:migrate",
    "worker": "studio.cli.worker:worker",
    "status": "studio.cli.status:status",
    "variants": "studio.cli.variants:variants",
    "jobs": "studio.cli.jobs:jobs",
    "dataset": "studio.cli.dataset:dataset",
    "train": "studio.cli.train:train",
    "adapters": "studio.cli.adapters:adapters_cmd",
    "export": "studio.cli.adapters:export_cmd",
    "eval": "studio.cli.evaluate:eval_cmd",
    "merge": "studio.cli.merge:merge_cmd",
    "personalise": "studio.cli.personalise:personalise",
    "mix": "studio.cli.mix:mix_cmd",
    "serve": "studio.cli.serve:serve",
    "pretrain": "studio.cli.pretrain:pretrain",
    "generate": "studio.cli.generate:generate",
    "transfer": "studio.cli.transfer:transfer_cmd",
    "sweep": "studio.cli.sweep:sweep",
    "federated": "studio.cli.federated:federated",
}


class LazyGroup(click.Group):
    """Imports a sub-command only when it is used, so `studio --help` stays instant."""

    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._load(name) is not None)

    def get_command(self, ctx, name):
        return self._load(name)

    @staticmethod
    def _load(name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that command is not part of this installation yet
                return None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="adapter-studio")
def cli() -> None:
    """Adapter Studio: fine-tune language models with LoRA and its research variants."""


def main() -> None:
    """Console entry point: StudioErrors become one line on stderr and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except StudioError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
