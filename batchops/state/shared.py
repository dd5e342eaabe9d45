"""Reads and writes that read the same on every backend: SQL written once, with `?` placeholders,
that each backend adapts (`_sql`) and runs through its own `_rows` (reads) or in its own
transaction (`_transaction`, one per write, bumping the serial). What differs between SQLite and
PostgreSQL (opening, leases, bulk loads and reads, harvest) stays in `sqlite` and `postgres`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from batchops.clock import iso, parse_time, utcnow
from batchops.errors import LockHeld, StateError
from batchops.state.api import (
    OUTCOMES,
    OUTPUT_MEANS_SQL,
    OUTPUT_SAMPLE,
    RELEASE_DRIFTS,
    STATE_TABLES,
)
from batchops.state.leases import taken_over
from batchops.state.records import BatchRecord, IntentRecord, JobSummary, LockInfo, SentAttempt

# Every table holding a job's rows, and how it names the job.
JOB_TABLES = (
    ("items", "job = ?"),
    ("attempts", "job = ?"),
    ("results", "job = ?"),
    ("batches", "job = ?"),
    ("intents", "job = ?"),
    ("jobs", "name = ?"),
)

# `remove` of a job (four times its name): the job's results that items of other jobs point at
# (reuse answered them from it) move to the first such item, rather than be deleted under it.
_FIRST_REUSER = (
    "select i.{col} from items i where i.result_id = results.id and i.job <> ?"
    " order by i.job, i.key limit 1"
)
KEEP_REUSED_RESULTS = (
    f"update results set job = ({_FIRST_REUSER.format(col='job')}),"
    f" key = ({_FIRST_REUSER.format(col='key')})"
    " where job = ? and id in (select result_id from items where job <> ? and result_id is not null)"
)

# How many of a job's results `remove` keeps (its name twice).
KEPT_RESULTS_COUNT = (
    "select count(*) from results where job = ?"
    " and id in (select result_id from items where job <> ? and result_id is not null)"
)


def removal_rows(counts: dict[str, int], kept: int) -> dict[str, int]:
    """`remove`'s rows per table, with the results it keeps for other jobs apart."""
    if not kept:
        return counts
    return {**counts, "results": counts["results"] - kept, "results kept for other jobs": kept}


# The batch and attempts of `remove` of a batch (its id once).
# What a result line must match to be stored: custom_id, attempt id, key, fingerprint.
# A new random id each write transaction (and each copy into a state) leaves in `meta`, beside
# the serial: two copies of one state (`state push` while the old file is still used) have equal
# lineages and serials at the copy, and may reach equal serials again by different writes; their
# write ids differ from the copy on. (`?` marks: PostgreSQL's writer swaps them for `%s`.)
NEW_WRITE_ID = (
    "insert into meta (key, value) values ('write_id', ?)"
    " on conflict (key) do update set value = excluded.value"
)


def new_write_id() -> str:
    return uuid.uuid4().hex


# The items in flight (`inflight_records`), as a range of attempt ids (all positive) rather than
# `is not null`: SQLite reads the range through the index on inflight_attempt, the other as a
# scan of every item.
INFLIGHT = "i.inflight_attempt > 0"

# A harvest settles no attempt row by row (a tenth of its time at 100,000 results): the attempts a
# harvested batch carried stay `sent`, and are done because their batch is harvested, each with
# its stored result's type as its outcome (`batch_detail`). States written before kept `done`.
_NOT_HARVESTED = "batch_id not in (select id from batches where harvested_at is not null)"
SENT_ATTEMPTS = (
    "select custom_id, id, key, fingerprint from attempts where batch_id = ? and status = 'sent'"
    f" and {_NOT_HARVESTED}"
)
UNFINISHED_ANY = "batch_id = ? and status in ('open', 'sent')"
UNFINISHED = f"{UNFINISHED_ANY} and {_NOT_HARVESTED}"
# Of a harvested batch, the attempts still in flight: none that a harvest stores, which checks
# every attempt has its result (`verified_rows`), but given up, not left, should one be there.
UNANSWERED = (
    f"{UNFINISHED_ANY} and id in (select inflight_attempt from items where inflight_attempt > 0)"
)
# A result's request length, as a price row's `long_context` counts it: input tokens, cached ones
# (written or read) included.
PROMPT_TOKENS = (
    "(coalesce(r.input_tokens, 0) + coalesce(r.cache_creation_input_tokens, 0)"
    " + coalesce(r.cache_read_input_tokens, 0))"
)


def _times(batch: BatchRecord) -> list[str | None]:
    """A batch's remote times, in the order the batches table's writes list them."""
    return [
        iso(batch.created_at),
        iso(batch.expires_at),
        iso(batch.ended_at),
        iso(batch.archived_at),
        iso(batch.results_expire_at),
    ]


class SharedReads:
    """Mixed into each backend's reader, before `StateReader` in the MRO."""

    location: str

    # provided by the backend: every row of a query (none when the state does not exist yet),
    # and the batches a `where` clause (with `?` placeholders) selects, oldest first
    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]: ...

    def _batches(self, where: str = "", params: Sequence[Any] = ()) -> list[BatchRecord]: ...

    @property
    def exists(self) -> bool: ...

    def _sql(self, sql: str) -> str:
        """`sql`, written with `?` placeholders, as the backend's driver takes it."""
        return sql

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._rows(self._sql(sql), params)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._all(sql, params)
        return rows[0][0] if rows else None

    def sent_attempt_rows(self, batch_id: str) -> Iterator[tuple[str, int, str, str]]: ...

    def sent_attempts(self, batch_id: str) -> dict[str, SentAttempt]:
        return {r[0]: SentAttempt(r[1], r[2], r[3]) for r in self.sent_attempt_rows(batch_id)}

    def meta(self, key: str) -> str | None:
        return self._one("select value from meta where key = ?", [key])

    @property
    def lineage(self) -> str | None:
        return self.meta("lineage")

    @property
    def serial(self) -> int:
        value = self.meta("serial")
        return int(value) if value is not None else 0

    @property
    def write_id(self) -> str | None:
        return self.meta("write_id")

    def batches(self) -> list[BatchRecord]:
        return self._batches()

    def batch(self, batch_id: str) -> BatchRecord | None:
        found = self._batches("where b.id = ?", [batch_id])
        return found[0] if found else None

    def inflight_by_batch(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        sql = (
            "select a.batch_id, a.job, a.key from items i join attempts a on a.id = i.inflight_attempt"
            " where a.batch_id is not null"
        )
        for batch_id, job, key in self._all(sql):
            out.setdefault(batch_id, set()).add(f"{job}\x1f{key}")
        return out

    def open_intents(self) -> list[IntentRecord]:
        sql = (
            "select id, job, created_at, request_count, status, batch_id, list_anchor,"
            " create_sent_at is not null from intents where status = 'open' order by created_at"
        )
        return [
            IntentRecord(
                r[0], r[1], parse_time(r[2]) or utcnow(), r[3], r[4], r[5], r[6], bool(r[7])
            )
            for r in self._all(sql)
        ]

    def lock(self) -> LockInfo | None:
        held = self.leases()  # type: ignore[attr-defined]
        return held[0] if held else None

    def intent_custom_ids(self, intent_id: str) -> set[str]:
        rows = self._all("select custom_id from attempts where intent_id = ?", [intent_id])
        return {r[0] for r in rows}

    def plan_applied(self, plan_id: str) -> bool:
        return bool(self._all("select 1 from applied_plans where plan_id = ?", [plan_id]))

    def job_names(self) -> list[str]:
        sql = (
            "select name from jobs union select job from items union select job from batches"
            " union select job from results union select job from intents order by 1"
        )
        return [r[0] for r in self._all(sql) if r[0] is not None]

    def job_summaries(self, names: Sequence[str]) -> list[JobSummary]:
        items: dict[str, list[int]] = {}
        outcomes: dict[str, dict[str, int]] = {}
        sql = (
            "select job, outcome, inflight_attempt is not null, count(*) from items"
            " group by 1, 2, 3"
        )
        for job, outcome, inflight, count in self._all(sql):
            total = items.setdefault(job, [0, 0])
            total[0] += count
            if inflight:
                total[1] += count
            per = outcomes.setdefault(job, dict.fromkeys((*OUTCOMES, "none"), 0))
            per[outcome if outcome in per else "none"] += count
        batches = dict(self._all("select job, count(*) from batches group by job"))
        results = dict(self._all("select job, count(*) from results group by job"))
        return [
            JobSummary(
                name,
                items.get(name, [0, 0])[0],
                items.get(name, [0, 0])[1],
                outcomes.get(name, dict.fromkeys((*OUTCOMES, "none"), 0)),
                batches.get(name, 0),
                results.get(name, 0),
            )
            for name in names
        ]

    def batch_detail(self, batch_id: str) -> tuple[str | None, dict[str, int], int]:
        by_status = self._all(
            "select status, coalesce(outcome, status), count(*) from attempts where batch_id = ?"
            " group by 1, 2",
            [batch_id],
        )
        attempts: dict[str, int] = {}
        results = 0
        if self._one("select harvested_at from batches where id = ?", [batch_id]) is None:
            for status, shown, count in by_status:
                attempts[shown] = attempts.get(shown, 0) + count
                if status == "done":  # answered by a result stored (a batch id met again)
                    results += count
        else:
            # The attempts its harvest answered are told by their results: one stored a result
            # (SQLite keeps no index of results by batch (m0007): read once, for this command).
            stored = self._all(
                "select type, count(*) from results where batch_id = ? group by 1", [batch_id]
            )
            results = sum(count for _, count in stored)
            answered = 0
            for status, shown, count in by_status:
                if status in ("sent", "done"):
                    answered += count
                else:
                    attempts[shown] = attempts.get(shown, 0) + count
            for kind, count in stored:
                attempts[kind] = attempts.get(kind, 0) + count
            if answered > results:  # sent, and answered by no stored result
                attempts["sent"] = attempts.get("sent", 0) + answered - results
        attempts = dict(sorted(attempts.items()))
        intent = self._one("select intent_id from batches where id = ?", [batch_id])
        return intent, attempts, results

    def output_token_means(
        self, jobs: Iterable[str], sample: int = OUTPUT_SAMPLE
    ) -> dict[str, dict[str, tuple[int, float]]]:
        out: dict[str, dict[str, tuple[int, float]]] = {}
        for job in dict.fromkeys(jobs):
            for model, count, mean in self._all(OUTPUT_MEANS_SQL, [job, sample]):
                if count:
                    out.setdefault(job, {})[model or ""] = (int(count), float(mean))
        return out

    def removal_counts(self, target: str) -> tuple[str, dict[str, int]] | None:
        if not self.exists:
            return None
        record = self.batch(target)
        if record is not None:
            unfinished = UNFINISHED if record.harvested_at is None else UNANSWERED
            in_flight = f"inflight_attempt in (select id from attempts where {unfinished})"
            return "batch", {
                "batches": 1,
                "items": self._one(f"select count(*) from items where {in_flight}", [target]),
                "attempts": self._one(
                    f"select count(*) from attempts where {unfinished}", [target]
                ),
            }
        if target not in self.job_names():
            return None
        counts = {
            table: self._one(f"select count(*) from {table} where {where}", [target])
            for table, where in JOB_TABLES
        }
        kept = self._one(KEPT_RESULTS_COUNT, [target, target]) or 0
        return "job", removal_rows(counts, kept)

    def table_counts(self) -> dict[str, int]:
        return {table: self._one(f"select count(*) from {table}") or 0 for table, _ in STATE_TABLES}


class SharedWrites:
    """Mixed into each backend's writer, before its reader in the MRO."""

    location: str

    # provided by the backend
    def _transaction(self) -> Any: ...  # a context manager yielding something with .execute

    _sql: Any  # the reader's (`SharedReads._sql`): not defined here, or it would hide it
    keeper: Any  # the writer's (`StateWriter.keeper`)

    def _lease_taken_over(self, held: LockInfo) -> LockHeld:
        """The error of a write transaction that found this writer's leases gone (see
        `batchops.state.leases.taken_over`); the keeper is told, as its own beat would."""
        if self.keeper is not None:
            self.keeper.lost = True
        return taken_over(held, self.location)

    def _run(self, sql: str, params: list[Any]) -> int:
        with self._transaction() as conn:
            return conn.execute(self._sql(sql), params).rowcount

    def record_created(
        self, intent_id: str, batch: BatchRecord, now: datetime, *, adopted: bool = False
    ) -> None:
        stamp, sql = iso(now), self._sql
        with self._transaction() as conn:
            count = conn.execute(
                sql("select count(*) from attempts where intent_id = ?"), [intent_id]
            ).fetchone()[0]
            conn.execute(
                sql(
                    "insert into batches (id, job, intent_id, request_count, processing_status,"
                    " request_counts, created_at, expires_at, ended_at, archived_at,"
                    " results_expire_at, refreshed_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                [
                    batch.id,
                    batch.job,
                    intent_id,
                    count,
                    batch.processing_status,
                    batch.request_counts,
                    *_times(batch),
                    stamp,
                ],
            )
            conn.execute(
                sql("update attempts set status = 'sent', batch_id = ? where intent_id = ?"),
                [batch.id, intent_id],
            )
            conn.execute(
                sql(
                    "update items set fingerprint = a.fingerprint, attempts = a.number,"
                    " updated_at = ? from attempts a"
                    " where a.id = items.inflight_attempt and a.intent_id = ?"
                ),
                [stamp, intent_id],
            )
            conn.execute(
                sql("update intents set status = ?, batch_id = ? where id = ?"),
                ["adopted" if adopted else "created", batch.id, intent_id],
            )

    def mark_unsent(self, intent_id: str) -> None:
        sql = self._sql
        with self._transaction() as conn:
            conn.execute(
                sql("update attempts set status = 'unsent' where intent_id = ?"), [intent_id]
            )
            conn.execute(
                sql(
                    "update items set inflight_attempt = null where inflight_attempt in"
                    " (select id from attempts where intent_id = ?)"
                ),
                [intent_id],
            )
            conn.execute(sql("update intents set status = 'unsent' where id = ?"), [intent_id])

    def save_batch(self, batch: BatchRecord, now: datetime) -> None:
        with self._transaction() as conn:
            conn.execute(
                self._sql(
                    "update batches set processing_status = ?, request_counts = ?, created_at = ?,"
                    " expires_at = ?, ended_at = ?, archived_at = ?, results_expire_at = ?,"
                    " drift = ?, pruned_at = ?, refreshed_at = ? where id = ?"
                ),
                [
                    batch.processing_status,
                    batch.request_counts,
                    *_times(batch),
                    batch.drift,
                    iso(batch.pruned_at),
                    iso(now),
                    batch.id,
                ],
            )

    def _release(
        self, conn: Any, batch_id: str, drift: str, now: datetime, unfinished: str = UNFINISHED
    ) -> tuple[int, int]:
        """Give a batch's unfinished attempts up (`drift` says why), in the caller's transaction:
        their items are no longer in flight; (items released, attempts given up)."""
        if drift not in RELEASE_DRIFTS:
            raise ValueError(f"unknown drift {drift!r}")
        sql = self._sql
        released = conn.execute(
            sql(
                "update items set inflight_attempt = null, outcome = 'lost',"
                " attempts = case when attempts > 0 then attempts - 1 else 0 end, updated_at = ?"
                f" where inflight_attempt in (select id from attempts where {unfinished})"
            ),
            [iso(now), batch_id],
        ).rowcount
        if drift == "not-ours":
            conn.execute(
                sql("update intents set status = 'unsent', batch_id = null where batch_id = ?"),
                [batch_id],
            )
            attempts = conn.execute(
                sql(f"update attempts set status = 'unsent', batch_id = null where {unfinished}"),
                [batch_id],
            ).rowcount
        else:
            attempts = conn.execute(
                sql(f"update attempts set status = 'lost', outcome = 'lost' where {unfinished}"),
                [batch_id],
            ).rowcount
        conn.execute(sql("update batches set drift = ? where id = ?"), [drift, batch_id])
        return released, attempts

    def release_batch(self, batch_id: str, drift: str, now: datetime) -> int:
        with self._transaction() as conn:
            return self._release(conn, batch_id, drift, now)[0]

    def mark_create_sent(self, intent_id: str, now: datetime) -> None:
        self._run("update intents set create_sent_at = ? where id = ?", [iso(now), intent_id])

    def forget(self, keys: Iterable[tuple[str, str]], now: datetime) -> None:
        stamp = iso(now)
        params = [(stamp, job, key) for job, key in keys]
        with self._transaction() as conn:
            if params:
                conn.executemany(
                    self._sql(
                        "update items set forgotten_at = ? where job = ? and key = ?"
                        " and inflight_attempt is null"
                    ),
                    params,
                )

    def remember(self, keys: Iterable[tuple[str, str]]) -> None:
        params = list(keys)
        with self._transaction() as conn:
            if params:
                conn.executemany(
                    self._sql("update items set forgotten_at = null where job = ? and key = ?"),
                    params,
                )

    def mark_cancel_requested(self, batch_id: str, now: datetime) -> None:
        self._run("update batches set canceled_by_us_at = ? where id = ?", [iso(now), batch_id])

    def record_cancel(
        self, batch_id: str, cancel_initiated_at: datetime | None, processing_status: str
    ) -> None:
        self._run(
            "update batches set cancel_initiated_at = ?, processing_status = ? where id = ?",
            [iso(cancel_initiated_at), processing_status, batch_id],
        )

    def mark_pruned(self, batch_id: str, now: datetime) -> None:
        self._run("update batches set pruned_at = ? where id = ?", [iso(now), batch_id])

    def record_plan_applied(self, plan_id: str, now: datetime) -> None:
        self._run(
            "insert into applied_plans (plan_id, applied_at) values (?, ?)", [plan_id, iso(now)]
        )

    def remove(self, target: str) -> tuple[str, dict[str, int]]:
        with self._transaction() as conn:
            record = self.batch(target)  # type: ignore[attr-defined]
            if record is not None:
                if record.harvested_at is None:
                    items, attempts = self._release(conn, target, "deleted", utcnow())
                else:
                    # The attempts its harvest answered are done by its harvested_at, which goes
                    # with its row: each set done with its result's type here (as a harvest did
                    # before m0009), so that they read as answered if the batch id is met again.
                    conn.execute(
                        self._sql(
                            "update attempts set status = 'done', outcome = r.type from"
                            " (select attempt_id, type from results where batch_id = ?) r"
                            " where attempts.id = r.attempt_id and attempts.status = 'sent'"
                        ),
                        [target],
                    )
                    items, attempts = self._release(  # those left: no result answered them
                        conn, target, "deleted", utcnow(), unfinished=UNFINISHED_ANY
                    )
                conn.execute(self._sql("delete from batches where id = ?"), [target])
                return "batch", {"batches": 1, "items": items, "attempts": attempts}
            if target not in self.job_names():  # type: ignore[attr-defined]
                raise StateError(f"no job or batch {target!r} in state {self.location}")
            # Results other jobs' items reuse stay: each becomes the result of the first item
            # (by job, key) that points at it, so no item is left pointing at nothing.
            kept = conn.execute(self._sql(KEEP_REUSED_RESULTS), [target] * 4).rowcount
            rows = {
                table: conn.execute(
                    self._sql(f"delete from {table} where {where}"), [target]
                ).rowcount
                for table, where in JOB_TABLES
            }
            if kept:
                rows["results kept for other jobs"] = kept
            return "job", rows

    def rename_job(self, old: str, new: str) -> dict[str, int]:
        if old == new:
            raise StateError(f"cannot move job {old!r} onto itself")
        with self._transaction() as conn:
            names = self.job_names()  # type: ignore[attr-defined]
            if old not in names:
                raise StateError(f"no job {old!r} in state {self.location}")
            if new in names:
                raise StateError(
                    f"job {new!r} already has rows in state {self.location}: nothing was moved "
                    f"(`batchops state rm {new}` first, if they are to be dropped)"
                )
            return {
                table: conn.execute(
                    self._sql(f"update {table} set {where.split(' ')[0]} = ? where {where}"),
                    [new, old],
                ).rowcount
                for table, where in JOB_TABLES
            }
