"""`--json` on the state surgery commands (`state rm|mv|push|pull|recover|migrate`, `import`,
`force-unlock`), for scripts: one JSON document on stdout, nothing else there; a command that
would ask first needs `--yes` with `--json` (as Terraform's `-json` needs `-auto-approve`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.state.sqlite import SqliteReader, SqliteWriter
from tests import statefill
from tests.projects import API_KEY, apply, context, rows, write_project


@pytest.fixture
def filled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    statefill.write_project(tmp_path)
    statefill.fill_demo_state(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), obj={"clock": lambda: statefill.NOW}, env=env)


def document(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def meta(path: Path) -> tuple[str | None, int, str | None]:
    reader = SqliteReader.open(path)
    try:
        return reader.lineage, reader.serial, reader.write_id
    finally:
        reader.close()


def test_rm_json(filled: Path) -> None:
    state = filled / "state" / "batchops.db"
    lineage, serial, _ = meta(state)
    out = document(run("state", "rm", "demo", "--yes", "--force", "--json"))
    after = meta(state)
    assert out == {
        "kind": "job",
        "target": "demo",
        "rows": {"items": 6, "attempts": 7, "results": 6, "batches": 3, "intents": 3, "jobs": 1},
        "backup_path": "state/batchops.db.backup-20260310T120000Z",
        "state": {"lineage": lineage, "serial": serial + 1, "write_id": after[2]},
    }
    assert after[:2] == (lineage, serial + 1)


def test_rm_batch_json(filled: Path) -> None:
    out = document(run("state", "rm", "msgbatch_live", "--yes", "--force", "--json"))
    assert (out["kind"], out["target"], out["rows"]) == (
        "batch",
        "msgbatch_live",
        {"batches": 1, "items": 1, "attempts": 1},
    )


@pytest.mark.parametrize(
    ("args", "command"),
    [(["state", "rm", "demo"], "state rm"), (["state", "recover"], "state recover")],
    ids=["rm", "recover"],
)
def test_json_needs_yes_where_the_command_would_ask(
    filled: Path, args: list[str], command: str
) -> None:
    state = filled / "state" / "batchops.db"
    before = meta(state)
    result = run(*args, "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"Error: {command} --json needs --yes (it cannot ask)\n"
    assert meta(state) == before


def test_mv_json(filled: Path) -> None:
    state = filled / "state" / "batchops.db"
    _, serial, _ = meta(state)
    out = document(run("state", "mv", "demo", "renamed", "--json"))
    lineage, serial_after, write_id = meta(state)
    assert serial_after == serial + 1
    assert out == {
        "old": "demo",
        "new": "renamed",
        "rows": out["rows"],
        "state": {"lineage": lineage, "serial": serial_after, "write_id": write_id},
    }
    assert out["rows"]["items"] == 6 and out["rows"]["jobs"] == 1


def test_push_and_pull_json(filled: Path) -> None:
    state = filled / "state" / "batchops.db"
    lineage, serial, _ = meta(state)
    pushed = document(run("state", "push", "copy.db", "--json"))
    copy = meta(filled / "copy.db")
    assert pushed == {
        "source": "state/batchops.db",
        "destination": "copy.db",
        "replaced": False,
        "rows": pushed["rows"],
        "state": {"lineage": lineage, "serial": serial, "write_id": copy[2]},
    }
    assert pushed["rows"]["items"] == 6 and "meta" not in pushed["rows"]
    assert copy[:2] == (lineage, serial)
    pulled = document(
        run("--state", "other.db", "state", "pull", "copy.db", "--json"),
    )
    assert (pulled["source"], pulled["destination"], pulled["replaced"]) == (
        "copy.db",
        "other.db",
        False,
    )
    assert pulled["state"] == {
        "lineage": lineage,
        "serial": serial,
        "write_id": meta(filled / "other.db")[2],
    }


def test_migrate_json(filled: Path) -> None:
    state = filled / "state" / "batchops.db"
    lineage, serial, write_id = meta(state)
    out = document(run("state", "migrate", "--json"))
    assert out == {
        "state": {
            "path": "state/batchops.db",
            "lineage": lineage,
            "serial": serial,
            "write_id": write_id,
        }
    }
    assert meta(state) == (lineage, serial, write_id)


def test_force_unlock_json(filled: Path) -> None:
    state = filled / "state" / "batchops.db"
    store = SqliteWriter.open(state)
    held, store.held = store.held, None  # left behind, as by a holder on another host
    store.close()
    with sqlite3.connect(state) as conn:
        conn.execute("update leases set host = 'elsewhere' where lock_id = ?", [held.lock_id])
    conn.close()
    out = document(run("force-unlock", held.lock_id, "--json"))
    assert out == {
        "lock_id": held.lock_id,
        "name": held.name,
        "pid": held.pid,
        "host": "elsewhere",
        "since": held.since,
        "command": held.command,
    }


def test_import_and_recover_json(tmp_path: Path, emulator: str, monkeypatch) -> None:
    write_project(tmp_path, rows(3))
    monkeypatch.chdir(tmp_path)
    report = apply(context(tmp_path, emulator), wait=True)
    (batch_id,) = report.batches_created
    env = {"ANTHROPIC_BASE_URL": emulator, "ANTHROPIC_API_KEY": API_KEY}

    imported = document(
        CliRunner().invoke(
            cli, ["--state", "imported.db", "import", "demo", batch_id, "--json"], env=env
        )
    )
    assert imported == {"job": "demo", "batch_id": batch_id, "results_stored": 3}

    recovered = document(
        CliRunner().invoke(
            cli, ["--state", "recovered.db", "state", "recover", "--yes", "--json"], env=env
        )
    )
    lineage, serial, write_id = meta(tmp_path / "recovered.db")  # the README: after a write
    assert recovered == {
        "location": "recovered.db",
        "listed": 1,
        "recovered": [{"id": batch_id, "job": "demo", "results": 3, "unmatched": 0}],
        "not_recovered": [],
        "not_ours": 0,
        "results": 3,
        "state": {"lineage": lineage, "serial": serial, "write_id": write_id},
    }
    assert lineage and serial > 0 and write_id


def test_push_to_postgres_and_mv_there_json(filled: Path, pg_dsn: str) -> None:
    lineage, serial, _ = meta(filled / "state" / "batchops.db")
    pushed = document(run("state", "push", pg_dsn, "--json"))
    assert (pushed["source"], pushed["destination"]) == ("state/batchops.db", pg_dsn)
    assert pushed["state"]["lineage"] == lineage and pushed["state"]["serial"] == serial
    assert len(pushed["state"]["write_id"]) == 32
    moved = document(run("--state", pg_dsn, "state", "mv", "demo", "renamed", "--json"))
    assert moved["state"]["lineage"] == lineage and moved["state"]["serial"] == serial + 1
    assert moved["state"]["write_id"] not in (None, pushed["state"]["write_id"])
    listed = document(run("--state", pg_dsn, "state", "list", "--json"))
    assert [j["name"] for j in listed["jobs"]] == ["renamed"]
    assert listed["state"]["serial"] == serial + 1
