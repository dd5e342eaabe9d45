"""`batchops state list|show|rm|mv`: look inside the state file, make it forget or rename a job,
as in Terraform.

These work from the state alone (no specs needed, so they help even when a spec is broken) and
never touch anything remote. `rm` forgets: a job's rows, or one batch (its unfinished attempts
become `lost` and their items go back to not-in-flight, so the next apply sends them again). The
remote batch, if any, is left alone. Before `rm` writes, the state file is copied with SQLite's
backup API, and the change is one transaction that bumps the serial (a saved plan made before it
is refused).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from batchops.clock import iso
from batchops.commands.context import Context
from batchops.errors import BatchopsError, StateError
from batchops.lazyclass import dataclass
from batchops.state import is_postgres, open_writer, state_exists
from batchops.state.api import OUTCOMES, StateReader
from batchops.state.records import BatchRecord, JobSummary, StateMark

JobEntry = JobSummary  # last finished attempt per item by outcome (OUTCOMES, and "none")
__all__ = ["OUTCOMES", "JobEntry"]


@dataclass(frozen=True)
class BatchEntry:
    id: str
    job: str
    status: str  # what batchops knows: in_progress, canceling, ended, harvested, pruned, deleted …
    processing_status: str
    request_count: int
    created_at: datetime | None
    drift: str | None


@dataclass(frozen=True)
class StateListing:
    path: str
    lineage: str | None
    serial: int
    jobs: tuple[JobEntry, ...]
    batches: tuple[BatchEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": {"path": self.path, "lineage": self.lineage, "serial": self.serial},
            "jobs": [_job_dict(j) for j in self.jobs],
            "batches": [_batch_entry_dict(b) for b in self.batches],
        }


@dataclass(frozen=True)
class BatchDetail:
    record: BatchRecord
    status: str
    intent_id: str | None
    request_counts: dict[str, int]
    attempts: dict[str, int]  # attempts carried, by outcome (or by status while unfinished)
    results: int

    def to_dict(self) -> dict[str, Any]:
        r = self.record
        return {
            "kind": "batch",
            "id": r.id,
            "job": r.job,
            "status": self.status,
            "processing_status": r.processing_status,
            "request_count": r.request_count,
            "request_counts": self.request_counts,
            "intent_id": self.intent_id,
            "created_at": iso(r.created_at),
            "expires_at": iso(r.expires_at),
            "ended_at": iso(r.ended_at),
            "archived_at": iso(r.archived_at),
            "results_expire_at": iso(r.results_expire_at),
            "harvested_at": iso(r.harvested_at),
            "canceled_by_us_at": iso(r.canceled_by_us_at),
            "pruned_at": iso(r.pruned_at),
            "drift": r.drift,
            "attempts": self.attempts,
            "results": self.results,
        }


@dataclass(frozen=True)
class JobDetail:
    job: JobEntry
    batches: tuple[BatchEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "job",
            **_job_dict(self.job),
            "batches_detail": [_batch_entry_dict(b) for b in self.batches],
        }


@dataclass(frozen=True)
class Removal:
    kind: str  # job | batch
    target: str
    rows: dict[str, int]  # table → rows deleted (or, for attempts of a batch, marked lost)
    backup_path: Path | None = None
    state: StateMark | None = None  # after the removal (None: a preview)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "rows": self.rows,
            "backup_path": None if self.backup_path is None else str(self.backup_path),
            "state": None if self.state is None else self.state.to_dict(),
        }


def _job_dict(j: JobEntry) -> dict[str, Any]:
    return {
        "name": j.name,
        "items": j.items,
        "in_flight": j.in_flight,
        "outcomes": j.outcomes,
        "batches": j.batches,
        "results": j.results,
    }


def _batch_entry_dict(b: BatchEntry) -> dict[str, Any]:
    return {
        "id": b.id,
        "job": b.job,
        "status": b.status,
        "processing_status": b.processing_status,
        "request_count": b.request_count,
        "created_at": iso(b.created_at),
        "drift": b.drift,
    }


def batch_status(b: BatchRecord) -> str:
    """One word for where a batch stands, as far as batchops knows."""
    if b.pruned_at is not None:
        return "pruned"
    if b.drift == "deleted":
        return "deleted"
    if b.drift in ("results-lost", "not-ours"):
        return b.drift
    if b.harvested_at is not None:
        return "harvested"
    if b.drift == "canceled" and b.processing_status != "ended":
        return "canceling"
    return b.processing_status


def _entry(b: BatchRecord) -> BatchEntry:
    return BatchEntry(
        b.id, b.job, batch_status(b), b.processing_status, b.request_count, b.created_at, b.drift
    )


def _reader(context: Context) -> StateReader:
    if not state_exists(context.settings.state_path):
        raise StateError(
            f"{context.settings.shown_state}: no state file (nothing has been applied yet)"
        )
    return context.reader()


def state_list(context: Context) -> StateListing:
    """Every job and batch the state records."""
    reader = _reader(context)
    try:
        return StateListing(
            context.settings.shown_state,
            reader.lineage,
            reader.serial,
            tuple(reader.job_summaries(reader.job_names())),
            tuple(_entry(b) for b in reader.batches()),
        )
    finally:
        reader.close()


def state_show(context: Context, target: str) -> BatchDetail | JobDetail:
    """Details of one batch (by id) or one job (by name)."""
    reader = _reader(context)
    try:
        return _show(reader, target, context.settings.shown_state)
    finally:
        reader.close()


def _show(reader: StateReader, target: str, shown: str) -> BatchDetail | JobDetail:
    record = reader.batch(target)
    if record is not None:
        intent, attempts, results = reader.batch_detail(target)
        counts = orjson.loads(record.request_counts) if record.request_counts else {}
        return BatchDetail(record, batch_status(record), intent, counts, attempts, results)
    if target in reader.job_names():
        (entry,) = reader.job_summaries([target])
        batches = tuple(_entry(b) for b in reader.batches() if b.job == target)
        return JobDetail(entry, batches)
    raise _unknown(target, shown)


def _unknown(target: str, shown: str) -> BatchopsError:
    kind = "batch" if target.startswith("msgbatch_") else "job or batch"
    return BatchopsError(f"no {kind} {target!r} in state {shown}")


def preview_rm(context: Context, target: str, *, force: bool = False) -> Removal:
    """What `rm` would remove (nothing is written); refused for a batch still running remotely
    unless `force` (see `_refuse_live`)."""
    reader = _reader(context)
    try:
        found = reader.removal_counts(target)
        if found is not None and not force:
            _refuse_live(reader, found[0], target)
    finally:
        reader.close()
    if found is None:
        raise _unknown(target, context.settings.shown_state)
    return Removal(found[0], target, found[1])


def state_rm(context: Context, target: str, *, force: bool = False) -> Removal:
    """Forget a job or a batch: back up the state, then remove in one transaction (serial +1).

    Takes the state's lock like apply, so it never runs beside one. A batch the state last saw
    running remotely (or a job with one) is refused unless `force`.
    """
    location = context.settings.state_path
    kind = preview_rm(context, target, force=force).kind  # fail before anything is written
    state = open_writer(location, f"state rm {target}")
    try:
        if not force:  # again under the lease: an apply may have created one meanwhile
            _refuse_live(state, kind, target)
        copy = None if is_postgres(location) else _backup(Path(location), context.clock())
        kind, rows = state.remove(target)
        mark = state.mark()
    finally:
        state.close()
    return Removal(kind, target, rows, copy, mark)


def _refuse_live(reader: StateReader, kind: str, target: str) -> None:
    """Refuse to forget a batch that may still be running remotely: its items would be sent
    again by the next apply while it runs (paid twice), and its results never harvested. Such
    a batch: not ended as the state last saw it, or a create sent whose batch is not known yet."""
    mine = (lambda b: b.id == target) if kind == "batch" else (lambda b: b.job == target)
    live = [
        b.id
        for b in reader.batches()
        if mine(b)
        and (b.processing_status != "ended" or (b.harvested_at is None and b.archived_at is None))
        and b.pruned_at is None
        and b.drift not in ("deleted", "results-lost")
    ]
    if kind == "job":
        live += [
            f"the batch of intent {i.id} (a create sent, its response never came)"
            for i in reader.open_intents()
            if i.job == target and i.create_sent
        ]
    if live:
        what = f"batch {target} is" if kind == "batch" else f"job {target} has batch {live[0]}"
        more = f" (and {len(live) - 1} more)" if len(live) > 1 else ""
        raise BatchopsError(
            f"{what}{more} still running remotely, as the state last saw it: forgotten, its "
            "items would be sent again by the next apply while it runs (paid twice) and its "
            "results never harvested; let apply finish it (or remove the job from its spec and "
            "apply, which cancels it), or pass --force to forget it anyway"
        )


@dataclass(frozen=True)
class Move:
    old: str
    new: str
    rows: dict[str, int]  # rows moved per table
    state: StateMark

    def to_dict(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "rows": self.rows, "state": self.state.to_dict()}


def state_mv(context: Context, old: str, new: str) -> Move:
    """Rename job `old` to `new` in the state (one transaction, serial +1): its results stay
    current, so the renamed job sends nothing it already has. Refused when `new` has rows.

    Takes the leases of both jobs, so it never runs beside an apply of either.
    """
    from batchops.spec.model import JOB_NAME_RE

    if not JOB_NAME_RE.fullmatch(new):
        raise BatchopsError(
            f"invalid job name {new!r} (lowercase letters, digits, '-' and '_', starting with a "
            "letter or digit, at most 64 characters)"
        )
    location = context.settings.state_path
    if not state_exists(location):
        raise _unknown(old, context.settings.shown_state)
    state = open_writer(location, f"state mv {old} {new}", jobs=[old, new])
    try:
        rows = state.rename_job(old, new)
        mark = state.mark()
    finally:
        state.close()
    return Move(old, new, rows, mark)


def _backup(path: Path, now: datetime) -> Path:
    from batchops.state.sqlite import backup

    target = _backup_path(path, now)
    # written aside, then renamed: a run killed mid-copy leaves no half backup under the name
    partial = target.with_name(f".{target.name}.partial")
    try:
        backup(path, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _backup_path(path: Path, now: datetime) -> Path:
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.name}.backup-{stamp}")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.backup-{stamp}-{n}")
        n += 1
    return candidate
