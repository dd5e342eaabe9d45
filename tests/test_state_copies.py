"""Two copies of one state (`state push` to a new backend while the old file is still used, a
snapshot pulled back) share a lineage and a serial at the moment of the copy. A saved plan made
against one must not be applied to the other: each would send its submits, and every item
would be paid for twice."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests import statedb
from tests.projects import rows, run_cli, write_project
from tests.test_apply import submissions

HOME = Path("state") / "batchops.db"


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_a_plan_made_against_a_pushed_copy_is_refused_by_the_original(
    tmp_path, emulator, emulator_admin
):
    write_project(tmp_path, rows(2))
    ok(run_cli(tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.1"))
    copy = tmp_path / "copy.db"
    ok(run_cli(tmp_path, emulator, "state", "push", str(copy)))
    write_project(tmp_path, rows(3))  # r3 is new
    plan = tmp_path / "p.jsonl"
    ok(run_cli(tmp_path, emulator, "plan", "-o", str(plan), state=copy))  # CI, on the copy
    ok(run_cli(tmp_path, emulator, "apply", str(plan), "--yes", state=copy))
    assert submissions(emulator_admin, "r3") == 1
    # a teammate applies the same plan to the original file: same lineage, same serial as the
    # copy had when the plan was made, but not the same state (it never saw r3 sent)
    again = run_cli(tmp_path, emulator, "apply", str(plan), "--yes")
    assert again.returncode != 0, again.stdout
    assert "state changed since the plan was made" in again.stderr, again.stderr
    assert submissions(emulator_admin, "r3") == 1  # not paid twice
    assert statedb.rows(tmp_path / HOME, "select count(*) from intents") == [(1,)]


def meta(location) -> dict[str, str]:
    return dict(statedb.rows(location, "select key, value from meta"))


def test_every_write_and_every_copy_sets_a_new_write_id(tmp_path, emulator, state_location):
    """On either backend: a write sets a new write id beside the serial it bumps, and a copy
    (`state push`, into a file or from one) starts a history of its own: the same lineage and
    serial as its source, another write id. A saved plan carries the write id it was made at."""
    write_project(tmp_path, rows(1))
    wait = ("--wait", "--poll-interval", "0.1")
    ok(run_cli(tmp_path, emulator, "apply", "--yes", *wait, state=state_location))
    first = meta(state_location)
    ok(run_cli(tmp_path, emulator, "state", "rm", "demo", "--yes", state=state_location))
    second = meta(state_location)
    assert int(second["serial"]) > int(first["serial"])
    assert len({first["write_id"], second["write_id"]}) == 2
    copy = tmp_path / "copy.db"
    ok(run_cli(tmp_path, emulator, "state", "push", str(copy), state=state_location))
    copied = meta(copy)
    assert (copied["lineage"], copied["serial"]) == (second["lineage"], second["serial"])
    assert copied["write_id"] != second["write_id"]
    plan = tmp_path / "p.jsonl"
    ok(run_cli(tmp_path, emulator, "plan", "-o", str(plan), state=copy))
    header = json.loads(plan.read_text(encoding="utf-8").splitlines()[0])
    assert header["plan"]["write_id"] == copied["write_id"]
    refused = run_cli(tmp_path, emulator, "apply", str(plan), "--yes", state=state_location)
    assert refused.returncode != 0
    assert (
        f"Error: {plan}: state changed since the plan was made (serial {second['serial']}, but "
        "written by another copy of the state); make a new plan"
    ) in refused.stderr.splitlines(), refused.stderr
