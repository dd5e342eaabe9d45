"""The library's front door: one `Context` per invocation, one method per command.

The CLI builds a Context from its options and calls one method; tests do the same without click.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchops.clock import utcnow
from batchops.errors import BatchopsError, NoCredentials, PlanError, StateError, stop_if_requested
from batchops.lazyclass import dataclass
from batchops.pricing import PriceTable
from batchops.safetext import terminal
from batchops.spec import desired as desired_mod
from batchops.spec.desired import Desired, DesiredItem, DesiredJob, ItemTable
from batchops.spec.model import Project, load_project
from batchops.state import is_postgres, open_reader, open_writer, state_exists

# The planner and the state's records are imported where they are used: `validate` needs
# neither, and a cold start pays for every module it loads.
if TYPE_CHECKING:
    from batchops.apply.report import ApplyReport, Progress
    from batchops.plan.actions import Plan
    from batchops.plan.diff import BatchLimits
    from batchops.plan.memo import Planner
    from batchops.plan.saved import SavedPlan
    from batchops.remote import BatchesClient
    from batchops.state.api import StateReader
    from batchops.state.records import BatchRecord, LockInfo, StateMark


@dataclass
class Settings:
    jobs_path: Path = Path("jobs")
    state_path: Path | str = Path("state/batchops.db")  # a file, or a postgresql:// URL
    prices_file: Path | None = None
    prices_root: Path | None = None  # batchops.toml named prices_file: it must lie inside this
    root: Path | None = None
    base_url: str | None = None  # None: the SDK's own default (ANTHROPIC_BASE_URL or the real API)
    api_key: str | None = None  # None: the SDK's own default (ANTHROPIC_API_KEY); never stored
    max_batch_requests: int = 100_000
    max_batch_bytes: int = 250_000_000
    emulator: bool = False  # --emulator: its batches file beside the state is protected too
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_credentials(self) -> bool:
        return bool(
            self.api_key
            or os.environ.get("ANTHROPIC_API_KEY")
            or os.environ.get("ANTHROPIC_AUTH_TOKEN")
        )

    @property
    def shown_state(self) -> str:
        """The state's location for messages and output: a PostgreSQL URL without its password."""
        from batchops.state import shown

        return shown(self.state_path)

    @property
    def limits(self) -> BatchLimits:
        from batchops.plan.diff import BatchLimits

        return BatchLimits(self.max_batch_requests, self.max_batch_bytes)


@dataclass(frozen=True)
class ValidatedJob:
    name: str
    spec_file: str
    source: str
    items: int
    model: str | None
    estimated_cost_usd: float  # the ceiling, as a plan's `up to`
    cost_note: str | None
    warnings: tuple[str, ...] = ()  # what the API would refuse (batchops.apirules), checked offline
    expected_cost_usd: float = 0.0  # the central estimate, as a plan's `est. cost`


WARN_SAMPLE = 1_000  # items checked per job: enough to catch a template's mistake, cheap at 1M


def api_warnings(desired: Desired, job_name: str) -> list[str]:
    """What the API would refuse in a job's requests, found offline with the emulator's own rules
    (unknown models, a thinking budget at or over max_tokens, unknown top-level params …).

    Warnings, not errors: a model newer than batchops' list is accepted by the real API. The
    first WARN_SAMPLE items are checked; each distinct problem is reported once with the first
    item that has it.
    """
    from batchops.apirules import request_problems
    from batchops.spec.desired import items_for

    job = desired.spec_job(job_name)
    shown = _rel(job.spec_file, desired.project.root)
    seen: dict[str, str] = {}
    for count, item in enumerate(items_for(desired.project, job_name)):
        if count >= WARN_SAMPLE:
            break
        for problem in request_problems(item.params):
            seen.setdefault(problem, item.key)
    return [
        f"{shown}: job {job_name}: item {key}: the API would refuse this request: {problem}"
        for problem, key in seen.items()
    ]


class Context:
    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow):
        self.settings = settings
        self.clock = clock
        self._prices: PriceTable | None = None

    # -- inputs
    @property
    def prices(self) -> PriceTable:
        if self._prices is None:
            user = self.settings.prices_file or os.environ.get("BATCHOPS_PRICES")
            self._prices = PriceTable.load(Path(user) if user else None, self.settings.prices_root)
        return self._prices

    def project(self) -> Project:
        return load_project(
            Path(self.settings.jobs_path), self.settings.root, protected=self.protected_paths()
        )

    def protected_paths(self) -> list[Path]:
        """Files no job output may replace: the state file (with the emulator's batches file
        beside it under --emulator) and the prices file."""
        paths: list[Path] = []
        if not is_postgres(self.settings.state_path):
            state = Path(self.settings.state_path)
            paths.append(state)
            if self.settings.emulator:
                paths.append(state.with_name(state.stem + "-remote.db"))
        prices = self.settings.prices_file or os.environ.get("BATCHOPS_PRICES")
        if prices:
            paths.append(Path(prices))
        return paths

    def desired(
        self,
        job_names: Iterable[str] | None = None,
        replace_items: Iterable[str] = (),
        *,
        priors: bool = True,
    ) -> Desired:
        """The specs' items; with `priors`, estimates expect replies as long as the state's
        results of these jobs (or of similar ones) were (validate reads no state)."""
        project = self.project()
        outputs = self.output_priors(project) if priors else None
        desired = desired_mod.collect(project, self.prices, self.clock().date(), job_names, outputs)
        if replace_items:
            desired = replace(desired, replace=replacements(desired, replace_items))
        return desired

    def planner(
        self,
        job_names: Iterable[str] | None = None,
        replace_items: Iterable[str] = (),
        keep_requests: bool = False,
    ) -> Planner:
        """The desired items of a command, rendered only when the plan memo cannot answer (with
        `keep_requests`, keeping the request lines they render, for a saved plan)."""
        from batchops.plan.memo import Memo, Planner

        replace_items = list(replace_items)
        if replace_items:  # the keys are checked against the rendered items: render now
            return Planner.of(self.desired(job_names, replace_items))
        project = self.project()
        today = self.clock().date()
        names = list(job_names or [])
        spool = None
        if keep_requests:
            from batchops.spec.spool import RequestSpool

            spool = RequestSpool()
        planner = Planner(
            project,
            names,
            lambda: desired_mod.collect(
                project, self.prices, today, names, self.output_priors(project), spool
            ),
        )
        jobs = [project.job(n) for n in planner.names]
        if Memo.usable(j for j in jobs if j is not None):
            planner.memo = Memo(project, [j for j in jobs if j], not names, self.prices, today)
        return planner

    def reader(self):
        return open_reader(self.settings.state_path)

    def output_priors(self, project: Project) -> dict[str, dict[str, tuple[int, float]]]:
        """job → model → (results, mean output tokens) of the specs' jobs, from the state.

        Nothing when the state cannot be read now (another apply creating it, say): the command
        opens it again and reports what is wrong there, under its lock."""
        try:
            reader = self.reader()
        except StateError:
            return {}
        try:
            if not reader.exists:
                return {}
            return reader.output_token_means(j.name for j in project.jobs)
        except StateError:
            return {}
        finally:
            reader.close()

    # -- commands
    def validate(self, job_names: Iterable[str] | None = None) -> list[ValidatedJob]:
        """Parse every spec and render every item; no network, no state."""
        desired = self.desired(job_names, priors=False)
        out = []
        for dj in desired.jobs:
            job = desired.spec_job(dj.name)
            expected, ceiling = one_batch_estimate(
                dj.items, self.settings.max_batch_requests, self.settings.max_batch_bytes
            ) or job_estimate(dj, self.settings.limits)
            out.append(
                ValidatedJob(
                    dj.name,
                    _rel(job.spec_file, desired.project.root),
                    job.kind,
                    len(dj.items),
                    job.model,
                    round(ceiling, 6),
                    dj.cost_note,
                    tuple(api_warnings(desired, dj.name)),
                    round(expected, 6),
                )
            )
        return out

    def plan(
        self,
        job_names: Iterable[str] | None = None,
        refresh: bool = False,
        replace_items: Iterable[str] = (),
        keep_requests: bool = False,
    ) -> tuple[Plan, Planner]:
        """Diff specs against state (read-only); with `refresh`, remote batches are polled first.
        `replace_items` (`JOB:KEY`) are sent again on purpose. With the plan comes what it was
        planned from (its `desired` items rendered on first use: the plan memo may have answered),
        and with `keep_requests` the request lines of that render, for `plan.saved.save`."""
        planner = self.planner(job_names, replace_items, keep_requests)
        reader = self.reader()
        try:
            remote: dict[str, BatchRecord] | None = None
            notes: list[str] = []
            from batchops.plan.diff import DEFAULT_PRUNE_MARGIN

            now = self.clock()
            polled = [b for b in reader.batches() if b.needs_refresh(now, DEFAULT_PRUNE_MARGIN)]
            if refresh and self.settings.has_credentials and reader.exists and polled:
                from batchops.apply.refresh import remote_view

                client = self.client()
                try:
                    remote, notes = remote_view(polled, client, now)
                finally:
                    client.close()
            plan = planner.plan(reader, self.clock(), remote, self.settings.limits)
            offline_note = None
            if remote is None:
                moving = [
                    b for b in polled if b.processing_status != "ended" or b.harvested_at is None
                ]
                if moving:
                    why = "--no-refresh" if not refresh else "no ANTHROPIC_API_KEY"
                    offline_note = (
                        f"1 batch in flight was not refreshed ({why}): the plan uses its last "
                        "recorded state"
                        if len(moving) == 1
                        else f"{len(moving)} batches in flight were not refreshed ({why}): "
                        "the plan uses their last recorded state"
                    )
            observed = tuple(remote.values()) if remote else ()
            plan = replace(plan, notes=tuple(notes), offline_note=offline_note, observed=observed)
            return plan, planner
        finally:
            reader.close()

    def client(self) -> BatchesClient:
        """The API client; refuses to start without credentials (before anything is written)."""
        if not self.settings.has_credentials:
            raise NoCredentials("no API key: set ANTHROPIC_API_KEY (or use --emulator)")
        from batchops.remote import BatchesClient

        return BatchesClient(self.settings.base_url, self.settings.api_key)

    def load_plan(self, plan_file: Path) -> SavedPlan:
        """Read and verify a saved plan against the specs as they render now (no network)."""
        from batchops.plan import saved as saved_mod

        return saved_mod.load(plan_file, lambda names: self.desired(names or []))

    def apply(
        self,
        job_names: Iterable[str] | None = None,
        *,
        plan_file: Path | None = None,
        wait: bool = False,
        timeout: float | None = None,
        poll_interval: float = 5.0,
        lock_timeout: float = 0.0,
        confirm: Callable[[Plan], bool] | None = None,
        progress: Progress | None = None,
        submit: bool = True,
        replace_items: Iterable[str] = (),
    ) -> ApplyReport:
        """Reconcile remote batches with the specs (or run a saved plan); see `apply.run`.
        `replace_items` (`JOB:KEY`) are sent again on purpose, once."""
        from batchops.apply.report import NullProgress
        from batchops.apply.run import run_cycles
        from batchops.plan.memo import Planner

        progress = progress or NullProgress()
        job_names = list(job_names or [])
        saved = None
        if plan_file is not None:
            saved = self.load_plan(plan_file)
            made_for = list(saved.plan.job_names or [])
            if job_names and sorted(set(job_names)) != sorted(made_for):
                raise PlanError(
                    f"{saved.path}: --job {', '.join(job_names)} is not what the plan was made "
                    f"for ({', '.join(made_for) or 'every job'}): a saved plan runs the jobs it "
                    "was made for"
                )
            job_names = made_for
            planner = Planner.of(self.desired(job_names))
            # Items a saved plan sends again on purpose are named again by whoever applies it:
            # the file alone (anyone may write one) never makes an answered item paid twice.
            named = replacements(planner.desired, replace_items) if replace_items else frozenset()
            check_replace(saved, named)
            reader = self.reader()
            try:
                check_saved_plan(saved, reader, planner.spec_digest,
                                 reader.plan_applied(saved.plan_id))  # fmt: skip
            finally:
                reader.close()
        else:  # bad specs fail here, before state is touched
            planner = self.planner(job_names, replace_items)
            # Rendered now unless the memo holds the plan for this state: it was made from
            # these very specs and data files, which rendered without a problem then.
            if not self._memo_answers(planner):
                planner.desired  # noqa: B018 (renders)
        client = self.client()  # no credentials: fail before the state is written
        command = "apply" if submit else "refresh"

        def takeover(held: LockInfo) -> None:
            from batchops.state.leases import holder_gone

            # Said as it was judged: a dead holder only on this machine; otherwise its lease
            # expired (on the state's clock), and the process may yet run: stalled, or cut off.
            if holder_gone(held):
                who = f"process {held.pid}, which is no longer running on this host"
            else:
                who = (
                    f"process {held.pid} on {held.host}, whose lease expired unrenewed at "
                    f"{held.expires_at}; if that process still runs, its next write is refused"
                )
            progress.note(f"Taking over a lock left by {who} ({held.describe().split(' (')[0]}).")

        try:
            state = open_writer(
                self.settings.state_path,
                command,
                jobs=None if planner.all_jobs_in_scope else _lease_names(planner),
                lock_timeout=lock_timeout,
                on_takeover=takeover,
            )
            try:
                if saved is not None:
                    from batchops.apply.refresh import remote_claims
                    from batchops.plan.saved import check_steps

                    check_saved_plan(saved, state, planner.spec_digest,
                                     state.plan_applied(saved.plan_id))  # fmt: skip
                    saved = check_steps(saved, state, planner.desired, self.settings.limits)
                    remote_claims(saved, state, client, self.clock())
                    stop_if_requested()  # a lost stop must not use the plan up unrun
                    state.record_plan_applied(saved.plan_id, self.clock())
                report = run_cycles(
                    state,
                    client,
                    planner,
                    clock=self.clock,
                    limits=self.settings.limits,
                    progress=progress,
                    confirm=confirm,
                    saved=saved,
                    submit=submit,
                    wait=wait,
                    timeout=timeout,
                    poll_interval=poll_interval,
                )
            finally:
                state.close()
            # the export module only for a project with an output file to write
            if report.approved and any(j.output is not None for j in planner.project.jobs):
                from batchops.commands.results import write_outputs

                report.outputs = write_outputs(self, job_names, report.final_plan)
            return report
        finally:
            client.close()

    def _memo_answers(self, planner: Planner) -> bool:
        """Whether the plan memo holds `planner`'s plan for the state as it stands (read-only;
        a state another apply is creating right now reads as no answer)."""
        if planner.memo is None:
            return False
        try:
            reader = self.reader()
        except StateError:
            return False
        try:
            return planner.answered(reader, self.clock(), self.settings.limits)
        except StateError:
            return False
        finally:
            reader.close()

    def in_flight(self) -> list[BatchRecord]:
        """Batches the state records as still running or not yet harvested (no network)."""
        reader = self.reader()
        try:
            return [
                b
                for b in reader.batches()
                if not b.finished and (b.processing_status != "ended" or b.harvested_at is None)
            ]
        finally:
            reader.close()

    def unknown_creates(self) -> list[Any]:
        """Creates sent whose answer never came (`status.UnknownCreate`): each may have made a
        batch that runs remotely (no network)."""
        from batchops.commands.status import unknown_creates

        reader = self.reader()
        try:
            return unknown_creates(reader)
        finally:
            reader.close()

    def import_batch(self, job_name: str, batch_id: str, progress: Progress | None = None) -> int:
        """`batchops import JOB BATCH_ID`: adopt a remote batch by hand; returns results stored."""
        from batchops.apply.evaluator import NullProgress
        from batchops.apply.run import import_batch

        desired = self.desired([job_name])
        client = self.client()
        try:
            state = open_writer(self.settings.state_path, "import", jobs=[job_name])
            try:
                return import_batch(
                    state,
                    client,
                    desired,
                    job_name,
                    batch_id,
                    clock=self.clock,
                    progress=progress or NullProgress(),
                )
            finally:
                state.close()
        finally:
            client.close()

    def force_unlock(self, lock_id: str, *, force: bool = False) -> LockInfo:
        """Remove the lock `lock_id`; refused while its holder provably runs on this host,
        unless `force` (a live apply would go on writing beside the next one)."""
        if not state_exists(self.settings.state_path):
            raise StateError(f"{self.settings.shown_state}: no state file")
        reader = self.reader()
        try:
            held = reader.leases()
        finally:
            reader.close()
        if not held:
            raise StateError(f"{self.settings.shown_state}: state is not locked")
        if all(lease.lock_id != lock_id for lease in held):
            raise StateError(
                f"{self.settings.shown_state}: lock id {lock_id!r} does not match the lock "
                f"held ({held[0].describe()})"
            )
        from batchops.state import force_unlock
        from batchops.state.leases import holder_alive

        lease = next(lease for lease in held if lease.lock_id == lock_id)
        if not force and holder_alive(lease):
            raise StateError(
                f"{self.settings.shown_state}: lock {lock_id} is held by process {lease.pid} "
                f"({lease.command}), which is still running on this host; stop it first (its "
                "lease is released when it ends), or pass --force to remove the lock anyway"
            )
        return force_unlock(self.settings.state_path, lock_id)

    def migrate(self) -> StateMark:
        """Upgrade the state's schema (under the lock); where the state stands after it."""
        if not state_exists(self.settings.state_path):
            raise StateError(f"{self.settings.shown_state}: no state file")
        state = open_writer(self.settings.state_path, "state migrate")
        try:
            return state.mark()
        finally:
            state.close()

    def refresh(self, progress: Progress | None = None) -> ApplyReport:
        """Poll remote batches and harvest finished ones; submit nothing."""
        return self.apply(progress=progress, submit=False)


def check_saved_plan(
    saved: SavedPlan, store: StateReader, spec_digest: str, already_applied: bool
) -> None:
    """Refuse a saved plan that no longer matches (before any network call)."""
    store_lineage, store_serial = store.lineage, store.serial
    problems = []
    if already_applied:
        problems.append(f"{saved.path}: this plan was already applied; make a new plan")
    # A plan made before the state file existed applies to the fresh file apply creates for it.
    fresh = saved.lineage is None and store_serial == 0
    if saved.lineage != store_lineage and not fresh:
        problems.append(
            f"{saved.path}: plan was made for state lineage {saved.lineage}, "
            f"but the state file has lineage {store_lineage}"
        )
    if saved.serial != store_serial:
        problems.append(
            f"{saved.path}: state changed since the plan was made (serial "
            f"{saved.serial} → {store_serial}); make a new plan"
        )
    elif saved.plan.write_id != store.write_id and not fresh:
        # the same serial, another history: a copy of the state the plan was made against
        # (`state push`), written since by others, or the state it was copied from
        problems.append(
            f"{saved.path}: state changed since the plan was made (serial {store_serial}, but "
            "written by another copy of the state); make a new plan"
        )
    if saved.spec_digest != spec_digest:
        problems.append(f"{saved.path}: specs changed since the plan was made; make a new plan")
    if problems:
        raise StateError(*problems)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def one_batch_estimate(
    items: Sequence[DesiredItem], max_requests: int, max_bytes: int
) -> tuple[float, float] | None:
    """`job_estimate` of a job whose items all fit one batch, without the planner (which
    `validate` does not load): the splitter makes one batch of them, whose cost is the same in
    any order. None for a job of more than one batch."""
    from batchops.pricing import batch_cost
    from batchops.spec.items import ENVELOPE_BYTES

    if len(items) > max_requests:
        return None
    if isinstance(items, ItemTable):
        profiles, used = items.profiles, items.profile_of
        size = sum(profiles[p][1] for p in used)
        estimates, costs = (profiles[p][2] for p in used), (profiles[p][0] for p in used)
    else:
        size = sum(i.size for i in items)
        estimates, costs = (i.estimate for i in items), (i.cost_usd for i in items)
    if ENVELOPE_BYTES + size > max_bytes:
        return None
    return batch_cost(estimates, costs)


def job_estimate(job: DesiredJob, limits: BatchLimits) -> tuple[float, float]:
    """(expected, ceiling) of sending every item of `job`, estimated as a plan estimates what it
    sends: the same batches, packed for cache hits, one cache write per shared prefix per batch
    and reads for the rest, replies as long as the job's results so far (`validate`: as its
    spec expects). `validate`, `plan` and `status` show the same figures."""
    from batchops.plan.actions import SubmitItems
    from batchops.plan.diff import job_costs, split

    items = SubmitItems(job.name, job.items, range(len(job.items)), [("todo", 1)])
    return job_costs(split(job.name, job.betas, items, limits))


def _lease_names(planner: Planner) -> list[str]:
    """The jobs an apply of `planner` writes: its own, and the old names it moves from."""
    names = list(planner.names)
    return names + [m.old for m in planner.project.moves if m.new in names]


def check_replace(saved: SavedPlan, named: frozenset[tuple[str, str]]) -> None:
    """Refuse a saved plan made with `--replace` unless apply names the very same items."""
    if named == saved.replace:
        return
    made = ", ".join(f"{j}:{k}" for j, k in sorted(saved.replace))
    if not named:
        raise PlanError(
            f"{saved.path}: the plan sends {made} again on purpose (plan --replace); apply it "
            "with the same --replace to confirm"
        )
    raise PlanError(
        f"{saved.path}: --replace {', '.join(f'{j}:{k}' for j, k in sorted(named))} is not what "
        f"the plan was made with ({made or 'no --replace'})"
    )


def replacements(desired: Desired, items: Iterable[str]) -> frozenset[tuple[str, str]]:
    """`JOB:KEY` strings as (job, key), each naming an item of a job in `desired`."""
    out = set()
    problems = []
    keys = {
        j.name: set(j.items.keys() if isinstance(j.items, ItemTable) else (i.key for i in j.items))
        for j in desired.jobs
    }
    for text in items:
        job, sep, key = text.partition(":")
        if not sep or not job or not key:
            problems.append(f"--replace {text!r}: expected JOB:KEY")
        elif job not in keys:
            problems.append(f"--replace {text!r}: no job {job!r} in this run")
        elif key not in keys[job]:
            problems.append(f"--replace {text!r}: job {job} has no item {key!r}")
        else:
            out.add((job, key))
    if problems:
        raise BatchopsError(*(terminal(p) for p in problems))
    return frozenset(out)
