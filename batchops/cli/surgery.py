"""`state list|show|migrate|rm|mv|push|pull|recover`, `import` and `force-unlock`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from batchops.cli import (
    _context,
    _echo_json,
    _offline_context,
    _state_location,
    cli,
    json_option,
)
from batchops.cli.applying import CliProgress
from batchops.errors import BatchopsError
from batchops.views.text import plural

if TYPE_CHECKING:
    from batchops.commands.recover import RecoveredBatch


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
    from batchops.views.tables import state_batches_table, state_jobs_table

    click.echo(state_jobs_table(list(found.jobs)))
    if found.batches:
        click.echo("")
        click.echo(state_batches_table(list(found.batches)))


@state_group.command("show")
@click.argument("target", metavar="BATCH_ID|JOB")
@json_option
@click.pass_context
def state_show(ctx: click.Context, target: str, json_: bool) -> None:
    """Details of one batch or one job in the state file."""
    from batchops.commands.surgery import BatchDetail
    from batchops.commands.surgery import state_show as show
    from batchops.views.tables import fields_table, state_batches_table

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
        click.echo(fields_table(fields))
        counts = ", ".join(f"{k} {v}" for k, v in sorted(detail.request_counts.items()))
        click.echo(f"Request counts: {counts or '-'}")
        attempts = ", ".join(f"{k} {v}" for k, v in detail.attempts.items())
        click.echo(f"Attempts by outcome: {attempts or '-'}")
        return
    job = detail.job
    click.echo(f"Job {job.name}")
    click.echo(
        fields_table(
            [
                ("items", job.items),
                ("in flight", job.in_flight),
                *((f"last outcome {k}", v) for k, v in job.outcomes.items() if v),
                ("batches", job.batches),
                ("results", job.results),
            ]
        )
    )
    if detail.batches:
        click.echo("")
        click.echo(state_batches_table(list(detail.batches), with_job=False))


def _interactive() -> bool:
    return sys.stdin.isatty()


@state_group.command("migrate")
@json_option
@click.pass_context
def state_migrate(ctx: click.Context, json_: bool) -> None:
    """Upgrade a state written by an older batchops (under the lock)."""
    mark = _context(ctx).migrate()
    shown_state = ctx.obj["settings"].shown_state
    if json_:
        _echo_json({"state": {"path": shown_state, **mark.to_dict()}})
        return
    click.echo(f"State {shown_state} is up to date.")


@state_group.command("rm")
@click.argument("target", metavar="JOB|BATCH_ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--force",
    is_flag=True,
    help="Forget a batch still running remotely too (its items are sent again, paid twice).",
)
@json_option
@click.pass_context
def state_rm(ctx: click.Context, target: str, yes: bool, force: bool, json_: bool) -> None:
    """Forget a job or a batch (a backup of the state file is made first)."""
    from batchops.commands.surgery import preview_rm
    from batchops.commands.surgery import state_rm as remove

    _cannot_ask(json_, yes, "state rm")
    context = _offline_context(ctx)
    if not yes:
        if not _interactive():
            raise BatchopsError("state rm needs --yes when standard input is not a terminal")
        preview = preview_rm(context, target, force=force)
        click.echo(
            f"This forgets {preview.kind} {target}: {_removal_text(preview.rows)}. "
            "Nothing remote is touched."
        )
        if not click.confirm("Remove it from the state?", default=False):
            click.echo("Nothing removed.")
            ctx.exit(1)
    removal = remove(context, target, force=force)
    if json_:
        _echo_json(removal.to_dict())
        return
    if removal.backup_path is not None:  # a PostgreSQL state is backed up by its own means
        click.echo(f"Backed up the state to {removal.backup_path}.")
    click.echo(
        f"Removed {removal.kind} {target} from the state: {_removal_text(removal.rows)}. "
        "Nothing remote was touched."
    )


@state_group.command("mv")
@click.argument("old", metavar="OLD")
@click.argument("new", metavar="NEW")
@json_option
@click.pass_context
def state_mv(ctx: click.Context, old: str, new: str, json_: bool) -> None:
    """Rename job OLD to NEW in the state: its results stay current, nothing is sent again."""
    from batchops.commands.surgery import state_mv as move

    moved = move(_offline_context(ctx), old, new)
    if json_:
        _echo_json(moved.to_dict())
        return
    click.echo(
        f"Moved job {old} to {new} in the state: "
        + ", ".join(f"{table} {n}" for table, n in moved.rows.items())
        + ". Nothing remote was touched."
    )


def _cannot_ask(json_: bool, yes: bool, command: str) -> None:
    """A command that asks before it writes cannot ask under `--json` (its question would break
    the JSON on stdout): it needs `--yes`, as Terraform's `-json` needs `-auto-approve`."""
    if json_ and not yes:
        raise BatchopsError(f"{command} --json needs --yes (it cannot ask)")


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
@json_option
@click.pass_context
def state_push(ctx: click.Context, destination: str, force: bool, json_: bool) -> None:
    """Copy the whole state to DEST: a state file or a postgresql:// URL."""
    from batchops.commands.transfer import push

    done = push(_offline_context(ctx), _state_location(destination), force=force)
    _transferred(done, json_)


@state_group.command("pull")
@click.argument("source", metavar="SRC")
@click.option("--force", is_flag=True, help="Replace the current state if it is not empty.")
@json_option
@click.pass_context
def state_pull(ctx: click.Context, source: str, force: bool, json_: bool) -> None:
    """Copy SRC (a state file or a postgresql:// URL) into the current state."""
    from batchops.commands.transfer import pull

    _transferred(pull(_offline_context(ctx), _state_location(source), force=force), json_)


def _transferred(done, json_: bool) -> None:
    if json_:
        _echo_json(done.to_dict())
        return
    rows = ", ".join(f"{table} {n}" for table, n in done.rows.items() if table != "meta")
    replaced = " (its previous contents replaced)" if done.replaced else ""
    click.echo(
        f"Copied state {done.source} to {done.destination}{replaced}: lineage {done.lineage}, "
        f"serial {done.serial}; rows {rows}."
    )


@state_group.command("recover")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_context
def state_recover(ctx: click.Context, yes: bool, json_: bool) -> None:
    """Rebuild a lost state from the batches still on the API (into an empty state)."""
    from batchops.commands.recover import check_empty, recover

    _cannot_ask(json_, yes, "state recover")
    context = _context(ctx, remote=True)
    if not yes:
        if not _interactive():
            raise BatchopsError("state recover needs --yes when standard input is not a terminal")
        check_empty(context)
        click.echo(
            "This lists every batch on the API and records into the empty state "
            f"{context.settings.shown_state} each one whose custom_ids prove it a request of the "
            "specs, with its results. Nothing remote is changed."
        )
        if not click.confirm("Recover?", default=False):
            click.echo("Nothing recovered.")
            ctx.exit(1)
    found = recover(context)
    if json_:
        _echo_json(found.to_dict())
        return
    for b in found.recovered:
        click.echo(
            f"Recovered batch {b.id} ({b.job}): {plural(b.results, 'result')}{_unmatched(b)}."
        )
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


def _unmatched(batch: RecoveredBatch) -> str:
    """What `state recover` left out of a batch it recovered, if anything."""
    n = batch.unmatched
    if not n:
        return ""
    if n == 1:
        return (
            "; 1 result not stored: it answers an older version of an item, or a removed one "
            "(its custom_id matches no item as the specs render now)"
        )
    return (
        f"; {n} results not stored: they answer older versions of items, or removed ones "
        "(their custom_ids match no item as the specs render now)"
    )


@cli.command("import")
@click.argument("job")
@click.argument("batch_id")
@json_option
@click.pass_context
def import_(ctx: click.Context, job: str, batch_id: str, json_: bool) -> None:
    """Adopt remote batch BATCH_ID (ended) into JOB's state, matching results by custom_id."""
    context = _context(ctx, remote=True)
    stored = context.import_batch(job, batch_id, progress=CliProgress(err=json_))
    if json_:
        _echo_json({"job": job, "batch_id": batch_id, "results_stored": stored})
        return
    click.echo(f"Imported batch {batch_id} into {job}: {plural(stored, 'result')} stored.")


@cli.command("force-unlock")
@click.argument("lock_id")
@click.option(
    "--force",
    is_flag=True,
    help="Remove it even while its holder still runs on this host.",
)
@json_option
@click.pass_context
def force_unlock(ctx: click.Context, lock_id: str, force: bool, json_: bool) -> None:
    """Remove a stale state lock. Only when no apply is running: a holder still running on
    this host is refused unless --force."""
    held = _context(ctx).force_unlock(lock_id, force=force)
    if json_:
        fields = ("lock_id", "name", "pid", "host", "since", "command")
        _echo_json({name: getattr(held, name) for name in fields})
        return
    click.echo(f"Removed lock {held.lock_id} (pid {held.pid} on {held.host}, since {held.since}).")
