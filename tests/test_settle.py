"""A harvest does not rewrite the attempts it answers (m0009): on both backends the attempts of
a harvested batch keep the row they had when sent, are done because their batch is harvested,
and read as before: by their results' types in `state show`, never as sent or in flight, never
given up as lost. A state written before (its attempts set done one by one) reads the same."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchops.state import open_writer
from batchops.state.api import StateWriter
from tests import statedb
from tests.test_harvest_store import NOW, rows_of, send

KINDS = ("succeeded", "errored", "canceled", "expired")
KEYS = [f"k{i:03}" for i in range(300)]
ATTEMPT_ROWS = "select id, status, outcome, batch_id from attempts order by id"


@pytest.fixture
def writer(state_location: Path | str) -> Iterator[StateWriter]:
    with contextlib.closing(open_writer(str(state_location), "test")) as w:
        yield w


def query(state_location: Path | str, sql: str) -> list[tuple[Any, ...]]:
    return statedb.rows(state_location, sql)


def harvested(w: StateWriter) -> dict[str, int]:
    """Two batches sent; the first harvested (its 300 results of four types): their counts."""
    send(w, "msgbatch_1", KEYS)
    send(w, "msgbatch_2", [f"other{i}" for i in range(5)])
    kinds = {key: KINDS[i % 7 % 4] for i, key in enumerate(KEYS)}
    rows = rows_of(w, "msgbatch_1", kinds)
    assert w.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 300
    counts: dict[str, int] = {}
    for kind in kinds.values():
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def test_a_harvest_leaves_the_attempts_it_answered_as_they_were_sent(
    writer: StateWriter, state_location: Path | str
) -> None:
    send(writer, "msgbatch_1", KEYS)
    before = query(state_location, ATTEMPT_ROWS)
    kinds = {key: KINDS[i % 4] for i, key in enumerate(KEYS)}
    rows = rows_of(writer, "msgbatch_1", kinds)
    assert writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 300
    assert query(state_location, ATTEMPT_ROWS) == before
    assert {status for _, status, _, _ in before} == {"sent"}
    # and they are done: none left to harvest, none in flight, each told by its result
    assert writer.sent_attempts("msgbatch_1") == {}
    assert writer.inflight_by_batch() == {}
    assert writer.batch_detail("msgbatch_1") == (
        "intent-msgbatch_1",
        dict.fromkeys(sorted(KINDS), 75),
        300,
    )


def test_a_harvested_batch_is_never_given_up_as_lost(
    writer: StateWriter, state_location: Path | str
) -> None:
    counts = harvested(writer)
    assert writer.removal_counts("msgbatch_1") == (
        "batch",
        {"batches": 1, "items": 0, "attempts": 0},
    )
    assert writer.release_batch("msgbatch_1", "deleted", NOW) == 0
    assert writer.batch_detail("msgbatch_1") == ("intent-msgbatch_1", counts, 300)
    assert writer.sent_attempts("msgbatch_2").keys() == {
        f"cid-other{i}-msgbatch_2" for i in range(5)
    }

    assert writer.remove("msgbatch_1") == ("batch", {"batches": 1, "items": 0, "attempts": 0})
    statuses = query(
        state_location, "select batch_id, status, count(*) from attempts group by 1, 2"
    )
    assert sorted(statuses) == [("msgbatch_1", "done", 300), ("msgbatch_2", "sent", 5)]
    assert writer.sent_attempts("msgbatch_1") == {}
    assert len(writer.inflight_by_batch()["msgbatch_2"]) == 5


def test_a_state_whose_harvest_set_each_attempt_done_reads_the_same(
    writer: StateWriter, state_location: Path | str
) -> None:
    """Attempts settled one by one, as batchops did before m0009: the same detail, nothing sent
    or unfinished."""
    counts = harvested(writer)
    lazy = writer.batch_detail("msgbatch_1")
    query(
        state_location,
        "update attempts set status = 'done', outcome = r.type from results r"
        " where r.attempt_id = attempts.id",
    )
    assert query(state_location, "select count(*) from attempts where status = 'done'") == [(300,)]
    assert writer.batch_detail("msgbatch_1") == lazy == ("intent-msgbatch_1", counts, 300)
    assert writer.sent_attempts("msgbatch_1") == {}
    assert writer.removal_counts("msgbatch_1") == (
        "batch",
        {"batches": 1, "items": 0, "attempts": 0},
    )


def test_attempts_sent_and_answered_by_no_stored_result_still_show_as_sent(
    writer: StateWriter, state_location: Path | str
) -> None:
    """A batch stored with fewer results than attempts it carried (no harvest stores that:
    `verified_rows` refuses a sent custom_id without its result): the rest show as sent, not
    lost from the count, and `state rm` gives them up (tests/test_review23.py)."""
    send(writer, "msgbatch_1", KEYS)
    rows = rows_of(writer, "msgbatch_1", dict.fromkeys(KEYS, "succeeded"))[:280]
    assert writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 280
    assert writer.batch_detail("msgbatch_1") == (
        "intent-msgbatch_1",
        {"sent": 20, "succeeded": 280},
        280,
    )
