"""The `batchops` command line: a thin click layer over the library.

Each command parses options, calls one library function and formats what comes back. Every
expected failure is a BatchopsError, turned into `Error: ...` lines and exit 1 in `main` only.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import click
import orjson
from tabulate import tabulate

from batchops import __version__
from batchops.context import Context, Settings
from batchops.errors import BatchopsError, BudgetExceeded
from batchops.report import money, plan_json, plan_markdown, plan_text


class BatchopsGroup(click.Group):
    """Turns every BatchopsError into `Error:` lines on stderr and exit 1 (tracebacks with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BatchopsError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            for problem in exc.problems:
                click.echo(f"Error: {problem}", err=True)
            ctx.exit(1)


@click.group(cls=BatchopsGroup)
@click.option("--jobs", "jobs_path", type=click.Path(path_type=Path), envvar="BATCHOPS_JOBS",
              default=Path("jobs"), show_default=True, help="Spec file or folder of specs.")
@click.option("--state", "state_path", type=click.Path(path_type=Path), envvar="BATCHOPS_STATE",
              default=None, help="State file [default: state/batchops.db, or state/emulator.db with --emulator].")
@click.option("--prices", "prices_file", type=click.Path(path_type=Path), envvar="BATCHOPS_PRICES",
              default=None, help="A price table overriding the shipped one.")
@click.option("--emulator", "use_emulator", is_flag=True,
              help="Run against the built-in emulator, started in-process on loopback.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="batchops")
@click.pass_context
def cli(ctx: click.Context, jobs_path: Path, state_path: Path | None, prices_file: Path | None,
        use_emulator: bool, debug: bool) -> None:
    """batchops: Anthropic Message Batches jobs as code, with plan and apply."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    default_state = Path("state/emulator.db" if use_emulator else "state/batchops.db")
    ctx.obj["settings"] = Settings(
        jobs_path=jobs_path, state_path=state_path or default_state, prices_file=prices_file
    )
    ctx.obj["use_emulator"] = use_emulator


def _context(ctx: click.Context, *, remote: bool = False) -> Context:
    """The library Context for this invocation; with --emulator and `remote`, start the emulator."""
    settings: Settings = ctx.obj["settings"]
    if remote and ctx.obj.get("use_emulator") and settings.base_url is None:
        from batchops.emulator import running_emulator

        from batchops.emulator_mode import emulator_config_for

        settings.base_url = ctx.with_resource(running_emulator(emulator_config_for(settings.state_path)))
        settings.api_key = "batchops-emulator"
    return Context(settings)


def job_option(f):
    return click.option("--job", "job_names", multiple=True, metavar="NAME",
                        help="Only this job (repeatable).")(f)


def json_option(f):
    return click.option("--json", "json_", is_flag=True, help="Machine-readable JSON output.")(f)


@cli.command()
@job_option
@json_option
@click.pass_context
def validate(ctx: click.Context, job_names: tuple[str, ...], json_: bool) -> None:
    """Parse and check every spec and render every item (no network, no state)."""
    context = _context(ctx)
    jobs = context.validate(job_names)
    if json_:
        click.echo(orjson.dumps({"valid": True, "jobs": [asdict(j) for j in jobs]},
                                option=orjson.OPT_INDENT_2).decode())
        return
    rows = [[j.name, j.spec_file, j.source, j.items, j.model or "(per request)",
             money(j.estimated_cost_usd)] for j in jobs]
    click.echo(tabulate(rows, headers=["job", "spec", "source", "items", "model", "est. cost"],
                        colalign=("left", "left", "left", "right", "left", "right")))
    for j in jobs:
        if j.cost_note:
            click.echo(f"Note: {j.name}: {j.cost_note}")
    total = sum(j.items for j in jobs)
    click.echo(f"\nValid: {len(jobs)} jobs, {total} items.")


@cli.command()
@job_option
@json_option
@click.option("--markdown", is_flag=True, help="Markdown for a pull-request comment.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes.")
@click.option("--no-refresh", is_flag=True, help="Stay offline: use recorded remote state.")
@click.option("-o", "--out", "out_file", type=click.Path(path_type=Path), help="Save the plan to apply it later.")
@click.pass_context
def plan(ctx: click.Context, job_names: tuple[str, ...], json_: bool, markdown: bool,
         detailed_exitcode: bool, no_refresh: bool, out_file: Path | None) -> None:
    """Show what apply would do, and what it would cost. Writes nothing."""
    context = _context(ctx, remote=not no_refresh)
    the_plan, desired = context.plan(job_names, refresh=not no_refresh)
    source = context.prices.source
    if json_:
        click.echo(plan_json(the_plan, source))
    elif markdown:
        click.echo(plan_markdown(the_plan, source))
    else:
        click.echo(plan_text(the_plan, source))
    for note in the_plan.notes:
        click.echo(f"Drift: {note}", err=json_)
    if out_file is not None:
        from batchops import planfile

        planfile.save(the_plan, desired, out_file, source)
        if not json_:
            click.echo(f"Saved this plan to {out_file}: apply it with `batchops apply {out_file}`.",
                       err=markdown)
    over = [j for j in the_plan.jobs if j.over_budget]
    if over:
        raise BudgetExceeded(*(
            f"job {j.name}: estimated cost {money(j.estimated_cost_usd)} exceeds its budget_usd "
            f"{money(j.budget_usd)}" for j in over))
    if detailed_exitcode and the_plan.changes:
        ctx.exit(2)


class CliProgress:
    """Fills the library's progress seam: notes as lines, a progress bar on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self._bar = None
        self._done = 0

    def note(self, message: str) -> None:
        if self._bar is not None:
            click.echo("")
        click.echo(message)

    def waiting(self, done: int, total: int, in_flight: int) -> None:
        if not self.tty:
            click.echo(f"Waiting: {done}/{total} items done, {in_flight} in flight.")
            return
        if self._bar is None or self._bar.length != total:
            self._bar = click.progressbar(length=total, label="Items done", show_pos=True)
            self._done = 0
        self._bar.update(done - self._done)
        self._done = done
        self._bar.render_progress()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.render_finish()


def _status_rows(the_plan) -> list[list[object]]:
    return [[j.name, j.counts["succeeded"], j.counts["pending"],
             j.counts["todo"] + j.counts["changed"] + j.counts["retry"], j.counts["failed"]]
            for j in the_plan.jobs]


@cli.command()
@click.argument("plan_file", required=False, type=click.Path(path_type=Path))
@job_option
@click.option("--yes", "--auto-approve", "yes", is_flag=True, help="Apply without asking.")
@click.option("--wait", is_flag=True, help="Keep going until nothing is pending.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after SECONDS.")
@click.option("--poll-interval", type=float, default=None,
              help="With --wait: seconds between polls [default: 5, 1 with --emulator].")
@click.option("--lock-timeout", type=float, default=0.0, show_default=True,
              help="Wait this many seconds for another apply's lock.")
@click.pass_context
def apply(ctx: click.Context, plan_file: Path | None, job_names: tuple[str, ...], yes: bool,
          wait: bool, timeout: float | None, poll_interval: float | None,
          lock_timeout: float) -> None:
    """Make it so: submit, retry, harvest, cancel and prune. Safe to re-run after any failure."""
    if plan_file is None and not yes and not sys.stdin.isatty():
        raise BatchopsError("apply needs --yes (or --auto-approve) when standard input is not a "
                            "terminal")
    context = _context(ctx, remote=True)

    def confirm(the_plan) -> bool:
        click.echo(plan_text(the_plan, context.prices.source))
        return click.confirm("\nApply this plan?", default=False)

    progress = CliProgress()
    if poll_interval is None:
        poll_interval = 1.0 if ctx.obj.get("use_emulator") else 5.0
    try:
        report = context.apply(
            job_names, plan_file=plan_file, wait=wait, timeout=timeout,
            poll_interval=poll_interval, lock_timeout=lock_timeout,
            confirm=None if (yes or plan_file) else confirm, progress=progress,
        )
    finally:
        progress.close()
    if not report.approved:
        click.echo("Apply cancelled: nothing was sent.")
        ctx.exit(1)
    _finish(ctx, report, wait)


def _finish(ctx: click.Context, report, wait: bool) -> None:
    """The closing summary and status table, and the exit code of DESIGN §4."""
    click.echo("")
    click.echo(
        f"Apply complete: {report.submitted} requests sent in {len(report.batches_created)} "
        f"batches, {len(report.harvested)} batches harvested ({report.results_stored} results), "
        f"{len(report.adopted)} adopted, {len(report.canceled)} cancelled, "
        f"{len(report.pruned)} pruned."
    )
    final = report.final_plan
    if final is not None and final.jobs:
        click.echo("")
        click.echo(tabulate(_status_rows(final),
                            headers=["job", "succeeded", "pending", "to send", "failed"]))
        failed = [(j.name, f) for j in final.jobs for f in j.failed]
        for name, f in failed[:20]:
            click.echo(f"  ! failed  {name}  {f.key}  {f.message}")
        if len(failed) > 20:
            click.echo(f"  … and {len(failed) - 20} more failed items")
    problems = list(report.problems)
    if report.timed_out:
        problems.append("timed out with items still pending; run apply again to continue")
    if final is not None and any(j.failed for j in final.jobs):
        problems.append(f"{sum(len(j.failed) for j in final.jobs)} items failed (see above)")
    if problems:
        raise BatchopsError(*problems)


@cli.command()
@click.pass_context
def refresh(ctx: click.Context) -> None:
    """Poll remote batches and harvest finished ones; send nothing."""
    context = _context(ctx, remote=True)
    progress = CliProgress()
    report = context.refresh(progress=progress)
    for note in report.drift:
        click.echo(f"Drift: {note}")
    click.echo(f"Refreshed: {len(report.harvested)} batches harvested "
               f"({report.results_stored} results), {len(report.adopted)} adopted.")
    if report.problems:
        raise BatchopsError(*report.problems)


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
    """Console entry point. Usage errors exit 1 (DESIGN §4), not click's 2."""
    try:
        rc = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
