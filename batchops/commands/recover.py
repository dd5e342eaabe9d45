"""`batchops state recover`: rebuild a lost state from the batches still on the API.

The API keeps batches and their results for 29 days, and a result's custom_id proves which
request it answers (it is derived from the job, the key and the fingerprint). So an ended batch
whose every custom_id is an item the specs render now is ours, and is recorded the way `import`
records a batch: an intent with its attempts, the batch, then the evaluator's harvest (verified
against request_counts and the custom_ids, stored in one transaction). Batches are taken oldest
first, so an item answered twice ends with its newest answer and its attempts counted.

A batch only some of whose custom_ids match (all of one job) is ours too: the others answer
older versions of its items, edited (or removed) since. It is recorded with the matching items
only, and harvested here (`harvest.verified_rows` with `unmatched`): every line is still checked
(as many as request_counts, no custom_id twice, known result types), the matching ones are
stored, the others counted and reported. They are not stored even as history: a custom_id is a
hash, so which key such a line answers, and what it asked, is unknown once the state is lost.
Should that harvest fail, the batch is removed from the state again (apply's own harvest refuses
a line it was not sent, so it could never harvest it), and reported.

Nothing is guessed. Reported, not recovered: batches still in flight (their custom_ids are only
known from their results), batches whose results expired, and batches whose custom_ids match
items of more than one job. Batches none of whose custom_ids match are someone else's and are
only counted. Recovery writes into an empty state only, under its lock.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import field
from typing import Any

from batchops.apply.evaluator import Evaluator, NullProgress
from batchops.apply.refresh import as_record
from batchops.apply.run import harvest_matched
from batchops.commands.context import Context
from batchops.errors import RemoteError, StateError
from batchops.lazyclass import dataclass
from batchops.plan.actions import SubmitItem
from batchops.remote import BatchesClient, RemoteBatch
from batchops.spec.desired import DesiredItem, sent_custom_ids
from batchops.state import open_writer, shown
from batchops.state.api import StateWriter
from batchops.state.records import StateMark


@dataclass(frozen=True)
class RecoveredBatch:
    id: str
    job: str
    results: int  # stored
    unmatched: int = 0  # lines answering no item as the specs render now: counted, not stored


@dataclass(frozen=True)
class UnrecoveredBatch:
    id: str
    status: str  # the remote processing_status
    reason: str


@dataclass
class Recovery:
    location: str
    listed: int = 0  # batches on the API
    recovered: list[RecoveredBatch] = field(default_factory=list)
    not_recovered: list[UnrecoveredBatch] = field(default_factory=list)
    not_ours: int = 0  # batches none of whose custom_ids is an item of the specs
    state: StateMark | None = None  # where the state stands after the recovery

    @property
    def results(self) -> int:
        return sum(b.results for b in self.recovered)

    def to_dict(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "listed": self.listed,
            "recovered": [dataclasses.asdict(b) for b in self.recovered],
            "not_recovered": [dataclasses.asdict(b) for b in self.not_recovered],
            "not_ours": self.not_ours,
            "results": self.results,
            "state": None if self.state is None else self.state.to_dict(),
        }


def check_empty(context: Context) -> None:
    """Recovery only fills an empty state (nothing is merged into one that records anything)."""
    reader = context.reader()
    try:
        empty = reader.is_empty()
    finally:
        reader.close()
    if not empty:
        raise StateError(
            f"{shown(context.settings.state_path)}: state recover rebuilds into an empty state, "
            "and this one is not empty (point --state at a new file or database)"
        )


def recover(context: Context) -> Recovery:
    """List the batches on the API and record every one whose custom_ids prove it ours."""
    desired = context.desired()  # every job; bad specs fail here, before anything is written
    check_empty(context)
    by_custom_id = {
        custom_id: (dj.name, item)
        for dj in desired.jobs
        for custom_id, item in sent_custom_ids(desired, dj)
    }
    client = context.client()  # no credentials: fail before anything is written
    try:
        listed = sorted(client.list_all(), key=lambda b: (b.created_at, b.id))  # oldest first
        out = Recovery(shown(context.settings.state_path), listed=len(listed))
        state = open_writer(context.settings.state_path, "state recover")
        try:
            if not state.is_empty():  # filled between the check and the lock
                check_empty(context)
            for remote in listed:
                _recover_batch(state, client, context, remote, by_custom_id, out)
            out.state = state.mark()
        finally:
            state.close()
    finally:
        client.close()
    return out


def _recover_batch(
    state: StateWriter,
    client: BatchesClient,
    context: Context,
    remote: RemoteBatch,
    by_custom_id: dict[str, tuple[str, DesiredItem]],
    out: Recovery,
) -> None:
    def skip(reason: str) -> None:
        out.not_recovered.append(UnrecoveredBatch(remote.id, remote.processing_status, reason))

    if remote.processing_status != "ended":
        return skip(
            "still in flight: its custom_ids are only known from its results, so it cannot be "
            f"proven ours yet; if it is, run `batchops import JOB {remote.id}` once it ends, "
            "before the next apply sends its items again"
        )
    if remote.archived_at is not None:
        return skip("its results expired remotely: its items are sent again by the next apply")
    try:
        with client.results(remote.id) as lines:
            custom_ids = [line.get("custom_id") for line in lines]
    except RemoteError as exc:
        return skip(f"its results could not be read ({exc.problems[0]}); run recover again")
    if len(custom_ids) != remote.total or len(set(custom_ids)) != len(custom_ids):
        return skip(
            f"its results did not check out ({len(custom_ids)} lines, "
            f"{len(set(custom_ids))} distinct custom_ids, request_counts add up to "
            f"{remote.total})"
        )
    matched = [(c, *by_custom_id[c]) for c in custom_ids if c in by_custom_id]
    if not matched:
        out.not_ours += 1
        return None
    jobs = sorted({job for _, job, _ in matched})
    if len(jobs) > 1:
        return skip(
            f"its custom_ids match items of jobs {', '.join(jobs)}, and a batch carries one "
            "job's requests"
        )
    job = jobs[0]
    unmatched = len(custom_ids) - len(matched)
    records = {r.key: r for r in state.item_records([job])}
    busy = [
        item.key for _, _, item in matched if item.key in records and records[item.key].inflight
    ]
    if busy:
        return skip(f"item {busy[0]} of job {job} is already in flight in another batch")

    def attempt(item: DesiredItem) -> int:  # an item answered before: its attempts go on
        record = records.get(item.key)
        if record is not None and record.fingerprint == item.fingerprint:
            return record.attempts + 1
        return 1

    intent_id = f"intent_{uuid.uuid4().hex}"
    submits = [  # each under the custom_id it was sent with (a former name's, after `moved`)
        SubmitItem(job, item.key, custom_id, item.fingerprint, "recover", attempt(item), 0.0)
        for custom_id, _, item in matched
    ]
    state.record_intent(intent_id, job, submits, 0, context.clock())
    state.record_created(intent_id, as_record(remote, job), context.clock())
    if unmatched:
        stored, problem = harvest_matched(state, client, context.clock, remote, job)
        if problem is not None:
            state.remove(remote.id)  # its items are no longer in flight: the next apply sends them
            return skip(
                f"its results could not be harvested ({problem}), so nothing of it was kept; "
                "the next apply sends its items again, unless it is recovered into a new state"
            )
    else:
        evaluator = Evaluator(state, client, context.clock, NullProgress())
        record = state.batch(remote.id)
        if record is None or not evaluator.harvest(record):
            if evaluator.report.drift:  # its results are gone (retention's end, a deletion)
                return skip(f"recorded, but not harvested ({evaluator.report.drift[-1]})")
            problem = (evaluator.report.problems or ["harvest failed"])[-1]
            return skip(f"recorded, but not harvested ({problem}); the next apply harvests it")
        stored = evaluator.report.results_stored
    out.recovered.append(RecoveredBatch(remote.id, job, stored, unmatched))
    return None
