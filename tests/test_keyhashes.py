"""Duplicate keys found in little memory: producers hold only the keys of their last rows and
log every key's hash (`spec.keyhashes`); a hash logged twice has the job read again with those
keys held exactly. Errors are the ones a full set of keys gives (`iter_items`), wherever the
duplicate stands and whatever hashes collide; keys with one hash are never called duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchops.errors import SpecError
from batchops.spec import keyhashes, parallel, rowmaker
from batchops.spec.items import iter_items
from batchops.spec.keyhashes import KeyHashes
from tests.projects import rows_outcome
from tests.test_rowmaker import PRICES, TODAY, _project

N = 9000  # rows: a duplicate can stand farther apart than the 4,096 rows whose keys are held


def _lines(n: int = N, **changed: str) -> str:
    """n jsonl rows with keys row-1 … (keys of lines given by `changed`, as `line_12="row-3"`)."""
    out = []
    for number in range(1, n + 1):
        key = changed.get(f"line_{number}", f"row-{number}")
        out.append(json.dumps({"id": key, "subject": f"s{number}", "body": f"b{number}"}))
    return "".join(line + "\n" for line in out)


def _job(tmp_path: Path, text: str):
    return _project(tmp_path, "prompt", 'input = { path = "data/rows.jsonl", key = "id" }', text)


def _one_core(job, root):
    return rows_outcome(lambda: rowmaker.rows(job, root, PRICES, TODAY, {}))


def _full_set_error(job, root):
    """The problems `iter_items` reports (it holds every key it saw)."""
    return rows_outcome(lambda: (i.key for i in iter_items(job, root)))[1]


@settings(max_examples=200, deadline=None)
@given(
    hashes=st.lists(
        st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.sampled_from([-(1 << 63), 0, 7])),
        max_size=60,
    ),
    run=st.integers(1, 9),
)
def test_the_suspects_are_the_hashes_logged_more_than_once(hashes, run):
    original = keyhashes.RUN
    keyhashes.RUN = run  # runs written to the file, split over the buckets
    try:
        log = KeyHashes()
        for at in range(0, len(hashes), 4):
            log.add_hashes(hashes[at : at + 4])
        expected = {h for h in hashes if hashes.count(h) > 1}
        assert log.suspects() == expected
        assert log.count == len(hashes)
        log.close()
    finally:
        keyhashes.RUN = original


def test_a_duplicate_far_from_its_first_is_reported_as_a_full_set_of_keys_reports_it(tmp_path):
    text = _lines(line_8000="row-10", line_8500="row-4200", line_8600="row-8400")
    text = text.replace('{"id": "row-8550"', '{"idx": "row-8550"')  # another problem among them
    job = _job(tmp_path, text)
    _, problems = _one_core(job, tmp_path)
    assert problems == _full_set_error(job, tmp_path)
    shown = "jobs/data/rows.jsonl"
    assert (
        problems[0] == f"{shown}: line 8000: job j: item row-10: duplicate key (first at line 10)"
    )
    assert problems[1] == (
        f"{shown}: line 8500: job j: item row-4200: duplicate key (first at line 4200)"
    )
    assert len(problems) == 4
    with pytest.raises(SpecError) as e:  # the requests of a saved plan: the same check
        list(rowmaker.requests(job, tmp_path))
    assert e.value.problems == problems


def test_a_key_repeated_past_the_last_line_problem_is_reported(tmp_path):
    text = _lines(n=6000, line_5999="row-2") + "{not json\n"
    job = _job(tmp_path, text)
    _, problems = _one_core(job, tmp_path)
    assert problems == _full_set_error(job, tmp_path)
    assert "line 5999: job j: item row-2: duplicate key (first at line 2)" in problems[0]


def test_keys_with_one_hash_are_not_duplicates(tmp_path, monkeypatch):
    job = _job(tmp_path, _lines())
    expected = _one_core(job, tmp_path)
    assert expected[1] is None and len(expected[0]) == N
    monkeypatch.setattr(keyhashes, "_hash", lambda key: 42)  # every key collides with every other
    assert _one_core(job, tmp_path) == expected


def test_a_duplicate_among_keys_with_one_hash_is_still_found(tmp_path, monkeypatch):
    job = _job(tmp_path, _lines(line_7000="row-3"))
    monkeypatch.setattr(keyhashes, "_hash", lambda key: len(key) % 3)
    _, problems = _one_core(job, tmp_path)
    assert problems == [
        "jobs/data/rows.jsonl: line 7000: job j: item row-3: duplicate key (first at line 3)"
    ]


@pytest.mark.parametrize("collide", [False, True])
def test_many_cores_find_a_duplicate_past_their_recent_keys(tmp_path, monkeypatch, collide):
    monkeypatch.setattr(parallel, "RECENT_KEYS", 1)  # only the log remembers earlier ranges
    if collide:
        monkeypatch.setattr(keyhashes, "_hash", lambda key: 5)
        monkeypatch.setattr(parallel, "_key_hash", lambda key: 5)
    job = _job(tmp_path, _lines(line_8000="row-10"))
    many = rows_outcome(
        lambda: parallel.desired_rows(job, tmp_path, PRICES, TODAY, chunk_bytes=20_000, processes=2)
    )
    assert many[1] == _one_core(job, tmp_path)[1] == _full_set_error(job, tmp_path)
    assert "item row-10: duplicate key (first at line 10)" in many[1][0]


def test_many_cores_with_keys_of_one_hash_give_the_rows_of_one(tmp_path, monkeypatch):
    job = _job(tmp_path, _lines())
    expected = _one_core(job, tmp_path)
    monkeypatch.setattr(parallel, "RECENT_KEYS", 1)
    monkeypatch.setattr(keyhashes, "_hash", lambda key: 5)
    monkeypatch.setattr(parallel, "_key_hash", lambda key: 5)
    many = rows_outcome(
        lambda: parallel.desired_rows(job, tmp_path, PRICES, TODAY, chunk_bytes=1, processes=2)
    )
    assert many == expected
