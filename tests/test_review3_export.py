"""Review of `batchops results`: the export's fast paths against a real apply on the emulator.

Each test applies a small project on the emulator, then compares what `results` exports with what
`status` (the planner's own classification) says of the same items, or with a slow reference
(every item rendered, its record looked up alone).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from batchops.commands import results as results_mod
from batchops.commands.results import export
from batchops.commands.status import status
from batchops.plan.diff import classify
from batchops.spec import cache
from batchops.spec.items import input_of, iter_items
from batchops.state.api import NO_SUCCEEDED_ROW
from tests.projects import apply, context, record_forks, write_project, write_rows

STATES = ("succeeded", "pending", "retry", "failed", "todo")


def _rows(n: int, start: int = 1) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "text": f"text number {i}"} for i in range(start, start + n)]


def parsed(ctx, job: str, fmt: str = "jsonl", **kw: Any) -> list[dict[str, Any]]:
    """The rows `export` writes, read back (jsonl lines split at LF only, as JSONL is)."""
    out = io.BytesIO()
    export(ctx, job, fmt, out, **kw)
    text = out.getvalue().decode()
    if fmt == "jsonl":
        return [json.loads(line) for line in text.split("\n") if line]
    if fmt == "json":
        return json.loads(text)
    return list(csv.DictReader(io.StringIO(text)))


def status_counts(ctx, job: str) -> dict[str, int]:
    (s,) = [j for j in status(ctx).jobs if j.name == job]
    return {
        "succeeded": s.succeeded,
        "pending": s.pending,
        "retry": s.retrying,
        "failed": s.failed,
        "todo": s.todo,
    }


def export_counts(ctx, job: str) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for row in parsed(ctx, job):
        counts["todo" if row["state"] == "changed" else row["state"]] += 1
    return counts


# ------------------------------------------------------------------------------- defects


def test_a_key_holding_a_nul_character_keeps_its_result(tmp_path: Path, emulator: str) -> None:
    """A key with a NUL in it is accepted: apply sends it, stores its answer, and `status`
    counts it succeeded. The export looks keys up through SQLite's `json_each`, which ends a
    string at `\\u0000`: the item is not found, and is exported `todo` without its answer."""
    write_project(tmp_path, [{"id": "a\x00b", "text": "one"}, {"id": "plain", "text": "two"}])
    ctx = context(tmp_path, emulator)
    assert apply(ctx, wait=True).problems == []
    assert status_counts(ctx, "demo")["succeeded"] == 2
    got = [(r["key"], r["state"], r["text"] is not None) for r in parsed(ctx, "demo")]
    assert got == [("a\x00b", "succeeded", True), ("plain", "succeeded", True)], (
        f"the export lost the stored answer of the key holding a NUL: {got}"
    )


def test_a_job_renamed_by_a_moved_entry_exports_its_results_before_the_next_apply(
    tmp_path: Path, emulator: str
) -> None:
    """README "Renaming a job": with `moved = [{ from = "demo", to = "triage" }]`, `plan` and
    `status` already see demo's rows under triage (succeeded, failed). `results triage` reads the
    state under `triage` only: every item `todo`, no answer, and `--failed` empty."""
    rows = [
        {"id": "r1", "text": "fine"},
        {"id": "r2", "text": "[[emulator:fail=invalid_request_error]]"},
    ]
    write_project(tmp_path, rows)
    apply(context(tmp_path, emulator), wait=True)
    spec = tmp_path / "jobs" / "demo.toml"
    text = spec.read_text(encoding="utf-8").replace("[jobs.demo]", "[jobs.triage]")
    spec.write_text(
        text.replace("version = 1\n", 'version = 1\nmoved = [{ from = "demo", to = "triage" }]\n'),
        encoding="utf-8",
    )
    ctx = context(tmp_path, emulator)
    assert status_counts(ctx, "triage") == {**dict.fromkeys(STATES, 0), "succeeded": 1, "failed": 1}
    got = [(r["key"], r["state"], r["text"] is not None) for r in parsed(ctx, "triage")]
    failed = [r["key"] for r in parsed(ctx, "triage", failed_only=True)]
    assert (got, failed) == ([("r1", "succeeded", True), ("r2", "failed", False)], ["r2"]), (
        f"results of the renamed job disagree with status: {got}, --failed gives {failed}"
    )


def test_an_item_waiting_for_another_jobs_identical_request_is_pending_as_status_says(
    tmp_path: Path, emulator: str, emulator_admin: Any, state_location: Path | str
) -> None:
    """Job copy renders the same requests as demo, whose batch is still running: apply sends
    nothing for copy (its answers are on their way) and `status` counts copy's items pending.
    The export classifies each item from its own record alone and calls them `todo`. (Both
    backends: SQLite and PostgreSQL.)"""
    write_project(tmp_path, _rows(3))
    emulator_admin.set_config(processing_seconds=1000)
    apply(context(tmp_path, emulator, state=state_location))
    spec = (tmp_path / "jobs" / "demo.toml").read_text(encoding="utf-8")
    (tmp_path / "jobs" / "copy.toml").write_text(spec.replace("[jobs.demo]", "[jobs.copy]"))
    ctx = context(tmp_path, emulator, state=state_location)
    assert apply(ctx).submitted == 0
    assert status_counts(ctx, "copy") == {**dict.fromkeys(STATES, 0), "pending": 3}
    assert export_counts(ctx, "copy") == status_counts(ctx, "copy"), (
        f"results says {[r['state'] for r in parsed(ctx, 'copy')]} where status says pending"
    )


# --------------------------------------------------------------- checked, found correct


@pytest.fixture
def fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Rows cache for tiny jobs, chunks of 4 keys, two processes whenever the export may."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.setenv("BATCHOPS_CACHE", "on")
    monkeypatch.setattr(cache, "MIN_ROWS", 0)
    monkeypatch.setattr(results_mod, "CHUNK_KEYS", 4)
    monkeypatch.setattr(results_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(results_mod, "_idle_cores", lambda: 2)
    # the emulator's server thread runs in this process; the forked child never uses it
    monkeypatch.setattr(results_mod.threading, "active_count", lambda: 1)
    forked = record_forks(monkeypatch)
    return {"forked": forked, "mp": monkeypatch}


def reference(ctx, job_name: str) -> list[tuple[Any, ...]]:
    """(key, state, text, input) of every item the slow way: rendered, each looked up alone."""
    project = ctx.project()
    (job,) = [j for j in project.jobs if j.name == job_name]
    reader = ctx.reader()
    try:
        out = []
        for item in iter_items(job, project.root):
            found = reader.results_of(job_name, [item.key]).get(item.key)
            state, _ = classify(item, found.record if found else None, job.max_attempts)
            current = state == "succeeded" and found.result_fingerprint == item.fingerprint
            out.append((item.key, state, found.text if current else None, input_of(item)))
        return out
    finally:
        reader.close()


def every_way(ctx, fast: dict[str, Any], job: str = "demo") -> int:
    """Export in every format, rows cache on and off, and compare each with `reference`;
    returns how many exports took two processes."""
    want = reference(ctx, job)
    as_csv = [(k, s, t, {f: str(v) for f, v in i.items()}) for k, s, t, i in want]
    forks = len(fast["forked"])
    for cached in ("on", "off"):
        fast["mp"].setenv("BATCHOPS_CACHE", cached)
        for fmt in ("jsonl", "csv", "json"):
            rows = parsed(ctx, job, fmt)
            if fmt == "csv":
                got = [
                    (r["key"], r["state"], r["text"] or None,
                     {k[6:]: v for k, v in r.items() if k.startswith("input.") and v})
                    for r in rows
                ]  # fmt: skip
            else:
                got = [(r["key"], r["state"], r["text"], r["input"]) for r in rows]
            assert got == (as_csv if fmt == "csv" else want), (cached, fmt)
    fast["mp"].setenv("BATCHOPS_CACHE", "on")
    return len(fast["forked"]) - forks


def test_reordered_removed_and_readded_rows_export_alike_every_way(
    tmp_path: Path, emulator: str, fast: dict[str, Any]
) -> None:
    """Items written to state in one order, the data file then reordered, cut, grown, one row
    edited, rows re-added after being forgotten: every export (jsonl, csv, json; rows cache
    fresh, stale or off; one process or two over chunks of 4) gives the reference rows."""
    rows = _rows(20)
    write_project(tmp_path, rows)
    ctx = context(tmp_path, emulator)
    apply(ctx, wait=True)
    ctx.desired()  # rows kept
    assert every_way(ctx, fast) == 2  # jsonl and csv, rows cache on
    write_rows(tmp_path, list(reversed(rows)))  # the rows cache is stale now
    assert every_way(ctx, fast) == 2
    ctx.desired()
    every_way(ctx, fast)
    edited = [dict(r) for r in rows[5:15]] + _rows(5, 30)
    edited[2]["text"] = "edited"
    write_rows(tmp_path, edited)
    ctx.desired()
    every_way(ctx, fast)
    apply(ctx, wait=True)  # r1-r5 and r16-r20 forgotten
    write_rows(tmp_path, rows[5:10] + rows[0:5] + rows[10:15] + _rows(5, 30))
    ctx.desired()
    every_way(ctx, fast)
    states = {r["key"]: r["state"] for r in parsed(ctx, "demo")}
    assert states["r1"] == "succeeded" and states["r8"] == "changed"


# ------------------------------------------------------------------- added with the fixes


def test_a_key_cut_at_its_nul_never_takes_another_items_answer(
    tmp_path: Path, emulator: str, fast: dict[str, Any]
) -> None:
    """`a\\0z`, cut at its NUL, is `a`: added after `a` succeeded, with `a`'s very request (so
    its fingerprint), it has no record of its own and is `todo` (`status` says so too), never
    `a`'s answer. NUL keys that failed are in `--failed` and the csv, in every way of exporting
    (chunks of 4, a NUL key first in a chunk, two processes)."""
    fail = "[[emulator:fail=invalid_request_error]]"
    rows = [
        {"id": "a", "text": "same"},
        {"id": "b\x00", "text": fail},
        {"id": "b", "text": "fine"},
        {"id": "\x00", "text": "alone"},
        *_rows(3),
    ]
    write_project(tmp_path, rows)
    ctx = context(tmp_path, emulator)
    apply(ctx, wait=True)
    write_rows(tmp_path, [*rows[:4], {"id": "a\x00z", "text": "same"}, *rows[4:]])
    ctx.desired()  # rows kept
    assert status_counts(ctx, "demo") == {
        **dict.fromkeys(STATES, 0),
        "succeeded": 6,
        "failed": 1,
        "todo": 1,
    }
    states = {r["key"]: (r["state"], r["text"]) for r in parsed(ctx, "demo")}
    assert states["a\x00z"] == ("todo", None)
    assert states["b\x00"] == ("failed", None) and states["\x00"][0] == "succeeded"
    assert [r["key"] for r in parsed(ctx, "demo", failed_only=True)] == ["b\x00"]
    as_csv = {r["key"]: r["state"] for r in parsed(ctx, "demo", "csv")}
    assert (as_csv["a\x00z"], as_csv["b\x00"], as_csv["\x00"]) == ("todo", "failed", "succeeded")
    assert every_way(ctx, fast) == 2


def test_state_lookups_of_nul_keys_find_their_own_items_only(tmp_path: Path, emulator: str) -> None:
    """The SQLite reader itself: a NUL key, first in a chunk or not, gets its own item's row
    or none, and a cut key's namesake (`a`) appears only when asked for."""
    fail = "[[emulator:fail=invalid_request_error]]"
    write_project(tmp_path, [{"id": "a", "text": "one"}, {"id": "a\x00b", "text": fail}])
    ctx = context(tmp_path, emulator)
    apply(ctx, wait=True)
    reader = ctx.reader()
    try:
        (a,) = reader.succeeded_results("demo", ["a"])
        for keys in (["a\x00b", "a"], ["a", "a\x00b"], ["a\x00b"], ["a\x00c", "a"]):
            rows = dict(zip(keys, reader.succeeded_results("demo", keys), strict=True))
            assert rows == {k: a if k == "a" else NO_SUCCEEDED_ROW for k in keys}, keys
        found = reader.results_of("demo", ["a\x00b", "a\x00c"])
        assert list(found) == ["a\x00b"] and found["a\x00b"].record.outcome == "errored"
        assert sorted(reader.results_of("demo", ["a", "a\x00b"])) == ["a", "a\x00b"]
    finally:
        reader.close()


def test_a_renamed_job_exports_its_results_in_every_format_and_process(
    tmp_path: Path, emulator: str, fast: dict[str, Any]
) -> None:
    """The rows of a job renamed by a `moved` entry still to apply are read under the old name
    by every writer: jsonl and csv (on two processes, chunks of 4), json, and `--failed`."""
    rows = [*_rows(5), {"id": "bad", "text": "[[emulator:fail=invalid_request_error]]"}]
    write_project(tmp_path, rows)
    apply(context(tmp_path, emulator), wait=True)
    spec = tmp_path / "jobs" / "demo.toml"
    text = spec.read_text(encoding="utf-8").replace("[jobs.demo]", "[jobs.triage]")
    spec.write_text('moved = [{ from = "demo", to = "triage" }]\n' + text, encoding="utf-8")
    ctx = context(tmp_path, emulator)
    ctx.desired()  # rows kept
    want = [(r["id"], "failed" if r["id"] == "bad" else "succeeded") for r in rows]
    for fmt in ("jsonl", "csv", "json"):
        exported = parsed(ctx, "triage", fmt)
        assert [(r["key"], r["state"]) for r in exported] == want, fmt
        assert all(r["text"] for r in exported if r["state"] == "succeeded"), fmt
    assert len(fast["forked"]) == 2  # jsonl and csv
    assert [r["key"] for r in parsed(ctx, "triage", "csv", failed_only=True)] == ["bad"]


def copy_of_demo(root: Path, job: str = "copy") -> None:
    """A second job rendering the very requests of demo (its spec under another name)."""
    spec = (root / "jobs" / "demo.toml").read_text(encoding="utf-8")
    (root / "jobs" / f"{job}.toml").write_text(
        spec.replace("[jobs.demo]", f"[jobs.{job}]"), encoding="utf-8"
    )


def test_items_waiting_for_another_job_are_pending_in_every_format_and_process(
    tmp_path: Path, emulator: str, emulator_admin: Any, fast: dict[str, Any]
) -> None:
    """copy's items wait for demo's identical requests in flight: every writer (jsonl and csv
    on two processes over chunks of 4, json) calls them pending, saying whose answer each waits
    for as the plan does, and `--failed` leaves them out."""
    write_project(tmp_path, _rows(10))
    emulator_admin.set_config(processing_seconds=1000)
    apply(context(tmp_path, emulator))
    copy_of_demo(tmp_path)
    ctx = context(tmp_path, emulator)
    ctx.desired()  # rows kept
    plan, _ = ctx.plan(refresh=False)
    copy = plan.job("copy")
    assert copy is not None and copy.counts["pending"] == 10
    waits = {r.key: r.reason for r in copy.reuses}
    assert waits["r1"] == "same request as demo r1: takes its result once harvested"
    want = [(f"r{i}", "pending", waits[f"r{i}"]) for i in range(1, 11)]
    for fmt in ("jsonl", "csv", "json"):
        assert [(r["key"], r["state"], r["detail"]) for r in parsed(ctx, "copy", fmt)] == want
    assert len(fast["forked"]) == 2  # jsonl and csv
    assert parsed(ctx, "copy", failed_only=True) == []


@pytest.fixture
def state_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often an export's state reader is asked each of its per-chunk and beside-the-record
    questions, whichever backend it is."""
    from batchops.state.postgres import PostgresReader
    from batchops.state.sqlite import SqliteReader

    calls = dict.fromkeys(("succeeded_results", "results_of", "inflight_records", "batches"), 0)
    for cls in (SqliteReader, PostgresReader):
        for name in calls:
            real = getattr(cls, name)

            def counted(self, *args, _real=real, _name=name, **kwargs):
                calls[_name] += 1
                return _real(self, *args, **kwargs)

            monkeypatch.setattr(cls, name, counted)
    return calls


def test_chunks_of_current_results_ask_the_state_nothing_more(
    tmp_path: Path,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    state_location: Path | str,
    state_calls: dict[str, int],
) -> None:
    """In chunks of 4: a chunk whose items all hold their current results costs one query
    (`succeeded_results`) and nothing else. Once r10-r13 are added (to do), the chunks holding
    them look their items up (`results_of`, one query a chunk), and what the planner reads
    beside the records (the requests in flight, the batches) is read once for the export, not
    once a chunk."""
    monkeypatch.setattr(results_mod, "CHUNK_KEYS", 4)
    write_project(tmp_path, _rows(9))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    state_calls.update(dict.fromkeys(state_calls, 0))  # what apply asked
    for fmt in ("jsonl", "csv", "json"):
        assert {r["state"] for r in parsed(ctx, "demo", fmt)} == {"succeeded"}
    assert state_calls == {
        "succeeded_results": 3 * 3,
        "results_of": 0,
        "inflight_records": 0,
        "batches": 0,
    }
    write_rows(tmp_path, _rows(13))  # chunks r1-r4, r5-r8, r9-r12, r13
    state_calls.update(dict.fromkeys(state_calls, 0))
    rows = parsed(ctx, "demo")
    assert [r["state"] for r in rows] == ["succeeded"] * 9 + ["todo"] * 4
    assert state_calls == {
        "succeeded_results": 4,
        "results_of": 2,
        "inflight_records": 1,
        "batches": 1,
    }


def test_rows_rekeyed_while_in_flight_are_pending_as_status_says(
    tmp_path: Path, emulator: str, emulator_admin: Any
) -> None:
    """The data's keys are renamed (r1-r4 → k1-k4, the same texts) while their batch runs: each
    k<i> waits for the answer on its way to r<i> (a key of its own job no longer in its specs),
    and `status` counts them pending; so does the export, with the plan's reason."""
    emulator_admin.set_config(processing_seconds=1000)
    write_project(tmp_path, _rows(4))
    ctx = context(tmp_path, emulator)
    apply(ctx)
    write_rows(tmp_path, [{"id": f"k{i}", "text": f"text number {i}"} for i in range(1, 5)])
    assert status_counts(ctx, "demo") == {**dict.fromkeys(STATES, 0), "pending": 4}
    assert export_counts(ctx, "demo") == status_counts(ctx, "demo")
    details = [r["detail"] for r in parsed(ctx, "demo")]
    assert details[0] == "same request as demo r1: takes its result once harvested"


def test_items_of_a_batch_deleted_before_harvest_are_to_do_as_status_says(
    tmp_path: Path, emulator: str, sdk_client: Any, monkeypatch: pytest.MonkeyPatch, list_caught_up
) -> None:
    """A batch deleted outside batchops before its harvest, found so (drift `deleted`) by a
    refresh stopped before it requeued the items: they are still in flight in the state, but
    the plan sends them again, and `status` counts them to do. So does the export."""
    from batchops.apply.evaluator import Evaluator

    class Stopped(BaseException):
        """Stands in for a SIGKILL between the drift and the requeue."""

    def stop(self: Any, step: Any, index: int = 0) -> None:
        raise Stopped

    write_project(tmp_path, _rows(3))
    ctx = context(tmp_path, emulator)
    (batch_id,) = apply(ctx).batches_created
    sdk_client.messages.batches.delete(batch_id)
    monkeypatch.setattr(Evaluator, "requeue", stop)
    with pytest.raises(Stopped):
        ctx.refresh()
    monkeypatch.undo()
    assert status_counts(ctx, "demo") == {**dict.fromkeys(STATES, 0), "todo": 3}
    assert export_counts(ctx, "demo") == status_counts(ctx, "demo")
    assert {r["detail"] for r in parsed(ctx, "demo")} == {"results lost before harvest"}
