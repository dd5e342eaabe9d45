"""Review 16 (second reader): the previous session's changes to PostgreSQL state (telling two
states apart, URLs shown without their secrets) and to stopping on SIGTERM. Each test
reproduces one defect: it fails on the code as reviewed and passes once fixed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from batchops.state import open_reader
from batchops.state.postgres import redact
from tests import statedb
from tests.projects import rows, run_cli, write_project
from tests.test_review3_team import _env


def _lineage_serial(location: str) -> tuple[str, int]:
    reader = open_reader(location)
    try:
        return reader.lineage, reader.serial
    finally:
        reader.close()


def test_push_between_two_states_in_two_schemas_of_one_database_is_not_refused_as_the_same(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> None:
    """One PostgreSQL database may hold several batchops states, one per schema, picked by the
    URL's `options=-csearch_path=…` (libpq's way; every table batchops uses is unqualified, so
    it works for apply, status and the rest). `state push` from schema team_a into the empty
    schema team_b is refused: "source and destination are the same state", because `_same`
    tells states apart by `identity()`, (current_database(), the server's start time), which
    both schemas share. Expected: the copy is made (the state of team_a, lineage and serial,
    now in team_b), as it is between two databases."""
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute("create schema team_a")
        admin.execute("create schema team_b")
    source = f"{pg_dsn}?options=-csearch_path%3Dteam_a"
    destination = f"{pg_dsn}?options=-csearch_path%3Dteam_b"
    write_project(tmp_path, rows(2))
    made = run_cli(tmp_path, emulator, "apply", "--yes", state=source)
    assert made.returncode == 0, made.stderr
    out = run_cli(tmp_path, emulator, "state", "push", destination, state=source)
    assert out.stderr == "", out.stderr
    assert out.returncode == 0, out.stdout
    assert _lineage_serial(destination)[0] == _lineage_serial(source)[0]
    copied = "select count(*) from team_b.batches"
    assert statedb.rows(pg_dsn, copied) == [(1,)]


def test_a_password_holding_a_question_mark_is_not_shown_with_the_state_url(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> None:
    """libpq reads a URL's user:password up to the `@` (its parser stops at `@` or `/` only),
    so `postgresql://ci:hunter?22@host/db` connects with the password `hunter?22`. Python's
    urlsplit ends the netloc at the `?` instead: `redact` finds no `@` in it and nothing
    secret in the "query", and since review 14 returns such a URL "as given", password and
    all, in every line naming the state (`state list` here; errors, lock messages and the
    JSON reports too): a CI log shows the database password. Expected: the URL without its
    password, as for any other password."""
    parts = urlsplit(pg_dsn)
    url = f"postgresql://{parts.username}:hunter?22@{parts.hostname}:{parts.port}{parts.path}"
    write_project(tmp_path, rows(2))
    made = run_cli(tmp_path, emulator, "apply", "--yes", state=url)
    assert made.returncode == 0, made.stderr
    listed = run_cli(tmp_path, emulator, "state", "list", state=url)
    assert listed.returncode == 0, listed.stderr
    lineage, serial = _lineage_serial(pg_dsn)
    assert listed.stdout.splitlines()[0] == (
        f"State {pg_dsn}: lineage {lineage}, serial {serial}."
    ), listed.stdout
    assert "hunter" not in listed.stdout + made.stdout + made.stderr


# Run as `python -c`: batchops's own entry point, with a SIGTERM that arrives while the garbage
# collector runs a callback (as it does a weakref callback or a `__del__`): the handler's
# `Interrupted` is raised there, printed as "Exception ignored" and lost; `_stop` has kept the
# signal in STOP_REQUESTED.
_LOSE_A_SIGTERM = """
import gc, os, signal, sys, time
import batchops.cli as cli

done = []

def lose_a_sigterm(phase, info):
    if done or phase != "start" or signal.getsignal(signal.SIGTERM) is not cli._stop:
        return
    done.append(True)
    os.kill(os.getpid(), signal.SIGTERM)
    end = time.monotonic() + 0.2
    while time.monotonic() < end:  # the handler runs here, inside the callback
        pass

gc.callbacks.append(lose_a_sigterm)
sys.argv = ["batchops", "apply", "--yes"]
cli.main()
"""


def test_a_sigterm_whose_raise_was_lost_still_stops_an_apply_without_wait(
    tmp_path: Path, emulator: str, emulator_admin
) -> None:
    """d930323 keeps a SIGTERM whose `Interrupted` was lost (it landed in a weakref callback:
    "Exception ignored") and raises it at the next `pause`: of the --wait loop, or of a
    create's retry. An apply without --wait never pauses: the cancelled CI job's apply goes on,
    plans, creates a batch (paid for, after the job was cancelled) and exits 0, as if no signal
    had come. DESIGN §6.12: SIGTERM ends apply cleanly, exit 143; a stop asked for before any
    step began runs no step. Expected: "Stopped by SIGTERM.", exit 143, no batch created."""
    write_project(tmp_path, rows(2))
    env = _env(emulator, None)  # the project's own SQLite state
    out = subprocess.run(
        [sys.executable, "-c", _LOSE_A_SIGTERM],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Exception ignored" in out.stderr, out.stderr  # the raise was lost, as in CI
    assert emulator_admin.stats()["batches_created"] == 0, out.stdout
    assert out.returncode == 143, out.stdout + out.stderr
    assert out.stderr.splitlines()[-1] == "Stopped by SIGTERM.", out.stderr


def test_apply_as_a_read_only_role_is_not_told_to_run_state_migrate(
    tmp_path: Path, emulator: str, pg_server, pg_dsn: str
) -> None:
    """A team gives pull-request CI a read-only role (SELECT on the state's tables) for `plan`;
    used for `apply`, the open's insert of its lease is refused (42501). `_open_failed` says of
    every insufficient_privilege: "this role cannot create or change the state's tables; run
    `batchops state migrate` once as a role that may (the database's owner)". The schema is
    whole and current: migrate as the owner does nothing, and the next apply fails the same.
    Expected: one line naming the refusal, without the advice to migrate (nothing is pending);
    it is the role's rights to write the state that are missing."""
    write_project(tmp_path, rows(2))
    made = run_cli(tmp_path, emulator, "apply", "--yes", state=pg_dsn)
    assert made.returncode == 0, made.stderr
    grant = "grant select on all tables in schema public to {role}"
    with statedb.login_role(pg_server.dsn, pg_dsn, "ro", grant) as url:
        planned = run_cli(tmp_path, emulator, "plan", state=url)
        out = run_cli(tmp_path, emulator, "apply", "--yes", state=url)
    assert planned.returncode == 0, planned.stderr  # the role reads the state
    assert out.returncode == 1, out.stdout
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"Error: {url}: permission denied for table leases"), line
    assert "state migrate" not in line, line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ci:hunter?22@db.example:5432/state", "postgresql://ci@db.example:5432/state"),
        ("postgresql://ci:a#b@db.example/state?sslmode=require",
         "postgresql://ci@db.example/state?sslmode=require"),
        ("postgres://ci:p%40ss@db.example/state", "postgres://ci@db.example/state"),
        ("postgresql://ci@db.example/state?x=1", "postgresql://ci@db.example/state?x=1"),
        ("postgresql:///state?host=/tmp/s", "postgresql:///state?host=/tmp/s"),
    ],
)  # fmt: skip
def test_redact_reads_the_password_as_libpq_does(url: str, shown: str) -> None:
    """The password is what libpq takes (to the first `@` before any `/`), whatever it holds;
    a URL with nothing secret is shown as written."""
    assert redact(url) == shown
    assert "hunter" not in redact(url) and "p%40ss" not in redact(url)
