"""The library's front door: one `Context` per invocation, one method per command.

The CLI builds a Context from its options and calls one method; tests do the same without click.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchops.errors import StateError
from batchops.planner import Plan, make_plan
from batchops.pricing import PriceTable
from batchops.spec import desired as desired_mod
from batchops.spec.desired import Desired
from batchops.spec.model import Project, load_project
from batchops.state import BatchRecord, LockInfo, StateReader, StateStore, iso, utcnow

if TYPE_CHECKING:
    from batchops.applier import ApplyReport, Progress
    from batchops.client import BatchesClient


@dataclass
class Settings:
    jobs_path: Path = Path("jobs")
    state_path: Path = Path("state/batchops.db")
    prices_file: Path | None = None
    root: Path | None = None
    base_url: str | None = None  # None: the SDK's own default (ANTHROPIC_BASE_URL or the real API)
    api_key: str | None = None  # None: the SDK's own default (ANTHROPIC_API_KEY); never stored
    max_batch_requests: int = 100_000
    max_batch_bytes: int = 250_000_000
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_credentials(self) -> bool:
        return bool(
            self.api_key
            or os.environ.get("ANTHROPIC_API_KEY")
            or os.environ.get("ANTHROPIC_AUTH_TOKEN")
        )


@dataclass(frozen=True)
class ValidatedJob:
    name: str
    spec_file: str
    source: str
    items: int
    model: str | None
    estimated_cost_usd: float
    cost_note: str | None


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
            self._prices = PriceTable.load(Path(user) if user else None)
        return self._prices

    def project(self) -> Project:
        return load_project(Path(self.settings.jobs_path), self.settings.root)

    def desired(self, job_names: Iterable[str] | None = None) -> Desired:
        return desired_mod.collect(self.project(), self.prices, self.clock().date(), job_names)

    # -- commands
    def validate(self, job_names: Iterable[str] | None = None) -> list[ValidatedJob]:
        """Parse every spec and render every item; no network, no state."""
        desired = self.desired(job_names)
        out = []
        for dj in desired.jobs:
            job = desired.spec_job(dj.name)
            out.append(
                ValidatedJob(
                    dj.name,
                    _rel(job.spec_file, desired.project.root),
                    job.kind,
                    len(dj.items),
                    job.model,
                    round(sum(i.cost_usd for i in dj.items), 6),
                    dj.cost_note,
                )
            )
        return out

    def plan(
        self,
        job_names: Iterable[str] | None = None,
        refresh: bool = False,
    ) -> tuple[Plan, Desired]:
        """Diff specs against state (read-only); with `refresh`, remote batches are polled first."""
        desired = self.desired(job_names)
        reader = StateReader.open(self.settings.state_path)
        try:
            remote: dict[str, BatchRecord] | None = None
            notes: list[str] = []
            if refresh and self.settings.has_credentials and reader.db is not None:
                from batchops.applier import remote_view

                client = self.client()
                try:
                    remote, notes = remote_view(reader.batches(), client, self.clock())
                finally:
                    client.close()
            plan = plan_from(reader, desired, self.clock(), remote)
            offline_note = None
            if remote is None:
                moving = [
                    b
                    for b in reader.batches(unfinished_only=True)
                    if b.processing_status != "ended" or b.harvested_at is None
                ]
                if moving:
                    why = "--no-refresh" if not refresh else "no ANTHROPIC_API_KEY"
                    offline_note = (
                        f"{len(moving)} batches in flight were not refreshed ({why}): "
                        "the plan uses their last recorded state"
                    )
            return replace(plan, notes=tuple(notes), offline_note=offline_note), desired
        finally:
            reader.close()

    def client(self) -> BatchesClient:
        from batchops.client import BatchesClient

        return BatchesClient(self.settings.base_url, self.settings.api_key)

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
    ) -> ApplyReport:
        """Reconcile remote batches with the specs (or send a saved plan); see `applier`."""
        from batchops import planfile
        from batchops.applier import Applier, check_saved_plan

        job_names = list(job_names or [])
        saved = None
        if plan_file is not None:
            saved = planfile.load(plan_file)
            job_names = list(saved.header.get("job_names") or [])
            desired = self.desired(job_names)
            reader = StateReader.open(self.settings.state_path)
            try:
                check_saved_plan(
                    saved,
                    reader.lineage,
                    reader.serial,
                    desired.spec_digest,
                    reader.plan_applied(saved.plan_id),
                )
            finally:
                reader.close()
        else:
            desired = self.desired(job_names)  # bad specs fail here, before state is touched
        store = StateStore.open(self.settings.state_path)
        client = self.client()
        command = "apply" if submit else "refresh"
        try:
            applier = Applier(self, store, client, progress, desired)
            lock = applier.lock(command, lock_timeout)
            try:
                if saved is not None:
                    check_saved_plan(
                        saved,
                        store.lineage,
                        store.serial,
                        desired.spec_digest,  # the specs this run will act on
                        store.plan_applied(saved.plan_id),
                    )
                    with store.transaction() as db:
                        db["applied_plans"].insert(
                            {"plan_id": saved.plan_id, "applied_at": iso(self.clock())}
                        )
                report = applier.run(
                    job_names,
                    wait=wait,
                    timeout=timeout,
                    poll_interval=poll_interval,
                    confirm=confirm,
                    saved=saved,
                    submit=submit,
                )
                if report.approved:
                    from batchops.results import write_outputs

                    report.outputs = write_outputs(self, job_names)
                return report
            finally:
                store.release_lock(lock.lock_id)
        finally:
            client.close()
            store.close()

    def import_batch(self, job_name: str, batch_id: str, progress: Progress | None = None) -> int:
        """`batchops import JOB BATCH_ID`: adopt a remote batch by hand; returns results stored."""
        from batchops.applier import Applier

        desired = self.desired([job_name])
        store = StateStore.open(self.settings.state_path)
        client = self.client()
        try:
            applier = Applier(self, store, client, progress)
            lock = applier.lock("import")
            try:
                return applier.import_batch(desired, job_name, batch_id)
            finally:
                store.release_lock(lock.lock_id)
        finally:
            client.close()
            store.close()

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Remove the lock `lock_id` (after making sure no apply holds it)."""
        if not Path(self.settings.state_path).exists():
            raise StateError(f"{self.settings.state_path}: no state file")
        store = StateStore.open(self.settings.state_path)
        try:
            return store.force_unlock(lock_id)
        finally:
            store.close()

    def refresh(self, progress: Progress | None = None) -> ApplyReport:
        """Poll remote batches and harvest finished ones; submit nothing."""
        return self.apply(progress=progress, submit=False)


def plan_from(
    reader: StateReader,
    desired: Desired,
    now: datetime,
    remote: dict[str, BatchRecord] | None = None,
) -> Plan:
    """Make the plan for `desired` against what `reader` holds (the pure diff does the rest)."""
    scope = None if desired.all_jobs_in_scope else [j.name for j in desired.jobs]
    batches = reader.batches()
    if remote:
        batches = [remote.get(b.id, b) for b in batches]
    return make_plan(
        desired.jobs,
        reader.item_records(scope),
        batches,
        reader.open_intents(),
        now=now,
        lineage=reader.lineage,
        serial=reader.serial,
        spec_digest=desired.spec_digest,
        inflight_batches=reader.inflight_by_batch(),
        all_jobs_in_scope=desired.all_jobs_in_scope,
    )


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
