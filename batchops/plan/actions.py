"""The plan as data: small frozen actions, each carrying what it needs to run and to be explained.

`plan` renders a `Plan`; `apply` hands the very same object to the evaluator, which dispatches on
each step's type. A saved plan is this object serialized (`saved`). Steps run in the order of
`Plan.steps`: move, resolve intents, harvest, requeue, reuse, submit, forget, cancel, prune.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from batchops.pricing import ItemEstimate, batch_cost

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
    items: tuple[SubmitItem, ...]
    request_bytes: int
    kind: str = "submit"

    @property
    def cost_usd(self) -> float:
        """The ceiling (what budgets gate on), with cached prefixes shared in this batch."""
        return self.costs()[1]

    def costs(self) -> tuple[float, float]:
        """(expected, ceiling) of this batch: items sharing a cached prefix write it once."""
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
    actions: tuple[SubmitItem | ReuseItem | ForgetItem, ...]
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

    @property
    def submits(self) -> list[SubmitItem]:
        return [a for a in self.actions if isinstance(a, SubmitItem)]

    @property
    def reuses(self) -> list[ReuseItem]:
        return [a for a in self.actions if isinstance(a, ReuseItem)]

    @property
    def expected_usd(self) -> float:
        if self.expected_cost_usd is None:
            return self.estimated_cost_usd
        return self.expected_cost_usd

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
    steps: tuple[Step, ...]
    format_version: int = FORMAT_VERSION
    notes: tuple[str, ...] = field(default_factory=tuple)  # drift seen by the refresh
    offline_note: str | None = None  # set when batches in flight were not polled
    job_names: tuple[str, ...] | None = None  # the --job selection; None: every job

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
            for action in job.actions:
                counts[action.action] += 1
        for step in self.batches:
            counts[step.kind] += 1
        return counts

    def job(self, name: str) -> JobPlan | None:
        return next((j for j in self.jobs if j.name == name), None)

    def over_budget(self) -> list[JobPlan]:
        return [j for j in self.jobs if j.over_budget]
