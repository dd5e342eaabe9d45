"""The state API contract: every backend (SQLite, PostgreSQL) passes the same tests.

Each test drives the public API only (`open_reader`, `open_writer`, `force_unlock`); the few
backend-specific checks (what tables exist, faking a newer migration or a dead lock holder) go
through `Backend.raw`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchops.errors import LockHeld, StateError
from batchops.state import force_unlock, open_reader, open_writer
from batchops.state.api import NO_SUCCEEDED_ROW, StateReader, StateWriter
from batchops.state.records import BatchRecord, ResultRow

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
JOB = "demo"


@dataclass(frozen=True)
class Att:
    key: str
    custom_id: str
    fingerprint: str
    attempt: int = 1


@dataclass
class Backend:
    name: str
    location: str

    def raw(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run SQL behind the API's back (`?` placeholders), for what the API cannot set up."""
        if self.name == "sqlite":
            conn = sqlite3.connect(self.location)
            try:
                with conn:
                    return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.location, autocommit=True) as conn:
            cursor = conn.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    def tables(self) -> set[str]:
        if self.name == "sqlite":
            if not Path(self.location).exists():
                return set()
            return {r[0] for r in self.raw("select name from sqlite_master where type = 'table'")}
        return {
            r[0]
            for r in self.raw(
                "select table_name from information_schema.tables where table_schema = 'public'"
            )
        }

    def migrations_table(self) -> str:
        return "_sqlite_migrations" if self.name == "sqlite" else "_batchops_migrations"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "state.db"))
    return Backend("postgres", request.getfixturevalue("pg_dsn"))


@pytest.fixture
def writer(backend: Backend) -> Iterator[StateWriter]:
    w = open_writer(backend.location, "test")
    try:
        yield w
    finally:
        w.close()


def atts(*keys: str, attempt: int = 1) -> list[Att]:
    return [Att(k, f"cid-{k}-{attempt}", f"sha256:{k}", attempt) for k in keys]


def batch_record(batch_id: str, job: str = JOB, **changes) -> BatchRecord:
    values = dict(
        id=batch_id,
        job=job,
        request_count=0,
        processing_status="in_progress",
        created_at=NOW,
        expires_at=NOW + timedelta(days=1),
        ended_at=None,
        archived_at=None,
        results_expire_at=None,
        harvested_at=None,
        canceled_by_us_at=None,
        pruned_at=None,
        drift=None,
        request_counts=None,
    )
    values.update(changes)
    return BatchRecord(**values)


def result_row(
    w: StateWriter, batch_id: str, custom_id: str, type_: str = "succeeded"
) -> ResultRow:
    sent = w.sent_attempts(batch_id)[custom_id]
    ok = type_ == "succeeded"
    return ResultRow(
        job=JOB,
        key=sent.key,
        custom_id=custom_id,
        fingerprint=sent.fingerprint,
        batch_id=batch_id,
        attempt_id=sent.attempt_id,
        type=type_,
        text=f"answer {sent.key}" if ok else None,
        message="{}" if ok else None,
        stop_reason="end_turn" if ok else None,
        error_type=None if ok else "api_error",
        error_message=None if ok else "boom",
        model="claude-haiku-4-5",
        input_tokens=10,
        output_tokens=5,
        cache_creation_input_tokens=0,
        cache_creation_1h_input_tokens=0,
        cache_read_input_tokens=0,
        received_at="2026-03-10T12:00:00Z",
    )


def sent_batch(w: StateWriter, batch_id: str = "msgbatch_1", *keys: str) -> list[Att]:
    """Record an intent for `keys` (default a, b) and the batch that carries them."""
    sent = atts(*(keys or ("a", "b")))
    w.record_intent(f"intent-{batch_id}", JOB, sent, 100, NOW, list_anchor="msgbatch_0")
    w.record_created(f"intent-{batch_id}", batch_record(batch_id), NOW)
    return sent


def records(w: StateWriter) -> dict[str, object]:
    return {r.key: r for r in w.item_records()}


# ---------------------------------------------------------------- lineage and serial
def test_new_state_has_lineage_and_serial_zero(writer: StateWriter, backend: Backend) -> None:
    assert writer.exists
    assert writer.lineage
    assert writer.serial == 0
    reader = open_reader(backend.location)
    try:
        assert reader.exists
        assert reader.lineage == writer.lineage
        assert reader.serial == 0
    finally:
        reader.close()


def test_each_write_bumps_serial(writer: StateWriter) -> None:
    sent_batch(writer)
    assert writer.serial == 2
    writer.mark_pruned("msgbatch_1", NOW)
    writer.record_plan_applied("plan-1", NOW)
    assert writer.serial == 4


def test_lineage_survives_reopen(backend: Backend) -> None:
    w = open_writer(backend.location, "test")
    lineage = w.lineage
    w.record_plan_applied("p", NOW)
    w.close()
    w = open_writer(backend.location, "test")
    try:
        assert w.lineage == lineage
        assert w.serial == 1
    finally:
        w.close()


# ---------------------------------------------------------------- sending
def test_record_intent_puts_items_in_flight(writer: StateWriter) -> None:
    writer.record_intent("i1", JOB, atts("a", "b"), 100, NOW, list_anchor="msgbatch_0")
    items = records(writer)
    assert set(items) == {"a", "b"}
    assert all(r.inflight and r.inflight_batch is None for r in items.values())
    assert items["a"].custom_id == "cid-a-1"
    assert items["a"].attempts == 0
    [intent] = writer.open_intents()
    assert (intent.id, intent.job, intent.request_count, intent.status, intent.list_anchor) == (
        "i1",
        JOB,
        2,
        "open",
        "msgbatch_0",
    )
    assert intent.batch_id is None
    assert writer.job_names() == [JOB]


def test_record_created(writer: StateWriter) -> None:
    sent_batch(writer)
    assert writer.open_intents() == []
    sent = writer.sent_attempts("msgbatch_1")
    assert set(sent) == {"cid-a-1", "cid-b-1"}
    assert sent["cid-a-1"].key == "a" and sent["cid-a-1"].fingerprint == "sha256:a"
    batch = writer.batch("msgbatch_1")
    assert batch is not None
    assert (batch.job, batch.request_count, batch.created_at, batch.adopted) == (JOB, 2, NOW, False)
    assert [b.id for b in writer.batches()] == ["msgbatch_1"]
    assert writer.inflight_by_batch() == {"msgbatch_1": {f"{JOB}\x1fa", f"{JOB}\x1fb"}}
    items = records(writer)
    assert items["a"].attempts == 1 and items["a"].inflight_batch == "msgbatch_1"
    assert writer.batch("nope") is None
    intent, attempts, results = writer.batch_detail("msgbatch_1")
    assert (intent, attempts, results) == ("intent-msgbatch_1", {"sent": 2}, 0)


def test_inflight_records_are_the_item_records_in_flight(
    writer: StateWriter, backend: Backend
) -> None:
    """Of every job, from an open intent (no batch yet) to a harvest; an empty state has none."""

    def in_flight() -> list:
        return sorted(r for r in writer.item_records() if r.inflight)

    reader = open_reader(backend.location)
    try:
        assert list(reader.inflight_records()) == []
    finally:
        reader.close()
    writer.record_intent("i0", "other", atts("x"), 10, NOW)  # an open intent: in flight
    sent_batch(writer)  # a, b in msgbatch_1
    sent_batch(writer, "msgbatch_2", "c")
    harvested = [result_row(writer, "msgbatch_2", "cid-c-1")]
    writer.store_harvest("msgbatch_2", iter(harvested), canceled_by_us=False, now=NOW)
    found = sorted(writer.inflight_records())
    assert found == in_flight()
    assert [(r.job, r.key, r.fingerprint, r.inflight_batch) for r in found] == [
        (JOB, "a", "sha256:a", "msgbatch_1"),
        (JOB, "b", "sha256:b", "msgbatch_1"),
        ("other", "x", "sha256:x", None),
    ]
    writer.mark_unsent("i0")
    assert [r.key for r in writer.inflight_records()] == sorted(r.key for r in in_flight())


def test_record_created_adopted(writer: StateWriter) -> None:
    writer.record_intent("i1", JOB, atts("a"), 10, NOW)
    writer.record_created("i1", batch_record("msgbatch_9"), NOW, adopted=True)
    batch = writer.batch("msgbatch_9")
    assert batch is not None and batch.adopted


def test_mark_unsent(writer: StateWriter) -> None:
    writer.record_intent("i1", JOB, atts("a", "b"), 100, NOW)
    writer.mark_unsent("i1")
    assert writer.open_intents() == []
    assert not any(r.inflight for r in writer.item_records())
    assert writer.inflight_by_batch() == {}


def test_save_batch(writer: StateWriter) -> None:
    sent_batch(writer)
    writer.save_batch(
        batch_record("msgbatch_1", processing_status="ended", ended_at=NOW, request_counts="{}"),
        NOW,
    )
    batch = writer.batch("msgbatch_1")
    assert batch is not None
    assert (batch.processing_status, batch.ended_at, batch.request_counts) == ("ended", NOW, "{}")


# ---------------------------------------------------------------- harvest
def test_store_harvest_settles_items(writer: StateWriter) -> None:
    sent_batch(writer)
    rows = [
        result_row(writer, "msgbatch_1", "cid-a-1"),
        result_row(writer, "msgbatch_1", "cid-b-1", "errored"),
    ]
    serial = writer.serial
    assert writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 2
    assert writer.serial == serial + 1
    items = records(writer)
    assert not items["a"].inflight and items["a"].outcome == "succeeded"
    assert items["b"].outcome == "errored" and items["b"].error_type == "api_error"
    assert writer.inflight_by_batch() == {}
    lookup = writer.result_lookup(JOB, "a")
    assert lookup is not None
    assert (lookup.text, lookup.result_type, lookup.batch_id) == (
        "answer a",
        "succeeded",
        "msgbatch_1",
    )
    assert writer.result_lookups(JOB)("a") == lookup
    errored = writer.result_lookup(JOB, "b")
    assert errored is not None and errored.text is None and errored.record.outcome == "errored"
    assert writer.result_lookup(JOB, "zz") is None
    assert writer.results_of(JOB, ["zz", "b", "a"]) == {"a": lookup, "b": errored}
    assert writer.results_of(JOB, []) == {} and writer.results_of("other", ["a"]) == {}
    batch = writer.batch("msgbatch_1")
    assert batch is not None and batch.harvested_at == NOW
    assert writer.batch_detail("msgbatch_1") == (
        "intent-msgbatch_1",
        {"errored": 1, "succeeded": 1},
        2,
    )
    [usage] = list(writer.usage_rows())
    assert usage == (JOB, "claude-haiku-4-5", "2026-03-10", 10, 5, 0, 0, 0, 0)
    [summary] = writer.job_summaries([JOB])
    assert (summary.items, summary.in_flight, summary.batches, summary.results) == (2, 0, 1, 2)
    assert summary.outcomes["succeeded"] == 1 and summary.outcomes["errored"] == 1


def test_usage_rows_come_apart_by_the_lengths_each_request_passed(writer: StateWriter) -> None:
    # A price row's long_context prices a request by its input tokens, cached ones included.
    sent_batch(writer, "msgbatch_1", "a", "b", "c", "d")
    tokens = {"a": (10, 0, 0), "b": (60, 0, 50), "c": (10, 900, 200), "d": (2000, 0, 0)}
    rows = []
    for key, (plain, written, read) in tokens.items():
        row = result_row(writer, "msgbatch_1", f"cid-{key}-1")
        rows.append(row._replace(input_tokens=plain, cache_creation_input_tokens=written,
                                 cache_creation_1h_input_tokens=written // 3,
                                 cache_read_input_tokens=read))  # fmt: skip
    writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW)
    day = "2026-03-10"
    assert sorted(writer.usage_rows([100, 1000])) == [
        (JOB, "claude-haiku-4-5", day, 10, 5, 0, 0, 0, 0),  # a: 10 tokens
        (JOB, "claude-haiku-4-5", day, 60, 5, 0, 0, 50, 1),  # b: 110
        (JOB, "claude-haiku-4-5", day, 2010, 10, 600, 300, 200, 2),  # c: 1,110; d: 2,000
    ]
    [everything] = writer.usage_rows()
    assert everything == (JOB, "claude-haiku-4-5", day, 2080, 20, 600, 300, 250, 0)


def test_succeeded_results_answer_each_key_in_order(writer: StateWriter, backend: Backend) -> None:
    sent_batch(writer, "msgbatch_1", "a", "b", "c", "d")
    rows = [result_row(writer, "msgbatch_1", f"cid-{k}-1") for k in "acd"]
    rows.append(result_row(writer, "msgbatch_1", "cid-b-1", "errored"))
    writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW)
    again = [Att("c", "cid-c-2", "sha256:c2", 2)]  # c is sent again: in flight, no answer
    writer.record_intent("intent-msgbatch_2", JOB, again, 100, NOW, list_anchor="msgbatch_1")
    writer.record_created("intent-msgbatch_2", batch_record("msgbatch_2"), NOW)
    backend.raw("update items set fingerprint = 'sha256:new' where key = 'd'")  # not its result's
    keys = ["zz", "d", "a", "b", "c", "a"]
    got = writer.succeeded_results(JOB, keys)
    answer_a = ("sha256:a", "answer a", "{}", "end_turn", "claude-haiku-4-5", 10, 5, "msgbatch_1")
    assert got == [NO_SUCCEEDED_ROW, NO_SUCCEEDED_ROW, answer_a, NO_SUCCEEDED_ROW] + [
        NO_SUCCEEDED_ROW,
        answer_a,
    ]
    assert [tuple(r) for r in got] == StateReader.succeeded_results(writer, JOB, keys)
    assert writer.succeeded_results(JOB, []) == []
    assert writer.succeeded_results("other", ["a", "b"]) == [NO_SUCCEEDED_ROW] * 2


def test_succeeded_results_in_any_order_of_keys_match_the_lookup_by_key(
    writer: StateWriter, backend: Backend
) -> None:
    """SQLite looks each key's item up at its place along the table first (an export asks for
    keys in the order the items were written); keys in another order, with gaps, repeated,
    unknown or of items written between another job's answer exactly as a lookup by key."""
    keys = [f"k{i:02}" for i in range(12)]
    sent_batch(writer, "msgbatch_1", *keys[:6])
    other = [Att(f"o{i}", f"cid-o{i}", f"sha256:o{i}", 1) for i in range(3)]
    writer.record_intent("intent-other", "other", other, 100, NOW, list_anchor="msgbatch_0")
    sent_batch(writer, "msgbatch_2", *keys[6:])
    for batch, part in (("msgbatch_1", keys[:6]), ("msgbatch_2", keys[6:])):
        kinds = {k: "errored" if k in ("k03", "k09") else "succeeded" for k in part}
        rows = [result_row(writer, batch, f"cid-{k}-1", kinds[k]) for k in part]
        writer.store_harvest(batch, iter(rows), canceled_by_us=False, now=NOW)
    orders = [
        keys,
        keys[3:],
        keys[::-1],
        keys[::2],
        [*keys[:4], "zz", *keys[4:]],
        ["k05", "k06", "k07", "k05", "k00"],
        ["o0", *keys[:3]],
        [*keys[5:8], "o1", "k08"],
    ]
    for order in orders:
        got = writer.succeeded_results(JOB, order)
        expected = StateReader.succeeded_results(writer, JOB, order)
        assert [tuple(r) for r in got] == expected, order
        assert sum(r[0] is not None for r in got) == sum(
            k in keys and k not in ("k03", "k09") for k in order
        )
    if backend.name == "sqlite":  # keys in the order their items were written are found along
        from batchops.state.sqlite import _ITEM_ROWID_SQL, _SUCCEEDED_ALONG_SQL

        conn = writer.db.conn  # type: ignore[attr-defined]
        for run in (keys[:6], keys[6:]):  # the other job's items were written between the two
            (first,) = conn.execute(_ITEM_ROWID_SQL, (JOB, run[0])).fetchone()
            along = conn.execute(_SUCCEEDED_ALONG_SQL, (JOB, json.dumps(run), first)).fetchall()
            assert [r[0] is not None for r in along] == [k not in ("k03", "k09") for k in run]


@dataclass(frozen=True)
class Reuse:
    key: str
    custom_id: str
    fingerprint: str
    result_id: int | None


def test_results_by_fingerprint_finds_succeeded_results_of_any_job(writer: StateWriter) -> None:
    assert writer.results_by_fingerprint([]) == {}
    sent_batch(writer)
    rows = [
        result_row(writer, "msgbatch_1", "cid-a-1"),
        result_row(writer, "msgbatch_1", "cid-b-1", "errored"),
    ]
    writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW)
    found = writer.results_by_fingerprint(["sha256:a", "sha256:b", "sha256:zz"])
    assert list(found) == ["sha256:a"]  # an errored result is no answer to reuse
    lookup = writer.result_lookup(JOB, "a")
    assert lookup is not None
    # the many-fingerprints path (one scan) answers the same
    many = [f"sha256:x{i}" for i in range(6000)] + ["sha256:a"]
    assert writer.results_by_fingerprint(many) == found


def test_record_reuse_points_an_item_of_another_job_at_the_result(writer: StateWriter) -> None:
    sent_batch(writer)
    rows = [result_row(writer, "msgbatch_1", "cid-a-1")]
    rows.append(result_row(writer, "msgbatch_1", "cid-b-1", "errored"))
    writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW)
    result_id = writer.results_by_fingerprint(["sha256:a"])["sha256:a"]
    serial = writer.serial
    recorded = writer.record_reuse(
        "other",
        [
            Reuse("k1", "other-k1", "sha256:a", result_id),
            Reuse("k2", "other-k2", "sha256:b", result_id),  # not that result's request: skipped
        ],
        NOW,
    )
    assert recorded == 1
    assert writer.serial == serial + 1
    [item] = list(writer.item_records(["other"]))
    assert (item.key, item.custom_id, item.fingerprint, item.outcome) == (
        "k1",
        "other-k1",
        "sha256:a",
        "succeeded",
    )
    assert not item.inflight and item.attempts == 0
    lookup = writer.result_lookup("other", "k1")
    assert lookup is not None
    assert (lookup.text, lookup.result_type, lookup.batch_id) == (
        "answer a",
        "succeeded",
        "msgbatch_1",
    )
    # a revert: item b of the same job (errored at sha256:b) is answered by a's result once its
    # request is the same again
    assert writer.record_reuse(JOB, [Reuse("b", "cid-b-2", "sha256:a", result_id)], NOW) == 1
    b = records(writer)["b"]
    assert (b.outcome, b.error_type, b.fingerprint) == ("succeeded", None, "sha256:a")
    assert "other" in writer.job_names()


def test_record_reuse_leaves_an_item_in_flight_alone(writer: StateWriter) -> None:
    sent_batch(writer)
    writer.store_harvest(
        "msgbatch_1",
        iter(
            [
                result_row(writer, "msgbatch_1", "cid-a-1"),
                result_row(writer, "msgbatch_1", "cid-b-1"),
            ]
        ),
        canceled_by_us=False,
        now=NOW,
    )
    result_id = writer.results_by_fingerprint(["sha256:a"])["sha256:a"]
    writer.record_intent("intent-2", JOB, [Att("c", "cid-c-1", "sha256:c")], 10, NOW)
    assert writer.record_reuse(JOB, [Reuse("c", "cid-c-1", "sha256:a", result_id)], NOW) == 0
    assert records(writer)["c"].inflight


def test_store_harvest_canceled_by_us(writer: StateWriter) -> None:
    sent_batch(writer)
    rows = [result_row(writer, "msgbatch_1", "cid-a-1", "canceled")]
    writer.store_harvest("msgbatch_1", rows, canceled_by_us=True, now=NOW)
    items = records(writer)
    assert items["a"].outcome == "canceled" and items["a"].canceled_by_us
    assert items["b"].inflight  # no result for it yet


def test_store_harvest_raising_iterable_stores_nothing(writer: StateWriter) -> None:
    sent_batch(writer)
    good = result_row(writer, "msgbatch_1", "cid-a-1")
    serial = writer.serial

    def rows() -> Iterator[ResultRow]:
        yield good
        raise RuntimeError("verification failed")

    with pytest.raises(RuntimeError, match="verification failed"):
        writer.store_harvest("msgbatch_1", rows(), canceled_by_us=False, now=NOW)
    assert writer.serial == serial
    assert all(r.inflight for r in writer.item_records())
    assert writer.batch_detail("msgbatch_1")[2] == 0
    batch = writer.batch("msgbatch_1")
    assert batch is not None and batch.harvested_at is None
    # The writer is still usable afterwards.
    assert writer.store_harvest("msgbatch_1", [good], canceled_by_us=False, now=NOW) == 1


# ---------------------------------------------------------------- release
@pytest.mark.parametrize("drift", ["deleted", "not-ours"])
def test_release_batch(writer: StateWriter, drift: str) -> None:
    sent_batch(writer)
    assert writer.release_batch("msgbatch_1", drift, NOW) == 2
    items = records(writer)
    assert not any(r.inflight for r in items.values())
    assert all(r.attempts == 0 and r.outcome == "lost" for r in items.values())
    assert writer.inflight_by_batch() == {}
    batch = writer.batch("msgbatch_1")
    assert batch is not None and batch.drift == drift
    if drift == "not-ours":
        assert writer.sent_attempts("msgbatch_1") == {}
    else:
        assert writer.batch_detail("msgbatch_1")[1] == {"lost": 2}


def test_release_batch_unknown_drift(writer: StateWriter) -> None:
    sent_batch(writer)
    with pytest.raises(ValueError):
        writer.release_batch("msgbatch_1", "weird", NOW)
    assert all(r.inflight for r in writer.item_records())


# ---------------------------------------------------------------- forget, cancel, prune, plans
def test_forget_and_remember(writer: StateWriter) -> None:
    sent_batch(writer)
    writer.store_harvest(
        "msgbatch_1",
        [result_row(writer, "msgbatch_1", "cid-a-1")],
        canceled_by_us=False,
        now=NOW,
    )
    writer.forget([(JOB, "a"), (JOB, "b")], NOW)
    items = records(writer)
    assert items["a"].forgotten
    assert not items["b"].forgotten  # in flight: never forgotten
    writer.remember(iter([(JOB, "a")]))
    assert not records(writer)["a"].forgotten
    serial = writer.serial
    writer.forget([], NOW)
    writer.remember([])
    assert writer.serial == serial + 2


def test_cancel_and_prune(writer: StateWriter) -> None:
    sent_batch(writer)
    writer.mark_cancel_requested("msgbatch_1", NOW)
    writer.record_cancel("msgbatch_1", NOW + timedelta(seconds=1), "canceling")
    batch = writer.batch("msgbatch_1")
    assert batch is not None
    assert (batch.canceled_by_us_at, batch.processing_status) == (NOW, "canceling")
    assert not batch.finished
    writer.mark_pruned("msgbatch_1", NOW)
    batch = writer.batch("msgbatch_1")
    assert batch is not None and batch.pruned_at == NOW and batch.finished


def test_plan_applied(writer: StateWriter) -> None:
    assert not writer.plan_applied("plan-1")
    writer.record_plan_applied("plan-1", NOW)
    assert writer.plan_applied("plan-1")
    assert not writer.plan_applied("plan-2")


# ---------------------------------------------------------------- remove
def test_remove_job(writer: StateWriter) -> None:
    sent_batch(writer)
    writer.record_intent("i-other", "other", atts("x"), 10, NOW)
    expected = {"items": 2, "attempts": 2, "results": 0, "batches": 1, "intents": 1, "jobs": 1}
    assert writer.removal_counts(JOB) == ("job", expected)
    assert writer.remove(JOB) == ("job", expected)
    assert writer.job_names() == ["other"]
    assert writer.batches() == []
    assert writer.removal_counts(JOB) is None
    serial = writer.serial
    with pytest.raises(StateError, match="no job or batch"):
        writer.remove(JOB)
    assert writer.serial == serial


def test_remove_job_keeps_the_results_other_jobs_reuse(writer: StateWriter) -> None:
    sent_batch(writer)  # a, b in msgbatch_1
    rows = [
        result_row(writer, "msgbatch_1", "cid-a-1"),
        result_row(writer, "msgbatch_1", "cid-b-1"),
    ]
    writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW)
    found = writer.results_by_fingerprint(["sha256:a"])
    # two items of two other jobs answered by a's result (a rename, a copy of the job)
    writer.record_reuse("other", [Reuse("k1", "other-k1", "sha256:a", found["sha256:a"])], NOW)
    writer.record_reuse("zeta", [Reuse("z1", "zeta-z1", "sha256:a", found["sha256:a"])], NOW)
    expected = {
        "items": 2, "attempts": 2, "results": 1, "batches": 1, "intents": 1, "jobs": 1,
        "results kept for other jobs": 1,
    }  # fmt: skip
    assert writer.removal_counts(JOB) == ("job", expected)
    assert writer.remove(JOB) == ("job", expected)
    assert JOB not in writer.job_names()
    for job, key in (("other", "k1"), ("zeta", "z1")):
        lookup = writer.result_lookup(job, key)
        assert lookup is not None
        assert (lookup.text, lookup.result_type) == ("answer a", "succeeded")
    # the kept result is the first reusing item's now: found by fingerprint, priced under it
    assert writer.results_by_fingerprint(["sha256:a"]) == found
    assert [(u.job, u.output_tokens) for u in writer.usage_rows()] == [("other", 5)]
    assert writer.remove("other")[1]["results kept for other jobs"] == 1
    lookup = writer.result_lookup("zeta", "z1")
    assert lookup is not None and lookup.text == "answer a"
    assert writer.job_names() == ["zeta"]


def test_output_token_means_per_job_and_model(writer: StateWriter) -> None:
    assert writer.output_token_means([JOB]) == {}
    sent_batch(writer, "msgbatch_1", "a", "b", "c")
    rows = [result_row(writer, "msgbatch_1", f"cid-{k}-1") for k in "abc"]
    rows[1] = rows[1]._replace(output_tokens=8)
    rows[2] = rows[2]._replace(type="errored", output_tokens=None, text=None)  # not an answer
    writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW)
    assert writer.output_token_means([JOB, "none"]) == {JOB: {"claude-haiku-4-5": (2, 6.5)}}
    assert writer.output_token_means([JOB], sample=1)[JOB]["claude-haiku-4-5"][0] == 1
    # a job whose items reuse another's answers expects replies as long as those
    found = writer.results_by_fingerprint(["sha256:b"])
    writer.record_reuse("other", [Reuse("k", "other-k", "sha256:b", found["sha256:b"])], NOW)
    assert writer.output_token_means(["other"]) == {"other": {"claude-haiku-4-5": (1, 8.0)}}


def test_remove_batch(writer: StateWriter) -> None:
    sent_batch(writer)
    expected = {"batches": 1, "items": 2, "attempts": 2}
    assert writer.removal_counts("msgbatch_1") == ("batch", expected)
    assert writer.remove("msgbatch_1") == ("batch", expected)
    assert writer.batch("msgbatch_1") is None
    assert not any(r.inflight for r in writer.item_records())


def test_rename_job_moves_every_row_and_keeps_results_current(writer: StateWriter) -> None:
    sent_batch(writer)  # a, b in msgbatch_1
    good = result_row(writer, "msgbatch_1", "cid-a-1")
    writer.store_harvest("msgbatch_1", [good], canceled_by_us=False, now=NOW)  # b stays in flight
    before = {r.key: r for r in writer.item_records([JOB])}
    serial = writer.serial
    moved = writer.rename_job(JOB, "renamed")
    assert moved == {
        "items": 2, "attempts": 2, "results": 1, "batches": 1, "intents": 1, "jobs": 1
    }  # fmt: skip
    assert writer.serial == serial + 1
    assert list(writer.item_records([JOB])) == []
    after = {r.key: r for r in writer.item_records(["renamed"])}
    assert {k: r._replace(job=JOB) for k, r in after.items()} == before
    assert "demo" not in writer.job_names() and "renamed" in writer.job_names()
    found = writer.result_lookup("renamed", "a")
    assert found is not None and found.text == "answer a" and found.result_type == "succeeded"
    assert writer.inflight_by_batch() == {"msgbatch_1": {"renamed\x1fb"}}
    batch = writer.batch("msgbatch_1")
    assert batch is not None and batch.job == "renamed"


def test_rename_job_refuses_a_taken_or_unknown_name(writer: StateWriter) -> None:
    sent_batch(writer)
    writer.record_intent("intent-other", "other", atts("x"), 10, NOW)
    serial = writer.serial
    with pytest.raises(StateError, match="job 'other' already has rows in state"):
        writer.rename_job(JOB, "other")
    with pytest.raises(StateError, match="no job 'nope' in state"):
        writer.rename_job("nope", "fresh")
    with pytest.raises(StateError, match="onto itself"):
        writer.rename_job(JOB, JOB)
    assert writer.serial == serial
    assert {r.key for r in writer.item_records([JOB])} == {"a", "b"}


# ---------------------------------------------------------------- locks
def test_second_writer_is_refused_naming_the_holder(writer: StateWriter, backend: Backend) -> None:
    held = writer.lock()
    assert held is not None and held.command == "test"
    with pytest.raises(LockHeld) as caught:
        open_writer(backend.location, "other")
    message = str(caught.value)
    assert f"pid {held.pid}" in message and held.host in message and held.lock_id in message


def test_lock_timeout_waits(writer: StateWriter, backend: Backend) -> None:
    start = time.monotonic()
    with pytest.raises(LockHeld):
        open_writer(backend.location, "other", lock_timeout=0.6)
    assert time.monotonic() - start >= 0.5

    held = writer.lock()
    assert held is not None
    # Released from another thread, through a connection of its own (SQLite's are per thread).
    timer = threading.Timer(0.5, force_unlock, [backend.location, held.lock_id])
    timer.start()
    try:
        second = open_writer(backend.location, "other", lock_timeout=10)
    finally:
        timer.join()
    try:
        lock = second.lock()
        assert lock is not None and lock.command == "other"
    finally:
        second.close()


def test_close_releases_the_lock(backend: Backend) -> None:
    open_writer(backend.location, "test").close()
    reader = open_reader(backend.location)
    try:
        assert reader.lock() is None
    finally:
        reader.close()


def test_force_unlock(writer: StateWriter, backend: Backend) -> None:
    held = writer.lock()
    assert held is not None
    with pytest.raises(StateError, match="does not match"):
        force_unlock(backend.location, "not-the-id")
    assert force_unlock(backend.location, held.lock_id) == held
    with pytest.raises(StateError, match="not locked"):
        force_unlock(backend.location, held.lock_id)
    open_writer(backend.location, "other").close()


def test_dead_holder_on_this_host_is_taken_over(writer: StateWriter, backend: Backend) -> None:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(child.stdout)
    backend.raw("update leases set pid = ?", (dead_pid,))
    taken = []
    second = open_writer(backend.location, "other", on_takeover=taken.append)
    try:
        assert [t.pid for t in taken] == [dead_pid]
        lock = second.lock()
        assert lock is not None and lock.command == "other"
    finally:
        second.close()


_OPEN_AT_ONCE = """
import sys, time
from batchops.errors import LockHeld, StateError
from batchops.state import open_writer
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    open_writer(sys.argv[1], "race").close()
    print("opened")
except LockHeld:
    print("held")
except StateError as exc:
    print("error", exc)
"""


def test_writers_opening_a_new_state_at_once_are_each_opened_or_told_it_is_held(
    backend: Backend, tmp_path: Path
) -> None:
    """CI saw two applies start on a new SQLite state together, and one was told the file was
    "not a batchops state file (database is locked)": both switched the new file to WAL, and
    SQLite answers the second switch "locked" at once, without waiting."""
    if backend.name == "postgres":  # each round needs a new, empty state
        locations = [backend.location]
    else:
        locations = [str(tmp_path / f"state-{n}.db") for n in range(6)]
    outcomes: list[str] = []
    for location in locations:
        start = time.time() + 0.8
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_AT_ONCE, location, str(start)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        outcomes += [child.communicate(timeout=60)[0].strip() for child in children]
    assert [o for o in outcomes if o not in ("opened", "held")] == []
    assert "opened" in outcomes


def test_a_sqlite_state_held_locked_too_long_is_reported_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "not a batchops state file": the file is one, another process holds it."""
    from batchops.state import sqlite as sqlite_state

    path = tmp_path / "state.db"
    open_writer(str(path), "test").close()
    monkeypatch.setattr(sqlite_state, "_BUSY_SECONDS", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("begin immediate")
    try:
        with pytest.raises(StateError) as caught:
            open_writer(str(path), "other")
    finally:
        holder.execute("rollback")
        holder.close()
    assert str(caught.value) == (
        f"{path}: state file is busy: another process held it for over 0.2 s (database is locked)"
    )
    open_writer(str(path), "other").close()  # free again


# ---------------------------------------------------------------- readers and migrations
def test_reader_on_missing_state_answers_empty_and_creates_nothing(backend: Backend) -> None:
    reader = open_reader(backend.location)
    try:
        assert not reader.exists
        assert (reader.lineage, reader.serial, reader.lock()) == (None, 0, None)
        assert list(reader.item_records()) == [] and list(reader.item_records([JOB])) == []
        assert reader.batches() == [] and reader.batch("x") is None
        assert reader.inflight_by_batch() == {} and reader.open_intents() == []
        assert reader.job_names() == [] and list(reader.usage_rows()) == []
        assert reader.result_lookup(JOB, "a") is None and reader.result_lookups(JOB)("a") is None
        assert reader.results_of(JOB, ["a"]) == {}
        assert reader.succeeded_results(JOB, ["a", "b"]) == [NO_SUCCEEDED_ROW] * 2
        assert reader.removal_counts(JOB) is None and not reader.plan_applied("p")
        assert reader.sent_attempts("x") == {}
    finally:
        reader.close()
    assert backend.tables() == set()
    if backend.name == "sqlite":
        assert not Path(backend.location).exists()


def test_reader_on_a_state_file_being_created_answers_empty(tmp_path: Path) -> None:
    """A plan that reads while the first apply is creating the SQLite file finds a file with
    no tables yet: that is an empty state, as a missing file is, not "not a state file"."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("pragma journal_mode = wal")
    conn.close()
    reader = open_reader(str(path))
    try:
        assert not reader.exists and reader.serial == 0 and reader.job_names() == []
    finally:
        reader.close()
    sqlite3.connect(path).execute("create table other (x)").connection.close()
    with pytest.raises(StateError, match="not a batchops state file"):
        open_reader(str(path))


def test_reader_sees_items_for_selected_jobs(writer: StateWriter, backend: Backend) -> None:
    sent_batch(writer)
    writer.record_intent("i-other", "other", atts("x"), 10, NOW)
    reader = open_reader(backend.location)
    try:
        assert {r.key for r in reader.item_records([JOB])} == {"a", "b"}
        assert {r.key for r in reader.item_records()} == {"a", "b", "x"}
        assert reader.serial == writer.serial
    finally:
        reader.close()


def test_newer_unknown_migration_is_refused(backend: Backend) -> None:
    open_writer(backend.location, "test").close()
    backend.raw(
        f"insert into {backend.migrations_table()} (migration_set, name, applied_at)"
        " values (?, ?, ?)",
        ("batchops", "m9999_from_the_future", "2030-01-01T00:00:00Z"),
    )
    with pytest.raises(StateError, match="newer"):
        open_writer(backend.location, "test")
    with pytest.raises(StateError, match="newer"):
        open_reader(backend.location)


def test_postgres_location_never_shows_the_password(pg_dsn: str) -> None:
    url = pg_dsn.replace("postgres@", "postgres:hunter2@", 1) + "?password=hunter3"
    writer = open_writer(url, "test")
    try:
        assert "hunter" not in writer.location
        assert writer.location.startswith("postgresql://postgres@127.0.0.1:")
    finally:
        writer.close()
    reader = open_reader(url)
    try:
        assert "hunter" not in reader.location and reader.exists
    finally:
        reader.close()
    unreachable = url.replace("/test_", "/missing_", 1)
    with pytest.raises(StateError, match="cannot connect") as caught:
        open_reader(unreachable)
    assert "hunter" not in str(caught.value)


# ---------------------------------------------------------------- leases (DESIGN §6.5)
def test_leases_are_per_job(backend: Backend) -> None:
    first = open_writer(backend.location, "apply", jobs=["a"])
    try:
        second = open_writer(backend.location, "apply", jobs=["b"])  # another job: at once
        second.close()
        with pytest.raises(LockHeld) as caught:
            open_writer(backend.location, "apply", jobs=["a", "c"])
        assert f"lock {first.held.lock_id} held by pid {os.getpid()}" in caught.value.problems[0]
        assert "on job:a" in caught.value.problems[0]
        with pytest.raises(LockHeld):
            open_writer(backend.location, "apply")  # every job: the whole state
    finally:
        first.close()
    whole = open_writer(backend.location, "apply")
    try:
        with pytest.raises(LockHeld):
            open_writer(backend.location, "apply", jobs=["b"])
    finally:
        whole.close()


def test_a_live_holder_in_another_pid_namespace_is_not_taken_over(backend: Backend) -> None:
    # Same host name, another PID namespace (another container): its pid proves nothing, even a
    # pid that does not exist here. Only the lease's expiry can free it.
    holder = open_writer(backend.location, "apply", jobs=["a"])
    holder.stop_keeper()
    backend.raw("update leases set pid = ?, pid_ns = ?", (2**22 - 7, "pid:[4026531999]"))
    with pytest.raises(LockHeld):
        open_writer(backend.location, "apply", jobs=["a"])
    backend.raw("update leases set expires_at = ?", ("2000-01-01T00:00:00Z",))
    taken: list = []
    second = open_writer(backend.location, "apply", jobs=["a"], on_takeover=taken.append)
    try:
        assert [t.lock_id for t in taken] == [holder.held.lock_id]
    finally:
        second.close()
        holder.held = None
        holder.close()


def test_a_live_holder_renews_its_lease(backend: Backend, monkeypatch) -> None:
    monkeypatch.setenv("BATCHOPS_LEASE_SECONDS", "1")
    holder = open_writer(backend.location, "apply", jobs=["a"])
    try:
        first = holder.leases()[0].expires
        time.sleep(1.5)  # past the first expiry: renewed meanwhile by the heartbeat
        assert holder.leases()[0].expires > first
        with pytest.raises(LockHeld):
            open_writer(backend.location, "apply", jobs=["a"])
        assert not holder.lease_lost
    finally:
        holder.close()
    assert open_reader(backend.location).leases() == []


# ---------------------------------------------------------------- copies (state push and pull)
COPY_KEPT_APART = {"lock", "leases"}  # each state's own; never copied


@pytest.fixture(params=["sqlite", "postgres"])
def other(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A second, empty state to copy into (of either kind)."""
    if request.param == "sqlite":
        yield Backend("sqlite", str(tmp_path / "copy.db"))
        return
    server = request.getfixturevalue("pg_server")
    name = server.create_database()
    try:
        yield Backend("postgres", server.dsn_for(name))
    finally:
        server.drop_database(name)


def filled(w: StateWriter) -> None:
    """A little of everything: a harvest (both outcomes, a cancel flag), a forgotten item, an open
    intent, a plan applied."""
    sent_batch(w)
    rows = [
        result_row(w, "msgbatch_1", "cid-a-1"),
        result_row(w, "msgbatch_1", "cid-b-1", "canceled"),
    ]
    w.store_harvest("msgbatch_1", rows, canceled_by_us=True, now=NOW)
    w.forget([(JOB, "b")], NOW)
    w.record_intent("i-open", JOB, atts("c"), 10, NOW, list_anchor="msgbatch_1")
    w.record_plan_applied("plan-1", NOW)


def dump(location: str) -> dict[str, list[tuple]]:
    reader = open_reader(location)
    try:
        return {table: sorted(rows, key=repr) for table, _, rows in reader.dump_tables()}
    finally:
        reader.close()


def test_state_tables_name_every_column_of_every_table(writer: StateWriter, backend: Backend):
    from batchops.state.api import STATE_TABLES

    if backend.name == "sqlite":
        tables = backend.tables() - {"_sqlite_migrations"}
        found = {t: {r[1] for r in backend.raw(f"pragma table_info({t})")} for t in tables}
    else:
        rows = backend.raw(
            "select table_name, column_name from information_schema.columns"
            " where table_schema = 'public' and table_name != '_batchops_migrations'"
        )
        found = {}
        for table, column in rows:
            found.setdefault(table, set()).add(column)
    copied = {t: set(c) for t, c in STATE_TABLES}
    assert {t: c for t, c in found.items() if t not in COPY_KEPT_APART} == copied


def test_dump_and_load_copy_every_row(writer: StateWriter, backend: Backend, other: Backend):
    filled(writer)
    source = dump(backend.location)
    target = open_writer(other.location, "copy")
    try:
        counts = target.load_tables(writer.dump_tables(), expected=writer.table_counts())
        assert counts == writer.table_counts()
        # meta: lineage, serial, created_at and the write id
        assert counts["results"] == 2 and counts["attempts"] == 3 and counts["meta"] == 4
        assert (target.lineage, target.serial) == (writer.lineage, writer.serial)
        # a history of its own from the copy on: a plan made against one is refused by the other
        assert None is not target.write_id != writer.write_id is not None
        assert records(target) == records(writer)
        assert target.batches() == writer.batches()
        assert target.result_lookup(JOB, "a") == writer.result_lookup(JOB, "a")
        assert target.open_intents() == writer.open_intents()
        assert target.plan_applied("plan-1")
        # ids go on after the copied ones, in both backends (see the dump below)
        target.record_intent("i-next", JOB, atts("d"), 10, NOW)
        assert target.lock() is not None and target.lock().command == "copy"
    finally:
        target.close()
    copy = dump(other.location)
    assert {
        t: rows
        for t, rows in copy.items()
        if t not in ("attempts", "items", "intents", "meta", "jobs")
    } == {
        t: rows
        for t, rows in source.items()
        if t not in ("attempts", "items", "intents", "meta", "jobs")
    }
    assert len(copy["attempts"]) == len(source["attempts"]) + 1
    assert [r for r in copy["attempts"] if r[6] != "i-next"] == source["attempts"]
    assert [r[0] for r in copy["attempts"] if r[6] == "i-next"] == [4]
    assert {r[1]: r[9] for r in copy["items"]}["b"] is True  # canceled_by_us, a bool in a dump


def test_load_refuses_a_state_that_is_not_empty_unless_replace(
    writer: StateWriter, backend: Backend, other: Backend
) -> None:
    filled(writer)
    target = open_writer(other.location, "copy")
    try:
        for n in range(writer.serial + 1):  # a serial past the source's
            target.record_plan_applied(f"theirs-{n}", NOW)
        own = (target.lineage, target.serial)
        assert own[1] > writer.serial
        with pytest.raises(StateError, match="not empty; nothing was copied"):
            target.load_tables(writer.dump_tables())
        assert (target.lineage, target.serial) == own and target.plan_applied("theirs-0")
        counts = target.load_tables(writer.dump_tables(), replace=True)
        assert counts == writer.table_counts()
        assert target.lineage == writer.lineage and not target.plan_applied("theirs-0")
        assert target.serial == max(own[1], writer.serial) + 1  # past both: no plan matches
    finally:
        target.close()


def test_load_that_does_not_check_out_writes_nothing(
    writer: StateWriter, backend: Backend, other: Backend
) -> None:
    filled(writer)
    wrong = {**writer.table_counts(), "results": 99}
    target = open_writer(other.location, "copy")
    try:
        lineage = target.lineage
        with pytest.raises(StateError, match="does not check out"):
            target.load_tables(writer.dump_tables(), expected=wrong)
        assert target.is_empty() and target.lineage == lineage and target.serial == 0
        with pytest.raises(ValueError, match="not a state table"):
            target.load_tables([("lock", ("id",), iter([(1,)]))])
        assert target.is_empty()
    finally:
        target.close()


def test_missing_state_dumps_nothing_and_counts_zero(backend: Backend) -> None:
    reader = open_reader(backend.location)
    try:
        assert list(reader.dump_tables()) == [] and reader.is_empty()
        assert set(reader.table_counts().values()) == {0}
    finally:
        reader.close()
