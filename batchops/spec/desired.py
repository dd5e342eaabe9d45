"""From spec files to what the planner needs: desired items, their cost, and the spec digest.

This is the I/O half of planning (reading specs and data files, rendering templates). The planner
itself (`planner.make_plan`) is pure and takes what this module returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import NamedTuple

from batchops.errors import BatchopsError, SpecError
from batchops.pricing import PriceTable, estimate_request
from batchops.spec import cache, parallel
from batchops.spec.items import Item, iter_items, request_size
from batchops.spec.model import Job, Project


class DesiredItem(NamedTuple):
    """An item as the specs want it (rendered elsewhere; only what the diff needs)."""

    key: str
    custom_id: str
    fingerprint: str
    cost_usd: float
    size: int = 0  # bytes of its request line in a create body (for splitting into batches)


@dataclass(frozen=True)
class DesiredJob:
    name: str
    max_attempts: int
    budget_usd: float | None
    items: tuple[DesiredItem, ...]
    cost_note: str | None = None  # why the estimate is incomplete (e.g. no price for the model)
    betas: tuple[str, ...] = ()


@dataclass(frozen=True)
class Desired:
    project: Project
    jobs: tuple[DesiredJob, ...]
    spec_digest: str
    all_jobs_in_scope: bool

    def spec_job(self, name: str) -> Job:
        return next(j for j in self.project.jobs if j.name == name)


def select_jobs(project: Project, names: Iterable[str] | None) -> list[Job]:
    """The jobs named by `--job` (all when none), refusing unknown names."""
    names = list(names or [])
    known = {j.name for j in project.jobs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BatchopsError(
            *(f"unknown job {n!r} (jobs: {', '.join(sorted(known)) or 'none'})" for n in unknown)
        )
    return [j for j in project.jobs if not names or j.name in names]


def collect(
    project: Project, prices: PriceTable, today: date, job_names: Iterable[str] | None = None
) -> Desired:
    """Render every item of the selected jobs; gather every problem of every job before failing."""
    job_names = list(job_names or [])
    jobs = select_jobs(project, job_names)
    digest = hashlib.sha256(b"batchops-spec-digest-v1\n")
    desired: list[DesiredJob] = []
    problems: list[str] = []
    for job in jobs:
        try:
            desired.append(_desired_job(job, project.root, prices, today, digest))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(*problems)
    return Desired(project, tuple(desired), "sha256:" + digest.hexdigest(), not job_names)


def _desired_job(job: Job, root: Path, prices: PriceTable, today: date, digest) -> DesiredJob:
    price_cache: dict[str, object] = {}
    missing: set[str] = set()
    items: list[DesiredItem] = []
    digest.update(f"job\x1f{job.name}\x1f{job.max_attempts}\x1f{job.budget_usd}\n".encode())
    rendered = cache.rows(
        job, root, prices, today, lambda: _rows(job, root, prices, today, price_cache)
    )
    for key, custom_id, fp, cost, model, size in rendered:
        if cost is None:
            missing.add(model)
            cost = 0.0
        items.append(DesiredItem(key, custom_id, fp, cost, size))
        digest.update(f"{key}\x1f{fp}\n".encode())
    note = None
    if missing:
        note = f"no price for model {', '.join(sorted(missing))} in {prices.source}: estimate excludes it"
    return DesiredJob(
        job.name, job.max_attempts, job.budget_usd, tuple(items), note, tuple(job.betas)
    )


def _rows(
    job: Job, root: Path, prices: PriceTable, today: date, price_cache: dict
) -> Iterator[tuple[str, str, str, float | None, str, int]]:
    """(key, custom_id, fingerprint, cost or None when unpriced, model, request bytes) per item."""
    if parallel.wants_parallel(job):
        for key, custom_id, fp, cost, model, size in parallel.desired_rows(
            job, root, prices, today
        ):
            if model not in price_cache:
                price_cache[model] = prices.price(model, today)
            priced = cost if price_cache[model] is not None else None
            yield key, custom_id, fp, priced, model, size
        return
    for item in iter_items(job, root):
        model = str(item.params.get("model", ""))
        if model not in price_cache:
            price_cache[model] = prices.price(model, today)
        price = price_cache[model]
        cost = estimate_request(item.params).cost(price) if price is not None else None
        yield item.key, item.custom_id, item.fingerprint, cost, model, request_size(item)


def items_for(project: Project, job_name: str, keys: set[str] | None = None) -> Iterator[Item]:
    """Render the items of one job again (for sending or saving a plan), optionally only `keys`."""
    job = next(j for j in project.jobs if j.name == job_name)
    for item in iter_items(job, project.root):
        if keys is None or item.key in keys:
            yield item
