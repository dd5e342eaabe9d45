"""What an export joins each result to: every item's identity and input row, in source order.

An export needs each item's key, custom_id and fingerprint (to find its current result) and the
input row it came from (echoed beside the answer), never the rendered request. When the rows cache
serves the job (`cache.identities`: nothing the rows were made from changed, so the source rendered
without a problem, one item per row), the identities come from it and the rows from the data file
read directly, and no template runs; otherwise every item is made again (`rowmaker.identities`:
no request built for a job of the common shape, its keys checked for duplicates as a plan checks
them). Both stream: neither a million items nor their keys sit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from itertools import count, islice, repeat, zip_longest
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from batchops.errors import SpecError
from batchops.pricing import PriceTable
from batchops.spec import cache
from batchops.spec.items import iter_inputs
from batchops.spec.model import Job, display_path

_MISSING: Any = (None, None)  # what one of the two streams gives once the other ran out
_FIRST, _SECOND, _THIRD, _FOURTH = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(3)


class ExportItem(NamedTuple):
    key: str
    custom_id: str
    fingerprint: str
    input: dict[str, Any]


def export_items(job: Job, root: Path, prices: PriceTable, today: date) -> Iterator[ExportItem]:
    """Every item of `job` with its input row, in source order (SpecError as `iter_items`)."""
    before = cache.stat_of(job.source_file())
    return _export_items(job, root, cache.identities(job, root, prices, today), before)


def _unchanged_since(job: Job, root: Path, before: list[int] | None) -> None:
    """Raise `changed_while_read` if the job's data file is not as it was before the rows cache
    was checked: the input rows are read from it after that, and content saved in between with
    the same keys would be echoed beside the answers to the old requests. (Items made again
    need no such check: each comes from the one read of its row.)"""
    if cache.stat_of(job.source_file()) != before:
        raise changed_while_read(job, root)


def export_chunks(
    job: Job, root: Path, prices: PriceTable, today: date, size: int, part: tuple[int, int]
) -> Iterator[list[ExportItem] | None]:
    """`export_items` in lists of `size` items, in order, None in place of each list `part`
    (i, n) does not take (it takes lists i, i + n, i + 2n …): those are read past, and their
    items not made."""
    before = cache.stat_of(job.source_file())  # what the rows cache checks its rows against
    cached = cache.identities(job, root, prices, today)
    mine, parts = part
    if cached is None:  # every item made, one at a time
        items = _export_items(job, root, cached, before)
        for number in count():
            chunk = list(islice(items, size))
            if not chunk:
                return
            yield chunk if number % parts == mine else None
        return
    rows = iter_inputs(job, root)
    new = tuple.__new__  # the NamedTuples from their fields in C calls (this runs per item)
    for number in count():
        ids = list(islice(cached, size))
        read = list(islice(rows, len(ids) or 1))  # one past the last: there must be none
        if len(read) != len(ids):
            raise changed_while_read(job, root)  # not the file the rows were made from
        if not ids:
            _unchanged_since(job, root, before)
            return
        if number % parts != mine:
            yield None
            continue
        keys = list(map(_FIRST, read))
        if keys != list(map(_FIRST, ids)):
            raise changed_while_read(job, root)
        # Each ExportItem by C calls alone: its fields zipped, the tuple made by tuple.__new__.
        fields = zip(keys, map(_SECOND, ids), map(_THIRD, ids), map(_SECOND, read), strict=True)
        yield list(map(new, repeat(ExportItem), fields))


def _export_items(
    job: Job, root: Path, cached: Iterator[Any] | None, before: list[int] | None
) -> Iterator[ExportItem]:
    new = tuple.__new__  # the NamedTuple from its fields in one C call (this runs per item)
    if cached is None:
        for made in _identities(job, root):
            yield from map(new, repeat(ExportItem), made)
        return
    for cached_row, (key, row) in zip_longest(cached, iter_inputs(job, root), fillvalue=_MISSING):
        if cached_row is _MISSING or key != cached_row[0]:
            raise changed_while_read(
                job, root
            )  # the data file is not the one the rows were made from
        yield new(ExportItem, (key, cached_row[1], cached_row[2], row))
    _unchanged_since(job, root, before)


def export_inputs(
    job: Job, root: Path, prices: PriceTable, today: date
) -> Iterator[dict[str, Any]]:
    """The input row of every item of `job`, in source order: `export_items`' `input` alone."""
    before = cache.stat_of(job.source_file())
    if not cache.serves(job, root, prices, today):
        for made in _identities(job, root):
            yield from map(_FOURTH, made)
        return
    for key, row in iter_inputs(job, root):
        if key is None:
            raise changed_while_read(job, root)
        yield row
    _unchanged_since(job, root, before)


def _identities(job: Job, root: Path) -> Iterator[list[tuple[str, str, str, Any]]]:
    from batchops.spec.rowmaker import identities  # only a job the rows cache misses needs it

    return identities(job, root)


def rows_kept(job: Job, root: Path) -> bool:
    """Whether the rows cache holds a file of `job`'s rows (whether it serves them is known only
    once it is checked, as `export_items` reads it)."""
    return cache.enabled() and (cache.cache_dir(root) / "rows" / f"{job.name}.jsonl").is_file()


def changed_while_read(job: Job, root: Path) -> SpecError:
    """The error of an export whose source is not the one its items were made from."""
    source = job.source_file() or job.spec_file
    return SpecError(
        f"{display_path(source, root)}: job {job.name}: changed while it was read; export again"
    )
