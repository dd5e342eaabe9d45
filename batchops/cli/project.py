"""`init` and `schema`: scaffolding a project and the spec format for editors."""

from __future__ import annotations

from pathlib import Path

import click

from batchops.cli import (
    cli,
)


@cli.command()
@click.argument(
    "folder", required=False, default=".", type=click.Path(file_okay=False, path_type=Path)
)
def init(folder: Path) -> None:
    """Scaffold a project in FOLDER (default: here); overwrites nothing.

    Writes batchops.toml, an example job with data, spec.schema.json for editors,
    state/.gitignore and a pre-commit config running `batchops validate`.
    """
    from batchops.commands.init import init_project

    for path in init_project(folder):
        click.echo(f"Wrote {path}")
    click.echo(
        "\nTry it offline: batchops --emulator plan, then batchops --emulator apply --yes --wait."
    )


@cli.command()
def schema() -> None:
    """Print the spec format's JSON Schema (for editors: `batchops schema > spec.schema.json`).

    Point a TOML spec at it with a first line `#:schema ./spec.schema.json`, a JSON spec with
    a "$schema" key.
    """
    from batchops.spec.schema import shipped_schema

    click.echo(shipped_schema(), nl=False)
