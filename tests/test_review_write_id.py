"""Review of the write id (commit 2305430): a state that has no write id yet must still copy."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests import statedb
from tests.projects import rows, run_cli, write_project

HOME = Path("state") / "batchops.db"


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_push_of_a_state_written_by_the_previous_batchops(tmp_path, emulator, state_location):
    """A state the previous batchops wrote has lineage, serial and created_at in `meta`, and no
    write id: `state push` (adopting a shared backend after the upgrade) must still copy it."""
    write_project(tmp_path, rows(2))
    wait = ("--wait", "--poll-interval", "0.1")
    ok(run_cli(tmp_path, emulator, "apply", "--yes", *wait, state=state_location))
    statedb.rows(state_location, "delete from meta where key = 'write_id'")  # as it was written
    copy = tmp_path / "copy.db"
    pushed = run_cli(tmp_path, emulator, "state", "push", str(copy), state=state_location)
    assert pushed.returncode == 0, pushed.stderr
    assert len(statedb.rows(copy, "select value from meta where key = 'write_id'")) == 1


def test_push_of_a_state_never_written(tmp_path, emulator, pg_dsn):
    """A PostgreSQL state opened (created, migrated) but not yet written has no write id either:
    `state push` of it into a file must copy it, as it did before."""
    write_project(tmp_path, rows(1))
    from batchops.state import open_writer

    open_writer(pg_dsn, "test").close()  # created: lineage, serial 0, created_at
    copy = tmp_path / "copy.db"
    pushed = run_cli(tmp_path, emulator, "state", "push", str(copy), state=pg_dsn)
    assert pushed.returncode == 0, pushed.stderr
    assert len(statedb.rows(copy, "select value from meta where key = 'write_id'")) == 1
