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
from batchops.pricing import ItemEstimate, OutputExpectation, PriceTable, expected_output
from batchops.spec import cache, caching, parallel, rowmaker
from batchops.spec.items import Item, iter_items
from batchops.spec.model import Job, Project


class DesiredItem(NamedTuple):
    """An item as the specs want it (rendered elsewhere; only what the diff needs)."""

    key: str
    custom_id: str
    fingerprint: str
    cost_usd: float
    size: int = 0  # bytes of its request line in a create body (for splitting into batches)
    estimate: ItemEstimate | None = None  # expected cost and cached prefix (None: cost_usd only)


@dataclass(frozen=True)
class DesiredJob:
    name: str
    max_attempts: int
    budget_usd: float | None
    items: tuple[DesiredItem, ...]
    cost_note: str | None = None  # why the estimate is incomplete (e.g. no price for the model)
    betas: tuple[str, ...] = ()
    reuse: bool = True  # answer items from stored results of the same request (any job)
    output_basis: str | None = None  # where the expected output per reply came from


@dataclass(frozen=True)
class Desired:
    project: Project
    jobs: tuple[DesiredJob, ...]
    spec_digest: str
    all_jobs_in_scope: bool
    # (job, key) of items to send again on purpose (`apply --replace`), even if they succeeded
    replace: frozenset[tuple[str, str]] = frozenset()

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
    project: Project,
    prices: PriceTable,
    today: date,
    job_names: Iterable[str] | None = None,
    outputs: dict[str, dict[str, tuple[int, float]]] | None = None,
) -> Desired:
    """Render every item of the selected jobs; gather every problem of every job before failing.

    `outputs` (job → model → (results, mean output tokens), from the state) sets the expected
    output of replies; without it, a job's `expected_output_tokens` or max_tokens does."""
    job_names = list(job_names or [])
    jobs = select_jobs(project, job_names)
    digest = hashlib.sha256(b"batchops-spec-digest-v1\n")
    desired: list[DesiredJob] = []
    problems: list[str] = []
    peers = {j.name: j.max_tokens for j in project.jobs if j.max_tokens}
    for job in jobs:
        try:
            desired.append(
                _desired_job(job, project.root, prices, today, digest, outputs or {}, peers)
            )
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(*problems)
    return Desired(project, tuple(desired), "sha256:" + digest.hexdigest(), not job_names)


def _desired_job(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    digest,
    outputs: dict[str, dict[str, tuple[int, float]]],
    peers: dict[str, int],
) -> DesiredJob:
    price_cache: dict[str, object] = {}
    missing: set[str] = set()
    items: list[DesiredItem] = []
    digest.update(f"job\x1f{job.name}\x1f{job.max_attempts}\x1f{job.budget_usd}\n".encode())
    rendered = cache.rows(
        job, root, prices, today, lambda: _rows(job, root, prices, today, price_cache)
    )
    # Most items of a job cost the same and have sizes in a narrow range: each distinct
    # estimate, cost and size is held once, not once per item (a million items).
    share = {}.setdefault  # estimates and costs (a float never equals an estimate)
    share_size = {}.setdefault  # sizes apart: 261 == 261.0
    # The expected output per model, applied to each row after it is rendered or read from the
    # rows cache (which keeps what the spec alone says), so a cached row is never stale.
    expecting: dict[str, tuple[OutputExpectation, float, object]] = {}
    for key, custom_id, fp, cost, model, size in rendered:
        estimate = None
        if isinstance(cost, ItemEstimate):
            seen = expecting.get(model)
            if seen is None:
                found = expected_output(
                    job.name, model, job.max_tokens, job.expected_output_tokens, outputs, peers
                )
                tokens = float("inf") if found.tokens is None else found.tokens
                seen = expecting[model] = (found, tokens, prices.price(model, today))
            if seen[2] is not None:
                cost = cost.with_output(seen[1], seen[2])  # type: ignore[arg-type]
            if cost.high > 0 and cost.expected > 0:  # (0.0 and -0.0 are equal keys)
                cost = share(cost, cost)
            cost, estimate = cost.high, cost
        elif cost is None:
            missing.add(model)
            cost = 0.0
        elif type(cost) is float and cost > 0:
            cost = share(cost, cost)
        items.append(DesiredItem(key, custom_id, fp, cost, share_size(size, size), estimate))
        digest.update(f"{key}\x1f{fp}\n".encode())
    if job.cache == "auto":
        items = _auto_cache(items)
    note = None
    if missing and job.budget_usd is not None:
        raise SpecError(*(unpriced_budget(job.name, model, prices) for model in sorted(missing)))
    if missing:
        note = f"no price for model {', '.join(sorted(missing))} in {prices.source}: estimate excludes it"
    basis = None
    if expecting:
        notes = {found.note for found, _, _ in expecting.values()}
        if len(notes) == 1:
            basis = notes.pop()
        else:
            basis = "; ".join(f"{m}: {f.note}" for m, (f, _, _) in sorted(expecting.items()))
    return DesiredJob(
        job.name,
        job.max_attempts,
        job.budget_usd,
        tuple(items),
        note,
        tuple(job.betas),
        job.reuse,
        basis,
    )


def _auto_cache(items: list[DesiredItem]) -> list[DesiredItem]:
    """Keep auto marks only on prefixes shared by enough items to pay back their write."""
    sharing: dict[str | None, int] = {}
    for item in items:
        if item.estimate is not None and item.estimate.auto:
            sharing[item.estimate.prefix] = sharing.get(item.estimate.prefix, 0) + 1
    if all(n >= caching.MIN_SHARING for n in sharing.values()):
        return items
    out = []
    for item in items:
        e = item.estimate
        if e is not None and e.auto and sharing[e.prefix] < caching.MIN_SHARING:
            plain = ItemEstimate(
                e.plain_high or e.high,
                e.plain_expected or e.expected,
                max_tokens=e.max_tokens,
                expected_output=e.expected_output,
            )
            item = item._replace(cost_usd=plain.high, estimate=plain)
        out.append(item)
    return out


def unpriced_budget(job: str, model: str, prices: PriceTable) -> str:
    """The error for a job with a budget whose model has no price: the budget could not work."""
    return (
        f"job {job}: model {model!r} has no price in {prices.source}, so budget_usd cannot be "
        f'checked; add a row `[models."{model}"]` with `input` and `output` (USD per million '
        "tokens, batch prices) to a prices file given by --prices, BATCHOPS_PRICES or `prices` "
        "in batchops.toml"
    )


def _rows(
    job: Job, root: Path, prices: PriceTable, today: date, price_cache: dict
) -> Iterator[tuple[str, str, str, float | ItemEstimate | None, str, int]]:
    """(key, custom_id, fingerprint, cost (an estimate, or None when unpriced), model, request
    bytes) per item."""
    if parallel.wants_parallel(job):
        yield from parallel.desired_rows(job, root, prices, today)
        return
    yield from rowmaker.rows(job, root, prices, today, price_cache)


def items_for(
    project: Project, job_name: str, keys: set[str] | None = None, custom_ids: bool = True
) -> Iterator[Item]:
    """Render the items of one job again (for sending or saving a plan), optionally only `keys`;
    without `custom_ids`, those of template items are "" (the plan has them)."""
    job = next(j for j in project.jobs if j.name == job_name)
    for item in iter_items(job, project.root, custom_ids):
        if keys is None or item.key in keys:
            yield item
