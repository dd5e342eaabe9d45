"""The SQLite backend: one file, embedded, nothing to run (the default).

Tables (see `m0001_initial` and later migrations):
- meta: lineage (set once, when the file is created), serial, created_at.
- jobs: every job batchops has sent anything for.
- items: one row per (job, key): the current fingerprint, attempts used for it, the attempt in
  flight (if any) and the outcome of the last finished attempt. The planner reads only this table
  (joined to the attempt in flight) for items, so planning a million items is one scan.
- attempts: one row per submission of an item (history; never deleted). The attempts of a
  harvested batch are done; their status stays `sent` (a harvest does not rewrite them).
- intents: the intent to create a remote batch, committed before the create call.
- batches: remote batches and what batchops knows of them.
- results: every result line harvested (current and history).
- lock: at most one row, the apply holding the state.

Opening for writing takes the lock and runs pending migrations in one exclusive transaction, so
two applies racing on a new file end with one running and the other told who holds the lock.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from batchops.clock import iso, utcnow
from batchops.errors import LockHeld, StateError
from batchops.heap import paused_gc
from batchops.state.api import (
    FLAG_COLUMNS,
    NO_SUCCEEDED_ROW,
    STATE_TABLES,
    Attempt,
    Reused,
    StateReader,
    StateWriter,
    SucceededRow,
    TableDump,
    check_dump_table,
)
from batchops.state.leases import (
    expiry,
    holder_where,
    lease_names,
    lease_seconds,
    me,
    to_be_free,
    to_take_over,
)
from batchops.state.records import (
    BatchRecord,
    ItemRecord,
    LockInfo,
    ResultLookup,
    UsageRow,
)
from batchops.state.shared import (
    INFLIGHT,
    NEW_WRITE_ID,
    PROMPT_TOKENS,
    SENT_ATTEMPTS,
    SharedReads,
    SharedWrites,
    new_write_id,
)

MIGRATION_SET = "batchops"
MIGRATIONS_TABLE = "_sqlite_migrations"  # sqlite-utils' table of applied migrations
KNOWN_MIGRATIONS = [
    "m0001_initial",
    "m0002_items_forgotten_at",
    "m0003_harvest_indexes",
    "m0004_intent_list_anchor",
    "m0005_leases",
    "m0006_lean_result_indexes",
    "m0007_results_without_batch_index",
    "m0008_attempts_room_to_settle",
    "m0009_attempts_done_with_their_batch",
]  # in order; registered in batchops.state.sqlite_migrations
_LEASE_COLUMNS = "lock_id, pid, host, since, command, name, expires_at, pid_ns, started"
# A writer's leases, still held (each write's first statement: see `SqliteWriter._transaction`).
_HOLDING = "select 1 from leases where lock_id = ? limit 1"

_ITEM_SQL = (
    "select i.job, i.key, i.custom_id, coalesce(a.fingerprint, i.fingerprint),"
    " coalesce(i.attempts, 0), i.inflight_attempt is not null, i.outcome, i.error_type,"
    " i.error_message, coalesce(i.canceled_by_us, 0), i.forgotten_at is not null, a.batch_id"
    " from items i left join attempts a on a.id = i.inflight_attempt"
)
# An item's state and its current result (`result_lookup`), to be completed with a where.
_LOOKUP_SQL = (
    "select i.job, i.key, i.custom_id, coalesce(a.fingerprint, i.fingerprint),"
    " coalesce(i.attempts, 0), i.inflight_attempt is not null, i.outcome, i.error_type,"
    " i.error_message, coalesce(i.canceled_by_us, 0), i.forgotten_at is not null,"
    " a.batch_id, r.fingerprint, r.type, r.text, r.message, r.stop_reason, r.model,"
    " r.input_tokens, r.output_tokens, r.batch_id"
    " from items i left join attempts a on a.id = i.inflight_attempt"
    " left join results r on r.id = i.result_id"
)
# An item's own succeeded result (`succeeded_results`), the items `i` to be given in `{items}`.
_SUCCEEDED_OF = (
    "select r.fingerprint, r.text, r.message, r.stop_reason, r.model, r.input_tokens,"
    " r.output_tokens, r.batch_id from {items}"
    " left join results r on r.id = i.result_id and i.inflight_attempt is null"
    " and i.outcome = 'succeeded' and r.type = 'succeeded' and r.fingerprint = i.fingerprint"
)
# `succeeded_results`: each key of a JSON array, in order, with its item's own succeeded result.
_SUCCEEDED_SQL = (
    _SUCCEEDED_OF.format(
        items="json_each(?2) k left join items i on i.job = ?1 and i.key = k.value"
    )
    + " order by k.id"
)
# The same for one key, bound as a parameter (a key holding a NUL: `_keys_array`).
_SUCCEEDED_ONE_SQL = _SUCCEEDED_OF.format(items="items i") + " where i.job = ? and i.key = ?"
# The same, with each key's item looked for at a row id: the first key's item's id (?3) plus the
# key's place in the array. A job's items are written in the order of its source, which is the
# order an export asks for them in, so this finds them along the table instead of through the
# (job, key) index; a key whose item is not at its place gets NULLs, and is asked again by key.
_SUCCEEDED_ALONG_SQL = _SUCCEEDED_SQL.replace(
    "left join items i on i.job = ?1 and i.key = k.value",
    "left join items i on i.rowid = ?3 + k.key and i.job = ?1 and i.key = k.value",
)
_ITEM_ROWID_SQL = "select rowid from items where job = ? and key = ?"
# How orjson writes a NUL in a string. SQLite's json_each ends a string at an escaped NUL
# (3.40: "a\u0000b" reads as "a"), so a key holding one would be looked up as another key.
_ESCAPED_NUL = b"\\u0000"
_BATCH_SQL = (
    "select b.*, coalesce(i.status = 'adopted', 0) as adopted from batches b"
    " left join intents i on i.id = b.intent_id"
)
_INSERT_RESULT = (
    "insert into results (job, key, custom_id, fingerprint, batch_id, attempt_id, type, text,"
    " message, stop_reason, error_type, error_message, model, input_tokens, output_tokens,"
    " cache_creation_input_tokens, cache_creation_1h_input_tokens, cache_read_input_tokens,"
    " received_at) values "
)
_RESULT_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Rows a harvest inserts with one statement: SQLite then opens its cursors and finds the table's
# end once for them all, not once a row (a fifth less time for a batch's rows).
_ROWS_A_STATEMENT = 50
_AUTOCHECKPOINT = 1000  # SQLite's default: pages in the WAL after which a commit checkpoints
_FEW_FINGERPRINTS = 5000  # up to this many are looked up by value; more, by one scan


def _pending(conn: sqlite3.Connection, path: Path) -> list[str]:
    """The pending migrations, read from sqlite-utils' table without importing sqlite-utils;
    refuse a file written by a newer batchops."""
    applied: list[str] = []
    if conn.execute(
        "select 1 from sqlite_master where type = 'table' and name = ?", [MIGRATIONS_TABLE]
    ).fetchone():
        applied = [
            name
            for (name,) in conn.execute(
                f"select name from {MIGRATIONS_TABLE} where migration_set = ? order by rowid",
                [MIGRATION_SET],
            )
        ]
    unknown = [name for name in applied if name not in KNOWN_MIGRATIONS]
    if unknown:
        raise StateError(
            f"{path}: state schema is newer than this batchops understands "
            f"(migration {unknown[-1]!r}); upgrade batchops to use this state file"
        )
    return [name for name in KNOWN_MIGRATIONS if name not in applied]


def _keys_array(keys: Sequence[str]) -> tuple[str, list[int]]:
    """The JSON array of `keys` that json_each reads, and the places of the keys holding a NUL
    (usually none): those are null in the array, which matches no key, and are to be looked up
    one by one, bound as parameters, which SQLite compares whole."""
    array = orjson.dumps(keys)
    # the keys themselves are visited only when their JSON holds the escape (a backslash is
    # found by memchr, the escape by a slower search)
    if b"\\" not in array or _ESCAPED_NUL not in array:
        return array.decode(), []
    cut = [at for at, key in enumerate(keys) if "\x00" in key]
    if not cut:  # a key holding a backslash and "u0000", escaped: read whole
        return array.decode(), []
    safe: list[str | None] = list(keys)
    for at in cut:
        safe[at] = None
    return orjson.dumps(safe).decode(), cut


class _Connection:
    """What the state asks of its connection, as sqlite-utils' Database offers it: only a
    migration (and `db[table]`, sqlite-utils' table API for tools and tests) imports
    sqlite-utils, so opening a state, even to write, does not."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __getitem__(self, table: str) -> Any:
        from sqlite_utils import Database

        return Database(self.conn)[table]

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, parameters)

    def table_names(self) -> list[str]:
        sql = "select name from sqlite_master where type = 'table'"
        return [name for (name,) in self.conn.execute(sql)]


_BUSY_SECONDS = 30.0  # how long a connection waits out another's lock on the file


def _busy(exc: BaseException) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _not_state(path: Path, exc: Exception | str) -> StateError:
    if isinstance(exc, BaseException) and _busy(exc):
        return StateError(
            f"{path}: state file is busy: another process held it for over "
            f"{_BUSY_SECONDS:g} s ({exc})"
        )
    return StateError(f"{path}: not a batchops state file ({exc})")


def _refuse_special(path: Path) -> None:
    """StateError unless `path` is absent or, symlinks followed, a regular file. SQLite's open of
    a FIFO blocks until a writer comes, deaf to SIGTERM, and a device reads as an empty state:
    batchops.toml, which a pull request may change, names the state."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # absent (a reader's empty state, a writer's new file), or SQLite's to report
    if not stat.S_ISREG(mode):
        kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a device"}
        kind = next((k for test, k in kinds.items() if test(mode)), "not a file")
        raise StateError(f"{path}: not a regular file ({kind})")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL. Two connections switching a new file at once deadlock on its
    locks, and SQLite answers one of them "database is locked" at once, without its busy
    wait; that one waits here, and finds the file switched."""
    deadline = time.monotonic() + _BUSY_SECONDS
    while conn.execute("pragma journal_mode").fetchone()[0] != "wal":
        try:
            conn.execute("pragma journal_mode = wal")
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class SqliteReader(SharedReads, StateReader):
    def __init__(self, db: _Connection | None, path: Path):
        self.db = db
        self.path = path
        self.location = str(path)

    @classmethod
    def open(cls, path: Path) -> SqliteReader:
        """Open read-only; a missing file is an empty state (and nothing is created)."""
        path = Path(path)
        if not path.exists():
            return cls(None, path)
        _refuse_special(path)
        try:
            conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
            db = _Connection(conn)
            pending = _pending(conn, path)
        except sqlite3.DatabaseError as exc:
            raise _not_state(path, exc) from None
        if pending and KNOWN_MIGRATIONS[0] in pending:
            empty = not db.table_names()  # being created by a writer: an empty state
            conn.close()
            if empty:
                return cls(None, path)
            raise _not_state(path, "no schema")
        if pending:
            conn.close()
            raise StateError(
                f"{path}: the state was written by an older batchops and needs upgrading "
                f"(migration {pending[0]}): run `batchops state migrate`"
            )
        return cls(db, path)

    def close(self) -> None:
        if self.db is not None:
            self.db.conn.close()

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        if self.db is None:
            return []
        return self.db.execute(sql, list(params)).fetchall()

    @property
    def exists(self) -> bool:
        return self.db is not None

    def item_records(self, jobs: Sequence[str] | None = None) -> Iterator[ItemRecord]:
        if self.db is None:
            return
        sql, params = _ITEM_SQL, []
        if jobs is not None:
            sql += f" where i.job in ({', '.join('?' for _ in jobs)})"
            params = list(jobs)
        with paused_gc():  # a million records, a million tuples, none in a cycle
            yield from map(ItemRecord._make, self.db.execute(sql, params))

    def inflight_records(self) -> Iterator[ItemRecord]:
        if self.db is None:
            return
        yield from map(ItemRecord._make, self.db.execute(f"{_ITEM_SQL} where {INFLIGHT}"))

    def _batches(self, where: str = "", params: Sequence[Any] = ()) -> list[BatchRecord]:
        if self.db is None:
            return []
        cursor = self.db.execute(f"{_BATCH_SQL} {where} order by b.created_at", list(params))
        names = [d[0] for d in cursor.description]
        return [BatchRecord.from_row(dict(zip(names, row, strict=True))) for row in cursor]

    def leases(self) -> list[LockInfo]:
        if self.db is None:
            return []
        if "leases" in self.db.table_names():
            return [LockInfo(*r) for r in self._rows(f"select {_LEASE_COLUMNS} from leases")]
        rows = self._rows("select lock_id, pid, host, since, command from lock where id = 1")
        return [LockInfo(*r) for r in rows]  # a state from before leases: its one lock

    def sent_attempt_rows(self, batch_id: str) -> Iterator[tuple[str, int, str, str]]:
        if self.db is None:
            return iter(())
        # straight from the cursor: a batch of 100,000 is not also held as a list of rows
        return self.db.execute(SENT_ATTEMPTS, [batch_id])

    def result_lookup(self, job: str, key: str) -> ResultLookup | None:
        if self.db is None:
            return None
        found = self.db.execute(
            f"{_ITEM_SQL} left join results r on r.id = i.result_id where i.job = ? and i.key = ?",
            [job, key],
        ).fetchone()
        if found is None:
            return None
        result = (
            self.db.execute(
                "select r.fingerprint, r.type, r.text, r.message, r.stop_reason, r.model,"
                " r.input_tokens, r.output_tokens, r.batch_id from items i"
                " join results r on r.id = i.result_id where i.job = ? and i.key = ?",
                [job, key],
            ).fetchone()
            or (None,) * 9
        )
        return ResultLookup(ItemRecord._make(found), *result)

    def result_lookups(self, job: str) -> Callable[[str], ResultLookup | None]:
        """A fast `result_lookup` for one job (one prepared query per key)."""
        if self.db is None:
            return lambda key: None
        execute = self.db.conn.execute
        sql = f"{_LOOKUP_SQL} where i.job = ? and i.key = ?"

        def lookup(key: str) -> ResultLookup | None:
            row = execute(sql, (job, key)).fetchone()
            if row is None:
                return None
            return ResultLookup(ItemRecord._make(row[:12]), *row[12:])

        return lookup

    def results_of(self, job: str, keys: Sequence[str]) -> dict[str, ResultLookup]:
        if self.db is None or not keys:
            return {}
        # The keys travel as one JSON array: no limit on bound parameters, one statement to cache;
        # a key holding a NUL is left out of it and looked up alone (`_keys_array`).
        sql = f"{_LOOKUP_SQL} where i.job = ? and i.key in (select value from json_each(?))"
        array, cut = _keys_array(keys)
        conn = self.db.conn
        rows = conn.execute(sql, (job, array))
        if cut:
            one = f"{_LOOKUP_SQL} where i.job = ? and i.key = ?"
            alone = (conn.execute(one, (job, keys[at])).fetchone() for at in cut)
            rows = itertools.chain(rows.fetchall(), filter(None, alone))
        new = tuple.__new__  # the NamedTuples from their fields in C calls (this runs per item)
        return {row[1]: new(ResultLookup, (new(ItemRecord, row[:12]), *row[12:])) for row in rows}

    def succeeded_results(self, job: str, keys: Sequence[str]) -> list[SucceededRow]:
        if self.db is None or not keys:
            return [NO_SUCCEEDED_ROW] * len(keys)
        # One row per key, in the keys' order (json_each's ids), each item looked for at its
        # place along the table first (`_SUCCEEDED_ALONG_SQL`), through the index on (job, key)
        # for the keys not found there; a key holding a NUL is null in the array, which finds
        # nothing, and is looked up alone (`_keys_array`).
        conn = self.db.conn
        array, cut = _keys_array(keys)
        first = conn.execute(_ITEM_ROWID_SQL, (job, keys[0])).fetchone()
        if first is None:
            rows = conn.execute(_SUCCEEDED_SQL, (job, array)).fetchall()
        else:
            rows = conn.execute(_SUCCEEDED_ALONG_SQL, (job, array, first[0])).fetchall()
            missing = [at for at, row in enumerate(rows) if row[0] is None]
            if cut:
                alone = set(cut)
                missing = [at for at in missing if at not in alone]
            if missing:
                again = [keys[at] for at in missing]  # no NUL in them
                found = conn.execute(_SUCCEEDED_SQL, (job, orjson.dumps(again).decode()))
                for at, row in zip(missing, found.fetchall(), strict=True):
                    rows[at] = row
        for at in cut:
            row = conn.execute(_SUCCEEDED_ONE_SQL, (job, keys[at])).fetchone()
            rows[at] = row or NO_SUCCEEDED_ROW
        return rows

    def usage_rows(self, above: Sequence[int] = ()) -> Iterator[UsageRow]:
        over = " + ".join([f"({PROMPT_TOKENS} > ?)" for _ in above]) or "0"
        sql = (
            "select r.job, r.model, substr(coalesce(b.created_at, r.received_at), 1, 10),"
            " sum(coalesce(r.input_tokens, 0)), sum(coalesce(r.output_tokens, 0)),"
            " sum(max(coalesce(r.cache_creation_input_tokens, 0)"
            " - coalesce(r.cache_creation_1h_input_tokens, 0), 0)),"
            " sum(coalesce(r.cache_creation_1h_input_tokens, 0)),"
            f" sum(coalesce(r.cache_read_input_tokens, 0)), {over}"
            " from results r left join batches b on b.id = r.batch_id"
            " where r.type = 'succeeded' group by 1, 2, 3, 9"
        )
        yield from map(UsageRow._make, self._rows(sql, list(above)))

    def results_by_fingerprint(self, fingerprints: Iterable[str]) -> dict[str, int]:
        wanted = set(fingerprints)
        if self.db is None or not wanted:
            return {}
        found: dict[str, int] = {}
        sql = "select fingerprint, max(id) from results where type = 'succeeded'"
        if len(wanted) <= _FEW_FINGERPRINTS:
            ordered = sorted(wanted)
            for start in range(0, len(ordered), 500):
                chunk = ordered[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                found.update(
                    self._rows(f"{sql} and fingerprint in ({marks}) group by fingerprint", chunk)
                )
            return found
        # many: one pass over the succeeded results, keeping the wanted ones
        for fp, result_id in self.db.execute(f"{sql} group by fingerprint"):
            if fp in wanted:
                found[fp] = result_id
        return found

    # -- copies of the whole state (state push and pull)
    def dump_tables(self) -> Iterator[TableDump]:
        if self.db is None:
            return
        conn = self.db.conn
        own = not conn.in_transaction
        if own:
            conn.execute("begin")  # one snapshot for every table
        try:
            for table, columns in STATE_TABLES:
                cursor = conn.execute(f"select {', '.join(columns)} from {table} order by rowid")
                yield table, columns, _dump_rows(table, columns, cursor)
        finally:
            if own and conn.in_transaction:
                conn.execute("rollback")


class SqliteWriter(SharedWrites, SqliteReader, StateWriter):
    """The writable state, opened holding the lock (see `open`)."""

    db: _Connection

    def __init__(
        self, db: _Connection, path: Path, lock: LockInfo | None = None, seconds: float = 0.0
    ):
        super().__init__(db, path)
        self.held = lock
        self._lease_seconds = seconds  # how long a renewal extends the leases `held` names
        self._checkpointer: threading.Thread | None = None

    @classmethod
    def open(  # type: ignore[override]
        cls,
        path: Path,
        command: str = "apply",
        *,
        jobs: Sequence[str] | None = None,
        lock_timeout: float = 0.0,
        on_takeover: Callable[[LockInfo], None] | None = None,
        seconds: float | None = None,
    ) -> SqliteWriter:
        """Open for writing: create the file if needed, take the leases (one per job in `jobs`,
        or the whole state), then migrate, in one exclusive transaction."""
        path = Path(path)
        _refuse_special(path)
        existed = path.exists()
        if not existed:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), timeout=_BUSY_SECONDS, isolation_level=None)
            db = _Connection(conn)
            _use_wal(conn)
        except sqlite3.DatabaseError as exc:
            raise _not_state(path, exc) from None
        seconds = seconds or lease_seconds()
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                lock = cls._lock_and_migrate(
                    db, path, command, lease_names(jobs), existed, on_takeover, seconds
                )
                return cls(db, path, lock, seconds)
            except LockHeld:
                if time.monotonic() >= deadline:
                    conn.close()
                    raise
                time.sleep(0.25)
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise _not_state(path, exc) from None
            except BaseException:
                conn.close()
                raise

    @classmethod
    def force_unlock_at(cls, path: Path, lock_id: str) -> LockInfo:
        conn = sqlite3.connect(str(path), timeout=_BUSY_SECONDS, isolation_level=None)
        writer = cls(_Connection(conn), Path(path))
        try:
            return writer.force_unlock(lock_id)
        finally:
            conn.close()

    @classmethod
    def renew_at(cls, path: Path, lock_id: str, seconds: float) -> bool:
        """Extend the leases `lock_id` holds, from another thread's own connection."""
        conn = sqlite3.connect(str(path), timeout=_BUSY_SECONDS, isolation_level=None)
        try:
            until = iso(expiry(utcnow(), seconds))
            cursor = conn.execute(
                "update leases set expires_at = ? where lock_id = ?", [until, lock_id]
            )
            return cursor.rowcount > 0
        finally:
            conn.close()

    @staticmethod
    def _lock_and_migrate(
        db: _Connection,
        path: Path,
        command: str,
        names: list[str],
        existed: bool,
        on_takeover: Callable[[LockInfo], None] | None,
        seconds: float,
    ) -> LockInfo:
        conn = db.conn
        conn.execute("begin immediate")
        try:
            pending = _pending(conn, path)
            tables = set(db.table_names()) - {MIGRATIONS_TABLE}
            if existed and KNOWN_MIGRATIONS[0] in pending and tables:
                raise _not_state(path, "no schema")
            now = utcnow()
            if "leases" in tables:
                rows = conn.execute(f"select {_LEASE_COLUMNS} from leases").fetchall()
                held = [LockInfo(*r) for r in rows]
            elif "lock" in tables:  # a state from before leases: its one lock guards it all
                rows = conn.execute(
                    "select lock_id, pid, host, since, command from lock where id = 1"
                ).fetchall()
                held = [LockInfo(*r) for r in rows]
            else:
                held = []
            free, why = to_be_free(names, pending)  # a migration takes the whole state
            taken = to_take_over(free, held, now, str(path), why)
            table = "leases" if "leases" in tables else "lock"
            for lease in taken:
                conn.execute(f"delete from {table} where lock_id = ?", [lease.lock_id])
            if pending:
                if existed and KNOWN_MIGRATIONS[0] not in pending:
                    backup(path, path.with_name(path.name + f".backup-before-{pending[0]}"))
                from sqlite_utils import Database

                from batchops.state.sqlite_migrations import migrations

                migrations.apply(Database(conn))
            if conn.execute("select 1 from meta where key = 'lineage'").fetchone() is None:
                conn.executemany(
                    "insert or replace into meta (key, value) values (?, ?)",
                    [("lineage", str(uuid.uuid4())), ("serial", "0"), ("created_at", iso(now))],
                )
            pid, host, _, started = me()
            where = holder_where()
            info = LockInfo(
                str(uuid.uuid4()),
                pid,
                host,
                iso(now) or "",
                command,
                ",".join(names),
                iso(expiry(now, seconds)),
                where,
                started,
            )
            conn.executemany(
                f"insert into leases ({_LEASE_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (info.lock_id, pid, host, info.since, command, name, info.expires_at,
                     where, started)
                    for name in names
                ],
            )  # fmt: skip
            conn.execute("commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("rollback")
            raise
        # told once the leases are ours: a try that found another lease live rolled back
        try:
            for lease in taken if on_takeover is not None else ():
                on_takeover(lease)
        except BaseException:  # a signal or a full pipe while telling: the leases given back
            with contextlib.suppress(sqlite3.Error):
                conn.execute("delete from leases where lock_id = ?", [info.lock_id])
            raise
        return info

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic state change; bumps the serial in the same transaction.

        BEGIN IMMEDIATE: another apply (of another job) may write too, and a deferred
        transaction that reads before it writes could not wait for it. It also keeps a takeover
        out until the commit, so a writer holding leases finds them there first, or writes
        nothing (`batchops.state.leases.taken_over`)."""
        conn = self.db.conn
        conn.execute("begin immediate")
        try:
            held = self.held
            if held is not None and not conn.execute(_HOLDING, [held.lock_id]).fetchone():
                raise self._lease_taken_over(held)
            yield conn
            conn.execute("update meta set value = cast(value as integer) + 1 where key = 'serial'")
            conn.execute(NEW_WRITE_ID, [new_write_id()])
            self._renew_in(conn)
            conn.execute("commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("rollback")
            raise

    def _renew_in(self, conn: sqlite3.Connection) -> None:
        """Renew the leases held, in the write about to commit. Their keeper renews them on a
        connection of its own, which waits out this write's lock like any other: a write
        longer than the lease would commit with them unrenewed, and an apply waiting for them
        would take them over from this live holder."""
        if self.held is not None and self._lease_seconds:
            until = iso(expiry(utcnow(), self._lease_seconds))
            conn.execute(
                "update leases set expires_at = ? where lock_id = ?", [until, self.held.lock_id]
            )

    def close(self) -> None:
        self.stop_keeper()
        if self.db.conn.in_transaction:  # a reader's, left open (a copy's dump cut short):
            with contextlib.suppress(sqlite3.Error):  # the release must not land inside it
                self.db.conn.execute("rollback")
        if self.held is not None:
            with contextlib.suppress(sqlite3.Error):
                self.release_lock(self.held.lock_id)
        with contextlib.suppress(sqlite3.Error):
            self.make_durable()
        super().close()

    # -- leases (not a state change: they do not bump the serial)
    def release_lock(self, lock_id: str) -> None:
        self.db.execute("delete from leases where lock_id = ?", [lock_id])
        if self.held is not None and self.held.lock_id == lock_id:
            self.held = None

    def force_unlock(self, lock_id: str) -> LockInfo:
        held = self.leases()
        if not held:
            raise StateError(f"{self.path}: state is not locked")
        mine = [lease for lease in held if lease.lock_id == lock_id]
        if not mine:
            raise StateError(
                f"{self.path}: lock id {lock_id!r} does not match the lock held ({held[0].describe()})"
            )
        table = "leases" if "leases" in self.db.table_names() else "lock"
        self.db.execute(f"delete from {table} where lock_id = ?", [lock_id])
        return mine[0]

    def make_durable(self) -> None:
        self._join_checkpoint()
        self.db.conn.execute("pragma wal_checkpoint(truncate)")

    # -- sending
    def record_intent(
        self,
        intent_id: str,
        job: str,
        attempts: Sequence[Attempt],
        body_bytes: int,
        now: datetime,
        list_anchor: str | None = None,
    ) -> None:
        stamp = iso(now)
        with self._transaction() as conn:
            conn.execute(
                "insert into intents (id, job, created_at, request_count, body_bytes, status,"
                " list_anchor) values (?, ?, ?, ?, ?, 'open', ?)",
                [intent_id, job, stamp, len(attempts), body_bytes, list_anchor],
            )
            conn.execute(
                "insert into jobs (name, first_seen_at, last_applied_at) values (?, ?, ?)"
                " on conflict (name) do update set last_applied_at = excluded.last_applied_at",
                [job, stamp, stamp],
            )
            # The attempts (their ids in the order given), then their items by one statement,
            # as PostgreSQL does it.
            conn.executemany(
                "insert into attempts (job, key, custom_id, fingerprint, number, intent_id,"
                " status, created_at) values (?, ?, ?, ?, ?, ?, 'open', ?)",
                [
                    (job, a.key, a.custom_id, a.fingerprint, a.attempt, intent_id, stamp)
                    for a in attempts
                ],
            )
            conn.execute(
                "insert into items (job, key, custom_id, attempts, inflight_attempt, updated_at)"
                " select job, key, custom_id, 0, id, ? from attempts where intent_id = ?"
                " order by id on conflict (job, key) do update set"
                " inflight_attempt = excluded.inflight_attempt,"
                " custom_id = excluded.custom_id, updated_at = excluded.updated_at,"
                " forgotten_at = null",
                [stamp, intent_id],
            )

    # -- refresh and harvest
    def store_harvest(
        self, batch_id: str, rows: Iterable[Sequence[Any]], *, canceled_by_us: bool, now: datetime
    ) -> int:
        # The commit makes the results durable (the WAL is synced). Copying the WAL into the file
        # (SQLite's checkpoint after a commit, here tens of MB) is not needed for that, so it is
        # left out of the commit and done on a thread of its own (`_checkpoint_beside`), beside
        # whatever apply does next; `close` waits for it before the state is made self-contained.
        self.db.conn.execute("pragma wal_autocheckpoint = 0")
        try:
            count = self._store_harvest(batch_id, rows, canceled_by_us=canceled_by_us, now=now)
        finally:
            self.db.conn.execute(f"pragma wal_autocheckpoint = {_AUTOCHECKPOINT}")
        self._checkpoint_beside()
        return count

    def _checkpoint_beside(self) -> None:
        """Copy the WAL into the file on a thread with its own connection (SQLite releases the
        GIL while it copies), so that the copy overlaps what this process does next (the next
        harvest's download and parsing too: a checkpoint and a write transaction may run at once)."""
        self._join_checkpoint()  # the one before, long done by now: at most one thread at a time

        def run() -> None:
            with contextlib.suppress(sqlite3.Error):
                conn = sqlite3.connect(str(self.path), timeout=_BUSY_SECONDS, isolation_level=None)
                try:
                    conn.execute("pragma wal_checkpoint(passive)")
                finally:
                    conn.close()

        self._checkpointer = threading.Thread(target=run, name="batchops-checkpoint", daemon=True)
        self._checkpointer.start()

    def _join_checkpoint(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.join()
            self._checkpointer = None

    def _store_harvest(
        self, batch_id: str, rows: Iterable[Sequence[Any]], *, canceled_by_us: bool, now: datetime
    ) -> int:
        with self._transaction() as conn:
            # Every row this harvest inserts gets an id above the largest before it: the batch's
            # results are then read back by that range, not through an index.
            first = conn.execute("select coalesce(max(id), 0) + 1 from results").fetchone()[0]
            # straight from the iterator: the rows are never held together
            count = _insert_results(conn, rows)
            # What settles each item, narrow and in attempt order, so that the update below
            # visits items in the order they were written (results arrive shuffled: visited in
            # that order, a large state misses its cache). Attempts are not settled one by one:
            # their batch's harvested_at says they are done (`batchops.state.shared`).
            conn.execute("drop table if exists temp.harvested")
            conn.execute(
                "create temp table harvested as select attempt_id, id, type, error_type,"
                " error_message from results where id >= ? order by attempt_id",
                [first],
            )
            conn.execute(
                "update items set inflight_attempt = null, outcome = r.type,"
                " error_type = r.error_type, error_message = r.error_message,"
                " canceled_by_us = (? and r.type = 'canceled'),"
                " result_id = case when r.type = 'succeeded' then r.id end, updated_at = ?"
                " from temp.harvested r where items.inflight_attempt = r.attempt_id",
                [int(canceled_by_us), iso(now)],
            )
            conn.execute("drop table temp.harvested")
            conn.execute("update batches set harvested_at = ? where id = ?", [iso(now), batch_id])
        return count

    def record_reuse(self, job: str, items: Sequence[Reused], now: datetime) -> int:
        stamp = iso(now)
        count = 0
        with self._transaction() as conn:
            conn.execute(
                "insert into jobs (name, first_seen_at, last_applied_at) values (?, ?, ?)"
                " on conflict (name) do update set last_applied_at = excluded.last_applied_at",
                [job, stamp, stamp],
            )
            for item in items:
                count += conn.execute(
                    "insert into items (job, key, custom_id, fingerprint, attempts, outcome,"
                    " canceled_by_us, result_id, updated_at)"
                    " select ?, ?, ?, r.fingerprint, 0, 'succeeded', 0, r.id, ? from results r"
                    " where r.id = ? and r.fingerprint = ? and r.type = 'succeeded'"
                    " on conflict (job, key) do update set custom_id = excluded.custom_id,"
                    " fingerprint = excluded.fingerprint, attempts = 0, outcome = 'succeeded',"
                    " error_type = null, error_message = null, canceled_by_us = 0,"
                    " result_id = excluded.result_id, updated_at = excluded.updated_at,"
                    " forgotten_at = null where items.inflight_attempt is null",
                    [job, item.key, item.custom_id, stamp, item.result_id, item.fingerprint],
                ).rowcount
        return count

    def load_tables(
        self,
        tables: Iterable[TableDump],
        *,
        replace: bool = False,
        expected: dict[str, int] | None = None,
    ) -> dict[str, int]:
        conn = self.db.conn
        conn.execute("begin immediate")
        try:
            # the lease still ours, as every write checks it (`_transaction`)
            held = self.held
            if held is not None and not conn.execute(_HOLDING, [held.lock_id]).fetchone():
                raise self._lease_taken_over(held)
            had_rows, own_serial = not self.is_empty(), self.serial
            if had_rows and not replace:
                raise StateError(f"{self.path}: the state is not empty; nothing was copied")
            for table, _ in STATE_TABLES:
                conn.execute(f"delete from {table}")
            for table, columns, rows in tables:
                check_dump_table(table, columns)
                marks = ", ".join("?" for _ in columns)
                conn.executemany(
                    f"insert into {table} ({', '.join(columns)}) values ({marks})", rows
                )
            if self.lineage is None:
                raise StateError(f"{self.path}: the copy carries no lineage; nothing was copied")
            if had_rows:  # overwritten: a plan made against what was here must not match
                conn.execute(
                    "update meta set value = ? where key = 'serial'",
                    [str(max(self.serial, own_serial) + 1)],
                )
            counts = self.table_counts()
            if expected is not None and counts != expected:
                raise StateError(
                    f"{self.path}: the copy does not check out (rows {counts}, expected "
                    f"{expected}); nothing was copied"
                )
            # a copy is a history of its own from here: a plan made against the source (or the
            # source's plans against it) must not match, however the serials move on. Set once
            # the rows are checked: a source never written since write ids began has none.
            conn.execute(NEW_WRITE_ID, [new_write_id()])
            self._renew_in(conn)
            conn.execute("commit")
        except BaseException:
            if conn.in_transaction:
                conn.execute("rollback")
            raise
        return counts


def _insert_results(conn: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> int:
    """Insert result rows (`_ROWS_A_STATEMENT` a statement), straight from the iterator: they
    are never held together."""
    many = _INSERT_RESULT + ", ".join([_RESULT_VALUES] * _ROWS_A_STATEMENT)
    rows = iter(rows)
    count = 0
    rest: list[Sequence[Any]] = []

    def groups() -> Iterator[tuple]:
        nonlocal count
        while True:
            group = list(itertools.islice(rows, _ROWS_A_STATEMENT))
            count += len(group)
            if len(group) < _ROWS_A_STATEMENT:
                rest.extend(group)
                return
            yield tuple(itertools.chain.from_iterable(group))

    conn.executemany(many, groups())
    if rest:
        conn.executemany(_INSERT_RESULT + _RESULT_VALUES, rest)
    return count


def _dump_rows(table: str, columns: tuple[str, ...], rows: Iterable[tuple]) -> Iterator[tuple]:
    """Rows as a dump carries them: SQLite's 0/1 flags as bools."""
    flags = {columns.index(c) for c in FLAG_COLUMNS.get(table, ())}
    if not flags:
        yield from rows
        return
    for row in rows:
        yield tuple(bool(v) if i in flags and v is not None else v for i, v in enumerate(row))


def backup(source: Path, target: Path) -> Path:
    """Copy a state file with SQLite's online backup API (consistent even under WAL)."""
    _refuse_special(Path(source))
    src = sqlite3.connect(f"file:{Path(source).resolve()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(str(target))
        with dst:
            src.backup(dst)
        dst.close()
    finally:
        src.close()
    return target
