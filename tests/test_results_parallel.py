"""A large export on several processes (`results._parts`) writes the bytes one process writes.

The project, state and golden file are `test_results_golden`'s; the rows cache serves every job,
and the size from which a second process is started is brought down to nothing, so every export
that may take several processes does, over chunks of 4 keys (of n processes, each makes every
n-th chunk): two, as on this project's machines, and three and four, as on a larger one.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from batchops.commands import results as results_mod
from batchops.commands.context import Context
from batchops.commands.results import ExportOptions, export
from batchops.errors import BatchopsError, SpecError, StateError
from batchops.spec import cache, inputs
from tests.projects import record_forks
from tests.test_results_golden import GOLDEN, cases, export_bytes, filled, rechunked  # noqa: F401


def takes_two(job: str, fmt: str, option_set: str) -> bool:
    """Whether an export may take two processes: from a source file, jsonl or CSV, no columns
    (`sheet`'s spec has some); jsonl only without thinking, of every item."""
    if job == "inline" or job == "sheet" or option_set in ("columns", "everything"):
        return False
    if fmt == "jsonl":
        return option_set not in ("failed", "thinking")
    return fmt == "csv"


@pytest.fixture(
    params=[
        ("a chunk a line", 2),
        ("lines of 1,000 rows", 2),
        ("a chunk a line", 3),
        ("lines of 1,000 rows", 4),
    ],
    ids=lambda param: f"{param[0]}, {param[1]} processes",
)
def two(
    filled: Context,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> dict[str, list[int]]:
    """Rows kept for every job, n processes from the first byte; the children forked, and n.
    The rows cache's lines hold a chunk each (each process reads the others' lines past
    unparsed), or more (each reads every line and makes its chunks of them)."""
    lines, processes = request.param
    monkeypatch.setenv("BATCHOPS_CACHE", "on")
    monkeypatch.setattr(cache, "MIN_ROWS", 0)
    if lines == "a chunk a line":
        monkeypatch.setattr(cache, "CHUNK_ROWS", 4)
    filled.desired()
    monkeypatch.setattr(results_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(results_mod, "CHUNK_KEYS", 4)
    monkeypatch.setattr(results_mod, "_idle_cores", lambda: processes)
    forked = record_forks(monkeypatch)
    return {"forked": forked, "children": processes - 1, "lines": lines}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_several_processes_write_the_golden_bytes(filled: Context, two: dict) -> None:  # noqa: F811
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for case in cases():
        name = "/".join(case)
        before = len(two["forked"])
        assert export_bytes(filled, *case) == golden[name], name
        assert (len(two["forked"]) > before) == takes_two(*case), name
    assert two["forked"] and all(_gone(pid) for pid in two["forked"])


def test_several_processes_write_a_file_as_one_does(
    filled: Context,  # noqa: F811
    two: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "mix.jsonl"
    summary = export(filled, "mix", "jsonl", path)
    assert len(two["forked"]) == two["children"]
    monkeypatch.setattr(results_mod, "_idle_cores", lambda: 1)  # one process
    alone = io.BytesIO()
    assert export(filled, "mix", "jsonl", alone).rows == summary.rows == 30
    assert len(two["forked"]) == two["children"]
    assert path.read_bytes() == alone.getvalue()


def test_an_error_in_the_child_is_raised_by_the_parent(
    filled: Context,  # noqa: F811
    two: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent, real = os.getpid(), results_mod._jsonl_blocks

    def failing(*args: Any) -> Any:
        if os.getpid() != parent:
            raise StateError("state/filled.db: the child could not read it")
        return real(*args)

    monkeypatch.setattr(results_mod, "_jsonl_blocks", failing)
    with pytest.raises(StateError) as raised:
        export(filled, "mix", "jsonl", io.BytesIO(), options=ExportOptions())
    assert raised.value.problems == ["state/filled.db: the child could not read it"]
    assert len(two["forked"]) == two["children"] and all(_gone(pid) for pid in two["forked"])


def test_a_child_that_ends_without_a_word_is_an_error(
    filled: Context,  # noqa: F811
    two: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A child killed (the OOM killer, a signal) ends its pipe without its end: the parent
    says so, ends the others, and writes nothing more."""
    parent, real = os.getpid(), results_mod._jsonl_blocks

    def dying(*args: Any) -> Any:
        if os.getpid() != parent:
            os._exit(9)
        return real(*args)

    monkeypatch.setattr(results_mod, "_jsonl_blocks", dying)
    with pytest.raises(BatchopsError) as raised:
        export(filled, "mix", "jsonl", io.BytesIO(), options=ExportOptions())
    assert raised.value.problems == ["another process of the export ended abnormally; export again"]
    assert len(two["forked"]) == two["children"] and all(_gone(pid) for pid in two["forked"])


def test_an_error_in_the_parent_ends_the_child(
    filled: Context,  # noqa: F811
    two: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent, real = os.getpid(), results_mod._jsonl_blocks

    def failing(*args: Any) -> Any:
        if os.getpid() == parent:
            raise StateError("state/filled.db: the parent could not read it")
        return real(*args)

    monkeypatch.setattr(results_mod, "_jsonl_blocks", failing)
    with pytest.raises(StateError, match="the parent could not read it"):
        export(filled, "mix", "jsonl", io.BytesIO(), options=ExportOptions())
    assert len(two["forked"]) == two["children"] and all(_gone(pid) for pid in two["forked"])


def test_a_child_that_read_fewer_items_is_a_changed_source(
    filled: Context,  # noqa: F811
    two: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parent, real = os.getpid(), inputs.input_chunks

    def fewer_in_the_child(job: Any, root: Path, size: int) -> Any:
        chunks = real(job, root, size)
        if os.getpid() == parent:
            return chunks
        return rechunked([row for chunk in chunks for row in chunk.rows()][:8], size)

    monkeypatch.setattr(inputs, "input_chunks", fewer_in_the_child)
    with pytest.raises(SpecError) as raised:
        export(filled, "mix", "jsonl", io.BytesIO(), options=ExportOptions())
    assert raised.value.problems == [
        "jobs/data/mix.jsonl: job mix: changed while it was read; export again"
    ]
    assert len(two["forked"]) == two["children"] and all(_gone(pid) for pid in two["forked"])


@pytest.mark.parametrize("chunk", [1, 4])  # 1: the child meets the first row with a new field
def test_a_csv_file_whose_fields_grow_is_written_again_whole(
    filled: Context,  # noqa: F811
    two: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
) -> None:
    monkeypatch.setattr(results_mod, "CHUNK_KEYS", chunk)
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    path = tmp_path / "mix.csv"
    summary = export(filled, "mix", "csv", path, options=ExportOptions())
    assert f"{summary.rows} rows, 0 parse errors\n" + path.read_text() == golden["mix/csv/default"]
    assert len(two["forked"]) == 2 * two["children"] and all(_gone(p) for p in two["forked"])


@pytest.mark.parametrize(
    ("loadavg", "processes"),
    [
        ("1.62 1.50 1.20 1/85 3639\n", 2),  # a step just done: busy a minute ago, idle now
        ("0.10 0.20 0.30 2/85 3639\n", 1),  # one more process running now
        ("0.10 0.20 0.30 3/85 3639\n", 1),
    ],
)
def test_a_core_is_idle_by_what_runs_now_not_by_the_last_minutes_average(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, loadavg: str, processes: int
) -> None:
    """On 2 cores, an export started right after another CPU-bound step (a CI job's plan, the
    bench's own baseline) found a load average of 1.6 and ran on one process, though nothing
    else ran: the one-minute average still counted the finished step. What runs now is the
    runnable count in /proc/loadavg (this process included)."""
    (tmp_path / "loadavg").write_text(loadavg)
    monkeypatch.setattr(results_mod, "LOADAVG", tmp_path / "loadavg")
    monkeypatch.setattr(results_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(results_mod.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert results_mod._idle_cores() == processes


@pytest.mark.parametrize(
    ("cpus", "affinity", "load", "processes"),
    [
        (2, {0, 1}, 0.4, 2),
        (2, {0, 1}, 1.0, 1),  # one other process busy all the last minute
        (2, {0, 1}, 1.6, 1),
        (2, {0}, 0.0, 1),
        (8, set(range(8)), 0.5, 4),  # at most MAX_PROCESSES
        (8, set(range(8)), 5.5, 3),  # this one and the two cores left idle
        (8, set(range(8)), 7.2, 1),
        (8, {2, 3}, 0.0, 2),  # `taskset -c 2,3`
    ],
)
def test_a_process_more_only_for_a_core_left_idle(
    monkeypatch: pytest.MonkeyPatch, cpus: int, affinity: set[int], load: float, processes: int
) -> None:
    monkeypatch.setattr(results_mod.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(results_mod.os, "sched_getaffinity", lambda pid: affinity, raising=False)
    monkeypatch.setattr(results_mod.os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(results_mod, "LOADAVG", Path("/nonexistent/loadavg"))  # not Linux
    assert results_mod._idle_cores() == processes


def test_each_process_parses_only_its_own_lines_of_the_rows_cache(
    filled: Context,  # noqa: F811
    two: dict,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Counted in the parent: with a chunk a line, it parses every n-th line of the kept rows
    (the children the rest); with longer lines, every line, as one process does."""
    parsed: list[int] = []
    real = cache._line_rows

    def counted(fh: Any, line: bytes, rows: int | None) -> Any:
        made = real(fh, line, rows)
        parsed.append(len(made))
        return made

    monkeypatch.setattr(cache, "_line_rows", counted)
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert export_bytes(filled, "mix", "jsonl", "default") == golden["mix/jsonl/default"]
    items = len(next(j for j in filled.desired().jobs if j.name == "mix").items)
    assert items > 8 and len(two["forked"]) == two["children"]
    if two["lines"] == "a chunk a line":
        processes = two["children"] + 1  # its chunks: 0, n, 2n …
        assert parsed == [min(4, items - at) for at in range(0, items, 4 * processes)]
    else:
        assert sum(parsed) == items
