"""Tables the CLI prints: every layout in one place, rendered with tabulate, every string that
came from a spec, a data file or the API made safe for a terminal.

Importing tabulate costs about 15 ms (it reads its own version through `importlib.metadata`),
a tenth of a cold start's budget, so the tables `validate` and `plan` print are written by
`simple_table` while every cell is one whose text tabulate would print as it is; any other
table is tabulate's. `tests/test_tables.py` holds the two to the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batchops.pricing import money
from batchops.safetext import terminal


def tabulate(*args: Any, **kwargs: Any) -> str:
    """tabulate's table, its whole numbers with thousands separators (1,000,000)."""
    from tabulate import tabulate as _tabulate

    return _tabulate(*args, intfmt=",", **kwargs)


def simple_table(
    rows: Sequence[Sequence[Any]], headers: Sequence[str], colalign: Sequence[str]
) -> str:
    """`tabulate(rows, headers=headers, colalign=colalign)`, in its "simple" format."""
    text = _plain_table(rows, headers, colalign)
    if text is None:
        return tabulate(rows, headers=headers, colalign=colalign)
    return text


# Every character Python's float() or int(), or tabulate's thousands-separator pattern, reads
# as part of a number ("1e5", "-inf", "NaN", "1_000", "1,000.5"): a cell made only of these
# might be a number to tabulate, which then prints it its own way.
_NUMBERISH = frozenset("0123456789+-.,_eEiInNfFtTyYaA")


def _plain_cell(value: Any) -> str | None:
    """The text tabulate prints for `value` whatever its column's type, or None when that type
    could change it (a numeric or boolean string, an empty one, spaces around it, a float,
    anything but printable ASCII)."""
    t = type(value)
    if t is int:
        return f"{value:,}"  # as tabulate's `intfmt` in a column of ints (`_plain_table`)
    if (
        t is str
        and value
        and value.isascii()
        and value.isprintable()
        and value[0] != " "
        and value[-1] != " "
        and value not in ("True", "False")
        and (value == "-" or not _NUMBERISH.issuperset(value))  # "-": no budget, no time
    ):
        return value
    return None


def _plain_table(
    rows: Sequence[Sequence[Any]], headers: Sequence[str], colalign: Sequence[str]
) -> str | None:
    """The "simple" table tabulate writes, or None when a cell or an alignment is not plain."""
    n = len(headers)
    if len(colalign) != n or not all(a in ("left", "right") for a in colalign):
        return None
    if not all(type(h) is str and h.isascii() and h.isprintable() for h in headers):
        return None
    cells = []
    for row in rows:
        if len(row) != n:
            return None
        texts = [_plain_cell(v) for v in row]
        if None in texts:
            return None
        cells.append(texts)
    for i in range(n):  # an int among text is printed f"{value}" by tabulate: left to it
        kinds = {type(row[i]) is int for row in rows}
        if len(kinds) > 1:
            return None
    if not cells:
        colalign = ["left"] * n  # tabulate aligns columns it has no cells of as text
    # tabulate: a column is as wide as its widest cell, and its header plus two
    widths = [max([len(h) + 2, *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(texts: Sequence[str]) -> str:
        padded = (
            t.ljust(w) if a == "left" else t.rjust(w)
            for t, w, a in zip(texts, widths, colalign, strict=True)
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, cells)])


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
            money(j.expected_cost_usd),
            money(j.estimated_cost_usd),
        ]
        for j in jobs
    ]
    return simple_table(
        rows,
        headers=["job", "spec", "source", "items", "model", "est. cost", "up to"],
        colalign=("left", "left", "left", "right", "left", "right", "right"),
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
    headers = ["job", "succeeded", "pending", "to send", "failed"]
    # tabulate's default alignment when every cell is plain (numbers right, text left)
    plain = _plain_table(rows, headers, ("left",) + ("right",) * 4)
    return plain if plain is not None else tabulate(rows, headers=headers)


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
    return simple_table(rows, headers=headers, colalign=("left",) + ("right",) * 9)


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
    return simple_table(rows, headers=headers, colalign=("left",) + ("right",) * 6)


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
    return simple_table(
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
    return simple_table(rows, headers=headers, colalign=("left",) + ("right",) * 7)


def state_batches_table(batches: list[Any], *, with_job: bool = True) -> str:
    rows = [
        [b.id, *([b.job] if with_job else []), b.status, b.request_count, when(b.created_at),
         b.drift or ""]
        for b in batches
    ]  # fmt: skip
    headers = ["batch", *(["job"] if with_job else []), "status", "requests", "created", "drift"]
    align = ("left", *(("left",) if with_job else ()), "left", "right", "left", "left")
    return simple_table(rows, headers=headers, colalign=align)


def fields_table(fields: list[tuple[str, Any]]) -> str:
    return tabulate(fields, tablefmt="plain")
