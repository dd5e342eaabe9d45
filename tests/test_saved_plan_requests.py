"""A saved plan's requests come from the fast producer (`rowmaker.requests`), not the general path.

`rowmaker.requests` must give, for every job shape and whatever the data holds, what the
general path gives: (item.key, item.fingerprint, orjson.dumps(item.params)) of `iter_items`,
and the same errors. A saved plan's lines must be what `orjson.dumps` writes for each request's
dict, hold exactly the requests the plan shows, and be refused when the data changed since."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batchops.errors import PlanError
from batchops.plan import saved
from batchops.plan.actions import SubmitBatch
from batchops.spec import rowmaker
from batchops.spec.desired import requests_for
from batchops.spec.items import TemplateRows, iter_items
from tests.projects import context, rows, rows_outcome, write_project, write_rows
from tests.test_rowmaker import JOBS, _project, lines


def _general(job, root):
    return rows_outcome(
        lambda: (
            (i.key, i.fingerprint, orjson.dumps(i.params))
            for i in iter_items(job, root, custom_ids=False)
        )
    )


def _fast(job, root):
    return rows_outcome(lambda: rowmaker.requests(job, root))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(sorted(JOBS)), data=st.lists(lines(), max_size=8))
@example("prompt", ['{"id": "a", "subject": "s", "body": "b"}'] * 2)
@example("small", ['{"id": "a", "subject": "s", "body": "' + "x" * 1100 + '"}'])
@example("key", ['{"id": "a", "subject": "s", "body": "b", "key": "not me"}'])
@example("twice", ['{"id": "a", "body": "b", "n": 1e-7}', '{"id": "b", "body": "c"}'])
@example("blocks", ['{"id": "a", "subject": "s", "body": "b"}'])
def test_jsonl_requests_are_the_general_path(shape, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        text = "".join(line + "\n" for line in data)
        job = _project(root, shape, 'input = { path = "data/rows.jsonl", key = "id" }', text)
        assert _fast(job, root) == _general(job, root)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(["prompt", "key", "twice", "small", "system", "blocks"]),
    records=st.lists(
        st.lists(
            st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=8),
            min_size=3,
            max_size=4,
        ),
        max_size=6,
    ),
)
def test_csv_requests_are_the_general_path(shape, records):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "subject", "body"])
    writer.writerows(records)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        line = 'input = { path = "data/rows.csv", key = "id" }'
        job = _project(root, shape, line, buffer.getvalue(), "csv")
        assert _fast(job, root) == _general(job, root)


@pytest.mark.parametrize("shape", sorted(JOBS))
def test_inline_items_requests_are_the_general_path(tmp_path, shape):
    items = 'items = [{ key = "one", subject = "s", body = "first" }, { key = "two", body = "x" }]'
    job = _project(tmp_path, shape, items, "")
    fast = _fast(job, tmp_path)
    assert fast == _general(job, tmp_path)
    assert fast[0] or fast[1]  # something was made or refused


def test_raw_requests_job_gives_its_requests(tmp_path):
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    raw = [
        {"custom_id": "a", "params": {"model": "m", "max_tokens": 4, "messages": [], "z": 1.5}},
        {"custom_id": "b", "params": {"max_tokens": 4, "model": "m", "messages": []}},
    ]
    (tmp_path / "jobs" / "data" / "r.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8"
    )
    (tmp_path / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nrequests = { path = "data/r.jsonl" }\n', encoding="utf-8"
    )
    from batchops.spec.model import load_project

    job = load_project(tmp_path / "jobs", tmp_path).jobs[0]
    fast = _fast(job, tmp_path)
    assert fast == _general(job, tmp_path)
    assert [(k, orjson.loads(p)) for k, _, p in fast[0]] == [
        (r["custom_id"], r["params"]) for r in raw
    ]


def test_the_common_shape_never_reaches_the_general_path(tmp_path, monkeypatch):
    data = "".join(
        json.dumps({"id": f"row-{i}", "subject": f"S {i}", "body": "b" * i}) + "\n"
        for i in range(50)
    )
    job = _project(tmp_path, "prompt", 'input = { path = "data/rows.jsonl", key = "id" }', data)
    expected = _general(job, tmp_path)
    monkeypatch.setattr(TemplateRows, "line", lambda *a: pytest.fail("general path used"))
    monkeypatch.setattr(TemplateRows, "item", lambda *a: pytest.fail("general path used"))
    assert _fast(job, tmp_path) == expected and len(expected[0]) == 50


def test_requests_for_keeps_only_the_keys_asked(tmp_path):
    write_project(tmp_path, rows(5))
    project = context(tmp_path, None).desired().project
    got = [k for k, _, _ in requests_for(project, "demo", {"r2", "r4"})]
    assert got == ["r2", "r4"]


# --- saved plans ---------------------------------------------------------------------------------


def _plan(root: Path):
    ctx = context(root, None)
    plan, desired = ctx.plan((), refresh=False)
    return ctx, plan, desired


def test_a_saved_plan_holds_the_requests_the_plan_shows(tmp_path):
    """Every request line is `orjson.dumps` of its dict (the bytes the general path wrote),
    its params those `iter_items` renders, one per item the plan sends, in the plan's order."""
    write_project(
        tmp_path,
        rows(7, r3='quote " and \\ and é 🙂', r5="line\nbreak"),
        extra='system = "Sort it."\nparams = { temperature = 0.5, stop_sequences = ["x"] }\n',
    )
    ctx, plan, desired = _plan(tmp_path)
    path = tmp_path / "plan.jsonl"
    saved.save(plan, desired, path, "prices")
    body = path.read_bytes().split(b"\n")[1:-2]
    requests = [orjson.loads(line) for line in body if b'"step":' not in line[:8]]
    for line in body:
        assert orjson.dumps(orjson.loads(line)) == line
    general = {i.key: i for i in iter_items(ctx.desired().project.jobs[0], tmp_path)}
    shown = [i for s in plan.steps if isinstance(s, SubmitBatch) for i in s.items]
    assert [r["key"] for r in requests] == [i.key for i in shown] == [f"r{n}" for n in range(1, 8)]
    for r, item in zip(requests, shown, strict=True):
        assert r == {
            "key": item.key,
            "custom_id": item.custom_id,
            "fingerprint": item.fingerprint,
            "reason": item.reason,
            "attempt": item.attempt,
            "params": general[item.key].params,
        }
        assert list(r["params"]) == list(general[item.key].params)  # the same key order
    loaded = ctx.load_plan(path)
    index = next(n for n, s in enumerate(loaded.plan.steps) if isinstance(s, SubmitBatch))
    assert [(w.key, p) for w, p in saved.saved_requests(loaded, index)] == [
        (r["key"], r["params"]) for r in requests
    ]


def test_a_request_changed_after_the_plan_is_refused_when_saving(tmp_path):
    write_project(tmp_path, rows(4))
    _, plan, desired = _plan(tmp_path)
    write_rows(tmp_path, rows(4, r3="edited after the plan was made"))
    path = tmp_path / "plan.jsonl"
    with pytest.raises(PlanError) as e:
        saved.save(plan, desired, path, "prices")
    assert str(e.value) == "job demo: item r3 changed since the plan was made; make a new plan"
    assert not path.exists() and not list(tmp_path.glob(".plan.jsonl.*"))


def test_a_request_gone_after_the_plan_is_refused_when_saving(tmp_path):
    write_project(tmp_path, rows(4))
    _, plan, desired = _plan(tmp_path)
    write_rows(tmp_path, rows(4)[:2])
    with pytest.raises(PlanError) as e:
        saved.save(plan, desired, tmp_path / "plan.jsonl", "prices")
    assert str(e.value) == "job demo: item r3 changed since the plan was made; make a new plan"
