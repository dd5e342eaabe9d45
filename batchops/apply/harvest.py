"""A batch's result lines as the rows a harvest stores, checked as they come (each custom_id
one the batch was sent, none twice, as many as its request counts); and, for a large batch, the
same work done by a worker process beside the one that stores the rows.

The worker (`python -m batchops.apply.harvest_worker`) is given the sent attempts and the raw
bytes of the results stream on its stdin, and answers frames on its stdout: rows a chunk at a
time (`marshal`, which reads back as fast as it writes, of plain tuples only), then "done" or
the reason the lines did not check out. Parsing JSON and building rows is then done on another
core while this process binds and inserts rows, and the harvest is still one transaction of
this process. Nothing else crosses: the worker opens no state and no connection.
"""

from __future__ import annotations

import contextlib
import itertools
import marshal
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import orjson

from batchops.errors import RemoteError
from batchops.pricing import usage_counts
from batchops.state.records import RESULT_TYPES, ResultRow

WORKER_ENV = "BATCHOPS_HARVEST_WORKER"  # "1": always, "0": never, else for large batches
WORKER_MIN_RESULTS = 20_000  # below this, starting a process costs more than it saves
CHUNK_ROWS = 2_000  # rows a frame carries at most
# The characters of messages a frame carries (once past them, the frame is sent): a frame, its
# messages and texts at up to three bytes a character, then stays within the pipe (`_PIPE_BYTES`),
# so the worker writes it whole and goes on making rows while this process inserts, instead of
# waiting for this process to read a frame larger than the pipe (2,000 rows of 80-130-word
# replies: 3.6 MB). On the batch size (111 MB), a harvest took 6-10% less time.
FRAME_TEXT = 1 << 17
MESSAGE = ResultRow._fields.index("message")  # where a row holds its stored message
SENT_PER_FRAME = 10_000  # sent attempts a frame carries
_PIPE_BYTES = 1 << 20  # asked of the kernel for each pipe (Linux), so fewer switches
_HEAD = 9  # a frame: one tag byte, an 8-byte length, the payload
HEAD, SENT, ROWS, DONE, FAILED = b"H", b"S", b"R", b"D", b"E"


class HarvestFailed(Exception):
    """A batch's results did not check out; nothing was stored for it."""


class ForeignResults(HarvestFailed):
    """The results carry a custom_id this batch was not sent: it is not the batch we think."""


class WorkerDied(Exception):
    """The harvest worker ended without saying why (a crash, a missing interpreter): the lines
    were not judged, so the harvest may be tried again in this process."""


def verified_rows(
    job: str,
    batch_id: str,
    now: str,
    lines: Iterator[dict[str, Any]],
    sent: dict[str, Any],
    expected: int,
    at_halfway: Callable[[], None] = lambda: None,
    *,
    unmatched: set[str] | None = None,
) -> Iterator[tuple]:
    """Result lines as rows to store (plain tuples in `ResultRow`'s field order); raises (so
    nothing is stored) when they do not check out.

    `sent` is used up: each custom_id seen is set to None, so a second line for it is told
    from a custom_id this batch was never sent. A line for a custom_id not in `sent` is refused
    (`ForeignResults`), unless `unmatched` is given: then its custom_id is added there, and the
    line counts towards `expected` but is not stored (`state recover`, for the lines of a batch
    that answer older versions of its items). This runs once per result line (100,000 in a
    full batch), so the row is built here, inline, rather than by helpers per field."""
    halfway = max(expected // 2, 1)
    count = skipped = 0
    nothing = (None,) * 5
    for line in lines:
        custom_id = line.get("custom_id")
        result = line.get("result")
        if not isinstance(custom_id, str) or not isinstance(result, dict):
            raise HarvestFailed(f"a result line without a custom_id and a result: {line!r:.200}")
        attempt = sent.get(custom_id)
        if attempt is None:
            if custom_id in sent or (unmatched is not None and custom_id in unmatched):
                raise HarvestFailed(f"custom_id {custom_id!r} appears twice in the results")
            if unmatched is None:
                raise ForeignResults(
                    f"result for custom_id {custom_id!r}, which this batch was not sent"
                )
            kind = result.get("type")
            if type(kind) is not str or kind not in RESULT_TYPES:
                raise HarvestFailed(f"result for {custom_id!r} has unknown type {kind!r}")
            unmatched.add(custom_id)  # counted, never stored
            skipped += 1
            count += 1
            if count == halfway:
                at_halfway()
            continue
        sent[custom_id] = None
        count += 1
        if count == halfway:
            at_halfway()
        attempt_id, key, fingerprint = attempt
        try:
            kind = result.get("type")
            if type(kind) is not str or kind not in RESULT_TYPES:
                raise HarvestFailed(f"result for {custom_id!r} has unknown type {kind!r}")
            if kind == "succeeded":
                # Without its message, or with content that is no list, a success would be
                # stored with no answer, and never asked again.
                body = result.get("message")
                if type(body) is not dict:
                    raise TypeError("its message is not an object")
                content = body.get("content")
                if type(content) is not list:
                    raise TypeError("its message's content is not a list")
                inputs, outputs, write_5m, write_1h, reads = usage_counts(body.get("usage") or {})
                if len(content) == 1 and type(block := content[0]) is dict:
                    # one block, as most replies: its text, without a list and a join
                    text = block.get("text", "") if block.get("type") == "text" else ""
                    if type(text) is not str:
                        text = "".join([text])  # what the join below does with it
                else:
                    text = "".join([
                        b.get("text", "")
                        for b in content
                        if isinstance(b, dict) and b.get("type") == "text"
                    ])  # fmt: skip
                # A value that should be a string but is not (a protocol slip) is stored as its
                # JSON text, on either backend.
                stop_reason, model = body.get("stop_reason"), body.get("model")
                if type(stop_reason) is not str and stop_reason is not None:
                    stop_reason = _json_text(stop_reason)
                if type(model) is not str and model is not None:
                    model = _json_text(model)
                row = (
                    job, key, custom_id, fingerprint, batch_id, attempt_id, kind, text,
                    _message_json(line, custom_id, result, body),
                    stop_reason, None, None, model,
                    inputs, outputs, write_5m + write_1h, write_1h, reads,
                    now,
                )  # fmt: skip
            elif kind == "errored":
                envelope = result.get("error") or {}
                inner = envelope.get("error")
                error = inner if isinstance(inner, dict) else envelope
                error_type, message = error.get("type"), error.get("message")
                if type(error_type) is not str and error_type is not None:
                    error_type = _json_text(error_type)
                if type(message) is not str and message is not None:
                    message = _json_text(message)
                row = (
                    job, key, custom_id, fingerprint, batch_id, attempt_id, kind, None, None,
                    None, error_type, message, None, *nothing, now,
                )  # fmt: skip
            else:  # expired, canceled
                row = (
                    job, key, custom_id, fingerprint, batch_id, attempt_id, kind, None, None,
                    None, None, None, None, *nothing, now,
                )  # fmt: skip
        except (TypeError, AttributeError, ValueError, OverflowError) as exc:
            # A shape the API does not send (a message that is a string, a type that is a
            # list, a count that is no number): the batch's results do not check out.
            raise HarvestFailed(
                f"the result for {custom_id!r} is not of the shape the API sends ({exc})"
            ) from None
        yield row
    if count != expected:
        raise HarvestFailed(f"{count} result lines, but request_counts add up to {expected}")
    missing = len(sent) - (count - skipped)
    if missing:
        raise HarvestFailed(f"{missing} submitted custom_ids have no result")


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


_CUSTOM_ID = '{"custom_id":"'
_SUCCEEDED = '","result":{"type":"succeeded","message":'


def _message_json(
    line: dict[str, Any], custom_id: str, result: dict[str, Any], body: dict[str, Any]
) -> str:
    """The message as JSON text: the slice of the line the API wrote, when the line has the
    API's compact shape, else written out again.

    The slice is taken only from `{"custom_id":"<id>","result":{"type":"succeeded","message":`
    M `}}` with nothing else in either object and no second `"message":` key after the prefix
    (a duplicate key would otherwise end up in M); a custom_id is `[A-Za-z0-9_-]`, so its JSON
    is itself. Anything else (whitespace, another key order) takes the slow path.
    """
    raw = getattr(line, "raw", None)
    if raw is not None and len(line) == 2 and len(result) == 2:
        # the checks read the line in place: no copy of it but the slice (and `rstrip`'s, when
        # the line still ends in whitespace)
        prefix = _CUSTOM_ID + custom_id + _SUCCEEDED
        if raw.startswith(prefix):
            start = len(prefix)
            raw = raw.rstrip()
            if raw.endswith("}}}") and raw.find('"message":', start) == -1:
                return raw[start:-2]
    return orjson.dumps(body).decode()


# -- the worker, as the storing process sees it


def worker_wanted(expected: int) -> bool:
    """Whether a batch of `expected` results is harvested with a worker: a large batch, when
    this process may run on more than one core (`BATCHOPS_HARVEST_WORKER` overrides)."""
    choice = os.environ.get(WORKER_ENV, "")
    if choice in ("0", "1"):
        return choice == "1"
    if expected < WORKER_MIN_RESULTS:
        return False
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return (len(cores) if cores is not None else os.cpu_count() or 1) > 1


class HarvestWorker:
    """A worker process that makes a harvest's rows (see the module's doc). Started first, so
    that its start overlaps the reading of the sent attempts (`begin`); then `rows`. Close it
    (or use it as a context manager): it is killed if still running."""

    def __init__(self) -> None:
        import subprocess
        import tempfile

        self._errors = tempfile.TemporaryFile()
        # this very batchops, wherever it was imported from
        home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")]))
        # `-P`: not the working directory first on its path, as `-m` alone puts it. apply runs
        # in a repository's root, whose files come from pull requests: an `orjson.py` there
        # would be imported, and run, by the worker. Nor does the worker get the API key: it
        # makes rows from bytes, and calls nothing.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-m", "batchops.apply.harvest_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._errors,
                bufsize=0,
                env={**env, "PYTHONPATH": path},
            )
        except OSError as exc:
            self._errors.close()
            raise WorkerDied(f"the harvest worker could not start ({exc})") from None
        assert self._process.stdin is not None and self._process.stdout is not None
        self._stdout = self._process.stdout
        for pipe in (self._process.stdin, self._stdout):
            _widen(pipe)
        self._feeder: threading.Thread | None = None
        self._failure: list[BaseException] = []
        self._expected = 0

    def __enter__(self) -> HarvestWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._stdout.close()
        self._errors.close()

    def begin(
        self, job: str, batch_id: str, now: str, expected: int, attempts: Iterable[tuple]
    ) -> None:
        """Tell the worker the batch, and the attempts it was sent: (custom_id, attempt id,
        key, fingerprint) rows, passed on a frame at a time as they are read, never held."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            _write_frame(stdin, HEAD, marshal.dumps((job, batch_id, now, expected)))
            rows = iter(attempts)
            while True:
                piece = list(itertools.islice(rows, SENT_PER_FRAME))
                _write_frame(stdin, SENT, marshal.dumps(piece))
                if not piece:  # an empty frame ends them
                    break
        except BrokenPipeError:
            pass  # the worker is gone: `rows` says so
        finally:  # a cursor left part read would hold the state's connection busy
            close = getattr(attempts, "close", None)
            if close is not None:
                close()
        self._expected = expected

    def rows(self, blocks: Iterator[bytes], at_halfway: Callable[[], None]) -> Iterator[tuple]:
        """The rows `verified_rows` would give for the lines in `blocks`. A thread feeds the
        worker the stream's bytes while the caller takes the rows; raises what `verified_rows`
        raises (`HarvestFailed`, `ForeignResults`, a `RemoteError` for a line that is not
        JSON), what the stream raised, or `WorkerDied`."""
        assert self._process.stdin is not None and self._feeder is None
        self._feeder = threading.Thread(
            target=_feed,
            args=(self._process.stdin, blocks, self._failure),
            name="batchops-harvest-feed",
            daemon=True,
        )
        self._feeder.start()
        count, halfway = 0, max(self._expected // 2, 1)
        while True:
            tag, payload = _read_frame(self._stdout)
            if tag == ROWS:
                chunk = marshal.loads(payload)
                yield from chunk
                before, count = count, count + len(chunk)
                if before < halfway <= count:
                    at_halfway()
                continue
            # The end. A broken stream comes first: the worker then saw too few lines (the
            # feeder notes the failure before it closes the worker's stdin, so it is known).
            if self._failure:
                raise self._failure[0]
            if tag == DONE:
                return
            if tag == FAILED:
                kind, message = marshal.loads(payload)
                raise _FAILURES.get(kind, HarvestFailed)(message)
            code = self._process.wait()
            self._errors.seek(0)
            said = self._errors.read().decode("utf-8", "replace").strip().splitlines()
            raise WorkerDied(
                f"the harvest worker ended (exit code {code})" + (f": {said[-1]}" if said else "")
            )


_FAILURES: dict[str, type[Exception]] = {"foreign": ForeignResults, "remote": RemoteError}


def _widen(pipe: IO[bytes]) -> None:
    with contextlib.suppress(ImportError, OSError, AttributeError):
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)  # type: ignore[attr-defined]


def _feed(stdin: IO[bytes], blocks: Iterator[bytes], failure: list[BaseException]) -> None:
    """The rest of the worker's stdin: the stream's bytes as they come."""
    try:
        for block in blocks:
            _write_all(stdin, block)
    except BrokenPipeError:
        pass  # the worker ended early: its frames say why
    except BaseException as exc:  # noqa: BLE001 - handed to the thread that takes the rows
        failure.append(exc)
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def _write_all(out: IO[bytes], data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = out.write(view)
        view = view[written or 0 :]


def _write_frame(out: IO[bytes], tag: bytes, payload: bytes) -> None:
    _write_all(out, tag + len(payload).to_bytes(8, "big"))
    _write_all(out, payload)


def _read_exactly(source: IO[bytes], size: int) -> bytes | None:
    parts, left = [], size
    while left:
        part = source.read(left)
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_frame(source: IO[bytes]) -> tuple[bytes, bytes]:
    """A frame's tag and payload; (b"", b"") at the end of the stream, or a frame cut short."""
    head = _read_exactly(source, _HEAD)
    if head is None:
        return b"", b""
    payload = _read_exactly(source, int.from_bytes(head[1:], "big"))
    if payload is None:
        return b"", b""
    return head[:1], payload
