"""What an export joins each result to: every item's identity and input row, in source order.

An export needs each item's key, custom_id and fingerprint (to find its current result) and the
input row it came from (echoed beside the answer), never the rendered request. When the rows cache
serves the job (`cache.identity_chunks`: nothing the rows were made from changed, so the source rendered
without a problem, one item per row), the identities come from it and the rows from the data file
read directly, and no template runs; otherwise every item is made again (`rowmaker.identities`:
no request built for a job of the common shape, its keys checked for duplicates as a plan checks
them). Both stream: neither a million items nor their keys sit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from itertools import count, islice, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from batchops.errors import SpecError
from batchops.pricing import PriceTable
from batchops.spec import cache
from batchops.spec.items import input_chunks, iter_inputs
from batchops.spec.model import Job, display_path

_FIRST, _SECOND, _THIRD, _FOURTH = itemgetter(0), itemgetter(1), itemgetter(2), itemgetter(3)


class ExportItem(NamedTuple):
    key: str
    custom_id: str
    fingerprint: str
    input: dict[str, Any]


def export_items(job: Job, root: Path, prices: PriceTable, today: date) -> Iterator[ExportItem]:
    """Every item of `job` with its input row, in source order (SpecError as `iter_items`)."""
    for chunk in export_chunks(job, root, prices, today, EXPORT_CHUNK_ROWS, (0, 1)):
        yield from chunk or ()


EXPORT_CHUNK_ROWS = 1_000  # `export_items` reads its items in lists of this many


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
    items not made (nor, where the rows cache's lines hold `size` rows, its rows parsed)."""
    before = cache.stat_of(job.source_file())  # what the rows cache checks its rows against
    cached = cache.identity_chunks(job, root, prices, today, size)
    mine, parts = part
    if cached is None:  # every item made, one at a time
        new = tuple.__new__  # the NamedTuple from its fields in one C call (this runs per item)
        items = (new(ExportItem, made) for block in _identities(job, root) for made in block)
        for number in count():
            chunk = list(islice(items, size))
            if not chunk:
                return
            yield chunk if number % parts == mine else None
        return
    chunks = input_chunks(job, root, size)  # a chunk of the source rows is parsed when taken
    new = tuple.__new__  # the NamedTuples from their fields in C calls (this runs per item)
    for number in count():
        cached_chunk, chunk = next(cached, None), next(chunks, None)
        if (cached_chunk is None) != (chunk is None) or (
            chunk is not None and len(chunk) != len(cached_chunk)  # type: ignore[arg-type]
        ):
            raise changed_while_read(job, root)  # not the file the rows were made from
        if cached_chunk is None or chunk is None:
            _unchanged_since(job, root, before)
            return
        if number % parts != mine:
            yield None
            continue
        ids, read = cached_chunk.rows(), chunk.rows()
        keys = list(map(_FIRST, read))
        if keys != list(map(_FIRST, ids)):
            raise changed_while_read(job, root)
        # Each ExportItem by C calls alone: its fields zipped, the tuple made by tuple.__new__.
        fields = zip(keys, map(_SECOND, ids), map(_THIRD, ids), map(_SECOND, read), strict=True)
        yield list(map(new, repeat(ExportItem), fields))


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
