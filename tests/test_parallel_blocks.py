"""Rows as blocks (`rowmaker.Block`): the many-core path hands the parent one block a range, and
what planning builds from blocks is what it builds from the one-core path's rows, errors too."""

from __future__ import annotations

import functools
from datetime import date

import pytest

from batchops.pricing import ItemEstimate, PriceTable
from batchops.spec import desired, parallel, rowmaker
from batchops.spec.model import load_project
from tests.projects import rows_outcome

TODAY = date(2026, 11, 21)
GOOD = [f'{{"id": "k{i}", "kind": "t", "text": "row {i}"}}' for i in range(40)]


def project(tmp_path, lines: list[str]):
    (tmp_path / "jobs" / "data").mkdir(parents=True, exist_ok=True)
    (tmp_path / "jobs" / "data" / "rows.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 5\n'
        'system = "Sort: {{ kind }}"\nprompt = "{{ text }} ({{ key }})"\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n'
    )
    return load_project(tmp_path / "jobs", tmp_path)


def serial(job, root):
    return rows_outcome(lambda: rowmaker.rows(job, root, PriceTable.load(), TODAY, {}))


def parts(job, root, chunk_bytes=150):
    return list(
        parallel.desired_blocks(
            job, root, PriceTable.load(), TODAY, chunk_bytes=chunk_bytes, processes=2
        )
    )


def many(job, root, chunk_bytes=150):
    return rows_outcome(
        lambda: parallel.desired_rows(
            job, root, PriceTable.load(), TODAY, chunk_bytes=chunk_bytes, processes=2
        )
    )


def test_a_clean_file_comes_as_blocks_the_parent_takes_whole(tmp_path):
    job = project(tmp_path, GOOD + ['{"id": 7, "kind": "n", "text": "an int key"}', ""]).jobs[0]
    got = parts(job, tmp_path)
    assert len(got) > 3 and all(type(p) is rowmaker.Block for p in got)
    rows = [r for p in got for r in rowmaker.unpack(p)]
    assert (rows, None) == serial(job, tmp_path) == many(job, tmp_path)


@pytest.mark.parametrize("at", [1, 3, 20, 39])
def test_a_duplicate_in_another_range_or_the_same_is_told_as_one_core_tells_it(tmp_path, at):
    lines = [*GOOD[:at], GOOD[at - 1].replace("row", "again"), *GOOD[at:]]
    job = project(tmp_path, lines).jobs[0]
    one = serial(job, tmp_path)
    assert one[1] == [
        f"jobs/data/rows.jsonl: line {at + 1}: job j: item k{at - 1}: duplicate key "
        f"(first at line {at})"
    ]
    for chunk_bytes in (60, 150, 1000, 1 << 20):
        assert many(job, tmp_path, chunk_bytes) == one


def test_problems_after_clean_ranges_give_every_row_and_the_same_lines(tmp_path):
    lines = [
        *GOOD[:25],
        '{"kind": "t", "text": "no key"}',
        '{"id": "k3", "kind": "t", "text": "a duplicate of an early range"}',
        '{"id": "nokind", "text": "template variable missing"}',
        *GOOD[25:],
        '{"id": "k30", "kind": "t", "text": "a duplicate of a late range"}',
    ]
    job = project(tmp_path, lines).jobs[0]
    one = serial(job, tmp_path)
    assert len(one[0]) == 40 and len(one[1]) == 4
    assert many(job, tmp_path) == one


def test_a_file_cut_by_a_fatal_line_after_clean_ranges(tmp_path):
    job = project(tmp_path, GOOD).jobs[0]
    with (tmp_path / "jobs" / "data" / "rows.jsonl").open("ab") as fh:
        fh.write(b'{"id": "\xe9"}\n' + GOOD[0].encode() + b"\n")
    one = serial(job, tmp_path)
    assert len(one[0]) == 40 and len(one[1]) == 1
    assert many(job, tmp_path) == one


def test_two_keys_with_one_hash_are_no_duplicate(tmp_path, monkeypatch):
    """Every key hashing alike (as two keys might): the one-core path, asked, finds none."""
    job = project(tmp_path, GOOD).jobs[0]
    monkeypatch.setattr(parallel, "_key_hash", lambda key: 0)  # the workers are forked
    one = serial(job, tmp_path)
    assert one[1] is None
    assert many(job, tmp_path) == one


def test_a_plan_from_blocks_is_the_plan_from_rows(tmp_path, monkeypatch):
    """Items, profiles and the spec digest alike, whichever path made the rows."""
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    proj = project(tmp_path, GOOD * 1 + [GOOD[0].replace('"k0"', '"z"')])
    prices = PriceTable.load()
    one = desired.collect(proj, prices, TODAY)
    monkeypatch.setattr(parallel, "wants_parallel", lambda job: True)
    monkeypatch.setattr(
        parallel,
        "desired_blocks",
        functools.partial(parallel.desired_blocks, chunk_bytes=200, processes=2),
    )
    calls = []
    real_pack = rowmaker.pack
    monkeypatch.setattr(rowmaker, "pack", lambda rows: calls.append(len(rows)) or real_pack(rows))
    both = desired.collect(proj, prices, TODAY)
    assert calls == []  # the parent packed nothing: the workers did
    assert both.spec_digest == one.spec_digest
    [a], [b] = one.jobs, both.jobs
    assert list(a.items) == list(b.items) and len(b.items) == 41
    assert [a.items.key(i) for i in range(41)] == [b.items.key(i) for i in range(41)]
    assert [b.items.fingerprint(i) for i in range(41)] == list(b.items.fingerprints())
    assert list(b.items.ids(5, 30)) == [(i.key, i.custom_id) for i in list(a.items)[5:30]]


def _fp(i: int) -> str:
    return "sha256:" + f"{i:064x}"


def test_pack_and_unpack_keep_every_row_exactly():
    est, cost = ItemEstimate(0.5, 0.25), 0.25
    rows = [
        ("a", "ca", _fp(1), est, "m", 10),
        ("b", "cb", _fp(2), est, "m", 10),
        ("c", "cc", _fp(3), est, "m", 10.0),  # not 10: an entry of its own
        ("é", "cé", _fp(4), cost, "m", 11),
        ("\U0001f600", "c", _fp(5), None, "other", 11),
        ("f", "cf", "sha256:" + "A" * 64, cost, "m", 11),  # upper case: kept as written
        ("g", "cg", "odd", cost, "m", 11),
        ("h", "ch", "sha256:" + "g" * 64, cost, "m", 11),
        ("i", "ci", "xxxxxxx" + "0" * 64, cost, "m", 11),
    ]
    block = rowmaker.pack(rows)
    assert block.count == len(rows)
    assert sorted(block.odd) == [5, 6, 7, 8]
    assert len(block.table) == 4
    back = list(rowmaker.unpack(block))
    assert back == rows
    assert [type(r[5]) for r in back] == [type(r[5]) for r in rows]
    assert [r[3] is s[3] for r, s in zip(back, rows, strict=True)] == [True] * len(rows)
    assert block.spelled == "".join(f"{k}\x1f{f}\n" for k, _, f, *_ in rows)
    table = desired.ItemTable()
    table.add(block, rowmaker.array("I", range(len(rows))))
    assert list(table.keys()) == [r[0] for r in rows]
    assert list(table.fingerprints()) == [r[2] for r in rows]
    assert [table.fingerprint(i) for i in range(len(rows))] == [r[2] for r in rows]


def test_a_table_of_blocks_of_any_length_reads_back(tmp_path):
    rows = [(f"k{i}", f"c{i}", _fp(i), 0.5, "m", 100 + i % 3) for i in range(10_000)]
    table = desired.ItemTable()
    profile = table.profile((0.5, 100, None))
    at = 0
    for size in (1, 4096, 3, 5000, 900):  # blocks whole, and rows between them
        if size == 3:
            table.extend([r[:3] for r in rows[at : at + 3]], [profile] * 3)
        else:
            table.add(rowmaker.pack(rows[at : at + size]), rowmaker.array("I", [profile] * size))
        at += size
    table.close()
    assert len(table) == at
    assert list(table.keys()) == [r[0] for r in rows[:at]]
    assert [table.key(i) for i in range(at)] == [r[0] for r in rows[:at]]
    assert list(table.ids(4090, 4105)) == [(r[0], r[1]) for r in rows[4090:4105]]
    assert [i.fingerprint for i in table.iter_range(4099, 4102)] == [
        _fp(i) for i in (4099, 4100, 4101)
    ]
    assert table[at - 1].key == rows[at - 1][0] and table[-at].key == "k0"


def test_ranges_cut_at_line_ends_past_long_lines_and_a_last_line_without_one(tmp_path):
    long = '{"id": "long", "kind": "t", "text": "' + "x" * 200_000 + '"}'
    job = project(tmp_path, [*GOOD[:5], long, *GOOD[5:]]).jobs[0]
    path = tmp_path / "jobs" / "data" / "rows.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # no newline after the last line
    with path.open("rb") as fh:
        spans = list(parallel._ranges(fh.fileno(), 150))
    data = path.read_bytes()
    assert spans[0][0] == 0 and spans[-1][1] >= len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(data[end - 1 : end] == b"\n" for _, end in spans[:-1])
    one = serial(job, tmp_path)
    assert one[1] is None and len(one[0]) == 41
    got = parts(job, tmp_path)
    assert all(type(p) is rowmaker.Block for p in got)
    assert ([r for p in got for r in rowmaker.unpack(p)], None) == one
