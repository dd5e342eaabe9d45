"""A shared workspace (DESIGN §2, §6.3–§6.5, §6.8, §6.10, §6.12): teammates, skewed clocks, flaky
networks and cancelled CI jobs. Each case runs batchops as real processes against the emulator
and checks that every custom_id is submitted exactly as often as its faults require, that no
foreign batch is cancelled or stored, and that the state converges.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchops.clock import utcnow
from batchops.spec.items import custom_id_for, fingerprint
from tests import statedb
from tests.projects import API_KEY, rows, run_cli, write_project, write_rows
from tests.test_apply import submissions

STATE = Path("state") / "batchops.db"
FAST_GRACE = {"BATCHOPS_CREATE_GRACE_SECONDS": "1"}


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def apply(root, emulator, *args, env=None, where=None):
    """`batchops apply` in a real process; `where`: the state's location (default: SQLite)."""
    full = {**(env or {}), **({"BATCHOPS_STATE": str(where)} if where is not None else {})}
    return run_cli(root, emulator, "apply", "--yes", "--poll-interval", "0.1", *args, env=full)


def state_rows(where: Path | str, sql: str) -> list[tuple]:
    """Raw SQL on the state: `where` is a project root (its SQLite state) or a state location."""
    location = where / STATE if isinstance(where, Path) and where.is_dir() else where
    return statedb.rows(location, sql)


def results(root: Path, emulator: str, where=None) -> list[dict]:
    env = {"BATCHOPS_STATE": str(where)} if where is not None else None
    out = ok(run_cli(root, emulator, "results", "demo", "--format", "jsonl", env=env)).stdout
    return [json.loads(line) for line in out.splitlines()]


def teammate_requests(keys, model="claude-sonnet-4-5", text="their prompt {}"):
    """What a teammate's own checkout sends for job `demo` with the same keys."""
    out = []
    for key in keys:
        params = {
            "model": model,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": text.format(key)}],
        }
        out.append({"custom_id": custom_id_for("demo", key, fingerprint(params)), "params": params})
    return out


# -- adoption: by list position and custom_ids, never by clocks


@pytest.mark.parametrize("skew", [300, -300], ids=["server-ahead", "server-behind"])
def test_a_lost_create_response_is_adopted_whatever_the_clocks_say(
    tmp_path, emulator, emulator_admin, state_location, skew
):
    write_project(tmp_path, rows(3))
    # a teammate's batch of the same size, made just before ours: never to be taken for ours
    foreign = emulator_admin.teammate_create(teammate_requests(["x1", "x2", "x3"]))
    emulator_admin.set_clock_skew(skew)
    emulator_admin.lose_next_create_response()
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60", where=state_location))
    assert emulator_admin.stats()["batches_created"] == 2  # the teammate's and our one
    assert {submissions(emulator_admin, k) for k in ("r1", "r2", "r3")} == {1}
    ours = state_rows(state_location, "select id from batches")
    assert len(ours) == 1 and ours[0][0] != foreign["id"]
    assert {r["state"] for r in results(tmp_path, emulator, state_location)} == {"succeeded"}


def test_a_create_listed_late_is_found_and_nothing_is_sent_twice(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(2))
    emulator_admin.hide_next_create(seconds=4, lose_response=True)
    first = apply(
        tmp_path, emulator, where=state_location
    )  # the create's outcome is unknown, and nothing is listed
    assert first.returncode == 0, first.stderr
    assert "held" in first.stdout
    assert state_rows(state_location, "select status from intents") == [("open",)]
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60", where=state_location))
    assert emulator_admin.stats()["batches_created"] == 1
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}
    assert state_rows(state_location, "select status from intents") == [("adopted",)]


def test_a_create_refused_before_commit_is_sent_again(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(2))
    emulator_admin.refuse_next_create(429, retry_after_ms=5)
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60", where=state_location))
    assert emulator_admin.stats()["batches_created"] == 1
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}


def test_a_colleagues_batch_of_the_same_size_is_neither_adopted_nor_cancelled(
    tmp_path, emulator, emulator_admin, state_location, sdk_client
):
    write_project(tmp_path, rows(3))
    # killed as the create went out: whether it reached the API is unknown
    killed = apply(
        tmp_path, emulator, env={"BATCHOPS_TEST_DIE_AT": "before-create"}, where=state_location
    )
    assert killed.returncode == -signal.SIGKILL
    colleague = emulator_admin.teammate_create(teammate_requests(["c1", "c2", "c3"]))
    write_rows(tmp_path, rows(3, r1="edited", r2="edited too"))
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60", env=FAST_GRACE, where=state_location))
    remote = sdk_client.messages.batches.retrieve(colleague["id"])
    assert remote.cancel_initiated_at is None and remote.request_counts.canceled == 0
    assert colleague["id"] not in {
        r[0] for r in state_rows(state_location, "select id from batches")
    }
    assert {submissions(emulator_admin, k) for k in ("r1", "r2", "r3")} == {1}
    assert {r["state"] for r in results(tmp_path, emulator, state_location)} == {"succeeded"}


def test_a_teammates_answers_for_our_job_and_keys_are_never_taken_as_ours(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(3))
    killed = apply(
        tmp_path, emulator, env={"BATCHOPS_TEST_DIE_AT": "before-create"}, where=state_location
    )
    assert killed.returncode == -signal.SIGKILL
    # their checkout and state: the same job name and keys, another model and prompt
    emulator_admin.teammate_create(teammate_requests(["r1", "r2", "r3"]))
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60", env=FAST_GRACE, where=state_location))
    exported = results(tmp_path, emulator, state_location)
    assert {r["model"] for r in exported} == {"claude-haiku-4-5"}
    assert {r["state"] for r in exported} == {"succeeded"}
    assert state_rows(state_location, "select count(*) from batches") == [(1,)]


# -- a 404 is a question, not an answer


def test_one_404_on_a_batch_in_flight_sends_nothing_again(
    tmp_path, emulator, emulator_admin, state_location
):
    emulator_admin.set_config(processing_seconds=2)
    write_project(tmp_path, rows(3))
    ok(apply(tmp_path, emulator, where=state_location))
    [(batch_id,)] = state_rows(state_location, "select id from batches")
    emulator_admin.not_found(batch_id, endpoint="retrieve", times=1)
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60", where=state_location))
    assert {submissions(emulator_admin, k) for k in ("r1", "r2", "r3")} == {1}
    assert state_rows(state_location, "select drift from batches") == [(None,)]


def test_one_404_on_results_sends_nothing_again(tmp_path, emulator, emulator_admin, state_location):
    write_project(tmp_path, rows(2))
    ok(apply(tmp_path, emulator, where=state_location))
    [(batch_id,)] = state_rows(state_location, "select id from batches")
    emulator_admin.not_found(batch_id, endpoint="results", times=1)
    once = apply(tmp_path, emulator, where=state_location)
    assert once.returncode == 1 and "answered 404 although it exists" in once.stderr
    ok(apply(tmp_path, emulator, "--wait", "--timeout", "60", where=state_location))
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}
    assert {r["state"] for r in results(tmp_path, emulator, state_location)} == {"succeeded"}


# -- leases


def _lease_rows(root):
    return state_rows(root, "select lock_id, pid, pid_ns, expires_at from leases")


def _start(root, emulator, *args, env=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    full.update(
        NO_PROXY="127.0.0.1,localhost",
        ANTHROPIC_BASE_URL=emulator,
        ANTHROPIC_API_KEY=API_KEY,
        **(env or {}),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "batchops", "apply", "--yes", "--poll-interval", "0.2", *args],
        cwd=root,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def test_a_live_holder_in_another_pid_namespace_is_never_taken_over(
    tmp_path, emulator, emulator_admin
):
    # A run in another container with the same host name: its pid means nothing here. It renews
    # its lease, so a second apply fails naming it, whatever `kill -0` says of that pid.
    emulator_admin.set_config(processing_seconds=8)
    write_project(tmp_path, rows(2))
    holder = _start(tmp_path, emulator, "--wait", env={"BATCHOPS_LEASE_SECONDS": "2"})
    try:
        _wait_for(lambda: _lease_rows(tmp_path))
        conn = sqlite3.connect(tmp_path / STATE)
        with conn:  # as the other container's process would appear from here
            conn.execute("update leases set pid = 4194000, pid_ns = 'pid:[4026000001]'")
        conn.close()
        time.sleep(2.5)  # past the first lease's expiry: only renewal keeps it
        assert holder.poll() is None  # still running
        second = apply(tmp_path, emulator, env={"BATCHOPS_LEASE_SECONDS": "2"})
        assert second.returncode == 1
        assert "state is locked: lock " in second.stderr and "held by pid 4194000" in second.stderr
    finally:
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}


def test_an_unrenewed_lease_is_taken_over_with_a_message(tmp_path, emulator, emulator_admin):
    write_project(tmp_path, rows(1))
    ok(apply(tmp_path, emulator))
    conn = sqlite3.connect(tmp_path / STATE)
    with conn:  # a holder in another container that stopped renewing a minute ago
        conn.execute(
            "insert into leases (name, lock_id, pid, host, since, command, expires_at, pid_ns,"
            " started) values ('*', 'old-lock', 4194000, 'other-pod', '2026-01-01T00:00:00Z',"
            " 'apply', ?, 'pid:[4026000001]', '1')",
            [(utcnow().replace(microsecond=0)).isoformat().replace("+00:00", "Z")],
        )
    conn.close()
    result = ok(apply(tmp_path, emulator))
    assert "Taking over a lock" in result.stdout and "old-lock" in result.stdout
    assert _lease_rows(tmp_path) == []


def test_applies_of_different_jobs_run_at_once(tmp_path, emulator, emulator_admin):
    emulator_admin.set_config(processing_seconds=2)
    write_project(tmp_path, rows(2))
    (tmp_path / "jobs" / "other.toml").write_text(
        'version = 1\n[jobs.other]\nmodel = "claude-haiku-4-5"\nmax_tokens = 5\n'
        'prompt = "x {{ key }}"\nitems = [{ key = "o1" }, { key = "o2" }]\n'
    )
    a = _start(tmp_path, emulator, "--job", "demo", "--wait")
    _wait_for(lambda: _lease_rows(tmp_path))
    # the second, while the first holds job:demo
    second = apply(tmp_path, emulator, "--job", "other", "--wait", "--timeout", "60")
    out, err = a.communicate(timeout=60)
    assert a.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert emulator_admin.stats()["batches_created"] == 2
    assert set(emulator_admin.stats()["submissions"].values()) == {1}


# -- signals: a cancelled CI job


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_apply_cleanly(tmp_path, emulator, emulator_admin, sig, code):
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(2))
    proc = _start(tmp_path, emulator, "--wait")
    _wait_for(lambda: state_rows(tmp_path, "select id from batches"))
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    [(batch_id,)] = state_rows(tmp_path, "select id from batches")
    assert batch_id in err and "in flight" in err
    assert _lease_rows(tmp_path) == []
    # the .db alone is the whole state: what a CI cache that copies one file keeps
    alone = tmp_path / "copy" / "batchops.db"
    alone.parent.mkdir()
    shutil.copy(tmp_path / STATE, alone)
    conn = sqlite3.connect(alone)
    try:
        assert conn.execute("select id from batches").fetchall() == [(batch_id,)]
    finally:
        conn.close()


# -- credentials, and one job's failure


def test_a_create_never_sent_is_sent_at_once(tmp_path, emulator, emulator_admin, state_location):
    write_project(tmp_path, rows(2))
    killed = apply(
        tmp_path, emulator, env={"BATCHOPS_TEST_DIE_AT": "after-intent"}, where=state_location
    )
    assert killed.returncode == -signal.SIGKILL
    result = ok(apply(tmp_path, emulator, "--wait", "--timeout", "30", where=state_location))
    assert "was never sent" in result.stdout
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}


def test_no_credentials_is_one_error_before_anything_is_written(tmp_path):
    write_project(tmp_path, rows(1))
    result = run_cli(tmp_path, None, "apply", "--yes")
    assert result.returncode == 1
    assert result.stderr == "Error: no API key: set ANTHROPIC_API_KEY (or use --emulator)\n"
    assert not (tmp_path / "state").exists()


def test_one_jobs_refused_create_does_not_stop_the_others(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(2))
    (tmp_path / "jobs" / "zz.toml").write_text(
        'version = 1\n[jobs.zz]\nmodel = "claude-haiku-4-5"\nmax_tokens = 5\n'
        'prompt = "x {{ key }}"\nitems = [{ key = "o1" }]\n'
    )
    emulator_admin.refuse_next_create(400, error_type="invalid_request_error")
    result = apply(tmp_path, emulator, "--wait", "--timeout", "30", where=state_location)
    assert result.returncode == 1
    assert "Error: job demo: create batch failed: HTTP 400" in result.stderr
    assert submissions(emulator_admin, "o1", job="zz") == 1
    assert submissions(emulator_admin, "r1") == 0
    ok(
        apply(tmp_path, emulator, "--wait", "--timeout", "30", where=state_location)
    )  # the next run sends it
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {1}
