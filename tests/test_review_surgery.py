"""Review of the state commands a user runs by hand or in CI (state list/show/rm/mv, push/pull,
force-unlock, migrate, status, init): each test here failed when written, and names its finding.
They drive the real CLI (CliRunner, or `python -m batchops` where a real process matters), the
emulator on loopback and a throwaway PostgreSQL; never the real API."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.state import open_writer
from tests import statefill
from tests.projects import API_KEY, apply, context, rows, write_project

PASSWORD = "hunter2"


def run(*args: str, input: str | None = None, clock=None):
    obj = {"clock": clock} if clock is not None else None
    return CliRunner().invoke(cli, list(args), obj=obj, input=input)


def python_m_batchops(cwd: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHOPS_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "batchops", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def leases(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("select name, pid, command from leases").fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------- F1: the state URL's password
@pytest.fixture
def pg_applied(tmp_path: Path, emulator: str, monkeypatch: pytest.MonkeyPatch, pg_dsn: str) -> str:
    """A project applied to the end into PostgreSQL, reached by a URL holding a password (the
    throwaway server trusts loopback, so any password connects)."""
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, rows(3))
    url = pg_dsn.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    apply(context(tmp_path, emulator, state=url), wait=True)
    return url


@pytest.mark.parametrize(
    "args",
    [
        ["state", "list"],
        ["state", "list", "--json"],
        ["status", "--json"],
        ["state", "show", "nope"],
        ["state", "rm", "nope", "--yes"],
        ["state", "migrate"],
        ["force-unlock", "not-a-lock"],
    ],
    ids=lambda a: " ".join(a),
)
def test_finding_1_no_state_command_prints_the_postgres_password(
    pg_applied: str, args: list[str]
) -> None:
    # FINDING 1 (credential leak / wrong output): `state list`, `status --json`, `state show|rm`
    # of an unknown target, `state migrate` and `force-unlock` print --state as given, password
    # and all, to stdout/stderr (CI logs). push/pull/recover and the backends redact it.
    result = run("--state", pg_applied, *args)
    assert PASSWORD not in result.stdout + result.stderr, (result.stdout, result.stderr)


# ---------------------------------------------------------------- F2: a copy that fails half way
def test_finding_2a_a_failed_push_releases_the_source_lease_and_prints_one_line(
    tmp_path: Path, pg_dsn: str
) -> None:
    # FINDING 2 (lease left held + traceback on stderr): a copy that fails while the dump is being
    # read (here PostgreSQL refuses a key a SQLite state holds) leaves the source's whole-state
    # lease behind: SqliteWriter.close() deletes its lease inside the dump's still-open read
    # transaction, which closing the connection then rolls back. stderr also carries Python's
    # "Exception ignored in: <generator object SqliteReader.dump_tables …>" traceback.
    source = tmp_path / "state.db"
    open_writer(source, "test").close()
    conn = sqlite3.connect(source)
    conn.execute(
        "insert into items (job, key, custom_id, fingerprint) values ('demo', ?, 'demo-a-x', 'f')",
        ["a\x00b"],
    )
    conn.commit()
    conn.close()
    proc = python_m_batchops(tmp_path, "--state", str(source), "state", "push", pg_dsn)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    assert leases(source) == []  # nothing holds the state after the command ended
    assert err.count("\n") == 1 and err.startswith("Error: "), err  # one line, no traceback


def test_finding_2b_sigterm_during_push_releases_the_source_lease(tmp_path: Path) -> None:
    # FINDING 2 (same cause): SIGTERM (a cancelled CI job) mid-copy exits 143 and removes the
    # half-made destination, but the source keeps the dead run's `*` lease ("state push").
    source = tmp_path / "state.db"
    open_writer(source, "test").close()
    conn = sqlite3.connect(source)
    conn.executemany(
        "insert into results (job, key, custom_id, fingerprint, batch_id, attempt_id, type, text,"
        " message, received_at) values ('demo', ?, ?, 'fp', 'b', ?, 'succeeded', ?, ?, 'x')",
        ((f"k{i}", f"demo-k{i}", i, "t" * 50, "m" * 400) for i in range(150_000)),
    )
    conn.commit()
    conn.close()
    dest = tmp_path / "copy.db"
    proc = python_m_batchops(tmp_path, "--state", str(source), "state", "push", str(dest))
    deadline = time.monotonic() + 60
    while not dest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # well inside the copy (about 3 s for these rows)
    assert proc.poll() is None, "the copy ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (out, err)
    assert not dest.exists()
    assert leases(source) == []


# ---------------------------------------------------------------- F3: init writes half a project
@pytest.mark.parametrize("blocker", ["state", "jobs"])
def test_finding_3_init_over_a_file_in_the_way_writes_nothing_and_says_so(
    tmp_path: Path, blocker: str
) -> None:
    # FINDING 3 (half-written + bad error): a file named `state` (or `jobs`) where init makes a
    # folder: init has already written batchops.toml (and more) when mkdir fails, and ends in
    # "Error: unexpected FileExistsError … (a bug in batchops …)". init promises that if it
    # cannot write every file, nothing at all is written.
    (tmp_path / blocker).write_text("mine\n")
    result = run("init", str(tmp_path))
    assert result.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [blocker]
    assert result.stderr.startswith(f"Error: {tmp_path / blocker}"), result.stderr
    assert "unexpected" not in result.stderr


def test_init_that_fails_mid_way_removes_what_it_wrote(tmp_path: Path) -> None:
    """A dangling symlink named `jobs` passes every check (it is no file in the way, and
    nothing exists at its targets), and its mkdir fails after batchops.toml was written: init
    removes batchops.toml and says, in one line, what it could not write."""
    (tmp_path / "jobs").symlink_to(tmp_path / "nowhere")
    result = run("init", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {tmp_path / 'jobs'}: cannot write (File exists); init wrote nothing\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs"]


# ---------------------------------------------------------------- F4: status's result expiry
def test_finding_4_status_names_no_expired_results_as_held_remotely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FINDING 4 (wrong output): a harvested batch whose remote results already expired
    # (archived_at set, results_expire_at past) is still "Nearest remote result expiry", shown
    # as "in 2.5 days ago", hiding the batch whose results really expire next (msgbatch_new).
    statefill.write_project(tmp_path)
    path = statefill.fill_demo_state(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute(
        "update batches set results_expire_at = '2026-03-08T00:00:00Z',"
        " archived_at = '2026-03-08T00:00:00Z' where id = 'msgbatch_old'"
    )
    conn.commit()
    conn.close()
    monkeypatch.chdir(tmp_path)
    shown = run("status", "--json", clock=lambda: statefill.NOW)
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["next_result_expiry"]["batch_id"] == "msgbatch_new"
    text = run("status", clock=lambda: statefill.NOW)
    assert "ago." not in text.stdout, text.stdout


# ---------------------------------------------------------------- F5: rm of a batch in flight
@pytest.fixture
def in_flight(tmp_path: Path, emulator: str, emulator_admin, monkeypatch) -> tuple[Path, str]:
    """Job demo r1..r3 sent in one batch that is still processing remotely."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    write_project(tmp_path, rows(3))
    emulator_admin.set_config(processing_seconds=3600)
    (batch_id,) = apply(context(tmp_path, emulator)).batches_created
    return tmp_path, batch_id


@pytest.mark.parametrize("what", ["batch", "job"])
def test_finding_5_rm_while_its_batch_is_in_flight_is_refused_without_force(
    in_flight: tuple[Path, str], emulator: str, emulator_admin, what: str
) -> None:
    # FINDING 5 (pays twice, loses the results; a design call: test_state_cli's test_rm_batch and
    # test_rm_job encode today's behaviour): `state rm BATCH|JOB --yes` of a batch the API is
    # still processing forgets it at once; the next apply sends its items again while the first
    # batch runs (billed twice), and the first batch's results are never harvested. Expected:
    # refused unless --force, naming the live batch (cancel it with apply, or wait).
    root, batch_id = in_flight
    target = batch_id if what == "batch" else "demo"
    result = run("state", "rm", target, "--yes")
    assert result.exit_code == 1, result.output
    assert batch_id in result.stderr
    apply(context(root, emulator))
    assert emulator_admin.stats()["batches_created"] == 1  # nothing sent twice


# ---------------------------------------------------------------- F6: force-unlock of a live run
HOLDER = """
import sys, time
from batchops.state import open_writer
w = open_writer(sys.argv[1], "apply")
print(w.held.lock_id, flush=True)
time.sleep(60)
"""


def test_finding_6_force_unlock_refuses_a_lease_its_live_holder_renews(tmp_path: Path) -> None:
    # FINDING 6 (pays twice, by a race): force-unlock removes the lease of an apply that is
    # running on this very host (pid alive, same PID namespace, lease renewed), and a second
    # apply may then take the state while the first still writes (it notices only at its next
    # renewal, up to a third of the lease later, and only between plan steps). DESIGN §6.5: a
    # live holder is never taken over. Expected: refused, naming the live process, unless --force.
    state = tmp_path / "state.db"
    open_writer(state, "test").close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state)], stdout=subprocess.PIPE, text=True
    )
    try:
        lock_id = holder.stdout.readline().strip()
        result = run("--state", str(state), "force-unlock", lock_id)
        assert result.exit_code == 1, result.output
        assert [pid for _, pid, _ in leases(state)] == [holder.pid]
        assert result.stderr == (
            f"Error: {state}: lock {lock_id} is held by process {holder.pid} (apply), which is "
            "still running on this host; stop it first (its lease is released when it ends), or "
            "pass --force to remove the lock anyway\n"
        )
        forced = run("--state", str(state), "force-unlock", lock_id, "--force")
        assert forced.exit_code == 0, forced.output
        assert leases(state) == []
    finally:
        holder.kill()
        holder.wait()
