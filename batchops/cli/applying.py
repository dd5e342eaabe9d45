"""`apply` and `refresh`: the progress seam, confirmation, and the closing summary."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from batchops.cli import (
    EXIT_TIMED_OUT,
    _complete_files,
    _context,
    cli,
    job_option,
    json_option,
    plan_text,
    replace_option,
)
from batchops.errors import BatchopsError, Interrupted
from batchops.safetext import terminal
from batchops.views.text import plural, unknown_create_lines


class Seconds(click.ParamType):
    """A number of seconds: finite, and more than 0 (`positive`) or at least 0. A negative
    `--poll-interval` was taken, and `apply --wait` failed at its first sleep, its batch sent."""

    name = "seconds"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None):
        seconds = click.FLOAT.convert(value, param, ctx)
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if seconds < 0 or (self.positive and seconds == 0):
            self.fail(
                f"{value!r} must be {'more than' if self.positive else 'at least'} 0", param, ctx
            )
        return seconds


class CliProgress:
    """Fills the library's progress seam: notes as lines, a progress bar on a terminal."""

    def __init__(self, err: bool = False) -> None:
        self.err = err  # with --json, stdout is for the JSON alone
        self.tty = (sys.stderr if err else sys.stdout).isatty()
        self._bar = None
        self._done = 0

    def note(self, message: str) -> None:
        message = terminal(message)  # it may quote keys, data or the API's error messages
        if self._bar is None:
            click.echo(message, err=self.err)
            return
        # over the bar's line, then draw the bar again below
        click.echo("\r\033[K" + message, err=self.err)
        self._bar.render_progress()

    def waiting(self, done: int, total: int, in_flight: int) -> None:
        if not self.tty:
            click.echo(
                f"Waiting: {done:,}/{total:,} items done, {in_flight:,} in flight.", err=self.err
            )
            return
        if self._bar is None or self._bar.length != total:
            self._bar = click.progressbar(
                length=total,
                label="Items done",
                show_pos=True,
                show_eta=False,
                file=sys.stderr if self.err else None,
            )
            self._done = 0
        self._bar.update(done - self._done)
        self._done = done
        self._bar.render_progress()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.render_finish()


@cli.command()
@click.argument(
    "plan_file", required=False, type=click.Path(path_type=Path), shell_complete=_complete_files
)
@job_option
@click.option("--yes", "--auto-approve", "yes", is_flag=True, help="Apply without asking.")
@click.option("--wait", is_flag=True, help="Keep going until nothing is pending.")
@click.option("--timeout", type=Seconds(), default=None, help="With --wait: give up after SECONDS.")
@click.option(
    "--poll-interval",
    type=Seconds(positive=True),
    default=None,
    help="With --wait: seconds between polls [default: 5, 1 with --emulator].",
)
@click.option(
    "--lock-timeout",
    type=Seconds(),
    default=0.0,
    show_default=True,
    help="Wait this many seconds for another apply's lock.",
)
@replace_option
@json_option
@click.pass_context
def apply(
    ctx: click.Context,
    plan_file: Path | None,
    job_names: tuple[str, ...],
    yes: bool,
    wait: bool,
    timeout: float | None,
    poll_interval: float | None,
    lock_timeout: float,
    replace_items: tuple[str, ...],
    json_: bool,
) -> None:
    """Make it so: submit, retry, harvest, cancel and prune. Safe to re-run after any failure."""
    if plan_file is None and not yes and not sys.stdin.isatty():
        raise BatchopsError(
            "apply needs --yes (or --auto-approve) when standard input is not a terminal"
        )
    context = _context(ctx, remote=True)

    def confirm(the_plan) -> bool:
        click.echo(plan_text(the_plan, context.prices.source), err=json_)
        return _ask("\nApply this plan?", err=json_)

    progress = CliProgress(err=json_)
    if poll_interval is None:
        poll_interval = 1.0 if ctx.obj.get("use_emulator") else 5.0
    try:
        report = context.apply(
            job_names,
            plan_file=plan_file,
            wait=wait,
            timeout=timeout,
            poll_interval=poll_interval,
            lock_timeout=lock_timeout,
            confirm=None if (yes or plan_file) else confirm,
            progress=progress,
            replace_items=replace_items,
        )
    except Interrupted:
        progress.close()
        _name_in_flight(context)
        raise
    finally:
        progress.close()
    if not report.approved:
        click.echo("Apply cancelled: nothing was sent.", err=json_)
        ctx.exit(1)
    _finish(ctx, report, json_)


def _ask(question: str, err: bool = False) -> bool:
    """A yes/no question, no by default. The answer is awaited in short naps: a Ctrl-C delivered
    to another thread (the in-process emulator, a lease renewer) still stops us at once, where a
    blocking read would wait for Enter first."""
    import select

    click.echo(f"{question} [y/N]: ", nl=False, err=err)
    try:
        while not select.select([sys.stdin], [], [], 0.1)[0]:
            pass
    except (OSError, ValueError):  # not a real file (a test runner's input): just read it
        pass
    answer = sys.stdin.readline()
    if not answer:  # end of input
        click.echo("", err=err)
        raise click.exceptions.Abort()
    return answer.strip().lower() in ("y", "yes")


def _name_in_flight(context) -> None:
    """After a signal: which batches are still running remotely (nothing is lost with them)."""
    try:
        batches = context.in_flight()
        creates = context.unknown_creates()
    except Exception:  # the state could not be read: the signal's own message is enough
        return
    if batches:
        listed = ", ".join(f"{b.id} ({b.job}, {b.processing_status})" for b in batches)
        click.echo(
            f"Batches still in flight: {listed}. Run `batchops apply` again to harvest them.",
            err=True,
        )
    for line in unknown_create_lines(creates):
        click.echo(line, err=True)
    if not batches and not creates:
        click.echo("No batches in flight.", err=True)


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _finish(ctx: click.Context, report, json_: bool) -> None:
    """The closing summary and status table (or JSON), and the exit code: 1 on a problem or a
    failed item, else 3 when --timeout ran out with items still pending, else 0."""
    problems = list(report.problems)
    final = report.final_plan
    if final is not None and any(j.failed for j in final.jobs):
        failed = sum(len(j.failed) for j in final.jobs)
        where = "their errors are in the JSON report" if json_ else "see above"
        problems.append(f"{plural(failed, 'item')} failed ({where})")
    if json_:
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        _summary(report)
    if report.timed_out:
        pending = sum(j.counts["pending"] for j in final.jobs) if final is not None else 0
        what = f"{plural(pending, 'item')} still pending" if pending else "items still pending"
        line = f"timed out with {what}; run apply again to continue"
        if problems:
            problems.append(line)
        else:
            click.echo(f"Timed out: {what}; run `batchops apply` again to continue.", err=True)
            ctx.exit(EXIT_TIMED_OUT)
    if problems:
        raise BatchopsError(*problems)


def _summary(report) -> None:
    click.echo("")
    click.echo(
        f"Apply complete: {plural(report.submitted, 'request')} sent in "
        f"{plural(len(report.batches_created), 'batch')}, "
        f"{plural(len(report.harvested), 'batch')} harvested "
        f"({plural(report.results_stored, 'result')}), "
        f"{len(report.adopted)} adopted, {len(report.canceled)} cancelled, "
        f"{len(report.pruned)} pruned."
    )
    for path in report.outputs:
        click.echo(f"Wrote {terminal(_shown(path))}")
    final = report.final_plan
    if final is not None and final.jobs:
        click.echo("")
        from batchops.views.tables import job_counts_table

        click.echo(job_counts_table(final))
        failed = [(j.name, f) for j in final.jobs for f in j.failed]
        for name, f in failed[:20]:
            click.echo(f"  ! failed  {name}  {terminal(f.key)}  {terminal(f.message)}")
        if len(failed) > 20:
            click.echo(f"  … and {plural(len(failed) - 20, 'more failed item')}")


@cli.command()
@json_option
@click.pass_context
def refresh(ctx: click.Context, json_: bool) -> None:
    """Poll remote batches and harvest finished ones; send nothing."""
    context = _context(ctx, remote=True)
    report = context.refresh(progress=CliProgress(err=json_))
    if json_:
        click.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        if report.problems:
            raise BatchopsError(*report.problems)
        return
    for note in report.drift:
        click.echo(f"Drift: {terminal(note)}")
    click.echo(
        f"Refreshed: {plural(len(report.harvested), 'batch')} harvested "
        f"({plural(report.results_stored, 'result')}), {len(report.adopted)} adopted."
    )
    if report.problems:
        raise BatchopsError(*report.problems)
