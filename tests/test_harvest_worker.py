"""A large batch is harvested with a worker process that parses, checks and builds the rows
while the apply process inserts them (`batchops.apply.harvest.HarvestWorker`). Whatever the
lines, the worker gives exactly the rows, or the failure, that the same lines give in process;
a broken stream is reported as the stream's failure; a worker that dies is told apart, and the
harvest is then done in process."""

from __future__ import annotations

import contextlib
import marshal
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from batchops.apply import harvest
from batchops.apply.harvest import (
    ForeignResults,
    HarvestFailed,
    HarvestWorker,
    WorkerDied,
    verified_rows,
    worker_wanted,
)
from batchops.errors import RemoteError
from batchops.remote.client import _parse_blocks

JOB, BATCH, NOW = "demo", "msgbatch_1", "2026-03-10T12:00:00Z"


def result_lines(n: int, seed: int = 3) -> tuple[list[bytes], list[tuple[str, int, str, str]]]:
    """`n` result lines of every kind and shape (in shuffled order), and the attempts sent."""
    rng = random.Random(seed)
    lines, attempts = [], []
    for i in range(n):
        custom_id = f"job-{i:05}"
        attempts.append((custom_id, i + 1, f"key {i}", f"sha256:{i:064x}"))
        kind = ("succeeded", "succeeded", "errored", "canceled", "expired")[i % 5]
        if kind == "succeeded":
            text = rng.choice(["plain", "h\u00e9 \u2028 \u2029 \u0085 \U0001f600", 'q"uo\\te', ""])
            content: object = [{"type": "text", "text": text * rng.randint(1, 30)}]
            if i % 7 == 0:
                content = [
                    {"type": "thinking", "thinking": "x"},
                    {"type": "text", "text": "a"},
                    {"type": "tool_use", "id": "t", "name": "n", "input": {"s": "\u2028"}},
                    {"type": "text", "text": "b"},
                ]
            usage = {"input_tokens": i, "output_tokens": 3, "cache_read_input_tokens": i % 4}
            if i % 3 == 0:
                usage |= {
                    "cache_creation_input_tokens": 9,
                    "cache_creation": {"ephemeral_1h_input_tokens": 4},
                }
            message = {"id": f"msg_{i}", "type": "message", "content": content,
                       "model": "claude-haiku-4-5", "stop_reason": "end_turn", "usage": usage}  # fmt: skip
            result: dict = {"type": kind, "message": message}
        elif kind == "errored":
            result = {"type": kind, "error": {"type": "error", "error": {
                "type": "invalid_request_error", "message": f"bad {i}"}}}  # fmt: skip
        else:
            result = {"type": kind}
        line = orjson.dumps({"custom_id": custom_id, "result": result})
        if i % 11 == 0:  # not the API's compact shape: the message is written out again
            line = orjson.dumps({"result": result, "custom_id": custom_id})
        lines.append(line)
    rng.shuffle(lines)
    return lines, attempts


def blocks_of(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def in_process(data: bytes, attempts: list, expected: int, size: int = 1 << 16) -> list[tuple]:
    sent = {a[0]: a[1:] for a in attempts}
    lines = _parse_blocks(blocks_of(data, size), f"read results of batch {BATCH}")
    return list(verified_rows(JOB, BATCH, NOW, lines, sent, expected))


def by_worker(
    blocks: Iterator[bytes], attempts: list, expected: int, halfway: list | None = None
) -> list[tuple]:
    with HarvestWorker() as worker:
        worker.begin(JOB, BATCH, NOW, expected, iter(attempts))
        return list(worker.rows(blocks, lambda: (halfway if halfway is not None else []).append(1)))


def outcome(run) -> tuple[type, str]:
    try:
        run()
    except Exception as exc:  # noqa: BLE001 - the outcome compared
        return type(exc), str(exc)
    raise AssertionError("no failure")


@pytest.mark.parametrize("size", [13, 4096, 1 << 20])
def test_the_worker_makes_exactly_the_rows_made_in_process(size: int) -> None:
    lines, attempts = result_lines(3_000)
    data = b"\n".join(lines) + b"\n"
    halfway: list = []
    rows = by_worker(blocks_of(data, size), attempts, len(lines), halfway)
    assert rows == in_process(data, attempts, len(lines), size)
    assert len(rows) == 3_000 and len({r[2] for r in rows}) == 3_000
    assert halfway == [1]  # the crash-test seam is reached once, as in process


def test_a_frame_of_long_replies_stays_within_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker sends a frame once its replies hold FRAME_TEXT characters, before CHUNK_ROWS
    rows: a frame of 2,000 long replies (megabytes) would outgrow the pipe, and the worker would
    wait for each one to be read instead of making the next rows."""
    lines, attempts = [], []
    for i in range(1_500):
        custom_id = f"job-{i:05}"
        attempts.append((custom_id, i + 1, f"key {i}", f"sha256:{i:064x}"))
        message = {"id": f"msg_{i}", "type": "message", "model": "claude-haiku-4-5",
                   "content": [{"type": "text", "text": "word " * (300 + i % 200)}],
                   "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 9}}  # fmt: skip
        result = {"type": "succeeded", "message": message}
        lines.append(orjson.dumps({"custom_id": custom_id, "result": result}))
    data = b"\n".join(lines) + b"\n"
    frames: list[tuple[int, list[tuple]]] = []
    real = harvest._read_frame

    def read_frame(source):  # noqa: ANN001, ANN202 - the module's own, recorded
        tag, payload = real(source)
        if tag == harvest.ROWS:
            frames.append((len(payload), marshal.loads(payload)))
        return tag, payload

    monkeypatch.setattr(harvest, "_read_frame", read_frame)
    rows = by_worker(blocks_of(data, 1 << 16), attempts, len(lines))
    assert rows == in_process(data, attempts, len(lines))
    assert sum(len(chunk) for _, chunk in frames) == len(rows) == 1_500
    total = sum(size for size, _ in frames)
    assert total > 5 * harvest._PIPE_BYTES  # megabytes of replies (in one frame, before)
    assert all(size <= harvest._PIPE_BYTES for size, _ in frames)  # each within the pipe
    texts = [sum(len(r[8]) for r in chunk) for _, chunk in frames]
    assert all(t >= harvest.FRAME_TEXT for t in texts[:-1])  # none cut short but the last


def _break(lines: list[bytes], how: str) -> list[bytes]:
    lines = list(lines)
    if how == "foreign":
        lines[700] = lines[700].replace(b'"job-', b'"other-', 1)
    elif how == "twice":
        lines[900] = lines[10]
    elif how == "unknown type":
        lines[5] = orjson.dumps({"custom_id": "job-00005", "result": {"type": "weird"}})
    elif how == "not JSON":
        lines[1200] = lines[1200][:-3]
    elif how == "no result":
        lines[40] = b'{"custom_id":"job-00040"}'
    elif how == "one missing":
        del lines[2000]
    elif how == "one more":
        lines.append(b'{"custom_id":"job-99999","result":{"type":"expired"}}')
    return lines


@pytest.mark.parametrize(
    "how",
    ["foreign", "twice", "unknown type", "not JSON", "no result", "one missing", "one more"],
)
def test_lines_that_do_not_check_out_fail_as_in_process(how: str) -> None:
    good, attempts = result_lines(3_000)
    data = b"\n".join(_break(good, how)) + b"\n"
    here = outcome(lambda: in_process(data, attempts, 3_000))
    there = outcome(lambda: by_worker(blocks_of(data, 1 << 16), attempts, 3_000))
    assert there == here
    expected_kind = {"foreign": ForeignResults, "not JSON": RemoteError, "one more": ForeignResults}
    assert there[0] is expected_kind.get(how, HarvestFailed)


def test_a_stream_that_breaks_off_is_reported_as_such() -> None:
    """The worker then sees too few lines; what is reported is the stream's failure."""
    lines, attempts = result_lines(3_000)
    data = b"\n".join(lines) + b"\n"

    def broken() -> Iterator[bytes]:
        yield from blocks_of(data[: len(data) // 2], 4096)
        raise RemoteError("read results of batch msgbatch_1 failed: the stream broke off (x)")

    kind, message = outcome(lambda: by_worker(broken(), attempts, 3_000))
    assert (kind, message) == (RemoteError, "read results of batch msgbatch_1 failed: "
                               "the stream broke off (x)")  # fmt: skip


@pytest.fixture
def dying_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's interpreter replaced by a script that says a line and exits 3."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho 'worker: something broke' >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))


def test_a_worker_that_dies_is_told_apart(dying_worker: None) -> None:
    lines, attempts = result_lines(200)
    data = b"\n".join(lines) + b"\n"
    kind, message = outcome(lambda: by_worker(blocks_of(data, 4096), attempts, 200))
    assert kind is WorkerDied
    assert message == "the harvest worker ended (exit code 3): worker: something broke"


def test_a_worker_that_cannot_start_is_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(WorkerDied, match="could not start"):
        HarvestWorker()


def test_when_a_worker_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(harvest.WORKER_ENV, raising=False)
    monkeypatch.setattr(harvest.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert worker_wanted(harvest.WORKER_MIN_RESULTS)
    assert not worker_wanted(harvest.WORKER_MIN_RESULTS - 1)  # small: not worth a process
    monkeypatch.setattr(harvest.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert not worker_wanted(1_000_000)  # one core: nothing to run beside
    monkeypatch.setenv(harvest.WORKER_ENV, "1")
    assert worker_wanted(1)
    monkeypatch.setenv(harvest.WORKER_ENV, "0")
    monkeypatch.setattr(harvest.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert not worker_wanted(1_000_000)


# -- through the evaluator, into a real state


class Replayed:
    """The API client's results, replayed from bytes."""

    def __init__(self, data: bytes):
        self.data = data

    @contextlib.contextmanager
    def results(self, batch_id: str) -> Iterator[Iterator]:
        with self.result_blocks(batch_id) as blocks:
            yield _parse_blocks(blocks, f"read results of batch {batch_id}")

    @contextlib.contextmanager
    def result_blocks(self, batch_id: str) -> Iterator[Iterator[bytes]]:
        yield blocks_of(self.data, 1 << 16)


def harvest_into(location: str, n: int, worker: str) -> tuple[list[tuple], list[str], int]:
    """Send `n` items in one batch, harvest its replayed results; the stored results (without
    their ids), the notes, and the count stored."""
    from batchops.apply.evaluator import Evaluator
    from batchops.state import open_reader, open_writer
    from tests.test_harvest_store import NOW as SENT_AT
    from tests.test_harvest_store import send

    writer = open_writer(location, "test")
    try:
        send(writer, BATCH, [f"k{i:05}" for i in range(n)])
        lines = [
            orjson.dumps({"custom_id": custom_id, "result": {"type": "succeeded", "message": {
                "content": [{"type": "text", "text": f"answer \u2028 {custom_id}"}],
                "usage": {"input_tokens": 5, "output_tokens": 2}}}})
            for custom_id in writer.sent_attempts(BATCH)
        ]  # fmt: skip
        notes: list[str] = []
        ev = Evaluator(writer, Replayed(b"\n".join(lines)), lambda: SENT_AT)  # type: ignore[arg-type]
        ev._note = notes.append  # type: ignore[method-assign]
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(harvest.WORKER_ENV, worker)
            (record,) = writer.batches()
            assert ev.harvest(record), ev.report.problems
    finally:
        writer.close()
    reader = open_reader(location)
    try:
        stored = sorted(
            reader._all("select job, key, custom_id, type, text, message from results")  # type: ignore[attr-defined]
        )
    finally:
        reader.close()
    return stored, notes, ev.report.results_stored


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_harvest_by_worker_stores_what_one_in_process_stores(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    here = str(tmp_path / "a.db")
    there = str(tmp_path / "b.db") if backend == "sqlite" else request.getfixturevalue("pg_dsn")
    by_process = harvest_into(here, 2_500, "0")
    by_worker_ = harvest_into(there, 2_500, "1")
    assert by_worker_[0] == by_process[0] and len(by_worker_[0]) == 2_500
    assert by_worker_[2] == by_process[2] == 2_500


@pytest.mark.parametrize("n", [300, 30_000])
def test_when_the_worker_dies_the_batch_is_harvested_in_process(
    dying_worker: None, tmp_path: Path, n: int
) -> None:
    """30,000 attempts are more than a pipe holds: the worker is found gone while it is given
    them, and the state's cursor over them, left part read, must not hold the state busy (the
    harvest in process then failed with "database table is locked")."""
    stored, notes, count = harvest_into(str(tmp_path / "state.db"), n, "1")
    assert count == n and len(stored) == n
    assert (
        "Harvest of batch msgbatch_1: the harvest worker ended (exit code 3): worker: something "
        "broke; harvesting it in this process." in notes
    )
