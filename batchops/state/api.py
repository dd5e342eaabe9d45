"""The state API: what every backend implements, and the only way state is read or changed.

`StateReader` answers queries; `StateWriter` adds the transitions apply, import and state surgery
make, each one transaction that bumps the serial (so a saved plan can tell that anything moved).
A backend (SQLite in `sqlite`, PostgreSQL in `postgres`) implements both and passes the contract
suite in `tests/test_state_contract.py`. Nothing outside `batchops.state` writes SQL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol

from batchops.state.records import (
    BatchRecord,
    IntentRecord,
    ItemRecord,
    JobSummary,
    LockInfo,
    ResultLookup,
    SentAttempt,
    StateMark,
    UsageRow,
)

# Drift: what happened to a batch outside batchops (or what batchops found out about it).
RELEASE_DRIFTS = ("deleted", "results-lost", "not-ours")
OUTCOMES = ("succeeded", "errored", "expired", "canceled", "lost")
# (result fingerprint, text, message, stop_reason, model, input_tokens, output_tokens, batch_id)
# of an item's own succeeded result (`StateReader.succeeded_results`); all None when it has none.
SucceededRow = tuple[
    str | None, str | None, str | None, str | None, str | None, int | None, int | None, str | None
]
NO_SUCCEEDED_ROW: SucceededRow = (None,) * 8  # type: ignore[assignment]
OUTPUT_SAMPLE = 10_000  # results read per job for its mean output tokens (a sample is enough)
# One job's sampled answers by model (`output_token_means`), with `?` for both parameters: the
# results its items hold (reused ones included), read along the items' primary key.
OUTPUT_MEANS_SQL = (
    "select model, count(*), avg(output_tokens) from (select r.model, r.output_tokens"
    " from items i join results r on r.id = i.result_id where i.job = ? and r.type = 'succeeded'"
    " and r.output_tokens is not null limit ?) s group by model"
)

# What a copy of the state carries (`dump_tables` / `load_tables`: state push, pull, and tests),
# table by table, with the columns in one order both backends share. The lock or leases and the
# migrations record belong to each state and are never copied. A flag column is a bool in a dump.
STATE_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("meta", ("key", "value")),
    ("jobs", ("name", "spec_file", "first_seen_at", "last_applied_at")),
    (
        "items",
        (
            "job", "key", "custom_id", "fingerprint", "attempts", "inflight_attempt", "outcome",
            "error_type", "error_message", "canceled_by_us", "result_id", "updated_at",
            "forgotten_at",
        ),
    ),
    (
        "attempts",
        (
            "id", "job", "key", "custom_id", "fingerprint", "number", "intent_id", "batch_id",
            "status", "outcome", "created_at",
        ),
    ),
    (
        "intents",
        (
            "id", "job", "created_at", "request_count", "body_bytes", "status", "batch_id",
            "plan_id", "list_anchor", "create_sent_at",
        ),
    ),
    (
        "batches",
        (
            "id", "job", "intent_id", "request_count", "processing_status", "request_counts",
            "created_at", "expires_at", "ended_at", "cancel_initiated_at", "archived_at",
            "results_expire_at", "harvested_at", "canceled_by_us_at", "pruned_at", "drift",
            "refreshed_at",
        ),
    ),
    (
        "results",
        (
            "id", "job", "key", "custom_id", "fingerprint", "batch_id", "attempt_id", "type",
            "text", "message", "stop_reason", "error_type", "error_message", "model",
            "input_tokens", "output_tokens", "cache_creation_input_tokens",
            "cache_creation_1h_input_tokens", "cache_read_input_tokens", "received_at",
        ),
    ),
    ("applied_plans", ("plan_id", "applied_at")),
)  # fmt: skip
FLAG_COLUMNS = {"items": ("canceled_by_us",)}
# One table of a dump: (table, columns, rows); its rows are read lazily, so consume them in order.
TableDump = tuple[str, tuple[str, ...], Iterator[tuple]]


def check_dump_table(table: str, columns: Sequence[str]) -> None:
    """Refuse a dump table that is not one of STATE_TABLES, or a column it does not have."""
    known = dict(STATE_TABLES).get(table)
    if known is None or not set(columns) <= set(known):
        raise ValueError(f"not a state table of this batchops: {table} {tuple(columns)}")


class Attempt(Protocol):
    """What recording an intent needs of each request in it (a plan's submit action)."""

    @property
    def key(self) -> str: ...
    @property
    def custom_id(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def attempt(self) -> int: ...


class Reused(Protocol):
    """What recording a reuse needs of each item (a plan's reuse action)."""

    @property
    def key(self) -> str: ...
    @property
    def custom_id(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def result_id(self) -> int | None: ...


class StateReader(ABC):
    """A read-only view of the state: what the planner and the reports may see."""

    location: str  # shown in messages (a path, or a URL without its password)

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def exists(self) -> bool:
        """False for a state nothing was ever written to (reads then answer empty)."""

    @property
    @abstractmethod
    def lineage(self) -> str | None: ...

    @property
    @abstractmethod
    def serial(self) -> int: ...

    @property
    @abstractmethod
    def write_id(self) -> str | None:
        """A random id the last write transaction set (None: no write since it was kept): with
        the lineage and serial, what a saved plan and the plan memo check the state against."""

    def mark(self) -> StateMark:
        return StateMark(self.lineage, self.serial, self.write_id)

    @abstractmethod
    def item_records(self, jobs: Sequence[str] | None = None) -> Iterator[ItemRecord]: ...

    @abstractmethod
    def inflight_records(self) -> Iterator[ItemRecord]:
        """`item_records` of every job, of the items in flight only (an attempt open or sent):
        the requests on their way, which other items may wait for, read without the rest."""

    @abstractmethod
    def batches(self) -> list[BatchRecord]:
        """Every batch recorded, oldest first."""

    @abstractmethod
    def batch(self, batch_id: str) -> BatchRecord | None: ...

    @abstractmethod
    def inflight_by_batch(self) -> dict[str, set[str]]:
        """batch id → `job\\x1fkey` of each item still in flight in it."""

    @abstractmethod
    def open_intents(self) -> list[IntentRecord]: ...

    @abstractmethod
    def leases(self) -> list[LockInfo]:
        """Every lease held on the state (one row per job, or `*`)."""

    @abstractmethod
    def lock(self) -> LockInfo | None:
        """One lease held, if any (for messages)."""

    @abstractmethod
    def intent_custom_ids(self, intent_id: str) -> set[str]:
        """The custom_ids an intent's create carried (what proves a batch to be that create)."""

    @abstractmethod
    def plan_applied(self, plan_id: str) -> bool: ...

    @abstractmethod
    def sent_attempts(self, batch_id: str) -> dict[str, SentAttempt]:
        """custom_id → the attempt a batch carries for it (what a result must match)."""

    @abstractmethod
    def sent_attempt_rows(self, batch_id: str) -> Iterator[tuple[str, int, str, str]]:
        """The same as (custom_id, attempt id, key, fingerprint) rows, read as they are taken."""

    @abstractmethod
    def job_names(self) -> list[str]:
        """Every job the state mentions anywhere, sorted."""

    @abstractmethod
    def job_summaries(self, names: Sequence[str]) -> list[JobSummary]: ...

    @abstractmethod
    def batch_detail(self, batch_id: str) -> tuple[str | None, dict[str, int], int]:
        """(intent id, attempts carried by outcome or status, results stored) of one batch."""

    @abstractmethod
    def result_lookup(self, job: str, key: str) -> ResultLookup | None: ...

    def result_lookups(self, job: str) -> Callable[[str], ResultLookup | None]:
        """`result_lookup` for many keys of one job (a backend may prepare it once)."""
        return lambda key: self.result_lookup(job, key)

    def results_of(self, job: str, keys: Sequence[str]) -> dict[str, ResultLookup]:
        """`result_lookup` of a chunk of keys of one job at once, by key; a key without an item
        is left out. A backend answers it with one query (what an export reads, chunk by chunk)."""
        found = ((key, self.result_lookup(job, key)) for key in keys)
        return {key: lookup for key, lookup in found if lookup is not None}

    def succeeded_results(self, job: str, keys: Sequence[str]) -> list[SucceededRow]:
        """For each of `keys`, in order, the item's own succeeded result, read narrowly for an
        export: (result fingerprint, text, message, stop_reason, model, input_tokens,
        output_tokens, batch_id) when nothing of it is in flight, its last outcome is succeeded
        and its result is a success of the item's fingerprint; else `NO_SUCCEEDED_ROW`.

        The caller compares the fingerprint with the spec's: equal, the item is `succeeded`
        with that answer; otherwise `results_of` tells its state. A backend answers it with
        one query in key order, so the rows are merged with the keys without a lookup."""
        found = self.results_of(job, keys)
        rows = []
        for key in keys:
            lookup = found.get(key)
            record = lookup.record if lookup is not None else None
            if (
                lookup is None
                or record is None
                or record.inflight
                or record.outcome != "succeeded"
                or lookup.result_type != "succeeded"
                or lookup.result_fingerprint is None
                or lookup.result_fingerprint != record.fingerprint
            ):
                rows.append(NO_SUCCEEDED_ROW)
                continue
            rows.append(
                (
                    lookup.result_fingerprint,
                    lookup.text,
                    lookup.message,
                    lookup.stop_reason,
                    lookup.model,
                    lookup.input_tokens,
                    lookup.output_tokens,
                    lookup.batch_id,
                )
            )
        return rows

    @abstractmethod
    def usage_rows(self, above: Sequence[int] = ()) -> Iterator[UsageRow]:
        """Token totals of succeeded results (`UsageRow`), apart by how many of `above` (input
        tokens, ascending) each request's input passed."""

    @abstractmethod
    def results_by_fingerprint(self, fingerprints: Iterable[str]) -> dict[str, int]:
        """fingerprint → id of the newest stored succeeded result of that very request, of any
        job or key, for each of `fingerprints` that has one (what a plan may reuse)."""

    @abstractmethod
    def output_token_means(
        self, jobs: Iterable[str], sample: int = OUTPUT_SAMPLE
    ) -> dict[str, dict[str, tuple[int, float]]]:
        """job → model → (results read, mean output tokens) of the succeeded results each job's
        items hold (reused ones included; an item changed since keeps its last one), read from
        at most `sample` of them per job: how long a reply of the job is expected to be when its
        requests are sent. Jobs without results are left out."""

    @abstractmethod
    def removal_counts(self, target: str) -> tuple[str, dict[str, int]] | None:
        """("job" | "batch", rows `remove` would touch per table), or None if unknown."""

    @abstractmethod
    def table_counts(self) -> dict[str, int]:
        """Rows per table of STATE_TABLES (all zero for a state that does not exist)."""

    def is_empty(self) -> bool:
        """Nothing recorded yet (a new state has its meta rows, and nothing else)."""
        return not any(n for table, n in self.table_counts().items() if table != "meta")

    @abstractmethod
    def dump_tables(self) -> Iterator[TableDump]:
        """Every row of every STATE_TABLES table, in that order, read from one snapshot."""


class StateWriter(StateReader):
    """The writable state: apply, refresh, import and state surgery hold one, under leases."""

    held: LockInfo | None = None  # the leases this writer holds (one lock id)
    keeper: Any = None  # the LeaseKeeper renewing them, if any

    @property
    def lease_lost(self) -> bool:
        """True once the leases were found taken over: stop before the next write."""
        return bool(self.keeper is not None and self.keeper.lost)

    def stop_keeper(self) -> None:
        if self.keeper is not None:
            self.keeper.stop()

    @abstractmethod
    def release_lock(self, lock_id: str) -> None: ...

    @abstractmethod
    def force_unlock(self, lock_id: str) -> LockInfo: ...

    @abstractmethod
    def record_intent(
        self,
        intent_id: str,
        job: str,
        attempts: Sequence[Attempt],
        body_bytes: int,
        now: datetime,
        list_anchor: str | None = None,
    ) -> None:
        """Before a create: the intent and an open attempt per request, items put in flight."""

    @abstractmethod
    def record_created(
        self, intent_id: str, batch: BatchRecord, now: datetime, *, adopted: bool = False
    ) -> None:
        """The batch an intent made (from its create response, or found and adopted)."""

    @abstractmethod
    def mark_create_sent(self, intent_id: str, now: datetime) -> None:
        """Just before the create call: from here on its outcome may be unknown."""

    @abstractmethod
    def mark_unsent(self, intent_id: str) -> None:
        """The create never made a batch: its items are no longer in flight."""

    @abstractmethod
    def save_batch(self, batch: BatchRecord, now: datetime) -> None:
        """What a refresh learnt of a batch (status, dates, counts, drift)."""

    @abstractmethod
    def store_harvest(
        self, batch_id: str, rows: Iterable[Sequence[Any]], *, canceled_by_us: bool, now: datetime
    ) -> int:
        """Store a batch's verified results and settle its items, all or nothing.

        Each row holds `ResultRow`'s fields in its order (a `ResultRow`, or a plain tuple: a
        harvest builds 100,000 of them). `rows` may raise: then nothing is stored. Returns the
        number of rows stored.
        """

    @abstractmethod
    def record_reuse(self, job: str, items: Sequence[Reused], now: datetime) -> int:
        """Items answered by stored results of the same requests, in one transaction: each item
        (not in flight) becomes succeeded at its fingerprint, pointing at the result, when that
        result is a succeeded one of that fingerprint. Nothing is sent. Returns the items recorded.
        """

    @abstractmethod
    def release_batch(self, batch_id: str, drift: str, now: datetime) -> int:
        """Give back the items a batch still carries (results lost, deleted, or not ours).

        The attempt does not count against max_attempts. Returns the items released.
        """

    @abstractmethod
    def forget(self, keys: Iterable[tuple[str, str]], now: datetime) -> None:
        """Mark items no longer in any spec (not in flight); their rows stay as memory."""

    @abstractmethod
    def remember(self, keys: Iterable[tuple[str, str]]) -> None:
        """Clear the forgotten mark of items back in a spec."""

    @abstractmethod
    def mark_cancel_requested(self, batch_id: str, now: datetime) -> None: ...

    @abstractmethod
    def record_cancel(
        self, batch_id: str, cancel_initiated_at: datetime | None, processing_status: str
    ) -> None: ...

    @abstractmethod
    def mark_pruned(self, batch_id: str, now: datetime) -> None: ...

    @abstractmethod
    def record_plan_applied(self, plan_id: str, now: datetime) -> None: ...

    @abstractmethod
    def remove(self, target: str) -> tuple[str, dict[str, int]]:
        """`state rm`: forget a job's rows or one batch (its unfinished attempts become lost)."""

    @abstractmethod
    def rename_job(self, old: str, new: str) -> dict[str, int]:
        """`state mv` and a spec's `moved`: every row of job `old` becomes job `new`'s (items,
        attempts, results, batches, intents), in one transaction, so its results stay current.
        Refused (StateError) when `old` has no rows or `new` already has some. Returns the rows
        moved per table."""

    @abstractmethod
    def make_durable(self) -> None:
        """Leave the state self-contained (for SQLite: checkpoint the WAL into the file)."""

    @abstractmethod
    def load_tables(
        self,
        tables: Iterable[TableDump],
        *,
        replace: bool = False,
        expected: dict[str, int] | None = None,
    ) -> dict[str, int]:
        """Make this state a copy of a dump (another state's `dump_tables`), in one transaction.

        Lineage and serial come with the dump (the serial moves past this state's own when
        `replace` overwrites rows). A state that is not empty is refused unless `replace`. With
        `expected` (rows per table of the source), any other count rolls everything back.
        Returns the rows now in each table.
        """
