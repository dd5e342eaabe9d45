"""The `batchops` command line: a thin click layer over the library.

Each command parses options, calls one library function and formats what comes back. Every
expected failure is a BatchopsError, turned into `Error: ...` lines and exit 1 in `main` only.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from batchops import __version__
from batchops.errors import STOP_REQUESTED, BatchopsError, Interrupted, stop_if_requested
from batchops.safetext import terminal

if TYPE_CHECKING:
    from batchops.commands.context import Context, Settings

# Heavy modules (the library below the CLI, pydantic, Jinja2, tabulate, the SDK) are imported
# where a command uses them, so `batchops --help` starts in a few tens of milliseconds.


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
            lost = _lost_connection(ctx, exc)
            if lost is not None:
                click.echo(f"Error: {terminal(lost)}", err=True)
                ctx.exit(1)
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {terminal(exc)} (a bug in batchops, "
                "or a damaged state file; run with --debug for the traceback)",
                err=True,
            )
            ctx.exit(1)


def _lost_connection(ctx: click.Context, exc: Exception) -> str | None:
    """The error line of a PostgreSQL state's connection lost mid-command (a restarted server,
    a dropped network): a failure of a shared state, not a bug. The transaction in progress was
    rolled back by the server."""
    psycopg = sys.modules.get("psycopg")  # imported only by a command that opened one
    if psycopg is None or not isinstance(exc, psycopg.OperationalError):
        return None
    state = getattr(exc, "sqlstate", None)  # none: libpq lost the socket itself
    if state is not None and not state.startswith(("08", "57P")):  # connection, shutdown
        return None
    settings = (ctx.obj or {}).get("settings")
    location = str(getattr(settings, "state_path", "") or "the state")
    if location.startswith(("postgresql:", "postgres:")):
        from batchops.state.postgres import redact

        location = redact(location)
    why = " ".join(str(exc).split("\n", 1)[0].split())
    return (
        f"{location}: the connection to PostgreSQL was lost ({why}); what was being written "
        "was rolled back: run the command again"
    )


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


class Given(click.ParamType):
    """`inner`, but never empty: `--jobs ''` read the project root as the jobs folder (Path('')
    is '.'). An empty BATCHOPS_* variable never comes here: click takes it as unset, as a CI
    workflow needs (a secret a fork's pull request does not get is an empty string)."""

    def __init__(self, inner: click.ParamType) -> None:
        self.inner = inner
        self.name = inner.name

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None):
        if value == "":
            self.fail("should not be empty", param, ctx)
        return self.inner.convert(value, param, ctx)

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str):
        return self.inner.shell_complete(ctx, param, incomplete)


@click.group(cls=BatchopsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--jobs",
    "jobs_path",
    type=Given(click.Path(path_type=Path)),
    envvar="BATCHOPS_JOBS",
    default=None,
    help="Spec file or folder of specs [default: jobs/ in the project root].",
)
@click.option(
    "--state",
    "state_path",
    type=Given(click.STRING),  # a file, or a postgresql:// URL (which a Path would mangle)
    envvar="BATCHOPS_STATE",
    default=None,
    help="State file or postgresql:// URL "
    "[default: state/batchops.db, or state/emulator.db with --emulator].",
)
@click.option(
    "--prices",
    "prices_file",
    type=Given(click.Path(path_type=Path)),
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
    prices_root = None  # a file the person running the command named may lie anywhere
    if prices_file is None and project is not None and project.prices is not None:
        prices_file = near(project.prices)
        prices_root = project.root  # batchops.toml is checked in: a pull request names this one
    return Settings(
        jobs_path=jobs_path,
        state_path=state_path,
        prices_file=prices_file,
        prices_root=prices_root,
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
        from batchops.state import is_postgres

        beside = settings.state_path  # the emulator's own batches live in a file beside it
        if is_postgres(beside):
            beside = (settings.root or Path()) / "state" / "emulator.db"
        settings.base_url = ctx.with_resource(running_emulator(emulator_config_for(beside)))
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


def replace_option(f):
    return click.option(
        "--replace",
        "replace_items",
        multiple=True,
        metavar="JOB:KEY",
        help=(
            "Send this item again on purpose, even if it succeeded (repeatable); with a saved "
            "plan, name the items it was made to send again."
        ),
    )(f)


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


def _stop(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: unwind cleanly (see `Interrupted`); a second signal waits for that."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    STOP_REQUESTED.append(signum)  # raised again by `pause` if this raise lands where it is lost
    raise Interrupted(signum)


def main() -> None:
    """Console entry point. Usage errors exit 1 (DESIGN §4), not click's 2; SIGINT exits 130 and
    SIGTERM 143, after the step in progress was rolled back and the lease released."""
    STOP_REQUESTED.clear()
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        rc = cli.main(standalone_mode=False)
        stop_if_requested()  # a stop whose raise was lost ends as a stop: 130 or 143
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


# The commands live in modules of their own; importing them registers them on `cli`.
from batchops.cli import (  # noqa: E402, F401
    applying,
    emulator,
    planning,
    reports,
    surgery,
)
from batchops.cli import project as _project_commands  # noqa: E402, F401
