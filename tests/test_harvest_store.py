"""`store_harvest` on both backends, as a harvest calls it: plain tuples in `ResultRow`'s order,
a batch's lines in any order, into a state that already holds results of earlier batches.

Each item is settled from its own result (the one whose attempt it is), its attempt is done with
its batch, and nothing of another batch is touched, whatever order the lines come in and whatever
ids the results get.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchops.state import open_writer
from batchops.state.api import StateWriter
from batchops.state.records import BatchRecord, ResultRow

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
JOB = "demo"
TYPES = ("succeeded", "errored", "canceled", "expired")


class Att:
    def __init__(self, key: str, batch: str):
        self.key = key
        self.custom_id = f"cid-{key}-{batch}"
        self.fingerprint = f"sha256:{key}-{batch}"
        self.attempt = 1


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return request.getfixturevalue("pg_dsn")


@pytest.fixture
def writer(location: str) -> Iterator[StateWriter]:
    w = open_writer(location, "test")
    try:
        yield w
    finally:
        w.close()


def send(w: StateWriter, batch_id: str, keys: list[str], intent: str | None = None) -> None:
    """`keys` sent in batch `batch_id` (its intent `intent-<batch_id>` unless named)."""
    intent = intent or f"intent-{batch_id}"
    w.record_intent(intent, JOB, [Att(k, batch_id) for k in keys], 100, NOW)
    record = BatchRecord(
        id=batch_id, job=JOB, request_count=len(keys), processing_status="ended",
        created_at=NOW, expires_at=NOW + timedelta(days=1), ended_at=NOW, archived_at=None,
        results_expire_at=None, harvested_at=None, canceled_by_us_at=None, pruned_at=None,
        drift=None, request_counts=None,
    )  # fmt: skip
    w.record_created(intent, record, NOW)


def rows_of(w: StateWriter, batch_id: str, kinds: dict[str, str]) -> list[tuple]:
    """The batch's result rows as a harvest builds them: plain tuples, one per custom_id."""
    out = []
    for custom_id, sent in w.sent_attempts(batch_id).items():
        kind = kinds[sent.key]
        ok = kind == "succeeded"
        out.append(
            (
                JOB, sent.key, custom_id, sent.fingerprint, batch_id, sent.attempt_id, kind,
                f"answer {sent.key}" if ok else None, '{"id":"m"}' if ok else None,
                "end_turn" if ok else None,
                "api_error" if kind == "errored" else None,
                f"boom {sent.key}" if kind == "errored" else None,
                "claude-haiku-4-5" if ok else None,
                *((10, 5, 0, 0, 0) if ok else (None,) * 5),
                "2026-03-10T12:00:00Z",
            )
        )  # fmt: skip
    assert all(len(r) == len(ResultRow._fields) for r in out)
    return out


def test_lines_in_any_order_settle_each_item_from_its_own_result(writer: StateWriter) -> None:
    rng = random.Random(7)
    first_keys = [f"k{i:03}" for i in range(60)]
    send(writer, "msgbatch_1", first_keys)
    first = rows_of(writer, "msgbatch_1", dict.fromkeys(first_keys, "succeeded"))
    rng.shuffle(first)
    assert writer.store_harvest("msgbatch_1", iter(first), canceled_by_us=False, now=NOW) == 60
    before = {k: writer.result_lookup(JOB, k) for k in first_keys}

    # a second batch: half the same items sent again, and new ones; every result type
    keys = first_keys[::2] + [f"n{i:03}" for i in range(90)]
    kinds = {k: TYPES[i % 4] for i, k in enumerate(keys)}
    send(writer, "msgbatch_2", keys)
    rows = rows_of(writer, "msgbatch_2", kinds)
    rng.shuffle(rows)
    assert writer.store_harvest("msgbatch_2", iter(rows), canceled_by_us=True, now=LATER) == 120

    items = {r.key: r for r in writer.item_records()}
    assert not any(r.inflight for r in items.values())
    for key in keys:
        item, kind = items[key], kinds[key]
        assert item.outcome == kind
        assert item.canceled_by_us == (kind == "canceled")
        assert item.error_type == ("api_error" if kind == "errored" else None)
        assert item.error_message == (f"boom {key}" if kind == "errored" else None)
        lookup = writer.result_lookup(JOB, key)
        assert lookup is not None
        if kind == "succeeded":  # the item points at its own result of this batch
            assert (lookup.text, lookup.batch_id) == (f"answer {key}", "msgbatch_2")
            assert lookup.result_fingerprint == f"sha256:{key}-msgbatch_2"
        else:
            assert lookup.result_type is None and lookup.text is None
    for key in set(first_keys) - set(keys):  # items of the first batch only: untouched
        assert writer.result_lookup(JOB, key) == before[key]
    counts: dict[str, int] = {}
    for kind in kinds.values():
        counts[kind] = counts.get(kind, 0) + 1
    assert writer.batch_detail("msgbatch_2") == ("intent-msgbatch_2", counts, 120)
    assert writer.batch_detail("msgbatch_1") == ("intent-msgbatch_1", {"succeeded": 60}, 60)
    batch = writer.batch("msgbatch_2")
    assert batch is not None and batch.harvested_at == LATER
    assert writer.sent_attempts("msgbatch_2") == {}


def test_a_failed_harvest_leaves_nothing_behind(writer: StateWriter) -> None:
    """Rows that raise part way roll everything back; the same batch is then stored whole."""
    keys = [f"k{i:04}" for i in range(2500)]  # more than one chunk of inserts
    send(writer, "msgbatch_1", keys)
    rows = rows_of(writer, "msgbatch_1", dict.fromkeys(keys, "succeeded"))
    serial = writer.serial

    def failing() -> Iterator[tuple]:
        yield from rows[:2200]
        raise RuntimeError("verification failed")

    with pytest.raises(RuntimeError, match="verification failed"):
        writer.store_harvest("msgbatch_1", failing(), canceled_by_us=False, now=NOW)
    assert writer.serial == serial
    assert writer.batch_detail("msgbatch_1")[2] == 0
    assert all(r.inflight for r in writer.item_records())
    assert writer.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 2500
    assert {r.outcome for r in writer.item_records()} == {"succeeded"}


def test_a_result_postgresql_text_cannot_hold_is_stored_all_the_same(
    writer: StateWriter, location: str
) -> None:
    """A reply's text or an API error's message may hold a NUL character, and PostgreSQL's
    text type refuses it: the whole harvest failed there, each time it was tried, until the
    batch's results expired. Both backends store the batch now. PostgreSQL holds U+FFFD in the
    NUL's place in those columns; the stored message keeps the reply exactly (JSON writes the
    NUL as \\u0000). A value that is not a string where the API sends one (a protocol slip) is
    stored as its JSON text on PostgreSQL, as SQLite's text columns store a number."""
    send(writer, "msgbatch_1", ["a", "b"])
    message = '{"content":[{"type":"text","text":"nul \\u0000 here"}]}'
    odd = []
    for row in rows_of(writer, "msgbatch_1", {"a": "succeeded", "b": "errored"}):
        fields = list(row)
        if fields[1] == "a":
            fields[7:10] = ["nul \x00 here", message, 7]  # text, message, stop_reason
        else:
            fields[11] = "bad \x00 input"  # error_message
        odd.append(tuple(fields))
    assert writer.store_harvest("msgbatch_1", iter(odd), canceled_by_us=False, now=NOW) == 2
    nul = "\ufffd" if location.startswith("postgresql:") else "\x00"
    lookup = writer.result_lookup(JOB, "a")
    assert lookup is not None
    assert (lookup.text, lookup.message, lookup.stop_reason) == (f"nul {nul} here", message, "7")
    items = {r.key: r for r in writer.item_records()}
    assert (items["a"].outcome, items["b"].outcome) == ("succeeded", "errored")
    assert items["b"].error_message == f"bad {nul} input"


def test_sqlite_result_ids_follow_the_lines(tmp_path: Path) -> None:
    """SQLite: each result's id is the next after the ones before, in the order of the lines,
    and each item's result_id is the id of the result for its attempt."""
    path = tmp_path / "state.db"
    w = open_writer(str(path), "test")
    try:
        send(w, "msgbatch_1", ["a", "b", "c"])
        rows = rows_of(w, "msgbatch_1", dict.fromkeys("abc", "succeeded"))
        rows.sort(key=lambda r: r[1], reverse=True)  # c, b, a
        w.store_harvest("msgbatch_1", rows, canceled_by_us=False, now=NOW)
    finally:
        w.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("select key, id from results order by id").fetchall() == [
            ("c", 1),
            ("b", 2),
            ("a", 3),
        ]
        assert conn.execute(
            "select count(*) from items i join results r on r.id = i.result_id"
            " join attempts a on a.id = r.attempt_id where a.key = i.key and a.status = 'sent'"
            " and r.type = 'succeeded'"
        ).fetchone() == (3,)
    finally:
        conn.close()


@pytest.mark.parametrize("count", [1, 49, 50, 51, 149, 150, 151])
def test_sqlite_rows_inserted_many_a_statement_are_stored_exactly(
    tmp_path: Path, count: int
) -> None:
    """SQLite inserts a harvest's rows 50 a statement, and the ones left over one by one: every
    row is stored whole, column for column, in the order of the lines, whatever the count."""
    path = tmp_path / "state.db"
    keys = [f"k{i:03}" for i in range(count)]
    w = open_writer(str(path), "test")
    try:
        send(w, "msgbatch_1", keys)
        rows = rows_of(w, "msgbatch_1", {k: TYPES[i % 4] for i, k in enumerate(keys)})
        random.Random(count).shuffle(rows)
        assert w.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == count
    finally:
        w.close()
    conn = sqlite3.connect(path)
    try:
        columns = ", ".join(ResultRow._fields)
        stored = conn.execute(f"select {columns} from results order by id").fetchall()
        assert stored == rows
        assert [r[0] for r in conn.execute("select id from results order by id")] == list(
            range(1, count + 1)
        )
    finally:
        conn.close()


def test_sqlite_commit_leaves_the_wal_copy_to_the_checkpoint_beside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: the harvest's commit makes its results durable in the WAL, but does not copy the
    WAL into the file (that copy, tens of MB for a full batch, is done by `_checkpoint_beside`,
    here held back); `make_durable` then leaves the file alone holding every result, and a
    commit after the harvest checkpoints as SQLite does by default again."""
    from batchops.state.sqlite import SqliteWriter

    held: list[SqliteWriter] = []
    monkeypatch.setattr(
        SqliteWriter, "_checkpoint_beside", lambda self: held.append(self), raising=False
    )
    path = tmp_path / "state.db"
    w = open_writer(str(path), "test")
    try:
        keys = [f"k{i:04}" for i in range(3000)]
        send(w, "msgbatch_1", keys)
        w.make_durable()
        rows = rows_of(w, "msgbatch_1", dict.fromkeys(keys, "succeeded"))
        big = '{"id":"m","pad":"' + "x" * 2000 + '"}'  # 3,000 of them: 1,500 pages and more
        rows = [(*r[:8], big, *r[9:]) for r in rows]
        assert w.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 3000

        def file_alone() -> int:  # the results the main file holds without its WAL
            copy = tmp_path / "alone.db"
            copy.write_bytes(path.read_bytes())
            conn = sqlite3.connect(copy)
            try:
                return conn.execute("select count(*) from results").fetchone()[0]
            finally:
                conn.close()

        assert file_alone() == 0
        assert held == [w]
        assert w.db.conn.execute("pragma wal_autocheckpoint").fetchone() == (1000,)  # type: ignore[attr-defined]
        assert w.batch_detail("msgbatch_1")[2] == 3000  # committed: visible to readers
        w.make_durable()
        assert file_alone() == 3000
    finally:
        w.close()


def test_sqlite_a_failed_harvest_checkpoints_as_before(tmp_path: Path) -> None:
    """SQLite: a harvest that raises restores SQLite's automatic checkpoint all the same."""
    w = open_writer(str(tmp_path / "state.db"), "test")
    try:
        send(w, "msgbatch_1", ["a", "b"])
        rows = rows_of(w, "msgbatch_1", dict.fromkeys("ab", "succeeded"))

        def failing() -> Iterator[tuple]:
            yield rows[0]
            raise RuntimeError("verification failed")

        with pytest.raises(RuntimeError):
            w.store_harvest("msgbatch_1", failing(), canceled_by_us=False, now=NOW)
        assert w.db.conn.execute("pragma wal_autocheckpoint").fetchone() == (1000,)  # type: ignore[attr-defined]
        assert w.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 2
    finally:
        w.close()
    assert (
        not (tmp_path / "state.db-wal").exists() or (tmp_path / "state.db-wal").stat().st_size == 0
    )


def test_sqlite_harvests_back_to_back_leave_a_self_contained_file(tmp_path: Path) -> None:
    """SQLite: two harvests in a row (the second's transaction may run beside the first's
    checkpoint), then close: the file alone holds both batches' results, the WAL is empty."""
    path = tmp_path / "state.db"
    w = open_writer(str(path), "test")
    try:
        for batch, keys in (("msgbatch_1", ["a", "b"]), ("msgbatch_2", ["c", "d", "e"])):
            send(w, batch, keys)
            rows = rows_of(w, batch, dict.fromkeys(keys, "succeeded"))
            assert w.store_harvest(batch, iter(rows), canceled_by_us=False, now=NOW) == len(rows)
    finally:
        w.close()
    wal = tmp_path / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    alone = tmp_path / "alone.db"
    alone.write_bytes(path.read_bytes())
    conn = sqlite3.connect(alone)
    try:
        assert conn.execute("select batch_id, count(*) from results group by 1").fetchall() == [
            ("msgbatch_1", 2),
            ("msgbatch_2", 3),
        ]
    finally:
        conn.close()


def test_postgres_a_harvest_writes_no_version_of_an_attempt(pg_dsn: str) -> None:
    """PostgreSQL: the harvest settles the items, not the attempts (m0009): each attempt keeps
    the row version it was sent with (the same place, written by the same transaction), where
    it was a new version of each, on its page (m0008) or, before, on another page with an entry
    in each of three indexes."""
    import psycopg

    keys = [f"k{i:04}" for i in range(3000)]
    w = open_writer(pg_dsn, "test")
    try:
        send(w, "msgbatch_1", keys)  # written, then set sent: as an apply does
        versions = "select key, ctid::text, xmin::text, status from attempts order by key"
        with psycopg.connect(pg_dsn) as conn:
            before = conn.execute(versions).fetchall()
        rows = rows_of(w, "msgbatch_1", dict.fromkeys(keys, "succeeded"))
        assert w.store_harvest("msgbatch_1", iter(rows), canceled_by_us=False, now=NOW) == 3000
        with psycopg.connect(pg_dsn) as conn:
            after = conn.execute(versions).fetchall()
        assert w.batch_detail("msgbatch_1")[1:] == ({"succeeded": 3000}, 3000)
    finally:
        w.close()
    assert len(before) == 3000 and {row[3] for row in before} == {"sent"}
    assert after == before
