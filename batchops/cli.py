"""The `batchops` command line: a thin click layer over the library.

Each command parses options, calls one library function and formats what comes back. Every
expected failure is a BatchopsError, turned into `Error: ...` lines and exit 1 in `main` only.
"""

from __future__ import annotations

import sys

import click

from batchops.errors import BatchopsError


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """batchops: Anthropic Message Batches jobs as code, with plan and apply."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ---------------------------------------------------------------- emulator (owned by the emulator work)
@cli.group()
def emulator() -> None:
    """The local Message Batches API emulator."""


@emulator.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
def emulator_serve(host: str, port: int) -> None:
    """Serve the Message Batches API on HOST:PORT until interrupted."""
    from batchops.emulator import EmulatorConfig, serve

    serve(EmulatorConfig(host=host, port=port))


# ---------------------------------------------------------------- end of emulator section


def main() -> None:
    """Console entry point: run the CLI, turning BatchopsError into `Error:` lines and exit 1."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except BatchopsError as exc:
        if debug:
            raise
        for problem in exc.problems:
            click.echo(f"Error: {problem}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(1 if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
