"""The team state (DESIGN §6.2, §6.6, §6.12, §6.7) against what a teammate's run, a cancelled CI
job, a dropped database connection and a long key do to a shared PostgreSQL state. Real batchops
processes against the emulator on loopback and a throwaway PostgreSQL (tests/pgserver.py).
Found by a review of the team state; each test failed before its fix."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from batchops.plan import saved as saved_mod
from batchops.state import open_reader, open_writer
from tests import statedb
from tests.projects import context, rows, run_cli, write_project, write_rows
from tests.test_review3_team import _env

_WAITING = (
    "select pid from pg_stat_activity where datname = current_database()"
    " and wait_event_type = 'Lock' and left(query, 11) = 'update meta'"
)


class _TeammateBetweenReads:
    """A reader that lets `between` run once the plan has read every item record: another
    runner's apply landing while a (long: seconds at a million items) plan reads the state."""

    def __init__(self, inner, between: Callable[[], None]):
        self._inner, self._between = inner, between
        self.ran = False

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def item_records(self, jobs=None) -> Iterator:
        yield from self._inner.item_records(jobs)
        if not self.ran:
            self.ran = True
            self._between()


def test_a_plan_saved_while_a_teammate_applies_never_sends_an_item_again(
    tmp_path: Path, emulator: str, emulator_admin, state_location
) -> None:
    """`plan -o` read items, batches and intents, then the serial, each a statement of its own.
    A teammate's apply that lands in between leaves a plan holding the old items under the new
    serial: `apply plan.json` passes the serial check and sends r2 and r3 a second time, while
    their first batch is still in flight (two unfinished batches, paid twice). Expected: the
    plan carries the serial it read its items at (its apply is refused), or nothing is resent."""
    write_project(tmp_path, rows(1))
    first = run_cli(
        tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05",
        state=state_location,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    emulator_admin.set_config(processing_seconds=3600)
    write_rows(tmp_path, rows(3))

    def teammate() -> None:
        out = run_cli(tmp_path, emulator, "apply", "--yes", state=state_location)
        assert out.returncode == 0, out.stderr

    ctx = context(tmp_path, emulator, state=state_location)
    readers: list[_TeammateBetweenReads] = []

    def reader():
        readers.append(_TeammateBetweenReads(open_reader(state_location), teammate))
        return readers[-1]

    ctx.reader = reader  # type: ignore[method-assign]
    plan, planner = ctx.plan(keep_requests=True)
    assert any(r.ran for r in readers)
    path = tmp_path / "plan.json"
    saved_mod.save(plan, planner.desired, path, None)

    run_cli(tmp_path, emulator, "apply", str(path), "--yes", state=state_location)
    submissions = emulator_admin.stats()["submissions"]
    assert len(submissions) == 3
    assert set(submissions.values()) == {1}, submissions


@contextlib.contextmanager
def _apply_blocked_in_a_write(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> Iterator[tuple[subprocess.Popen, psycopg.Connection, int]]:
    """An apply whose first write waits on the server (a row of `meta` held by another
    transaction: what a long COPY, a busy server or a slow settle looks like from the client),
    holding its lease. Yields (process, the blocking connection, the waiting backend's pid);
    on leaving, the blocking connection is closed and the process, if still running, killed."""
    write_project(tmp_path, rows(2))
    open_writer(pg_dsn, "test").close()  # the schema and the meta rows
    blocker = psycopg.connect(pg_dsn)
    blocker.execute("select value from meta where key = 'serial' for update")
    env = _env(emulator, pg_dsn)
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchops", "apply", "--yes"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not (waiting := statedb.rows(pg_dsn, _WAITING)):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            blocker.close()
            raise AssertionError(f"the apply never waited on the server: {proc.communicate()}")
        time.sleep(0.05)
    try:
        assert statedb.rows(pg_dsn, "select count(*) from leases") == [(1,)]
        yield proc, blocker, waiting[0][0]
    finally:
        blocker.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sigterm_while_a_postgres_statement_waits_releases_the_lease(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """DESIGN §6.12: SIGTERM ends apply with the step rolled back and the lease released. The
    signal's exception (not a KeyboardInterrupt, so psycopg does not cancel the query) leaves the
    connection busy: the rollback and the lease's release both fail ("another command is
    already in progress", printed as psycopg warnings), and the lease stays behind, blocking
    the job for a runner on another host until it expires."""
    with _apply_blocked_in_a_write(tmp_path, emulator, pg_dsn) as (proc, blocker, _):
        proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        blocker.rollback()  # the statement may finish now, if the fix is to let it
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert statedb.rows(pg_dsn, "select lock_id, pid from leases") == []
    assert "another command is already in progress" not in err
    assert emulator_admin.stats()["submissions"] == {}


def test_a_dropped_state_connection_mid_apply_is_one_error_line_naming_the_state(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """A restarted server or a dropped connection mid-apply is an expected failure of a shared
    state (like "cannot connect to PostgreSQL"), not "Error: unexpected AdminShutdown: ... (a
    bug in batchops, or a damaged state file ...)" with the server's CONTEXT lines folded in."""
    with _apply_blocked_in_a_write(tmp_path, emulator, pg_dsn) as (proc, _, pid):
        statedb.rows(pg_dsn, "select pg_terminate_backend(?)", [pid])
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    assert "a bug in batchops" not in err and "unexpected" not in err, err
    assert pg_dsn in err, err  # which state, as every state error says
    assert emulator_admin.stats()["submissions"] == {}


def test_a_long_key_works_on_postgres_as_on_sqlite_or_is_refused_in_one_line(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """A key of 3,200 characters (a URL, a path) is applied on SQLite. On PostgreSQL it passes
    the index row limit of `items_pkey` (2,704 bytes), and every apply of the job ends in
    "Error: unexpected ProgramLimitExceeded: index row size 3224 exceeds btree version 4
    maximum 2704 ... (a bug in batchops ...)". The README names NUL as the one difference."""
    data = rows(2)
    data[1]["id"] = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(50))
    write_project(tmp_path, data)
    on_sqlite = run_cli(
        tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05",
        state=tmp_path / "state" / "batchops.db",
    )  # fmt: skip
    assert on_sqlite.returncode == 0, on_sqlite.stderr
    sent = dict(emulator_admin.stats()["submissions"])

    out = run_cli(
        tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05", state=pg_dsn
    )
    assert "unexpected" not in out.stderr and "a bug in batchops" not in out.stderr, out.stderr
    if out.returncode != 0:  # refused, like a key holding NUL: one line, before anything is sent
        assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("Error: item ")
        assert emulator_admin.stats()["submissions"] == sent
    else:
        assert statedb.rows(pg_dsn, "select count(*) from items where outcome = 'succeeded'") == [
            (2,)
        ]
