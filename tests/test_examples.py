"""The README's first command, as a test: the example jobs run to completion on the emulator."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from tests.projects import run_cli

REPO = Path(__file__).resolve().parent.parent


def test_example_jobs_complete_on_the_emulator_with_retries(tmp_path):
    shutil.copytree(REPO / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("out"))
    out = run_cli(tmp_path, None, "--emulator", "apply", "--yes", "--wait", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    conn = sqlite3.connect(tmp_path / "state" / "emulator.db")
    items = conn.execute("select count(*), sum(outcome = 'succeeded') from items").fetchone()
    attempts = conn.execute(
        "select count(*) from attempts a join batches b on b.id = a.batch_id"
        " where b.harvested_at is not null"
    ).fetchone()[0]  # done: answered by their batch's harvest
    conn.close()
    assert items[0] == items[1] == 41  # every example item succeeded
    assert attempts > items[0]  # some only after retries of injected faults
    assert (tmp_path / "state" / "emulator-remote.db").exists()
    again = run_cli(tmp_path, None, "--emulator", "plan", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes. State matches the specs." in again.stdout
