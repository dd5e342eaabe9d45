"""Rendering a large job on every core, for planning.

Planning a million-item job is dominated by rendering, hashing and pricing each item: pure Python
on one core. For a jsonl input file past PARALLEL_MIN_BYTES, the parent hands byte ranges of whole
lines to worker processes (it reads only a little past each cut, to the end of its line), which
read them from the same open file, and parse, render, fingerprint and price them (`rowmaker`, or
the general path). Each range comes back as one `rowmaker.Block` (its rows packed as the columns
`desired.ItemTable` holds, taken whole) and the hash of each key; the parent keeps source order
and finds duplicate keys by those hashes, with no work per row: those of the last ranges in a
set, the rest logged to a file (`spec.keyhashes`) and checked at the end. A range with a
problem (or a duplicate among the last ranges) hands the job to the one-core path
(`rowmaker.rows`), which reports every problem with exactly its lines — a test holds the two
paths to that; a duplicate found at the end has the one-core path tell it. For `plan -o`, each worker also
keeps the request lines of its ranges in a file of its own, which the parent appends to the job's
spool in range order (`spec.spool`).
"""

from __future__ import annotations

import contextlib
import os
from array import array
from collections import deque
from collections.abc import Iterator
from datetime import date
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchops.pricing import PriceTable
from batchops.spec import rowmaker
from batchops.spec.files import FileRefused, bounded_line_blocks, open_regular
from batchops.spec.items import (
    REQUEST_FRAME,
    Item,
    TemplateRows,
    _custom_id_maker,
    _Fatal,
    _json_line,
    _plain_request,
    _Problems,
    _raw_item,
)
from batchops.spec.keyhashes import KeyHashes
from batchops.spec.model import Job, display_path
from batchops.spec.rowmaker import Block, Row, RowMaker, item_row, pack, plain_row, unpack

if TYPE_CHECKING:
    from batchops.spec.spool import JobSpool

PARALLEL_MIN_BYTES = 16 * 1024 * 1024
RECENT_KEYS = 1 << 16  # key hashes held in a set (the rest only logged: `KeyHashes`)
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
    """A jsonl input or requests file large enough to repay starting processes, on a machine
    with cores to spare (and `fork`, by which the workers share the parent's open file)."""
    source = _source(job)
    if source is None or job.attachments or workers() < 2:
        return False
    if not hasattr(os, "fork") or not hasattr(os, "pread"):
        return False
    try:
        return source.stat().st_size >= min_bytes
    except OSError:
        return False  # the one-core path reports the unreadable file


def _source(job: Job) -> Path | None:
    """The jsonl file whose lines are a job's items: its input file, or its requests file."""
    if job.requests is not None:
        return job.requests.path
    if job.input is not None and job.input.format == "jsonl":
        return job.input.path
    return None


def desired_rows(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    chunk_bytes: int = CHUNK_BYTES,
    processes: int | None = None,
) -> Iterator[Row]:
    """`rowmaker.rows` of a jsonl job, rendered by worker processes; SpecError as it raises."""
    for part in desired_blocks(job, root, prices, today, chunk_bytes, processes):
        if type(part) is Block:
            yield from unpack(part)
        else:
            yield part  # type: ignore[misc]


def desired_blocks(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    chunk_bytes: int = CHUNK_BYTES,
    processes: int | None = None,
    lines: JobSpool | None = None,
) -> Iterator[Block | Row]:
    """`rowmaker.rows` of a jsonl job, rendered by worker processes: a block a range, in order;
    with `lines`, the request lines the workers kept are taken there, in the same order.

    A range that holds a problem, or a key seen before, ends the workers' pass: the one-core
    path renders the job again and gives its rows from there on, and its SpecError, so every
    problem is told exactly as one core tells it (a job with problems is rare, and plans
    nothing; its lines are not kept)."""
    source = _source(job)
    if source is None:
        raise ValueError("desired_rows needs a job with a jsonl input file or requests file")
    problems = _Problems()
    shown, name = display_path(source, root), job.name
    if job.requests is None:  # a template that does not compile: its SpecError, from here
        TemplateRows(job, root, display_path(job.spec_file, root), problems)
    try:
        f = open_regular(source, root)
    except FileRefused as e:
        raise problems.error(_Fatal(shown, e.args[0]).line(name)) from None
    import multiprocessing  # only here: starting the pool is the only use, and it is slow to import
    from concurrent.futures import ProcessPoolExecutor

    count = processes or workers()
    given = 0  # rows given so far
    clean = True
    # The hash of every key given (the workers are forked: they hash strings as this process
    # does): those of the last ranges in a set, which finds a key given again soon, and all of
    # them logged in little memory, which finds the rest at the end. A hash seen twice is a
    # duplicate key, or very rarely two keys with one hash: the one-core path tells which.
    recent: set[int] = set()
    with f, contextlib.ExitStack() as stack:
        hashes = KeyHashes()
        stack.callback(hashes.close)
        folder = None
        if lines is not None:  # each worker's lines, until taken
            import tempfile

            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="batchops-spool-"))
        pool = ProcessPoolExecutor(
            max_workers=count,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init,
            initargs=(job, root, f.fileno(), prices, today, folder),
        )
        try:
            pending: deque = deque()
            ranges = _ranges(f.fileno(), chunk_bytes)
            while clean:
                while len(pending) < 2 * count:
                    try:
                        span = next(ranges, None)
                    except OSError:  # the file could not be read on
                        clean = False
                        break
                    if span is None:
                        break
                    pending.append(pool.submit(_render_range, *span))
                if not pending or not clean:
                    break
                ok, block, keys, kept = pending.popleft().result()
                if not ok:
                    clean = False
                elif block is not None:
                    before = len(recent)
                    recent.update(keys)
                    if len(recent) - before != block.count:  # a duplicate among recent keys
                        clean = False
                        break
                    hashes.add_hashes(keys)
                    if len(recent) >= RECENT_KEYS:
                        recent.clear()
                    if lines is not None:
                        lines.take(*kept)
                    yield block
                    given += block.count
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        suspects = hashes.suspects() if clean else frozenset()
    if suspects and job.requests is not None:  # the one-core path's SpecError, or none
        for _ in rowmaker.rows(job, root, prices, today, {}):
            pass
    elif suspects:  # the one-core path's SpecError, or none: two keys had one hash
        error = rowmaker.exact_error(job, root, prices, today, suspects)
        if error is not None:
            raise error
    if not clean:
        if lines is not None:
            lines.broken = True  # the one-core path below keeps none: a saved plan renders again
        yield from islice(rowmaker.rows(job, root, prices, today, {}), given, None)


def _ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive byte ranges of whole lines, about `size` bytes each: each
    cut is moved on to the end of its line, read from there (a line longer than `size` makes a
    longer range, which its worker refuses past the line limit); the last ends past the end of
    the file. OSError when the file cannot be read."""
    start = 0
    while True:
        at = start + size
        while True:
            data = os.pread(fd, 1 << 16, at)
            if not data:  # the end of the file
                yield start, at
                return
            cut = data.find(b"\n")
            if cut >= 0:
                break
            at += len(data)
        yield start, at + cut + 1
        start = at + cut + 1


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


def _init(
    job: Job, root: Path, fd: int, prices: PriceTable, today: date, folder: str | None
) -> None:
    lines = None
    if folder is not None:
        from batchops.spec.spool import JobSpool

        lines = JobSpool.at(os.path.join(folder, f"worker-{os.getpid()}"))
    _worker.update(job=job, fd=fd, lines=lines, prices=prices, today=today, price_cache={})
    if job.requests is not None:
        _worker.update(shown=display_path(job.requests.path, root))
        return
    general = TemplateRows(job, root, display_path(job.spec_file, root), _Problems())
    _worker.update(
        general=general, maker=RowMaker.compile(job, general.renderer, prices, today, lines)
    )


def _render_range(start: int, end: int) -> tuple[bool, Block | None, array | None, tuple | None]:
    """One range's rows as a block (None: it has none), the hashes of its keys (sorted), and
    where its request lines were kept (`JobSpool.piece`, when the parent keeps them); False and
    nothing else when the range holds a problem. (Where its lines stand in the file is not
    known here: the one-core path, which tells problems, counts them.)"""
    w = _worker
    job: Job = w["job"]
    if job.requests is not None:
        return _request_range(start, end)
    kept: JobSpool | None = w["lines"]
    begun = kept.begin() if kept is not None else 0
    general: TemplateRows = w["general"]
    general.problems = _Noted()  # type: ignore[assignment]
    maker: RowMaker | None = w["maker"]
    make = maker.make if maker is not None else None
    prices, today, price_cache = w["prices"], w["today"], w["price_cache"]
    key_field, shown = general.key_field, general.shown
    rows: list[Row] = []
    add = rows.append
    try:
        for at, lines in _range_lines(w["fd"], start, end):
            for number, line in enumerate(lines, at):
                if make is not None:
                    row = plain_row(line)
                    if row is not None:
                        key = row.get(key_field)
                        if type(key) is str and key:
                            made = make(row, key)
                            if made is not None:
                                add(made)
                                continue
                if not line.strip():
                    continue
                row = _json_line(line, number, shown)
                key = general.key(number, row)
                item = None if key is None else general.made(number, row, key)
                if item is None:
                    return False, None, None, None
                add(_general_row(job, item, kept, prices, today, price_cache))
    except (FileRefused, OSError, _Fatal):
        return False, None, None, None
    return _finished(rows, kept, begun)


def _range_lines(fd: int, start: int, end: int) -> Iterator[tuple[int, list[bytes]]]:
    """The lines of a range a block at a time (the file's BOM dropped), as `_line_blocks`; the
    numbers count from the range's start (the parent does not need them)."""
    for at, lines in bounded_line_blocks(_Range(fd, start, end)):
        if start == 0 and at == 1 and lines[0].startswith(b"\xef\xbb\xbf"):
            lines[0] = lines[0][3:]
        yield at, lines


def _general_row(
    job: Job,
    item: Item,
    kept: JobSpool | None,
    prices: PriceTable,
    today: date,
    price_cache: dict[str, Any],
) -> Row:
    """The row of an item made by the general path, its request line kept if lines are."""
    if kept is not None:
        kept.add_params(item.key, item.custom_id, item.fingerprint, item.params)
    return item_row(job, item, prices, today, price_cache)


def _finished(
    rows: list[Row], kept: JobSpool | None, begun: int
) -> tuple[bool, Block | None, array | None, tuple | None]:
    """What `_render_range` answers for a range whose rows were all made."""
    if not rows:
        return True, None, None, None
    # sorted here, on every core: the parent sorts runs of them (`KeyHashes`), merged quickly
    keys = array("q", sorted(map(_key_hash, map(itemgetter(0), rows))))
    return True, pack(rows), keys, kept.piece(begun) if kept is not None else None


def _request_range(start: int, end: int) -> tuple[bool, Block | None, array | None, tuple | None]:
    """`_render_range` of a requests file's range: each line taken as `items._raw_items` takes
    it, plainly right (`_plain_request`) or by `_raw_item`; a line with a problem, or a
    custom_id given twice in the range, ends the workers' pass."""
    w = _worker
    job: Job = w["job"]
    kept: JobSpool | None = w["lines"]
    begun = kept.begin() if kept is not None else 0
    plain = w.get("plain")
    if plain is None:
        plain = w["plain"] = _plain_request(job.betas)
        w["make_id"] = _custom_id_maker(job.name)
    make_id, shown, name = w["make_id"], w["shown"], job.name
    prices, today, price_cache = w["prices"], w["today"], w["price_cache"]
    seen: dict[str, int] = {}
    rows: list[Row] = []
    add = rows.append
    try:
        for at, lines in _range_lines(w["fd"], start, end):
            for number, line in enumerate(lines, at):
                made = plain(line)
                if made is not None and made[0] not in seen:
                    custom_id, params, fp, body = made
                    seen[custom_id] = number
                    sent = make_id(custom_id, fp)
                    item = Item(
                        name, custom_id, sent, params, fp, None, body + len(sent) + REQUEST_FRAME
                    )
                else:
                    if not line.strip():
                        continue
                    request = _json_line(line, number, shown)
                    item = _raw_item(job, request, number, shown, seen, _Noted())  # type: ignore[arg-type]
                    if item is None:
                        return False, None, None, None
                add(_general_row(job, item, kept, prices, today, price_cache))
    except (FileRefused, OSError, _Fatal):
        return False, None, None, None
    return _finished(rows, kept, begun)


_key_hash = hash
