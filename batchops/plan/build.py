"""From specs and state to a plan: gather what the pure diff needs, read-only, and call it."""

from __future__ import annotations

from datetime import datetime

from batchops.plan.actions import Plan
from batchops.plan.diff import BatchLimits, make_plan
from batchops.spec.desired import Desired
from batchops.state.api import StateReader
from batchops.state.records import BatchRecord


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
    return make_plan(
        desired.jobs,
        reader.item_records(scope),
        batches,
        reader.open_intents(),
        now=now,
        lineage=reader.lineage,
        serial=reader.serial,
        spec_digest=desired.spec_digest,
        inflight_batches=reader.inflight_by_batch(),
        all_jobs_in_scope=desired.all_jobs_in_scope,
        limits=limits or BatchLimits(),
    )
