"""A state written by an older batchops: read-only commands say what to run; `state migrate`
upgrades it under the lease (DESIGN §6.7)."""

from __future__ import annotations

from sqlite_utils import Database

from batchops.state.sqlite import KNOWN_MIGRATIONS, migrations
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
