"""Leases on both backends (DESIGN §6.5): a writer whose leases were taken over writes nothing
more; a holder is judged by its pid only on its own machine (host, PID namespace and boot);
pending migrations take the whole state; a takeover is reported once, when it is committed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from batchops.errors import LockHeld
from batchops.state import force_unlock, open_reader, open_writer
from batchops.state.leases import holder_alive, holder_gone, holder_where, me, pid_namespace
from batchops.state.records import LockInfo
from tests import statedb
from tests.projects import rows, run_cli, write_project

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LONG_AGO = "2000-01-01T00:00:00Z"
FAR_AHEAD = "2999-01-01T00:00:00Z"
INSERT_LEASE = (
    "insert into leases (lock_id, pid, host, since, command, name, expires_at, pid_ns, started)"
    " values (?, ?, ?, '2026-01-01T00:00:00Z', 'apply', ?, ?, ?, ?)"
)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def _serial(location) -> str:
    return statedb.rows(location, "select value from meta where key = 'serial'")[0][0]


# ---------------------------------------------------------------- a writer taken over
def test_a_writer_whose_leases_were_taken_over_writes_nothing(
    state_location, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHOPS_LEASE_SECONDS", "1")
    stalled = open_writer(state_location, "apply", jobs=["demo", "other"])
    successor = None
    try:
        stalled.stop_keeper()  # frozen: nothing renews its leases
        time.sleep(1.5)
        taken: list[LockInfo] = []
        successor = open_writer(state_location, "apply", jobs=["demo"], on_takeover=taken.append)
        # one lock id on two jobs: one takeover, naming both, and both leases gone
        assert [(t.lock_id, t.name) for t in taken] == [
            (stalled.held.lock_id, "job:demo,job:other")
        ]
        before = _serial(state_location)
        with pytest.raises(LockHeld, match=r"was taken over while this apply ran") as caught:
            stalled.record_plan_applied("plan-of-the-stalled", NOW)
        assert caught.value.problems == [
            f"{stalled.location}: the state's lease ({stalled.held.lock_id} on job:demo,job:other)"
            " was taken over while this apply ran (it stalled past the lease's expiry): nothing"
            " more was written; run apply again"
        ]
        assert stalled.lease_lost  # told at once, as its keeper's beat would
        assert _serial(state_location) == before
        assert statedb.rows(state_location, "select plan_id from applied_plans") == []
        successor.record_plan_applied("plan-of-the-successor", NOW)  # the successor writes
    finally:
        stalled.close()  # releases nothing of the successor's
    try:
        reader = open_reader(state_location)
        try:
            assert {lease.lock_id for lease in reader.leases()} == {successor.held.lock_id}
        finally:
            reader.close()
    finally:
        successor.close()


def test_writers_without_leases_and_live_holders_write_as_before(state_location) -> None:
    holder = open_writer(state_location, "apply", jobs=["demo"])
    try:
        holder.record_plan_applied("p1", NOW)
        held, holder.held = holder.held, None  # a writer holding no lease: nothing to check
        try:
            holder.record_plan_applied("p2", NOW)
        finally:
            holder.held = held
    finally:
        holder.close()
    assert statedb.rows(state_location, "select plan_id from applied_plans order by 1") == [
        ("p1",),
        ("p2",),
    ]


def test_a_takeover_under_way_holds_a_write_back_and_the_write_is_refused(pg_dsn: str) -> None:
    """The check locks the writer's lease row: a takeover that holds it (FOR UPDATE, deleting)
    makes the write wait for its commit, after which the write finds the lease gone."""
    import psycopg

    writer = open_writer(pg_dsn, "apply", jobs=["demo"])
    outcome: list[BaseException | None] = []

    def write() -> None:
        try:
            writer.record_plan_applied("p1", NOW)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (handed to the test's thread)
            outcome.append(exc)

    try:
        with psycopg.connect(pg_dsn) as taker:  # one transaction, committed on leaving
            taker.execute("select * from leases for update")
            taker.execute("delete from leases where lock_id = %s", [writer.held.lock_id])
            thread = threading.Thread(target=write)
            thread.start()
            thread.join(1.0)
            assert thread.is_alive(), f"the write did not wait for the takeover: {outcome}"
        thread.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], LockHeld), outcome
        assert statedb.rows(pg_dsn, "select plan_id from applied_plans") == []
    finally:
        writer.close()


# ---------------------------------------------------------------- judging a holder by its pid
def _lease(**fields) -> LockInfo:
    _, host, _, _ = me()
    base = LockInfo("l1", _dead_pid(), host, "", "apply", "job:demo", FAR_AHEAD, holder_where())
    return replace(base, **fields)


@pytest.mark.skipif(" boot:" not in holder_where(), reason="no boot id on this system")
def test_a_holder_is_judged_by_its_pid_only_on_this_machine_since_its_boot() -> None:
    pid, _, _, started = me()
    another_boot = pid_namespace() + " boot:00000000-0000-0000-0000-000000000000"
    assert holder_gone(_lease())  # here, dead: known at once
    assert not holder_gone(_lease(pid_ns=another_boot))  # another machine, or another boot
    assert not holder_gone(_lease(pid_ns=pid_namespace()))  # an older batchops: no boot id
    assert not holder_gone(_lease(host="elsewhere"))
    assert holder_alive(_lease(pid=pid, started=started))
    assert not holder_alive(_lease(pid=pid, started=started, pid_ns=another_boot))
    # an older batchops's lease of this host and namespace still refuses a force-unlock
    assert holder_alive(_lease(pid=pid, started=started, pid_ns=pid_namespace()))


def test_a_lease_records_the_machine_it_was_taken_on(state_location) -> None:
    writer = open_writer(state_location, "apply", jobs=["demo"])
    try:
        assert statedb.rows(state_location, "select pid_ns from leases") == [(holder_where(),)]
    finally:
        writer.close()


@pytest.mark.skipif(" boot:" not in holder_where(), reason="no boot id on this system")
def test_only_a_lease_of_this_machine_is_taken_over_for_its_dead_pid(state_location) -> None:
    open_writer(state_location, "migrate").close()
    pid, host = _dead_pid(), me()[1]
    another_boot = pid_namespace() + " boot:00000000-0000-0000-0000-000000000000"
    statedb.rows(state_location, INSERT_LEASE,
                 ["elsewhere", pid, host, "job:demo", FAR_AHEAD, another_boot, "1"])  # fmt: skip
    with pytest.raises(LockHeld, match="lock elsewhere held by pid"):
        open_writer(state_location, "apply", jobs=["demo"])
    statedb.rows(state_location, "delete from leases")
    statedb.rows(state_location, INSERT_LEASE,
                 ["here", pid, host, "job:demo", FAR_AHEAD, holder_where(), "1"])  # fmt: skip
    taken: list[LockInfo] = []
    open_writer(state_location, "apply", jobs=["demo"], on_takeover=taken.append).close()
    assert [t.lock_id for t in taken] == ["here"]


# ---------------------------------------------------------------- migrations take `*`
def _one_migration_short(location) -> None:
    """The state as the previous batchops left it: its last migration not applied."""
    if str(location).startswith("postgresql://"):
        statedb.rows(location, "delete from _batchops_migrations"
                     " where name = 'm0008_attempts_room_to_settle'")  # fmt: skip
        statedb.rows(location, "alter table attempts reset (fillfactor)")
    else:
        statedb.rows(location, "delete from _sqlite_migrations"
                     " where name = 'm0008_attempts_room_to_settle'")  # fmt: skip


def _migrated(location) -> bool:
    postgres = str(location).startswith("postgresql://")
    table = "_batchops_migrations" if postgres else "_sqlite_migrations"
    sql = f"select 1 from {table} where name = 'm0008_attempts_room_to_settle'"
    return bool(statedb.rows(location, sql))


def test_a_pending_migration_waits_for_every_jobs_lease(state_location) -> None:
    open_writer(state_location, "migrate").close()
    other = open_writer(state_location, "apply", jobs=["other"])
    _one_migration_short(state_location)
    try:
        with pytest.raises(LockHeld) as caught:
            open_writer(state_location, "apply", jobs=["demo"])
        assert caught.value.problems == [
            f"{other.location}: state is locked: {other.held.describe()}; the state's schema"
            " needs upgrading (migration m0008_attempts_room_to_settle), which takes the whole"
            " state: wait for it (--lock-timeout), or run `batchops state migrate` once it is free"
        ]
        assert not _migrated(state_location)
        timer = threading.Timer(1.0, force_unlock, [state_location, other.held.lock_id])
        timer.start()
        try:  # waited for: migrated once job other's apply is done, then job demo's lease
            writer = open_writer(state_location, "apply", jobs=["demo"], lock_timeout=20)
        finally:
            timer.join()
        try:
            assert _migrated(state_location)
            assert [lease.name for lease in writer.leases()] == ["job:demo"]
        finally:
            writer.close()
    finally:
        other.close()


# ---------------------------------------------------------------- takeovers reported once
def test_a_takeover_is_reported_once_and_only_once_committed(state_location) -> None:
    open_writer(state_location, "migrate").close()
    statedb.rows(state_location, INSERT_LEASE,
                 ["stale", 4242, "ci-runner-7", "job:demo", LONG_AGO, "pid:[1]", "9"])  # fmt: skip
    other = open_writer(state_location, "apply", jobs=["other"])
    taken: list[LockInfo] = []
    try:
        with pytest.raises(LockHeld):  # never got: nothing taken over, nothing said
            open_writer(state_location, "apply", jobs=["demo", "other"], lock_timeout=0.6,
                        on_takeover=taken.append)  # fmt: skip
        assert taken == []
        reader = open_reader(state_location)
        try:
            assert {lease.lock_id for lease in reader.leases()} == {"stale", other.held.lock_id}
        finally:
            reader.close()
        timer = threading.Timer(1.0, force_unlock, [state_location, other.held.lock_id])
        timer.start()
        try:
            writer = open_writer(state_location, "apply", jobs=["demo", "other"],
                                 lock_timeout=20, on_takeover=taken.append)  # fmt: skip
        finally:
            timer.join()
        writer.close()
    finally:
        other.close()
    assert [t.lock_id for t in taken] == ["stale"]


# ---------------------------------------------------------------- the takeover message
def test_the_takeover_message_gives_its_reason(tmp_path, emulator, state_location) -> None:
    write_project(tmp_path, rows(1))
    open_writer(state_location, "migrate").close()
    statedb.rows(state_location, INSERT_LEASE,
                 ["expired", 4242, "ci-runner-7", "job:demo", LONG_AGO, "pid:[1]", "9"])  # fmt: skip
    out = run_cli(tmp_path, emulator, "apply", "--yes", "--job", "demo", state=state_location)
    assert out.returncode == 0, out.stderr
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("Taking over")]
    assert line.startswith(
        "Taking over a lock left by process 4242 on ci-runner-7, whose lease expired unrenewed"
        f" at {LONG_AGO}; if that process still runs, its next write is refused (lock expired "
    ), line
    if " boot:" not in holder_where():
        return
    pid = _dead_pid()
    statedb.rows(state_location, INSERT_LEASE,
                 ["dead", pid, me()[1], "job:demo", FAR_AHEAD, holder_where(), "1"])  # fmt: skip
    out = run_cli(tmp_path, emulator, "apply", "--yes", "--job", "demo", state=state_location)
    assert out.returncode == 0, out.stderr
    assert f"Taking over a lock left by process {pid}, which is no longer running on this host" in (
        out.stdout
    )
