"""`apply` and `refresh`: the crash-safe reconcile loop (DESIGN §4–§6).

Each step is its own transaction, so a SIGKILL anywhere leaves state that the next run completes:

    lock → refresh batches in flight (and resolve create intents) → harvest ended batches →
    plan → budget check → submit (intent committed before create) → cancel → prune → unlock

The one unknowable moment is a create whose response never came. Its intent stays open; the next
refresh lists recent remote batches and adopts the one that matches (created after the intent,
same request count; its custom_ids are checked when its results are harvested) or, when none
matches, marks the intent unsent so its items are sent again.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import orjson

from batchops.client import (
    RESULT_RETENTION,
    BatchesClient,
    CreateOutcomeUnknown,
    NotFound,
    RemoteBatch,
)
from batchops.context import Context, plan_from
from batchops.errors import BudgetExceeded, LockHeld, PlanError, RemoteError, StateError
from batchops.planfile import SavedPlan
from batchops.planner import DEFAULT_PRUNE_MARGIN, BatchAction, Plan, SubmitItem
from batchops.pricing import usage_from_message
from batchops.report import failed_dict, money
from batchops.spec.desired import Desired, items_for
from batchops.state import BatchRecord, IntentRecord, LockInfo, StateStore, iso, pid_alive

KILL_ENV = "BATCHOPS_TEST_DIE_AT"  # test seam: SIGKILL this process at the named checkpoint
RESULT_TYPES = frozenset({"succeeded", "errored", "canceled", "expired"})
ADOPT_SLACK = timedelta(minutes=2)  # clock skew allowed between the intent and the remote create
CREATE_TRIES = 4
ENVELOPE_BYTES = 1024


def checkpoint(name: str) -> None:
    """Die here, hard, when a test asks for it (BATCHOPS_TEST_DIE_AT=name)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Progress(Protocol):
    def note(self, message: str) -> None: ...

    def waiting(self, done: int, total: int, in_flight: int) -> None: ...


class NullProgress:
    def note(self, message: str) -> None:
        pass

    def waiting(self, done: int, total: int, in_flight: int) -> None:
        pass


@dataclass
class ApplyReport:
    submitted: int = 0
    batches_created: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    harvested: list[str] = field(default_factory=list)
    results_stored: int = 0
    canceled: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    final_plan: Plan | None = None
    timed_out: bool = False
    approved: bool = True
    outputs: list[Path] = field(default_factory=list)  # job output files written


def report_to_dict(report: ApplyReport) -> dict[str, Any]:
    """The JSON shape of `apply --json` / `refresh --json` (format_version 1)."""
    final = report.final_plan
    return {
        "format_version": 1,
        "approved": report.approved,
        "submitted": report.submitted,
        "batches_created": report.batches_created,
        "adopted": report.adopted,
        "harvested": report.harvested,
        "results_stored": report.results_stored,
        "canceled": report.canceled,
        "pruned": report.pruned,
        "requeued": report.requeued,
        "drift": report.drift,
        "problems": report.problems,
        "timed_out": report.timed_out,
        "outputs": [str(p) for p in report.outputs],
        "jobs": [
            {
                "name": j.name,
                "counts": j.counts,
                "failed": [failed_dict(f) for f in j.failed],
            }
            for j in (final.jobs if final is not None else ())
        ],
    }


_INSERT_RESULT = (
    "insert into results (job, key, custom_id, fingerprint, batch_id, attempt_id, type, text,"
    " message, stop_reason, error_type, error_message, model, input_tokens, output_tokens,"
    " cache_creation_input_tokens, cache_creation_1h_input_tokens, cache_read_input_tokens,"
    " received_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class HarvestFailed(Exception):
    """A batch's results did not check out; nothing was stored for it."""


class ForeignResults(HarvestFailed):
    """The results carry a custom_id this batch was not sent: it is not the batch we think."""


# ------------------------------------------------------------------------------ refresh (shared)


def refreshed(
    record: BatchRecord, remote: RemoteBatch | None, now: datetime
) -> tuple[BatchRecord, str | None]:
    """The record as the remote sees it now (None: deleted remotely), with a drift note if any."""
    if remote is None:
        if record.pruned_at is not None:
            return record, None
        expires = record.results_expire_at
        if record.harvested_at and expires and expires - now <= DEFAULT_PRUNE_MARGIN:
            return replace(record, pruned_at=now), None  # our own prune, cut short by a crash
        lost = record.harvested_at is None
        note = f"batch {record.id} ({record.job}) was deleted outside batchops" + (
            ": its results were never harvested, so its items will be sent again" if lost else ""
        )
        return replace(record, drift="deleted"), note
    note = None
    updated = replace(
        record,
        processing_status=remote.processing_status,
        expires_at=remote.expires_at,
        ended_at=remote.ended_at,
        archived_at=remote.archived_at,
        created_at=remote.created_at,
        results_expire_at=remote.created_at + RESULT_RETENTION,
        request_counts=orjson.dumps(remote.request_counts).decode(),
    )
    if remote.cancel_initiated_at and record.canceled_by_us_at is None and record.drift is None:
        updated = replace(updated, drift="canceled")
        note = f"batch {record.id} ({record.job}) was cancelled outside batchops"
    if remote.archived_at and record.harvested_at is None:
        note = (
            f"batch {record.id} ({record.job}): results expired remotely before they were "
            "harvested; its items will be sent again"
        )
    return updated, note


def needs_polling(record: BatchRecord) -> bool:
    """Every batch batchops has not finished with, harvested ones included: a harvested batch is
    polled too, so retention is judged on the remote's dates and outside deletes show as drift."""
    return not record.finished


def poll(
    record: BatchRecord, client: BatchesClient, now: datetime
) -> tuple[BatchRecord, str | None]:
    """Retrieve one batch and return `refreshed` of it (a batch gone remotely reads as None)."""
    try:
        remote: RemoteBatch | None = client.retrieve(record.id)
    except NotFound:
        remote = None
    return refreshed(record, remote, now)


def remote_view(
    reader_batches: Iterable[BatchRecord], client: BatchesClient, now: datetime
) -> tuple[dict[str, BatchRecord], list[str]]:
    """Poll every batch still in flight; nothing is written (used by `plan`)."""
    out: dict[str, BatchRecord] = {}
    notes: list[str] = []
    for record in reader_batches:
        if not needs_polling(record):
            continue
        updated, note = poll(record, client, now)
        out[record.id] = updated
        if note:
            notes.append(note)
    return out, notes


# ------------------------------------------------------------------------------ the applier


class Applier:
    def __init__(
        self,
        context: Context,
        store: StateStore,
        client: BatchesClient,
        progress: Progress | None = None,
        desired: Desired | None = None,
    ):
        self.context = context
        self.store = store
        self.client = client
        self.progress = progress or NullProgress()
        self.report = ApplyReport()
        self.desired: Desired | None = desired

    @property
    def db(self):
        return self.store.db

    def now(self) -> datetime:
        return self.context.clock()

    # -- lock
    def lock(self, command: str, lock_timeout: float = 0.0) -> LockInfo:
        deadline = time.monotonic() + lock_timeout
        while True:
            held = self.store.lock()
            if held is not None and held.host == socket.gethostname() and not pid_alive(held.pid):
                self.progress.note(
                    f"Taking over a lock left by process {held.pid}, which is no "
                    f"longer running ({held.describe().split(' (')[0]})."
                )
                self.store.force_unlock(held.lock_id)
            try:
                return self.store.acquire_lock(command)
            except LockHeld:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    # -- refresh: poll batches, resolve intents
    def refresh(self) -> None:
        for intent in self.store.open_intents():
            self.resolve_intent(intent)
        for record in self.store.batches():
            if not needs_polling(record):
                continue
            updated, note = poll(record, self.client, self.now())
            if note:
                self.report.drift.append(note)
                self.progress.note(f"Drift: {note}.")
            if updated.drift == "deleted" and updated.harvested_at is None:
                # requeue first: saving drift=deleted makes the batch finished (never polled
                # again), so a crash between the two must not leave its items in flight
                self._requeue(updated, "deleted")
            self._save_batch(updated)

    def _save_batch(self, b: BatchRecord) -> None:
        with self.store.transaction() as db:
            db["batches"].update(
                b.id,
                {
                    "processing_status": b.processing_status,
                    "request_counts": b.request_counts,
                    "created_at": iso(b.created_at),
                    "expires_at": iso(b.expires_at),
                    "ended_at": iso(b.ended_at),
                    "archived_at": iso(b.archived_at),
                    "results_expire_at": iso(b.results_expire_at),
                    "drift": b.drift,
                    "pruned_at": iso(b.pruned_at),
                    "refreshed_at": iso(self.now()),
                },
            )

    def resolve_intent(self, intent: IntentRecord) -> str | None:
        """Adopt the batch an unanswered create made, or mark the intent unsent. Returns the id."""
        known = {r[0] for r in self.db.execute("select id from batches")}
        candidates = [
            b
            for b in self.client.list_recent(intent.created_at - ADOPT_SLACK)
            if b.id not in known and b.total == intent.request_count
        ]
        if candidates:
            # the earliest created after the intent; one from the clock-skew slack before it last
            remote = min(candidates, key=lambda b: (b.created_at < intent.created_at, b.created_at))
            self._record_created(intent.id, intent.job, remote, status="adopted")
            self.report.adopted.append(remote.id)
            self.progress.note(
                f"Adopted batch {remote.id} ({intent.request_count} requests, "
                f"{intent.job}): created by an earlier run whose response was lost."
            )
            return remote.id
        self._mark_unsent(intent.id)
        self.progress.note(
            f"Create for {intent.job} ({intent.request_count} requests) never "
            "reached the API: its items will be sent again."
        )
        return None

    # -- harvest
    def harvest(self, record: BatchRecord) -> bool:
        sent = {
            row[0]: (row[1], row[2], row[3])
            for row in self.db.execute(
                "select custom_id, id, key, fingerprint from attempts"
                " where batch_id = ? and status = 'sent'",
                [record.id],
            )
        }
        counts = orjson.loads(record.request_counts) if record.request_counts else {}
        expected = sum(counts.values()) if counts else record.request_count
        canceled_by_us = record.canceled_by_us_at is not None
        try:
            with self.client.results(record.id) as lines, self.store.transaction() as db:
                stored = self._store_results(db, record, lines, sent, expected, canceled_by_us)
                db["batches"].update(record.id, {"harvested_at": iso(self.now())})
        except ForeignResults as exc:
            if self._adopted(record.id):
                self._unadopt(record, str(exc))
                return False
            message = str(exc)
            self.report.problems.append(f"harvest of batch {record.id} ({record.job}): {message}")
            self.progress.note(f"Could not harvest batch {record.id}: {message}.")
            return False
        except (HarvestFailed, RemoteError) as exc:
            message = str(exc).splitlines()[0]
            self.report.problems.append(f"harvest of batch {record.id} ({record.job}): {message}")
            self.progress.note(
                f"Could not harvest batch {record.id}: {message}. Nothing was "
                "stored for it; the next run tries again."
            )
            return False
        except NotFound:
            self._requeue(record, "deleted")
            return False
        self.report.harvested.append(record.id)
        self.report.results_stored += stored
        self.progress.note(f"Harvested batch {record.id} ({record.job}): {stored} results.")
        return True

    def _adopted(self, batch_id: str) -> bool:
        row = self.db.execute(
            "select 1 from intents where batch_id = ? and status = 'adopted'", [batch_id]
        ).fetchone()
        return row is not None

    def _unadopt(self, record: BatchRecord, why: str) -> None:
        """An adopted batch turned out not to be ours: forget it, and send its items again."""
        with self.store.transaction() as db:
            db.execute(
                "update items set inflight_attempt = null, attempts = max(a.number - 1, 0),"
                " updated_at = ? from attempts a where a.id = items.inflight_attempt"
                " and a.batch_id = ?",
                [iso(self.now()), record.id],
            )
            db.execute(
                "update attempts set status = 'unsent', batch_id = null where batch_id = ?",
                [record.id],
            )
            db.execute(
                "update intents set status = 'unsent', batch_id = null where batch_id = ?",
                [record.id],
            )
            db["batches"].update(record.id, {"drift": "not-ours"})
        note = (
            f"batch {record.id} was adopted by mistake ({why}): it is not ours, so it is "
            "forgotten and its items will be sent again"
        )
        self.report.drift.append(note)
        self.progress.note(f"Drift: {note}.")

    def _store_results(
        self, db, record: BatchRecord, lines, sent: dict, expected: int, canceled_by_us: bool
    ) -> int:
        now = iso(self.now())
        seen: set[str] = set()
        rows: list[tuple] = []
        count = 0
        for line in lines:
            custom_id = line.get("custom_id")
            result = line.get("result")
            if not isinstance(custom_id, str) or not isinstance(result, dict):
                raise HarvestFailed(
                    f"a result line without a custom_id and a result: {line!r:.200}"
                )
            kind = result.get("type")
            if custom_id not in sent:
                raise ForeignResults(
                    f"result for custom_id {custom_id!r}, which this batch was not sent"
                )
            if custom_id in seen:
                raise HarvestFailed(f"custom_id {custom_id!r} appears twice in the results")
            if kind not in RESULT_TYPES:
                raise HarvestFailed(f"result for {custom_id!r} has unknown type {kind!r}")
            seen.add(custom_id)
            count += 1
            if count == max(expected // 2, 1):
                checkpoint("mid-harvest")
            attempt_id, key, fingerprint = sent[custom_id]
            row = _result_row(result, kind)
            rows.append(
                (
                    record.job,
                    key,
                    custom_id,
                    fingerprint,
                    record.id,
                    attempt_id,
                    kind,
                    row["text"],
                    row["message"],
                    row["stop_reason"],
                    row["error_type"],
                    row["error_message"],
                    row["model"],
                    row["input_tokens"],
                    row["output_tokens"],
                    row["cache_write"],
                    row["cache_write_1h"],
                    row["cache_read"],
                    now,
                )
            )
            if len(rows) >= 5000:
                db.conn.executemany(_INSERT_RESULT, rows)
                rows.clear()
        db.conn.executemany(_INSERT_RESULT, rows)
        if count != expected:
            raise HarvestFailed(f"{count} result lines, but request_counts add up to {expected}")
        missing = len(sent) - len(seen)
        if missing:
            raise HarvestFailed(f"{missing} submitted custom_ids have no result")
        # Two set-based statements rather than two per result: a batch may hold 100,000.
        db.execute(
            "update attempts set status = 'done', outcome = r.type from results r"
            " where r.batch_id = ? and r.attempt_id = attempts.id",
            [record.id],
        )
        db.execute(
            "update items set inflight_attempt = null, outcome = r.type,"
            " error_type = r.error_type, error_message = r.error_message,"
            " canceled_by_us = (? and r.type = 'canceled'),"
            " result_id = case when r.type = 'succeeded' then r.id end, updated_at = ?"
            " from results r where r.batch_id = ? and r.attempt_id = items.inflight_attempt",
            [int(canceled_by_us), now, record.id],
        )
        return count

    def _requeue(self, record: BatchRecord, why: str) -> None:
        """Results can no longer be read: the items in flight in this batch go back to todo.

        `why` is the batch's drift: "deleted" or "results-lost".
        """
        with self.store.transaction() as db:
            db.execute(
                "update items set inflight_attempt = null, outcome = 'lost',"
                " attempts = max(attempts - 1, 0), updated_at = ?"
                " where inflight_attempt in (select id from attempts where batch_id = ?"
                " and status = 'sent')",
                [iso(self.now()), record.id],
            )
            db.execute(
                "update attempts set status = 'lost' where batch_id = ? and status = 'sent'",
                [record.id],
            )
            db["batches"].update(record.id, {"drift": why})
        self.report.requeued.append(record.id)

    # -- submit
    def submit(self, desired: Desired, submits: list[SubmitItem]) -> None:
        by_job: dict[str, dict[str, SubmitItem]] = {}
        for action in submits:
            by_job.setdefault(action.job, {})[action.key] = action
        for job_name, actions in by_job.items():
            job = desired.spec_job(job_name)
            chunk: list[tuple[SubmitItem, dict[str, Any]]] = []
            size = ENVELOPE_BYTES
            for item in items_for(desired.project, job_name, set(actions)):
                request = {"custom_id": item.custom_id, "params": item.params}
                request_bytes = len(orjson.dumps(request)) + 1
                if chunk and (
                    len(chunk) >= self.context.settings.max_batch_requests
                    or size + request_bytes > self.context.settings.max_batch_bytes
                ):
                    self._send(job_name, job.betas, chunk, size)
                    chunk, size = [], ENVELOPE_BYTES
                action = actions[item.key]
                if action.fingerprint != item.fingerprint:
                    raise PlanError(
                        f"job {job_name}: item {item.key} changed since the plan was made"
                    )
                chunk.append((action, request))
                size += request_bytes
            if chunk:
                self._send(job_name, job.betas, chunk, size)

    def send_saved(self, saved: SavedPlan, desired: Desired) -> None:
        """Send exactly the requests a saved plan recorded."""
        chunk: list[tuple[SubmitItem, dict[str, Any]]] = []
        job_name: str | None = None
        size = ENVELOPE_BYTES
        for line in saved.requests():
            request = {"custom_id": line["custom_id"], "params": line["params"]}
            request_bytes = len(orjson.dumps(request)) + 1
            if chunk and (
                line["job"] != job_name
                or len(chunk) >= self.context.settings.max_batch_requests
                or size + request_bytes > self.context.settings.max_batch_bytes
            ):
                self._send(job_name or "", desired.spec_job(job_name or "").betas, chunk, size)
                chunk, size = [], ENVELOPE_BYTES
            job_name = line["job"]
            action = SubmitItem(
                line["job"],
                line["key"],
                line["custom_id"],
                line["fingerprint"],
                line["reason"],
                int(line["attempt"]),
                0.0,
            )
            chunk.append((action, request))
            size += request_bytes
        if chunk and job_name:
            self._send(job_name, desired.spec_job(job_name).betas, chunk, size)

    def _send(
        self, job: str, betas: list[str], chunk: list[tuple[SubmitItem, dict[str, Any]]], size: int
    ) -> None:
        for try_number in range(1, CREATE_TRIES + 1):
            intent_id = self._commit_intent(job, chunk, size)
            checkpoint("after-intent")
            try:
                remote = self.client.create([request for _, request in chunk], betas)
            except CreateOutcomeUnknown as exc:
                self.progress.note(f"{exc}; looking for the batch remotely before sending again.")
                intent = next(i for i in self.store.open_intents() if i.id == intent_id)
                if self.resolve_intent(intent):
                    return
                if try_number == CREATE_TRIES:
                    raise RemoteError(str(exc)) from None
                time.sleep(min(2**try_number * 0.25, 5))
                continue
            except RemoteError as exc:
                self._mark_unsent(intent_id)
                retryable = "HTTP 429" in str(exc)
                if not retryable or try_number == CREATE_TRIES:
                    raise
                self.progress.note(f"{exc}; trying again.")
                time.sleep(min(2**try_number * 0.25, 5))
                continue
            checkpoint("after-create")
            self._record_created(intent_id, job, remote)
            self.report.batches_created.append(remote.id)
            self.report.submitted += len(chunk)
            self.progress.note(f"Created batch {remote.id} for {job}: {len(chunk)} requests.")
            return

    def _commit_intent(
        self, job: str, chunk: list[tuple[SubmitItem, dict[str, Any]]], size: int
    ) -> str:
        intent_id = f"intent_{uuid.uuid4().hex}"
        now = iso(self.now())
        with self.store.transaction() as db:
            db["intents"].insert(
                {
                    "id": intent_id,
                    "job": job,
                    "created_at": now,
                    "request_count": len(chunk),
                    "body_bytes": size,
                    "status": "open",
                    "batch_id": None,
                    "plan_id": None,
                }
            )
            db["jobs"].upsert(
                {"name": job, "spec_file": None, "first_seen_at": now, "last_applied_at": now},
                pk="name",
            )
            for action, _ in chunk:
                cursor = db.execute(
                    "insert into attempts (job, key, custom_id, fingerprint, number, intent_id,"
                    " status, created_at) values (?, ?, ?, ?, ?, ?, 'open', ?)",
                    [
                        job,
                        action.key,
                        action.custom_id,
                        action.fingerprint,
                        action.attempt,
                        intent_id,
                        now,
                    ],
                )
                db.execute(
                    "insert into items (job, key, custom_id, attempts, inflight_attempt, updated_at)"
                    " values (?, ?, ?, 0, ?, ?) on conflict (job, key) do update set"
                    " inflight_attempt = excluded.inflight_attempt, updated_at = excluded.updated_at,"
                    " forgotten_at = null",
                    [job, action.key, action.custom_id, cursor.lastrowid, now],
                )
        return intent_id

    def _mark_unsent(self, intent_id: str) -> None:
        with self.store.transaction() as db:
            db.execute("update attempts set status = 'unsent' where intent_id = ?", [intent_id])
            db.execute(
                "update items set inflight_attempt = null where inflight_attempt in"
                " (select id from attempts where intent_id = ?)",
                [intent_id],
            )
            db.execute("update intents set status = 'unsent' where id = ?", [intent_id])

    def _record_created(
        self, intent_id: str, job: str, remote: RemoteBatch, status: str = "created"
    ) -> None:
        now = iso(self.now())
        with self.store.transaction() as db:
            count = db.execute(
                "select count(*) from attempts where intent_id = ?", [intent_id]
            ).fetchone()[0]
            db["batches"].insert(
                {
                    "id": remote.id,
                    "job": job,
                    "intent_id": intent_id,
                    "request_count": count,
                    "processing_status": remote.processing_status,
                    "request_counts": orjson.dumps(remote.request_counts).decode(),
                    "created_at": iso(remote.created_at),
                    "expires_at": iso(remote.expires_at),
                    "ended_at": iso(remote.ended_at),
                    "cancel_initiated_at": None,
                    "archived_at": iso(remote.archived_at),
                    "results_expire_at": iso(remote.created_at + RESULT_RETENTION),
                    "harvested_at": None,
                    "canceled_by_us_at": None,
                    "pruned_at": None,
                    "drift": None,
                    "refreshed_at": now,
                }
            )
            db.execute(
                "update attempts set status = 'sent', batch_id = ? where intent_id = ?",
                [remote.id, intent_id],
            )
            db.execute(
                "update items set fingerprint = a.fingerprint, attempts = a.number, updated_at = ?"
                " from attempts a where a.id = items.inflight_attempt and a.intent_id = ?",
                [now, intent_id],
            )
            db.execute(
                "update intents set status = ?, batch_id = ? where id = ?",
                [status, remote.id, intent_id],
            )

    # -- import: adopt a batch by hand
    def import_batch(self, desired: Desired, job_name: str, batch_id: str) -> int:
        """Adopt a remote batch made outside this state (or lost from it); returns results stored.

        Its custom_ids are known only from its results, so it must have ended. Each result is
        matched to the job's items by custom_id and recorded as an attempt at the item's current
        fingerprint.
        """
        known = self.store.batch(batch_id)
        if known is not None:
            raise StateError(f"batch {batch_id} is already in state (job {known.job})")
        try:
            remote = self.client.retrieve(batch_id)
        except NotFound:
            raise RemoteError(f"batch {batch_id} does not exist remotely") from None
        if remote.processing_status != "ended":
            raise StateError(
                f"batch {batch_id} is still {remote.processing_status}: its "
                "custom_ids are only known from its results; import it once it ends"
            )
        if remote.archived_at is not None:
            raise StateError(f"batch {batch_id}: its results expired remotely; nothing to import")
        by_custom_id = {
            item.custom_id: item for dj in desired.jobs if dj.name == job_name for item in dj.items
        }
        with self.client.results(batch_id) as lines:
            custom_ids = [line.get("custom_id") for line in lines]
        if len(custom_ids) != remote.total or len(set(custom_ids)) != len(custom_ids):
            raise RemoteError(
                f"batch {batch_id}: its results did not check out ({len(custom_ids)} "
                f"lines, {len(set(custom_ids))} distinct custom_ids, request_counts "
                f"add up to {remote.total}); nothing was imported, try again"
            )
        unknown = [c for c in custom_ids if c not in by_custom_id]
        if unknown:
            raise StateError(
                f"batch {batch_id}: {len(unknown)} of its {len(custom_ids)} results "
                f"are not items of job {job_name} (first: {unknown[0]!r})"
            )
        records = {r.key: r for r in self.store.item_records([job_name])}
        busy = {key for key, r in records.items() if r.inflight}
        clash = [by_custom_id[c].key for c in custom_ids if by_custom_id[c].key in busy]
        if clash:
            raise StateError(
                f"batch {batch_id}: item {clash[0]} of job {job_name} is already in "
                "flight in another batch"
            )

        def attempt(item) -> int:  # the retry count goes on for an unchanged item
            record = records.get(item.key)
            same = record is not None and record.fingerprint == item.fingerprint
            return record.attempts + 1 if same else 1

        chunk = [
            (
                SubmitItem(
                    job_name,
                    by_custom_id[c].key,
                    c,
                    by_custom_id[c].fingerprint,
                    "import",
                    attempt(by_custom_id[c]),
                    0.0,
                ),
                {},
            )
            for c in custom_ids
        ]
        intent_id = self._commit_intent(job_name, chunk, 0)
        self._record_created(intent_id, job_name, remote)
        record = self.store.batch(batch_id)
        if record is None or not self.harvest(record):
            raise RemoteError(*(self.report.problems or [f"batch {batch_id}: harvest failed"]))
        return self.report.results_stored

    # -- cancel, prune
    def cancel(self, action: BatchAction) -> None:
        # Marked ours before the call: a crash after it must not read as an outside cancel.
        with self.store.transaction() as db:
            db["batches"].update(action.batch_id, {"canceled_by_us_at": iso(self.now())})
        checkpoint("after-cancel-mark")
        try:
            remote = self.client.cancel(action.batch_id or "")
        except NotFound:
            return
        with self.store.transaction() as db:
            db["batches"].update(
                action.batch_id,
                {
                    "cancel_initiated_at": iso(remote.cancel_initiated_at),
                    "processing_status": remote.processing_status,
                },
            )
        self.report.canceled.append(action.batch_id or "")
        self.progress.note(f"Cancelled batch {action.batch_id} ({action.job}): {action.reason}.")

    def prune(self, action: BatchAction) -> None:
        record = self.store.batch(action.batch_id or "")
        if record is None:
            return
        if record.harvested_at is None and not self.harvest(record):
            return
        checkpoint("mid-prune")
        try:
            self.client.delete(record.id)
        except NotFound:
            pass
        checkpoint("after-delete")
        with self.store.transaction() as db:
            db["batches"].update(record.id, {"pruned_at": iso(self.now())})
        self.report.pruned.append(record.id)
        self.progress.note(f"Pruned batch {record.id} ({record.job}): {action.reason}.")

    # -- one cycle, and the loop
    def harvest_and_requeue(self, plan: Plan) -> None:
        for action in plan.batches:
            record = self.store.batch(action.batch_id or "")
            if record is None:
                continue
            if action.action == "harvest":
                self.harvest(record)
            elif action.action == "requeue":
                self._requeue(record, "results-lost")
                self.progress.note(
                    f"Batch {record.id} ({record.job}): results expired before "
                    "harvest; its items will be sent again."
                )

    def current_plan(self, job_names: list[str] | None) -> tuple[Plan, Desired]:
        """The plan now. The specs are read once a run: what was approved is what is done."""
        if self.desired is None:
            self.desired = self.context.desired(job_names)
        return plan_from(self.store, self.desired, self.now()), self.desired

    def run(
        self,
        job_names: list[str] | None = None,
        *,
        wait: bool = False,
        timeout: float | None = None,
        poll_interval: float = 5.0,
        confirm: Callable[[Plan], bool] | None = None,
        saved: SavedPlan | None = None,
        submit: bool = True,
    ) -> ApplyReport:
        """The reconcile loop. The caller holds the lock."""
        started = time.monotonic()
        first = True
        while True:
            self.refresh()
            plan, desired = self.current_plan(job_names)
            self.harvest_and_requeue(plan)
            plan, desired = self.current_plan(job_names)
            if first and confirm is not None and plan.changes and not confirm(plan):
                self.report.approved = False
                return self.report
            if submit:
                over = [j for j in plan.jobs if j.over_budget]
                if over:
                    raise BudgetExceeded(
                        *(
                            f"job {j.name}: estimated cost {money(j.estimated_cost_usd)} exceeds its "
                            f"budget_usd {money(j.budget_usd)}"
                            for j in over
                        )
                    )
                if saved is not None and first:
                    self.send_saved(saved, desired)
                else:
                    self.submit(desired, [a for j in plan.jobs for a in j.submits])
                self._forget(plan)
                for action in plan.batches:
                    if action.action not in ("cancel", "prune"):
                        continue
                    try:
                        (self.cancel if action.action == "cancel" else self.prune)(action)
                    except RemoteError as exc:
                        # e.g. the batch ended between refresh and cancel: the next run re-plans
                        self.report.problems.extend(exc.problems)
                        self.progress.note(
                            f"Could not {action.action} batch {action.batch_id}: {exc.problems[0]}"
                        )
            first = False
            final, _ = self.current_plan(job_names)
            self.report.final_plan = final
            if not wait:
                return self.report
            in_flight = sum(j.counts["pending"] for j in final.jobs)
            total = sum(sum(j.counts.values()) - j.counts["removed"] for j in final.jobs)
            done = sum(j.counts["succeeded"] + j.counts["failed"] for j in final.jobs)
            self.progress.waiting(done, total, in_flight)
            outstanding = (
                in_flight
                or any(a.action in ("harvest", "adopt") for a in final.batches)
                or (submit and any(j.submits for j in final.jobs))
                # removed items still in flight: forgotten once their batch is harvested
                or any(a.action == "forget" for j in final.jobs for a in j.actions)
            )
            if not outstanding:
                return self.report
            if timeout is not None and time.monotonic() - started >= timeout:
                self.report.timed_out = True
                return self.report
            time.sleep(poll_interval)

    def _forget(self, plan: Plan) -> None:
        """Forget removed items that are not in flight. Their rows stay, marked, so an item that
        comes back with the same fingerprint is recognised as done and not paid for again."""
        now = iso(self.now())
        forget = [(now, a.job, a.key) for j in plan.jobs for a in j.actions if a.action == "forget"]
        remembered = [(j.name, key) for j in plan.jobs for key in j.remembered]
        if not forget and not remembered:
            return
        with self.store.transaction() as db:
            db.conn.executemany(
                "update items set forgotten_at = ? where job = ? and key = ?"
                " and inflight_attempt is null",
                forget,
            )
            db.conn.executemany(
                "update items set forgotten_at = null where job = ? and key = ?", remembered
            )


def _result_row(result: dict[str, Any], kind: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(
        (
            "text",
            "message",
            "stop_reason",
            "error_type",
            "error_message",
            "model",
            "input_tokens",
            "output_tokens",
            "cache_write",
            "cache_write_1h",
            "cache_read",
        )
    )
    if kind == "succeeded":
        message = result.get("message") or {}
        row["message"] = orjson.dumps(message).decode()
        row["text"] = "".join(
            b.get("text", "")
            for b in message.get("content") or []
            if isinstance(b, dict) and b.get("type") == "text"
        )
        row["stop_reason"] = message.get("stop_reason")
        row["model"] = message.get("model")
        usage = usage_from_message(message.get("usage") or {})
        row["input_tokens"] = usage.input_tokens
        row["output_tokens"] = usage.output_tokens
        row["cache_write"] = usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
        row["cache_write_1h"] = usage.cache_write_1h_tokens
        row["cache_read"] = usage.cache_read_tokens
    elif kind == "errored":
        envelope = result.get("error") or {}
        error = envelope.get("error") if isinstance(envelope.get("error"), dict) else envelope
        row["error_type"] = error.get("type")
        row["error_message"] = error.get("message")
    return row


def check_saved_plan(
    saved: SavedPlan,
    store_lineage: str | None,
    store_serial: int,
    spec_digest: str,
    already_applied: bool,
) -> None:
    """Refuse a saved plan that no longer matches (before any network call)."""
    problems = []
    if already_applied:
        problems.append(f"{saved.path}: this plan was already applied; make a new plan")
    # A plan made before the state file existed applies to the fresh file apply creates for it.
    fresh = saved.lineage is None and store_serial == 0
    if saved.lineage != store_lineage and not fresh:
        problems.append(
            f"{saved.path}: plan was made for state lineage {saved.lineage}, "
            f"but the state file has lineage {store_lineage}"
        )
    if saved.serial != store_serial:
        problems.append(
            f"{saved.path}: state changed since the plan was made (serial "
            f"{saved.serial} → {store_serial}); make a new plan"
        )
    if saved.spec_digest != spec_digest:
        problems.append(f"{saved.path}: specs changed since the plan was made; make a new plan")
    if problems:
        raise StateError(*problems)
