"""Writes that read the same on every backend: SQL written once, with `?` placeholders, that each
backend adapts (`_sql`) and runs in its own transaction (`_transaction`, one per call, bumping the
serial). What differs between SQLite and PostgreSQL (opening, leases, bulk loads, harvest) stays in
`sqlite` and `postgres`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from batchops.clock import iso, utcnow
from batchops.errors import StateError

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


class SharedWrites:
    """Mixed into each backend's writer, before its reader in the MRO."""

    location: str

    # provided by the backend
    def _transaction(self) -> Any: ...  # a context manager yielding something with .execute

    def _release(self, conn: Any, batch_id: str, drift: str, now: datetime) -> tuple[int, int]: ...

    def _sql(self, sql: str) -> str:
        return sql

    def _run(self, sql: str, params: list[Any]) -> int:
        with self._transaction() as conn:
            return conn.execute(self._sql(sql), params).rowcount

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
            if self.batch(target) is not None:  # type: ignore[attr-defined]
                items, attempts = self._release(conn, target, "deleted", utcnow())
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
