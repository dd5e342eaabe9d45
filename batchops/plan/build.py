"""From specs and state to a plan: gather what the pure diff needs, read-only, and call it."""

from __future__ import annotations

from datetime import datetime

from batchops.plan.actions import Plan
from batchops.plan.diff import BatchLimits, make_plan
from batchops.spec.desired import Desired
from batchops.state.api import StateReader
from batchops.state.records import BatchRecord, ItemRecord


def plan_from(
    reader: StateReader,
    desired: Desired,
    now: datetime,
    remote: dict[str, BatchRecord] | None = None,
    limits: BatchLimits | None = None,
) -> Plan:
    """The plan for `desired` against what `reader` holds, with `remote` overriding what it
    recorded of batches a refresh polled (nothing is written)."""
    scope = None if desired.all_jobs_in_scope else [j.name for j in desired.jobs]
    batches = reader.batches()
    if remote:
        batches = [remote.get(b.id, b) for b in batches]
    records = list(reader.item_records(scope))
    return make_plan(
        desired.jobs,
        records,
        batches,
        reader.open_intents(),
        now=now,
        lineage=reader.lineage,
        serial=reader.serial,
        spec_digest=desired.spec_digest,
        inflight_batches=reader.inflight_by_batch(),
        all_jobs_in_scope=desired.all_jobs_in_scope,
        limits=limits or BatchLimits(),
        reusable=_reusable(reader, desired, records),
    )


def _reusable(reader: StateReader, desired: Desired, records: list[ItemRecord]) -> dict[str, int]:
    """Stored answers for the requests that would otherwise be sent (none asked for when every
    item already has its own result or is in flight, as in a plan with nothing to do)."""
    settled = {
        (r.job, r.key): r.fingerprint for r in records if r.inflight or r.outcome == "succeeded"
    }
    wanted = {
        item.fingerprint
        for job in desired.jobs
        if job.reuse
        for item in job.items
        if settled.get((job.name, item.key)) != item.fingerprint
    }
    return reader.results_by_fingerprint(wanted) if wanted else {}
