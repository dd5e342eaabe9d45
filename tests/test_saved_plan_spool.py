"""`plan -o` writes the request lines its own render kept (`spec.spool`), not a second render.

A saved plan made from kept lines must be byte for byte the one made by rendering every item
again (the header but its plan_id and created_at), on every path a line can take: the fast
producer, the general path, a job of literal requests, several batches, items of several
reasons and attempts scattered through a job. When the lines are not whole (rows served from
elsewhere, a render cut short) the job is rendered again; lines that are not the plan's are
refused. The header lists no submit action (the request lines do), and loading it gives back
the plan that was saved.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from array import array
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batchops.errors import PlanError
from batchops.plan import saved
from batchops.plan.actions import SubmitBatch
from batchops.spec import rowmaker
from batchops.spec.items import iter_items
from batchops.spec.spool import RequestSpool, request_line
from tests.projects import apply, context, rows, rows_outcome, run_cli, write_project, write_rows
from tests.test_rowmaker import JOBS, PRICES, TODAY, lines
from tests.test_rowmaker import _project as _shaped


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(sorted(JOBS)), data=st.lists(lines(), max_size=8))
@example("prompt", ['{"id": "a", "subject": "s", "body": "b"}', '{"id": "b", "body": 1}'])
@example("twice", ['{"id": "a", "body": "b", "n": "c"}'])
def test_kept_lines_are_the_general_paths_requests(shape, data):
    """Whatever path each row takes, a render that ends keeps one line per row, in order: the
    general path's request of the item (and a render that fails keeps no whole job)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        text = "".join(line + "\n" for line in data)
        job = _shaped(root, shape, 'input = { path = "data/rows.jsonl", key = "id" }', text)
        spool = RequestSpool()
        kept_lines = spool.job(job.name)
        made, problems = rows_outcome(
            lambda: rowmaker.rows(job, root, PRICES, TODAY, {}, kept_lines)
        )
        if problems is not None:
            assert spool.complete(job.name, len(made)) is None
            return
        kept_lines.finish()
        kept = spool.complete(job.name, len(made))
        assert kept is not None
        items = list(iter_items(job, root))
        assert [m[:3] for m in made] == [(i.key, i.custom_id, i.fingerprint) for i in items]
        assert [kept.expand(kept.line(n), b"\n") for n in range(len(made))] == [
            request_line(i.key, i.custom_id, i.fingerprint, orjson.dumps(i.params)) for i in items
        ]
        spool.close()


# A row the fast producer leaves to the general path (its text is not a string), and strings
# JSON must escape.
TRICKY = [
    *rows(7, r3='quote " and \\ and é 🙂', r5="line\nbreak"),
    {"id": "r8", "text": 12.5},
]


def _project(root, data=TRICKY):
    write_project(
        root,
        data,
        extra='system = "Sort it."\nparams = { temperature = 0.5, stop_sequences = ["x"] }\n',
    )
    requests = [
        {"custom_id": "a", "params": {"model": "m", "max_tokens": 4, "messages": [], "z": 1.5}},
        {"custom_id": "b", "params": {"max_tokens": 4, "model": "m", "messages": []}},
    ]
    (root / "jobs" / "data" / "r.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in requests), encoding="utf-8"
    )
    (root / "jobs" / "raw.toml").write_text(
        'version = 1\n[jobs.raw]\nrequests = { path = "data/r.jsonl" }\n', encoding="utf-8"
    )


def _no_second_render(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("rendered a second time")

    monkeypatch.setattr(saved, "requests_for", fail)


def _comparable(path):
    """The file's lines, the header without what differs between two saves of one plan."""
    lines = path.read_bytes().split(b"\n")
    header = orjson.loads(lines[0])
    header.pop("plan_id")
    header["plan"].pop("created_at")
    return header, lines[1:-2]


def _both(root, ctx, monkeypatch):
    """(plan, lines) saved from kept lines, and the lines saved by rendering again."""
    plan, desired = ctx.plan(refresh=False, keep_requests=True)
    assert plan.submits
    kept = root / "kept.jsonl"
    with monkeypatch.context() as m:
        _no_second_render(m)
        saved.save(plan, desired, kept, "prices")
    again, desired_again = ctx.plan(refresh=False)
    rendered = root / "rendered.jsonl"
    saved.save(again, desired_again, rendered, "prices")
    return plan, kept, rendered


def test_kept_lines_make_the_file_a_second_render_makes(tmp_path, monkeypatch):
    _project(tmp_path)
    ctx = context(tmp_path, None, max_batch_requests=3)
    plan, kept, rendered = _both(tmp_path, ctx, monkeypatch)
    assert len(plan.submits) == 4  # demo: 3 + 3 + 2; raw: 2
    assert _comparable(kept) == _comparable(rendered)
    header, body = _comparable(kept)
    for line in body:
        assert orjson.dumps(orjson.loads(line)) == line  # what orjson writes for its dict
    requests = [orjson.loads(line) for line in body if not line.startswith(b'{"step":')]
    assert [r["custom_id"] for r in requests] == [
        i.custom_id for s in plan.submits for i in s.items
    ]
    assert list(requests[0]) == ["key", "custom_id", "fingerprint", "params", "reason", "attempt"]
    loaded = ctx.load_plan(kept)
    assert loaded.plan == plan
    for n, step in enumerate(loaded.plan.steps):
        if isinstance(step, SubmitBatch):
            got = saved.saved_requests(loaded, n)
            assert [(w.custom_id, w.fingerprint) for w, _ in got] == [
                (i.custom_id, i.fingerprint) for i in step.items
            ]


def test_the_header_lists_no_submit_action(tmp_path, monkeypatch):
    _project(tmp_path)
    ctx = context(tmp_path, None)
    _, kept, _ = _both(tmp_path, ctx, monkeypatch)
    header = orjson.loads(kept.read_bytes().split(b"\n", 1)[0])
    assert header["plan"]["summary"]["submit"] == 10
    assert all(job["actions"] == [] for job in header["plan"]["jobs"])


def test_show_of_a_plan_saved_from_kept_lines_is_the_plan(tmp_path):
    _project(tmp_path)
    saved_run = run_cli(tmp_path, None, "plan", "--no-refresh", "-o", "plan.jsonl")
    assert saved_run.returncode == 0, saved_run.stderr
    shown = run_cli(tmp_path, None, "show", "plan.jsonl")
    assert shown.returncode == 0, shown.stderr
    planned = run_cli(tmp_path, None, "plan", "--no-refresh")
    assert shown.stdout == planned.stdout
    assert saved_run.stdout.startswith(planned.stdout)


def test_items_scattered_through_a_job_on_each_backend(
    tmp_path, emulator, monkeypatch, state_location
):
    """After an apply, a plan sends changed items between unchanged ones, and new ones at the
    end, the last changed one next to the first new one: runs of one kind, not one range."""
    write_project(tmp_path, rows(6))
    ctx = context(tmp_path, emulator, state=state_location, max_batch_requests=3)
    apply(ctx, wait=True)
    write_rows(tmp_path, rows(9, r2="changed two", r6="changed six"))
    plan, kept, rendered = _both(tmp_path, ctx, monkeypatch)
    sent = [(i.key, i.reason) for s in plan.submits for i in s.items]
    assert sent == [
        ("r2", "changed"), ("r6", "changed"), ("r7", "todo"), ("r8", "todo"), ("r9", "todo")
    ]  # fmt: skip
    assert _comparable(kept) == _comparable(rendered)
    report = apply(ctx, plan_file=kept)
    assert report.submitted == 5


def test_lines_not_whole_are_rendered_again(tmp_path, monkeypatch):
    _project(tmp_path)
    ctx = context(tmp_path, None)
    plan, desired = ctx.plan(refresh=False, keep_requests=True)
    desired.spool.job("demo")  # a render of demo begun again and not finished
    calls = []
    real = saved.requests_for

    def counted(project, job, keys=None):
        calls.append(job)
        return real(project, job, keys)

    monkeypatch.setattr(saved, "requests_for", counted)
    path = tmp_path / "plan.jsonl"
    saved.save(plan, desired, path, "prices")
    assert calls == ["demo"]  # raw's lines were whole: copied
    again, desired_again = ctx.plan(refresh=False)
    monkeypatch.setattr(saved, "requests_for", real)
    saved.save(again, desired_again, tmp_path / "rendered.jsonl", "prices")
    assert _comparable(path) == _comparable(tmp_path / "rendered.jsonl")


def test_kept_lines_that_are_not_the_plans_are_refused(tmp_path):
    _project(tmp_path)
    ctx = context(tmp_path, None)
    plan, desired = ctx.plan(refresh=False, keep_requests=True)
    write_rows(tmp_path, TRICKY[1:] + TRICKY[:1])  # the same items, another order
    _, other = ctx.plan(refresh=False, keep_requests=True)
    mixed = dataclasses.replace(desired.desired, spool=other.spool)
    path = tmp_path / "plan.jsonl"
    with pytest.raises(PlanError) as e:
        saved.save(plan, mixed, path, "prices")
    assert str(e.value) == "job demo: the kept requests are not the plan's; plan again"
    assert not path.exists() and not list(tmp_path.glob(".plan.jsonl.*"))


def test_a_spool_knows_which_jobs_are_whole():
    spool = RequestSpool()
    lines = spool.job("j")
    lines.add("k1", "c1", "sha256:00", b'{"a":1}')
    lines.add("k2", "c2", "sha256:01", b"{}")
    assert spool.complete("j", 2) is None  # not finished
    lines.finish()
    assert spool.complete("j", 3) is None and spool.complete("other", 2) is None
    assert spool.complete("j", 2) is lines
    assert lines.line(1) == b'{"key":"k2","custom_id":"c2","fingerprint":"sha256:01","params":{}\n'
    assert b"".join(lines.read(0, 2)) == lines.line(0) + lines.line(1)
    broken = spool.job("b")
    broken.add("k\ud800", "c", "sha256:02", b"{}")  # a key orjson will not write
    broken.finish()
    assert spool.complete("b", 0) is None and spool.complete("b", 1) is None
    spool.close()


def _on_workers(monkeypatch, chunk_bytes=64):
    """Jobs with a jsonl input rendered by two worker processes, a few lines a range."""
    from batchops.spec import parallel

    monkeypatch.setattr(parallel.wants_parallel, "__defaults__", (0,))
    monkeypatch.setattr(parallel, "workers", lambda: 2)
    rest = parallel.desired_blocks.__defaults__[1:]
    monkeypatch.setattr(parallel.desired_blocks, "__defaults__", (chunk_bytes, *rest))


def test_lines_kept_by_worker_processes_make_the_same_file(tmp_path, monkeypatch):
    """On every core, each worker keeps its ranges' lines and the parent takes them in range
    order: the file is the one a second render makes (the fast producer's rows and the general
    path's, r8, both)."""
    _project(tmp_path, TRICKY + rows(40)[8:])
    _on_workers(monkeypatch)
    ctx = context(tmp_path, None, max_batch_requests=7)
    plan, kept, rendered = _both(tmp_path, ctx, monkeypatch)
    assert _comparable(kept) == _comparable(rendered)
    assert ctx.load_plan(kept).plan == plan


def test_a_job_the_workers_hand_back_is_rendered_again(tmp_path, monkeypatch):
    """A key hash seen twice ends the workers' pass after some ranges were taken (the one-core
    path gives the rest): the job's lines are given up, so a saved plan renders it again rather
    than save a part of it (a guard: the spool's line count would refuse a part too)."""
    from batchops.spec import parallel

    _project(tmp_path, TRICKY + rows(40)[8:])
    _on_workers(monkeypatch)
    real = hash  # the workers are forked: they see the patched function too
    monkeypatch.setattr(parallel, "_key_hash", lambda key: 0 if key in ("r2", "r30") else real(key))
    ctx = context(tmp_path, None)
    plan, desired = ctx.plan(refresh=False, keep_requests=True)
    assert [i.key for s in plan.submits if s.job == "demo" for i in s.items] == [
        f"r{n}" for n in range(1, 41)
    ]
    assert desired.spool.complete("demo", 40) is None
    assert desired.spool.complete("raw", 2) is not None
    path = tmp_path / "plan.jsonl"
    saved.save(plan, desired, path, "prices")
    again, desired_again = ctx.plan(refresh=False)
    saved.save(again, desired_again, tmp_path / "rendered.jsonl", "prices")
    assert _comparable(path) == _comparable(tmp_path / "rendered.jsonl")


@pytest.mark.parametrize("read_size", [16, 64, 1 << 20])
@pytest.mark.parametrize("mark_lines", [2, 1024])
def test_kept_lines_are_found_from_a_few_marks_by_their_newlines(
    monkeypatch, read_size, mark_lines
):
    """A spool keeps where lines start only every few thousand lines (`fold`), not the size of
    every line: each line, and each run of lines, still reads back exactly."""
    from batchops.spec import spool as spool_mod

    monkeypatch.setattr(spool_mod, "_READ", read_size)
    monkeypatch.setattr(spool_mod, "_MARK_LINES", mark_lines)
    kept = spool_mod.JobSpool()
    lines = [
        spool_mod.request_line(f"k{n}", f"c{n}", "fp", b'{"x":"' + b"y" * (n * 7 % 90) + b'"}')
        for n in range(60)
    ]
    for n, line in enumerate(lines):
        kept.write(line)
        kept.size(len(line))
        if n % 7 == 3 or n == 20:
            kept.fold()
    kept.finish()
    assert len(kept) == 60 and kept.sizes == array("I")
    assert [kept.line(n) for n in range(60)] == lines
    for start in range(0, 61, 3):
        for stop in range(start, 61, 4):
            pieces = list(kept.read(start, stop))
            assert b"".join(pieces) == b"".join(lines[start:stop])
            assert all(piece.endswith(b"\n") for piece in pieces)  # whole lines each
    kept.close()


def test_a_plan_written_by_threads_a_piece_at_a_time_loads_whole(tmp_path, monkeypatch):
    """The digest and the file are written by threads of their own, in many pieces here: the
    file holds every line in order and its digest is over exactly those bytes (loading checks
    it), the same file as written in one piece."""
    _project(tmp_path)
    ctx = context(tmp_path, None, max_batch_requests=3)
    plan, desired = ctx.plan(refresh=False)
    whole = tmp_path / "whole.jsonl"
    saved.save(plan, desired, whole, "prices")
    monkeypatch.setattr(saved, "_FLUSH_BYTES", 64)
    plan, desired = ctx.plan(refresh=False)
    pieces = tmp_path / "pieces.jsonl"
    saved.save(plan, desired, pieces, "prices")
    assert _comparable(pieces) == _comparable(whole)
    assert ctx.load_plan(pieces).plan == plan


def test_a_plan_whose_file_cannot_be_written_leaves_nothing(tmp_path, monkeypatch):
    """A write that fails part way (a full disk) is raised by `save`: no plan file, no
    temporary file, and the writer's threads are gone."""
    import errno
    import io
    import threading

    _project(tmp_path)
    ctx = context(tmp_path, None, max_batch_requests=3)
    plan, desired = ctx.plan(refresh=False)
    monkeypatch.setattr(saved, "_FLUSH_BYTES", 64)
    writes = {"n": 0}
    real_write = io.BufferedWriter.write

    class Full(io.BufferedWriter):
        def write(self, data):
            writes["n"] += 1
            if writes["n"] > 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(self, data)

    real_fdopen = os.fdopen

    def opening(fd, mode="r", *args, **kwargs):  # the plan's temporary file (`new_temp`)
        fh = real_fdopen(fd, mode, *args, **kwargs)
        if mode == "wb":
            return Full(fh.detach())
        return fh

    monkeypatch.setattr(os, "fdopen", opening)
    path = tmp_path / "plan.jsonl"
    with pytest.raises(OSError, match="No space left"):
        saved.save(plan, desired, path, "prices")
    assert writes["n"] > 3
    assert not path.exists() and not list(tmp_path.glob(".plan.jsonl.*"))
    assert not [t for t in threading.enumerate() if t.name == "batchops-plan-write"]
