"""`emulator serve`: the local Message Batches API."""

from __future__ import annotations

from pathlib import Path

import click

from batchops.cli import (
    cli,
)
from batchops.errors import BatchopsError


# ---------------------------------------------------------------- emulator (owned by the emulator work)
def _fault_rates(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    rates: dict[str, float] = {}
    for value in values:
        name, sep, rate = value.partition("=")
        try:
            rates[name.strip()] = float(rate)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"{value!r} is not OUTCOME=RATE, e.g. overloaded_error=0.05")
    return rates


@cli.group()
def emulator() -> None:
    """The local Message Batches API emulator."""


@emulator.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="0 picks a free port.")
@click.option(
    "--processing-seconds",
    default=1.0,
    show_default=True,
    type=float,
    help="How long each new batch stays in progress.",
)
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=float,
    help="Divides processing time; expiry and archive keep calendar time.",
)
@click.option(
    "--fault",
    "fault_rates",
    multiple=True,
    callback=_fault_rates,
    metavar="OUTCOME=RATE",
    help="Share of requests given an outcome: api_error, overloaded_error, "
    "timeout_error, rate_limit_error, invalid_request_error, expired, canceled.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for --fault choices.")
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file so batches survive a restart [default: in memory].",
)
@click.option("--api-key", default=None, help="Accept only this key [default: any non-empty key].")
@click.option(
    "--faults",
    type=click.Choice(["none", "markers", "demo"]),
    default="markers",
    show_default=True,
    help="none: no faults at all; markers: [[emulator:...]] markers and --fault rates; "
    "demo: also the README demo's rates.",
)
def emulator_serve(
    host: str,
    port: int,
    processing_seconds: float,
    speed: float,
    fault_rates: dict[str, float],
    seed: int,
    db_path: Path | None,
    api_key: str | None,
    faults: str,
) -> None:
    """Serve the Message Batches API on HOST:PORT until interrupted; prints the base URL."""
    from pydantic import ValidationError

    from batchops.emulator import serve
    from batchops.emulator.mode import serve_config

    try:
        config = serve_config(
            faults,
            host=host,
            port=port,
            processing_seconds=processing_seconds,
            speed=speed,
            fault_rates=fault_rates,
            seed=seed,
            db_path=db_path,
            api_key=api_key,
        )
    except ValidationError as exc:
        raise BatchopsError(
            *(f"{'.'.join(map(str, e['loc'])) or 'emulator'}: {e['msg']}" for e in exc.errors())
        ) from None
    serve(config, on_ready=lambda url: click.echo(url))


# ---------------------------------------------------------------- end of emulator section
