"""The `batchops` command line: a thin click layer over the library.

Each command parses options, calls one library function and formats what comes back. Every
expected failure is a BatchopsError, turned into `Error: ...` lines and exit 1 in `main` only.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from batchops import __version__
from batchops.errors import BatchopsError, Interrupted
from batchops.safetext import terminal
from batchops.views.text import plural

if TYPE_CHECKING:
    from batchops.commands.context import Context, Settings

# Heavy modules (the library below the CLI, pydantic, Jinja2, tabulate, the SDK) are imported
# where a command uses them, so `batchops --help` starts in a few tens of milliseconds.


def tabulate(*args: Any, **kwargs: Any) -> str:
    from tabulate import tabulate as _tabulate

    return _tabulate(*args, **kwargs)


def money(value: float | None) -> str:
    from batchops.views.plan import money as _money

    return _money(value)


def plan_json(*args: Any, **kwargs: Any) -> str:
    from batchops.views.plan import plan_json as _plan_json

    return _plan_json(*args, **kwargs)


def plan_markdown(*args: Any, **kwargs: Any) -> str:
    from batchops.views.plan import plan_markdown as _plan_markdown

    return _plan_markdown(*args, **kwargs)


def plan_text(*args: Any, **kwargs: Any) -> str:
    from batchops.views.plan import plan_text as _plan_text

    return _plan_text(*args, **kwargs)


class BatchopsGroup(click.Group):
    """Turns every BatchopsError into `Error:` lines on stderr and exit 1 (tracebacks with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BatchopsError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            for problem in exc.problems:
                click.echo(f"Error: {terminal(problem)}", err=True)
            ctx.exit(1)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            _quiet_broken_pipe()
        except Exception as exc:  # a bug: still one line, the traceback behind --debug
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {terminal(exc)} (a bug in batchops, "
                "or a damaged state file; run with --debug for the traceback)",
                err=True,
            )
            ctx.exit(1)


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what `cmd | head` gives a program killed by the signal
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TIMED_OUT = 3  # apply --wait --timeout ran out with items still pending


def _quiet_broken_pipe() -> None:
    """The reader of our output went away (`batchops results x | head`): stop without a word.

    Standard output is pointed at /dev/null so the interpreter's final flush cannot fail again.
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a test runner's buffer)
        pass
    sys.exit(EXIT_BROKEN_PIPE)


@click.group(cls=BatchopsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--jobs",
    "jobs_path",
    type=click.Path(path_type=Path),
    envvar="BATCHOPS_JOBS",
    default=None,
    help="Spec file or folder of specs [default: jobs/ in the project root].",
)
@click.option(
    "--state",
    "state_path",
    type=str,  # a file, or a postgresql:// URL (which a Path would mangle)
    envvar="BATCHOPS_STATE",
    default=None,
    help="State file or postgresql:// URL "
    "[default: state/batchops.db, or state/emulator.db with --emulator].",
)
@click.option(
    "--prices",
    "prices_file",
    type=click.Path(path_type=Path),
    envvar="BATCHOPS_PRICES",
    default=None,
    help="A price table overriding the shipped one.",
)
@click.option(
    "--emulator",
    "use_emulator",
    is_flag=True,
    help="Run against the built-in emulator, started in-process on loopback.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(__version__, prog_name="batchops")
@click.pass_context
def cli(
    ctx: click.Context,
    jobs_path: Path,
    state_path: str | None,
    prices_file: Path | None,
    use_emulator: bool,
    debug: bool,
) -> None:
    """batchops: Anthropic Message Batches jobs as code, with plan and apply.

    The project root is the nearest folder at or above the working directory holding a
    batchops.toml (else the working directory); its settings are the defaults of --jobs,
    --state and --prices, and default paths lie under the root.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["use_emulator"] = use_emulator
    if ctx.invoked_subcommand in ("init", "schema", "emulator"):  # these need no project
        from batchops.commands.context import Settings

        ctx.obj["settings"] = Settings(emulator=use_emulator)
        return
    ctx.obj["settings"] = _settings(
        jobs_path, _state_location(state_path), prices_file, use_emulator
    )


def _settings(
    jobs_path: Path | None,
    state_path: Path | str | None,
    prices_file: Path | None,
    use_emulator: bool,
) -> Settings:
    """Options and environment first, then batchops.toml, then the defaults under the root."""
    from batchops.commands.context import Settings
    from batchops.commands.project import find_settings_file, near, read_settings

    found = find_settings_file()
    project = read_settings(found) if found is not None else None
    base = project.root if project is not None else Path()
    if jobs_path is None:
        jobs_path = near((project and project.jobs) or base / "jobs")
    if state_path is None:
        if use_emulator:  # never the team's state: the emulator's batches are not real ones
            state_path = near(base / "state/emulator.db")
        elif project is not None and isinstance(project.state, str):
            state_path = project.state  # a postgresql:// URL
        else:
            state_path = near((project and project.state) or base / "state/batchops.db")
    if prices_file is None and project is not None and project.prices is not None:
        prices_file = near(project.prices)
    return Settings(
        jobs_path=jobs_path,
        state_path=state_path,
        prices_file=prices_file,
        root=project.root if project is not None else None,
        emulator=use_emulator,
    )


def _state_location(value: str | None) -> Path | str | None:
    """--state as the library takes it: a postgresql:// URL as it is, anything else a path."""
    from batchops.state import is_postgres

    return value if not value or is_postgres(value) else Path(value)


def _context(ctx: click.Context, *, remote: bool = False) -> Context:
    """The library Context for this invocation; with --emulator and `remote`, start the emulator."""
    settings: Settings = ctx.obj["settings"]
    if remote and ctx.obj.get("use_emulator") and settings.base_url is None:
        from batchops.emulator import running_emulator
        from batchops.emulator.mode import emulator_config_for

        settings.base_url = ctx.with_resource(
            running_emulator(emulator_config_for(settings.state_path))
        )
        settings.api_key = "batchops-emulator"
    from batchops.commands.context import Context

    return Context(settings)


def _complete_jobs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion of job names, read from the specs (quietly: nothing on a bad spec)."""
    root = ctx.find_root()
    try:
        jobs_path = root.params.get("jobs_path")
        settings = _settings(jobs_path, None, None, False)
        from batchops.spec.model import load_project

        names = [j.name for j in load_project(Path(settings.jobs_path), settings.root).jobs]
    except Exception:
        return []
    return [click.shell_completion.CompletionItem(n) for n in names if n.startswith(incomplete)]


def _complete_formats(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    from batchops.commands.results import FORMATS

    return [click.shell_completion.CompletionItem(f) for f in FORMATS if f.startswith(incomplete)]


def _complete_files(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Plan files: the shell's own file completion."""
    return [click.shell_completion.CompletionItem(incomplete, type="file")]


def _exclusive(ctx: click.Context, **flags: bool) -> None:
    """Conflicting flags are an error, not a silent choice."""
    given = [f"--{name.replace('_', '-')}" for name, on in flags.items() if on]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} cannot be used together", ctx)


def job_option(f):
    return click.option(
        "--job",
        "job_names",
        multiple=True,
        metavar="NAME",
        shell_complete=_complete_jobs,
        help="Only this job (repeatable).",
    )(f)


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
        click.echo(
            orjson.dumps(
                {"valid": True, "jobs": [asdict(j) for j in jobs]}, option=orjson.OPT_INDENT_2
            ).decode()
        )
        return
    rows = [
        [
            j.name,
            terminal(j.spec_file),
            j.source,
            j.items,
            j.model or "(per request)",
            money(j.estimated_cost_usd),
        ]
        for j in jobs
    ]
    click.echo(
        tabulate(
            rows,
            headers=["job", "spec", "source", "items", "model", "est. cost"],
            colalign=("left", "left", "left", "right", "left", "right"),
        )
    )
    for j in jobs:
        if j.cost_note:
            click.echo(f"Note: {j.name}: {terminal(j.cost_note)}")
    total = sum(j.items for j in jobs)
    click.echo(f"\nValid: {plural(len(jobs), 'job')}, {plural(total, 'item')}.")


@cli.command()
@job_option
@json_option
@click.option("--markdown", is_flag=True, help="Markdown for a pull-request comment.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes.")
@click.option("--no-refresh", is_flag=True, help="Stay offline: use recorded remote state.")
@click.option(
    "-o",
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    help="Save the plan to apply it later.",
)
@click.pass_context
def plan(
    ctx: click.Context,
    job_names: tuple[str, ...],
    json_: bool,
    markdown: bool,
    detailed_exitcode: bool,
    no_refresh: bool,
    out_file: Path | None,
) -> None:
    """Show what apply would do, and what it would cost. Writes nothing."""
    _exclusive(ctx, json=json_, markdown=markdown)
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
        click.echo(f"Drift: {terminal(note)}", err=json_ or markdown)
    from batchops.apply.run import check_budget

    check_budget(the_plan)  # a plan over budget is shown, never saved
    if out_file is not None:
        from batchops.plan import saved

        saved.save(the_plan, desired, out_file, source)
        if not json_:
            click.echo(
                f"Saved this plan to {out_file}: apply it with `batchops apply {out_file}`.",
                err=markdown,
            )
    if detailed_exitcode and the_plan.changes:
        ctx.exit(2)


@cli.command()
@click.argument("plan_file", type=click.Path(path_type=Path), shell_complete=_complete_files)
@json_option
@click.option("--markdown", is_flag=True, help="Markdown for a pull-request comment.")
@click.pass_context
def show(ctx: click.Context, plan_file: Path, json_: bool, markdown: bool) -> None:
    """Render a saved plan the way `plan` does (checked against the specs; no network)."""
    _exclusive(ctx, json=json_, markdown=markdown)
    saved = _context(ctx).load_plan(plan_file)
    source = saved.header.get("plan", {}).get("prices")
    if json_:
        click.echo(plan_json(saved.plan, source))
    elif markdown:
        click.echo(plan_markdown(saved.plan, source))
    else:
        click.echo(plan_text(saved.plan, source))


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
            click.echo(f"Waiting: {done}/{total} items done, {in_flight} in flight.", err=self.err)
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


def _status_rows(the_plan) -> list[list[object]]:
    return [
        [
            j.name,
            j.counts["succeeded"],
            j.counts["pending"],
            j.counts["todo"] + j.counts["changed"] + j.counts["retry"],
            j.counts["failed"],
        ]
        for j in the_plan.jobs
    ]


@cli.command()
@click.argument(
    "plan_file", required=False, type=click.Path(path_type=Path), shell_complete=_complete_files
)
@job_option
@click.option("--yes", "--auto-approve", "yes", is_flag=True, help="Apply without asking.")
@click.option("--wait", is_flag=True, help="Keep going until nothing is pending.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after SECONDS.")
@click.option(
    "--poll-interval",
    type=float,
    default=None,
    help="With --wait: seconds between polls [default: 5, 1 with --emulator].",
)
@click.option(
    "--lock-timeout",
    type=float,
    default=0.0,
    show_default=True,
    help="Wait this many seconds for another apply's lock.",
)
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


def _name_in_flight(context: Context) -> None:
    """After a signal: which batches are still running remotely (nothing is lost with them)."""
    try:
        batches = context.in_flight()
    except Exception:  # the state could not be read: the signal's own message is enough
        return
    if batches:
        listed = ", ".join(f"{b.id} ({b.job}, {b.processing_status})" for b in batches)
        click.echo(
            f"Batches still in flight: {listed}. Run `batchops apply` again to harvest them.",
            err=True,
        )
    else:
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
        problems.append(f"{plural(failed, 'item')} failed (see above)")
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
        click.echo(
            tabulate(
                _status_rows(final), headers=["job", "succeeded", "pending", "to send", "failed"]
            )
        )
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


# --------- status, results, state surgery
def _offline_context(ctx: click.Context) -> Context:
    """A Context for the offline commands; tests may freeze its clock through `obj["clock"]`."""
    context = _context(ctx)
    clock = ctx.obj.get("clock")
    if clock is not None:
        context.clock = clock
    return context


def _echo_json(data: object) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


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
    rows = [
        [
            j.name,
            j.items,
            j.succeeded,
            j.pending,
            j.retrying,
            j.failed,
            j.todo,
            j.removed,
            money(j.actual_cost_usd),
            money(j.estimated_cost_usd),
        ]
        for j in report.jobs
    ]
    click.echo(
        tabulate(
            rows,
            headers=[
                "job",
                "items",
                "succeeded",
                "pending",
                "retrying",
                "failed",
                "to do",
                "removed",
                "actual cost",
                "est. cost",
            ],
            colalign=("left",) + ("right",) * 9,
        )
    )
    for j in report.jobs:
        if j.cost_note:
            click.echo(f"Note: {j.name}: {j.cost_note}")
    click.echo(
        f"\nActual cost {money(report.actual_cost_usd)} of an estimated "
        f"{money(report.estimated_cost_usd)} (ceiling, at batch prices)."
    )
    if report.batches_in_flight:
        click.echo("\nBatches in flight:")
        click.echo(
            tabulate(
                [
                    [
                        b.id,
                        b.job,
                        b.processing_status,
                        b.request_count,
                        duration(b.age_seconds),
                        duration(b.expires_in_seconds),
                    ]
                    for b in report.batches_in_flight
                ],
                headers=["batch", "job", "status", "requests", "age", "expires in"],
                colalign=("left", "left", "left", "right", "right", "right"),
            )
        )
    else:
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
    help="Write to FILE (atomically) instead of standard output.",
)
@click.option("--failed", "failed_only", is_flag=True, help="Only failed items, with their errors.")
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
    raw_csv: bool,
) -> None:
    """Export JOB's current results joined to its input rows, one row per input key.

    CSV cells starting with = + - @ (a formula to a spreadsheet) get a leading ' unless
    --raw-csv.
    """
    from batchops.commands.results import export

    target = out_file if out_file is not None else sys.stdout.buffer
    summary = export(
        _offline_context(ctx), job, fmt, target, failed_only=failed_only, raw_csv=raw_csv
    )
    if out_file is not None:
        click.echo(f"Wrote {plural(summary.rows, 'row')} of {job} to {out_file} ({fmt}).")


@cli.group("state")
def state_group() -> None:
    """Inspect the state file, or make it forget (never touches anything remote)."""


@state_group.command("list")
@json_option
@click.pass_context
def state_list(ctx: click.Context, json_: bool) -> None:
    """Jobs and batches recorded in the state file."""
    from batchops.commands.surgery import state_list as listing

    found = listing(_offline_context(ctx))
    if json_:
        _echo_json(found.to_dict())
        return
    click.echo(f"State {found.path}: lineage {found.lineage}, serial {found.serial}.\n")
    click.echo(
        tabulate(
            [
                [
                    j.name,
                    j.items,
                    j.in_flight,
                    j.outcomes["succeeded"],
                    j.outcomes["errored"],
                    j.outcomes["expired"] + j.outcomes["canceled"] + j.outcomes["lost"],
                    j.batches,
                    j.results,
                ]
                for j in found.jobs
            ],
            headers=[
                "job",
                "items",
                "in flight",
                "succeeded",
                "errored",
                "other",
                "batches",
                "results",
            ],
            colalign=("left",) + ("right",) * 7,
        )
    )
    if found.batches:
        click.echo("")
        click.echo(
            tabulate(
                [
                    [b.id, b.job, b.status, b.request_count, _when(b.created_at), b.drift or ""]
                    for b in found.batches
                ],
                headers=["batch", "job", "status", "requests", "created", "drift"],
                colalign=("left", "left", "left", "right", "left", "left"),
            )
        )


def _when(moment) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


@state_group.command("show")
@click.argument("target", metavar="BATCH_ID|JOB")
@json_option
@click.pass_context
def state_show(ctx: click.Context, target: str, json_: bool) -> None:
    """Details of one batch or one job in the state file."""
    from batchops.commands.surgery import BatchDetail
    from batchops.commands.surgery import state_show as show

    detail = show(_offline_context(ctx), target)
    data = detail.to_dict()
    if json_:
        _echo_json(data)
        return
    if isinstance(detail, BatchDetail):
        click.echo(f"Batch {detail.record.id}")
        fields = [
            (k, v)
            for k, v in data.items()
            if k not in ("kind", "id", "request_counts", "attempts") and v is not None
        ]
        click.echo(tabulate(fields, tablefmt="plain"))
        counts = ", ".join(f"{k} {v}" for k, v in sorted(detail.request_counts.items()))
        click.echo(f"Request counts: {counts or '-'}")
        attempts = ", ".join(f"{k} {v}" for k, v in detail.attempts.items())
        click.echo(f"Attempts by outcome: {attempts or '-'}")
        return
    job = detail.job
    click.echo(f"Job {job.name}")
    click.echo(
        tabulate(
            [
                ("items", job.items),
                ("in flight", job.in_flight),
                *((f"last outcome {k}", v) for k, v in job.outcomes.items() if v),
                ("batches", job.batches),
                ("results", job.results),
            ],
            tablefmt="plain",
        )
    )
    if detail.batches:
        click.echo("")
        click.echo(
            tabulate(
                [
                    [b.id, b.status, b.request_count, _when(b.created_at), b.drift or ""]
                    for b in detail.batches
                ],
                headers=["batch", "status", "requests", "created", "drift"],
                colalign=("left", "left", "right", "left", "left"),
            )
        )


def _interactive() -> bool:
    return sys.stdin.isatty()


@state_group.command("migrate")
@click.pass_context
def state_migrate(ctx: click.Context) -> None:
    """Upgrade a state written by an older batchops (under the lock)."""
    _context(ctx).migrate()
    click.echo(f"State {ctx.obj['settings'].state_path} is up to date.")


@state_group.command("rm")
@click.argument("target", metavar="JOB|BATCH_ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def state_rm(ctx: click.Context, target: str, yes: bool) -> None:
    """Forget a job or a batch (a backup of the state file is made first)."""
    from batchops.commands.surgery import preview_rm
    from batchops.commands.surgery import state_rm as remove

    context = _offline_context(ctx)
    if not yes:
        if not _interactive():
            raise BatchopsError("state rm needs --yes when standard input is not a terminal")
        preview = preview_rm(context, target)
        click.echo(
            f"This forgets {preview.kind} {target}: {_removal_text(preview.rows)}. "
            "Nothing remote is touched."
        )
        if not click.confirm("Remove it from the state?", default=False):
            click.echo("Nothing removed.")
            ctx.exit(1)
    removal = remove(context, target)
    click.echo(f"Backed up the state to {removal.backup_path}.")
    click.echo(
        f"Removed {removal.kind} {target} from the state: {_removal_text(removal.rows)}. "
        "Nothing remote was touched."
    )


def _removal_text(rows: dict[str, int]) -> str:
    if "jobs" in rows:  # a job: every row of it goes
        return "rows " + ", ".join(f"{table} {n}" for table, n in rows.items())
    return (
        f"{rows['attempts']} unfinished attempts become lost and {rows['items']} items are "
        "sent again by the next apply; stored results stay"
    )


@state_group.command("push")
@click.argument("destination", metavar="DEST")
@click.option("--force", is_flag=True, help="Replace DEST's contents if it is not empty.")
@click.pass_context
def state_push(ctx: click.Context, destination: str, force: bool) -> None:
    """Copy the whole state to DEST: a state file or a postgresql:// URL."""
    from batchops.commands.transfer import push

    _transferred(push(_offline_context(ctx), _state_location(destination), force=force))


@state_group.command("pull")
@click.argument("source", metavar="SRC")
@click.option("--force", is_flag=True, help="Replace the current state if it is not empty.")
@click.pass_context
def state_pull(ctx: click.Context, source: str, force: bool) -> None:
    """Copy SRC (a state file or a postgresql:// URL) into the current state."""
    from batchops.commands.transfer import pull

    _transferred(pull(_offline_context(ctx), _state_location(source), force=force))


def _transferred(done) -> None:
    rows = ", ".join(f"{table} {n}" for table, n in done.rows.items() if table != "meta")
    replaced = " (its previous contents replaced)" if done.replaced else ""
    click.echo(
        f"Copied state {done.source} to {done.destination}{replaced}: lineage {done.lineage}, "
        f"serial {done.serial}; rows {rows}."
    )


@state_group.command("recover")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def state_recover(ctx: click.Context, yes: bool) -> None:
    """Rebuild a lost state from the batches still on the API (into an empty state)."""
    from batchops.commands.recover import check_empty, recover

    context = _context(ctx, remote=True)
    if not yes:
        if not _interactive():
            raise BatchopsError("state recover needs --yes when standard input is not a terminal")
        check_empty(context)
        click.echo(
            "This lists every batch on the API and records into the empty state "
            f"{context.settings.state_path} each one whose custom_ids prove it a request of the "
            "specs, with its results. Nothing remote is changed."
        )
        if not click.confirm("Recover?", default=False):
            click.echo("Nothing recovered.")
            ctx.exit(1)
    found = recover(context)
    for b in found.recovered:
        click.echo(f"Recovered batch {b.id} ({b.job}): {plural(b.results, 'result')}.")
    for b in found.not_recovered:
        click.echo(f"Not recovered: batch {b.id} ({b.status}): {b.reason}.")
    if found.not_ours:
        click.echo(
            f"Skipped {plural(found.not_ours, 'batch')} whose custom_ids match no item of the specs "
            "(not ours)."
        )
    click.echo(
        f"Recovered {len(found.recovered)} of {plural(found.listed, 'batch')} on the API "
        f"({plural(found.results, 'result')}) into {found.location}; `batchops plan` shows what "
        "is left."
    )


@cli.command("import")
@click.argument("job")
@click.argument("batch_id")
@click.pass_context
def import_(ctx: click.Context, job: str, batch_id: str) -> None:
    """Adopt remote batch BATCH_ID (ended) into JOB's state, matching results by custom_id."""
    context = _context(ctx, remote=True)
    stored = context.import_batch(job, batch_id, progress=CliProgress())
    click.echo(f"Imported batch {batch_id} into {job}: {stored} results stored.")


@cli.command("force-unlock")
@click.argument("lock_id")
@click.pass_context
def force_unlock(ctx: click.Context, lock_id: str) -> None:
    """Remove a stale state lock. Only when no apply is running."""
    held = _context(ctx).force_unlock(lock_id)
    click.echo(f"Removed lock {held.lock_id} (pid {held.pid} on {held.host}, since {held.since}).")


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


def _stop(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: unwind cleanly (see `Interrupted`); a second signal waits for that."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def main() -> None:
    """Console entry point. Usage errors exit 1 (DESIGN §4), not click's 2; SIGINT exits 130 and
    SIGTERM 143, after the step in progress was rolled back and the lease released."""
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        rc = cli.main(standalone_mode=False)
    except Interrupted as exc:
        name = "SIGTERM" if exc.signum == signal.SIGTERM else "SIGINT"
        click.echo(f"Stopped by {name}.", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # Ctrl-C at a prompt
        click.echo("Interrupted.", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
