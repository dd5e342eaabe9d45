"""The diff: desired items and recorded state in, an immutable plan out.

`make_plan` is a pure function (no I/O, no clock: `now` is passed in), so every rule of DESIGN §5
is testable without a network. `plan` renders the plan it returns; `apply` walks the very same
actions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from batchops.spec.desired import DesiredItem, DesiredJob
from batchops.state import BatchRecord, IntentRecord, ItemRecord

FORMAT_VERSION = 1
ITEM_STATES = ("todo", "changed", "pending", "retry", "failed", "succeeded", "removed")
ACTIONS = ("submit", "forget", "harvest", "cancel", "prune", "adopt", "requeue")
RETRYABLE_ERRORS = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})
DEFAULT_PRUNE_MARGIN = timedelta(days=2)


class SubmitItem(NamedTuple):
    """Send one item (a tuple: a million of them are made for a large job)."""

    job: str
    key: str
    custom_id: str
    fingerprint: str
    reason: str  # todo | changed | retry
    attempt: int  # the attempt number this submission will be, for this fingerprint
    cost_usd: float
    action: str = "submit"


class ForgetItem(NamedTuple):
    job: str
    key: str
    reason: str
    action: str = "forget"


@dataclass(frozen=True)
class FailedItem:
    key: str
    error_type: str | None
    message: str


@dataclass(frozen=True)
class BatchAction:
    action: str  # harvest | cancel | prune | adopt | requeue
    batch_id: str | None  # None for adopt (only the intent is known)
    job: str
    reason: str
    intent_id: str | None = None


@dataclass(frozen=True)
class JobPlan:
    name: str
    counts: dict[str, int]
    actions: tuple[SubmitItem | ForgetItem, ...]
    failed: tuple[FailedItem, ...]
    estimated_cost_usd: float
    budget_usd: float | None
    cost_note: str | None = None
    # keys back in a spec after being forgotten: apply clears their mark (not an action to show)
    remembered: tuple[str, ...] = ()

    @property
    def submits(self) -> list[SubmitItem]:
        return [a for a in self.actions if isinstance(a, SubmitItem)]

    @property
    def over_budget(self) -> bool:
        return self.budget_usd is not None and self.estimated_cost_usd > self.budget_usd


@dataclass(frozen=True)
class Plan:
    created_at: datetime
    lineage: str | None
    serial: int
    spec_digest: str
    jobs: tuple[JobPlan, ...]
    batches: tuple[BatchAction, ...]
    format_version: int = FORMAT_VERSION
    notes: tuple[str, ...] = field(default_factory=tuple)  # drift seen by the refresh
    offline_note: str | None = None  # set when batches in flight were not polled

    @property
    def changes(self) -> bool:
        return bool(self.batches) or any(j.actions for j in self.jobs)

    @property
    def estimated_cost_usd(self) -> float:
        return sum(j.estimated_cost_usd for j in self.jobs)

    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(ACTIONS, 0)
        for job in self.jobs:
            for action in job.actions:
                counts[action.action] += 1
        for batch in self.batches:
            counts[batch.action] += 1
        return counts

    def job(self, name: str) -> JobPlan | None:
        return next((j for j in self.jobs if j.name == name), None)


def classify(
    desired: DesiredItem, record: ItemRecord | None, max_attempts: int
) -> tuple[str, str | None]:
    """The DESIGN §5 state of one desired item, with the reason or error message."""
    if record is None or record.fingerprint is None:
        return "todo", None
    if record.inflight:
        if record.fingerprint != desired.fingerprint:
            return "pending", "changed while in flight: sent again once its batch ends"
        return "pending", None
    if record.fingerprint != desired.fingerprint:
        return "changed", None
    outcome = record.outcome
    if outcome == "succeeded":
        return "succeeded", None
    if outcome == "lost" or outcome is None:
        return "todo", "results expired before harvest" if outcome == "lost" else None
    retryable = (
        (outcome == "errored" and record.error_type in RETRYABLE_ERRORS)
        or outcome == "expired"
        or (outcome == "canceled" and record.canceled_by_us)
    )
    if retryable:
        if record.attempts < max_attempts:
            return "retry", _describe_outcome(record)
        return "failed", f"max_attempts ({max_attempts}) used up; last: {_describe_outcome(record)}"
    return "failed", _describe_outcome(record)


def _describe_outcome(record: ItemRecord) -> str:
    if record.outcome == "errored":
        return f"{record.error_type}: {record.error_message or ''}".rstrip(": ")
    if record.outcome == "canceled" and not record.canceled_by_us:
        return "canceled outside batchops"
    return str(record.outcome)


def make_plan(
    desired_jobs: Iterable[DesiredJob],
    records: Iterable[ItemRecord],
    batches: Iterable[BatchRecord],
    intents: Iterable[IntentRecord],
    *,
    now: datetime,
    lineage: str | None,
    serial: int,
    spec_digest: str,
    inflight_batches: dict[str, set[str]] | None = None,
    all_jobs_in_scope: bool = True,
    prune_margin: timedelta = DEFAULT_PRUNE_MARGIN,
) -> Plan:
    """Diff the desired jobs against recorded state.

    `records` are the items in state for the jobs in scope (every job in state when
    `all_jobs_in_scope`); `inflight_batches` maps a batch id to the `job\\x1fkey` of the items in
    flight in it, for the cancel rule.
    """
    desired_jobs = list(desired_jobs)
    by_job: dict[str, dict[str, ItemRecord]] = {}
    for record in records:
        by_job.setdefault(record.job, {})[record.key] = record
    scope = {j.name for j in desired_jobs}
    obsolete: set[str] = set()  # job\x1fkey of in-flight items nobody wants any more

    job_plans = []
    for job in desired_jobs:
        state_items = by_job.get(job.name, {})
        counts = dict.fromkeys(ITEM_STATES, 0)
        actions: list[SubmitItem | ForgetItem] = []
        failed: list[FailedItem] = []
        cost = 0.0
        wanted: set[str] = set()
        remembered: list[str] = []
        for item in job.items:
            wanted.add(item.key)
            record = state_items.get(item.key)
            if record is not None and record.forgotten:
                remembered.append(item.key)
            item_state, detail = classify(item, record, job.max_attempts)
            counts[item_state] += 1
            if item_state in ("todo", "changed", "retry"):
                # a lost attempt was already uncounted by the requeue: its resend takes its number
                lost = item_state == "todo" and record is not None and record.outcome == "lost"
                attempt = record.attempts + 1 if (item_state == "retry" or lost) and record else 1
                actions.append(
                    SubmitItem(
                        job.name,
                        item.key,
                        item.custom_id,
                        item.fingerprint,
                        item_state,
                        attempt,
                        item.cost_usd,
                    )
                )
                cost += item.cost_usd
            elif item_state == "failed":
                failed.append(
                    FailedItem(item.key, record.error_type if record else None, detail or "")
                )
            elif item_state == "pending" and detail and record is not None:
                obsolete.add(f"{job.name}\x1f{item.key}")
        for key, record in state_items.items():
            if key not in wanted and not record.forgotten:
                counts["removed"] += 1
                actions.append(ForgetItem(job.name, key, "no longer in any spec"))
                if record.inflight:
                    obsolete.add(f"{job.name}\x1f{key}")
        job_plans.append(
            JobPlan(
                job.name,
                counts,
                tuple(actions),
                tuple(failed),
                round(cost, 6),
                job.budget_usd,
                job.cost_note,
                tuple(remembered),
            )
        )

    if all_jobs_in_scope:
        for name in sorted(set(by_job) - scope):
            remembered = [key for key, r in by_job[name].items() if not r.forgotten]
            if not remembered:
                continue
            counts = dict.fromkeys(ITEM_STATES, 0)
            counts["removed"] = len(remembered)
            forget = tuple(ForgetItem(name, key, "job no longer in any spec") for key in remembered)
            obsolete.update(f"{name}\x1f{key}" for key, r in by_job[name].items() if r.inflight)
            job_plans.append(JobPlan(name, counts, forget, (), 0.0, None))
            scope.add(name)

    batch_actions = _batch_actions(
        [b for b in batches if b.job in scope],
        list(intents),
        inflight_batches or {},
        obsolete,
        now,
        prune_margin,
        scope,
    )
    return Plan(now, lineage, serial, spec_digest, tuple(job_plans), tuple(batch_actions))


def _batch_actions(
    batches: list[BatchRecord],
    intents: list[IntentRecord],
    inflight_batches: dict[str, set[str]],
    obsolete: set[str],
    now: datetime,
    margin: timedelta,
    scope: set[str],
) -> list[BatchAction]:
    out: list[BatchAction] = []
    for intent in intents:
        if intent.job in scope and intent.status == "open":
            out.append(
                BatchAction(
                    "adopt",
                    None,
                    intent.job,
                    "create outcome unknown: find the batch remotely or send again",
                    intent.id,
                )
            )
    for b in batches:
        if b.finished or b.drift == "deleted":
            continue
        expires = b.results_expire_at
        near_expiry = expires is not None and expires - now <= margin
        lost = b.archived_at is not None or (expires is not None and now >= expires)
        if b.processing_status == "ended":
            if b.harvested_at is None:
                if lost:
                    out.append(
                        BatchAction(
                            "requeue",
                            b.id,
                            b.job,
                            "results expired before harvest: items sent again",
                        )
                    )
                    continue
                out.append(BatchAction("harvest", b.id, b.job, "ended"))
            if near_expiry and not lost:
                out.append(
                    BatchAction(
                        "prune",
                        b.id,
                        b.job,
                        f"results expire {_when(expires, now)}: delete remotely",
                    )
                )
            continue
        members = inflight_batches.get(b.id, set())
        # in_progress, not canceling: a cancel marked ours but never sent (a crash) is sent again
        if b.processing_status == "in_progress" and members and members <= obsolete:
            out.append(BatchAction("cancel", b.id, b.job, "every item in it is obsolete"))
    return out


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    delta = moment - now
    if delta.total_seconds() <= 0:
        return "now"
    hours = delta.total_seconds() / 3600
    return f"in {hours:.0f} h" if hours < 48 else f"in {hours / 24:.1f} days"
