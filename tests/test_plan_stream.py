"""Streamed plan output (`plan --json`, a saved plan's header) is the whole-string JSON, byte for
byte: a million-item plan is written as it is encoded, never held as one string."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from batchops.plan import serialize
from batchops.plan.diff import make_plan
from batchops.spec.desired import DesiredItem, DesiredJob
from batchops.views.plan import plan_json, plan_json_lines
from tests.test_planner import NOW, batch, record

pytestmark = pytest.mark.filterwarnings("ignore")


def _plan(n: int):
    items = tuple(
        DesiredItem(f'k{i}\n"é', f"cid-{i}", f"fp{i % 7}", 0.001 * i, 100 + i) for i in range(n)
    )
    other = tuple(DesiredItem(f"o{i}", f"ocid-{i}", f"fp{i % 5}", 0.5) for i in range(3))
    records = [
        record('k1\n"é', fp="fp1", outcome="succeeded"),
        record('k2\n"é', fp="old", outcome="succeeded"),
        record('k3\n"é', fp="fp3", outcome="errored", error_type="invalid_request_error"),
        record("gone", fp="x", outcome="succeeded"),
        record("gone2", fp="x", outcome="succeeded", job="old-job"),
    ]
    batches = [batch("harvest-me", status="ended", created=NOW - timedelta(hours=2))]
    return make_plan(
        [DesiredJob("j", 3, 10.0, items), DesiredJob("other", 2, None, other)],
        records,
        batches,
        [],
        now=NOW,
        lineage="L",
        serial=7,
        spec_digest="sha256:x",
        reusable={"fp4": 12},
    )


@pytest.mark.parametrize("n", [0, 1, 5, serialize._GROUP, serialize._GROUP * 2 + 3])
def test_streamed_json_is_the_whole_json_byte_for_byte(n):
    plan = _plan(n)
    for source in (None, "prices as of today"):
        whole = plan_json(plan, source).encode() + b"\n"
        assert b"".join(plan_json_lines(plan, source, size=100)) == whole
        assert b"".join(plan_json_lines(plan, source)) == whole
        compact = orjson.dumps(serialize.plan_to_dict(plan, source))
        assert b"".join(serialize.plan_json_chunks(plan, source, indent=False)) == compact
