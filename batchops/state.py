"""The state store: one SQLite file, the single record of what was sent and what came back.

Writes go through `StateStore.transaction()`, which bumps the serial in the same transaction, so a
saved plan can tell whether anything moved since it was made. Planning uses `StateReader`, opened
read-only: `plan` never creates or writes the file (DESIGN §6.1).

Tables (see `_initial`):
- meta: lineage (set once, when the file is created), serial, created_at.
- jobs: every job batchops has sent anything for.
- items: one row per (job, key): the current fingerprint, attempts used for it, the attempt in
  flight (if any) and the outcome of the last finished attempt. The planner reads only this table
  for items, so planning a million items is one scan.
- attempts: one row per submission of an item (history; never deleted).
- intents: the intent to create a remote batch, committed before the create call, so a crash
  between create and record is recovered by adopting the batch instead of sending again.
- batches: remote batches and what batchops knows of them.
- results: every result line harvested (current and history).
- lock: at most one row, the apply holding the state.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from batchops.errors import LockHeld, StateError

MIGRATION_SET = "batchops"
migrations = Migrations(MIGRATION_SET)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@migrations()
def m0001_initial(db: Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["jobs"].create(
        {"name": str, "spec_file": str, "first_seen_at": str, "last_applied_at": str}, pk="name"
    )
    db["items"].create(
        {
            "job": str,
            "key": str,
            "custom_id": str,
            "fingerprint": str,  # fingerprint of the newest attempt
            "attempts": int,  # attempts sent for that fingerprint
            "inflight_attempt": int,  # attempts.id of the unfinished attempt, or null
            "outcome": str,  # of the last finished attempt: succeeded|errored|expired|canceled|lost
            "error_type": str,
            "error_message": str,
            "canceled_by_us": int,
            "result_id": int,  # results.id of the current successful result
            "updated_at": str,
        },
        pk=("job", "key"),
        not_null={"job", "key", "custom_id"},
        defaults={"attempts": 0, "canceled_by_us": 0},
    )
    db["attempts"].create(
        {
            "id": int,
            "job": str,
            "key": str,
            "custom_id": str,
            "fingerprint": str,
            "number": int,  # 1-based attempt number for this fingerprint
            "intent_id": str,
            "batch_id": str,  # null until the create is confirmed or adopted
            "status": str,  # open|sent|unsent|done|lost
            "outcome": str,
            "created_at": str,
        },
        pk="id",
    )
    db["attempts"].create_index(["intent_id"])
    db["attempts"].create_index(["batch_id", "custom_id"])
    db["intents"].create(
        {
            "id": str,
            "job": str,
            "created_at": str,
            "request_count": int,
            "body_bytes": int,
            "status": str,  # open|created|adopted|unsent
            "batch_id": str,
            "plan_id": str,
        },
        pk="id",
    )
    db["batches"].create(
        {
            "id": str,
            "job": str,
            "intent_id": str,
            "request_count": int,
            "processing_status": str,
            "request_counts": str,  # JSON of the remote request_counts
            "created_at": str,
            "expires_at": str,
            "ended_at": str,
            "cancel_initiated_at": str,
            "archived_at": str,
            "results_expire_at": str,
            "harvested_at": str,
            "canceled_by_us_at": str,
            "pruned_at": str,
            "drift": str,  # what happened outside batchops, if anything
            "refreshed_at": str,
        },
        pk="id",
    )
    db["results"].create(
        {
            "id": int,
            "job": str,
            "key": str,
            "custom_id": str,
            "fingerprint": str,
            "batch_id": str,
            "attempt_id": int,
            "type": str,  # succeeded|errored|expired|canceled
            "text": str,
            "message": str,  # the full Message JSON (succeeded only)
            "stop_reason": str,
            "error_type": str,
            "error_message": str,
            "model": str,
            "input_tokens": int,
            "output_tokens": int,
            "cache_creation_input_tokens": int,
            "cache_creation_1h_input_tokens": int,
            "cache_read_input_tokens": int,
            "received_at": str,
        },
        pk="id",
    )
    db["results"].create_index(["job", "key"])
    db["results"].create_index(["batch_id"])
    db["lock"].create(
        {"id": int, "lock_id": str, "pid": int, "host": str, "since": str, "command": str},
        pk="id",
    )
    db["applied_plans"].create({"plan_id": str, "applied_at": str}, pk="plan_id")


@migrations()
def m0002_items_forgotten_at(db: Database) -> None:
    """Forgotten items keep their row (and so their result): re-adding one sends nothing."""
    db["items"].add_column("forgotten_at", str)


@migrations()
def m0003_harvest_indexes(db: Database) -> None:
    """A harvest updates items and attempts from its results in one statement each."""
    db["items"].create_index(["inflight_attempt"])
    db["results"].create_index(["attempt_id"])


KNOWN_MIGRATIONS = [m.name for m in migrations._migrations]


def _check_version(db: Database, path: Path) -> list[str]:
    """Return the pending migrations; refuse a file written by a newer batchops."""
    applied = [m.name for m in migrations.applied(db)]
    unknown = [name for name in applied if name not in KNOWN_MIGRATIONS]
    if unknown:
        raise StateError(
            f"{path}: state schema is newer than this batchops understands "
            f"(migration {unknown[-1]!r}); upgrade batchops to use this state file"
        )
    return [m.name for m in migrations.pending(db)]


class ItemRecord(NamedTuple):
    """What the planner needs to know of an item in state."""

    job: str
    key: str
    custom_id: str
    fingerprint: str | None
    attempts: int
    inflight: bool
    outcome: str | None
    error_type: str | None
    error_message: str | None
    canceled_by_us: bool
    forgotten: bool = False  # removed from the specs and forgotten; the row stays as memory


@dataclass(frozen=True)
class BatchRecord:
    id: str
    job: str
    request_count: int
    processing_status: str
    created_at: datetime | None
    expires_at: datetime | None
    ended_at: datetime | None
    archived_at: datetime | None
    results_expire_at: datetime | None
    harvested_at: datetime | None
    canceled_by_us_at: datetime | None
    pruned_at: datetime | None
    drift: str | None
    request_counts: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> BatchRecord:
        return cls(
            id=row["id"],
            job=row["job"],
            request_count=row["request_count"] or 0,
            processing_status=row["processing_status"] or "in_progress",
            created_at=parse_time(row["created_at"]),
            expires_at=parse_time(row["expires_at"]),
            ended_at=parse_time(row["ended_at"]),
            archived_at=parse_time(row["archived_at"]),
            results_expire_at=parse_time(row["results_expire_at"]),
            harvested_at=parse_time(row["harvested_at"]),
            canceled_by_us_at=parse_time(row["canceled_by_us_at"]),
            pruned_at=parse_time(row["pruned_at"]),
            drift=row["drift"],
            request_counts=row["request_counts"],
        )

    @property
    def finished(self) -> bool:
        """Nothing more will happen to it remotely or locally."""
        return (
            self.pruned_at is not None
            or self.drift in ("deleted", "results-lost", "not-ours")
            or (self.harvested_at is not None and self.archived_at is not None)
        )


@dataclass(frozen=True)
class IntentRecord:
    id: str
    job: str
    created_at: datetime
    request_count: int
    status: str
    batch_id: str | None


@dataclass(frozen=True)
class LockInfo:
    lock_id: str
    pid: int
    host: str
    since: str
    command: str

    def describe(self) -> str:
        text = f"lock {self.lock_id} held by pid {self.pid} on {self.host} since {self.since}"
        if self.host == socket.gethostname() and not pid_alive(self.pid):
            text += (
                f" (that process is no longer running: if no apply is in progress, "
                f"run `batchops force-unlock {self.lock_id}`)"
            )
        return text


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StateReader:
    """A read-only view of the state: what the planner and the reports may see."""

    def __init__(self, db: Database | None, path: Path):
        self.db = db
        self.path = path

    @classmethod
    def open(cls, path: Path) -> StateReader:
        """Open read-only; a missing file is an empty state (and nothing is created)."""
        path = Path(path)
        if not path.exists():
            return cls(None, path)
        try:
            conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
            db = Database(conn)
            pending = _check_version(db, path)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: not a batchops state file ({exc})") from None
        if pending:
            # An older schema: reading it as-is is safe for the initial tables only.
            if KNOWN_MIGRATIONS[0] in pending:
                raise StateError(f"{path}: not a batchops state file (no schema)")
        return cls(db, path)

    def close(self) -> None:
        if self.db is not None:
            self.db.conn.close()

    # -- metadata
    def meta(self, key: str) -> str | None:
        if self.db is None:
            return None
        row = self.db.execute("select value from meta where key = ?", [key]).fetchone()
        return None if row is None else row[0]

    @property
    def lineage(self) -> str | None:
        return self.meta("lineage")

    @property
    def serial(self) -> int:
        value = self.meta("serial")
        return int(value) if value is not None else 0

    # -- items
    def item_records(self, jobs: list[str] | None = None) -> Iterator[ItemRecord]:
        if self.db is None:
            return
        # While an attempt is in flight, the fingerprint that matters is the one it carries.
        # (inflight and canceled_by_us come back as 0/1; a million rows, so no per-row Python.)
        sql = (
            "select i.job, i.key, i.custom_id, coalesce(a.fingerprint, i.fingerprint),"
            " coalesce(i.attempts, 0), i.inflight_attempt is not null, i.outcome, i.error_type,"
            " i.error_message, coalesce(i.canceled_by_us, 0), i.forgotten_at is not null"
            " from items i left join attempts a on a.id = i.inflight_attempt"
        )
        params: list[Any] = []
        if jobs is not None:
            sql += f" where i.job in ({', '.join('?' for _ in jobs)})"
            params = list(jobs)
        yield from map(ItemRecord._make, self.db.execute(sql, params))

    # -- batches and intents
    def batches(self, *, unfinished_only: bool = False) -> list[BatchRecord]:
        if self.db is None:
            return []
        rows = [
            BatchRecord.from_row(r) for r in self.db["batches"].rows_where(order_by="created_at")
        ]
        return [b for b in rows if not (unfinished_only and b.finished)]

    def batch(self, batch_id: str) -> BatchRecord | None:
        if self.db is None:
            return None
        rows = list(self.db["batches"].rows_where("id = ?", [batch_id]))
        return BatchRecord.from_row(rows[0]) if rows else None

    def inflight_by_batch(self) -> dict[str, set[str]]:
        """batch id → `job\x1fkey` of each item still in flight in it (for cancel decisions)."""
        if self.db is None:
            return {}
        out: dict[str, set[str]] = {}
        sql = (
            "select a.batch_id, a.job, a.key from items i join attempts a on a.id = i.inflight_attempt"
            " where a.batch_id is not null"
        )
        for batch_id, job, key in self.db.execute(sql):
            out.setdefault(batch_id, set()).add(f"{job}\x1f{key}")
        return out

    def open_intents(self) -> list[IntentRecord]:
        if self.db is None:
            return []
        return [
            IntentRecord(
                r["id"],
                r["job"],
                parse_time(r["created_at"]) or utcnow(),
                r["request_count"],
                r["status"],
                r["batch_id"],
            )
            for r in self.db["intents"].rows_where("status = 'open'", order_by="created_at")
        ]

    def lock(self) -> LockInfo | None:
        if self.db is None:
            return None
        rows = list(self.db["lock"].rows_where("id = 1"))
        if not rows:
            return None
        r = rows[0]
        return LockInfo(r["lock_id"], r["pid"], r["host"], r["since"], r["command"])

    def plan_applied(self, plan_id: str) -> bool:
        if self.db is None:
            return False
        return (
            self.db.execute("select 1 from applied_plans where plan_id = ?", [plan_id]).fetchone()
            is not None
        )


class StateStore(StateReader):
    """The writable state: only apply, refresh and state surgery open it."""

    @classmethod
    def open(cls, path: Path) -> StateStore:  # type: ignore[override]
        """Open for writing, creating the file and upgrading its schema as needed."""
        path = Path(path)
        existed = path.exists()
        if not existed:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            db = Database(conn)
            pending = _check_version(db, path)
            if existed and pending and KNOWN_MIGRATIONS[0] not in pending:
                backup(path, path.with_name(path.name + f".backup-before-{pending[0]}"))
            if existed and KNOWN_MIGRATIONS[0] in pending and db.table_names():
                raise StateError(f"{path}: not a batchops state file")
            db.enable_wal()
            if pending:
                migrations.apply(db)
            store = cls(db, path)
            if store.lineage is None:
                with db.atomic():
                    db["meta"].insert_all(
                        [
                            {"key": "lineage", "value": str(uuid.uuid4())},
                            {"key": "serial", "value": "0"},
                            {"key": "created_at", "value": iso(utcnow())},
                        ],
                        replace=True,
                    )
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{path}: not a batchops state file ({exc})") from None
        return store

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """One atomic state change; bumps the serial in the same transaction."""
        assert self.db is not None
        with self.db.atomic():
            yield self.db
            self.db.execute(
                "update meta set value = cast(value as integer) + 1 where key = 'serial'"
            )

    # -- the lock (not a state change: it does not bump the serial)
    def acquire_lock(self, command: str) -> LockInfo:
        assert self.db is not None
        info = LockInfo(
            str(uuid.uuid4()), os.getpid(), socket.gethostname(), iso(utcnow()) or "", command
        )
        conn = self.db.conn
        conn.execute("begin immediate")
        try:
            held = self.lock()
            if held is not None:
                raise LockHeld(f"{self.path}: state is locked: {held.describe()}")
            conn.execute(
                "insert into lock (id, lock_id, pid, host, since, command) values (1, ?, ?, ?, ?, ?)",
                [info.lock_id, info.pid, info.host, info.since, info.command],
            )
            conn.execute("commit")
        except BaseException:
            conn.execute("rollback")
            raise
        return info

    def release_lock(self, lock_id: str) -> None:
        assert self.db is not None
        with self.db.atomic():
            self.db.execute("delete from lock where id = 1 and lock_id = ?", [lock_id])

    def force_unlock(self, lock_id: str) -> LockInfo:
        held = self.lock()
        if held is None:
            raise StateError(f"{self.path}: state is not locked")
        if held.lock_id != lock_id:
            raise StateError(
                f"{self.path}: lock id {lock_id!r} does not match the lock held ({held.describe()})"
            )
        self.release_lock(lock_id)
        return held


def backup(source: Path, target: Path) -> Path:
    """Copy a state file with SQLite's online backup API (consistent even under WAL)."""
    src = sqlite3.connect(f"file:{Path(source).resolve()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(str(target))
        with dst:
            src.backup(dst)
        dst.close()
    finally:
        src.close()
    return target
