"""Review of the team state on PostgreSQL shared by several CI runners at once (DESIGN §6.2,
§6.3, §6.5, §6.6, §6.12): leases, their takeover and renewal, concurrent applies of different
jobs, saved plans beside a teammate's apply. Real batchops processes against the emulator on
loopback and a throwaway PostgreSQL (tests/pgserver.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchops.clock import iso
from batchops.errors import LockHeld
from batchops.plan.actions import SubmitItem
from batchops.state import open_writer
from batchops.state.leases import me
from tests import statedb
from tests.projects import API_KEY, rows, run_cli, write_project

OTHER_JOB = (
    "\n[jobs.other]\n"
    'model = "claude-haiku-4-5"\n'
    "max_tokens = 16\n"
    'prompt = "Summarise: {{ text }}"\n'
    'input = { path = "data/rows.jsonl", key = "id" }\n'
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _item(key: str, fingerprint: str = "sha256:" + "0" * 64) -> SubmitItem:
    return SubmitItem("demo", key, f"demo-{key}-0", fingerprint, "todo", 1, 0.0)


def _apply_waiting(tmp_path: Path, emulator: str, pg_dsn: str) -> subprocess.Popen:
    """`apply --yes --wait` on the PostgreSQL state, as a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchops", "apply", "--yes", "--wait", "--poll-interval", "0.3"],
        cwd=tmp_path,
        env=_env(emulator, pg_dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _server_now(dsn: str) -> datetime:
    return statedb.rows(dsn, "select now()")[0][0].astimezone(UTC)


def _env(emulator: str, dsn: str | None, **extra: str) -> dict[str, str]:
    """A child's environment: the emulator's URL and key, the state at `dsn` (None: the
    project's own), and `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        ANTHROPIC_BASE_URL=emulator,
        ANTHROPIC_API_KEY=API_KEY,
        **({} if dsn is None else {"BATCHOPS_STATE": dsn}),
        **extra,
    )
    return env


# ---------------------------------------------------------------- leases (DESIGN §6.5)
def test_a_writer_whose_lease_was_taken_over_cannot_write_for_its_job(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder that stalls past its lease (a frozen VM, SIGSTOP, a long GC: its heartbeat
    thread stalls with it) is taken over, as designed. When it wakes, nothing but its own
    keeper's next beat stops it: the database takes its writes for the job another runner now
    holds. Its `record_intent` puts demo:r1 in flight a second time, beside the successor's
    intent for it; both then send (two unfinished batches, paid twice)."""
    monkeypatch.setenv("BATCHOPS_LEASE_SECONDS", "1")
    stalled = open_writer(pg_dsn, "apply", jobs=["demo"])
    stalled.stop_keeper()  # frozen: the heartbeat does not beat while the process is stopped
    time.sleep(1.5)
    taken: list = []
    successor = open_writer(pg_dsn, "apply", jobs=["demo"], on_takeover=taken.append)
    try:
        assert [t.lock_id for t in taken] == [stalled.held.lock_id]
        successor.record_intent("intent_successor", "demo", [_item("r1")], 0, NOW)
        wrote = True
        try:
            stalled.record_intent("intent_stalled", "demo", [_item("r1")], 0, NOW)
        except LockHeld:
            wrote = False
        intents = statedb.rows(pg_dsn, "select id from intents where status = 'open' order by id")
        assert not wrote, (
            "the state took a write for job demo from a writer whose lease was taken over: "
            f"open intents for demo:r1 now {intents}"
        )
    finally:
        successor.close()
        stalled.close()


def test_a_live_lease_of_a_machine_with_the_same_host_name_is_not_taken_over(
    pg_dsn: str,
) -> None:
    """Two runners on two machines with one host name (VMs cloned from one image, `runner`,
    `localhost`; containers given the same --hostname on fresh hosts) both in the initial PID
    namespace, whose id `pid:[4026531836]` is the same on every Linux machine. The second
    judges the first's pid against its own process table: not found here, so "provably dead",
    and a lease renewed a moment ago, 100 s from expiry, is taken over at once."""
    open_writer(pg_dsn, "migrate").close()
    _, host, namespace, _ = me()
    dead_here = 2**22 - 7  # no such pid on this machine; alive on the other one
    until = iso(_server_now(pg_dsn) + timedelta(seconds=100))
    statedb.rows(
        pg_dsn,
        "insert into leases (lock_id, pid, host, since, command, name, expires_at, pid_ns,"
        " started) values ('other-machine', ?, ?, ?, 'apply', 'job:demo', ?, ?, '4242')",
        [dead_here, host, iso(_server_now(pg_dsn)), until, namespace],
    )
    taken: list = []
    try:
        writer = open_writer(pg_dsn, "apply", jobs=["demo"], on_takeover=taken.append)
    except LockHeld:
        return
    writer.close()
    raise AssertionError(
        f"a lease renewed until {until} by a runner on another machine named {host!r} "
        f"({namespace}) was taken over as dead: {taken}"
    )


def test_a_lease_taken_over_for_its_expiry_is_not_said_to_be_of_a_dead_process(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> None:
    """A lease from another host is taken over only because it expired: its holder may still
    run (stalled, or cut off from the database). The message tells the user it is "no longer
    running", which batchops cannot know, and which sends nobody to look at the other runner."""
    write_project(tmp_path, rows(1))
    open_writer(pg_dsn, "migrate").close()
    statedb.rows(
        pg_dsn,
        "insert into leases (lock_id, pid, host, since, command, name, expires_at, pid_ns,"
        " started) values ('l1', 4242, 'ci-runner-7', '2026-01-01T00:00:00Z', 'apply',"
        " 'job:demo', '2026-01-01T00:02:00Z', 'pid:[4026531836]', '99')",
    )
    out = run_cli(tmp_path, emulator, "apply", "--yes", "--job", "demo", state=pg_dsn)
    assert out.returncode == 0, out.stderr
    assert "Taking over a lock left by process 4242" in out.stdout, out.stdout
    assert "no longer running" not in out.stdout, (
        "an expired lease of a process on another host is reported as a dead process: "
        + out.stdout.splitlines()[0]
    )


# ---------------------------------------------------------------- different jobs at once
def test_two_applies_of_different_jobs_run_at_once_and_keep_each_others_writes(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """DESIGN §6.5: applies of different jobs run at once (both leases held together), from an
    empty database that both create, both succeed, each sends its own items once, neither loses the other's rows; afterwards a
    plain apply sends nothing."""
    emulator_admin.set_config(processing_seconds=2)
    write_project(tmp_path, rows(6), extra=OTHER_JOB)  # on an empty database: both create it
    outcomes: dict[str, subprocess.CompletedProcess] = {}

    def run(job: str) -> None:
        outcomes[job] = run_cli(
            tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.1",
            "--job", job, state=pg_dsn,
        )  # fmt: skip

    threads = [threading.Thread(target=run, args=(job,)) for job in ("demo", "other")]
    for t in threads:
        t.start()
    most = 0
    while any(t.is_alive() for t in threads):
        if statedb.rows(pg_dsn, "select to_regclass('leases') is not null")[0][0]:
            leases = statedb.rows(pg_dsn, "select count(distinct lock_id) from leases")
            most = max(most, leases[0][0])
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert {j: o.returncode for j, o in outcomes.items()} == {"demo": 0, "other": 0}, {
        j: o.stderr for j, o in outcomes.items()
    }
    assert most == 2, "the two applies never held their leases at the same time"
    submissions = emulator_admin.stats()["submissions"]
    assert len(submissions) == 12 and set(submissions.values()) == {1}, submissions
    assert statedb.rows(
        pg_dsn,
        "select job, count(*) from items where outcome = 'succeeded'"
        " and inflight_attempt is null group by job order by job",
    ) == [("demo", 6), ("other", 6)]
    assert statedb.rows(pg_dsn, "select count(*) from leases") == [(0,)]
    serial = statedb.rows(pg_dsn, "select value from meta where key = 'serial'")[0][0]
    again = run_cli(tmp_path, emulator, "apply", "--yes", state=pg_dsn)
    assert again.returncode == 0, again.stderr
    assert len(emulator_admin.stats()["submissions"]) == 12
    assert statedb.rows(pg_dsn, "select value from meta where key = 'serial'")[0][0] == serial


def test_a_saved_plan_of_one_job_is_refused_after_another_jobs_apply(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """DESIGN §6.6 as written: the serial is the whole state's, so a plan saved for job demo
    is refused once job other's apply wrote, before anything is sent."""
    write_project(tmp_path, rows(2), extra=OTHER_JOB)
    made = run_cli(tmp_path, emulator, "plan", "--job", "demo", "-o", "demo.plan", state=pg_dsn)
    assert made.returncode in (0, 2), made.stderr
    other = run_cli(tmp_path, emulator, "apply", "--yes", "--job", "other", state=pg_dsn)
    assert other.returncode == 0, other.stderr
    sent = dict(emulator_admin.stats()["submissions"])
    out = run_cli(tmp_path, emulator, "apply", "demo.plan", "--yes", state=pg_dsn)
    assert out.returncode == 1, out.stdout
    assert "state changed since the plan was made" in out.stderr, out.stderr
    assert emulator_admin.stats()["submissions"] == sent


# ---------------------------------------------------------------- the holder's connection
def test_a_holder_whose_connection_is_terminated_mid_wait_releases_its_lease(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """`pg_terminate_backend` of the apply's connection while it waits for its batch: one
    error line, exit 1, and no lease left behind for the next runner to wait out."""
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(2))
    open_writer(pg_dsn, "migrate").close()
    proc = _apply_waiting(tmp_path, emulator, pg_dsn)
    try:
        deadline = time.monotonic() + 30
        while not statedb.rows(pg_dsn, "select 1 from batches"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        err = _cut_off(proc, pg_dsn)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert len(err.splitlines()) == 1 and "connection to PostgreSQL was lost" in err, err
    assert statedb.rows(pg_dsn, "select lock_id from leases") == []
    assert len(emulator_admin.stats()["submissions"]) == 2


def test_sigterm_during_wait_on_postgres_exits_143_and_releases_the_lease(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """DESIGN §6.12 on PostgreSQL, between statements (the --wait loop): exit 143, the lease
    released, the batch in flight recorded and named."""
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(2))
    proc = _apply_waiting(tmp_path, emulator, pg_dsn)
    try:
        deadline = time.monotonic() + 30
        while not (statedb.exists(pg_dsn) and statedb.rows(pg_dsn, "select id from batches")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert statedb.rows(pg_dsn, "select lock_id from leases") == []
    (batch_id,) = statedb.rows(pg_dsn, "select id from batches")[0]
    assert batch_id in out + err


def test_an_apply_that_lost_its_lease_while_stopped_stops_writing_once_it_resumes(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """An `apply --wait` frozen (SIGSTOP, a paused VM) past its lease is taken over by a
    teammate's apply, as designed. Resumed, its keeper finds the lease gone (`lease_lost`), but
    only the evaluator looks at that, before a step: the wait loop goes on polling with no lease
    at all for as long as its batch runs, and when the batch ends its refresh writes the batch
    row (`save_batch`) before the evaluator's check stops it."""
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(2))
    open_writer(pg_dsn, "migrate").close()
    env = _env(emulator, pg_dsn, BATCHOPS_LEASE_SECONDS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchops", "apply", "--yes", "--wait", "--poll-interval", "0.2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not statedb.rows(pg_dsn, "select 1 from batches"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.6)  # past its lease
        teammate = run_cli(
            tmp_path, emulator, "apply", "--yes", "--job", "demo", state=pg_dsn,
            env={"BATCHOPS_LEASE_SECONDS": "1"},
        )  # fmt: skip
        assert teammate.returncode == 0, teammate.stderr
        assert "Taking over a lock" in teammate.stdout, teammate.stdout
        proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)  # several beats of its keeper: it has found its lease gone
        still_running = proc.poll() is None
        before = statedb.rows(pg_dsn, "select value from meta where key = 'serial'")[0][0]
        emulator_admin.advance_clock(3700)  # its batch ends
        out, err = proc.communicate(timeout=30)
        after = statedb.rows(pg_dsn, "select value from meta where key = 'serial'")[0][0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert after == before, (
        f"the apply whose lease was taken over (still running 1.5 s after it resumed: "
        f"{still_running}) wrote the state with no lease when its batch ended (serial {before}"
        f" → {after}); it ended with: {err.strip()}"
    )


def test_a_second_apply_of_the_same_job_on_postgres_fails_at_once_or_waits(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """DESIGN §6.5 through the command line: at once, one error line naming the holder's pid,
    host and since; with --lock-timeout, it waits for the holder's release and then applies."""
    write_project(tmp_path, rows(2))
    holder = open_writer(pg_dsn, "apply", jobs=["demo"])
    held = holder.held
    try:
        started = time.monotonic()
        out = run_cli(tmp_path, emulator, "apply", "--yes", "--job", "demo", state=pg_dsn)
        took = time.monotonic() - started
    except BaseException:
        holder.close()
        raise
    assert out.returncode == 1, out.stdout
    assert took < 10, f"took {took:.1f} s"
    (line,) = out.stderr.splitlines()
    for part in (f"pid {held.pid}", f"on {held.host}", f"since {held.since}", "job:demo"):
        assert part in line, line
    timer = threading.Timer(1.0, holder.close)
    timer.start()
    try:
        waited = run_cli(
            tmp_path, emulator, "apply", "--yes", "--job", "demo", "--lock-timeout", "30",
            state=pg_dsn,
        )  # fmt: skip
    finally:
        timer.join()
    assert waited.returncode == 0, waited.stderr
    assert len(emulator_admin.stats()["submissions"]) == 2


def test_state_push_and_pull_refuse_while_a_job_lease_is_held(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> None:
    """A copy takes the whole state: while a runner holds job demo's lease, `state push` from
    and `state pull --force` into the PostgreSQL state fail naming the holder, writing
    nothing (no snapshot file, no rows replaced)."""
    write_project(tmp_path, rows(2))
    first = run_cli(tmp_path, emulator, "apply", "--yes", state=pg_dsn)
    assert first.returncode == 0, first.stderr
    snap = tmp_path / "snap.db"
    before = statedb.rows(pg_dsn, "select key, value from meta order by key")
    holder = open_writer(pg_dsn, "apply", jobs=["demo"])
    try:
        push = run_cli(tmp_path, emulator, "state", "push", str(snap), state=pg_dsn)
        assert push.returncode == 1, push.stdout
        assert f"pid {holder.held.pid}" in push.stderr and "job:demo" in push.stderr, push.stderr
        assert not snap.exists()
        sqlite_state = tmp_path / "other.db"
        made = run_cli(tmp_path, emulator, "apply", "--yes", state=sqlite_state)
        assert made.returncode == 0, made.stderr
        pull = run_cli(
            tmp_path, emulator, "state", "pull", "--force", str(sqlite_state), state=pg_dsn
        )
        assert pull.returncode == 1, pull.stdout
        assert f"pid {holder.held.pid}" in pull.stderr, pull.stderr
    finally:
        holder.close()
    assert statedb.rows(pg_dsn, "select key, value from meta order by key") == before


def test_a_job_apply_does_not_migrate_the_schema_under_another_jobs_running_apply(
    pg_dsn: str,
) -> None:
    """Migrations take the whole state (`batchops.state.leases`: "`*` for the whole state (an
    apply of every job, state surgery, migrations)"). On PostgreSQL an `apply --job demo` of a
    newer batchops runs them holding job demo's lease alone, under a runner that is applying
    job other with the older schema."""
    open_writer(pg_dsn, "migrate").close()
    other = open_writer(pg_dsn, "apply", jobs=["other"])  # a live runner on job other
    # the state as the previous batchops (the one running job other) knows it: one migration short
    statedb.rows(
        pg_dsn, "delete from _batchops_migrations where name = 'm0008_attempts_room_to_settle'"
    )
    statedb.rows(pg_dsn, "alter table attempts reset (fillfactor)")
    try:
        try:
            writer = open_writer(pg_dsn, "apply", jobs=["demo"])
        except LockHeld:
            writer = None
        if writer is not None:
            writer.close()
        applied = statedb.rows(
            pg_dsn,
            "select name from _batchops_migrations where name = 'm0008_attempts_room_to_settle'",
        )
    finally:
        other.close()
    assert writer is None and not applied, (
        "the schema was migrated by an apply holding only job demo's lease while job other's "
        f"apply held its own: {applied}"
    )


def test_plan_against_postgres_never_writes_even_beside_a_lease_holder(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """DESIGN §6.1 on PostgreSQL: `plan` (refreshing a batch that ended remotely, saving a plan)
    and `status` leave every table as it was, while another runner holds the job's lease."""
    emulator_admin.set_config(processing_seconds=3600)
    write_project(tmp_path, rows(3))
    first = run_cli(tmp_path, emulator, "apply", "--yes", state=pg_dsn)
    assert first.returncode == 0, first.stderr
    emulator_admin.advance_clock(3700)  # the batch ended remotely, not harvested
    tables = ("meta", "items", "attempts", "intents", "batches", "results", "applied_plans")

    def dump() -> dict[str, list]:
        return {t: sorted(map(repr, statedb.rows(pg_dsn, f"select * from {t}"))) for t in tables}

    holder = open_writer(pg_dsn, "apply", jobs=["demo"])
    try:
        before = dump()
        for args in (("plan",), ("plan", "-o", "p.plan"), ("plan", "--json"), ("status",)):
            out = run_cli(tmp_path, emulator, *args, state=pg_dsn)
            assert out.returncode in (0, 2), (args, out.stderr)
        assert "harvest" in run_cli(tmp_path, emulator, "plan", state=pg_dsn).stdout.lower()
        assert dump() == before
    finally:
        holder.close()


def _apply_in_a_slow_create(tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str):
    """An `apply --yes` (1 s leases) whose create the emulator holds 3 s; returned once its
    intent is committed (the create in flight)."""
    emulator_admin.add_faults([{"kind": "slow", "delay_seconds": 3.0, "endpoint": "create"}])
    write_project(tmp_path, rows(3))
    open_writer(pg_dsn, "migrate").close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchops", "apply", "--yes"],
        cwd=tmp_path,
        env=_env(emulator, pg_dsn, BATCHOPS_LEASE_SECONDS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not statedb.rows(pg_dsn, "select 1 from intents"):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"no intent was recorded: {proc.communicate()}")
        time.sleep(0.05)
    return proc


def test_a_live_holder_in_a_create_longer_than_its_lease_is_never_taken_over(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN §6.5: a step that outlives the lease (a 3 s create, 1 s leases) is renewed
    meanwhile: another runner trying the job all along is refused every time, never takes over."""
    monkeypatch.setenv("BATCHOPS_LEASE_SECONDS", "1")
    proc = _apply_in_a_slow_create(tmp_path, emulator, emulator_admin, pg_dsn)
    refused = 0
    taken: list = []
    try:
        while proc.poll() is None:
            try:  # once the apply released its lease (ending), this opens: no takeover
                open_writer(pg_dsn, "apply", jobs=["demo"], on_takeover=taken.append).close()
            except LockHeld:
                refused += 1
            time.sleep(0.2)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert taken == [] and refused >= 5, (taken, refused)
    assert len(emulator_admin.stats()["submissions"]) == 3


def test_a_connection_dropped_while_a_create_is_in_flight_is_adopted_not_sent_again(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """DESIGN §6.3 with the state's connection dropped (a server restart) between the intent
    and the record of the batch: one error line, exit 1, no lease left; the next apply adopts
    the batch the create made and sends nothing twice."""
    proc = _apply_in_a_slow_create(tmp_path, emulator, emulator_admin, pg_dsn)
    try:
        err = _cut_off(proc, pg_dsn)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err
    assert len(err.splitlines()) == 1 and "connection to PostgreSQL was lost" in err, err
    assert statedb.rows(pg_dsn, "select lock_id from leases") == []
    again = run_cli(
        tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.1", state=pg_dsn
    )
    assert again.returncode == 0, again.stderr
    submissions = emulator_admin.stats()["submissions"]
    assert len(submissions) == 3 and set(submissions.values()) == {1}, submissions
    assert statedb.rows(
        pg_dsn,
        "select count(*) from items where outcome = 'succeeded' and inflight_attempt is null",
    ) == [(3,)]


@pytest.mark.parametrize("skew", [timedelta(days=1), -timedelta(days=1)])
def test_leases_are_judged_by_the_databases_clock_not_the_runners(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, skew: timedelta
) -> None:
    """Runners' clocks differ; the database's is the one every runner shares. A lease another
    host renewed until a minute from now (server time) is held for a runner whose clock runs a
    day ahead; one that expired a second ago (server time) is taken over by a runner a day
    behind."""
    import batchops.clock
    import batchops.state.postgres

    open_writer(pg_dsn, "migrate").close()
    real = batchops.clock.utcnow
    for module in (batchops.clock, batchops.state.postgres):
        monkeypatch.setattr(module, "utcnow", lambda: real() + skew)
    insert = (
        "insert into leases (lock_id, pid, host, since, command, name, expires_at, pid_ns,"
        " started) values (?, 4242, 'ci-runner-7', ?, 'apply', 'job:demo', ?, 'pid:[1]', '9')"
    )
    now = _server_now(pg_dsn)
    statedb.rows(pg_dsn, insert, ["live", iso(now), iso(now + timedelta(seconds=60))])
    with pytest.raises(LockHeld, match="lock live held by pid 4242 on ci-runner-7"):
        open_writer(pg_dsn, "apply", jobs=["demo"])
    statedb.rows(pg_dsn, "delete from leases")
    statedb.rows(pg_dsn, insert, ["stale", iso(now), iso(now - timedelta(seconds=1))])
    taken: list = []
    open_writer(pg_dsn, "apply", jobs=["demo"], on_takeover=taken.append).close()
    assert [t.lock_id for t in taken] == ["stale"]


def test_sigterm_while_waiting_for_a_lease_exits_143_and_writes_nothing(
    tmp_path: Path, emulator: str, emulator_admin, pg_dsn: str
) -> None:
    """SIGTERM (a cancelled CI job) while `apply --lock-timeout` waits for a teammate's lease:
    exit 143 at once, the teammate's lease untouched, nothing sent or written."""
    write_project(tmp_path, rows(2))
    holder = open_writer(pg_dsn, "apply", jobs=["demo"])
    try:
        before = statedb.rows(pg_dsn, "select key, value from meta order by key")
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchops", "apply", "--yes", "--lock-timeout", "120"],
            cwd=tmp_path,
            env=_env(emulator, pg_dsn),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 143, err
        assert statedb.rows(pg_dsn, "select lock_id from leases") == [(holder.held.lock_id,)]
        assert statedb.rows(pg_dsn, "select key, value from meta order by key") == before
    finally:
        holder.close()
    assert emulator_admin.stats()["submissions"] == {}


def test_a_takeover_is_reported_once_when_the_apply_waits_for_another_lease(
    tmp_path: Path, emulator: str, pg_dsn: str
) -> None:
    """`apply --job demo --job other --lock-timeout 30`: demo's lease is stale (its holder on
    another host stopped renewing), other's is live and released 2 s later. The stale one is
    taken over once, when the apply gets both; each try in between rolls its takeover back,
    yet says "Taking over" again: the log shows a takeover every 0.25 s."""
    write_project(tmp_path, rows(1), extra=OTHER_JOB)
    open_writer(pg_dsn, "migrate").close()
    statedb.rows(
        pg_dsn,
        "insert into leases (lock_id, pid, host, since, command, name, expires_at, pid_ns,"
        " started) values ('l1', 4242, 'ci-runner-7', '2026-01-01T00:00:00Z', 'apply',"
        " 'job:demo', '2026-01-01T00:02:00Z', 'pid:[1]', '9')",
    )
    holder = open_writer(pg_dsn, "apply", jobs=["other"])  # its row after the stale one
    timer = threading.Timer(2.0, holder.close)
    timer.start()
    try:
        out = run_cli(
            tmp_path, emulator, "apply", "--yes", "--job", "demo", "--job", "other",
            "--lock-timeout", "30", state=pg_dsn,
        )  # fmt: skip
    finally:
        timer.join()
    assert out.returncode == 0, out.stderr
    said = [line for line in out.stdout.splitlines() if line.startswith("Taking over")]
    assert len(said) == 1, f"{len(said)} takeover messages for one takeover: {said[:2]}"


def _cut_off(proc, pg_dsn: str) -> str:
    """Every connection to the state but this one terminated, as a server restart does; what
    the apply `proc` then wrote to stderr."""
    statedb.rows(
        pg_dsn,
        "select pg_terminate_backend(pid) from pg_stat_activity"
        " where datname = current_database() and pid <> pg_backend_pid()",
    )
    return proc.communicate(timeout=30)[1]
