"""From specs and state to a plan: gather what the pure diff needs, read-only, and call it;
and the budget check with which `plan` and `apply` refuse a job estimated over its budget."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from batchops.errors import BatchopsError, BudgetExceeded
from batchops.plan.actions import Move, Plan, SubmitItems
from batchops.plan.diff import BatchLimits, make_plan
from batchops.pricing import money
from batchops.spec.desired import Desired
from batchops.spec.model import Moved
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
    recorded of batches a refresh polled (nothing is written).

    A spec's `moved` entry whose old name still has rows in state becomes a `Move` step, first
    in the plan; the diff sees those rows under the new name already, as they will be.
    """
    # The state's version first: a write that lands while the rest is read (another runner's
    # apply) then leaves this plan older than the state, and a saved plan of it is refused,
    # instead of holding the rows read before that write under the serial after it.
    lineage, serial, write_id = reader.lineage, reader.serial, reader.write_id
    moves = pending_moves(reader, desired)
    scope = None if desired.all_jobs_in_scope else [j.name for j in desired.jobs] + list(moves)
    batches = reader.batches()
    if remote:
        batches = [remote.get(b.id, b) for b in batches]
    records = list(reader.item_records(scope))
    intents = reader.open_intents()
    inflight = reader.inflight_by_batch()
    if moves:
        records = [r._replace(job=moves[r.job]) if r.job in moves else r for r in records]
        batches = [replace(b, job=moves[b.job]) if b.job in moves else b for b in batches]
        intents = [replace(i, job=moves[i.job]) if i.job in moves else i for i in intents]
        inflight = {b: {_moved_member(m, moves) for m in ms} for b, ms in inflight.items()}

    def diff(reusable: dict[str, int], outside: list[ItemRecord] | None = None) -> Plan:
        return make_plan(
            desired.jobs,
            records,
            batches,
            intents,
            now=now,
            lineage=lineage,
            serial=serial,
            write_id=write_id,
            spec_digest=desired.spec_digest,
            inflight_batches=inflight,
            all_jobs_in_scope=desired.all_jobs_in_scope,
            limits=limits or BatchLimits(),
            reusable=reusable,
            replace=desired.replace,
            outside=outside or (),
        )

    # Stored answers are looked up only for what would otherwise be sent: a plan with nothing to
    # send (the common, no-op case at a million items) is diffed once and asks nothing more.
    plan = diff({})
    reusable = _reusable(reader, desired, plan, records)
    outside = _in_flight_outside(reader, desired, plan, inflight)
    if reusable or outside:
        plan = diff(reusable, outside)
    if not moves:
        return plan
    steps = tuple(
        Move(old, new, "renamed in the specs (moved): its state and results follow it")
        for old, new in moves.items()
    )
    return replace(plan, steps=steps + plan.steps)


def pending_moves(reader: StateReader, desired: Desired) -> dict[str, str]:
    """old → new for each `moved` entry of the specs that is still to be done in this state
    (its new name in scope, its old name with rows); refused when both names have rows."""
    return moves_to_apply(reader, desired.project.moves, {j.name for j in desired.jobs})


def moves_to_apply(
    reader: StateReader, entries: Iterable[Moved], wanted: Collection[str]
) -> dict[str, str]:
    """`pending_moves` of the `moved` entries `entries` to the job names `wanted`."""
    moves = [m for m in entries if m.new in wanted]
    if not moves:
        return {}
    names = set(reader.job_names())
    out: dict[str, str] = {}
    for m in moves:
        if m.old not in names:
            continue  # done already (or never applied under the old name)
        if m.new in names:
            raise BatchopsError(
                f"moved {m.old} → {m.new}: both jobs have rows in state {reader.location}; "
                f"keep one (`batchops state rm {m.new}`, then apply) or remove the moved entry"
            )
        out[m.old] = m.new
    return out


def _moved_member(member: str, moves: dict[str, str]) -> str:
    job, _, key = member.partition("\x1f")
    return f"{moves[job]}\x1f{key}" if job in moves else member


def _reusable(
    reader: StateReader, desired: Desired, plan: Plan, records: Sequence[ItemRecord]
) -> dict[str, int]:
    """Stored answers (fingerprint → result id) for the requests `plan` would send, in jobs that
    allow reuse; the diff decides which of them answer an item."""
    if not reader.exists:  # no results to reuse: no set of a million fingerprints to ask with
        return {}
    wanted = _sent_fingerprints(desired, plan) | _deferred_fingerprints(desired, plan, records)
    return reader.results_by_fingerprint(wanted) if wanted else {}


def _sent_fingerprints(desired: Desired, plan: Plan) -> set[str]:
    """The fingerprints `plan` sends for jobs that allow reuse."""
    reuse = {j.name for j in desired.jobs if j.reuse}
    out: set[str] = set()
    for job in plan.jobs:
        if job.name in reuse:
            submits = job.submits
            if isinstance(submits, SubmitItems):
                out.update(submits.fingerprints())
            else:
                out.update(a.fingerprint for a in submits)
    return out


def _deferred_fingerprints(desired: Desired, plan: Plan, records: Sequence[ItemRecord]) -> set[str]:
    """The new fingerprints of items changed while in flight (`JobPlan.deferred`), in jobs that
    allow reuse: a stored answer to one of them makes its resend free, and its ceiling is then
    not counted against the budget. Read only for the jobs that have any."""
    reuse = {j.name for j in desired.jobs if j.reuse}
    jobs = {j.name for j in plan.jobs if j.deferred and j.name in reuse}
    if not jobs:
        return set()
    old = {(r.job, r.key): r.fingerprint for r in records if r.job in jobs and r.inflight}
    return {
        item.fingerprint
        for job in desired.jobs
        if job.name in jobs
        for item in job.items
        if old.get((job.name, item.key), item.fingerprint) != item.fingerprint
    }


def budget_problems(plan: Plan, spent: Mapping[str, float] | None = None) -> list[str]:
    """One line per job whose estimate exceeds its budget_usd (the one place the rule lives),
    counting what earlier cycles of the same apply sent for it (`spent`, by job: their ceilings)."""
    spent = spent or {}
    problems = []
    for j in plan.jobs:
        before = spent.get(j.name, 0.0)
        if j.budget_usd is None or j.estimated_cost_usd + j.deferred_usd + before <= j.budget_usd:
            continue
        deferred = (
            f", with {money(j.deferred_usd)} for {j.deferred} item{'s' * (j.deferred != 1)} "
            "changed while in flight (sent once their batch ends),"
            if j.deferred
            else ""
        )
        earlier = f", with this apply's earlier cycles' {money(before)}," if before else ""
        problems.append(
            f"job {j.name}: estimated cost up to {money(j.estimated_cost_usd)}{deferred}{earlier} "
            f"exceeds its budget_usd {money(j.budget_usd)}"
        )
    return problems


def check_budget(plan: Plan, spent: Mapping[str, float] | None = None) -> None:
    problems = budget_problems(plan, spent)
    if problems:
        raise BudgetExceeded(*problems)


def _in_flight_outside(
    reader: StateReader, desired: Desired, plan: Plan, inflight: dict[str, set[str]]
) -> list[ItemRecord]:
    """In-flight items of jobs outside a `--job` scope whose very requests `plan` would send
    (for jobs that allow reuse): waited for, not paid for twice."""
    if desired.all_jobs_in_scope:
        return []
    scope = {j.name for j in desired.jobs}
    jobs = sorted({m.partition("\x1f")[0] for ms in inflight.values() for m in ms} - scope)
    if not jobs:
        return []
    wanted = _sent_fingerprints(desired, plan)
    if not wanted:
        return []
    return [r for r in reader.item_records(jobs) if r.inflight and r.fingerprint in wanted]
