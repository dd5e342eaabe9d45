"""Saved plans (`plan -o FILE`, `apply FILE`, `show FILE`): the plan object, serialized.

A plan file is JSON Lines:
- line 1, the header: `{"kind": "batchops-plan", "plan_id", "observed", "replace", "plan": <the
  JSON shape>}`, whose jobs list their actions but the submits (the request lines list those);
  `observed` holds the batches as the plan's refresh saw them, `replace` the `--replace` items;
- one line per step, in order; a submit step is followed by one line per request it sends:
  `{"key", "custom_id", "fingerprint", "params", "reason", "attempt"}`;
- a last line `{"kind": "batchops-plan-end", "lines": N, "digest": "sha256:…"}` over every byte
  before it, so a truncated or edited file is refused.

The request lines are copied from those the plan's own render kept (`spec.spool`), each with its
reason and attempt put after its params; a job rendered elsewhere (rows cache, worker processes)
is rendered again by the fast producer, and each request checked against the plan.

Loading verifies more than the digest (which anyone can recompute): every field read has the type
batchops writes (`_Fields`), and every request must be exactly one that the specs render now (same
job, key, custom_id and fingerprint of its params), so a damaged file or an edited request is
refused before any network call. Apply then makes the plan again, from the state it holds (at the
plan's serial), the specs, and the batches as the file says the refresh saw them, and refuses a
file whose steps are not exactly those (`check_steps`): a request added or removed, a step added,
dropped or changed, even with the digest made anew. What the refresh saw is checked again where
it would send items again or delete a batch (`apply.refresh.remote_claims`: a batch said
deleted, expired or near its results' end is asked once more).
The API key is never written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from batchops.clock import iso, parse_time
from batchops.errors import PlanError
from batchops.lazyclass import dataclass
from batchops.plan.actions import (
    ITEM_STATES,
    STEP_ORDER,
    Cancel,
    FailedItem,
    Forget,
    ForgetItem,
    Harvest,
    JobPlan,
    Move,
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
)
from batchops.plan.build import plan_from
from batchops.plan.diff import BatchLimits, cache_saving, job_costs
from batchops.plan.serialize import plan_json_chunks, step_dict
from batchops.spec.desired import Desired, DesiredItem, items_for, requests_for
from batchops.spec.files import new_temp
from batchops.spec.items import fingerprint, request_size_of
from batchops.spec.model import Project
from batchops.spec.spool import JobSpool, RequestSpool, head, request_line
from batchops.state.api import StateReader
from batchops.state.records import BatchRecord

MAGIC = "batchops-plan"
END = "batchops-plan-end"
DIGEST_PREFIX = "sha256:"

_P = TypeVar("_P")  # a request's params: a dict, or the JSON bytes of one
_Request = tuple[str, str, _P]  # (key, fingerprint, params) of an item as the specs render it


@dataclass(frozen=True)
class SavedPlan:
    """A verified plan file: the plan to run, and where each submit step's requests are."""

    path: Path
    plan_id: str
    plan: Plan
    header: dict[str, Any]
    offsets: dict[int, int]  # index of a submit step in plan.steps → byte offset of its requests
    replace: frozenset[tuple[str, str]] = frozenset()  # the `--replace` items it was made with
    checked: Plan | None = None  # the plan made again from the state by apply (`check_steps`)

    @property
    def lineage(self) -> str | None:
        return self.plan.lineage

    @property
    def serial(self) -> int:
        return self.plan.serial

    @property
    def spec_digest(self) -> str:
        return self.plan.spec_digest


class _Writer:
    """Lines of a plan file and the digest over them, a megabyte at a time. The digest and the
    writes are each made by a thread of their own (hashlib and file writes let go of the GIL),
    beside the caller making the next megabyte: a plan of a million requests is 400 MB."""

    def __init__(self, fh: IO[bytes]):
        self.digest = hashlib.sha256()
        self.lines = 0
        self.pending: list[bytes] = []
        self.held = 0
        self._failure: list[BaseException] = []
        self._queues: list[queue.Queue[bytes | None]] = []
        self._threads: list[threading.Thread] = []
        for use in (self.digest.update, fh.write):
            chunks: queue.Queue[bytes | None] = queue.Queue(_AHEAD)
            thread = threading.Thread(
                target=self._drain, args=(chunks, use), name="batchops-plan-write", daemon=True
            )
            thread.start()
            self._queues.append(chunks)
            self._threads.append(thread)

    def line(self, value: Any) -> None:
        self.write(orjson.dumps(value) + b"\n")

    def write(self, data: bytes, lines: int = 1) -> None:
        self.pending.append(data)
        self.held += len(data)
        self.lines += lines
        if self.held >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._failure:
            raise self._failure[0]
        data = b"".join(self.pending)
        self.pending, self.held = [], 0
        for chunks in self._queues:
            chunks.put(data)

    def finish(self) -> str:
        """Write what is left, wait for the threads; the digest (or what a thread raised)."""
        self.flush()
        self.close()
        if self._failure:
            raise self._failure[0]
        return DIGEST_PREFIX + self.digest.hexdigest()

    def close(self) -> None:
        """Stop the threads (what they were given is done first)."""
        for chunks in self._queues:
            chunks.put(None)
        for thread in self._threads:
            thread.join()
        self._queues, self._threads = [], []

    def _drain(self, chunks: queue.Queue[bytes | None], use: Callable[[bytes], Any]) -> None:
        while (data := chunks.get()) is not None:
            if not self._failure:
                try:
                    use(data)
                except BaseException as exc:  # noqa: BLE001 - raised by the caller's thread
                    self._failure.append(exc)


_FLUSH_BYTES = 1 << 20  # what the writer's threads are given at a time
_AHEAD = 4  # pieces made ahead of the digest and of the file


def check_target(path: Path) -> None:
    """Refuse a path a plan cannot be saved to (`plan -o` asks before it plans: a million-item
    plan is not made, and printed, to be refused then)."""
    if not path.parent.is_dir():
        raise PlanError(f"{path}: directory {path.parent} does not exist")
    if path.is_dir():
        raise PlanError(f"{path}: is a directory")


def save(plan: Plan, desired: Desired, path: Path, prices_source: str | None) -> str:
    """Write the plan and every request it sends, atomically (temporary file, then rename).
    The request lines `desired` kept from its render (`desired.spool`) are used up."""
    plan_id = str(uuid.uuid4())
    path = Path(path)
    check_target(path)
    # a name no one can guess, made new: a symlink a pull request planted at a temporary path
    # beside the plan file would otherwise be written through
    fd, tmp = new_temp(path.parent, path.name)
    spool = desired.spool if plan.submits else None
    try:
        # the writer's threads are stopped (on an error too) before the file is closed
        with os.fdopen(fd, "wb") as fh, contextlib.ExitStack() as stack:
            out = _Writer(fh)
            stack.callback(out.close)
            # The header holds the plan but its submit actions: written as it is encoded.
            head = orjson.dumps({
                "kind": MAGIC,
                "plan_id": plan_id,
                "observed": [_record_dict(b) for b in plan.observed],
                "replace": sorted([job, key] for job, key in desired.replace),
                "plan": None,
            })  # fmt: skip
            out.write(head[: -len(b"null}")], 0)
            for piece in plan_json_chunks(plan, prices_source, indent=False, submits=False):
                out.write(piece, 0)
            out.write(b"}\n")
            kept: dict[str, JobSpool | None] = {}
            for step, stream, held in _spec_streams(plan, desired, requests_for):
                out.line({"step": step_dict(step)})
                if not isinstance(step, SubmitBatch):
                    continue
                if step.job not in kept:
                    kept[step.job] = _kept(plan, desired, spool, step.job)
                lines = kept[step.job]
                if lines is not None:
                    _copy_requests(out, step, lines)
                else:
                    _write_requests(out, step, stream, held)
            digest = out.finish()
            fh.write(orjson.dumps({"kind": END, "lines": out.lines, "digest": digest}) + b"\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        if spool is not None:
            spool.close()
    return plan_id


def _tail(reason: str, attempt: int) -> bytes:
    """What follows a request's params on its line: `,"reason":…,"attempt":…}` and a newline."""
    return b"," + orjson.dumps({"reason": reason, "attempt": attempt})[1:] + b"\n"


def _kept(plan: Plan, desired: Desired, spool: RequestSpool | None, job: str) -> JobSpool | None:
    """The request lines job `job`'s render kept, if there is one for each of its items and
    every submit step of the job draws its items from those (else the job is rendered again)."""
    table = next((j.items for j in desired.jobs if j.name == job), None)
    if spool is None or table is None:
        return None
    steps = [s for s in plan.submits if s.job == job]
    if not all(isinstance(s.items, SubmitItems) and s.items.desired is table for s in steps):
        return None
    return spool.complete(job, len(table))


def _copy_requests(out: _Writer, step: SubmitBatch, lines: JobSpool) -> None:
    """The request lines of a submit step, copied from those its render kept, in runs of
    consecutive items of one (reason, attempt); each kept newline becomes the line's tail."""
    items = step.items
    assert isinstance(items, SubmitItems)
    for n in (0, len(items) - 1):  # the lines are the items' by construction: one check a side
        want = items.desired[items.index[n]]
        if not lines.line(items.index[n]).startswith(head(*want[:3])):
            raise PlanError(f"job {step.job}: the kept requests are not the plan's; plan again")
    tails = [_tail(reason, attempt) for reason, attempt in items.kinds]
    for start, stop, kind in _runs(items):
        tail = tails[kind]
        for data in lines.read(start, stop):
            out.write(lines.expand(data, tail), 0)
        out.lines += stop - start  # the run's lines, each whole


def _runs(items: SubmitItems) -> list[tuple[int, int, int]]:
    """(start, stop, kind) of each run of consecutive desired items of the same kind, in order."""
    index, tags = items.index, items.tags
    if isinstance(index, range) and index.step == 1 and tags is None:
        return [(index.start, index.stop, 0)] if len(index) else []
    runs: list[tuple[int, int, int]] = []
    start = stop = kind = -1
    for i, tag in zip(index, tags if tags is not None else repeat(0), strict=False):
        if i == stop and tag == kind:
            stop += 1
            continue
        if start >= 0:
            runs.append((start, stop, kind))
        start, stop, kind = i, i + 1, tag
    if start >= 0:
        runs.append((start, stop, kind))
    return runs


def _wanted(step: SubmitBatch) -> Iterator[tuple[tuple[str, str, str, int], str]]:
    """((key, custom_id, reason, attempt), fingerprint) of each item of a submit step, without
    a SubmitItem each where the step holds none."""
    items = step.items
    if isinstance(items, SubmitItems):
        return zip(items.ids(), items.fingerprints(), strict=True)
    return (((i.key, i.custom_id, i.reason, i.attempt), i.fingerprint) for i in items)


_CHUNK = 4096  # request lines joined into one write


def _write_requests(
    out: _Writer, step: SubmitBatch, stream: Iterator[_Request[bytes]], held: dict
) -> None:
    """The request lines of a submit step, rendered again: each the bytes `orjson.dumps` writes
    for its dict (key, custom_id, fingerprint, params, reason, attempt)."""
    join, take = b"".join, _take
    tails: dict[tuple[str, int], bytes] = {}
    chunk: list[bytes] = []
    for (key, custom_id, reason, attempt), fp in _wanted(step):
        params = take(step.job, key, fp, stream, held)
        tail = tails.get((reason, attempt))
        if tail is None:
            tail = tails[(reason, attempt)] = _tail(reason, attempt)
        chunk.append(request_line(key, custom_id, fp, params, tail))
        if len(chunk) == _CHUNK:
            out.write(join(chunk), _CHUNK)
            chunk = []
    if chunk:
        out.write(join(chunk), len(chunk))


def spec_requests(
    plan: Plan, desired: Desired
) -> Iterator[list[tuple[SubmitItem, dict[str, Any]]]]:
    """Per step of `plan`, the requests it sends rendered from the specs (empty for other steps)."""
    for step, stream, held in _spec_streams(plan, desired, _item_requests):
        if not isinstance(step, SubmitBatch):
            yield []
            continue
        yield [(i, _take(step.job, i.key, i.fingerprint, stream, held)) for i in step.items]


def _item_requests(
    project: Project, job: str, keys: set[str] | None
) -> Iterator[_Request[dict[str, Any]]]:
    """(key, fingerprint, params) of a job's items, by the general path."""
    for item in items_for(project, job, keys, custom_ids=False):
        yield item.key, item.fingerprint, item.params


def _spec_streams(
    plan: Plan,
    desired: Desired,
    requests_of: Callable[[Project, str, set[str] | None], Iterator[_Request[_P]]],
) -> Iterator[tuple[Step, Iterator[_Request[_P]], dict[str, _Request[_P]]]]:
    """Per step of `plan`, the stream of its job's requests as they are rendered and the ones
    met before their turn: `requests_of(project, job, keys)` renders (key, fingerprint, params).

    Each job is rendered once, in source order; submit steps list items packed for cache hits
    (items sharing a prefix together), so an item met before its turn is held until it is due
    (`_take`). Each step's requests are to be taken before the next step is asked for.
    """
    streams: dict[str, Iterator[_Request[_P]]] = {}
    early: dict[str, dict[str, _Request[_P]]] = {}  # job → key → rendered before its turn
    for step in plan.steps:
        if not isinstance(step, SubmitBatch):
            yield step, iter(()), {}
            continue
        if step.job not in streams:
            streams[step.job] = _job_stream(plan, desired, step.job, requests_of)
            early[step.job] = {}
        yield step, streams[step.job], early[step.job]


def _job_stream(
    plan: Plan,
    desired: Desired,
    job: str,
    requests_of: Callable[[Project, str, set[str] | None], Iterator[_Request[_P]]],
) -> Iterator[_Request[_P]]:
    """`requests_of` the items of `job` that `plan` sends (begun only when first asked)."""
    sent = sum(len(s.items) for s in plan.submits if s.job == job)
    rendered = next((len(j.items) for j in desired.jobs if j.name == job), None)
    keys = None  # every item of the job is sent: no set of a million keys to filter by
    if sent != rendered:
        keys = {w[0][0] for s in plan.submits if s.job == job for w in _wanted(s)}
    yield from requests_of(desired.project, job, keys)


def _take(
    job: str, key: str, fp: str, stream: Iterator[_Request[_P]], held: dict[str, _Request[_P]]
) -> _P:
    """The params of item `key` from `stream` (or `held`, holding the items read past), refused
    unless it is there with fingerprint `fp`."""
    request = held.pop(key, None) if held else None
    while request is None:
        request = next(stream, None)
        if request is None:
            break
        if request[0] != key:
            held[request[0]], request = request, None
    if request is None or request[1] != fp:
        raise PlanError(f"job {job}: item {key} changed since the plan was made; make a new plan")
    return request[2]


def saved_requests(saved: SavedPlan, index: int) -> list[tuple[SubmitItem, dict[str, Any]]]:
    """The requests of submit step `index`, read again from the file and checked once more."""
    step = saved.plan.steps[index]
    assert isinstance(step, SubmitBatch)
    out = []
    with saved.path.open("rb") as fh:
        fh.seek(saved.offsets[index])
        for wanted in step.items:
            line = orjson.loads(fh.readline())
            params = line.get("params") if isinstance(line, dict) else None
            if (
                not isinstance(params, dict)
                or line.get("key") != wanted.key
                or line.get("custom_id") != wanted.custom_id
                or fingerprint(params, step.betas) != wanted.fingerprint
            ):
                raise PlanError(f"{saved.path}: changed while it was being applied")
            out.append((wanted, params))
    return out


def load(path: Path, desired_for: Any) -> SavedPlan:
    """Read and verify a plan file. `desired_for(job_names)` renders the specs it applies to."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file") from None
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the plan file ({exc.strerror})") from None
    lines = data.split(b"\n")
    header = _json(lines[0], path, 1)
    if not isinstance(header, dict) or header.get("kind") != MAGIC:
        raise PlanError(f"{path}: not a batchops plan file")
    shape = _Fields(header.get("plan"), f"{path}: line 1", "the header's plan")
    if shape.entry.get("format_version") != 2:
        raise PlanError(
            f"{path}: plan format {shape.entry.get('format_version')!r} is not 2; make a new plan"
        )
    _check_digest(data, lines, path)
    top = _Fields(header, f"{path}: line 1", "the header")
    plan_id = top.text("plan_id")
    # written by batchops 0.1 before these: a plan with no refresh seen, no item replaced
    observed = tuple(_record(r) for r in top.objects("observed")) if "observed" in header else ()
    replaced = _pairs(top) if "replace" in header else frozenset()
    job_names = shape.texts_or_none("job_names")
    shape.text_or_none("prices")  # shown by `show` as it is
    desired: Desired = desired_for(list(job_names) if job_names is not None else None)
    if shape.text("spec_digest") != desired.spec_digest:
        raise PlanError(f"{path}: specs changed since the plan was made; make a new plan")
    by_key = {(j.name, i.key): i for j in desired.jobs for i in j.items}
    steps: list[Step] = []
    offsets: dict[int, int] = {}
    position = len(lines[0]) + 1
    n = 1
    body = lines[1:-2]  # the end line and the empty string after its newline
    index = 0
    while index < len(body):
        raw = body[index]
        n += 1
        line = _json(raw, path, n) if raw else None
        entry = line.get("step") if isinstance(line, dict) else None
        position += len(raw) + 1
        index += 1
        if not isinstance(entry, dict):
            raise PlanError(f"{path}: line {n}: not a plan step")
        step = _step(entry, path, n, by_key)
        if isinstance(step, SubmitBatch):
            offsets[len(steps)] = position
            items = []
            for _ in range(
                _Fields(entry, f"{path}: line {n}", "the submit step").count("requests")
            ):
                if index >= len(body):
                    raise PlanError(f"{path}: ends inside a submit step")
                raw = body[index]
                n += 1
                position += len(raw) + 1
                index += 1
                items.append(_verified(_json(raw, path, n), step, by_key, path, n))
            step = SubmitBatch(step.job, step.betas, tuple(items), step.request_bytes)
        steps.append(step)
    plan = dataclasses.replace(_plan(shape, steps, desired), observed=observed)
    return SavedPlan(path, plan_id, plan, header, offsets, replaced)


_TIMES = ("created_at", "expires_at", "ended_at", "archived_at", "results_expire_at",
          "harvested_at", "canceled_by_us_at", "pruned_at")  # fmt: skip


def _record_dict(record: BatchRecord) -> dict[str, Any]:
    out = dataclasses.asdict(record)
    for name in _TIMES:
        out[name] = iso(out[name])
    return out


def _record(f: _Fields) -> BatchRecord:
    """A batch as a plan's refresh saw it, each field of the type batchops writes."""
    times = {}
    for name in _TIMES:
        value = f.text_or_none(name)
        try:
            moment = parse_time(value)
        except ValueError:
            moment = None
        if value is not None and (moment is None or moment.tzinfo is None):
            raise f.damaged(name, "a time")
        times[name] = moment
    adopted = f.entry.get("adopted")
    if not isinstance(adopted, bool):
        raise f.damaged("adopted", "true or false")
    return BatchRecord(
        id=f.text("id"),
        job=f.text("job"),
        request_count=f.count("request_count"),
        processing_status=f.text("processing_status"),
        drift=f.text_or_none("drift"),
        request_counts=f.text_or_none("request_counts"),
        adopted=adopted,
        **times,
    )


def _pairs(top: _Fields) -> frozenset[tuple[str, str]]:
    value = top.entry.get("replace")
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, str) for v in p) for p in value
    ):
        raise top.damaged("replace", "a list of [job, key] pairs")
    return frozenset((job, key) for job, key in value)


def check_steps(
    saved: SavedPlan, reader: StateReader, desired: Desired, limits: BatchLimits
) -> SavedPlan:
    """Refuse a saved plan whose steps are not exactly the plan batchops makes now from the state
    (at the plan's serial, checked before), the specs and the batches as the file says its
    refresh saw them: a file edited on purpose, its digest made anew, is still refused. The
    saved plan, with the plan made again (`checked`: a saved plan with nothing to do needs no
    other plan after it)."""
    # Of each batch the file says its refresh saw, only what a refresh learns is taken from it;
    # who the batch belongs to, and what this side did to it, are the state's.
    recorded = {b.id: b for b in reader.batches()}
    remote = {
        b.id: dataclasses.replace(recorded[b.id], **{f: getattr(b, f) for f in _REFRESHED})
        for b in saved.plan.observed
        if b.id in recorded
    }
    if saved.replace:
        desired = dataclasses.replace(desired, replace=saved.replace)
    made = plan_from(reader, desired, saved.plan.created_at, remote or None, limits)
    ranks = [_RANK[type(s)] for s in saved.plan.steps]
    given, wanted = _identities(saved.plan.steps), _identities(made.steps)
    edited = "the file was edited: refusing the plan; make a new plan"
    if ranks != sorted(ranks):
        raise PlanError(f"{saved.path}: its steps are not in the order a plan runs them; {edited}")
    if [i for _, i in given] == [i for _, i in wanted]:
        return dataclasses.replace(saved, checked=made)
    if "observed" not in saved.header:  # batchops 0.1 before it: the plan cannot be made again
        raise PlanError(
            f"{saved.path}: written by an older batchops, it does not say what its refresh saw, "
            "so its steps cannot be checked; make a new plan"
        )
    pairs = enumerate(zip(given, wanted, strict=False))
    at = next((i for i, (g, w) in pairs if g[1] != w[1]), min(len(given), len(wanted)))
    if at < len(given):
        index = given[at][0]
        step = saved.plan.steps[index]
        raise PlanError(
            f"{saved.path}: its step {index + 1} ({step.kind} for job {step.job}) is not what "
            f"the state and the specs call for; {edited}"
        )
    missing = made.steps[wanted[at][0]]
    raise PlanError(
        f"{saved.path}: it lacks a step ({missing.kind} for job {missing.job}) that the state "
        f"and the specs call for; {edited}"
    )


# What a refresh learns of a batch (`apply.refresh.refreshed`), the rest being the state's.
_REFRESHED = ("processing_status", "created_at", "expires_at", "ended_at", "archived_at",
              "results_expire_at", "request_counts", "drift", "pruned_at")  # fmt: skip
_RANK = {kind: rank for rank, kind in enumerate(STEP_ORDER)}


def _identities(steps: Sequence[Step]) -> list[tuple[int, tuple]]:
    """(index, identity) of each step, in plan order (by kind), and within a kind by job and
    batch: the order a state's rows come in (a PostgreSQL table's heap) is not the plan's."""
    keyed = [(i, _step_identity(s)) for i, s in enumerate(steps)]
    return sorted(keyed, key=lambda p: (_RANK[type(steps[p[0]])], *_place(steps[p[0]])))


def _place(step: Step) -> tuple[str, str]:
    """A step's job and the batch (or intent, or old job) it acts on; submits keep their order."""
    where = getattr(step, "batch_id", None) or getattr(step, "intent_id", None)
    return step.job, where or getattr(step, "from_job", "")


def _step_identity(step: Step) -> tuple:
    """What a step does, without what is recomputed on load (costs, sizes, reasons' wording)."""
    if isinstance(step, SubmitBatch):
        items = tuple((i.key, i.custom_id, i.fingerprint, i.reason, i.attempt) for i in step.items)
        return ("submit", step.job, step.betas, items)
    if isinstance(step, Reuse):
        return ("reuse", step.job, tuple(sorted((i.key, i.fingerprint, i.result_id or 0) for i in step.items)))  # fmt: skip
    if isinstance(step, Forget):
        return ("forget", step.job, tuple(sorted(step.keys)), tuple(sorted(step.remembered)))
    return (type(step).__name__, *dataclasses.astuple(step))


class _Fields:
    """The fields of one JSON object of a plan file, each checked for the type batchops writes as
    it is read. The digest proves a file whole, not that batchops wrote it: a field of the wrong
    type is refused with the file and line named, never read letter by letter or met later as an
    AttributeError."""

    def __init__(self, entry: Any, where: str, what: str):
        if not isinstance(entry, dict):
            raise PlanError(f"{where}: {what} is not an object: the file is damaged")
        self.entry: dict[str, Any] = entry
        self.where = where
        self.what = what

    def damaged(self, name: str, kind: str) -> PlanError:
        return PlanError(f"{self.where}: {self.what}: {name} is not {kind}: the file is damaged")

    def _get(self, name: str, fits: Callable[[Any], bool], kind: str, optional: bool) -> Any:
        value = self.entry.get(name)
        if fits(value) or (optional and value is None):
            return value
        raise self.damaged(name, kind)

    def text(self, name: str) -> str:
        return self._get(name, _is_text, "text", False)

    def text_or_none(self, name: str) -> str | None:
        return self._get(name, _is_text, "text", True)

    def count(self, name: str) -> int:
        """An int of 0 or more, never a bool."""
        return self._get(name, _is_count, "a count", False)

    def count_or_none(self, name: str) -> int | None:
        return self._get(name, _is_count, "a count", True)

    def amount_or_none(self, name: str) -> float | None:
        """A finite number of 0 or more (dollars), never a bool."""
        return self._get(name, _is_amount, "an amount", True)

    def texts(self, name: str) -> tuple[str, ...]:
        return tuple(self._get(name, _is_texts, "a list of text", False))

    def texts_or_none(self, name: str) -> tuple[str, ...] | None:
        value = self._get(name, _is_texts, "a list of text", True)
        return None if value is None else tuple(value)

    def objects(self, name: str) -> list[_Fields]:
        """A list of objects, each a _Fields."""
        value = self.entry.get(name)
        if not isinstance(value, list):
            raise self.damaged(name, "a list")
        return [_Fields(v, self.where, f"{self.what}: an entry of {name}") for v in value]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_amount(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _json(raw: bytes, path: Path, n: int) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise PlanError(f"{path}: line {n} is not JSON: the file is damaged") from None


def _check_digest(data: bytes, lines: list[bytes], path: Path) -> None:
    if len(lines) < 3 or lines[-1] != b"":
        raise PlanError(f"{path}: truncated (no end line); make a new plan")
    end = _json(lines[-2], path, len(lines) - 1)
    if not isinstance(end, dict) or end.get("kind") != END:
        raise PlanError(f"{path}: truncated (no end line); make a new plan")
    content = data[: len(data) - len(lines[-2]) - 1]
    digest = DIGEST_PREFIX + hashlib.sha256(content).hexdigest()
    if end.get("digest") != digest or end.get("lines") != len(lines) - 2:
        raise PlanError(f"{path}: its content does not match its digest: the file was edited")


def _step(
    entry: dict[str, Any],
    path: Path,
    n: int,
    by_key: dict[tuple[str, str], DesiredItem] | None = None,
) -> Step:
    kind = entry.get("action")
    if not isinstance(kind, str):
        raise PlanError(f"{path}: line {n}: unknown step {kind!r}")
    f = _Fields(entry, f"{path}: line {n}", f"the {kind} step")
    if kind == "reuse":
        return _reuse_step(f, by_key or {})
    if kind == "submit":
        return SubmitBatch(f.text("job"), f.texts("betas"), (), f.count("request_bytes"))
    if kind == "adopt":
        return ResolveIntent(
            f.text("intent_id"), f.text("job"), f.count("request_count"), f.text("reason")
        )
    if kind == "move":
        return Move(f.text("from_job"), f.text("job"), f.text("reason"))
    if kind == "harvest":
        return Harvest(f.text("batch_id"), f.text("job"), f.text("reason"))
    if kind == "requeue":
        return Requeue(
            f.text("batch_id"), f.text("job"), f.text("reason"), f.count("items"), f.text("drift")
        )
    if kind == "forget":
        return Forget(f.text("job"), f.texts("keys"), f.texts("remembered"))
    if kind == "cancel":
        return Cancel(f.text("batch_id"), f.text("job"), f.text("reason"))
    if kind == "prune":
        return Prune(f.text("batch_id"), f.text("job"), f.text("reason"))
    raise PlanError(f"{path}: line {n}: unknown step {kind!r}")


def _reuse_step(step: _Fields, by_key: dict[tuple[str, str], DesiredItem]) -> Reuse:
    """A reuse step, if each of its items is exactly one the specs render now."""
    job = step.text("job")
    items = []
    for raw in step.objects("items"):
        key, custom_id, result_id = raw.text("key"), raw.text("custom_id"), raw.count("result_id")
        wanted = by_key.get((job, key))
        if (
            wanted is None
            or wanted.custom_id != custom_id
            or wanted.fingerprint != raw.text("fingerprint")
        ):
            raise PlanError(
                f"{step.where}: reuse of {custom_id!r} is not for an item of job "
                f"{job} as the specs render it now; refusing the plan"
            )
        saved = wanted.estimate.expected if wanted.estimate is not None else wanted.cost_usd
        items.append(
            ReuseItem(
                job,
                key,
                wanted.custom_id,
                wanted.fingerprint,
                result_id,
                "same request answered before",
                saved,
            )  # fmt: skip
        )
    return Reuse(job, tuple(items))


def _verified(
    line: Any,
    step: SubmitBatch,
    by_key: dict[tuple[str, str], DesiredItem],
    path: Path,
    n: int,
) -> SubmitItem:
    """The request on line n, as a SubmitItem, if it is exactly one the specs render now."""
    if not isinstance(line, dict) or not isinstance(line.get("params"), dict):
        raise PlanError(f"{path}: line {n}: not a request")
    key, custom_id = line.get("key"), line.get("custom_id")
    wanted = by_key.get((step.job, key)) if isinstance(key, str) else None
    if wanted is None or wanted.custom_id != custom_id:
        raise PlanError(
            f"{path}: line {n}: request {custom_id!r} is not an item of job {step.job} "
            "in the specs; refusing the plan"
        )
    actual = fingerprint(line["params"], step.betas)
    if actual != wanted.fingerprint or line.get("fingerprint") != wanted.fingerprint:
        raise PlanError(
            f"{path}: line {n}: request {custom_id!r} is not what the specs render for job "
            f"{step.job} item {key} (it was edited, or the specs changed); refusing the plan"
        )
    attempt = line.get("attempt")
    if not _is_count(attempt) or attempt < 1:
        raise PlanError(f"{path}: line {n}: bad attempt number")
    reason = line.get("reason")
    if not isinstance(reason, str):
        raise PlanError(f"{path}: line {n}: bad reason")
    size = request_size_of(custom_id, line["params"])
    return SubmitItem(
        step.job, key, custom_id, wanted.fingerprint, reason, attempt,
        wanted.cost_usd, size, estimate=wanted.estimate,
    )  # fmt: skip


def _plan(shape: _Fields, steps: list[Step], desired: Desired) -> Plan:
    """The plan object: steps as verified, costs recomputed from the specs (never from the file)."""
    budgets = {j.name: j.budget_usd for j in desired.jobs}
    notes = {j.name: j.cost_note for j in desired.jobs}
    bases = {j.name: j.output_basis for j in desired.jobs}
    batches: dict[str, list[SubmitBatch]] = {}
    reused: dict[str, list[ReuseItem]] = {}
    for step in steps:
        if isinstance(step, SubmitBatch):
            batches.setdefault(step.job, []).append(step)
        elif isinstance(step, Reuse):
            reused.setdefault(step.job, []).extend(step.items)
    by_key = {(j.name, i.key): i for j in desired.jobs for i in j.items}
    jobs = []
    for entry in shape.objects("jobs"):
        name = entry.text("name")
        sent = [i for b in batches.get(name, []) for i in b.items]
        waiting = []  # fan-outs: informational, no step (they reuse a later harvest)
        forgets = []
        for a in entry.objects("actions"):
            action = a.text("action")
            if action == "forget":
                forgets.append(ForgetItem(name, a.text("key"), a.text("reason")))
                continue
            wanted = by_key.get((name, a.text("key")))
            if action == "reuse" and a.count_or_none("result_id") is None and wanted:
                saved = wanted.estimate.expected if wanted.estimate else wanted.cost_usd
                waiting.append(
                    ReuseItem(
                        name,
                        wanted.key,
                        wanted.custom_id,
                        wanted.fingerprint,
                        None,
                        a.text("reason"),
                        saved,
                    )  # fmt: skip
                )
        reuses = [*reused.get(name, []), *waiting]
        expected, high = job_costs(batches.get(name, []))
        jobs.append(
            JobPlan(
                name,
                _counts(entry),
                (*sent, *reuses, *forgets),
                tuple(
                    FailedItem(f.text("key"), f.text_or_none("error_type"), f.text("message"))
                    for f in entry.objects("failed")
                ),
                round(high, 6),
                budgets.get(name),
                notes.get(name),
                round(expected, 6),
                round(sum(r.saved_usd for r in reuses), 6),
                round(cache_saving(batches.get(name, []), expected), 6),
                bases.get(name),
                # shown, never run: items changed while in flight are sent by a later plan,
                # which counts their cost against the budget itself (written by batchops 0.1
                # before these: none)
                deferred=entry.count_or_none("deferred_items") or 0,
                deferred_usd=entry.amount_or_none("deferred_cost_usd") or 0.0,
            )
        )
    return Plan(
        _created_at(shape),
        shape.text_or_none("lineage"),
        shape.count("serial"),
        shape.text("spec_digest"),
        tuple(jobs),
        tuple(steps),
        notes=shape.texts("notes"),
        offline_note=shape.text_or_none("offline_note"),
        job_names=shape.texts_or_none("job_names"),
        write_id=shape.text_or_none("write_id"),
    )


def _counts(job: _Fields) -> dict[str, int]:
    """A job's item counts: one for each item state, as the views read them."""
    counts = job.entry.get("counts")
    if (
        not isinstance(counts, dict)
        or sorted(counts) != sorted(ITEM_STATES)
        or not all(_is_count(v) for v in counts.values())
    ):
        raise job.damaged("counts", "a count of each item state")
    return dict(counts)


def _created_at(shape: _Fields) -> datetime:
    try:
        created = parse_time(shape.text("created_at"))
    except ValueError:
        created = None
    if created is None or created.tzinfo is None:
        raise shape.damaged("created_at", "a time")
    return created
