"""`apply` and `refresh`: a loop of refresh → plan → show/confirm → evaluate → wait.

Within a cycle, the plan that was shown and confirmed is the plan the evaluator runs. A harvest can
only tell what to retry once it is done, so a cycle that harvested is followed at once by another
(its own plan, shown and confirmed in turn); `--wait` keeps cycling until nothing is in flight.
A saved plan is run exactly as written, once; with `--wait`, later cycles only poll and harvest.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from batchops.apply.report import ApplyReport, Progress
from batchops.errors import NotFound, RemoteError, StateError, pause, stop_if_requested
from batchops.plan.actions import (
    Cancel,
    Forget,
    Harvest,
    JobPlan,
    Plan,
    Prune,
    Reuse,
    SubmitBatch,
    SubmitItem,
    action_counts,
)
from batchops.plan.diff import DEFAULT_PRUNE_MARGIN, BatchLimits
from batchops.plan.memo import Planner
from batchops.remote import BatchesClient, RemoteBatch
from batchops.spec.desired import Desired, sent_custom_ids
from batchops.state.api import StateWriter

if TYPE_CHECKING:
    from batchops.apply.evaluator import Evaluator, RequestSource
    from batchops.plan.saved import SavedPlan

# The evaluator, the saved-plan reader and the budget check are imported when a cycle has
# something to run: a no-op apply is a no-op plan and a lock, and should cost about as much.

Confirm = Callable[[Plan], bool]
MAX_FOLLOW_UPS = 3  # without --wait: cycles after the first, to send what a harvest settled


def refresh_state(
    state: StateWriter,
    client: BatchesClient,
    now: datetime,
    report: ApplyReport,
    progress,
    jobs: set[str] | None = None,
) -> None:
    """Poll every batch whose remote facts the plan still needs (not one harvested, until its
    results near expiry: `BatchRecord.needs_refresh`), and save what the remote says.

    Only the batches of `jobs` (None: every job): another apply may hold the other jobs' leases
    and be writing their batches' rows."""
    for record in state.batches():
        if (jobs is not None and record.job not in jobs) or not record.needs_refresh(
            now, DEFAULT_PRUNE_MARGIN
        ):
            continue
        from batchops.apply.refresh import poll

        updated, note = poll(record, client, now)
        if note:
            report.drift.append(note)
            progress.note(f"Drift: {note}.")
        if updated != record:
            state.save_batch(updated, now)


def _refresh_only(plan: Plan) -> Plan:
    """What `refresh` runs of a plan: poll results home, send and delete nothing."""
    keep = tuple(
        s for s in plan.steps if not isinstance(s, SubmitBatch | Reuse | Forget | Cancel | Prune)
    )
    return replace(plan, steps=keep)


def run_cycles(
    state: StateWriter,
    client: BatchesClient,
    planner: Planner,
    *,
    clock: Callable[[], datetime],
    limits: BatchLimits,
    progress: Progress,
    confirm: Confirm | None = None,
    saved: SavedPlan | None = None,
    submit: bool = True,
    wait: bool = False,
    timeout: float | None = None,
    poll_interval: float = 5.0,
) -> ApplyReport:
    """The reconcile loop. The caller holds the state (and so its lock)."""
    report = ApplyReport()
    evaluator: Evaluator | None = None
    started = time.monotonic()
    first = True
    follow_ups = 0
    unchanged: Plan | None = None
    # by job, the ceiling of what this apply's cycles sent: a budget holds for the whole apply
    spent: dict[str, float] = {}
    while True:
        stop_if_requested()  # a SIGTERM whose raise was lost (`errors.STOP_REQUESTED`)
        if state.lease_lost:  # found by the keeper while this apply waited or ran a cycle
            from batchops.apply.evaluator import lease_lost

            raise lease_lost()
        if saved is not None and first:
            plan = saved.plan
            requests: RequestSource = _saved_source(saved)
            # made again from this very state when apply checked it: with nothing to run, the
            # final plan (a diff of every item: seconds at a million)
            unchanged = saved.checked if not plan.steps else None
        else:
            scope = None if planner.all_jobs_in_scope else set(planner.names)
            refresh_state(state, client, clock(), report, progress, scope)
            # One plan per cycle, from the memo when nothing it depends on changed.
            plan = unchanged = planner.plan(state, clock(), limits=limits)
            if not submit or saved is not None:
                plan = _refresh_only(plan)
            requests = _spec_source(plan, planner)
        if plan.changes or (submit and any(j.deferred for j in plan.jobs)):
            if submit:  # a resend deferred to a later cycle counts from the first (as `plan`)
                from batchops.plan.build import check_budget

                check_budget(plan, spent if plan.submits else None)
        if plan.changes:
            if confirm is not None and not confirm(plan):
                report.approved = False
                return report
        if plan.steps:
            if evaluator is None:
                from batchops.apply.evaluator import Evaluator

                evaluator = Evaluator(state, client, clock, progress, report)
            evaluator.run(plan, requests)
            for step in plan.submits:
                spent[step.job] = spent.get(step.job, 0.0) + step.cost_usd
        first = False
        planner.drop_replace()  # `--replace` items are sent once, by this first cycle
        harvested = any(
            isinstance(s, Harvest) or s.kind in ("adopt", "requeue") for s in plan.steps
        )
        # Nothing ran: the state is as the cycle's plan saw it, so that plan is the final one
        # (a no-op apply plans once, not twice: a diff of a million items takes seconds).
        nothing_ran = not plan.steps
        if nothing_ran and unchanged is not None:
            final = unchanged
        else:
            final = planner.plan(state, clock(), limits=limits)
        report.final_plan = final
        failed_jobs = evaluator.failed_jobs if evaluator is not None else set()
        sendable = [s for s in final.submits if s.job not in failed_jobs]
        if not wait:
            follow_up = submit and saved is None and (sendable or final.reuses or _forgets(final))
            if harvested and follow_up and follow_ups < MAX_FOLLOW_UPS:
                follow_ups += 1
                continue  # what the harvest settled is sent or forgotten in this run, as its own plan
            return report
        # items waiting for a job outside --job are harvested by that job's apply, not this one
        in_flight = sum(j.counts["pending"] - j.waiting_outside for j in final.jobs)
        total = sum(sum(j.counts.values()) - j.counts["removed"] for j in final.jobs)
        done = sum(j.counts["succeeded"] + j.counts["failed"] for j in final.jobs)
        progress.waiting(done, total, in_flight)
        outstanding = (
            in_flight
            or any(s.kind in ("harvest", "adopt", "requeue") for s in final.steps)
            or (submit and saved is None and bool(sendable or final.reuses))
            # removed items still in flight: forgotten once their batch is harvested, by a
            # cycle that may forget (a saved plan's later cycles only refresh)
            or any(j.removed_in_flight for j in final.jobs)
            or (submit and saved is None and any(_forgets_of(j) for j in final.jobs))
        )
        if not outstanding:
            return report
        if timeout is not None and time.monotonic() - started >= timeout:
            report.timed_out = True
            return report
        pause(poll_interval)


def _forgets_of(job: JobPlan) -> int:
    return action_counts(job.actions).get("forget", 0)


def _forgets(plan: Plan) -> bool:
    return any(isinstance(s, Forget) and s.keys for s in plan.steps)


def _saved_source(saved: SavedPlan) -> RequestSource:
    """Requests of each submit step, read from the saved plan's own lines."""
    from batchops.plan.saved import saved_requests

    return lambda index, step: saved_requests(saved, index)


def _spec_source(plan: Plan, planner: Planner) -> RequestSource:
    """Requests of each submit step, rendered from the specs once per job, in step order (a
    plan with nothing to send renders nothing)."""
    chunks = None
    position = {"next": 0}

    def requests(index: int, step: SubmitBatch):
        nonlocal chunks
        if chunks is None:
            from batchops.plan.saved import spec_requests

            chunks = spec_requests(plan, planner.desired)
        while True:
            chunk = next(chunks)
            current = position["next"]
            position["next"] += 1
            if current == index:
                return chunk

    return requests


def import_batch(
    state: StateWriter,
    client: BatchesClient,
    desired: Desired,
    job_name: str,
    batch_id: str,
    *,
    clock: Callable[[], datetime],
    progress: Progress,
) -> int:
    """Adopt a remote batch made outside this state (or lost from it); returns results stored.

    Its custom_ids are known only from its results, so it must have ended. Each result is matched
    to the job's items by custom_id and recorded as an attempt at the item's current fingerprint.
    """
    known = state.batch(batch_id)
    if known is not None:
        raise StateError(f"batch {batch_id} is already in state (job {known.job})")
    try:
        remote = client.retrieve(batch_id)
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
        custom_id: item
        for dj in desired.jobs
        if dj.name == job_name
        for custom_id, item in sent_custom_ids(desired, dj)
    }
    with client.results(batch_id) as lines:
        custom_ids = [line.get("custom_id") for line in lines]
    if len(custom_ids) != remote.total or len(set(custom_ids)) != len(custom_ids):
        raise RemoteError(
            f"batch {batch_id}: its results did not check out ({len(custom_ids)} "
            f"lines, {len(set(custom_ids))} distinct custom_ids, request_counts "
            f"add up to {remote.total}); nothing was imported, try again"
        )
    unknown = [c for c in custom_ids if c not in by_custom_id]
    if len(unknown) == len(custom_ids):
        raise StateError(
            f"batch {batch_id}: {len(unknown)} of its {len(custom_ids)} results "
            f"are not items of job {job_name} (first: {unknown[0]!r})"
        )
    # Lines that answer no current item (an older version of one, edited since) are checked and
    # counted, not stored, as `state recover` does; the items they answered are sent again.
    custom_ids = [c for c in custom_ids if c in by_custom_id]
    records = {r.key: r for r in state.item_records([job_name])}
    busy = {key for key, r in records.items() if r.inflight}
    clash = [by_custom_id[c].key for c in custom_ids if by_custom_id[c].key in busy]
    if clash:
        raise StateError(
            f"batch {batch_id}: item {clash[0]} of job {job_name} is already in "
            "flight in another batch"
        )

    def attempt(key: str, fingerprint: str) -> int:  # the retry count goes on for an unchanged item
        record = records.get(key)
        same = record is not None and record.fingerprint == fingerprint
        return record.attempts + 1 if same and record is not None else 1

    items = [
        SubmitItem(
            job_name,
            by_custom_id[c].key,
            c,
            by_custom_id[c].fingerprint,
            "import",
            attempt(by_custom_id[c].key, by_custom_id[c].fingerprint),
            0.0,
        )
        for c in custom_ids
    ]
    intent_id = f"intent_{uuid.uuid4().hex}"
    state.record_intent(intent_id, job_name, items, 0, clock())
    from batchops.apply.refresh import as_record

    state.record_created(intent_id, as_record(remote, job_name), clock())
    from batchops.apply.evaluator import Evaluator

    if unknown:
        stored, problem = harvest_matched(state, client, clock, remote, job_name)
        if problem is not None:
            state.remove(batch_id)  # its items are no longer in flight: the next apply sends them
            raise RemoteError(f"batch {batch_id}: {problem}; nothing of it was imported")
        progress.note(
            f"{len(unknown):,} result{'' if len(unknown) == 1 else 's'} of batch {batch_id} not stored: "
            f"{'it answers' if len(unknown) == 1 else 'they answer'} no current item of job "
            f"{job_name} (an older version of one)."
        )
        return stored
    evaluator = Evaluator(state, client, clock, progress)
    record = state.batch(batch_id)
    if record is None or not evaluator.harvest(record):
        said = evaluator.report.problems or evaluator.report.drift
        raise RemoteError(*(said or [f"batch {batch_id}: harvest failed"]))
    return evaluator.report.results_stored


HARVEST_TRIES = 2  # a batch recovered or imported has no next run to harvest it: once more


def harvest_matched(
    state: StateWriter,
    client: BatchesClient,
    clock: Callable[[], datetime],
    remote: RemoteBatch,
    job: str,
) -> tuple[int, str | None]:
    """Store, in one transaction, the results of a batch recorded with only some of its lines'
    items; the other lines are checked and counted, not stored. Returns the results stored, or
    why it failed.

    Apply's harvest (the evaluator's) refuses a line the batch was not sent, as it must for a
    batch apply sent; recovery (and import) know some lines are older versions of the items."""
    from batchops.apply.harvest import HarvestFailed, verified_rows
    from batchops.clock import iso

    problem = "harvest failed"
    for _ in range(HARVEST_TRIES):
        sent = state.sent_attempts(remote.id)
        now = clock()
        try:
            with client.results(remote.id) as lines:
                rows = verified_rows(
                    job, remote.id, iso(now) or "", lines, sent, remote.total, unmatched=set()
                )
                return state.store_harvest(remote.id, rows, canceled_by_us=False, now=now), None
        except (HarvestFailed, RemoteError) as exc:
            problem = str(exc).splitlines()[0]
        except OverflowError:  # a token count past 64 bits, refused as the rows are stored
            problem = "a result holds a number past what the state stores (64 bits)"
    return 0, problem
