"""`batchops status`: where every job stands, what it has cost, and what is still out there.

Status is offline and read-only, like `plan --no-refresh`: it classifies items with the planner's
own rules (one source of truth for "pending" or "failed"), prices stored usage for the actual
cost, and reads recorded batches. It never writes the state file and never calls the API, so it
shows remote progress as of the last `apply` or `refresh`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from batchops.clock import iso
from batchops.commands.context import Context, job_estimate
from batchops.lazyclass import dataclass
from batchops.plan.build import plan_from
from batchops.pricing import PriceTable, Usage
from batchops.state.api import StateReader
from batchops.state.records import BatchRecord

FORMAT_VERSION = 1
COST_PARTS = ("input", "cache_write", "cache_read", "output")


@dataclass(frozen=True)
class JobStatus:
    name: str
    items: int  # items the specs declare now (0 for a job no longer in any spec)
    succeeded: int
    pending: int
    retrying: int
    failed: int
    todo: int  # never sent with the current fingerprint (todo + changed)
    removed: int
    actual_cost_usd: float
    estimated_cost_usd: float  # the ceiling of sending every item, as a plan estimates it
    cost_note: str | None = None
    # the actual cost split by what was billed: input, cache_write, cache_read, output
    actual_parts_usd: dict[str, float] | None = None
    expected_cost_usd: float | None = None  # the central estimate of sending every item


@dataclass(frozen=True)
class InFlightBatch:
    id: str
    job: str
    processing_status: str
    request_count: int
    created_at: datetime | None
    expires_at: datetime | None
    age_seconds: float | None
    expires_in_seconds: float | None


@dataclass(frozen=True)
class ResultExpiry:
    batch_id: str
    job: str
    results_expire_at: datetime
    in_seconds: float


@dataclass(frozen=True)
class UnknownCreate:
    """A create sent whose answer never came: the batch it may have made is not known yet."""

    job: str
    request_count: int
    begun_at: datetime  # when apply recorded it, just before the create was sent


@dataclass(frozen=True)
class Status:
    created_at: datetime
    state_path: str
    lineage: str | None
    serial: int
    jobs: tuple[JobStatus, ...]
    batches_in_flight: tuple[InFlightBatch, ...]
    next_result_expiry: ResultExpiry | None
    # creates sent whose answer was lost: each may have made a batch that runs (and is billed)
    unknown_creates: tuple[UnknownCreate, ...] = ()

    @property
    def actual_cost_usd(self) -> float:
        return round(sum(j.actual_cost_usd for j in self.jobs), 6)

    @property
    def estimated_cost_usd(self) -> float:
        return round(sum(j.estimated_cost_usd for j in self.jobs), 6)

    @property
    def expected_cost_usd(self) -> float:
        return round(sum(_expected(j) for j in self.jobs), 6)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON shape of `batchops status --json`."""
        return {
            "format_version": FORMAT_VERSION,
            "created_at": iso(self.created_at),
            "state": {"path": self.state_path, "lineage": self.lineage, "serial": self.serial},
            "jobs": [
                {
                    "name": j.name,
                    "items": j.items,
                    "succeeded": j.succeeded,
                    "pending": j.pending,
                    "retrying": j.retrying,
                    "failed": j.failed,
                    "todo": j.todo,
                    "removed": j.removed,
                    "actual_cost_usd": j.actual_cost_usd,
                    "actual_cost_parts_usd": j.actual_parts_usd or dict.fromkeys(COST_PARTS, 0.0),
                    "estimated_cost_usd": j.estimated_cost_usd,
                    "expected_cost_usd": _expected(j),
                    "cost_note": j.cost_note,
                }
                for j in self.jobs
            ],
            "totals": {
                "actual_cost_usd": self.actual_cost_usd,
                "estimated_cost_usd": self.estimated_cost_usd,
                "expected_cost_usd": self.expected_cost_usd,
            },
            "batches_in_flight": [
                {
                    "id": b.id,
                    "job": b.job,
                    "processing_status": b.processing_status,
                    "request_count": b.request_count,
                    "created_at": iso(b.created_at),
                    "expires_at": iso(b.expires_at),
                    "age_seconds": _round(b.age_seconds),
                    "expires_in_seconds": _round(b.expires_in_seconds),
                }
                for b in self.batches_in_flight
            ],
            "unknown_creates": [
                {"job": c.job, "request_count": c.request_count, "begun_at": iso(c.begun_at)}
                for c in self.unknown_creates
            ],
            "next_result_expiry": None
            if self.next_result_expiry is None
            else {
                "batch_id": self.next_result_expiry.batch_id,
                "job": self.next_result_expiry.job,
                "results_expire_at": iso(self.next_result_expiry.results_expire_at),
                "in_seconds": _round(self.next_result_expiry.in_seconds),
            },
        }


def _expected(job: JobStatus) -> float:
    return job.estimated_cost_usd if job.expected_cost_usd is None else job.expected_cost_usd


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def status(context: Context, job_names: Iterable[str] | None = None) -> Status:
    """Where each job stands, from the specs and the recorded state only (no network, no writes)."""
    desired = context.desired(job_names)
    now = context.clock()
    reader = context.reader()
    try:
        plan = plan_from(reader, desired, now)
        parts: dict[str, dict[str, float]] = {}
        actual, notes = actual_costs(reader, context.prices, parts)
        limits = context.settings.limits
        estimates = {j.name: (job_estimate(j, limits), len(j.items)) for j in desired.jobs}
        cost_notes = {j.name: j.cost_note for j in desired.jobs}
        jobs = []
        for jp in plan.jobs:
            c = jp.counts
            (expected, estimate), items = estimates.get(jp.name, ((0.0, 0.0), 0))
            note = "; ".join(n for n in (cost_notes.get(jp.name), notes.get(jp.name)) if n)
            jobs.append(
                JobStatus(
                    name=jp.name,
                    items=items,
                    succeeded=c["succeeded"],
                    pending=c["pending"],
                    retrying=c["retry"],
                    failed=c["failed"],
                    todo=c["todo"] + c["changed"],
                    removed=c["removed"],
                    actual_cost_usd=round(actual.get(jp.name, 0.0), 6),
                    estimated_cost_usd=round(estimate, 6),
                    expected_cost_usd=round(expected, 6),
                    cost_note=note or None,
                    actual_parts_usd={
                        k: round(v, 6)
                        for k, v in parts.get(jp.name, dict.fromkeys(COST_PARTS, 0.0)).items()
                    },
                )
            )
        scope = {j.name for j in jobs}
        batches = [b for b in reader.batches() if b.job in scope]
        return Status(
            created_at=now,
            state_path=context.settings.shown_state,
            lineage=reader.lineage,
            serial=reader.serial,
            jobs=tuple(jobs),
            batches_in_flight=tuple(_in_flight(batches, now)),
            next_result_expiry=_next_expiry(batches, now),
            unknown_creates=tuple(unknown_creates(reader, scope)),
        )
    finally:
        reader.close()


def actual_costs(
    reader: StateReader, prices: PriceTable, parts: dict[str, dict[str, float]] | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """Job → USD billed for every succeeded result stored (history included), at batch prices.

    Each result is priced on the day its batch was created (the result's arrival day when the
    batch row is gone), at its model's long_context price when its input passed that length.
    Returns the costs and, per job, a note naming models with no price;
    `parts`, when given, is filled with each job's cost split into COST_PARTS.
    """
    costs: dict[str, float] = {}
    unpriced: dict[str, set[str]] = {}
    # Requests past a model's long_context cost more: the rows come apart by how many of these
    # lengths their input passed.
    lengths = prices.long_context_lengths()
    for job, model, day, inp, out, write_5m, write_1h, read, over in reader.usage_rows(lengths):
        costs.setdefault(job, 0.0)
        price = prices.price(model or "", date.fromisoformat(day)) if day else None
        if price is None:
            unpriced.setdefault(job, set()).add(model or "(unknown model)")
            continue
        if price.long is not None and over > lengths.index(price.long_above):
            price = price.long
        costs[job] += Usage(inp, out, write_5m, write_1h, read).cost(price)
        if parts is not None:
            split = parts.setdefault(job, dict.fromkeys(COST_PARTS, 0.0))
            split["input"] += inp * price.input / 1e6
            split["cache_write"] += (
                write_5m * price.cache_write_5m + write_1h * price.cache_write_1h
            ) / 1e6
            split["cache_read"] += read * price.cache_read / 1e6
            split["output"] += out * price.output / 1e6
    notes = {
        job: f"no price for model {', '.join(sorted(models))} in {prices.source}: "
        "actual cost excludes it"
        for job, models in unpriced.items()
    }
    return costs, notes


def unknown_creates(reader: StateReader, jobs: Iterable[str] | None = None) -> list[UnknownCreate]:
    """The creates sent whose outcome is not known (open intents, their create sent), of `jobs`
    (None: every job)."""
    scope = None if jobs is None else set(jobs)
    return [
        UnknownCreate(i.job, i.request_count, i.created_at)
        for i in reader.open_intents()
        if i.create_sent and (scope is None or i.job in scope)
    ]


def _in_flight(batches: list[BatchRecord], now: datetime) -> list[InFlightBatch]:
    out = []
    for b in batches:
        if b.finished or b.drift == "deleted" or b.processing_status == "ended":
            continue
        out.append(
            InFlightBatch(
                id=b.id,
                job=b.job,
                processing_status=b.processing_status,
                request_count=b.request_count,
                created_at=b.created_at,
                expires_at=b.expires_at,
                age_seconds=None if b.created_at is None else (now - b.created_at).total_seconds(),
                expires_in_seconds=None
                if b.expires_at is None
                else (b.expires_at - now).total_seconds(),
            )
        )
    return out


def _next_expiry(batches: list[BatchRecord], now: datetime) -> ResultExpiry | None:
    """The harvested, not yet pruned batch whose remote results expire first (of those not
    expired already: an archived batch's, or one past its time, are gone)."""
    candidates = [
        (b.results_expire_at, b.id, b.job)
        for b in batches
        if b.harvested_at is not None
        and b.pruned_at is None
        and b.archived_at is None
        and b.drift not in ("deleted", "results-lost")
        and b.results_expire_at is not None
        and b.results_expire_at > now
    ]
    if not candidates:
        return None
    expires, batch_id, job = min(candidates)
    return ResultExpiry(batch_id, job, expires, (expires - now).total_seconds())


def duration(seconds: float | None) -> str:
    """A short human duration: 45 s, 12 min, 5.2 h, 28.9 days (negative: '… ago')."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return f"{duration(-seconds)} ago"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
