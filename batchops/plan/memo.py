"""The plan memo: a plan with nothing to do, kept between runs, so a no-op costs next to nothing.

With a million items all answered, `plan` and `apply` find nothing to do, yet making that plan
means reading a million rendered rows and a million state records and diffing them (seconds).
The memo keeps such a plan (no steps, no item actions: counts, failures and estimates only) in
`.batchops-cache/plans/` and serves it again while everything the plan is a function of is the
same:

- the specs of the jobs in scope, as the rows cache sees them (each job's definition digest, its
  data file's identity: stat, or sha256 when the stat moved), the `moved` entries, the job scope,
  the batch limits, the price table (all of it) and today's date;
- batchops itself: its version and the source of every module;
- the state: its location, lineage, serial and write id (every write transaction bumps the one
  and sets the other anew: two copies of a state are told apart however their serials move),
  and the batches and open intents the diff sees (after a refresh's view of them);
- time: the diff judges results expiry and the prune margin against `now`; the memo records the
  first moment any such judgement on these batches could change, and is not served from then on.

A plan that sends, harvests or forgets anything is not kept: apply needs the rendered requests
for it anyway, and its work costs far more than the plan. `--replace` is never served from the
memo. A memo file carries the rows cache's keyed hash (the key lives outside the project), is
written atomically, and is kept only when it reads back as the very plan it holds. Kept only for
jobs of MIN_ITEMS items or more in total; `BATCHOPS_CACHE=off` turns it off with the rows cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson

import batchops
from batchops.clock import iso, parse_time
from batchops.plan.actions import FailedItem, JobPlan, Plan
from batchops.plan.build import plan_from
from batchops.plan.diff import DEFAULT_PRUNE_MARGIN, BatchLimits
from batchops.pricing import PriceTable
from batchops.spec import cache
from batchops.spec.desired import Desired, select_jobs
from batchops.spec.model import Job, Project
from batchops.state.api import StateReader
from batchops.state.records import BatchRecord

FORMAT = "batchops-plan-memo-v1"
MIN_ITEMS = 10_000  # fewer items plan in a fraction of a second: no memo is kept for them
MAX_BYTES = 64 << 20  # a memo file larger than this was not written by batchops


class Memo:
    """The memo of one command's plans: what they depend on apart from the state, worked out
    once (without rendering a row), and the file they are kept in."""

    def __init__(
        self,
        project: Project,
        jobs: Sequence[Job],
        all_jobs_in_scope: bool,
        prices: PriceTable,
        today: date,
    ):
        self.root = Path(project.root)
        self.jobs = list(jobs)
        self.all_jobs_in_scope = all_jobs_in_scope
        self.moves = [[m.old, m.new] for m in project.moves]
        self.prices = prices
        self.today = today
        self._inputs: str | None = None
        self._data_ok: dict[str, bool] = {}  # recorded identity → whether the files match it

    @staticmethod
    def usable(jobs: Iterable[Job]) -> bool:
        # attached files are read anew on each render: their bytes are not part of any identity
        return cache.enabled() and not any(j.attachments for j in jobs)

    # -- identity

    def inputs(self, limits: BatchLimits) -> str:
        """Digest of everything the plan depends on but the data files' content and the state."""
        if self._inputs is None:
            parts = {
                "format": FORMAT,
                "version": batchops.__version__,
                "code": _code_digest(),
                "root": str(self.root),
                "jobs": [[j.name, cache.definition_digest(j, self.prices)] for j in self.jobs],
                "all_jobs_in_scope": self.all_jobs_in_scope,
                "moves": self.moves,
                "prices": vars(self.prices),
                "today": self.today.isoformat(),
            }
            self._inputs = _digest(parts)
        return _digest([self._inputs, limits.max_requests, limits.max_bytes])

    def data_stats(self) -> dict[str, list[int] | None]:
        """Each job's data file stat (taken before a render: see `save`)."""
        return {j.name: cache.stat_of(j.source_file()) for j in self.jobs}

    def _same_data(self, recorded: Any, written_at: float) -> bool:
        seen = _digest([recorded, written_at])
        if seen not in self._data_ok:
            ok = isinstance(recorded, dict) and set(recorded) == {j.name for j in self.jobs}
            for job in self.jobs if ok else ():
                header = {"data": recorded[job.name], "written_at": written_at}
                if not cache.same_data(header, job.source_file()):
                    ok = False
                    break
            self._data_ok[seen] = ok
        return self._data_ok[seen]

    def path(self, location: str) -> Path:
        scope = _digest([location, [j.name for j in self.jobs], self.all_jobs_in_scope])
        return cache.cache_dir(self.root) / "plans" / f"{scope[7:31]}.json"

    # -- the file

    def load(self, state: str, location: str, now: datetime, limits: BatchLimits) -> Plan | None:
        """The kept plan for this state identity, made at `now`; None when there is none that
        can be trusted and used."""
        key = cache.mac_key()
        if key is None:
            return None
        path = self.path(location)
        try:
            # a regular file of a sane size: a symlink planted in a pull request (to /dev/zero,
            # say) must not be read without end
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
                return None
            data = path.read_bytes()[:MAX_BYTES]
        except OSError:
            return None
        body, _, end = data.partition(b"\n")
        expected = b'{"mac":"' + _mac(key, body).encode() + b'"}\n'
        if not hmac.compare_digest(end, expected):
            return None  # damaged, or not written with this user's key
        try:
            entry = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(entry, dict) or entry.get("kind") != FORMAT:
            return None
        if entry.get("inputs") != self.inputs(limits) or entry.get("state") != state:
            return None
        until = parse_time(entry.get("valid_until"))
        if until is not None and now >= until:
            return None  # a time-based judgement of the diff may differ now
        if not self._same_data(entry.get("data"), entry.get("written_at") or 0.0):
            return None
        try:
            plan = plan_from_dict(entry["plan"])
        except (KeyError, TypeError, ValueError):
            return None
        return dataclasses.replace(plan, created_at=now)

    def save(
        self,
        plan: Plan,
        state: str,
        location: str,
        until: datetime | None,
        limits: BatchLimits,
        stats: dict[str, list[int] | None],
        started: float,
    ) -> None:
        """Keep `plan`, made from data files whose stat was `stats` before the render began at
        `started` (a file that moved since is not vouched for: nothing is kept)."""
        key = cache.mac_key()
        if key is None or self.data_stats() != stats:
            return
        data = {}
        for job in self.jobs:
            source = job.source_file()
            data[job.name] = (
                None
                if source is None
                else {"stat": stats[job.name], "sha256": cache.content_digest(source)}
            )
        shape = plan_to_dict(plan)
        try:
            if plan_from_dict(orjson.loads(orjson.dumps(shape))) != plan:
                return  # a field this memo cannot carry faithfully: never serve an approximation
        except (KeyError, TypeError, ValueError):
            return
        entry = {
            "kind": FORMAT,
            "inputs": self.inputs(limits),
            "state": state,
            "valid_until": iso(until),
            "written_at": started,
            "data": data,
            "plan": shape,
        }
        body = orjson.dumps(entry)
        path = self.path(location)
        directory = path.parent
        # A symlink planted in a pull request must not send this write out of the project.
        if any(p.is_symlink() for p in (directory.parent, directory, path)):
            return
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, exist_ok=True)
            ignore = directory.parent / ".gitignore"
            if not ignore.exists() and not ignore.is_symlink():
                ignore.write_text("# batchops's cache: never commit it\n*\n", encoding="utf-8")
            # a name no one can guess, made new (O_EXCL): never a planted symlink written through
            import tempfile  # here: a plan that keeps nothing never loads it

            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(body + b"\n" + b'{"mac":"' + _mac(key, body).encode() + b'"}\n')
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()


class Planner:
    """The desired items of one command, rendered only when the memo cannot answer for them.

    Stands where a `Desired` is asked for its project, scope and jobs: `project`, `names` and
    `all_jobs_in_scope` cost nothing; `desired` (and `jobs`, `spec_digest`) render on first use.
    """

    def __init__(
        self,
        project: Project,
        job_names: Iterable[str] | None,
        render: Callable[[], Desired],
        memo: Memo | None = None,
    ):
        names = list(job_names or [])
        self.project = project
        self.names = [j.name for j in select_jobs(project, names)]  # unknown names: refused here
        self.all_jobs_in_scope = not names
        self._render = render
        self._desired: Desired | None = None
        self._stats: dict[str, list[int] | None] | None = None
        self._started = 0.0
        self.memo = memo

    @classmethod
    def of(cls, desired: Desired) -> Planner:
        """A planner of items rendered already (a saved plan's, or with `--replace`): no memo."""
        planner = cls(desired.project, None, lambda: desired)
        planner.names = [j.name for j in desired.jobs]
        planner.all_jobs_in_scope = desired.all_jobs_in_scope
        planner._desired = desired
        return planner

    @property
    def desired(self) -> Desired:
        if self._desired is None:
            if self.memo is not None:
                self._stats, self._started = self.memo.data_stats(), time.time()
            self._desired = self._render()
        return self._desired

    @property
    def jobs(self):
        return self.desired.jobs

    @property
    def spec_digest(self) -> str:
        return self.desired.spec_digest

    @property
    def spool(self):
        """The request lines kept by the render (None when nothing was rendered or kept)."""
        return self._desired.spool if self._desired is not None else None

    @property
    def replace(self) -> frozenset[tuple[str, str]]:
        return self._desired.replace if self._desired is not None else frozenset()

    def spec_job(self, name: str) -> Job:
        return next(j for j in self.project.jobs if j.name == name)

    def drop_replace(self) -> None:
        """`--replace` items are sent once, by the first cycle."""
        if self._desired is not None and self._desired.replace:
            self._desired = dataclasses.replace(self._desired, replace=frozenset())

    def answered(self, reader: StateReader, now: datetime, limits: BatchLimits) -> bool:
        """Whether the memo holds the plan for `reader` as it stands (nothing is rendered)."""
        state = self._state(reader, None)
        return (
            self.memo is not None
            and state is not None
            and (self.memo.load(state, reader.location, now, limits) is not None)
        )

    def plan(
        self,
        reader: StateReader,
        now: datetime,
        remote: dict[str, BatchRecord] | None = None,
        limits: BatchLimits | None = None,
    ) -> Plan:
        """`plan_from` of the desired items, served from the memo when nothing changed."""
        limits = limits or BatchLimits()
        memo, state = self.memo, self._state(reader, remote)
        if memo is not None and state is not None:
            kept = memo.load(state, reader.location, now, limits)
            if kept is not None:
                return kept
        desired = self.desired
        plan = plan_from(reader, desired, now, remote, limits)
        if memo is None or state is None or self._stats is None or not _no_op(plan, desired):
            return plan
        batches = _seen_batches(reader, remote)
        until = valid_until(batches)
        # Kept only if no write landed while the diff read the state (each one bumps the serial).
        if (until is None or now < until) and _state_identity(reader, batches) == state:
            memo.save(plan, state, reader.location, until, limits, self._stats, self._started)
        return plan

    def _state(self, reader: StateReader, remote: dict[str, BatchRecord] | None) -> str | None:
        """The state's identity as this plan would see it; None: the memo does not apply."""
        if self.memo is None or self.replace or reader.lineage is None:
            return None
        return _state_identity(reader, _seen_batches(reader, remote))


def _no_op(plan: Plan, desired: Desired) -> bool:
    """A plan worth keeping: nothing to do, for enough items that planning them takes a while."""
    return (
        not plan.steps
        and not any(j.actions for j in plan.jobs)
        and not plan.notes
        and plan.offline_note is None
        and not desired.replace
        and sum(len(j.items) for j in desired.jobs) >= MIN_ITEMS
    )


def valid_until(batches: Iterable[BatchRecord]) -> datetime | None:
    """The first moment the diff's judgement on time (results within the prune margin of expiry)
    could change for these batches; None: never.

    Whether results are lost is the server's word, never the clock's (`diff.lost_batches`). A
    finished batch is judged without the clock; every other one with a results expiry may be
    pruned from its expiry less the prune margin (see `plan.diff`)."""
    moments = [
        b.results_expire_at - DEFAULT_PRUNE_MARGIN
        for b in batches
        if not b.finished and b.results_expire_at is not None
    ]
    return min(moments, default=None)


# --- the plan as the memo keeps it ---------------------------------------------------------------


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """A plan with no steps, as JSON: its every field (a field it cannot carry fails `save`'s
    read-back check, and the plan is not kept)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        if f.name == "created_at":
            value = iso(value)
        elif f.name == "jobs":
            value = [_job_to_dict(j) for j in value]
        out[f.name] = value
    return out


def _job_to_dict(job: JobPlan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(job):
        value = getattr(job, f.name)
        if f.name == "failed":
            value = [dataclasses.asdict(x) for x in value]
        out[f.name] = value
    return out


def plan_from_dict(shape: dict[str, Any]) -> Plan:
    fields = {}
    for name, value in shape.items():
        if name == "created_at":
            value = parse_time(value)
        elif name == "jobs":
            value = tuple(_job_from_dict(j) for j in value)
        elif isinstance(value, list):
            value = tuple(value)
        fields[name] = value
    return Plan(**fields)


def _job_from_dict(shape: dict[str, Any]) -> JobPlan:
    fields = {}
    for name, value in shape.items():
        if name == "failed":
            value = tuple(FailedItem(**x) for x in value)
        elif isinstance(value, list):
            value = tuple(value)
        fields[name] = value
    return JobPlan(**fields)


# --- helpers -------------------------------------------------------------------------------------


def _seen_batches(reader: StateReader, remote: dict[str, BatchRecord] | None) -> list[BatchRecord]:
    """The batches as the diff sees them: recorded, overridden by a refresh's view."""
    batches = reader.batches()
    return [remote.get(b.id, b) for b in batches] if remote else list(batches)


def _state_identity(reader: StateReader, batches: list[BatchRecord]) -> str:
    return _digest(
        {
            "location": reader.location,
            "lineage": reader.lineage,
            "serial": reader.serial,
            "write_id": reader.write_id,
            "batches": [dataclasses.asdict(b) for b in batches],
            "intents": [dataclasses.asdict(i) for i in reader.open_intents()],
        }
    )


_CODE_DIGEST: str | None = None


def _code_digest() -> str:
    """Every module of batchops: a development checkout never serves a plan older code made."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        package = Path(batchops.__file__).parent
        digest = hashlib.sha256()
        for path in sorted(package.rglob("*.py")):
            with contextlib.suppress(OSError):
                name = path.relative_to(package).as_posix().encode()
                digest.update(name + b"\0" + path.read_bytes() + b"\0")
        _CODE_DIGEST = digest.hexdigest()
    return _CODE_DIGEST


def _digest(value: Any) -> str:
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _mac(key: bytes, body: bytes) -> str:
    return hashlib.blake2b(body, key=key, digest_size=32).hexdigest()
