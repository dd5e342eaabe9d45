"""Rendering a large job on every core, for planning.

Planning a million-item job is dominated by rendering, hashing and pricing each item: pure Python
on one core. For a jsonl input file past PARALLEL_MIN_BYTES, the parent reads raw lines and hands
chunks of them to worker processes, which parse, render, fingerprint and price them; the parent
keeps source order, finds duplicate keys across chunks, and reports every problem with exactly the
line the one-core path (`items.iter_items`) would give — a test holds the two paths to that.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from batchops.errors import SpecError
from batchops.pricing import PriceTable
from batchops.spec.caching import estimate
from batchops.spec.items import (
    _BadRow,
    _binary_lines,
    _custom_id_maker,
    _encoder,
    _Fatal,
    _json_line,
    _key_of,
    _Problems,
    _Renderer,
    _RenderError,
    request_size_of,
)
from batchops.spec.model import Job, display_path

PARALLEL_MIN_BYTES = 16 * 1024 * 1024
CHUNK_LINES = 20_000
CHUNK_BYTES = 4 * 1024 * 1024  # at most this much raw input per chunk (several are in flight)

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
    """A jsonl input large enough to repay starting processes, on a machine with cores to spare."""
    if job.input is None or job.input.format != "jsonl" or job.attachments or workers() < 2:
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
    chunk_lines: int = CHUNK_LINES,
    processes: int | None = None,
) -> Iterator[tuple[str, str, str, Any, str, int]]:
    """(key, custom_id, fingerprint, cost (an ItemEstimate, as the one-core path makes it; 0.0
    without a price), model, bytes) per item in source order; SpecError as iter_items."""
    spec_shown = display_path(job.spec_file, root)
    compile_problems: list[str] = []
    _Renderer(job, compile_problems, f"{spec_shown}: job {job.name}")
    if compile_problems:
        raise SpecError(*compile_problems)
    if job.input is None:
        raise ValueError("desired_rows needs a job with an input file")
    shown = display_path(job.input.path, root)
    problems = _Problems()
    seen: dict[str, int] = {}
    name = job.name
    import multiprocessing  # only here: starting the pool is the only use, and it is slow to import
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    pool = ProcessPoolExecutor(
        max_workers=processes or workers(),
        mp_context=context,
        initializer=_init,
        initargs=(job, shown, prices, today),
    )
    try:
        pending: deque = deque()
        chunks = _chunks(job.input.path, shown, chunk_lines, root, name)
        fatal: str | None = None
        while True:
            while len(pending) < 2 * (processes or workers()):
                chunk = next(chunks, None)
                if chunk is None:
                    break
                if isinstance(chunk, str):  # the file could not be read on
                    fatal = chunk
                    break
                pending.append(pool.submit(_render_chunk, *chunk))
            if not pending:
                break
            for outcome in pending.popleft().result():
                kind = outcome[0]
                if kind in ("ok", "render_error"):
                    number, key = outcome[1], outcome[2]
                    if key in seen:
                        problems.add(
                            f"{shown}: line {number}: job {name}: item {key}: "
                            f"duplicate key (first at line {seen[key]})"
                        )
                        continue
                    seen[key] = number
                    if kind == "ok":
                        yield outcome[2:]
                    else:
                        problems.add(outcome[3])
                elif kind == "problem":
                    problems.add(outcome[2])
                else:  # fatal: what came before stands, nothing after is read
                    fatal = outcome[1]
                    break
            if fatal is not None:
                break
        if fatal is not None:
            raise problems.error(fatal)
        if problems.count:
            raise problems.error()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _chunks(
    path: Path, shown: str, size: int, root: Path | None = None, job_name: str = ""
) -> Iterator[tuple[int, list[bytes]] | str]:
    """(number of the first line, consecutive lines) per chunk: lines alone are cheaper to send
    to a worker than a (number, line) pair each; the error line when the file cannot be read."""
    chunk: list[bytes] = []
    first = 1
    held = 0  # bytes in `chunk`: long rows make smaller chunks, so memory stays flat
    try:
        for number, line in _binary_lines(path, shown, root):
            if not chunk:
                first = number
            chunk.append(line)
            held += len(line)
            if len(chunk) >= size or held >= CHUNK_BYTES:
                yield first, chunk
                chunk = []
                held = 0
    except _Fatal as exc:
        if chunk:
            yield first, chunk
        yield exc.line(job_name)
        return
    if chunk:
        yield first, chunk


def _init(job: Job, shown: str, prices: PriceTable, today: date) -> None:
    problems: list[str] = []
    renderer = _Renderer(job, problems, "")
    _worker.update(
        job=job,
        shown=shown,
        renderer=renderer,
        encode=_encoder(renderer.exact, job.betas, renderer.max_size),
        custom_id=_custom_id_maker(job.name),
        prices=prices,
        today=today,
        price_cache={},
    )


def _render_chunk(first: int, chunk: list[bytes]) -> list[tuple]:
    w = _worker
    job: Job = w["job"]
    shown, renderer, encode, custom_id = w["shown"], w["renderer"], w["encode"], w["custom_id"]
    key_field = job.input.key  # type: ignore[union-attr]
    name = job.name
    out: list[tuple] = []
    for number, line in enumerate(chunk, first):
        if not line.strip():
            continue
        try:
            row = _json_line(line, number, shown)
        except _Fatal as exc:
            out.append(("fatal", exc.line(name)))
            return out
        where = f"{shown}: line {number}"
        if isinstance(row, _BadRow):
            out.append(("problem", number, f"{where}: job {name}: {row.message}"))
            continue
        if not isinstance(row, dict):
            out.append(
                (
                    "problem",
                    number,
                    f"{where}: job {name}: expected an object, not {type(row).__name__}",
                )
            )
            continue
        key = _key_of(row, key_field)
        if isinstance(key, tuple):
            out.append(("problem", number, f"{where}: job {name}: {key[0]}"))
            continue
        try:
            params = renderer.render(row, key)
            fp = encode(params)
        except _RenderError as e:
            out.append(
                ("render_error", number, key, f"{where}: job {name}: item {key}: {e.describe()}")
            )
            continue
        model = str(params.get("model", ""))
        cache = w["price_cache"]
        if model not in cache:
            cache[model] = w["prices"].price(model, w["today"])
        price = cache[model]
        cost = estimate(job, params, price, w["prices"]) if price is not None else 0.0
        cid = custom_id(key, fp)
        size = request_size_of(cid, params)
        out.append(("ok", number, key, cid, fp, cost, model, size))
    return out
