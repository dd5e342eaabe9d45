"""The evaluator: runs a plan's steps in order, a method per step type, one transaction each.

Every state change goes through the state API (`StateWriter`), so a SIGKILL anywhere leaves a
state that the next apply completes:

- submit: the intent (with its attempts) is committed before the create call, which is sent
  with SDK retries off; the created batch is recorded after. A create whose response is lost
  leaves the intent open; the next plan carries a `ResolveIntent` step for it.
- harvest: result lines are verified (each custom_id one this batch was sent, none twice, as
  many as request_counts) and stored in one transaction, or nothing is.
- cancel: marked ours before the call, so a crash cannot make it look like an outside cancel.
- prune: only a harvested batch is deleted remotely.
- reuse: items answered by stored results of the same requests are recorded in one transaction;
  nothing is sent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import orjson

from batchops.apply.harvest import (
    ForeignResults,
    HarvestFailed,
    HarvestWorker,
    WorkerDied,
    verified_rows,
    worker_wanted,
)
from batchops.apply.refresh import as_record
from batchops.apply.report import ApplyReport, NullProgress, Progress
from batchops.clock import iso
from batchops.errors import (
    CreateOutcomeUnknown,
    LockHeld,
    NotFound,
    PlanError,
    RemoteError,
    stop_if_requested,
)
from batchops.errors import pause as wait
from batchops.plan.actions import (
    Cancel,
    Forget,
    Harvest,
    Move,
    Plan,
    Prune,
    Requeue,
    ResolveIntent,
    Reuse,
    SubmitBatch,
    SubmitItem,
)
from batchops.pricing import money
from batchops.remote import BatchesClient, encode_request
from batchops.remote.client import list_lag
from batchops.spec import caching
from batchops.state.api import StateWriter
from batchops.state.records import BatchRecord, SentAttempt

KILL_ENV = "BATCHOPS_TEST_DIE_AT"  # test seam: SIGKILL this process at the named checkpoint
ADOPT_SLACK = timedelta(minutes=2)  # intents from before list anchors: clock skew allowed
CREATE_TRIES = 4
# How long after an unanswered create its batch may still appear in the list before the items are
# sent again (DESIGN §6.3): the SDK's own request timeout is 10 minutes, so 15 leaves margin.
CREATE_GRACE_SECONDS = 900.0
CREATE_GRACE_ENV = "BATCHOPS_CREATE_GRACE_SECONDS"
# How far before its local `results_expire_at` (the server's created_at + 29 days, read against our
# clock) a results 404 from a batch that exists is taken as the end of retention: our clock may run
# behind the server's. Earlier, a 404 proves nothing and the harvest is tried again.
RETENTION_SKEW_ALLOWANCE = timedelta(days=1)


def create_grace_seconds() -> float:
    try:
        return float(os.environ.get(CREATE_GRACE_ENV, CREATE_GRACE_SECONDS))
    except ValueError:
        return CREATE_GRACE_SECONDS


RequestSource = Callable[[int, SubmitBatch], list[tuple[SubmitItem, dict[str, Any]]]]


def checkpoint(name: str) -> None:
    """Die here, hard, when a test asks for it (BATCHOPS_TEST_DIE_AT=name)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _at_halfway() -> None:
    checkpoint("mid-harvest")


def _worker_for(expected: int) -> contextlib.AbstractContextManager[HarvestWorker | None]:
    """A harvest worker for a batch of `expected` results, or None where it is not worth one."""
    return HarvestWorker() if worker_wanted(expected) else contextlib.nullcontext()


def lease_lost() -> LockHeld:
    """What stops an apply whose lease was found taken over (it stalled past the lease's
    expiry), before its next step or cycle: a write would be refused anyway (see
    `batchops.state.leases.taken_over`)."""
    return LockHeld(
        "the state's lease was taken over while this apply ran (it stalled past the lease's "
        "expiry): stopped before the next step; run apply again"
    )


class Evaluator:
    """Runs plans against one state and one client."""

    def __init__(
        self,
        state: StateWriter,
        client: BatchesClient,
        clock: Callable[[], datetime],
        progress: Progress | None = None,
        report: ApplyReport | None = None,
    ):
        self.state = state
        self.client = client
        self.clock = clock
        self.progress = progress or NullProgress()
        self.report = report or ApplyReport()
        self._visit: dict[type, Callable[[Any, int], None]] = {
            Move: self.move,
            ResolveIntent: self.resolve_intent,
            Harvest: self.harvest,
            Requeue: self.requeue,
            Reuse: self.reuse,
            SubmitBatch: self.submit,
            Forget: self.forget,
            Cancel: self.cancel,
            Prune: self.prune,
        }
        self._requests: RequestSource | None = None
        self.failed_jobs: set[str] = set()  # jobs whose create was refused: not sent again this run

    def run(self, plan: Plan, requests: RequestSource) -> None:
        """Execute every step of `plan`, in order; `requests` renders a submit step's requests."""
        self._requests = requests
        for index, step in enumerate(plan.steps):
            visit = self._visit.get(type(step))
            if visit is None:
                raise PlanError(f"unknown plan step {type(step).__name__}")
            if self.state.lease_lost:
                raise lease_lost()
            stop_if_requested()
            visit(step, index)

    def _note(self, message: str) -> None:
        self.progress.note(message)

    def _drift(self, note: str) -> None:
        """Report a way the remote side is not what state says (`report.drift`), and say it."""
        self.report.drift.append(note)
        self._note(f"Drift: {note}.")

    # -- intents
    def resolve_intent(self, step: ResolveIntent, index: int = 0) -> str | None:
        """Find the batch an unanswered create made, proven ours by its custom_ids, and adopt it;
        or, once no such batch can still appear, give the intent's items back to be sent again.

        Candidates are the batches listed after the intent's list anchor (never judged by
        clocks), unknown to the state, with the intent's request count. One is adopted only once
        its results show exactly the intent's custom_ids; until then the items are held: neither
        sent again nor taken as answered. Returns the adopted batch id.
        """
        intent = next((i for i in self.state.open_intents() if i.id == step.intent_id), None)
        if intent is None:
            return None
        if not intent.create_sent:
            self.state.mark_unsent(intent.id)
            self._note(
                f"Create for {intent.job} ({intent.request_count} requests) was never sent: "
                "its items will be sent now."
            )
            return None
        known = {b.id for b in self.state.batches()}
        if intent.list_anchor is None:  # an intent recorded before anchors: a time window
            listed = self.client.list_recent(intent.created_at - ADOPT_SLACK)
        else:
            listed = self.client.list_after(intent.list_anchor)
        candidates = sorted(
            (b for b in listed if b.id not in known and b.total == intent.request_count),
            key=lambda b: b.created_at,
        )
        expected = self.state.intent_custom_ids(intent.id)
        waiting, unread, archived = [], [], []
        for remote in candidates:
            if remote.archived_at is not None:  # its results are gone: ours or not, the items
                archived.append(remote.id)  # must be sent again
                continue
            if remote.processing_status != "ended":
                waiting.append(remote.id)
                continue
            read = self._custom_ids_of(remote.id)
            if read is None:  # not an answer: it may well be ours
                unread.append(remote.id)
                continue
            ids, lines = read
            if not ids <= expected:
                continue  # a custom_id this create never sent: someone else's batch
            if ids != expected or lines != len(expected):
                unread.append(remote.id)  # only ours so far, but not all of them: read again
                continue
            record = as_record(remote, intent.job, intent.request_count)
            self.state.record_created(intent.id, record, self.clock(), adopted=True)
            self.report.adopted.append(remote.id)
            self._note(
                f"Adopted batch {remote.id} ({intent.request_count} requests, {intent.job}): "
                "created by an earlier run whose response was lost; its custom_ids prove it ours."
            )
            return remote.id
        age = (self.clock() - intent.created_at).total_seconds()
        if unread:
            self._note(
                f"Create for {intent.job} ({intent.request_count} requests): its outcome is "
                f"unknown; batch {', '.join(unread)} may be it, but its results could not be "
                "read in full this time. Its items are held, and it is read again next time."
            )
        if waiting:
            self._note(
                f"Create for {intent.job} ({intent.request_count} requests): its outcome is "
                f"unknown; batch {', '.join(waiting)} may be it, and is proven (or not) once it "
                "ends. Its items are held until then."
            )
        if waiting or unread:
            return None
        if age < create_grace_seconds():
            self._note(
                f"Create for {intent.job} ({intent.request_count} requests): no batch of it is "
                f"listed yet; its items are held until {create_grace_seconds():.0f} s after the "
                "create, then sent again."
            )
        elif archived:
            self.state.mark_unsent(intent.id)
            self._note(
                f"Create for {intent.job} ({intent.request_count} requests): its outcome is "
                f"unknown, and batch {', '.join(archived)}, which may be it, is archived with "
                "its results: its items will be sent again."
            )
        else:
            self.state.mark_unsent(intent.id)
            self._note(
                f"Create for {intent.job} ({intent.request_count} requests) never "
                "reached the API: its items will be sent again."
            )
        return None

    def _custom_ids_of(self, batch_id: str) -> tuple[set[str], int] | None:
        """The custom_ids a batch's results carry, and how many lines carry them; None when
        they could not be read (a stream cut short, a passing failure), which proves nothing."""
        try:
            with self.client.results(batch_id) as lines:
                ids = [line.get("custom_id") for line in lines]
        except RemoteError:
            return None
        return set(ids), len(ids)  # type: ignore[arg-type]

    # -- harvest
    def harvest(self, step: Harvest | BatchRecord, index: int = 0) -> bool:
        record = step if isinstance(step, BatchRecord) else self.state.batch(step.batch_id)
        if record is None or record.harvested_at is not None:
            return record is not None
        if record.finished:  # deleted, results lost or not ours: found by a step before this one
            return False
        counts = orjson.loads(record.request_counts) if record.request_counts else {}
        expected = sum(counts.values()) if counts else record.request_count
        try:
            try:
                with _worker_for(expected) as worker:
                    stored = self._store_results(record, expected, worker)
            except WorkerDied as exc:  # nothing was stored: the lines are read again, here
                self._note(f"Harvest of batch {record.id}: {exc}; harvesting it in this process.")
                stored = self._store_results(record, expected, None)
        except ForeignResults as exc:
            if record.adopted:
                self._not_ours(record, str(exc))
                return False
            return self._harvest_problem(record, str(exc), again=False)
        except NotFound:
            gone = self.client.gone_status(record.id, record.created_at, self.clock())
            if gone == "gone":
                # deleted before harvest: the next plan requeues its items
                self.state.save_batch(replace(record, drift="deleted"), self.clock())
                note = f"batch {record.id} ({record.job}) was deleted outside batchops"
                self._drift(note)
                return False
            if self._past_retention(record) and self._results_answer_404(record.id):
                # a server that stops serving results without setting archived_at: the next plan
                # requeues its items
                self.state.save_batch(replace(record, drift="results-lost"), self.clock())
                note = (
                    f"batch {record.id} ({record.job}): its results answered 404 at the end of "
                    "retention, before they were harvested; its items will be sent again"
                )
                self._drift(note)
                return False
            if gone == "unconfirmed":
                return self._harvest_problem(
                    record,
                    f"the batch and its results answer 404 and {_not_listed_yet()}",
                    again=True,
                )
            return self._harvest_problem(
                record, "its results answered 404 although it exists", again=True
            )
        except (HarvestFailed, RemoteError) as exc:
            return self._harvest_problem(record, str(exc).splitlines()[0], again=True)
        except OverflowError:  # a token count past 64 bits, refused as the rows are stored
            return self._harvest_problem(
                record, "a result holds a number past what the state stores (64 bits)", again=True
            )
        self.report.harvested.append(record.id)
        self.report.results_stored += stored
        self._note(f"Harvested batch {record.id} ({record.job}): {_count(stored, 'result')}.")
        return True

    def _results_answer_404(self, batch_id: str) -> bool:
        """Whether a batch's results answer 404 when asked again, at once: one 404 is a
        question (a passing fault), as a retrieve's is (`confirm_gone`)."""
        try:
            with self.client.result_blocks(batch_id):
                return False
        except NotFound:
            return True
        except RemoteError:
            return False

    def _past_retention(self, record: BatchRecord) -> bool:
        """Whether the batch's results may have expired remotely, by our clock (give or take the
        skew allowed between it and the server's)."""
        expires = record.results_expire_at
        return expires is not None and self.clock() >= expires - RETENTION_SKEW_ALLOWANCE

    def _harvest_problem(self, record: BatchRecord, message: str, *, again: bool) -> bool:
        self.report.problems.append(f"harvest of batch {record.id} ({record.job}): {message}")
        tail = " Nothing was stored for it; the next run tries again." if again else ""
        self._note(f"Could not harvest batch {record.id}: {message}.{tail}")
        return False

    def _not_ours(self, record: BatchRecord, why: str) -> None:
        """An adopted batch turned out not to be ours: forget it, and send its items again."""
        self.state.release_batch(record.id, "not-ours", self.clock())
        note = (
            f"batch {record.id} was adopted by mistake ({why}): it is not ours, so it is "
            "forgotten and its items will be sent again"
        )
        self._drift(note)

    def _store_results(
        self, record: BatchRecord, expected: int, worker: HarvestWorker | None
    ) -> int:
        """Store the batch's results in one transaction: the rows made here, or by a worker
        process while this one inserts them (`harvest.HarvestWorker`)."""
        canceled = record.canceled_by_us_at is not None
        if worker is None:
            sent = self.state.sent_attempts(record.id)
            with self.client.results(record.id) as lines:
                rows = self._verified_rows(record, lines, sent, expected)
                return self.state.store_harvest(
                    record.id, rows, canceled_by_us=canceled, now=self.clock()
                )
        now = self.clock()
        attempts = self.state.sent_attempt_rows(record.id)
        worker.begin(record.job, record.id, iso(now) or "", expected, attempts)
        with self.client.result_blocks(record.id) as blocks:
            rows = worker.rows(blocks, _at_halfway)
            return self.state.store_harvest(record.id, rows, canceled_by_us=canceled, now=now)

    def _verified_rows(
        self,
        record: BatchRecord,
        lines: Iterator[dict[str, Any]],
        sent: dict[str, SentAttempt | None],
        expected: int,
    ) -> Iterator[tuple]:
        """Result lines as rows to store, made in this process (see `harvest.verified_rows`)."""
        now = iso(self.clock()) or ""
        return verified_rows(record.job, record.id, now, lines, sent, expected, _at_halfway)

    # -- requeue, forget
    def requeue(self, step: Requeue, index: int = 0) -> None:
        self.state.release_batch(step.batch_id, step.drift, self.clock())
        self.report.requeued.append(step.batch_id)
        self._note(f"Batch {step.batch_id} ({step.job}): {step.reason}.")

    def forget(self, step: Forget, index: int = 0) -> None:
        now = self.clock()
        if step.keys:
            self.state.forget(((step.job, k) for k in step.keys), now)
        if step.remembered:
            self.state.remember((step.job, k) for k in step.remembered)

    # -- moved
    def move(self, step: Move, index: int = 0) -> None:
        moved = self.state.rename_job(step.from_job, step.job)
        self._note(
            f"Moved job {step.from_job} to {step.job} in the state "
            f"({moved.get('items', 0)} items, {moved.get('results', 0)} results): nothing is sent "
            "for what it has."
        )

    # -- reuse
    def reuse(self, step: Reuse, index: int = 0) -> None:
        recorded = self.state.record_reuse(step.job, step.items, self.clock())
        saved = step.saved_usd * recorded / max(len(step.items), 1)
        self.report.reused += recorded
        self.report.saved_usd += saved
        self._note(
            f"Reused {recorded} stored result{'s' if recorded != 1 else ''} of the same requests "
            f"for {step.job}: nothing sent, about {money(saved)} saved."
        )

    # -- submit
    def submit(self, step: SubmitBatch, index: int) -> None:
        if step.job in self.failed_jobs:
            return
        assert self._requests is not None
        chunk = self._requests(index, step)
        try:
            self._send(step, chunk)
        except RemoteError as exc:
            if exc.retryable:
                raise
            # one job's refused create is that job's problem: the other jobs are still sent
            self.failed_jobs.add(step.job)
            self.report.problems.extend(f"job {step.job}: {p}" for p in exc.problems)
            self._note(f"Could not send job {step.job}: {exc.problems[0]}")

    def _send(self, step: SubmitBatch, chunk: list[tuple[SubmitItem, dict[str, Any]]]) -> None:
        # Each request is written out as JSON and its dict let go, one at a time (the chunk is
        # taken apart as it goes): a 200 MB batch is never held both as dicts and as JSON.
        items: list[SubmitItem] = []
        requests: list[bytes] = []
        chunk.reverse()
        while chunk:
            item, params = chunk.pop()
            items.append(item)
            requests.append(encode_request(item.custom_id, _as_sent(item, params)))
        try:
            self._create(step, items, requests)
        finally:
            requests.clear()
            _give_back_memory()

    def _create(self, step: SubmitBatch, items: list[SubmitItem], requests: list[bytes]) -> None:
        for try_number in range(1, CREATE_TRIES + 1):
            stop_if_requested()  # before the intent: nothing is sent after a stop
            intent_id = f"intent_{uuid.uuid4().hex}"
            anchor = self.client.newest_batch_id()  # where the list stands before the create
            self.state.record_intent(
                intent_id, step.job, items, step.request_bytes, self.clock(), list_anchor=anchor
            )
            checkpoint("after-intent")
            self.state.mark_create_sent(intent_id, self.clock())
            checkpoint("before-create")
            try:
                remote = self.client.create(requests, step.betas)
            except CreateOutcomeUnknown as exc:
                self._note(f"{exc}; looking for the batch remotely before sending again.")
                resolve = ResolveIntent(intent_id, step.job, len(items), "create outcome unknown")
                for pause in (0.5, 2.0):
                    wait(pause)
                    if self.resolve_intent(resolve) or not self._open(intent_id):
                        break
                return  # held (or adopted): the next cycle's plan resolves it
            except RemoteError as exc:
                self.state.mark_unsent(intent_id)
                if not exc.retryable or try_number == CREATE_TRIES:
                    raise
                self._note(f"{exc}; trying again.")
                wait(min(2**try_number * 0.25, 5))
                continue
            checkpoint("after-create")
            self.state.record_created(intent_id, as_record(remote, step.job), self.clock())
            self.report.batches_created.append(remote.id)
            self.report.submitted += len(items)
            self._note(
                f"Created batch {remote.id} for {step.job}: {_count(len(items), 'request')}."
            )
            return

    def _open(self, intent_id: str) -> bool:
        return any(i.id == intent_id for i in self.state.open_intents())

    # -- cancel, prune
    def cancel(self, step: Cancel, index: int = 0) -> None:
        # Marked ours before the call: a crash after it must not read as an outside cancel.
        self.state.mark_cancel_requested(step.batch_id, self.clock())
        checkpoint("after-cancel-mark")
        try:
            remote = self.client.cancel(step.batch_id)
        except NotFound:  # gone, another workspace's key, or a passing 404: the refresh tells
            note = (
                f"batch {step.batch_id} (job {step.job}): the API answered 404 to its cancel;"
                " the next refresh checks whether it is gone, and the cancel is tried again"
                " while it is not"
            )
            self._drift(note)
            return
        except RemoteError as exc:
            self._step_problem(step, exc)
            return
        self.state.record_cancel(
            step.batch_id, remote.cancel_initiated_at, remote.processing_status
        )
        self.report.canceled.append(step.batch_id)
        self._note(f"Cancelled batch {step.batch_id} ({step.job}): {step.reason}.")

    def prune(self, step: Prune, index: int = 0) -> None:
        record = self.state.batch(step.batch_id)
        if record is None:
            return
        if record.harvested_at is None and not self.harvest(record):
            return
        checkpoint("mid-prune")
        try:
            self.client.delete(record.id)
        except NotFound:  # deleted already (by us, its answer lost), or a passing 404: asked
            try:
                gone = self.client.gone_status(record.id, record.created_at, self.clock())
            except RemoteError as exc:
                self._step_problem(step, exc)
                return
            if gone != "gone":
                why = "still lists it" if gone == "exists" else _not_listed_yet()
                note = (
                    f"batch {record.id} (job {record.job}): the API answered 404 to its delete"
                    f" and {why}; the delete is tried again at the next apply"
                )
                self._drift(note)
                return
        except RemoteError as exc:
            self._step_problem(step, exc)
            return
        checkpoint("after-delete")
        self.state.mark_pruned(record.id, self.clock())
        self.report.pruned.append(record.id)
        self._note(f"Pruned batch {record.id} ({record.job}): {step.reason}.")

    def _step_problem(self, step: Cancel | Prune, exc: RemoteError) -> None:
        # e.g. the batch ended between refresh and cancel: the next run re-plans
        self.report.problems.extend(exc.problems)
        self._note(f"Could not {step.kind} batch {step.batch_id}: {exc.problems[0]}")


def _give_back_memory() -> None:
    """Return the freed heap to the system (glibc only): a 200 MB batch's request bytes leave
    holes in the heap that the interpreter's own allocator never reuses, so the plan made after
    a create would otherwise add its memory on top of them."""
    try:
        import ctypes  # only after a create (~3 ms to import, with `ctypes.util`)
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (ImportError, OSError, AttributeError):  # a Python without ctypes, or not glibc
        pass


def _as_sent(item: SubmitItem, params: dict[str, Any]) -> dict[str, Any]:
    """The request as sent: with its shared prefix marked when the job has `cache = "auto"` and
    the plan chose to (marks never enter the fingerprint, so they change what is billed only)."""
    if item.estimate is not None and item.estimate.auto:
        return caching.mark(params)
    return params


def _not_listed_yet() -> str:
    """Why a batch that answers 404 and is not listed is not taken as deleted yet."""
    seconds = int(list_lag().total_seconds())
    age = _count(seconds // 60, "minute") if seconds % 60 == 0 else _count(seconds, "second")
    return (
        "the list of batches lacks it, but the list may not show a batch this new yet: it is"
        f" taken as deleted once the list shows a newer batch or it is {age} old"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n:,} {noun}s"
