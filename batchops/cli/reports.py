"""`status` and `results`: where jobs stand, and their answers."""

from __future__ import annotations

import io
import stat
import sys
from pathlib import Path

import click

from batchops.cli import (
    _complete_formats,
    _complete_jobs,
    _echo_json,
    _offline_context,
    cli,
    job_option,
    json_option,
    money,
)
from batchops.views.text import plural, unknown_create_lines


@cli.command()
@job_option
@json_option
@click.pass_context
def status(ctx: click.Context, job_names: tuple[str, ...], json_: bool) -> None:
    """Where each job stands and what it cost, as of the last apply or refresh (offline)."""
    from batchops.commands.status import duration
    from batchops.commands.status import status as job_status

    report = job_status(_offline_context(ctx), job_names)
    if json_:
        _echo_json(report.to_dict())
        return
    from batchops.views.tables import in_flight_table, status_table

    click.echo(status_table(report))
    for j in report.jobs:
        if j.cost_note:
            click.echo(f"Note: {j.name}: {j.cost_note}")
    estimate = money(report.expected_cost_usd)
    if round(report.estimated_cost_usd, 4) != round(report.expected_cost_usd, 4):
        estimate += f" (up to {money(report.estimated_cost_usd)})"
    click.echo(
        f"\nActual cost {money(report.actual_cost_usd)} of an estimated {estimate}, "
        "every item sent, at batch prices."
    )
    if report.actual_cost_usd:
        from batchops.views.tables import cost_parts_table

        click.echo("\nActual cost by what was billed:")
        click.echo(cost_parts_table(report))
    if report.batches_in_flight:
        click.echo("\nBatches in flight:")
        click.echo(in_flight_table(list(report.batches_in_flight), duration))
    if report.unknown_creates:
        click.echo("")
        for line in unknown_create_lines(report.unknown_creates):
            click.echo(line)
    if not report.batches_in_flight and not report.unknown_creates:
        click.echo("\nNo batches in flight.")
    expiry = report.next_result_expiry
    if expiry is not None:
        click.echo(
            f"\nNearest remote result expiry: batch {expiry.batch_id} ({expiry.job}), "
            f"{expiry.results_expire_at:%Y-%m-%d %H:%M} UTC, in {duration(expiry.in_seconds)}."
        )
    else:
        click.echo("\nNo harvested results are held remotely.")


@cli.command()
@click.argument("job", shell_complete=_complete_jobs)
@click.option(
    "--format",
    "fmt",
    default="jsonl",
    show_default=True,
    metavar="jsonl|csv|json",
    shell_complete=_complete_formats,
    help="Output format (csv has no full message column).",
)
@click.option(
    "-o",
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    help="Write to FILE (atomically; a symlink, pipe or device is written through) instead of"
    " standard output.",
)
@click.option("--failed", "failed_only", is_flag=True, help="Only failed items, with their errors.")
@click.option(
    "--columns",
    "columns",
    metavar="A,B",
    default=None,
    help="Parse each answer's JSON (a tool call's input, else its text) into these columns "
    "(default: the spec's output.columns); answers that do not parse get a parse_error.",
)
@click.option(
    "--input-columns",
    "input_columns",
    metavar="A,B",
    default=None,
    help="Echo only these input fields ('' for none; default: all).",
)
@click.option("--thinking", is_flag=True, help="Add a thinking column (the answer's thinking).")
@click.option(
    "--raw-csv",
    is_flag=True,
    help="Write CSV cells as they are: no ' before a cell starting with = + - @ "
    "(which a spreadsheet would run as a formula).",
)
@click.pass_context
def results(
    ctx: click.Context,
    job: str,
    fmt: str,
    out_file: Path | None,
    failed_only: bool,
    columns: str | None,
    input_columns: str | None,
    thinking: bool,
    raw_csv: bool,
) -> None:
    """Export JOB's current results joined to its input rows, one row per input key.

    CSV cells starting with = + - @ (a formula to a spreadsheet) get a leading ' unless
    --raw-csv.
    """
    from batchops.commands.results import export, export_options

    context = _offline_context(ctx)
    options = export_options(context, job, columns, input_columns, thinking=thinking)
    target = out_file if out_file is not None else sys.stdout.buffer
    summary = export(
        context, job, fmt, target, failed_only=failed_only, raw_csv=raw_csv, options=options
    )
    if out_file is not None:
        click.echo(
            f"Wrote {plural(summary.rows, 'row')} of {job} to {out_file} ({fmt}).",
            err=_is_a_stream(out_file),
        )
    if summary.parse_errors:
        click.echo(
            f"Note: {plural(summary.parse_errors, 'answer')} did not parse as JSON with the "
            "asked columns (see parse_error).",
            err=True,
        )


def _is_a_stream(path: Path) -> bool:
    """Whether `path` is no regular file (a pipe, a terminal: `-o /dev/stdout`) or is this
    process's standard output: what is written there is the reader's, and the line saying it
    was written goes to standard error."""
    import os

    try:
        written = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(written.st_mode):
        return True
    try:
        return os.path.samestat(written, os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
