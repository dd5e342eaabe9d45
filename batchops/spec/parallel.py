"""Rendering a large job on every core, for planning.

Planning a million-item job is dominated by rendering, hashing and pricing each item: pure Python
on one core. For a jsonl input file past PARALLEL_MIN_BYTES, the parent only finds where lines
end (a count of newlines a few MB at a time) and hands byte ranges of whole lines to worker
processes, which read them from the same open file, and parse, render, fingerprint and price
them (`rowmaker`, or the general path); each range comes back packed: its keys as one list,
custom_ids and fingerprints as one string each, costs as indexes into a small table, sizes and
line numbers as arrays. The parent keeps source order, finds duplicate keys across ranges, and
reports every problem with exactly the line the one-core path (`rowmaker.rows`) gives — a test
holds the two paths to that.
"""

from __future__ import annotations

import os
from array import array
from collections import deque
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from batchops.pricing import PriceTable
from batchops.spec.files import FileRefused, bounded_line_blocks, open_regular
from batchops.spec.items import TemplateRows, _Fatal, _json_line, _Problems
from batchops.spec.model import Job, display_path
from batchops.spec.rowmaker import RowMaker, item_row, plain_row

PARALLEL_MIN_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 2 * 1024 * 1024  # about this much input per range (several are in flight)

# One worker's view of the job, built once per process by `_init`.
_worker: dict[str, Any] = {}


def workers() -> int:
    """Cores this process may run on (not the machine's: `taskset -c 0` means one), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def wants_parallel(job: Job, min_bytes: int = PARALLEL_MIN_BYTES) -> bool:
    """A jsonl input large enough to repay starting processes, on a machine with cores to spare
    (and `fork`, by which the workers share the parent's open file)."""
    if job.input is None or job.input.format != "jsonl" or job.attachments or workers() < 2:
        return False
    if not hasattr(os, "fork") or not hasattr(os, "pread"):
        return False
    try:
        return job.input.path.stat().st_size >= min_bytes
    except OSError:
        return False  # the one-core path reports the unreadable file


def desired_rows(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    chunk_bytes: int = CHUNK_BYTES,
    processes: int | None = None,
) -> Iterator[tuple[str, str, str, Any, str, int]]:
    """`rowmaker.rows` of a jsonl job, rendered by worker processes; SpecError as it raises."""
    if job.input is None:
        raise ValueError("desired_rows needs a job with an input file")
    problems = _Problems()
    general = TemplateRows(job, root, display_path(job.spec_file, root), problems)
    shown, name = general.shown, job.name
    try:
        f = open_regular(job.input.path, root)
    except FileRefused as e:
        raise problems.error(_Fatal(shown, e.args[0]).line(name)) from None
    import multiprocessing  # only here: starting the pool is the only use, and it is slow to import
    from concurrent.futures import ProcessPoolExecutor

    count = processes or workers()
    with f:
        pool = ProcessPoolExecutor(
            max_workers=count,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init,
            initargs=(job, root, f.fileno(), prices, today),
        )
        try:
            pending: deque = deque()
            ranges = _ranges(f, shown, chunk_bytes, name)
            fatal: str | None = None
            while True:
                while len(pending) < 2 * count:
                    span = next(ranges, None)
                    if span is None:
                        break
                    if isinstance(span, str):  # the file could not be read on
                        fatal = span
                        break
                    pending.append(pool.submit(_render_range, *span))
                if not pending:
                    break
                packed = pending.popleft().result()
                numbers, keys, cids, fps, indexes, sizes, table, events, ended = packed
                costs, models = table
                split = (cids.split("\n"), fps.split("\n")) if keys else ([], [])
                rows = zip(numbers, keys, *split, indexes, sizes, strict=True)
                yield from _merge(general, rows, events, costs, models)
                if ended is not None:  # fatal: what came before stands, nothing after is read
                    fatal = ended
                if fatal is not None:
                    break
            if fatal is not None:
                raise problems.error(fatal)
            if problems.count:
                raise problems.error()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _merge(general: TemplateRows, rows, events, costs, models) -> Iterator[tuple]:
    """The rows and problems of one range in line order."""
    seen = general.seen
    events = deque(events)
    for number, key, cid, fp, i, size in rows:
        while events and events[0][0] < number:
            _event(general, *events.popleft())
        if key in seen:
            first = general.short(seen[key])
            general.problem(number, f"item {key}: duplicate key (first at {first})")
            continue
        seen[key] = number
        yield key, cid, fp, costs[i], models[i], size
    while events:
        _event(general, *events.popleft())


def _event(general: TemplateRows, number: int, key: str | None, line: str) -> None:
    """A problem line a worker found: for a row with a key, unless that key was seen before
    (the one-core path calls it a duplicate, and does not render it)."""
    if key is not None:
        seen = general.seen
        if key in seen:
            first = general.short(seen[key])
            general.problem(number, f"item {key}: duplicate key (first at {first})")
            return
        seen[key] = number
    general.problems.add(line)


def _ranges(f, shown: str, size: int, job: str) -> Iterator[tuple[int, int, int] | str]:
    """(start, end, number of its first line) of consecutive byte ranges of whole lines, about
    `size` bytes each (a line longer than that makes a longer range, which its worker refuses
    past the line limit); the error line when the file cannot be read on."""
    start = position = 0
    number = 1
    newlines = 0  # in [start, position)
    try:
        while True:
            data = f.read(size)
            if not data:
                if position > start:
                    yield start, position, number
                return
            cut = data.rfind(b"\n")
            if cut >= 0:
                newlines += data.count(b"\n")
                end = position + cut + 1
                yield start, end, number
                number += newlines
                newlines = 0
                start = end
            position += len(data)
    except OSError as e:
        yield _Fatal(shown, f"cannot read: {e.strerror}").line(job)


class _Range:
    """A file's bytes [start, end), read through a descriptor shared with other processes."""

    def __init__(self, fd: int, start: int, end: int):
        self.fd, self.at, self.end = fd, start, end

    def read(self, n: int) -> bytes:
        data = os.pread(self.fd, min(n, self.end - self.at), self.at)
        self.at += len(data)
        return data


class _Noted(list):
    """Problem lines as a worker notes them (the parent caps and cleans them)."""

    add = list.append


def _init(job: Job, root: Path, fd: int, prices: PriceTable, today: date) -> None:
    general = TemplateRows(job, root, display_path(job.spec_file, root), _Problems())
    _worker.update(
        job=job,
        fd=fd,
        general=general,
        maker=RowMaker.compile(job, general.renderer, prices, today),
        prices=prices,
        today=today,
        price_cache={},
    )


def _render_range(start: int, end: int, first: int) -> tuple:
    """One range's rows, packed (see the module's docstring), its problem lines as (line, key
    or None, line), and the fatal error line that ended it, if one did."""
    w = _worker
    job: Job = w["job"]
    general: TemplateRows = w["general"]
    general.problems = noted = _Noted()  # type: ignore[assignment]
    maker: RowMaker | None = w["maker"]
    make = maker.make if maker is not None else None
    numbers, keys, cids, fps = array("q"), [], [], []
    indexes, sizes = array("l"), array("q")
    costs: list[Any] = []
    models: list[str] = []
    by_id: dict[int, int] = {}  # the fast path's estimates are shared objects
    by_value: dict[tuple, int] = {}
    events: list[tuple[int, str | None, str]] = []
    key_field, shown = general.key_field, general.shown

    def add(row: tuple, number: int, fast: bool) -> None:
        key, cid, fp, cost, model, size = row
        # The fast path's estimates live as long as the worker: they are known by identity.
        i = by_id.get(id(cost)) if fast else None
        if i is None:
            i = by_value.get((cost, model))
            if i is None:
                i = by_value[(cost, model)] = len(costs)
                costs.append(cost)
                models.append(model)
            if fast:
                by_id[id(cost)] = i
        numbers.append(number)
        keys.append(key)
        cids.append(cid)
        fps.append(fp)
        indexes.append(i)
        sizes.append(size)

    ended = None
    try:
        try:
            for at, lines in bounded_line_blocks(_Range(w["fd"], start, end)):
                if start == 0 and at == 1 and lines[0].startswith(b"\xef\xbb\xbf"):
                    lines[0] = lines[0][3:]
                for number, line in enumerate(lines, first + at - 1):
                    if make is not None:
                        row = plain_row(line)
                        if row is not None:
                            key = row.get(key_field)
                            if type(key) is str and key:
                                made = make(row, key)
                                if made is not None:
                                    add(made, number, True)
                                    continue
                    if not line.strip():
                        continue
                    row = _json_line(line, number, shown)
                    key = general.key(number, row)
                    if key is None:
                        events.append((number, None, noted.pop()))
                        continue
                    item = general.made(number, row, key)
                    if item is None:
                        events.append((number, key, noted.pop()))
                        continue
                    row = item_row(job, item, w["prices"], w["today"], w["price_cache"])
                    add(row, number, False)
        except FileRefused as e:
            raise _Fatal(f"{shown}: line {first + e.args[1] - 1}", e.args[0]) from None
        except OSError as e:
            raise _Fatal(shown, f"cannot read: {e.strerror}") from None
    except _Fatal as e:
        ended = e.line(job.name)
    return (
        numbers,
        keys,
        "\n".join(cids),
        "\n".join(fps),
        indexes,
        sizes,
        (costs, models),
        events,
        ended,
    )
