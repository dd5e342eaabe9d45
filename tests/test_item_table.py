"""The columnar stores of a large plan: a job's desired items (`ItemTable`) and the item actions
made from them (`SubmitItems`, `JobActions`) read back exactly what plain tuples would hold, on
every access path, and the plans made from them are the plans made from tuples."""

from __future__ import annotations

import hashlib
import math
from array import array
from collections import Counter
from datetime import timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchops.plan import serialize
from batchops.plan.actions import JobActions, SubmitItem, SubmitItems, action_counts
from batchops.plan.diff import BatchLimits, make_plan, split
from batchops.pricing import ItemEstimate
from batchops.spec import desired as desired_mod
from batchops.spec.desired import DesiredItem, DesiredJob, ItemTable
from batchops.views.plan import plan_json, plan_text
from tests.test_planner import NOW, batch, record

pytestmark = pytest.mark.filterwarnings("ignore")


def _fp(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


def _exact(value: object) -> object:
    """A value with what == does not see made visible: float signs and int/float types."""
    if isinstance(value, float):
        return ("float", math.copysign(1.0, value), value if value == value else "nan")
    if isinstance(value, tuple):
        return (type(value).__name__, *(_exact(v) for v in value))
    return (type(value).__name__, value)


fingerprints = st.one_of(
    st.integers(0, 50).map(_fp),
    st.integers(0, 50).map(lambda n: _fp(n).upper()),  # not the canonical form: kept as is
    st.text(max_size=80),
)
estimates = st.one_of(
    st.none(),
    st.builds(
        ItemEstimate,
        st.floats(allow_nan=False, width=32),
        st.floats(allow_nan=False, width=32),
        st.one_of(st.none(), st.sampled_from(["sha256:p1", "sha256:p2"])),
    ),
)
items = st.builds(
    DesiredItem,
    st.text(max_size=40),
    st.text(max_size=70),
    fingerprints,
    st.one_of(st.floats(allow_nan=False), st.sampled_from([0.0, -0.0, 0.25])),
    st.one_of(st.integers(0, 1 << 40), st.sampled_from([261, 261.0])),
    estimates,
)


def _check_table(expected: list[DesiredItem]) -> None:
    table = ItemTable(expected)
    n = len(expected)
    assert len(table) == n
    assert [_exact(i) for i in table] == [_exact(i) for i in expected]
    assert [_exact(table[i]) for i in range(n)] == [_exact(i) for i in expected]
    assert [_exact(table[i - n]) for i in range(n)] == [_exact(i) for i in expected]
    assert list(table.keys()) == [i.key for i in expected]
    assert list(table.fingerprints()) == [i.fingerprint for i in expected]
    assert [table.key(i) for i in range(n)] == [i.key for i in expected]
    assert [table.fingerprint(i) for i in range(n)] == [i.fingerprint for i in expected]
    assert table[1:-1:2] == expected[1:-1:2]
    for start, stop in ((0, n), (1, n - 1), (n // 3, n // 2), (n, n)):
        assert list(table.iter_range(start, stop)) == expected[start:stop]
    assert table == tuple(expected) and tuple(expected) == table and table == expected
    assert table != tuple(expected) + (DesiredItem("x", "y", "z", 1.0),)
    assert hash(table) == hash(tuple(expected))
    with pytest.raises(IndexError):
        table[n]


@settings(max_examples=150, deadline=None)
@given(st.lists(items, max_size=30))
def test_a_table_reads_back_every_item_exactly(expected):
    _check_table(expected)


@pytest.mark.parametrize("n", [4095, 4096, 4097, 3 * 4096 + 5])
def test_a_table_across_blocks_reads_back_every_item(n):
    expected = [
        DesiredItem(
            f"k{i}" + "é" * (i % 3 == 0) + "\U0001f600" * (i % 1000 == 7),
            f"cid-{i}",
            _fp(i) if i % 997 else f"odd-{i}",
            0.001 * (i % 5),
            100 + i % 9,
            ItemEstimate(0.5, 0.25) if i % 2 else None,
        )
        for i in range(n)
    ]
    _check_table(expected)
    built = ItemTable()  # as `collect` adds rows: in runs of any length
    for start, stop in ((0, 1000), (1000, 6000), (6000, n)):
        part = expected[start:stop]
        built.extend(
            [(i.key, i.custom_id, i.fingerprint) for i in part],
            [built.profile((i.cost_usd, i.size, i.estimate)) for i in part],
        )
    assert list(built.close()) == expected


def test_collected_items_share_profiles_only_between_values_equal_in_every_way(
    monkeypatch, tmp_path
):
    """Rows of equal cost and size share one profile; -0.0 and 0.0, 261 and 261.0 do not."""
    from batchops.commands.context import Context, Settings

    est = ItemEstimate(0.5, 0.25)
    rows = [
        ("a", "ca", _fp(1), 0.25, "m", 261),
        ("b", "cb", _fp(2), 0.25, "m", 261),
        ("c", "cc", _fp(3), 0.25, "m", 261.0),
        ("d", "cd", _fp(4), 0.0, "m", 261),
        ("e", "ce", _fp(5), -0.0, "m", 261),
        ("f", "cf", _fp(6), est, "m", 10),
        ("g", "cg", _fp(7), est, "m", 10),
        ("h", "ch", "not-a-digest", None, "unpriced-model", 10),
        ("i", "ci", _fp(8), None, "unpriced-model", 10),
    ]
    monkeypatch.setattr(desired_mod, "_rows", lambda *a: iter(rows))
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    root = tmp_path
    (root / "jobs").mkdir()
    (root / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
        'prompt = "x {{ n }}"\nitems = [{ key = "a", n = 1 }]\n',
        encoding="utf-8",
    )
    ctx = Context(Settings(jobs_path=root / "jobs", state_path=root / "s.db", root=root))
    [job] = ctx.desired().jobs
    table = job.items
    assert isinstance(table, ItemTable)
    expected = [
        DesiredItem(k, c, f, 0.0 if cost is None else getattr(cost, "high", cost), size,
                    cost if isinstance(cost, ItemEstimate) else None)
        for k, c, f, cost, _, size in rows
    ]  # fmt: skip
    assert [_exact(i) for i in table] == [_exact(i) for i in expected]
    profile = list(table.profile_of)
    assert profile[0] == profile[1] and len({profile[0], profile[2], profile[3], profile[4]}) == 4
    assert profile[5] == profile[6] and profile[7] == profile[8]
    assert len(table.profiles) == 6


# --- plans made from tables are the plans made from tuples --------------------------------------


def _desired(n: int) -> list[tuple[str, list[DesiredItem]]]:
    prefixed = ItemEstimate(0.004, 0.003, "sha256:shared", 0.001, 0.001)
    return [
        # first: nothing recorded, nothing sent before it (every item a todo, without a loop
        # over them when nothing can be reused), and sending what later jobs may wait for
        ("fresh", [DesiredItem(f"f{i}", f"fcid-{i}", _fp(i % 3), 0.25, 7) for i in range(n)]),
        (
            "j",
            [
                DesiredItem(
                    f'k{i}\n"é',
                    f"cid-{i}",
                    _fp(i % 7),
                    0.001 * i,
                    100 + i,
                    prefixed if i % 4 == 1 else None,
                )
                for i in range(n)
            ],
        ),  # fmt: skip
        ("other", [DesiredItem(f"o{i}", f"ocid-{i}", _fp(i % 5), 0.5) for i in range(3)]),
    ]


def _plan(jobs, records, limits=BatchLimits(), reusable=None):  # noqa: B008
    return make_plan(
        [DesiredJob(name, 3, 10.0, items) for name, items in jobs],
        records,
        [batch("harvest-me", status="ended", created=NOW - timedelta(hours=2))],
        [],
        now=NOW,
        lineage="L",
        serial=7,
        spec_digest="sha256:x",
        reusable={_fp(4): 12} if reusable is None else reusable,
        limits=limits,
    )


RECORDS = [
    record('k1\n"é', fp=_fp(1), outcome="succeeded"),
    record('k2\n"é', fp="old", outcome="succeeded"),
    record('k3\n"é', fp=_fp(3), outcome="errored", error_type="invalid_request_error"),
    record('k5\n"é', fp=_fp(5), outcome="errored", error_type="overloaded_error"),
    record("gone", fp="x", outcome="succeeded"),
    record("gone2", fp="x", outcome="succeeded", job="old-job"),
]


@pytest.mark.parametrize("n", [0, 1, 9, serialize._GROUP + 3])
@pytest.mark.parametrize("limits", [BatchLimits(), BatchLimits(max_requests=4, max_bytes=2_000)])
@pytest.mark.parametrize("reusable", [None, {}])
def test_a_plan_of_tables_is_the_plan_of_tuples(n, limits, reusable):
    jobs = _desired(n)
    plain = _plan([(name, tuple(items)) for name, items in jobs], RECORDS, limits, reusable)
    packed = _plan([(name, ItemTable(items)) for name, items in jobs], RECORDS, limits, reusable)
    assert packed == plain
    assert plan_json(packed) == plan_json(plain)
    assert plan_text(packed) == plan_text(plain)
    assert packed.summary() == plain.summary()
    for a, b in zip(packed.steps, plain.steps, strict=True):
        assert a == b and b == a
        if hasattr(a, "costs"):
            assert a.costs() == b.costs()
    for job in packed.jobs:
        actions = list(job.actions)
        assert [job.actions[i] for i in range(len(actions))] == actions
        assert list(job.actions[-1:]) == actions[-1:]
        assert list(job.actions[:20]) == actions[:20]
        assert action_counts(job.actions) == dict(Counter(a.action for a in actions))
        assert list(job.submits) == [a for a in actions if isinstance(a, SubmitItem)]


def _submit_items(n: int, prefixes: list[str | None], max_size: int) -> SubmitItems:
    items = ItemTable(
        DesiredItem(
            f"k{i}", f"c{i}", _fp(i), 0.001,
            1 + (i * 7919) % max_size,
            None if p is None else ItemEstimate(0.002, 0.001, p, 0.0005, 0.0004),
        )
        for i, p in enumerate(prefixes)
    )  # fmt: skip
    index = [i for i in range(len(items)) if i % 3 != 2]
    tags = [i % 2 for i in range(len(index))]
    return SubmitItems("j", items, index, [("todo", 1), ("retry", 2)], tags)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.sampled_from([None, None, "sha256:a", "sha256:b"]), max_size=40),
    st.integers(1, 6),
    st.integers(1, 400),
)
def test_split_of_a_view_is_the_split_of_its_items(prefixes, max_requests, max_size):
    submits = _submit_items(len(prefixes), prefixes, max_size)
    limits = BatchLimits(max_requests=max_requests, max_bytes=1024 + 3 * max_size)
    whole = list(submits)
    assert [submits[i] for i in range(len(submits))] == whole
    assert list(submits[1::2]) == whole[1::2]
    viewed = split("j", (), submits, limits)
    listed = split("j", (), whole, limits)
    assert viewed == listed
    assert [b.costs() for b in viewed] == [b.costs() for b in listed]
    assert [list(b.items) for b in viewed] == [list(b.items) for b in listed]


def test_job_actions_put_the_others_where_they_stand():
    submits = _submit_items(6, [None] * 6, 50)  # 4 items sent
    others = [object(), object(), object()]
    actions = JobActions(submits, others, [0, 3, 6])  # type: ignore[arg-type]
    sent = list(submits)
    assert list(actions) == [others[0], sent[0], sent[1], others[1], sent[2], sent[3], others[2]]
    assert [actions[i] for i in range(7)] == list(actions)
    assert actions[-1] is others[2] and actions[2:4] == [sent[1], others[1]]


def test_a_saved_plan_of_tables_reads_back_as_the_plan(tmp_path):
    """JSON compact and indented, streamed, from a table plan: the bytes of a tuple plan."""
    jobs = _desired(40)
    plain = _plan([(name, tuple(items)) for name, items in jobs], RECORDS)
    packed = _plan([(name, ItemTable(items)) for name, items in jobs], RECORDS)
    for indent in (True, False):
        assert b"".join(serialize.plan_json_chunks(packed, "p", indent=indent)) == b"".join(
            serialize.plan_json_chunks(plain, "p", indent=indent)
        )
    assert orjson.loads(plan_json(packed))["summary"]["submit"] == len(
        [a for j in plain.jobs for a in j.actions if isinstance(a, SubmitItem)]
    )


@pytest.mark.parametrize("n", [0, 1, 9, serialize._GROUP + 3])
@pytest.mark.parametrize("table", [False, True])
def test_the_plan_of_a_job_with_nothing_recorded_is_the_item_by_item_plan(n, table):
    """A job with no records and nothing to reuse is planned without a loop over its items; a
    stored answer for no item of it makes the diff go item by item: the plans are the same."""
    jobs = [(name, ItemTable(items) if table else tuple(items)) for name, items in _desired(n)]
    fast = _plan(jobs, RECORDS, reusable={})
    slow = _plan(jobs, RECORDS, reusable={"sha256:answers-no-item": 99})
    assert fast == slow
    assert plan_json(fast) == plan_json(slow)
    assert len(fast.jobs[0].submits) == n
    if n:
        assert isinstance(fast.jobs[0].submits.index, range)  # the fast path was taken
        assert not isinstance(slow.jobs[0].submits.index, range)


def test_a_tables_costs_are_its_items_costs():
    expected = [
        DesiredItem(f"k{i}", "c", _fp(i), (-0.0, 0.0, 0.1, 1e-9)[i % 4], i) for i in range(9)
    ]
    table = ItemTable(expected)
    assert [_exact(c) for c in table.costs()] == [_exact(i.cost_usd) for i in expected]


# -- a large table: blocks written to a file past RESIDENT_ITEMS, read back a block at a time


def _spilled(monkeypatch, resident: int) -> None:
    monkeypatch.setattr(desired_mod, "RESIDENT_ITEMS", resident)


def _many(n: int) -> list[DesiredItem]:
    return [
        DesiredItem(
            f"k{i}" + "é" * (i % 3 == 0) + "\U0001f600" * (i % 1000 == 7) + "\ud800" * (i == 5),
            f"cid-{i}" + "\udfff" * (i == 4100),
            _fp(i) if i % 997 else f"odd-{i}",
            0.001 * (i % 5),
            100 + i % 9,
            ItemEstimate(0.5, 0.25) if i % 2 else None,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("resident", [0, 1, 4096, 5000])
@pytest.mark.parametrize("n", [1, 4097, 3 * 4096 + 5])
def test_a_table_written_to_a_file_reads_back_as_one_held_in_memory(monkeypatch, n, resident):
    expected = _many(n)
    held = ItemTable(expected)
    _spilled(monkeypatch, resident)
    _check_table(expected)
    table = ItemTable(expected)
    assert (table._file is not None) == (n > resident and n > 4096 or resident == 0)
    assert table == held
    # every index in an order that jumps between blocks, and slices across their bounds
    order = sorted(range(n), key=lambda i: (i * 7919) % n)
    assert [_exact(table[i]) for i in order] == [_exact(held[i]) for i in order]
    assert [table.fingerprint(i) for i in order] == [held.fingerprint(i) for i in order]
    assert [table.key(i) for i in order] == [held.key(i) for i in order]
    cuts = sorted({0, 1, n // 2, n - 1, n, *range(4090, min(n, 4100))})
    for start in cuts:
        for stop in cuts:
            assert table[start:stop] == held[start:stop]
            assert list(table.iter_range(start, stop)) == list(held.iter_range(start, stop))
            assert list(table.ids(start, stop)) == list(held.ids(start, stop))
            assert list(table.id_lists(start, stop)) == list(held.id_lists(start, stop))
    assert list(table.costs()) == list(held.costs())


def test_a_table_built_in_runs_and_blocks_is_written_to_its_file_as_it_grows(monkeypatch):
    from batchops.spec import rowmaker

    _spilled(monkeypatch, 3000)
    expected = _many(20_000)
    built = ItemTable()
    rows = [
        (i.key, i.custom_id, i.fingerprint, i.estimate or i.cost_usd, "m", i.size) for i in expected
    ]
    built.extend(
        [r[:3] for r in rows[:5000]],
        [built.profile((i.cost_usd, i.size, i.estimate)) for i in expected[:5000]],
    )
    block = rowmaker.pack(rows[5000:12000])
    profiles = array(
        "I", [built.profile((i.cost_usd, i.size, i.estimate)) for i in expected[5000:12000]]
    )
    built.add(block, profiles)
    for i in expected[12000:]:
        built.append(
            i.key, i.custom_id, i.fingerprint, built.profile((i.cost_usd, i.size, i.estimate))
        )
    built.close()
    assert built._file is not None
    assert [_exact(i) for i in built] == [_exact(i) for i in expected]
    assert built.profile_of.typecode == "H"  # 20,000 profiles: past 256, not past 65,536
    assert [built.fingerprint(i) for i in range(0, 20_000, 7)] == [
        i.fingerprint for i in expected[::7]
    ]


def test_profile_indexes_grow_wider_as_profiles_are_added():
    table = ItemTable()
    widths = []
    for i in range(70_000):
        table.append(f"k{i}", f"c{i}", _fp(i), table.profile((float(i), i, None)))
        if i in (0, 255, 256, 65_535, 65_536):
            widths.append(table.profile_of.typecode)
    table.close()
    assert widths == ["B", "B", "H", "H", "I"]
    assert list(table.costs()) == [float(i) for i in range(70_000)]
    assert [table[i].size for i in (0, 255, 256, 65_535, 65_536, 69_999)] == [
        0, 255, 256, 65_535, 65_536, 69_999,
    ]  # fmt: skip
