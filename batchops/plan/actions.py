"""The plan as data: small frozen actions, each carrying what it needs to run and to be explained.

`plan` renders a `Plan`; `apply` hands the very same object to the evaluator, which dispatches on
each step's type. A saved plan is this object serialized (`saved`). Steps run in the order of
`Plan.steps`: move, resolve intents, harvest, requeue, reuse, submit, forget, cancel, prune.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import field
from datetime import datetime
from itertools import islice
from operator import itemgetter
from typing import Any, NamedTuple

from batchops.lazyclass import dataclass
from batchops.pricing import ItemEstimate, batch_cost
from batchops.spec.desired import DesiredItem, ItemTable, SequenceView
from batchops.state.records import BatchRecord

FORMAT_VERSION = 2
ITEM_STATES = ("todo", "changed", "pending", "retry", "failed", "succeeded", "removed")
# Counted in the summary, in this order.
ACTIONS = ("submit", "reuse", "forget", "harvest", "cancel", "prune", "adopt", "requeue", "move")


class SubmitItem(NamedTuple):
    """Send one item (a tuple: a million of them are made for a large job)."""

    job: str
    key: str
    custom_id: str
    fingerprint: str
    reason: str  # todo | changed | retry | requeue
    attempt: int  # the attempt number this submission will be, for this fingerprint
    cost_usd: float
    size: int = 0  # bytes of its request line in the create body
    action: str = "submit"
    estimate: ItemEstimate | None = None  # expected cost and cached prefix, for batch_cost


class ReuseItem(NamedTuple):
    """Answer one item with a stored succeeded result of the very same request (same
    fingerprint), from any job or key: nothing is sent or paid for. `result_id` None: the same
    request is being sent for another item (in this plan or a batch in flight), and this item takes
    its result once it is harvested (a fan-out)."""

    job: str
    key: str
    custom_id: str
    fingerprint: str
    result_id: int | None
    reason: str
    saved_usd: float  # the expected cost of sending it
    action: str = "reuse"


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


# -- the item actions of a large job, held without an object per item


class SubmitItems(SequenceView):
    """The items a job sends, as a `Sequence[SubmitItem]` drawn from its desired items: per item
    sent only its index there and its (reason, attempt) are held, not a SubmitItem (a large job
    sends a million). Slicing gives a view too: a submit batch holds its part this way."""

    __slots__ = ("job", "desired", "index", "kinds", "tags", "_costs")

    def __init__(
        self,
        job: str,
        desired: Sequence[DesiredItem],
        index: Sequence[int],
        kinds: Sequence[tuple[str, int]],
        tags: Sequence[int] | None = None,
    ):
        self.job = job
        self.desired = desired
        self.index = index  # positions in `desired` (a range, or an array)
        self.kinds = tuple(kinds)  # the distinct (reason, attempt) of these items
        self.tags = tags  # each item's kind (None: all are kinds[0])
        self._costs: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def _kind(self, n: int) -> tuple[str, int]:
        return self.kinds[self.tags[n] if self.tags is not None else 0]

    def _item(self, d: DesiredItem, kind: tuple[str, int]) -> SubmitItem:
        return SubmitItem(
            self.job, d.key, d.custom_id, d.fingerprint, kind[0], kind[1], d.cost_usd, d.size,
            estimate=d.estimate,
        )  # fmt: skip

    def __getitem__(self, n: Any) -> Any:
        if isinstance(n, slice):
            tags = self.tags[n] if self.tags is not None else None
            return SubmitItems(self.job, self.desired, self.index[n], self.kinds, tags)
        if n < 0:
            n += len(self)
        if not 0 <= n < len(self):
            raise IndexError("submit index out of range")
        return self._item(self.desired[self.index[n]], self._kind(n))

    def take(self, positions: Sequence[int]) -> SubmitItems:
        """These items at `positions`, in that order."""
        tags = None if self.tags is None else array("I", (self.tags[p] for p in positions))
        index = array("Q", (self.index[p] for p in positions))
        return SubmitItems(self.job, self.desired, index, self.kinds, tags)

    def desired_items(self) -> Iterator[DesiredItem]:
        """The desired item of each, in order (read a block at a time from an ItemTable)."""
        index, desired = self.index, self.desired
        if isinstance(desired, ItemTable) and len(index):
            if isinstance(index, range) and index.step == 1:
                yield from desired.iter_range(index.start, index.stop)
                return
            if all(a < b for a, b in zip(index, index[1:], strict=False)):
                wanted = iter(index)
                want = next(wanted)
                for n, d in enumerate(desired.iter_range(index[0], index[-1] + 1), index[0]):
                    if n == want:
                        yield d
                        want = next(wanted, -1)
                return
        for i in index:
            yield desired[i]

    def __iter__(self) -> Iterator[SubmitItem]:
        kinds, tags, make = self.kinds, self.tags, self._item
        if tags is None:
            kind = kinds[0] if kinds else ("", 0)
            for d in self.desired_items():
                yield make(d, kind)
        else:
            for d, tag in zip(self.desired_items(), tags, strict=True):
                yield make(d, kinds[tag])

    def ids(self) -> Iterator[tuple[str, str, str, int]]:
        """(key, custom_id, reason, attempt) of each item, in order: what a listing of the plan
        shows of it, without making the items."""
        desired, index, kinds, tags = self.desired, self.index, self.kinds, self.tags
        if isinstance(desired, ItemTable) and isinstance(index, range) and index.step == 1:
            pairs: Iterable[tuple[str, str]] = desired.ids(index.start, index.stop)
        else:
            pairs = ((d.key, d.custom_id) for d in self.desired_items())
        if tags is None:
            reason, attempt = kinds[0] if kinds else ("", 0)
            return ((key, cid, reason, attempt) for key, cid in pairs)
        return ((key, cid, *kinds[tag]) for (key, cid), tag in zip(pairs, tags, strict=True))

    def id_lists(self) -> Iterator[tuple[list[str], list[str], Sequence[int] | None]]:
        """`ids` as columns, a few thousand items at a time: (keys, custom_ids, each one's
        index into `kinds`, or None when all are kinds[0])."""
        desired, index, tags = self.desired, self.index, self.tags
        if isinstance(desired, ItemTable) and isinstance(index, range) and index.step == 1:
            at = 0
            for keys, cids in desired.id_lists(index.start, index.stop):
                n = len(keys)
                yield keys, cids, None if tags is None else tags[at : at + n]
                at += n
            return
        items = self.desired_items()
        at = 0
        while group := list(islice(items, 4096)):
            keys = [d.key for d in group]
            cids = [d.custom_id for d in group]
            yield keys, cids, None if tags is None else tags[at : at + len(group)]
            at += len(group)

    def fingerprints(self) -> Iterator[str]:
        desired = self.desired
        if isinstance(desired, ItemTable):
            return map(desired.fingerprint, self.index)
        return (d.fingerprint for d in self.desired_items())

    def profiles(self) -> Iterator[tuple[float, int, ItemEstimate | None]]:
        """(cost_usd, size, estimate) of each item, in order, without making the items."""
        desired, index = self.desired, self.index
        if isinstance(desired, ItemTable):
            profile_of = desired.profile_of
            if isinstance(index, range) and index.step == 1:
                return map(desired.profiles.__getitem__, profile_of[index.start : index.stop])
            return map(desired.profiles.__getitem__, map(profile_of.__getitem__, index))
        return ((d.cost_usd, d.size, d.estimate) for d in self.desired_items())

    def estimates(self) -> Iterable[ItemEstimate | None]:
        """Every distinct estimate these items may have (a superset: quick to ask)."""
        if isinstance(self.desired, ItemTable):
            return (e for _, _, e in self.desired.profiles)
        return (e for _, _, e in self.profiles())

    def costs(self) -> tuple[float, float]:
        """(expected, ceiling) of these items sent as one batch (see `batch_cost`)."""
        if self._costs is None:
            self._costs = batch_cost(
                map(itemgetter(2), self.profiles()), map(itemgetter(0), self.profiles())
            )
        return self._costs


class JobActions(SequenceView):
    """A job's item actions in plan order: its submits (a `SubmitItems`) with the few other
    actions (reuse, forget) at their positions among them."""

    __slots__ = ("submits", "others", "where")

    def __init__(
        self,
        submits: SubmitItems,
        others: Sequence[ReuseItem | ForgetItem] = (),
        where: Sequence[int] = (),
    ):
        self.submits = submits
        self.others = tuple(others)
        self.where = where  # the position of each of `others` in the whole, increasing

    def __len__(self) -> int:
        return len(self.submits) + len(self.others)

    def __getitem__(self, n: Any) -> Any:
        if isinstance(n, slice):
            return [self[i] for i in range(*n.indices(len(self)))]
        if n < 0:
            n += len(self)
        if not 0 <= n < len(self):
            raise IndexError("action index out of range")
        k = bisect_left(self.where, n)
        if k < len(self.where) and self.where[k] == n:
            return self.others[k]
        return self.submits[n - k]

    def __iter__(self) -> Iterator[SubmitItem | ReuseItem | ForgetItem]:
        submits = iter(self.submits)
        n = 0
        for position, other in zip(self.where, self.others, strict=True):
            while n < position:
                yield next(submits)
                n += 1
            yield other
            n += 1
        yield from submits

    def counts(self) -> dict[str, int]:
        out = {"submit": len(self.submits)} if len(self.submits) else {}
        for other in self.others:
            out[other.action] = out.get(other.action, 0) + 1
        return out


def action_counts(actions: Iterable[SubmitItem | ReuseItem | ForgetItem]) -> dict[str, int]:
    """How many actions of each kind (without making each action of a JobActions)."""
    if isinstance(actions, JobActions):
        return actions.counts()
    out: dict[str, int] = {}
    for action in actions:
        out[action.action] = out.get(action.action, 0) + 1
    return out


def item_profiles(items: Iterable[SubmitItem]) -> Iterator[tuple[float, int, ItemEstimate | None]]:
    """(cost_usd, size, estimate) of submit items, without making each item of a SubmitItems."""
    if isinstance(items, SubmitItems):
        return items.profiles()
    return ((i.cost_usd, i.size, i.estimate) for i in items)


# -- steps: what the evaluator runs, one transaction (or remote call and transaction) each


class _Step:
    kind: str

    @property
    def action(self) -> str:
        """The action's name as the plan's JSON shape and its text show it."""
        return self.kind


@dataclass(frozen=True)
class ResolveIntent(_Step):
    """A create whose response never came: find its batch remotely (proven ours) or send again."""

    intent_id: str
    job: str
    request_count: int
    reason: str
    kind: str = "adopt"
    batch_id: str | None = None


@dataclass(frozen=True)
class Harvest(_Step):
    batch_id: str
    job: str
    reason: str
    kind: str = "harvest"


@dataclass(frozen=True)
class Requeue(_Step):
    """A batch whose results can no longer be read: its items are given back (and resubmitted
    by this plan's SubmitBatch steps, which list them with reason `requeue`)."""

    batch_id: str
    job: str
    reason: str
    items: int
    drift: str  # deleted | results-lost
    kind: str = "requeue"


@dataclass(frozen=True)
class Move(_Step):
    """A spec's `moved` entry: job `from_job`'s rows in state become `job`'s, before anything
    else runs, so the renamed job keeps its results (nothing it has is sent again)."""

    from_job: str
    job: str
    reason: str
    kind: str = "move"


@dataclass(frozen=True)
class Reuse(_Step):
    """Record items of one job as answered by stored results of the same requests."""

    job: str
    items: tuple[ReuseItem, ...]
    kind: str = "reuse"

    @property
    def saved_usd(self) -> float:
        return sum(i.saved_usd for i in self.items)


@dataclass(frozen=True)
class SubmitBatch(_Step):
    """One new remote batch: these items, split already by count and bytes."""

    job: str
    betas: tuple[str, ...]
    items: Sequence[SubmitItem]  # a SubmitItems view when made by the diff
    request_bytes: int
    kind: str = "submit"

    @property
    def cost_usd(self) -> float:
        """The ceiling (what budgets gate on), with cached prefixes shared in this batch."""
        return self.costs()[1]

    def costs(self) -> tuple[float, float]:
        """(expected, ceiling) of this batch: items sharing a cached prefix write it once."""
        if isinstance(self.items, SubmitItems):
            return self.items.costs()
        return batch_cost((i.estimate for i in self.items), (i.cost_usd for i in self.items))


@dataclass(frozen=True)
class Forget(_Step):
    """Items no longer in any spec (their rows stay, so re-adding one sends nothing), and items
    back in a spec after being forgotten."""

    job: str
    keys: tuple[str, ...]
    remembered: tuple[str, ...] = ()
    kind: str = "forget"


@dataclass(frozen=True)
class Cancel(_Step):
    batch_id: str
    job: str
    reason: str
    kind: str = "cancel"


@dataclass(frozen=True)
class Prune(_Step):
    """Delete a batch remotely before its results expire (after it was harvested)."""

    batch_id: str
    job: str
    reason: str
    kind: str = "prune"


Step = Move | ResolveIntent | Harvest | Requeue | Reuse | SubmitBatch | Forget | Cancel | Prune
BatchStep = Move | ResolveIntent | Harvest | Requeue | Cancel | Prune
STEP_ORDER = (Move, ResolveIntent, Harvest, Requeue, Reuse, SubmitBatch, Forget, Cancel, Prune)


@dataclass(frozen=True)
class JobPlan:
    name: str
    counts: dict[str, int]
    actions: Sequence[SubmitItem | ReuseItem | ForgetItem]  # a JobActions when made by the diff
    failed: tuple[FailedItem, ...]
    estimated_cost_usd: float  # the ceiling: what budget_usd gates on
    budget_usd: float | None
    cost_note: str | None = None
    expected_cost_usd: float | None = None  # the central estimate (None: the ceiling)
    saved_usd: float = 0.0  # expected cost of the items answered by reuse instead of sent
    cache_saving_usd: float = 0.0  # what `cache = "auto"` marks are expected to save
    output_basis: str | None = None  # where the central estimate's output per reply came from
    # pending items waiting for the same request in flight for a job outside this run's --job
    # (its own apply harvests it; this run cannot)
    waiting_outside: int = 0
    # pending items changed while in flight: sent once their batch ends, by a later cycle or
    # apply; their ceiling counts against budget_usd now, before anything (a cancel) is done
    deferred: int = 0
    deferred_usd: float = 0.0

    @property
    def submits(self) -> Sequence[SubmitItem]:
        if isinstance(self.actions, JobActions):
            return self.actions.submits
        return [a for a in self.actions if isinstance(a, SubmitItem)]

    @property
    def reuses(self) -> list[ReuseItem]:
        actions = self.actions.others if isinstance(self.actions, JobActions) else self.actions
        return [a for a in actions if isinstance(a, ReuseItem)]

    @property
    def expected_usd(self) -> float:
        if self.expected_cost_usd is None:
            return self.estimated_cost_usd
        return self.expected_cost_usd

    @property
    def removed_in_flight(self) -> int:
        """Removed items still in flight: forgotten once their batch is harvested (no action of
        this plan forgets them)."""
        return self.counts["removed"] - action_counts(self.actions).get("forget", 0)

    @property
    def over_budget(self) -> bool:
        return (
            self.budget_usd is not None
            and self.estimated_cost_usd + self.deferred_usd > self.budget_usd
        )


@dataclass(frozen=True)
class Plan:
    created_at: datetime
    lineage: str | None
    serial: int
    spec_digest: str
    jobs: tuple[JobPlan, ...]
    steps: tuple[Step, ...]
    format_version: int = FORMAT_VERSION
    notes: tuple[str, ...] = field(default_factory=tuple)  # drift seen by the refresh
    offline_note: str | None = None  # set when batches in flight were not polled
    job_names: tuple[str, ...] | None = None  # the --job selection; None: every job
    # the state's write id (`StateReader.write_id`): a saved plan applies only to that history
    write_id: str | None = None
    # the batches as the refresh saw them, where that differs from the state (`plan_from`'s
    # `remote`): kept in a saved plan, so that apply can make the very same plan again
    observed: tuple[BatchRecord, ...] = ()

    @property
    def batches(self) -> tuple[BatchStep, ...]:
        """The steps on existing batches and intents (everything but submit, reuse, forget)."""
        return tuple(s for s in self.steps if not isinstance(s, SubmitBatch | Reuse | Forget))

    @property
    def submits(self) -> tuple[SubmitBatch, ...]:
        return tuple(s for s in self.steps if isinstance(s, SubmitBatch))

    @property
    def changes(self) -> bool:
        return any(not isinstance(s, Forget) or s.keys for s in self.steps)

    @property
    def reuses(self) -> tuple[Reuse, ...]:
        return tuple(s for s in self.steps if isinstance(s, Reuse))

    @property
    def estimated_cost_usd(self) -> float:
        return sum(j.estimated_cost_usd for j in self.jobs)

    @property
    def expected_cost_usd(self) -> float:
        return sum(j.expected_usd for j in self.jobs)

    @property
    def saved_usd(self) -> float:
        return sum(j.saved_usd for j in self.jobs)

    @property
    def cache_saving_usd(self) -> float:
        return sum(j.cache_saving_usd for j in self.jobs)

    def summary(self) -> dict[str, int]:
        counts = dict.fromkeys(ACTIONS, 0)
        for job in self.jobs:
            for action, count in action_counts(job.actions).items():
                counts[action] += count
        for step in self.batches:
            counts[step.kind] += 1
        return counts

    def job(self, name: str) -> JobPlan | None:
        return next((j for j in self.jobs if j.name == name), None)

    def over_budget(self) -> list[JobPlan]:
        return [j for j in self.jobs if j.over_budget]
