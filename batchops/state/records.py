"""What the state records, as plain values: the types every backend returns and the planner reads.

Nothing here touches a database, so the pure planner can import these without the store.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from batchops.clock import parse_time
from batchops.lazyclass import dataclass

# Result types a harvested line may carry.
RESULT_TYPES = frozenset({"succeeded", "errored", "canceled", "expired"})


class ItemRecord(NamedTuple):
    """What the planner needs to know of an item in state."""

    job: str
    key: str
    custom_id: str
    fingerprint: str | None  # of the attempt in flight, else of the newest attempt
    attempts: int
    inflight: bool
    outcome: str | None
    error_type: str | None
    error_message: str | None
    canceled_by_us: bool
    forgotten: bool = False  # removed from the specs and forgotten; the row stays as memory
    inflight_batch: str | None = None  # the batch carrying the attempt in flight, once known


@dataclass(frozen=True)
class BatchRecord:
    id: str
    job: str
    request_count: int
    processing_status: str
    created_at: datetime | None
    expires_at: datetime | None
    ended_at: datetime | None
    archived_at: datetime | None
    results_expire_at: datetime | None
    harvested_at: datetime | None
    canceled_by_us_at: datetime | None
    pruned_at: datetime | None
    drift: str | None
    request_counts: str | None
    adopted: bool = False  # found after a lost create response rather than recorded from it

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> BatchRecord:
        return cls(
            id=row["id"],
            job=row["job"],
            request_count=row["request_count"] or 0,
            processing_status=row["processing_status"] or "in_progress",
            created_at=parse_time(row["created_at"]),
            expires_at=parse_time(row["expires_at"]),
            ended_at=parse_time(row["ended_at"]),
            archived_at=parse_time(row["archived_at"]),
            results_expire_at=parse_time(row["results_expire_at"]),
            harvested_at=parse_time(row["harvested_at"]),
            canceled_by_us_at=parse_time(row["canceled_by_us_at"]),
            pruned_at=parse_time(row["pruned_at"]),
            drift=row["drift"],
            request_counts=row["request_counts"],
            adopted=bool(row.get("adopted")),
        )

    @property
    def finished(self) -> bool:
        """Nothing more will happen to it remotely or locally."""
        return (
            self.pruned_at is not None
            or self.drift in ("deleted", "results-lost", "not-ours")
            or (self.harvested_at is not None and self.archived_at is not None)
        )

    def needs_refresh(self, now: datetime, prune_margin: timedelta) -> bool:
        """Whether a refresh should retrieve it: only while the remote can tell the plan
        something (each retrieve counts against the workspace's shared per-minute limit).

        Once harvested, nothing can change remotely but its deletion, and when its results
        expire is known (`results_expire_at`): it is polled again only once that is within
        `prune_margin`, where the plan prunes it (and should not, were it deleted meanwhile)."""
        if self.finished:
            return False
        if self.harvested_at is None or self.results_expire_at is None:
            return True
        return self.expiring(now, prune_margin)

    def expiring(self, now: datetime, margin: timedelta) -> bool:
        """Whether its results expire remotely within `margin` of `now` (where a plan prunes)."""
        expires = self.results_expire_at
        return expires is not None and expires - now <= margin

    @property
    def lost(self) -> bool:
        """Its results can no longer be read and were never harvested."""
        return self.harvested_at is None and (
            self.drift == "deleted" or self.archived_at is not None
        )


@dataclass(frozen=True)
class IntentRecord:
    id: str
    job: str
    created_at: datetime
    request_count: int
    status: str
    batch_id: str | None
    list_anchor: str | None = None  # the newest remote batch id before the create was sent
    create_sent: bool = True  # False: the process stopped before the create call was made


class SentAttempt(NamedTuple):
    """One request a batch was sent: what a result line must match to be stored as ours."""

    attempt_id: int
    key: str
    fingerprint: str


class ResultRow(NamedTuple):
    """One verified result line, ready to store."""

    job: str
    key: str
    custom_id: str
    fingerprint: str
    batch_id: str
    attempt_id: int
    type: str
    text: str | None
    message: str | None
    stop_reason: str | None
    error_type: str | None
    error_message: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_creation_input_tokens: int | None
    cache_creation_1h_input_tokens: int | None
    cache_read_input_tokens: int | None
    received_at: str | None


class ResultLookup(NamedTuple):
    """An item's state and its current result, as `results` joins them to the input."""

    record: ItemRecord
    result_fingerprint: str | None
    result_type: str | None
    text: str | None
    message: str | None
    stop_reason: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    batch_id: str | None


class UsageRow(NamedTuple):
    """Token totals of succeeded results, per job, model, the day their batch was created and
    how many of the lengths asked for (`usage_rows(above)`) their requests' input passed."""

    job: str
    model: str | None
    day: str | None
    input_tokens: int
    output_tokens: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int
    over: int = 0  # of `above`, the lengths (input tokens) each request passed


@dataclass(frozen=True)
class JobSummary:
    name: str
    items: int
    in_flight: int
    outcomes: dict[str, int]  # last finished attempt per item, by outcome ("none": never)
    batches: int
    results: int


@dataclass(frozen=True)
class StateMark:
    """Where a state stands: what a saved plan is checked against, and what a command that
    wrote the state reports under `--json`."""

    lineage: str | None
    serial: int
    write_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"lineage": self.lineage, "serial": self.serial, "write_id": self.write_id}


@dataclass(frozen=True)
class LockInfo:
    """A lease held on the state (see `batchops.state.leases`)."""

    lock_id: str
    pid: int
    host: str
    since: str
    command: str
    name: str = "*"  # `*` (the whole state) or `job:<name>`
    expires_at: str | None = None
    pid_ns: str | None = None  # the holder's PID namespace
    started: str | None = None  # the holder process's start time, to tell a reused pid apart

    @property
    def expires(self) -> datetime | None:
        return parse_time(self.expires_at)

    def describe(self) -> str:
        what = "" if self.name == "*" else f" on {self.name}"
        text = f"lock {self.lock_id} held by pid {self.pid} on {self.host} since {self.since}"
        text += what
        if self.expires_at:
            text += f" (lease until {self.expires_at})"
        return text


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
