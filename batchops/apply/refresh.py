"""What the remote says of the batches state records: polling, and the drift it reveals.

Used by `plan` (in memory, nothing written) and by `apply` (which saves what it learnt); and,
before a saved plan runs, to ask again what it says of batches that it acts on (`remote_claims`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import orjson

from batchops.errors import NotFound, PlanError
from batchops.plan.actions import Prune, Requeue
from batchops.plan.diff import DEFAULT_PRUNE_MARGIN, lost_batches
from batchops.remote import RESULT_RETENTION, BatchesClient, RemoteBatch
from batchops.state.records import BatchRecord

if TYPE_CHECKING:
    from batchops.plan.saved import SavedPlan
    from batchops.state.api import StateReader


def as_record(remote: RemoteBatch, job: str, request_count: int = 0) -> BatchRecord:
    """A remote batch as state records it."""
    return BatchRecord(
        id=remote.id,
        job=job,
        request_count=request_count or remote.total,
        processing_status=remote.processing_status,
        created_at=remote.created_at,
        expires_at=remote.expires_at,
        ended_at=remote.ended_at,
        archived_at=remote.archived_at,
        results_expire_at=remote.created_at + RESULT_RETENTION,
        harvested_at=None,
        canceled_by_us_at=None,
        pruned_at=None,
        drift=None,
        request_counts=orjson.dumps(remote.request_counts).decode(),
    )


def refreshed(
    record: BatchRecord, remote: RemoteBatch | None, now: datetime
) -> tuple[BatchRecord, str | None]:
    """The record as the remote sees it now (None: deleted remotely), with a drift note if any."""
    if remote is None:
        if record.pruned_at is not None:
            return record, None
        expires = record.results_expire_at
        if record.harvested_at and expires and expires - now <= DEFAULT_PRUNE_MARGIN:
            return replace(record, pruned_at=now), None  # our own prune, cut short by a crash
        lost = record.harvested_at is None
        note = f"batch {record.id} ({record.job}) was deleted outside batchops" + (
            ": its results were never harvested, so its items will be sent again" if lost else ""
        )
        return replace(record, drift="deleted"), note
    note = None
    updated = replace(
        record,
        processing_status=remote.processing_status,
        expires_at=remote.expires_at,
        ended_at=remote.ended_at,
        archived_at=remote.archived_at,
        created_at=remote.created_at,
        results_expire_at=remote.created_at + RESULT_RETENTION,
        request_counts=orjson.dumps(remote.request_counts).decode(),
    )
    if remote.cancel_initiated_at and record.canceled_by_us_at is None and record.drift is None:
        updated = replace(updated, drift="canceled")
        note = f"batch {record.id} ({record.job}) was cancelled outside batchops"
    if remote.archived_at and record.harvested_at is None:
        note = (
            f"batch {record.id} ({record.job}): results expired remotely before they were "
            "harvested; its items will be sent again"
        )
    return updated, note


def poll(
    record: BatchRecord, client: BatchesClient, now: datetime
) -> tuple[BatchRecord, str | None]:
    """Retrieve one batch and return `refreshed` of it. A 404 is a question, not an answer: the
    batch reads as deleted only when another retrieve and the list confirm it is gone."""
    try:
        remote: RemoteBatch | None = client.retrieve(record.id)
    except NotFound:
        if not client.confirm_gone(record.id, record.created_at, now):
            return record, None  # a passing 404: nothing learnt this time
        remote = None
    return refreshed(record, remote, now)


def remote_view(
    batches: Iterable[BatchRecord], client: BatchesClient, now: datetime
) -> tuple[dict[str, BatchRecord], list[str]]:
    """Poll every batch whose remote facts the plan still needs (`BatchRecord.needs_refresh`);
    nothing is written."""
    out: dict[str, BatchRecord] = {}
    notes: list[str] = []
    for record in batches:
        if not record.needs_refresh(now, DEFAULT_PRUNE_MARGIN):
            continue
        updated, note = poll(record, client, now)
        out[record.id] = updated
        if note:
            notes.append(note)
    return out, notes


def remote_claims(
    saved: SavedPlan, reader: StateReader, client: BatchesClient, now: datetime
) -> None:
    """Before anything runs, ask again of each batch the file says its refresh saw deleted or
    expired (its items are then sent again), or with its results near their end (it is then
    deleted remotely), where the state does not say so itself: a file edited on purpose could
    say it of a batch still running, or of one with weeks of retention left."""
    for step in saved.plan.steps:
        if not isinstance(step, Requeue | Prune):
            continue
        record = reader.batch(step.batch_id)
        if record is None or _as_claimed(step, record, now):
            continue  # the state says so itself (or check_steps found no such step)
        seen, _ = poll(record, client, now)
        if not _as_claimed(step, seen, now):
            what = "lost" if isinstance(step, Requeue) else "near the end of its results' retention"
            raise PlanError(
                f"{saved.path}: batch {step.batch_id} ({step.job}) is not {what} as the plan "
                "says (the API, asked again, does not say so); refusing the plan; make a new plan"
            )


def _as_claimed(step: Requeue | Prune, record: BatchRecord, now: datetime) -> bool:
    """Whether `record` is what the step says: lost (a requeue), or near its results' end."""
    if isinstance(step, Requeue):
        return record.id in lost_batches([record])
    return record.expiring(now, DEFAULT_PRUNE_MARGIN)
