"""Review 15: a second read of review 14's PostgreSQL changes (opening the state without locking
every lease, telling states apart by their history). Each test reproduces one defect and fails
on the code as reviewed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg

from batchops.errors import LockHeld
from batchops.state.postgres import PostgresWriter
from tests import statedb
from tests.projects import rows, run_cli, write_project
from tests.test_review14 import _waiting_backends, assert_push_to_localhost_refused_as_same


def _open_in_thread(dsn: str, jobs: list[str]) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["writer"] = PostgresWriter.open(dsn, "apply", jobs=jobs, lock_timeout=0.0)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_taking_over_a_stale_lease_whose_write_hangs_does_not_hold_every_other_runner(
    pg_dsn: str,
) -> None:
    """Runner A (job `other`) is cut off mid-write: its transaction stays open on the server for
    hours, holding FOR KEY SHARE on its lease row, and its keeper can no longer renew, so the
    lease expires. Runner B then opens job `other` (no --lock-timeout): the lease reads stale,
    and the takeover's `select ... for update` waits for A's transaction, with no end, while B
    holds the advisory lock of every open. So B never fails "at once naming the holder"
    (DESIGN §6.5), and runner C's apply of the unrelated job `demo` waits behind B as well:
    review 14's defect, back as soon as anyone runs the cut-off runner's job again. Expected:
    B is refused at once (LockHeld naming A's lock: its write is still under way) and C opens."""
    runner_a = PostgresWriter.open(pg_dsn, "apply", jobs=["other"], seconds=1.0)
    lock_id = runner_a.held.lock_id
    cut_off = psycopg.connect(pg_dsn)  # A's write, its transaction left open
    threads: list[threading.Thread] = []
    opened: list[dict] = []
    try:
        cut_off.execute("select 1 from leases where lock_id = %s for key share", [lock_id])
        time.sleep(1.5)  # A's lease expires unrenewed
        b_thread, b = _open_in_thread(pg_dsn, ["other"])
        threads.append(b_thread)
        opened.append(b)
        b_thread.join(timeout=5)
        b_done = not b_thread.is_alive()
        c_thread, c = _open_in_thread(pg_dsn, ["demo"])
        threads.append(c_thread)
        opened.append(c)
        c_thread.join(timeout=5)
        c_done = not c_thread.is_alive()
        waiting = _waiting_backends(pg_dsn)
    finally:
        cut_off.rollback()
        cut_off.close()
        for thread in threads:
            thread.join(timeout=10)
        for result in opened:
            if "writer" in result:
                result["writer"].close()
        runner_a.close()
    assert waiting == [], "runners left waiting on a lock behind the cut-off write"
    assert b_done, "apply --job other (no --lock-timeout) still waiting after 5 s"
    assert c_done, "apply --job demo still waiting behind job other's takeover after 5 s"
    assert "writer" in c, c.get("error")
    assert isinstance(b.get("error"), LockHeld), b
    assert lock_id in str(b["error"]), b["error"]


def test_push_of_a_never_written_postgres_state_onto_itself_is_refused_as_the_same_state(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> None:
    """`_same` tells one PostgreSQL state spelled two ways by (lineage, write id), but only when
    a write id exists. A state opened for writing (the schema made) but never written has a lineage and no
    write id, so the same database under `localhost` for `127.0.0.1` is taken for another
    state: the push opens the source for writing, then the destination, and fails saying the
    state is locked by the push itself. A copy always gets a write id of its own, so one
    lineage with no write id on both sides is one state: refused as the same state."""
    write_project(tmp_path, rows(2))
    PostgresWriter.open(pg_dsn, "state migrate").close()  # opened, never written
    before = statedb.rows(pg_dsn, "select key, value from meta order by key")
    assert "lineage" in dict(before) and "write_id" not in dict(before), before
    assert_push_to_localhost_refused_as_same(tmp_path, emulator, pg_dsn, before)


def test_a_saved_plan_is_made_with_the_users_umask_not_world_readable(
    tmp_path: Path, emulator: str
) -> None:
    """A saved plan carries every request it will submit: the prompts with the project's rows.
    Before review 13 it was made by `open` (0666 less the umask: 0600 under `umask 077`); the
    mkstemp change sets 0644 on it whatever the umask, so a user (or a CI image) keeping its
    files private by umask finds the data readable by every account on the runner. Expected:
    the mode `open` would give (0666 & ~umask), as the plan had before."""
    import os
    import stat

    write_project(tmp_path, rows(2))
    old = os.umask(0o077)
    try:
        out = run_cli(tmp_path, emulator, "plan", "-o", "plan.jsonl", state=tmp_path / "s.db")
    finally:
        os.umask(old)
    assert out.returncode == 0, out.stderr
    mode = stat.S_IMODE((tmp_path / "plan.jsonl").stat().st_mode)
    assert mode == 0o600, oct(mode)


def test_an_sslpassword_in_the_state_url_is_not_shown() -> None:
    """libpq takes two secrets in a URL: `password` and `sslpassword` (the passphrase of the
    client key `sslkey`, as CI runners using certificates pass it). `redact` takes out only
    `password=`, so every line naming the state (status, errors, the lock message) prints the
    key's passphrase into the CI log. Expected: left out as `password=` is, the rest kept."""
    from batchops.state.postgres import redact

    url = "postgresql://ci@db.internal:5432/state?sslkey=/run/ci.key&sslpassword=hunter22xy"
    assert redact(url) == "postgresql://ci@db.internal:5432/state?sslkey=/run/ci.key"
