"""The many-core rendering path gives exactly what the one-core path gives: items and errors."""

from __future__ import annotations

from datetime import date

import pytest

from batchops.errors import SpecError
from batchops.pricing import PriceTable
from batchops.spec import parallel
from batchops.spec.caching import estimate
from batchops.spec.items import iter_items
from batchops.spec.model import load_project

TODAY = date(2026, 11, 21)


def project(tmp_path, lines: list[str]):
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    (tmp_path / "jobs" / "data" / "rows.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 5\n'
        'system = "Sort: {{ kind }}"\nprompt = "{{ text }} ({{ key }})"\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n'
    )
    return load_project(tmp_path / "jobs", tmp_path).jobs[0]


def one_core(job, root):
    prices = PriceTable.load()
    out, error = [], None
    try:
        for item in iter_items(job, root):
            price = prices.price("claude-haiku-4-5", TODAY)
            cost = estimate(job, item.params, price, prices)  # type: ignore[arg-type]
            out.append((item.key, item.custom_id, item.fingerprint, cost, "claude-haiku-4-5"))
    except SpecError as exc:
        error = exc.problems
    return out, error


def many_cores(job, root):
    out, error = [], None
    try:
        for row in parallel.desired_rows(
            job, root, PriceTable.load(), TODAY, chunk_bytes=150, processes=2
        ):
            out.append(row[:5])  # the request's size is checked elsewhere
    except SpecError as exc:
        error = exc.problems
    return out, error


GOOD = [f'{{"id": "k{i}", "kind": "t", "text": "row {i}"}}' for i in range(20)]


def test_same_items_in_the_same_order(tmp_path):
    job = project(tmp_path, GOOD + ['{"id": 7, "kind": "n", "text": "an int key"}', ""])
    serial, parallel_ = one_core(job, tmp_path), many_cores(job, tmp_path)
    assert serial == parallel_
    assert len(serial[0]) == 21 and serial[1] is None


def test_same_problem_lines(tmp_path):
    lines = (
        GOOD[:4]
        + [
            '{"id": "k1", "kind": "t", "text": "a duplicate across a chunk boundary"}',
            '{"kind": "t", "text": "no key"}',
            '["not", "an", "object"]',
            '{"id": "nokind", "text": "template variable missing"}',
            '{"id": "nokind", "kind": "t", "text": "duplicate of a row that failed"}',
            '{"id": "", "kind": "t", "text": "empty key"}',
        ]
        + GOOD[10:14]
    )
    job = project(tmp_path, lines)
    serial, parallel_ = one_core(job, tmp_path), many_cores(job, tmp_path)
    assert serial == parallel_
    assert serial[1] == [
        "jobs/data/rows.jsonl: line 5: job j: item k1: duplicate key (first at line 2)",
        "jobs/data/rows.jsonl: line 6: job j: no 'id' field",
        "jobs/data/rows.jsonl: line 7: job j: expected an object, not list",
        "jobs/data/rows.jsonl: line 8: job j: item nokind: template 'system': 'kind' is undefined",
        "jobs/data/rows.jsonl: line 9: job j: item nokind: duplicate key (first at line 8)",
        "jobs/data/rows.jsonl: line 10: job j: empty 'id'",
    ]


@pytest.mark.parametrize("bad", ['{"id": "x", "kind": ', b'{"id": "\xe9"}'])
def test_a_fatal_line_stops_both_alike(tmp_path, bad):
    job = project(tmp_path, GOOD[:5] + ['{"kind": "t"}'] + GOOD[6:9])
    path = tmp_path / "jobs" / "data" / "rows.jsonl"
    with path.open("ab") as fh:
        fh.write(bad if isinstance(bad, bytes) else bad.encode())
        fh.write(b"\n" + GOOD[15].encode() + b"\n")
    serial, parallel_ = one_core(job, tmp_path), many_cores(job, tmp_path)
    assert serial == parallel_
    assert serial[1][0] == "jobs/data/rows.jsonl: line 6: job j: no 'id' field"
    assert serial[1][1].startswith("jobs/data/rows.jsonl: ")
    assert len(serial[1]) == 2


def test_only_large_jsonl_inputs_go_parallel(tmp_path):
    job = project(tmp_path, GOOD)
    assert parallel.wants_parallel(job, min_bytes=1) == (parallel.workers() > 1)
    assert not parallel.wants_parallel(job)


def test_a_template_that_does_not_compile_is_the_same_error(tmp_path):
    """A template with a syntax error is told as the one-core path tells it, not as a worker
    process that broke."""
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    (tmp_path / "jobs" / "data" / "rows.jsonl").write_text("\n".join(GOOD) + "\n")
    (tmp_path / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 5\n'
        'prompt = "{{ text }"\ninput = { path = "data/rows.jsonl", key = "id" }\n'
    )
    job = load_project(tmp_path / "jobs", tmp_path).jobs[0]
    serial, parallel_ = one_core(job, tmp_path), many_cores(job, tmp_path)
    assert serial[1] is not None and "syntax error" in serial[1][0]
    assert parallel_ == serial
