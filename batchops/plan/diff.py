"""The diff: desired items and recorded state in, an immutable plan out.

`make_plan` is a pure function (no I/O, no clock: `now` is passed in), so every rule of DESIGN §5
is testable without a network. It returns every step the cycle will take, submits already split
into batches by count and bytes, so the budget check, the rendering and a saved plan all see
exactly what apply will do.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from itertools import accumulate, chain, islice
from operator import itemgetter

import orjson

from batchops.lazyclass import dataclass
from batchops.plan.actions import (
    ITEM_STATES,
    Cancel,
    FailedItem,
    Forget,
    ForgetItem,
    Harvest,
    JobActions,
    JobPlan,
    Plan,
    Prune,
    Requeue,
    ResolveIntent,
    Reuse,
    ReuseItem,
    Step,
    SubmitBatch,
    SubmitItem,
    SubmitItems,
    item_profiles,
)
from batchops.pricing import ItemEstimate
from batchops.spec.desired import DesiredItem, DesiredJob
from batchops.spec.items import ENVELOPE_BYTES  # noqa: F401 (as the splitter counts it)
from batchops.state.records import BatchRecord, IntentRecord, ItemRecord

RETRYABLE_ERRORS = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})
SENDING_STATES = ("todo", "changed", "retry")  # the item states a plan sends (unless they wait)
DEFAULT_PRUNE_MARGIN = timedelta(days=2)


@dataclass(frozen=True)
class BatchLimits:
    """DESIGN §6.9: the API's limits per batch (configurable lower)."""

    max_requests: int = 100_000
    max_bytes: int = 250_000_000


def classify(
    desired: DesiredItem,
    record: ItemRecord | None,
    max_attempts: int,
    lost: Collection[str] = (),
) -> tuple[str, str | None]:
    """The DESIGN §5 state of one desired item, with the reason or error message. An item in
    flight in a batch whose results are lost (`lost`: `lost_batches`) is sent again (requeued)."""
    if record is None or record.fingerprint is None:
        return "todo", None
    if record.inflight:
        if record.inflight_batch in lost:
            if record.fingerprint != desired.fingerprint:
                return "changed", None
            return "todo", "results lost before harvest"
        if record.fingerprint != desired.fingerprint:
            return "pending", "changed while in flight: sent again once its batch ends"
        return "pending", None
    if record.fingerprint != desired.fingerprint:
        return "changed", None
    outcome = record.outcome
    if outcome == "succeeded":
        return "succeeded", None
    if outcome == "lost" or outcome is None:
        return "todo", "results lost before harvest" if outcome == "lost" else None
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


def lost_batches(batches: Iterable[BatchRecord]) -> dict[str, str]:
    """batch id → drift, for batches whose results can no longer be read and were not harvested.

    Only the server says so (a confirmed deletion, `archived_at`, or results that answered 404 at
    the end of retention), never the local clock: `results_expire_at` is the server's created_at
    plus 29 days read against a clock that may run ahead of it, and results judged lost on that
    alone are paid for twice, while the server still serves them."""
    out = {}
    for b in batches:
        if b.pruned_at is not None or b.harvested_at is not None or b.drift == "not-ours":
            continue
        if b.drift == "deleted":
            out[b.id] = "deleted"
        elif b.drift == "results-lost" or b.archived_at is not None:
            out[b.id] = "results-lost"
    return out


def requests_in_flight(
    records: Iterable[ItemRecord], lost: Collection[str]
) -> dict[str, tuple[str, str]]:
    """fingerprint → (job, key) of an item in flight with that very request, leaving out the
    batches whose results are lost (`lost`: their items are sent again): the answers on their
    way that other items may wait for (`waits`). Of several items in flight with one request,
    the first by job and key, whatever order the records come in."""
    sending: dict[str, tuple[str, str]] = {}
    for record in records:
        if record.inflight and record.fingerprint and record.inflight_batch not in lost:
            source = (record.job, record.key)
            held = sending.get(record.fingerprint)
            if held is None or source < held:
                sending[record.fingerprint] = source
    return sending


def waits(
    job: str,
    item_state: str,
    source: tuple[str, str] | None,
    removed: Callable[[str], bool],
    *,
    reuse: bool = True,
    outside: bool = False,
) -> bool:
    """The fan-out rule: whether an item of `job` in `item_state` waits for the answer its very
    request is getting for `source` (job, key: an item in flight, `requests_in_flight`, or one
    this plan sends), to reuse it once harvested, instead of being sent (it is `pending` then).

    It waits when it would be sent (`SENDING_STATES`), its job allows reuse, and `source` is an
    item of another job (`outside`: of a job outside this run), or a key of its own job that is
    no longer in its specs (`removed(key)`: its rows re-keyed while in flight); keys of one job
    asking the same request are otherwise distinct items (several samples of one prompt, say),
    each sent.
    """
    if source is None or not reuse or item_state not in SENDING_STATES:
        return False
    return outside or source[0] != job or removed(source[1])


def waiting_for(source: tuple[str, str]) -> str:
    """Why an item waits for the answer `source` (job, key) is getting for its request (`waits`)."""
    return f"same request as {source[0]} {source[1]}: takes its result once harvested"


class _RemovedKeys:
    """`waits`' `removed` for a job in a plan: whether a key of the job is in flight in state and
    no longer in its specs (the job's keys gathered once, when first asked)."""

    __slots__ = ("job", "keys", "records")

    def __init__(self, job: DesiredJob, records: Mapping[str, ItemRecord]):
        self.job = job
        self.records = records
        self.keys: set[str] | None = None

    def __call__(self, key: str) -> bool:
        record = self.records.get(key)
        if record is None or not record.inflight:  # an item this plan sends: in its specs
            return False
        if self.keys is None:
            self.keys = {i.key for i in self.job.items}
        return key not in self.keys


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
    write_id: str | None = None,
    inflight_batches: dict[str, set[str]] | None = None,
    all_jobs_in_scope: bool = True,
    prune_margin: timedelta = DEFAULT_PRUNE_MARGIN,
    limits: BatchLimits = BatchLimits(),  # noqa: B008 (frozen)
    reusable: Mapping[str, int] | None = None,
    replace: Collection[tuple[str, str]] = frozenset(),
    outside: Iterable[ItemRecord] = (),
) -> Plan:
    """Diff the desired jobs against recorded state.

    `records` are the items in state for the jobs in scope (every job in state when
    `all_jobs_in_scope`); `inflight_batches` maps a batch id to the `job\\x1fkey` of the items in
    flight in it, for the cancel and requeue rules. `replace` names (job, key) of items sent
    again on purpose (reason `replace`), even when they succeeded or failed. `reusable` maps a fingerprint to a stored
    succeeded result of that very request (any job, any key): an item that would be sent with
    that fingerprint reuses it instead, unless its job opts out. An item whose request is being
    sent for another item (in this plan, or in a batch in flight) waits for that result instead
    of being sent twice (a fan-out: it reuses it once harvested). `outside` are in-flight items
    of jobs outside the scope whose requests the scope would send: they are waited for too.
    """
    desired_jobs = list(desired_jobs)
    batches = list(batches)
    inflight_batches = inflight_batches or {}
    reusable = reusable or {}
    by_job: dict[str, dict[str, ItemRecord]] = {}
    for record in records:
        by_job.setdefault(record.job, {})[record.key] = record
    scope = {j.name for j in desired_jobs}
    drifts = {b.id: b.drift for b in batches}
    # a lost batch is requeued while it still carries items, or until its drift is recorded
    lost = {
        batch_id: drift
        for batch_id, drift in lost_batches(batches).items()
        if inflight_batches.get(batch_id) or drifts[batch_id] != drift
    }
    obsolete: set[str] = set()  # job\x1fkey of in-flight items nobody wants any more
    # fingerprint → (job, key) of an item sending it: in flight, then as this plan sends them
    sending = requests_in_flight(chain.from_iterable(r.values() for r in by_job.values()), lost)
    elsewhere: set[str] = set()  # fingerprints in flight only for jobs outside the scope
    awaited: set[str] = set()  # batches in flight whose answers items of the plan wait for
    for record in outside:
        if record.inflight and record.fingerprint and record.fingerprint not in sending:
            sending[record.fingerprint] = (record.job, record.key)
            elsewhere.add(record.fingerprint)

    job_plans: list[JobPlan] = []
    submit_steps: list[SubmitBatch] = []
    reuse_steps: list[Reuse] = []
    forget_steps: list[Forget] = []
    last = len(desired_jobs) - 1
    for n, job in enumerate(desired_jobs):
        state_items = by_job.get(job.name, {})
        counts = dict.fromkeys(ITEM_STATES, 0)
        # Per item sent, only its index among the job's items and its (reason, attempt) are
        # kept (SubmitItems); the other actions are few, kept with their positions.
        others: list[ReuseItem | ForgetItem] = []
        where = array("Q")  # the position of each of `others` among all the job's actions
        sent = array("Q")  # index in job.items of each item sent
        tags = array("I")  # its (reason, attempt) in `kinds`
        kinds: dict[tuple[str, int], int] = {}
        failed: list[FailedItem] = []
        reused: list[ReuseItem] = []
        reuse_actions: list[ReuseItem] = []
        matched: set[str] = set()  # keys in state that some item wants (the others are removed)
        waiting_outside = 0
        deferred, deferred_usd = 0, 0.0  # items changed while in flight, and their ceiling
        remembered: list[str] = []
        removed = _RemovedKeys(job, state_items)  # keys in flight no longer in the job's specs
        # Only a later job reads what this one sends (to wait for its answer): the last job's
        # million fingerprints need not be held.
        shares = n != last
        if not state_items and not (job.reuse and (reusable or sending or elsewhere)):
            # Nothing recorded and nothing to reuse (the first plan of a new job, at a million
            # items): every item is sent, as a todo, first attempt.
            submits = SubmitItems(job.name, job.items, range(len(job.items)), [("todo", 1)])
            counts["todo"] = len(submits)
            if shares:
                for item in job.items:
                    sending.setdefault(item.fingerprint, (job.name, item.key))
        else:
            for index, item in enumerate(job.items):
                record = state_items.get(item.key) if state_items else None
                if record is not None:
                    matched.add(item.key)
                    if record.forgotten:
                        remembered.append(item.key)
                if record is None:  # never sent: the common case at a million items
                    item_state, detail, reason, attempt = "todo", None, "todo", 1
                elif record.inflight and record.inflight_batch in lost:
                    # its batch's results are gone: it is sent again, as this plan's requeue says
                    item_state, detail = classify(item, record, job.max_attempts, lost)
                    changed = item_state == "changed"
                    reason, attempt = ("changed", 1) if changed else ("requeue", record.attempts)
                else:
                    item_state, detail = classify(item, record, job.max_attempts)
                    reason = item_state
                    lost_before = record is not None and record.outcome == "lost"
                    if item_state == "retry" or (item_state == "todo" and lost_before):
                        attempt = record.attempts + 1 if record else 1
                    else:
                        attempt = 1
                    if item_state in ("succeeded", "failed") and (job.name, item.key) in replace:
                        item_state, reason, attempt = "todo", "replace", 1
                if (
                    item_state in SENDING_STATES
                    and job.reuse
                    and reason != "replace"
                    and (
                        item.fingerprint in reusable
                        or item.fingerprint in sending
                        or item.fingerprint in elsewhere
                    )
                ):
                    source = sending.get(item.fingerprint)
                    outside = item.fingerprint in elsewhere
                    if not waits(job.name, item_state, source, removed, outside=outside):
                        source = None
                    held = _held(source, by_job)
                    reuse = _reuse(job.name, item, reusable, source, outside)
                    if reuse is not None:
                        where.append(len(sent) + len(others))
                        others.append(reuse)
                        reuse_actions.append(reuse)
                        if reuse.result_id is not None:
                            reused.append(reuse)
                        else:  # its answer is on its way: it is pending like the item sending it
                            item_state = "pending"
                            waiting_outside += item.fingerprint in elsewhere
                            if held is not None and held.inflight_batch is not None:
                                awaited.add(held.inflight_batch)
                        counts[item_state] += 1
                        continue
                counts[item_state] += 1
                if item_state in ("todo", "changed", "retry"):
                    if shares:
                        sending.setdefault(item.fingerprint, (job.name, item.key))
                    sent.append(index)
                    tags.append(kinds.setdefault((reason, attempt), len(kinds)))
                elif item_state == "failed":
                    # its error as `results` gives it: the API's error type, else the outcome
                    # that failed it (expired, canceled, lost)
                    error = (record.error_type or record.outcome) if record else None
                    failed.append(FailedItem(item.key, error, detail or ""))
                elif item_state == "pending" and detail and record is not None:
                    # Changed while in flight: sent once its batch ends and is harvested, by a
                    # later cycle's plan (an answer that batch holds may answer it then, so it
                    # is not sent before). Its ceiling counts now, unless an answer stored or
                    # on its way for another item would answer it instead.
                    obsolete.add(f"{job.name}\x1f{item.key}")
                    deferred += 1
                    fp = item.fingerprint
                    if not (job.reuse and (fp in reusable or fp in sending or fp in elsewhere)):
                        deferred_usd += item.cost_usd
            one_kind = len(kinds) <= 1
            submits = SubmitItems(
                job.name, job.items, sent, list(kinds), None if one_kind else tags
            )
        forgotten: list[str] = []
        for key, record in state_items.items():
            if key not in matched and not record.forgotten:
                counts["removed"] += 1
                if record.inflight:  # forgotten once its batch is harvested, by a later plan
                    obsolete.add(f"{job.name}\x1f{key}")
                    continue
                where.append(len(submits) + len(others))
                others.append(ForgetItem(job.name, key, "no longer in any spec"))
                forgotten.append(key)
        job_batches = split(job.name, job.betas, submits, limits)
        expected, high = job_costs(job_batches)
        job_plans.append(
            JobPlan(
                job.name,
                counts,
                JobActions(submits, others, where) if len(submits) or others else (),
                tuple(failed),
                round(high, 6),
                job.budget_usd,
                job.cost_note,
                round(expected, 6),
                round(sum(a.saved_usd for a in reuse_actions), 6),
                round(cache_saving(job_batches, expected), 6),
                job.output_basis,
                waiting_outside,
                deferred,
                round(deferred_usd, 6),
            )
        )
        submit_steps.extend(job_batches)
        if reused:
            reuse_steps.append(Reuse(job.name, tuple(reused)))
        if forgotten or remembered:
            forget_steps.append(Forget(job.name, tuple(forgotten), tuple(remembered)))

    if all_jobs_in_scope:
        for name in sorted(set(by_job) - scope):
            left = [key for key, r in by_job[name].items() if not r.forgotten]
            if not left:
                continue
            counts = dict.fromkeys(ITEM_STATES, 0)
            counts["removed"] = len(left)
            obsolete.update(f"{name}\x1f{key}" for key, r in by_job[name].items() if r.inflight)
            # the items in flight are forgotten once their batch is harvested, by a later plan
            idle = tuple(key for key in left if not by_job[name][key].inflight)
            forget = tuple(ForgetItem(name, key, "job no longer in any spec") for key in idle)
            job_plans.append(JobPlan(name, counts, forget, (), 0.0, None))
            if idle:
                forget_steps.append(Forget(name, idle))
            scope.add(name)

    steps: list[Step] = list(_intent_steps(intents, scope))
    steps += _batch_steps(
        [b for b in batches if b.job in scope],
        inflight_batches,
        lost,
        obsolete,
        awaited,
        now,
        prune_margin,
    )
    steps += reuse_steps
    steps += submit_steps
    steps += forget_steps
    steps.sort(key=_step_rank)
    return Plan(
        now,
        lineage,
        serial,
        spec_digest,
        tuple(job_plans),
        tuple(steps),
        job_names=None if all_jobs_in_scope else tuple(j.name for j in desired_jobs),
        write_id=write_id,
    )


_RANK = {
    "adopt": 0,
    "harvest": 1,
    "requeue": 2,
    "reuse": 3,
    "submit": 4,
    "forget": 5,
    "cancel": 6,
    "prune": 7,
}


def _held(source: tuple[str, str] | None, by_job: dict[str, dict[str, ItemRecord]]):
    """The in-flight record of the item `source` names (job, key), if it is one (it may be an
    item this plan sends, or an in-flight item of a job outside the scope)."""
    if source is None:
        return None
    record = by_job.get(source[0], {}).get(source[1])
    return record if record is not None and record.inflight else None


def _reuse(
    job: str,
    item: DesiredItem,
    reusable: Mapping[str, int],
    source: tuple[str, str] | None,
    outside: bool = False,
) -> ReuseItem | None:
    """The reuse of a stored (or coming) answer to this item's very request, if there is one.

    A stored answer is reused from any job or key. An answer still coming is waited for when
    `source` (job, key) is getting it and the item waits for it (`waits`; None: it does not);
    `outside`: for a job outside this run.
    """
    saved = item.estimate.expected if item.estimate is not None else item.cost_usd
    result_id = reusable.get(item.fingerprint)
    if result_id is not None:
        return ReuseItem(
            job, item.key, item.custom_id, item.fingerprint, result_id,
            "same request answered before", saved,
        )  # fmt: skip
    if source is not None and outside:
        return ReuseItem(
            job, item.key, item.custom_id, item.fingerprint, None,
            f"same request as {source[0]} {source[1]}, in flight for a job outside this run: "
            f"takes its result once an apply of {source[0]} harvests it", saved,
        )  # fmt: skip
    if source is not None:
        return ReuseItem(
            job, item.key, item.custom_id, item.fingerprint, None, waiting_for(source), saved
        )
    return None


def cache_saving(batches: Iterable[SubmitBatch], expected: float) -> float:
    """What `cache = "auto"` marks save on these batches: their expected cost without the marks,
    less `expected`, their cost with them (0 when nothing is marked)."""
    batches = list(batches)
    if not any(e is not None and e.auto for b in batches for e in _estimates(b.items)):
        return 0.0
    plain = 0.0
    marked = False
    for batch in batches:
        for cost, _, e in item_profiles(batch.items):
            if e is not None and e.auto and e.plain_expected is not None:
                plain += e.plain_expected
                marked = True
            else:
                plain += e.expected if e is not None else cost
    return max(plain - expected, 0.0) if marked else 0.0


def job_costs(batches: Iterable[SubmitBatch]) -> tuple[float, float]:
    """(expected, ceiling) of a job's submit batches."""
    expected = high = 0.0
    for batch in batches:
        e, h = batch.costs()
        expected += e
        high += h
    return expected, high


def _step_rank(step: Step) -> int:
    return _RANK[step.kind]


def split(
    job: str, betas: tuple[str, ...], submits: Sequence[SubmitItem], limits: BatchLimits
) -> list[SubmitBatch]:
    """The one splitter: items into batches within the count and byte limits, packed for cache
    hits. Items sharing a cached prefix are made adjacent (the group where its first item was)
    and kept in one batch: a group that would straddle a limit starts a new batch, unless it is
    larger than a batch itself. Other items keep their order. A batch of a `SubmitItems` is a
    view of it; of other items, a tuple."""
    if any(e is not None and e.prefix is not None for e in _estimates(submits)):
        return _split_groups(job, betas, submits, limits)
    part = submits.__getitem__ if isinstance(submits, SubmitItems) else _part_of(submits)
    sizes = map(itemgetter(1), item_profiles(submits))
    try:  # running sums of whole sizes, a batch's worth at a time
        return _split_sums(job, betas, part, sizes, len(submits), limits)
    except (TypeError, OverflowError):  # a size not whole: added one by one below
        pass
    out: list[SubmitBatch] = []
    start = 0
    size = ENVELOPE_BYTES
    for n, (_, item_size, _) in enumerate(item_profiles(submits)):
        if n > start and (n - start >= limits.max_requests or size + item_size > limits.max_bytes):
            out.append(SubmitBatch(job, betas, part(slice(start, n)), size))
            start, size = n, ENVELOPE_BYTES
        size += item_size
    if len(submits) > start:
        out.append(SubmitBatch(job, betas, part(slice(start, len(submits))), size))
    return out


def _split_sums(
    job: str, betas: tuple[str, ...], part, sizes: Iterator[int], count: int, limits: BatchLimits
) -> list[SubmitBatch]:
    """`split`'s batches of `count` items of whole sizes, each cut found in the running sums
    of the sizes (`sums[k]`: of the items before k; a batch ends before the item that would
    take it past a limit), not item by item. The sums are read only a batch's worth ahead and
    dropped once two batches' worth are behind: 8 bytes an item of max_requests, not of every
    item. TypeError or OverflowError when a size is not a whole number (of 64 bits)."""
    out: list[SubmitBatch] = []
    sums = array("q", [0])  # sums[k - origin]: the sizes of the items before k
    origin = start = 0
    while start < count:
        have = origin + len(sums) - 1  # items summed so far
        want = min(start + limits.max_requests, count)
        if want > have:
            sums.extend(islice(accumulate(islice(sizes, want - have), initial=sums[-1]), 1, None))
        at = start - origin
        # the first item after the batch's first that takes it past max_bytes, if any
        over = bisect_right(sums, limits.max_bytes - ENVELOPE_BYTES + sums[at], at + 2) - 1
        end = max(start + 1, min(over + origin, want))
        out.append(SubmitBatch(job, betas, part(slice(start, end)),
                               ENVELOPE_BYTES + sums[end - origin] - sums[at]))  # fmt: skip
        start = end
        if start - origin > limits.max_requests:
            del sums[: start - origin]
            origin = start
    return out


def _estimates(items: Sequence[SubmitItem]) -> Iterable[ItemEstimate | None]:
    """The estimates of these items, or of a superset of them (each distinct one, for a view)."""
    if isinstance(items, SubmitItems):
        return items.estimates()
    return (i.estimate for i in items)


def _part_of(items: Sequence[SubmitItem]):
    def part(where: slice | list[int]) -> tuple[SubmitItem, ...]:
        if isinstance(where, slice):
            return tuple(items[where])
        return tuple(items[i] for i in where)

    return part


def _split_groups(
    job: str, betas: tuple[str, ...], submits: Sequence[SubmitItem], limits: BatchLimits
) -> list[SubmitBatch]:
    """`split` of items some of which share cached prefixes (by position in `submits`)."""
    take = submits.take if isinstance(submits, SubmitItems) else _part_of(submits)
    sizes: list[int] = []
    prefixes: list[str | None] = []
    for _, item_size, e in item_profiles(submits):
        sizes.append(item_size)
        prefixes.append(e.prefix if e is not None else None)
    out: list[SubmitBatch] = []
    chunk: list[int] = []
    size = ENVELOPE_BYTES
    for group in _cache_groups(prefixes):
        if chunk and len(group) > 1:
            count = len(chunk) + len(group)
            nbytes = size + sum(sizes[i] for i in group)
            fits_alone = len(group) <= limits.max_requests and (
                ENVELOPE_BYTES + nbytes - size <= limits.max_bytes
            )
            if (count > limits.max_requests or nbytes > limits.max_bytes) and fits_alone:
                out.append(SubmitBatch(job, betas, take(chunk), size))
                chunk, size = [], ENVELOPE_BYTES
        for i in group:
            if chunk and (len(chunk) >= limits.max_requests or size + sizes[i] > limits.max_bytes):
                out.append(SubmitBatch(job, betas, take(chunk), size))
                chunk, size = [], ENVELOPE_BYTES
            chunk.append(i)
            size += sizes[i]
    if chunk:
        out.append(SubmitBatch(job, betas, take(chunk), size))
    return out


def _cache_groups(prefixes: list[str | None]) -> list[list[int]]:
    """Positions in order, those sharing a cached prefix gathered where the first of them stands."""
    groups: list[list[int]] = []
    by_prefix: dict[str, list[int]] = {}
    for n, prefix in enumerate(prefixes):
        if prefix is None:
            groups.append([n])
        elif prefix in by_prefix:
            by_prefix[prefix].append(n)
        else:
            by_prefix[prefix] = [n]
            groups.append(by_prefix[prefix])
    return groups


def _intent_steps(intents: Iterable[IntentRecord], scope: set[str]) -> list[ResolveIntent]:
    return [
        ResolveIntent(
            intent.id,
            intent.job,
            intent.request_count,
            "create outcome unknown: find the batch remotely, or send again",
        )
        for intent in intents
        if intent.job in scope and intent.status == "open"
    ]


def _batch_steps(
    batches: list[BatchRecord],
    inflight_batches: dict[str, set[str]],
    lost: dict[str, str],
    obsolete: set[str],
    awaited: set[str],
    now: datetime,
    margin: timedelta,
) -> list[Step]:
    """The batch steps; a batch whose items are all obsolete is cancelled, unless an item of
    the plan waits for its answers (`awaited`: the same request, for another job or key)."""
    out: list[Step] = []
    for b in batches:
        if b.id in lost:
            why = (
                "deleted outside batchops before harvest"
                if lost[b.id] == "deleted"
                else "results expired before harvest"
            )
            members = len(inflight_batches.get(b.id, ()))
            out.append(Requeue(b.id, b.job, f"{why}: items sent again", members, lost[b.id]))
            continue
        if b.finished:
            continue
        expires = b.results_expire_at
        near_expiry = b.expiring(now, margin)
        if b.processing_status == "ended":
            if b.harvested_at is None:
                out.append(Harvest(b.id, b.job, "ended"))
            # the evaluator deletes it only once harvested: an adopted batch is proven ours then.
            # A batch holding requests the state has no attempt of (recovered in part: they
            # answer older versions of items) is left to expire: its results are not all stored.
            if near_expiry and _requests_in(b) <= b.request_count:
                why = f"results expire {_when(expires, now)}: delete remotely"
                out.append(Prune(b.id, b.job, why))
            continue
        members = inflight_batches.get(b.id, set())
        # in_progress, not canceling: a cancel marked ours but never sent (a crash) is sent again.
        # An adopted batch is not proven ours until its results are read: never cancelled.
        if (
            b.processing_status == "in_progress"
            and not b.adopted
            and members
            and members <= obsolete
            and b.id not in awaited
        ):
            out.append(Cancel(b.id, b.job, "every item in it is obsolete"))
    return out


def _requests_in(batch: BatchRecord) -> int:
    """The requests the API counts in a batch (its `request_counts` as last seen), or the
    state's own count when it has not seen them."""
    if not batch.request_counts:
        return batch.request_count
    return sum(orjson.loads(batch.request_counts).values())


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    delta = moment - now
    if delta.total_seconds() <= 0:
        return "now"
    hours = delta.total_seconds() / 3600
    return f"in {hours:.0f} h" if hours < 48 else f"in {hours / 24:.1f} days"
