"""`batchops state list|show|rm`: look inside the state file and make it forget, as in Terraform.

These work from the state alone (no specs needed, so they help even when a spec is broken) and
never touch anything remote. `rm` forgets: a job's rows, or one batch (its unfinished attempts
become `lost` and their items go back to not-in-flight, so the next apply sends them again). The
remote batch, if any, is left alone. Before `rm` writes, the state file is copied with SQLite's
backup API, and the change is one transaction that bumps the serial (a saved plan made before it
is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from batchops.context import Context
from batchops.errors import BatchopsError, StateError
from batchops.state import BatchRecord, StateReader, StateStore, backup, iso

OUTCOMES = ("succeeded", "errored", "expired", "canceled", "lost")


@dataclass(frozen=True)
class JobEntry:
    name: str
    items: int
    in_flight: int
    # last finished attempt per item, by outcome (OUTCOMES, and "none": never finished)
    outcomes: dict[str, int]
    batches: int
    results: int  # result rows stored (history included)


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


def _job_names(reader: StateReader) -> list[str]:
    if reader.db is None:
        return []
    sql = (
        "select name from jobs union select job from items union select job from batches"
        " union select job from results union select job from intents order by 1"
    )
    return [r[0] for r in reader.db.execute(sql) if r[0] is not None]


def _job_entries(reader: StateReader, names: list[str]) -> list[JobEntry]:
    if reader.db is None:
        return []
    db = reader.db
    items: dict[str, list[int]] = {}
    outcomes: dict[str, dict[str, int]] = {}
    for job, outcome, inflight, count in db.execute(
        "select job, outcome, inflight_attempt is not null, count(*) from items group by 1, 2, 3"
    ):
        total = items.setdefault(job, [0, 0])
        total[0] += count
        if inflight:
            total[1] += count
        per = outcomes.setdefault(job, dict.fromkeys((*OUTCOMES, "none"), 0))
        per[outcome if outcome in per else "none"] += count
    batches = dict(db.execute("select job, count(*) from batches group by job").fetchall())
    results = dict(db.execute("select job, count(*) from results group by job").fetchall())
    return [
        JobEntry(
            name,
            items.get(name, [0, 0])[0],
            items.get(name, [0, 0])[1],
            outcomes.get(name, dict.fromkeys((*OUTCOMES, "none"), 0)),
            batches.get(name, 0),
            results.get(name, 0),
        )
        for name in names
    ]


def _reader(context: Context) -> StateReader:
    path = Path(context.settings.state_path)
    if not path.exists():
        raise StateError(f"{path}: no state file (nothing has been applied yet)")
    return StateReader.open(path)


def state_list(context: Context) -> StateListing:
    """Every job and batch the state records."""
    reader = _reader(context)
    try:
        return StateListing(
            str(context.settings.state_path),
            reader.lineage,
            reader.serial,
            tuple(_job_entries(reader, _job_names(reader))),
            tuple(_entry(b) for b in reader.batches()),
        )
    finally:
        reader.close()


def state_show(context: Context, target: str) -> BatchDetail | JobDetail:
    """Details of one batch (by id) or one job (by name)."""
    reader = _reader(context)
    try:
        return _show(reader, target, context.settings.state_path)
    finally:
        reader.close()


def _show(reader: StateReader, target: str, path: Path) -> BatchDetail | JobDetail:
    record = reader.batch(target)
    if record is not None and reader.db is not None:
        db = reader.db
        attempts = dict(
            db.execute(
                "select coalesce(outcome, status), count(*) from attempts where batch_id = ?"
                " group by 1 order by 1",
                [target],
            ).fetchall()
        )
        results = db.execute("select count(*) from results where batch_id = ?", [target])
        intent = db.execute("select intent_id from batches where id = ?", [target]).fetchone()
        counts = orjson.loads(record.request_counts) if record.request_counts else {}
        return BatchDetail(
            record, batch_status(record), intent[0], counts, attempts, results.fetchone()[0]
        )
    if target in _job_names(reader):
        (entry,) = _job_entries(reader, [target])
        batches = tuple(_entry(b) for b in reader.batches() if b.job == target)
        return JobDetail(entry, batches)
    raise _unknown(target, path)


def _unknown(target: str, path: Path) -> BatchopsError:
    kind = "batch" if target.startswith("msgbatch_") else "job or batch"
    return BatchopsError(f"no {kind} {target!r} in state {path}")


def preview_rm(context: Context, target: str) -> Removal:
    """What `rm` would remove (nothing is written)."""
    reader = _reader(context)
    try:
        return _removal(reader, target, Path(context.settings.state_path), count_only=True)
    finally:
        reader.close()


def state_rm(context: Context, target: str) -> Removal:
    """Forget a job or a batch: back up the file, then delete in one transaction (serial +1)."""
    path = Path(context.settings.state_path)
    reader = _reader(context)  # refuses a missing file before StateStore.open would create one
    reader.close()
    store = StateStore.open(path)
    try:
        _removal(store, target, path, count_only=True)  # unknown target: fail before the backup
        lock = store.acquire_lock(f"state rm {target}")
        try:
            copy = backup(path, _backup_path(path, context.clock()))
            with store.transaction():
                removal = _removal(store, target, path, count_only=False)
        finally:
            store.release_lock(lock.lock_id)
    finally:
        store.close()
    return Removal(removal.kind, removal.target, removal.rows, copy)


def _backup_path(path: Path, now: datetime) -> Path:
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.name}.backup-{stamp}")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.backup-{stamp}-{n}")
        n += 1
    return candidate


_JOB_TABLES = (
    ("items", "job = ?"),
    ("attempts", "job = ?"),
    ("results", "job = ?"),
    ("batches", "job = ?"),
    ("intents", "job = ?"),
    ("jobs", "name = ?"),
)


def _removal(reader: StateReader, target: str, path: Path, *, count_only: bool) -> Removal:
    db = reader.db
    if db is None:
        raise _unknown(target, path)
    if reader.batch(target) is not None:
        return _batch_removal(db, target, count_only)
    if target not in _job_names(reader):
        raise _unknown(target, path)
    rows = {}
    for table, where in _JOB_TABLES:
        if count_only:
            rows[table] = db.execute(
                f"select count(*) from {table} where {where}", [target]
            ).fetchone()[0]
        else:
            rows[table] = db.execute(f"delete from {table} where {where}", [target]).rowcount
    return Removal("job", target, rows)


_UNFINISHED = "batch_id = ? and status in ('open', 'sent')"


def _batch_removal(db, batch_id: str, count_only: bool) -> Removal:
    in_flight_sql = f"inflight_attempt in (select id from attempts where {_UNFINISHED})"
    if count_only:
        items = db.execute(f"select count(*) from items where {in_flight_sql}", [batch_id])
        attempts = db.execute(f"select count(*) from attempts where {_UNFINISHED}", [batch_id])
        return Removal(
            "batch",
            batch_id,
            {"batches": 1, "items": items.fetchone()[0], "attempts": attempts.fetchone()[0]},
        )
    # The attempt is not counted against max_attempts: nobody saw it fail (as for a lost batch).
    items = db.execute(
        "update items set inflight_attempt = null, outcome = 'lost',"
        f" attempts = max(attempts - 1, 0) where {in_flight_sql}",
        [batch_id],
    ).rowcount
    attempts = db.execute(
        f"update attempts set status = 'lost', outcome = 'lost' where {_UNFINISHED}", [batch_id]
    ).rowcount
    db.execute("delete from batches where id = ?", [batch_id])
    return Removal("batch", batch_id, {"batches": 1, "items": items, "attempts": attempts})
