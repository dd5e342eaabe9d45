"""Guarantee 3: SIGKILL of `apply` at any step loses nothing and duplicates nothing.

`apply` runs as a real process (`python -m batchops`); BATCHOPS_TEST_DIE_AT names the checkpoint
at which it kills itself. The next apply must converge to what an uninterrupted run reaches.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import statedb
from tests.projects import rows, run_cli, write_project

DAY = 24 * 3600
N = 12


def results_count(root, state=None) -> int:
    """Items answered, in `state` (default: the SQLite file under `root/state`)."""
    location = state if state is not None else root / "state" / "batchops.db"
    sql = "select count(distinct key) from results where type = 'succeeded'"
    return statedb.rows(location, sql)[0][0]


def assert_converged(root, emulator, admin, max_submissions: int = 1, state=None) -> None:
    done = run_cli(
        root,
        emulator,
        "apply",
        "--yes",
        "--wait",
        "--poll-interval",
        "0.05",
        "--timeout",
        "60",
        state=state,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert results_count(root, state) == N
    stats = admin.stats()
    assert len(stats["submissions"]) == N
    assert max(stats["submissions"].values()) <= max_submissions
    again = run_cli(root, emulator, "apply", "--yes", state=state)
    assert again.returncode == 0, again.stderr
    assert admin.stats() == stats  # nothing more to send


def harvest_workers() -> set[int]:
    """Pids of running harvest worker processes (`python -m batchops.apply.harvest_worker`)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if b"batchops.apply.harvest_worker" in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
    return found


@pytest.mark.parametrize(
    "point", ["after-intent", "after-create", "mid-harvest", "mid-harvest-by-worker"]
)
def test_sigkill_at_each_step_then_apply_converges(
    tmp_path, emulator, emulator_admin, point, state_location
):
    write_project(tmp_path, rows(N))
    env = {"BATCHOPS_TEST_DIE_AT": point}
    if point == "mid-harvest-by-worker":  # the rows made by a worker process beside
        env = {"BATCHOPS_TEST_DIE_AT": "mid-harvest", "BATCHOPS_HARVEST_WORKER": "1"}
    before = harvest_workers()
    killed = run_cli(
        tmp_path,
        emulator,
        "apply",
        "--yes",
        "--wait",
        "--poll-interval",
        "0.05",
        env=env,
        state=state_location,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    # A worker left behind by the killed apply ends by itself (its pipes are closed).
    deadline = time.monotonic() + 10
    while harvest_workers() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert harvest_workers() - before == set()
    # after-intent: the create was never sent; the intent is found unsent, the items sent once.
    # after-create: the batch exists but is not recorded; it is adopted, not sent again.
    # mid-harvest: the harvest transaction never committed; the batch is harvested whole.
    assert_converged(tmp_path, emulator, emulator_admin, state=state_location)
    if point == "after-create":
        assert emulator_admin.stats()["batches_created"] == 1


@pytest.mark.parametrize("point", ["mid-prune", "after-delete"])
def test_sigkill_mid_prune_then_apply_converges(tmp_path, emulator, emulator_admin, point):
    write_project(tmp_path, rows(N))
    # sent, not yet harvested
    first = run_cli(tmp_path, emulator, "apply", "--yes")
    assert first.returncode == 0, first.stderr
    emulator_admin.advance_clock(28 * DAY)
    killed = run_cli(tmp_path, emulator, "apply", "--yes", env={"BATCHOPS_TEST_DIE_AT": point})
    assert killed.returncode == -signal.SIGKILL
    assert_converged(tmp_path, emulator, emulator_admin)
    pending = "select count(*) from batches where pruned_at is null"
    assert statedb.rows(tmp_path / "state" / "batchops.db", pending) == [(0,)]


def test_a_lock_left_by_a_killed_apply_is_reported_and_taken_over(
    tmp_path, emulator, emulator_admin
):
    write_project(tmp_path, rows(N))
    killed = run_cli(
        tmp_path, emulator, "apply", "--yes", env={"BATCHOPS_TEST_DIE_AT": "after-create"}
    )
    assert killed.returncode == -signal.SIGKILL
    done = run_cli(tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05")
    assert done.returncode == 0, done.stderr
    assert "Taking over a lock left by process" in done.stdout
    assert "which is no longer running" in done.stdout


def test_two_concurrent_applies_never_send_twice(
    tmp_path, emulator, emulator_admin, state_location
):
    emulator_admin.set_config(processing_seconds=0.5)
    write_project(tmp_path, rows(N))
    outcomes: list[subprocess.CompletedProcess] = []

    def run() -> None:
        outcomes.append(
            run_cli(
                tmp_path,
                emulator,
                "apply",
                "--yes",
                "--wait",
                "--poll-interval",
                "0.05",
                state=state_location,
            )  # fmt: skip
        )

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(o.returncode for o in outcomes)
    assert codes in ([0, 0], [0, 1])
    for o in outcomes:
        if o.returncode == 1:
            assert "state is locked: lock " in o.stderr and " held by pid " in o.stderr
    assert set(emulator_admin.stats()["submissions"].values()) == {1}


def test_api_key_never_in_state_plan_or_output(tmp_path, emulator):
    secret = "dummy-secret-key-SECRETSECRETSECRET-123"
    write_project(tmp_path, rows(3, r2="[[emulator:fail=api_error:times=1]]"))
    env = {"ANTHROPIC_API_KEY": secret}
    outputs = [
        run_cli(tmp_path, emulator, "plan", "-o", "plan.jsonl", env=env),
        run_cli(
            tmp_path, emulator, "apply", "plan.jsonl", "--wait", "--poll-interval", "0.05", env=env
        ),
        run_cli(tmp_path, emulator, "plan", "--json", env=env),
        run_cli(tmp_path, emulator, "--debug", "plan", "--markdown", env=env),
        run_cli(tmp_path, "http://127.0.0.1:9", "apply", "--yes", env=env),  # an API failure
    ]
    for out in outputs:
        assert secret not in out.stdout and secret not in out.stderr
    assert outputs[1].returncode == 0, outputs[1].stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "batchops.db" for p in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert (
        hashlib.sha256(secret.encode()).hexdigest().encode()
        not in (tmp_path / "state" / "batchops.db").read_bytes()
    )


def test_cli_apply_without_yes_off_a_terminal_is_refused(tmp_path, emulator, emulator_admin):
    write_project(tmp_path, rows(1))
    out = run_cli(tmp_path, emulator, "apply")
    assert out.returncode == 1
    assert out.stderr == (
        "Error: apply needs --yes (or --auto-approve) when standard input is not a terminal\n"
    )
    assert emulator_admin.stats()["batches_created"] == 0


def test_apply_json_is_one_document_on_stdout(tmp_path, emulator):
    import json

    write_project(tmp_path, rows(3, r2="[[emulator:fail=invalid_request_error]]"))
    out = run_cli(
        tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05", "--json"
    )
    assert out.returncode == 1  # an item failed
    report = json.loads(out.stdout)
    assert report["submitted"] == 3 and len(report["batches_created"]) == 1
    assert report["jobs"][0]["counts"]["succeeded"] == 2
    assert report["jobs"][0]["failed"][0]["key"] == "r2"
    assert report["jobs"][0]["failed"][0]["error_type"] == "invalid_request_error"
    assert "Created batch" in out.stderr
    assert out.stderr.rstrip().endswith(
        "Error: 1 item failed (their errors are in the JSON report)"
    )  # not "(see above)": above, on stderr, is only progress
    refreshed = run_cli(tmp_path, emulator, "refresh", "--json")
    assert refreshed.returncode == 0
    assert json.loads(refreshed.stdout)["submitted"] == 0


def test_a_foreign_batch_of_the_same_size_is_never_adopted(
    tmp_path, emulator, emulator_admin, sdk_client
):
    # Adoption used to take the first same-size batch and give it up at harvest; now a candidate
    # is adopted only once its results prove it ours, so a foreign one is never adopted at all.
    write_project(tmp_path, rows(2))
    killed = run_cli(
        tmp_path, emulator, "apply", "--yes", env={"BATCHOPS_TEST_DIE_AT": "before-create"}
    )
    assert killed.returncode == -signal.SIGKILL
    # someone else in the workspace makes a batch of the same size after our intent
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "not ours"}],
    }
    sdk_client.messages.batches.create(
        requests=[{"custom_id": f"other-{i}", "params": params} for i in range(2)]
    )
    done = run_cli(
        tmp_path,
        emulator,
        "apply",
        "--yes",
        "--wait",
        "--poll-interval",
        "0.05",
        env={"BATCHOPS_CREATE_GRACE_SECONDS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Adopted batch" not in done.stdout
    assert results_count(tmp_path) == 2
    submissions = emulator_admin.stats()["submissions"]
    assert sorted(submissions.values()) == [1, 1, 1, 1]  # ours once each, theirs once each


def test_sigkill_around_a_cancel_still_counts_it_as_ours(tmp_path, emulator, emulator_admin):
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(2))
    assert run_cli(tmp_path, emulator, "apply", "--yes").returncode == 0
    write_project(tmp_path, [{"id": "new", "text": "replaces both"}])
    emulator_admin.set_config(processing_seconds=0)  # for the new item's batch
    killed = run_cli(
        tmp_path, emulator, "apply", "--yes", env={"BATCHOPS_TEST_DIE_AT": "after-cancel-mark"}
    )
    assert killed.returncode == -signal.SIGKILL
    done = run_cli(
        tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05", "--timeout", "60"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "outside batchops" not in done.stdout
    conn = sqlite3.connect(tmp_path / "state" / "batchops.db")
    assert conn.execute("select key from items where forgotten_at is null").fetchall() == [("new",)]
    conn.close()
