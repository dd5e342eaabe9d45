"""A job's submit actions in `plan --json` are written from the columns of their keys and
custom_ids (`serialize._submit_members`): the same bytes as the whole plan's JSON."""

from __future__ import annotations

import orjson
import pytest

from batchops.plan import serialize
from batchops.plan.actions import JobActions
from batchops.plan.diff import make_plan
from batchops.spec.desired import DesiredItem, DesiredJob, ItemTable
from tests.test_planner import NOW, record

pytestmark = pytest.mark.filterwarnings("ignore")

ODD_KEYS = ['q"uote', "back\\slash", "new\nline", "tab\t", "\x00nul", "é", "\U0001f600", "\x7f"]


def _key(i: int) -> str:
    if 5000 <= i < 5010:  # a block holding keys orjson escapes
        return f"k{i}{ODD_KEYS[i % len(ODD_KEYS)]}"
    return f"k{i}" + "é" * (i % 1000 == 3)


def _fp(i: int) -> str:
    return "sha256:" + f"{i % 11:064x}"


def _plan(n: int, records):
    items = [
        DesiredItem(_key(i), f"j-{i}-cid", _fp(i), 0.001 * (i % 3), 100 + i % 5) for i in range(n)
    ]
    other = [DesiredItem(f"o{i}", f"o-{i}", _fp(i), 0.5) for i in range(3)]
    jobs = [
        DesiredJob("j", 3, None, ItemTable(items)),
        DesiredJob("other", 2, None, ItemTable(other)),
    ]
    return make_plan(jobs, records, [], [], now=NOW, lineage="L", serial=7, spec_digest="sha256:x")


@pytest.mark.parametrize("n", [0, 1, 4096, 9000])
@pytest.mark.parametrize("mixed", [False, True])
def test_submits_from_columns_are_the_whole_json_byte_for_byte(n, mixed):
    records = []
    if mixed and n > 7:  # submits of other kinds among new ones: changed, retry
        records = [
            record(_key(2), fp="old", outcome="succeeded"),
            record(_key(7), fp=_fp(7), outcome="errored", error_type="overloaded_error"),
        ]
        if n > 5003:
            records.append(record(_key(5003), fp="old", outcome="succeeded"))
    plan = _plan(n, records)
    [job, _] = plan.jobs
    if n:  # every action a submit: the columns are written
        assert isinstance(job.actions, JobActions) and not job.actions.others
    kinds = {a.reason for a in job.actions}
    assert kinds == ({"todo", "changed", "retry"} if mixed and n > 7 else {"todo"} if n else set())
    for source in (None, "prices"):
        shape = serialize.plan_to_dict(plan, source)
        compact = b"".join(serialize.plan_json_chunks(plan, source, indent=False))
        assert compact == orjson.dumps(shape)
        indented = b"".join(serialize.plan_json_chunks(plan, source))
        assert indented == orjson.dumps(shape, option=orjson.OPT_INDENT_2)


def test_a_key_orjson_cannot_write_fails_as_before():
    items = ItemTable([DesiredItem("\ud800", "c", _fp(1), 0.1, 1)])
    bad = make_plan(
        [DesiredJob("j", 3, None, items)], [], [], [], now=NOW, lineage="L", serial=1,
        spec_digest="sha256:x",
    )  # fmt: skip
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(serialize.plan_to_dict(bad))
    assert isinstance(bad.jobs[0].actions, JobActions)
    with pytest.raises(orjson.JSONEncodeError):
        b"".join(serialize.plan_json_chunks(bad))
