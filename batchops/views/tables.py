"""Tables the CLI prints: every layout in one place, rendered with tabulate, every string that
came from a spec, a data file or the API made safe for a terminal."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from batchops.pricing import money
from batchops.safetext import terminal


def when(moment: Any) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def validate_table(jobs: list[Any]) -> str:
    rows = [
        [
            j.name,
            terminal(j.spec_file),
            j.source,
            j.items,
            j.model or "(per request)",
            money(j.estimated_cost_usd),
        ]
        for j in jobs
    ]
    return tabulate(
        rows,
        headers=["job", "spec", "source", "items", "model", "est. cost"],
        colalign=("left", "left", "left", "right", "left", "right"),
    )


def job_counts_table(plan: Any) -> str:
    """What apply's closing summary shows per job."""
    rows = [
        [
            j.name,
            j.counts["succeeded"],
            j.counts["pending"],
            j.counts["todo"] + j.counts["changed"] + j.counts["retry"],
            j.counts["failed"],
        ]
        for j in plan.jobs
    ]
    return tabulate(rows, headers=["job", "succeeded", "pending", "to send", "failed"])


def _expected(job: Any) -> float:
    """A job's central estimate (status shows it as `est. cost`, as plan does)."""
    return job.estimated_cost_usd if job.expected_cost_usd is None else job.expected_cost_usd


def status_table(report: Any) -> str:
    rows = [
        [
            j.name,
            j.items,
            j.succeeded,
            j.pending,
            j.retrying,
            j.failed,
            j.todo,
            j.removed,
            money(j.actual_cost_usd),
            money(_expected(j)),
        ]
        for j in report.jobs
    ]
    headers = [
        "job",
        "items",
        "succeeded",
        "pending",
        "retrying",
        "failed",
        "to do",
        "removed",
        "actual cost",
        "est. cost",
    ]
    return tabulate(rows, headers=headers, colalign=("left",) + ("right",) * 9)


def cost_parts_table(report: Any) -> str:
    """The actual cost of each job split by what was billed, beside the estimate."""
    rows = [
        [
            j.name,
            *(money((j.actual_parts_usd or {}).get(part, 0.0)) for part in COST_PARTS),
            money(j.actual_cost_usd),
            money(_expected(j)),
        ]
        for j in report.jobs
    ]
    headers = ["job", "input", "cache write", "cache read", "output", "actual cost", "est. cost"]
    return tabulate(rows, headers=headers, colalign=("left",) + ("right",) * 6)


COST_PARTS = ("input", "cache_write", "cache_read", "output")


def in_flight_table(batches: list[Any], duration: Any) -> str:
    rows = [
        [
            b.id,
            b.job,
            b.processing_status,
            b.request_count,
            duration(b.age_seconds),
            duration(b.expires_in_seconds),
        ]
        for b in batches
    ]
    return tabulate(
        rows,
        headers=["batch", "job", "status", "requests", "age", "expires in"],
        colalign=("left", "left", "left", "right", "right", "right"),
    )


def state_jobs_table(jobs: list[Any]) -> str:
    rows = [
        [
            j.name,
            j.items,
            j.in_flight,
            j.outcomes["succeeded"],
            j.outcomes["errored"],
            j.outcomes["expired"] + j.outcomes["canceled"] + j.outcomes["lost"],
            j.batches,
            j.results,
        ]
        for j in jobs
    ]
    headers = ["job", "items", "in flight", "succeeded", "errored", "other", "batches", "results"]
    return tabulate(rows, headers=headers, colalign=("left",) + ("right",) * 7)


def state_batches_table(batches: list[Any], *, with_job: bool = True) -> str:
    rows = [
        [b.id, *([b.job] if with_job else []), b.status, b.request_count, when(b.created_at),
         b.drift or ""]
        for b in batches
    ]  # fmt: skip
    headers = ["batch", *(["job"] if with_job else []), "status", "requests", "created", "drift"]
    align = ("left", *(("left",) if with_job else ()), "left", "right", "left", "left")
    return tabulate(rows, headers=headers, colalign=align)


def fields_table(fields: list[tuple[str, Any]]) -> str:
    return tabulate(fields, tablefmt="plain")
