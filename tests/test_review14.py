"""Review 14: team state on PostgreSQL, as CI runners and a teammate use it at once (odd state
URLs, privileges, copies). Each test reproduces one defect and fails on the code as reviewed."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import psycopg

from batchops.state import open_reader
from tests import statedb
from tests.projects import rows, run_cli, write_project
from tests.test_review3_team import OTHER_JOB


def test_apply_as_a_role_without_create_says_permission_denied_in_one_plain_line(
    tmp_path: Path, emulator: str, pg_server, pg_dsn: str
) -> None:
    """A team's usual set-up on PostgreSQL 15: a database owned by an admin, CI logging in as a
    role of its own, which may not create tables in schema public. The first apply cannot make
    the schema: the error should say so, in one readable line. It says instead that the
    database is "not a batchops state database", with libpq's LINE/caret lines escaped as
    \\x0a into the line."""
    with statedb.login_role(pg_server.dsn, pg_dsn, "ci") as url:
        write_project(tmp_path, rows(2))
        out = run_cli(tmp_path, emulator, "apply", "--yes", state=url)
    assert out.returncode == 1, out.stdout
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"Error: {url}: "), line
    assert "permission denied for schema public" in line, line
    assert "\\x0a" not in line and "LINE 1" not in line, line
    assert "not a batchops state database" not in line, line
    assert not statedb.exists(pg_dsn)


def test_a_unix_socket_state_url_is_shown_as_the_url_given(
    tmp_path: Path, emulator: str, pg_server, pg_dsn: str
) -> None:
    """`postgresql:///db?host=/run/postgresql` (libpq's unix-socket form, no password) is shown
    by `state list` as `postgresql:/db?host=%2F...`: one slash, no longer a postgresql:// URL
    (pasted back as --state, batchops takes it for a SQLite file path)."""
    write_project(tmp_path, rows(2))
    dbname = urlsplit(pg_dsn).path.lstrip("/")
    url = f"postgresql:///{dbname}?host={pg_server.root}&port={pg_server.port}&user=postgres"
    made = run_cli(tmp_path, emulator, "apply", "--yes", state=url)
    assert made.returncode == 0, made.stderr
    listed = run_cli(tmp_path, emulator, "state", "list", state=url)
    assert listed.returncode == 0, listed.stderr
    first = listed.stdout.splitlines()[0]
    reader = open_reader(pg_dsn)
    try:
        tail = f": lineage {reader.lineage}, serial {reader.serial}."
    finally:
        reader.close()
    assert first.startswith("State ") and first.endswith(tail), first
    shown = first[len("State ") : -len(tail)]
    assert shown.startswith(f"postgresql:///{dbname}?"), shown
    given, seen = urlsplit(url), urlsplit(shown)
    assert (seen.scheme, seen.netloc, seen.path) == (given.scheme, given.netloc, given.path)
    assert parse_qsl(seen.query) == parse_qsl(given.query)


def test_push_onto_the_same_postgres_state_by_another_spelling_is_refused_as_the_same_state(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> None:
    """SQLite resolves both paths and refuses a copy of a state onto itself ("source and
    destination are the same state"). PostgreSQL compares the URL strings: the same database
    spelled with `localhost` for `127.0.0.1` (or with the password in the URL, or PGPASSWORD)
    is taken for another state, and `state push --force` fails saying the state is locked by
    the very process running it."""
    write_project(tmp_path, rows(2))
    made = run_cli(tmp_path, emulator, "apply", "--yes", state=pg_dsn)
    assert made.returncode == 0, made.stderr
    before = statedb.rows(pg_dsn, "select key, value from meta order by key")
    assert_push_to_localhost_refused_as_same(tmp_path, emulator, pg_dsn, before)


def assert_push_to_localhost_refused_as_same(
    root: Path, emulator: str, pg_dsn: str, before: list
) -> None:
    """`state push --force` onto `pg_dsn` spelled with `localhost` is refused in one line as the
    same state, and leaves its meta (`before`) and leases as they were."""
    parts = urlsplit(pg_dsn)
    other = f"postgresql://{parts.username}@localhost:{parts.port}{parts.path}"
    out = run_cli(root, emulator, "state", "push", "--force", other, state=pg_dsn)
    assert out.returncode == 1, out.stdout
    assert out.stderr.splitlines() == [
        f"Error: {pg_dsn}: source and destination are the same state"
    ], out.stderr
    assert statedb.rows(pg_dsn, "select key, value from meta order by key") == before
    assert statedb.rows(pg_dsn, "select count(*) from leases") == [(0,)]


ADVISORY_KEY = 0x62617463686F7073


def _popen_cli(root: Path, emulator: str, state: str, *args: str):
    import subprocess
    import sys

    from tests.test_review3_team import _env

    return subprocess.Popen(
        [sys.executable, "-m", "batchops", *args],
        cwd=root,
        env=_env(emulator, state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _waiting_backends(dsn: str) -> list[int]:
    rows_ = statedb.rows(
        dsn,
        "select pid from pg_stat_activity where wait_event_type = 'Lock'"
        " and datname = current_database() and pid <> pg_backend_pid()",
    )
    return [r[0] for r in rows_]


def test_a_connection_cut_while_apply_opens_the_state_is_a_lost_connection_not_a_bad_state(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> None:
    """The apply's connection is terminated while it opens the state (here while it waits its
    turn behind another runner opening it: a migration). Mid-apply the same cut says "the
    connection to PostgreSQL was lost ... run the command again"; here the runner is told the
    database is "not a batchops state database", which sends a team looking for a wrong URL."""
    import time

    write_project(tmp_path, rows(2))
    made = run_cli(tmp_path, emulator, "apply", "--yes", state=pg_dsn)
    assert made.returncode == 0, made.stderr
    holder = psycopg.connect(pg_dsn)  # another runner opening the state: its open transaction
    holder.execute("select pg_advisory_xact_lock(%s)", [ADVISORY_KEY])
    proc = _popen_cli(tmp_path, emulator, pg_dsn, "apply", "--yes", "--lock-timeout", "60")
    try:
        deadline = time.monotonic() + 20
        while not (waiting := _waiting_backends(pg_dsn)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        statedb.rows(pg_dsn, "select pg_terminate_backend(%s)", [waiting[0]])
        out, err = proc.communicate(timeout=30)
    finally:
        holder.rollback()
        holder.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out
    assert err.splitlines() == [
        f"Error: {pg_dsn}: the connection to PostgreSQL was lost (terminating connection due to"
        " administrator command); what was being written was rolled back: run the command again"
    ], err
    assert statedb.rows(pg_dsn, "select count(*) from leases") == [(0,)]


def test_a_runner_cut_off_mid_write_does_not_stop_another_jobs_apply(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> None:
    """Leases are per job (DESIGN §6.5): runner A holds job `other`; its host drops off the
    network in the middle of a write, so its transaction stays open on the server (until TCP
    keepalive gives up, hours later), holding the FOR KEY SHARE lock every write takes on its
    lease. Runner B's apply of job `demo` then never starts: opening locks every lease row FOR
    UPDATE, so it waits for A's transaction, holding the open lock (the advisory lock) that
    every other runner waits behind too. Even once A's lease expires nobody can take it over.
    B should apply `demo` at once."""
    import subprocess

    from batchops.state import open_writer

    write_project(tmp_path, rows(2), extra=OTHER_JOB)
    runner_a = open_writer(pg_dsn, "apply", jobs=["other"])
    cut_off = psycopg.connect(pg_dsn)  # A's connection, its write's transaction left open
    try:
        cut_off.execute(
            "select 1 from leases where lock_id = %s for key share", [runner_a.held.lock_id]
        )
        try:
            out = run_cli(
                tmp_path, emulator, "apply", "--yes", "--job", "demo", state=pg_dsn, timeout=30
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(
                "apply --job demo still waiting for job other's runner after 30 s"
            ) from None
    finally:
        cut_off.rollback()
        cut_off.close()
        runner_a.close()
    assert out.returncode == 0, out.stderr
    assert statedb.rows(pg_dsn, "select count(*) from items where job = 'demo'") == [(2,)]


def test_a_password_libpq_cannot_decode_is_not_printed_in_the_error(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A password pasted into the URL without percent-encoding its `%` (a common slip): libpq
    refuses the URL and its message quotes the offending token, which is the password, and
    batchops prints that message: the secret lands in the CI log (where a masked secret is the
    whole URL, not this part of it). The location is redacted; the reason is not."""
    write_project(tmp_path, rows(2))
    parts = urlsplit(pg_dsn)
    secret = "s3cr%zzet"
    url = f"postgresql://ci:{secret}@{parts.hostname}:{parts.port}{parts.path}"
    out = run_cli(tmp_path, None, "status", state=url)
    assert out.returncode == 1, out.stdout
    (line,) = out.stderr.splitlines()
    shown = f"postgresql://ci@{parts.hostname}:{parts.port}{parts.path}"
    assert line.startswith(f"Error: {shown}: cannot connect to PostgreSQL ("), line
    assert "s3cr" not in out.stderr + out.stdout, line
