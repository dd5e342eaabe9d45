"""A state written by an older batchops: read-only commands say what to run; `state migrate`
upgrades it under the lease (DESIGN §6.7)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlite_utils import Database

from batchops.state import is_postgres, open_writer
from batchops.state.api import StateWriter
from batchops.state.sqlite import KNOWN_MIGRATIONS
from batchops.state.sqlite_migrations import migrations
from tests import statedb
from tests.projects import rows, run_cli, write_project


def test_an_older_state_is_refused_by_plan_with_the_command_to_run_then_migrated(tmp_path):
    write_project(tmp_path, rows(2))
    path = tmp_path / "state" / "batchops.db"
    path.parent.mkdir()
    db = Database(path)
    migrations.apply(db, stop_before=KNOWN_MIGRATIONS[-1])  # as the previous release left it
    db.conn.execute("insert into meta (key, value) values ('lineage', 'old'), ('serial', '0')")
    db.conn.commit()
    db.close()
    before = path.read_bytes()

    plan = run_cli(tmp_path, None, "plan", "--no-refresh")
    assert plan.returncode == 1
    assert plan.stderr == (
        "Error: state/batchops.db: the state was written by an older batchops and needs "
        f"upgrading (migration {KNOWN_MIGRATIONS[-1]}): run `batchops state migrate`\n"
    )
    assert path.read_bytes() == before  # a read-only command wrote nothing

    migrated = run_cli(tmp_path, None, "state", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == "State state/batchops.db is up to date.\n"
    backups = list(path.parent.glob("batchops.db.backup-before-*"))
    assert [b.name for b in backups] == [f"batchops.db.backup-before-{KNOWN_MIGRATIONS[-1]}"]

    again = run_cli(tmp_path, None, "plan", "--no-refresh")
    assert again.returncode == 0, again.stderr
    assert "2 to submit" in again.stdout


def _state_before(location, migration: str) -> None:
    """A state as the release before `migration` left it, holding one harvested result."""
    if is_postgres(location):
        import psycopg

        from batchops.state.postgres import MIGRATIONS, MIGRATIONS_TABLE

        with psycopg.connect(str(location), autocommit=True) as conn:
            conn.execute(
                f"create table {MIGRATIONS_TABLE} (migration_set text not null, name text not"
                " null, applied_at text not null, primary key (migration_set, name))"
            )
            for name, statements in MIGRATIONS[: KNOWN_MIGRATIONS.index(migration)]:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    f"insert into {MIGRATIONS_TABLE} values ('batchops', %s, '2026-01-01')", [name]
                )
    else:
        location.parent.mkdir(parents=True, exist_ok=True)
        db = Database(location)
        migrations.apply(db, stop_before=migration)
        db.close()
    statedb.rows(
        location, "insert into meta (key, value) values ('lineage', 'old'), ('serial', '0')"
    )
    statedb.rows(
        location,
        "insert into results (id, job, key, custom_id, fingerprint, batch_id, attempt_id, type,"
        " text, message) values (7, 'demo', 'old', 'cid-old', 'sha256:old', 'msgbatch_0', 3,"
        " 'succeeded', 'kept', '{}')",
    )
    statedb.rows(
        location,
        "insert into items (job, key, custom_id, fingerprint, attempts, outcome, result_id)"
        " values ('demo', 'old', 'cid-old', 'sha256:old', 1, 'succeeded', 7)",
    )


def _result_indexes(location) -> set[str]:
    if is_postgres(location):
        sql = "select indexname from pg_indexes where tablename = 'results'"
    else:
        sql = "select name from sqlite_master where type = 'index' and tbl_name = 'results'"
    return {name for (name,) in statedb.rows(location, sql) if not name.endswith("_pkey")}


# PostgreSQL keeps the index by batch its harvest reads through; SQLite dropped it (m0007).
_LATEST_RESULT_INDEXES = {
    False: {"idx_results_job"},
    True: {"idx_results_batch_id", "idx_results_job"},
}


@contextlib.contextmanager
def _migrated(location, migration: str, index: str) -> Iterator[StateWriter]:
    """A writer of a state left by the release before `migration` (which had `index` on
    results), migrated by opening it; it keeps its one result and has the latest indexes."""
    from tests.test_state_contract import JOB

    _state_before(location, migration)
    assert index in _result_indexes(location)
    writer = open_writer(location, "apply")  # migrates, holding the lease
    try:
        assert _result_indexes(location) == _LATEST_RESULT_INDEXES[is_postgres(location)]
        assert writer.result_lookup(JOB, "old").text == "kept"
        yield writer
    finally:
        writer.close()


def test_a_state_from_before_the_batch_index_was_dropped_counts_and_harvests(state_location):
    from tests.test_state_contract import JOB, NOW, atts, result_row, sent_batch

    migration = "m0007_results_without_batch_index"
    with _migrated(state_location, migration, "idx_results_batch_id") as writer:
        sent_batch(writer, "msgbatch_1", "a", "b", "c")
        assert writer.batch_detail("msgbatch_1")[1:] == ({"sent": 3}, 0)
        rows = [result_row(writer, "msgbatch_1", a.custom_id) for a in atts("a", "b", "c")]
        assert writer.store_harvest("msgbatch_1", rows, canceled_by_us=False, now=NOW) == 3
        # the batch's results, counted without the index
        assert writer.batch_detail("msgbatch_1")[1:] == ({"succeeded": 3}, 3)
        (summary,) = writer.job_summaries([JOB])
        assert summary.results == 4


def test_a_state_from_before_lean_result_indexes_keeps_its_results_and_harvests(state_location):
    from tests.test_state_contract import JOB, NOW, atts, result_row, sent_batch

    migration = "m0006_lean_result_indexes"
    with _migrated(state_location, migration, "idx_results_attempt_id") as writer:
        sent_batch(writer, "msgbatch_1", "a", "b")
        rows = [result_row(writer, "msgbatch_1", a.custom_id) for a in atts("a", "b")]
        assert writer.store_harvest("msgbatch_1", rows, canceled_by_us=False, now=NOW) == 2
        assert writer.result_lookup(JOB, "a").text == "answer a"
        assert writer.results_by_fingerprint(["sha256:old", "sha256:b"]).keys() == {
            "sha256:old",
            "sha256:b",
        }
        (summary,) = writer.job_summaries([JOB])
        assert (summary.results, summary.outcomes["succeeded"]) == (3, 3)
        assert writer.batch("msgbatch_1").harvested_at is not None


def test_known_migrations_are_the_registered_ones_in_order():
    # readers check a file's migrations against this list without importing sqlite-utils
    assert KNOWN_MIGRATIONS == [m.name for m in migrations._migrations]


def test_a_state_from_before_attempts_kept_room_migrates_and_harvests(state_location):
    from tests.test_state_contract import JOB, NOW, atts, result_row, sent_batch

    migration = "m0008_attempts_room_to_settle"
    with _migrated(state_location, migration, "idx_results_job") as writer:
        if is_postgres(state_location):  # the room m0008 left is given back by m0009
            fill = "select reloptions from pg_class where relname = 'attempts'"
            assert statedb.rows(state_location, fill) == [(None,)]
        sent_batch(writer, "msgbatch_1", "a", "b")
        rows = [result_row(writer, "msgbatch_1", a.custom_id) for a in atts("a", "b")]
        assert writer.store_harvest("msgbatch_1", rows, canceled_by_us=False, now=NOW) == 2
        assert writer.result_lookup(JOB, "a").text == "answer a"
        (summary,) = writer.job_summaries([JOB])
        assert (summary.results, summary.outcomes["succeeded"]) == (3, 3)


def test_a_state_whose_harvests_set_each_attempt_done_migrates_and_harvests(state_location):
    """A state left by the release before m0009: its harvested attempts set done one by one,
    PostgreSQL's attempts leaving room for it. Migrated, the room is given back (pages written
    from now on), both batches read alike, and a new harvest leaves its attempts sent."""
    from tests.test_state_contract import NOW, atts, result_row, sent_batch

    migration = "m0009_attempts_done_with_their_batch"
    with _migrated(state_location, migration, "idx_results_job") as writer:
        if is_postgres(state_location):
            fill = "select reloptions from pg_class where relname = 'attempts'"
            assert statedb.rows(state_location, fill) == [(None,)]
        sent_batch(writer, "msgbatch_1", "a", "b")
        rows = [result_row(writer, "msgbatch_1", a.custom_id) for a in atts("a", "b")]
        assert writer.store_harvest("msgbatch_1", rows, canceled_by_us=False, now=NOW) == 2
        statedb.rows(  # as the release before left a harvested batch
            state_location,
            "update attempts set status = 'done', outcome = 'succeeded'"
            " where batch_id = 'msgbatch_1'",
        )
        sent_batch(writer, "msgbatch_2", "c")
        rows = [result_row(writer, "msgbatch_2", a.custom_id) for a in atts("c")]
        assert writer.store_harvest("msgbatch_2", rows, canceled_by_us=False, now=NOW) == 1
        assert writer.batch_detail("msgbatch_1")[1:] == ({"succeeded": 2}, 2)
        assert writer.batch_detail("msgbatch_2")[1:] == ({"succeeded": 1}, 1)
        statuses = "select batch_id, status from attempts order by batch_id, key"
        assert statedb.rows(state_location, statuses) == [
            ("msgbatch_1", "done"),
            ("msgbatch_1", "done"),
            ("msgbatch_2", "sent"),
        ]
        assert writer.sent_attempts("msgbatch_1") == writer.sent_attempts("msgbatch_2") == {}
