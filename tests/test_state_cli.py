"""`batchops state list|show|rm`, the backups made before surgery and migrations, and drift
(batches cancelled or deleted outside batchops, results expired before harvest) end to end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import anthropic
import pytest
from click.testing import CliRunner

import batchops.cli.surgery
from batchops.cli import cli
from batchops.commands.context import Context, Settings
from batchops.commands.status import status
from batchops.emulator import EmulatorAdmin
from batchops.errors import StateError
from batchops.state import sqlite as state_mod
from batchops.state import sqlite_migrations as registered
from batchops.state.sqlite import SqliteReader as StateReader
from batchops.state.sqlite import SqliteWriter as StateStore
from tests.statefill import NOW, context, fill_demo_state, write_project

DAY = 86400


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_project(tmp_path)
    fill_demo_state(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), obj={"clock": lambda: NOW}, input=input)


def meta(root: Path) -> tuple[str, int]:
    reader = StateReader.open(root / "state" / "batchops.db")
    try:
        return reader.lineage or "", reader.serial
    finally:
        reader.close()


def count(root: Path, sql: str) -> int:
    conn = sqlite3.connect(root / "state" / "batchops.db")
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


# ---------------------------------------------------------------- list, show


def test_state_list(project: Path) -> None:
    lineage, _ = meta(project)
    result = run("state", "list")
    assert result.exit_code == 0, result.stderr
    assert result.output == (
        f"State state/batchops.db: lineage {lineage}, serial 1.\n"
        "\n"
        "job      items    in flight    succeeded    errored    other    batches    results\n"
        "-----  -------  -----------  -----------  ---------  -------  ---------  ---------\n"
        "demo         6            1            3          2        0          3          6\n"
        "\n"
        "batch          job    status         requests  created              drift\n"
        "-------------  -----  -----------  ----------  -------------------  -------\n"
        "msgbatch_old   demo   harvested             5  2026-03-01 00:00:00\n"
        "msgbatch_new   demo   harvested             1  2026-03-05 00:00:00\n"
        "msgbatch_live  demo   in_progress           1  2026-03-10 09:00:00\n"
    )


def test_state_list_json(project: Path) -> None:
    lineage, _ = meta(project)
    data = json.loads(run("state", "list", "--json").output)
    assert data["state"] == {"path": "state/batchops.db", "lineage": lineage, "serial": 1}
    assert data["jobs"] == [
        {
            "name": "demo",
            "items": 6,
            "in_flight": 1,
            "outcomes": {
                "succeeded": 3,
                "errored": 2,
                "expired": 0,
                "canceled": 0,
                "lost": 0,
                "none": 1,
            },
            "batches": 3,
            "results": 6,
        }
    ]
    assert data["batches"][2] == {
        "id": "msgbatch_live",
        "job": "demo",
        "status": "in_progress",
        "processing_status": "in_progress",
        "request_count": 1,
        "created_at": "2026-03-10T09:00:00Z",
        "drift": None,
    }


def test_state_show_batch(project: Path) -> None:
    result = run("state", "show", "msgbatch_old")
    assert result.exit_code == 0, result.stderr
    assert result.output == (
        "Batch msgbatch_old\n"
        "job                demo\n"
        "status             harvested\n"
        "processing_status  ended\n"
        "request_count      5\n"
        "intent_id          intent_msgbatch_old\n"
        "created_at         2026-03-01T00:00:00Z\n"
        "expires_at         2026-03-02T00:00:00Z\n"
        "ended_at           2026-03-01T01:00:00Z\n"
        "results_expire_at  2026-03-30T00:00:00Z\n"
        "harvested_at       2026-03-01T02:00:00Z\n"
        "results            5\n"
        "Request counts: canceled 0, errored 2, expired 0, processing 0, succeeded 3\n"
        "Attempts by outcome: errored 2, succeeded 3\n"
    )


def test_state_show_batch_json(project: Path) -> None:
    data = json.loads(run("state", "show", "msgbatch_live", "--json").output)
    assert data == {
        "kind": "batch",
        "id": "msgbatch_live",
        "job": "demo",
        "status": "in_progress",
        "processing_status": "in_progress",
        "request_count": 1,
        "request_counts": {
            "canceled": 0,
            "errored": 0,
            "expired": 0,
            "processing": 1,
            "succeeded": 0,
        },
        "intent_id": "intent_msgbatch_live",
        "created_at": "2026-03-10T09:00:00Z",
        "expires_at": "2026-03-11T09:00:00Z",
        "ended_at": None,
        "archived_at": None,
        "results_expire_at": "2026-04-08T09:00:00Z",
        "harvested_at": None,
        "canceled_by_us_at": None,
        "pruned_at": None,
        "drift": None,
        "attempts": {"sent": 1},
        "results": 0,
    }


def test_state_show_job(project: Path) -> None:
    result = run("state", "show", "demo")
    assert result.exit_code == 0, result.stderr
    assert result.output == (
        "Job demo\n"
        "items                   6\n"
        "in flight               1\n"
        "last outcome succeeded  3\n"
        "last outcome errored    2\n"
        "last outcome none       1\n"
        "batches                 3\n"
        "results                 6\n"
        "\n"
        "batch          status         requests  created              drift\n"
        "-------------  -----------  ----------  -------------------  -------\n"
        "msgbatch_old   harvested             5  2026-03-01 00:00:00\n"
        "msgbatch_new   harvested             1  2026-03-05 00:00:00\n"
        "msgbatch_live  in_progress           1  2026-03-10 09:00:00\n"
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["state", "show", "msgbatch_nope"], "Error: no batch 'msgbatch_nope' in state state/batchops.db\n"),
        (["state", "show", "nope"], "Error: no job or batch 'nope' in state state/batchops.db\n"),
        (["state", "rm", "msgbatch_nope", "--yes"], "Error: no batch 'msgbatch_nope' in state state/batchops.db\n"),
        (["state", "rm", "nope", "--yes"], "Error: no job or batch 'nope' in state state/batchops.db\n"),
    ],
)  # fmt: skip
def test_unknown_target(project: Path, args: list[str], error: str) -> None:
    before = (project / "state" / "batchops.db").read_bytes()
    result = run(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", error)
    assert (project / "state" / "batchops.db").read_bytes() == before
    assert sorted(p.name for p in (project / "state").iterdir() if "backup" in p.name) == []


def test_no_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    for args in (["state", "list"], ["state", "show", "demo"], ["state", "rm", "demo", "--yes"]):
        result = run(*args)
        assert (result.exit_code, result.stderr) == (
            1,
            "Error: state/batchops.db: no state file (nothing has been applied yet)\n",
        )
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------- rm


def test_rm_job(project: Path) -> None:
    lineage, serial = meta(project)
    result = run("state", "rm", "demo", "--yes", "--force")
    assert result.exit_code == 0, result.stderr
    assert result.output == (
        "Backed up the state to state/batchops.db.backup-20260310T120000Z.\n"
        "Removed job demo from the state: rows items 6, attempts 7, results 6, batches 3, "
        "intents 3, jobs 1. Nothing remote was touched.\n"
    )
    assert meta(project) == (lineage, serial + 1)
    for table in ("items", "attempts", "results", "batches", "intents", "jobs"):
        assert count(project, f"select count(*) from {table}") == 0
    # The backup is a complete, readable copy of the state before the change.
    backup = StateReader.open(project / "state" / "batchops.db.backup-20260310T120000Z")
    try:
        assert (backup.lineage, backup.serial) == (lineage, serial)
        assert len(list(backup.item_records())) == 6
    finally:
        backup.close()
    # Forgotten: every item is to do again.
    (job,) = status(context(project)).jobs
    assert (job.todo, job.succeeded, job.actual_cost_usd) == (6, 0, 0.0)


def test_rm_batch(project: Path) -> None:
    result = run("state", "rm", "msgbatch_live", "--yes", "--force")
    assert result.exit_code == 0, result.stderr
    assert result.output == (
        "Backed up the state to state/batchops.db.backup-20260310T120000Z.\n"
        "Removed batch msgbatch_live from the state: 1 unfinished attempts become lost and 1 "
        "items are sent again by the next apply; stored results stay. Nothing remote was "
        "touched.\n"
    )
    assert count(project, "select count(*) from batches where id = 'msgbatch_live'") == 0
    assert count(project, "select count(*) from attempts where status = 'lost'") == 1
    assert count(project, "select count(*) from items where inflight_attempt is not null") == 0
    assert count(project, "select count(*) from results") == 6
    (job,) = status(context(project)).jobs
    assert (job.pending, job.todo, job.succeeded) == (0, 3, 1)
    # A second rm on the same second gets its own backup file.
    assert run("state", "rm", "msgbatch_new", "--yes").output.startswith(
        "Backed up the state to state/batchops.db.backup-20260310T120000Z-2.\n"
    )


def test_rm_refuses_a_batch_still_running_remotely_unless_forced(project: Path) -> None:
    """Forgetting a batch the API may still be running sends its items again while it runs
    (paid twice) and leaves its results unharvested: refused, nothing written, unless --force."""
    before = (project / "state" / "batchops.db").read_bytes()
    tail = (
        " still running remotely, as the state last saw it: forgotten, its items would be sent "
        "again by the next apply while it runs (paid twice) and its results never harvested; let "
        "apply finish it (or remove the job from its spec and apply, which cancels it), or pass "
        "--force to forget it anyway\n"
    )
    for target, what in (
        ("msgbatch_live", "batch msgbatch_live is"),
        ("demo", "job demo has batch msgbatch_live"),
    ):
        result = run("state", "rm", target, "--yes")
        assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {what}{tail}")
    assert (project / "state" / "batchops.db").read_bytes() == before


def test_rm_refuses_without_yes_when_not_a_terminal(project: Path) -> None:
    before = (project / "state" / "batchops.db").read_bytes()
    result = run("state", "rm", "demo")
    assert (result.exit_code, result.stdout, result.stderr) == (
        1,
        "",
        "Error: state rm needs --yes when standard input is not a terminal\n",
    )
    assert (project / "state" / "batchops.db").read_bytes() == before


@pytest.mark.parametrize(("answer", "removed"), [("y\n", True), ("n\n", False)])
def test_rm_asks_on_a_terminal(
    project: Path, monkeypatch: pytest.MonkeyPatch, answer: str, removed: bool
) -> None:
    monkeypatch.setattr(batchops.cli.surgery, "_interactive", lambda: True)
    result = run("state", "rm", "msgbatch_live", "--force", input=answer)
    question = (
        "This forgets batch msgbatch_live: 1 unfinished attempts become lost and 1 items are "
        "sent again by the next apply; stored results stay. Nothing remote is touched.\n"
        f"Remove it from the state? [y/N]: {answer}"
    )
    assert result.output.startswith(question)
    assert result.exit_code == (0 if removed else 1)
    if not removed:
        assert result.output == question + "Nothing removed.\n"
    assert count(project, "select count(*) from batches") == (2 if removed else 3)


def test_rm_refuses_while_locked(project: Path) -> None:
    store = StateStore.open(project / "state" / "batchops.db")
    lock = store.held
    try:
        result = run("state", "rm", "demo", "--yes", "--force")
    finally:
        store.release_lock(lock.lock_id)
        store.close()
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: state/batchops.db: state is locked: lock {lock.lock_id} held by pid "
    )
    assert count(project, "select count(*) from items") == 6


# ---------------------------------------------------------------- backup before a migration


def test_open_backs_up_before_a_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.db"
    store = StateStore.open(path)
    with store._transaction():
        store.db["jobs"].insert({"name": "kept"})
    store.close()

    def m0002_fake(db) -> None:
        db["extra"].create({"id": int}, pk="id")

    fake = registered.migrations._Migration("m0002_fake", m0002_fake)
    monkeypatch.setattr(
        registered.migrations, "_migrations", [*registered.migrations._migrations, fake]
    )
    monkeypatch.setattr(state_mod, "KNOWN_MIGRATIONS", [*state_mod.KNOWN_MIGRATIONS, "m0002_fake"])
    store = StateStore.open(path)
    assert "extra" in store.db.table_names()
    store.close()
    backup = tmp_path / "state.db.backup-before-m0002_fake"
    conn = sqlite3.connect(backup)
    try:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        assert "extra" not in tables
        assert conn.execute("select name from jobs").fetchall() == [("kept",)]
    finally:
        conn.close()
    # This batchops without the fake migration refuses the upgraded file, untouched.
    monkeypatch.undo()
    before = path.read_bytes()
    with pytest.raises(StateError, match="newer than this batchops understands"):
        StateStore.open(path)
    assert path.read_bytes() == before


# ---------------------------------------------------------------- drift, end to end


@pytest.fixture
def remote_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: str
) -> tuple[Path, anthropic.Anthropic, EmulatorAdmin]:
    """The demo project with no state, the CLI pointed at the emulator through the SDK's env."""
    write_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    sdk = anthropic.Anthropic(base_url=emulator, api_key="test-key")
    admin = EmulatorAdmin(emulator)
    yield tmp_path, sdk, admin
    sdk.close()
    admin.close()


def live(*args: str):
    """The CLI with the real clock (the emulator's timestamps are real)."""
    return CliRunner().invoke(cli, list(args))


def submit_once(root: Path) -> str:
    """Apply once, without waiting: one batch created, not yet harvested."""
    settings = Settings(
        jobs_path=root / "jobs", state_path=root / "state" / "batchops.db", root=root
    )
    report = Context(settings).apply(poll_interval=0.05)  # the SDK reads the env
    (batch_id,) = report.batches_created
    return batch_id


def test_drift_cancelled_outside_batchops(remote_project) -> None:
    root, sdk, admin = remote_project
    admin.set_config(processing_seconds=3600)
    batch_id = submit_once(root)
    sdk.messages.batches.cancel(batch_id)
    before = (root / "state" / "batchops.db").read_bytes()
    result = live("plan")
    assert result.exit_code == 0, result.stderr
    assert f"Drift: batch {batch_id} (demo) was cancelled outside batchops\n" in result.output
    assert (root / "state" / "batchops.db").read_bytes() == before  # plan writes nothing
    # the pull-request comment says it too (it used to go to stderr alone)
    markdown = CliRunner().invoke(cli, ["plan", "--markdown"])
    assert markdown.exit_code == 0, markdown.stderr
    from batchops.safetext import markdown_text

    said = markdown_text(f"batch {batch_id} (demo) was cancelled outside batchops", entities=True)
    assert f"\n> Drift: {said}\n" in markdown.stdout, markdown.stdout
    assert "msgbatch\\_" in said  # escaped as the comment shows it
    result = live("refresh")
    assert f"Drift: batch {batch_id} (demo) was cancelled outside batchops" in result.output
    shown = json.loads(live("state", "show", batch_id, "--json").output)
    assert shown["drift"] == "canceled"


def test_drift_deleted_outside_batchops(remote_project, list_caught_up) -> None:
    root, sdk, _ = remote_project
    batch_id = submit_once(root)
    sdk.messages.batches.delete(batch_id)
    note = (
        f"Drift: batch {batch_id} (demo) was deleted outside batchops: its results were never "
        "harvested, so its items will be sent again\n"
    )
    result = live("plan")
    assert result.exit_code == 0, result.stderr
    assert note in result.output
    result = live("refresh")
    assert result.exit_code == 0, result.stderr
    assert f"Drift: batch {batch_id} (demo) was deleted outside batchops" in result.output
    data = json.loads(live("status", "--json").output)
    assert (data["jobs"][0]["todo"], data["jobs"][0]["pending"]) == (6, 0)
    assert json.loads(live("state", "show", batch_id, "--json").output)["status"] == "deleted"


def test_drift_results_expired_before_harvest(remote_project) -> None:
    root, _, admin = remote_project
    batch_id = submit_once(root)
    admin.advance_clock(30 * DAY)
    result = live("plan")
    assert result.exit_code == 0, result.stderr
    assert (
        f"Drift: batch {batch_id} (demo): results expired remotely before they were harvested; "
        "its items will be sent again\n"
    ) in result.output
    assert f"requeue demo  {batch_id}  [results expired before harvest" in result.output
    result = live("refresh")
    assert result.exit_code == 0, result.stderr
    assert "results expired remotely before they were harvested" in result.output
    data = json.loads(live("status", "--json").output)
    assert (data["jobs"][0]["todo"], data["jobs"][0]["pending"]) == (6, 0)
    assert json.loads(live("state", "show", batch_id, "--json").output)["status"] == "results-lost"
