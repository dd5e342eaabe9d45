"""Batches and their requests in SQLite, and the lifecycle computed from them.

Requests live in SQLite rather than in Python objects so a 100,000-request batch costs the server
little memory once created, and results can be generated lazily, a page at a time, while they are
streamed. With `db_path` set, batches (and the clock offset) survive a restart.

Nothing runs in the background: a batch's status is a pure function of its stored instants and the
clock (`lifecycle`), worked out again on every read.
"""

from __future__ import annotations

import math
import random
import sqlite3
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import orjson

from batchops.emulator.clock import Clock, random_id
from batchops.emulator.config import RuntimeSettings
from batchops.emulator.faults import Outcome, marker_outcome, rate_outcome
from batchops.emulator.responses import FAULT_MESSAGES, cache_prefix, validation_error
from batchops.errors import BatchopsError
from batchops.lazyclass import dataclass

DAY = 86_400.0
EXPIRY = 1 * DAY
RETENTION = 29 * DAY
INSERT_CHUNK = 2_000
RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    duration REAL NOT NULL,
    cancel_duration REAL NOT NULL,
    cancel_at REAL,
    request_count INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS requests (
    batch_seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error_type TEXT,
    error_message TEXT,
    cache_state TEXT,
    params TEXT NOT NULL,
    PRIMARY KEY (batch_seq, idx)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS requests_pos ON requests (batch_seq, pos);
CREATE TABLE IF NOT EXISTS submissions (custom_id TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS cache_prefixes (hash TEXT PRIMARY KEY);
"""


@dataclass(frozen=True)
class BatchRow:
    seq: int
    id: str
    created_at: float
    duration: float
    cancel_duration: float
    cancel_at: float | None
    request_count: int
    deleted: bool


@dataclass(frozen=True)
class Lifecycle:
    """Where a batch stands at one instant; `processed` requests keep their planned result."""

    status: str
    ended_at: float | None
    processed: int
    cut: str | None  # what the unprocessed requests become: "canceled", "expired" or None
    archived_at: float | None
    expires_at: float


def lifecycle(row: BatchRow, now: float) -> Lifecycle:
    """The status of `row` at internal instant `now` (pure; see the module docstring)."""
    expires = row.created_at + EXPIRY
    end = row.created_at + row.duration
    cut, cut_time = None, end
    if row.cancel_at is not None and row.cancel_at + row.cancel_duration < end:
        end = row.cancel_at + row.cancel_duration
        cut, cut_time = "canceled", row.cancel_at
    if end > expires:
        end = expires
        if cut is None:
            cut, cut_time = "expired", expires
    n = row.request_count
    processed = n
    if cut is not None:
        done = (cut_time - row.created_at) / row.duration if row.duration > 0 else 1.0
        processed = min(n, max(0, math.floor(n * done)))
    if now >= end:
        status = "ended"
    elif row.cancel_at is not None:
        status = "canceling"
    else:
        status = "in_progress"
    archive = row.created_at + RETENTION
    return Lifecycle(
        status=status,
        ended_at=end if status == "ended" else None,
        processed=processed,
        cut=cut,
        archived_at=archive if now >= archive else None,
        expires_at=expires,
    )


@dataclass(frozen=True)
class ResultRow:
    idx: int
    custom_id: str
    outcome: str
    error_type: str | None
    error_message: str | None
    cache_state: str | None
    params: str


class Store:
    """All emulator state behind one lock; every method is one short transaction."""

    def __init__(self, db_path: Path | None, clock: Clock, markers: bool = True) -> None:
        """`markers` False makes `[[emulator:…]]` markers plain text (faults off)."""
        self.markers = markers
        self._lock = threading.RLock()
        self.clock = clock
        try:
            self._db = sqlite3.connect(
                str(db_path) if db_path else ":memory:",
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.DatabaseError as exc:  # a directory, or a place it cannot create a file
            raise BatchopsError(
                f"{db_path}: cannot open the emulator's batches file ({exc})"
            ) from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL" if db_path else "PRAGMA journal_mode=MEMORY")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='clock_offset'").fetchone()
            if row:
                clock.offset = float(row[0])
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            # not SQLite, or not the emulator's: SQLite only finds out on the first statement
            self._db.close()
            raise BatchopsError(
                f"{db_path}: not an emulator batches file ({exc}); move it away or pass another"
            ) from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ clock
    def advance_clock(self, seconds: float) -> float:
        with self._lock:
            offset = self.clock.advance(seconds)
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('clock_offset', ?)",
                (repr(offset),),
            )
            return offset

    # ------------------------------------------------------------------ batches
    def _row(self, values: tuple) -> BatchRow:
        return BatchRow(*values[:7], deleted=bool(values[7]))

    _COLS = "seq, id, created_at, duration, cancel_duration, cancel_at, request_count, deleted"

    def get(self, batch_id: str) -> BatchRow | None:
        """A batch that exists and was not deleted."""
        with self._lock:
            values = self._db.execute(
                f"SELECT {self._COLS} FROM batches WHERE id = ? AND deleted = 0", (batch_id,)
            ).fetchone()
        return self._row(values) if values else None

    def queued(self) -> int:
        """Requests of the batches not ended (and not deleted): the processing queue."""
        now = self.clock.now()
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._COLS} FROM batches WHERE deleted = 0"
            ).fetchall()
        return sum(
            row.request_count
            for row in map(self._row, rows)
            if lifecycle(row, now).status != "ended"
        )

    def create(
        self, requests: list[Any], settings: RuntimeSettings, count_submissions: bool = True
    ) -> BatchRow:
        """Store a batch whose envelope was already checked; plan every request's result now.

        Consumes `requests`: each entry is dropped once stored, and rows go to SQLite a chunk at
        a time, so a 100,000-request create never holds a second copy of the payload.
        `count_submissions` False leaves `stats()["submissions"]` alone (another client's batch).
        """
        positions = list(range(len(requests)))
        random.shuffle(positions)  # results come back in no particular order
        seen_prefixes: set[str] = set()
        with self._lock:
            batch_id = random_id("msgbatch_")
            self._db.execute("BEGIN")
            try:
                cur = self._db.execute(
                    "INSERT INTO batches (id, created_at, duration, cancel_duration, request_count)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        batch_id,
                        self.clock.now(),
                        settings.processing_seconds / settings.speed,
                        settings.cancel_seconds / settings.speed,
                        len(requests),
                    ),
                )
                seq = cur.lastrowid
                cut: set[str] = set()  # "expired" / "canceled" results planned for this batch
                for start in range(0, len(requests), INSERT_CHUNK):
                    rows = []
                    for idx in range(start, min(start + INSERT_CHUNK, len(requests))):
                        req, requests[idx] = requests[idx], None
                        rows.append(
                            (
                                seq,
                                idx,
                                positions[idx],
                                *self._request_row(req, settings, seen_prefixes),
                            )
                        )
                    self._db.executemany(
                        "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                    )
                    cut.update(r[5] for r in rows if r[5] in ("expired", "canceled"))
                    if count_submissions:
                        self._db.executemany(
                            "INSERT INTO submissions (custom_id, count) VALUES (?, 1)"
                            " ON CONFLICT (custom_id) DO UPDATE SET count = count + 1",
                            ((r[3],) for r in rows),
                        )
                self._db.executemany(
                    "INSERT OR IGNORE INTO cache_prefixes (hash) VALUES (?)",
                    ((h,) for h in seen_prefixes),
                )
                self._cut_as_the_api_would(seq, cut)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        found = self.get(batch_id)
        if found is None:  # pragma: no cover - just inserted under the same lock
            raise RuntimeError("batch vanished after insert")
        return found

    def _cut_as_the_api_would(self, seq: int, cut: set[str]) -> None:
        """A batch with `expired` or `canceled` results planned (a fault) in the only states the
        API shows them in: an expired request is one the batch never sent before `expires_at`,
        so the batch runs until then; a canceled one is one a cancel stopped, so the batch has a
        cancel (someone else's, `cancel_initiated_at`), made late enough that every other
        request keeps its planned result."""
        if "expired" in cut:
            self._db.execute("UPDATE batches SET duration = ? WHERE seq = ?", (EXPIRY, seq))
        if "canceled" in cut:
            self._db.execute(
                "UPDATE batches SET cancel_at = max(created_at,"
                " created_at + duration - cancel_duration) WHERE seq = ?",
                (seq,),
            )

    def _request_row(
        self, req: dict[str, Any], settings: RuntimeSettings, seen_prefixes: set[str]
    ) -> tuple:
        """(custom_id, attempt, outcome, error type, message, cache state, params JSON)."""
        custom_id = req["custom_id"]
        params = req.get("params")
        # Stored as text: orjson's bytes keep a 4 KiB buffer, which 100,000 rows can't afford.
        text = orjson.dumps(params).decode()
        found = self._db.execute(
            "SELECT count FROM submissions WHERE custom_id = ?", (custom_id,)
        ).fetchone()
        attempt = found[0] if found else 0
        outcome, error_type, message = self._plan(
            text if self.markers else "", params, custom_id, attempt, settings
        )
        cache_state = None
        if outcome == "succeeded" and "cache_control" in text:
            prefix = cache_prefix(params)
            if prefix is not None:
                known = (
                    prefix[0] in seen_prefixes
                    or self._db.execute(
                        "SELECT 1 FROM cache_prefixes WHERE hash = ?", (prefix[0],)
                    ).fetchone()
                )
                cache_state = "read" if known else "write"
                seen_prefixes.add(prefix[0])
        return custom_id, attempt, outcome, error_type, message, cache_state, text

    @staticmethod
    def _plan(
        text: str, params: Any, custom_id: str, attempt: int, settings: RuntimeSettings
    ) -> tuple[str, str | None, str | None]:
        """(outcome, error type, error message) for one request if it gets processed."""
        fault: Outcome | None = None
        if "[[emulator:" in text:
            fault = marker_outcome(text, attempt)
        if fault is None:
            problem = validation_error(params, settings.extra_models)
            if problem is not None:
                return "errored", "invalid_request_error", problem
            fault = rate_outcome(settings.seed, custom_id, attempt, settings.fault_rates)
        if fault is None:
            return "succeeded", None, None
        kind, error_type = fault
        if error_type is None:
            return kind, None, None
        return kind, error_type, FAULT_MESSAGES.get(error_type, f"Injected {error_type}")

    def cancel(self, row: BatchRow) -> BatchRow:
        with self._lock:
            self._db.execute(
                "UPDATE batches SET cancel_at = ? WHERE seq = ? AND cancel_at IS NULL",
                (self.clock.now(), row.seq),
            )
        found = self.get(row.id)
        if found is None:  # pragma: no cover
            raise RuntimeError("batch vanished during cancel")
        return found

    def delete(self, row: BatchRow) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("UPDATE batches SET deleted = 1 WHERE seq = ?", (row.seq,))
            self._db.execute("DELETE FROM requests WHERE batch_seq = ?", (row.seq,))
            self._db.execute("COMMIT")

    def page(
        self,
        limit: int,
        after_id: str | None,
        before_id: str | None,
        hidden: Collection[str] = (),
        deleted_cursors: bool = True,
    ) -> tuple[list[BatchRow], bool] | None:
        """Newest first; None when a cursor id is unknown (or deleted, unless `deleted_cursors`).
        `hidden` ids are left out."""
        skip = orjson.dumps(sorted(hidden)).decode()
        with self._lock:
            if before_id is not None:
                cursor = self._seq(before_id, deleted_cursors)
                if cursor is None:
                    return None
                found = self._db.execute(
                    f"SELECT {self._COLS} FROM batches WHERE deleted = 0 AND seq > ?"
                    f" AND {self._VISIBLE} ORDER BY seq ASC LIMIT ?",
                    (cursor, skip, limit + 1),
                ).fetchall()
                has_more = len(found) > limit
                rows = list(reversed(found[:limit]))
            else:
                cursor = None
                if after_id is not None:
                    cursor = self._seq(after_id, deleted_cursors)
                    if cursor is None:
                        return None
                found = self._db.execute(
                    f"SELECT {self._COLS} FROM batches WHERE deleted = 0 AND seq < ?"
                    f" AND {self._VISIBLE} ORDER BY seq DESC LIMIT ?",
                    (cursor if cursor is not None else 2**62, skip, limit + 1),
                ).fetchall()
                has_more = len(found) > limit
                rows = found[:limit]
        return [self._row(r) for r in rows], has_more

    _VISIBLE = "id NOT IN (SELECT value FROM json_each(?))"

    def _seq(self, batch_id: str, deleted: bool = True) -> int | None:
        found = self._db.execute(
            "SELECT seq FROM batches WHERE id = ?" + ("" if deleted else " AND deleted = 0"),
            (batch_id,),
        ).fetchone()
        return found[0] if found else None

    # ------------------------------------------------------------------ results
    def counts(self, row: BatchRow, life: Lifecycle) -> dict[str, int]:
        """request_counts as the API reports them: all `processing` until the batch ends."""
        counts = dict.fromkeys(("processing", *RESULT_TYPES), 0)
        if life.status != "ended":
            counts["processing"] = row.request_count
            return counts
        with self._lock:
            for outcome, n in self._db.execute(
                "SELECT outcome, count(*) FROM requests WHERE batch_seq = ? AND idx < ?"
                " GROUP BY outcome",
                (row.seq, life.processed),
            ):
                counts[outcome] += n
        if life.cut is not None:
            counts[life.cut] += row.request_count - life.processed
        return counts

    def result_rows(self, row: BatchRow, page_size: int = 1000) -> Iterator[ResultRow]:
        """Every request of the batch in shuffled order, fetched a page at a time."""
        last = -1
        while True:
            with self._lock:
                page = self._db.execute(
                    "SELECT idx, custom_id, outcome, error_type, error_message, cache_state,"
                    " params, pos FROM requests WHERE batch_seq = ? AND pos > ?"
                    " ORDER BY pos LIMIT ?",
                    (row.seq, last, page_size),
                ).fetchall()
            if not page:
                return
            for values in page:
                yield ResultRow(*values[:7])
            last = page[-1][7]

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict[str, Any]:
        with self._lock:
            created = self._db.execute("SELECT count(*) FROM batches").fetchone()[0]
            subs = dict(self._db.execute("SELECT custom_id, count FROM submissions"))
        return {"batches_created": created, "submissions": subs}
