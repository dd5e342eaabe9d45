"""Team state (issue 10, DESIGN §4): `state push|pull` between SQLite and PostgreSQL, `state
recover` from the batches still on the API, and concurrent applies of one job from separate
processes on one PostgreSQL state. Against the emulator on loopback and a throwaway PostgreSQL."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.state import is_postgres, open_reader, open_writer
from tests import statedb
from tests.projects import apply, context, rows, run_cli, write_project, write_rows

N = 6
FLAKY = {"r2": "[[emulator:fail=api_error:times=1]]"}  # answered on its second attempt
UNREACHABLE = "postgresql://postgres:hunter2@127.0.0.1:9/nothing"


def dump(location: Path | str) -> dict[str, list[tuple]]:
    """Every row of every table the state API copies, in a comparable order."""
    reader = open_reader(location)
    try:
        return {table: sorted(rows, key=repr) for table, _, rows in reader.dump_tables()}
    finally:
        reader.close()


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), input=input)


@pytest.fixture
def applied(tmp_path: Path, emulator: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project applied to the end into the default SQLite state: three batches, one retry."""
    write_project(tmp_path, rows(N, **FLAKY))
    report = apply(context(tmp_path, emulator, max_batch_requests=3), wait=True)
    assert report.final_plan is not None and not report.final_plan.changes
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- push and pull
def same_history(tables: dict) -> dict:
    """A dump as a copy keeps it: every row, but the write id, which a copy sets anew."""
    return {**tables, "meta": [row for row in tables["meta"] if row[0] != "write_id"]}


def write_id(tables: dict) -> str:
    return dict(tables["meta"])["write_id"]


def test_push_to_postgres_and_back_keeps_every_row_and_the_lineage(
    applied: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    source = applied / "state" / "batchops.db"
    before = dump(source)

    pushed = run("state", "push", pg_dsn)
    assert pushed.exit_code == 0, pushed.output
    assert pushed.stdout.startswith(f"Copied state state/batchops.db to {pg_dsn}: lineage ")
    assert "; rows jobs 1, items 6, attempts 7, intents 3, batches 3, results 7" in pushed.stdout
    assert same_history(dump(pg_dsn)) == same_history(before)
    # lineage, serial and creation time as they were; a write id of its own (tests/test_state_copies)
    assert same_history(dump(pg_dsn))["meta"] == same_history(before)["meta"]
    assert write_id(dump(pg_dsn)) != write_id(before)

    snapshot = applied / "snapshot.db"
    pulled = run("--state", pg_dsn, "state", "push", str(snapshot))
    assert pulled.exit_code == 0, pulled.output
    assert same_history(dump(snapshot)) == same_history(before)

    # the team carries on from the shared state: nothing is sent again
    stats = emulator_admin.stats()
    again = apply(context(applied, emulator, state=pg_dsn), wait=True)
    assert again.submitted == 0 and emulator_admin.stats() == stats
    shared, own = (
        json.loads(run(*a, "status", "--json").stdout) for a in (["--state", pg_dsn], [])
    )
    assert shared["jobs"] == own["jobs"] and shared["jobs"][0]["succeeded"] == N


def test_pull_needs_an_empty_state_or_force(applied: Path, pg_dsn: str) -> None:
    assert run("state", "push", pg_dsn).exit_code == 0
    state = applied / "state" / "batchops.db"
    bytes_before = state.read_bytes()

    refused = run("state", "pull", pg_dsn)
    assert (refused.exit_code, refused.stdout, refused.stderr) == (
        1,
        "",
        "Error: state/batchops.db: the destination state is not empty; use --force to replace "
        "its contents\n",
    )
    assert state.read_bytes() == bytes_before
    assert run("state", "push", pg_dsn).exit_code == 1  # a push into a used state too

    fresh = applied / "fresh.db"
    pulled = run("--state", str(fresh), "state", "pull", pg_dsn)
    assert pulled.exit_code == 0, pulled.output
    assert same_history(dump(fresh)) == same_history(dump(state))

    forced = run("state", "pull", pg_dsn, "--force")
    assert forced.exit_code == 0, forced.output
    assert "(its previous contents replaced)" in forced.stdout
    copy = dump(state)
    serial_of = dict(copy["meta"])
    assert copy["results"] == dump(pg_dsn)["results"]
    assert int(serial_of["serial"]) > int(dict(dump(pg_dsn)["meta"])["serial"])  # no old plan fits


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["state", "push", UNREACHABLE],
            "Error: postgresql://postgres@127.0.0.1:9/nothing: cannot connect to PostgreSQL (",
        ),
        (
            ["--state", UNREACHABLE, "state", "push", "copy.db"],
            "Error: postgresql://postgres@127.0.0.1:9/nothing: cannot connect to PostgreSQL (",
        ),
        (
            ["state", "push", "state/batchops.db"],
            "Error: state/batchops.db: source and destination are the same state",
        ),
        (
            ["--state", "copy.db", "state", "pull", "missing.db"],
            "Error: missing.db: no state to copy (nothing has been applied yet)",
        ),
        (["state", "push", "jobs"], "Error: jobs: is a directory, not a state file"),
    ],
    ids=["unreachable-dest", "unreachable-source", "same", "missing-source", "directory"],
)
def test_bad_locations_end_in_one_error_line_and_write_nothing(
    applied: Path, args: list[str], error: str
) -> None:
    before = dump(applied / "state" / "batchops.db")
    result = run(*args)
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(error), line
    assert "hunter2" not in result.stderr
    assert not (applied / "copy.db").exists() and not (applied / "missing.db").exists()
    assert dump(applied / "state" / "batchops.db") == before


# ---------------------------------------------------------------- recover
def _lose(location: Path | str) -> None:
    """The state is gone: a deleted file, or a dropped schema."""
    if is_postgres(location):
        statedb.rows(location, "drop schema public cascade")
        statedb.rows(location, "create schema public")
        return
    for suffix in ("", "-wal", "-shm"):
        Path(f"{location}{suffix}").unlink(missing_ok=True)


def test_recover_a_lost_state_then_apply_sends_nothing_answered_again(
    tmp_path: Path, emulator: str, emulator_admin, sdk_client, state_location
) -> None:
    write_project(tmp_path, rows(N, **FLAKY))
    ctx = context(tmp_path, emulator, state=state_location, max_batch_requests=3)
    apply(ctx, wait=True)  # three batches, all ended and harvested: r2 answered on attempt 2
    teammate = sdk_client.messages.batches.create(
        requests=[
            {
                "custom_id": "someone-else-1",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "not ours"}],
                },
            }
        ]
    )
    emulator_admin.set_config(processing_seconds=3600)
    write_rows(tmp_path, rows(N + 2, **FLAKY))
    [in_flight] = apply(ctx).batches_created  # r7 and r8, still processing
    ended = [
        b.id for b in sdk_client.messages.batches.list() if b.id not in (in_flight, teammate.id)
    ]
    statuses = {k: s for k, s in _states(ctx).items()}
    _lose(state_location)

    out = run_cli(tmp_path, emulator, "state", "recover", "--yes", state=state_location)
    assert out.returncode == 0, out.stdout + out.stderr
    recovered = sorted(line for line in out.stdout.splitlines() if line.startswith("Recovered b"))
    assert len(recovered) == 3 and all(line.split()[2] in ended for line in recovered)
    assert sum(int(line.split(": ")[1].split()[0]) for line in recovered) == N + 1
    assert (
        f"Not recovered: batch {in_flight} (in_progress): still in flight: its custom_ids are "
        "only known from its results, so it cannot be proven ours yet; if it is, run "
        f"`batchops import JOB {in_flight}` once it ends, before the next apply sends its items "
        "again.\n"
    ) in out.stdout
    assert "Skipped 1 batch whose custom_ids match no item of the specs (not ours).\n" in out.stdout
    assert out.stdout.endswith(
        f"Recovered 3 of 5 batches on the API ({N + 1} results) into {state_location}; "
        "`batchops plan` shows what is left.\n"
    )
    after = _states(ctx)
    assert after == {**statuses, "r7": "todo", "r8": "todo"}
    assert statedb.rows(state_location, "select attempts from items where key = 'r2'") == [(2,)]

    # the batch in flight ends; imported as the report says, nothing is sent again
    emulator_admin.advance_clock(2 * 3600)
    emulator_admin.set_config(processing_seconds=0)
    imported = run_cli(tmp_path, emulator, "import", "demo", in_flight, state=state_location)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.endswith(f"Imported batch {in_flight} into demo: 2 results stored.\n")
    before = emulator_admin.stats()
    report = apply(ctx, wait=True)
    assert report.submitted == 0 and emulator_admin.stats() == before
    assert set(_states(ctx).values()) == {"succeeded"}
    assert sorted(before["submissions"].values()) == [1] * (N + 2) + [2]  # r2 twice; theirs once


def _states(ctx) -> dict[str, str]:
    from tests.test_apply import states

    return states(ctx)


def test_recover_without_the_in_flight_batch_sends_only_its_items_again(
    tmp_path: Path, emulator: str, emulator_admin
) -> None:
    write_project(tmp_path, rows(N))
    ctx = context(tmp_path, emulator)
    apply(ctx, wait=True)
    emulator_admin.set_config(processing_seconds=3600)
    write_rows(tmp_path, rows(N + 1))
    apply(ctx)  # r7 in flight
    _lose(ctx.settings.state_path)
    out = run_cli(tmp_path, emulator, "state", "recover", "--yes")
    assert out.returncode == 0, out.stderr
    emulator_admin.set_config(processing_seconds=0)
    report = apply(ctx, wait=True)
    assert report.submitted == 1  # r7 only: its first batch could not be proven ours in flight
    counts = {cid.split("-")[1]: n for cid, n in emulator_admin.stats()["submissions"].items()}
    assert counts == {**{f"r{i}": 1 for i in range(1, N + 1)}, "r7": 2}


def test_recover_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, emulator: str, emulator_admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_project(tmp_path, rows(2))
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state" / "batchops.db"
    no_tty = run("state", "recover")
    assert (no_tty.exit_code, no_tty.stderr) == (
        1,
        "Error: state recover needs --yes when standard input is not a terminal\n",
    )
    no_key = run("state", "recover", "--yes")
    assert (no_key.exit_code, no_key.stderr) == (
        1,
        "Error: no API key: set ANTHROPIC_API_KEY (or use --emulator)\n",
    )
    assert not state.exists()
    apply(context(tmp_path, emulator), wait=True)
    bytes_before = state.read_bytes()
    used = run_cli(tmp_path, emulator, "state", "recover", "--yes")
    assert (used.returncode, used.stdout) == (1, "")
    assert used.stderr == (
        "Error: state/batchops.db: state recover rebuilds into an empty state, and this one is "
        "not empty (point --state at a new file or database)\n"
    )
    assert state.read_bytes() == bytes_before


def test_recover_asks_first_on_a_terminal(
    tmp_path: Path, emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import batchops.cli.surgery

    write_project(tmp_path, rows(1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-dummy-key")
    monkeypatch.setattr(batchops.cli.surgery, "_interactive", lambda: True)
    declined = run("state", "recover", input="n\n")
    assert declined.exit_code == 1
    assert declined.output.endswith("Recover? [y/N]: n\nNothing recovered.\n")
    assert not (tmp_path / "state" / "batchops.db").exists()
    accepted = run("state", "recover", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert accepted.output.endswith(
        "Recovered 0 of 0 batches on the API (0 results) into state/batchops.db; "
        "`batchops plan` shows what is left.\n"
    )


# ---------------------------------------------------------------- concurrent applies
def test_concurrent_applies_of_one_job_on_one_postgres_state_never_send_twice(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """Separate processes, one shared PostgreSQL state, the same job at once: each either waits
    for the other's lock (or lease) or finds the work done; no custom_id is ever sent twice."""
    emulator_admin.set_config(processing_seconds=0.5)
    write_project(tmp_path, rows(12))
    outcomes = []

    def run_apply() -> None:
        outcomes.append(
            run_cli(
                tmp_path,
                emulator,
                "apply",
                "--yes",
                "--wait",
                "--poll-interval",
                "0.05",
                "--lock-timeout",
                "90",
                state=pg_dsn,
            )
        )

    threads = [threading.Thread(target=run_apply) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [o.returncode for o in outcomes] == [0, 0, 0], [o.stderr for o in outcomes]
    stats = emulator_admin.stats()
    assert len(stats["submissions"]) == 12 and set(stats["submissions"].values()) == {1}
    assert statedb.rows(
        pg_dsn, "select count(distinct key) from results where type = 'succeeded'"
    ) == [(12,)]
    assert not (tmp_path / "state").exists()  # nothing went to a SQLite file by mistake


def test_state_rm_on_postgres_names_no_backup_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_dsn: str
) -> None:
    from tests.statefill import NOW, fill_demo_state_at
    from tests.statefill import write_project as write_demo

    write_demo(tmp_path)
    fill_demo_state_at(tmp_path, pg_dsn)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli,
        ["--state", pg_dsn, "state", "rm", "msgbatch_live", "--yes", "--force"],
        obj={"clock": lambda: NOW},
    )
    assert (result.exit_code, result.output) == (
        0,
        "Removed batch msgbatch_live from the state: 1 unfinished attempts become lost and 1 "
        "items are sent again by the next apply; stored results stay. Nothing remote was "
        "touched.\n",
    )
    assert statedb.rows(pg_dsn, "select count(*) from batches where id = 'msgbatch_live'") == [(0,)]


def test_the_emulator_runs_beside_a_postgres_state(tmp_path: Path, pg_dsn: str) -> None:
    # --emulator keeps its own batches in a file; with the state on PostgreSQL, under state/
    write_project(tmp_path, rows(2))
    first = run_cli(tmp_path, None, "--emulator", "--state", pg_dsn, "apply", "--yes", "--wait")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "state" / "emulator-remote.db").exists()
    again = run_cli(tmp_path, None, "--emulator", "--state", pg_dsn, "apply", "--yes")
    assert again.returncode == 0, again.stderr
    assert "0 requests sent" in again.stdout
    reader = open_reader(pg_dsn)
    try:
        assert len(reader.batches()) == 1
    finally:
        reader.close()


def test_a_key_postgres_cannot_store_is_refused_in_one_line_before_anything_is_sent(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """PostgreSQL's text cannot hold a NUL character, which a key from a data file may: the
    apply named it "an unexpected DataError, a bug in batchops". It now says which item of which
    job, in one line, before any batch is created; the other backend takes the key."""
    data = rows(3)
    data[1]["id"] = "r\x002"
    write_project(tmp_path, data)
    out = run_cli(tmp_path, emulator, "apply", "--yes", state=pg_dsn)
    assert out.returncode == 1
    assert out.stderr == (
        "Error: item 'r\\x002' of job demo: its key holds a NUL character, which a PostgreSQL "
        "state cannot store (a SQLite state can); nothing was sent\n"
    )
    assert emulator_admin.stats()["submissions"] == {}
    assert statedb.rows(pg_dsn, "select count(*) from items") == [(0,)]
    assert run_cli(tmp_path, emulator, "apply", "--yes", "--wait").returncode == 0


def test_postgres_reuse_needs_no_temporary_table_and_a_key_given_twice_is_refused(
    pg_server, pg_dsn: str
) -> None:
    """A shared database may deny its users temporary tables (TEMP revoked, a common hardening
    step): recording a reuse works there. A key given twice in one intent (a plan gives each
    once) is refused in one line before anything is written, not as a database error."""
    import psycopg

    from batchops.errors import StateError
    from tests.test_state_contract import JOB, NOW, Reuse, atts, result_row, sent_batch

    name = pg_dsn.rsplit("/", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("create role batchops_app login")
        conn.execute(f"alter database {name} owner to batchops_app")
        conn.execute("alter schema public owner to batchops_app")
        conn.execute(f"revoke temporary on database {name} from public, batchops_app")
    dsn = pg_dsn.replace("postgresql://postgres@", "postgresql://batchops_app@")
    try:
        with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("create temp table t (x int)")
        writer = open_writer(dsn, "test")
        try:
            sent_batch(writer, "msgbatch_1", "a")
            row = result_row(writer, "msgbatch_1", atts("a")[0].custom_id)
            assert writer.store_harvest("msgbatch_1", [row], canceled_by_us=False, now=NOW) == 1
            found = writer.results_by_fingerprint(["sha256:a"])["sha256:a"]
            assert (
                writer.record_reuse("other", [Reuse("k1", "other-k1", "sha256:a", found)], NOW) == 1
            )
            assert writer.result_lookup("other", "k1").text == "answer a"
            serial = writer.serial
            with pytest.raises(StateError) as refused:
                writer.record_intent("intent-2", JOB, atts("b", "c", "b"), 100, NOW)
            assert str(refused.value) == "item 'b' of job demo is given twice; nothing was sent"
            assert writer.serial == serial
        finally:
            writer.close()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"alter database {name} owner to postgres")
            conn.execute("alter schema public owner to pg_database_owner")
