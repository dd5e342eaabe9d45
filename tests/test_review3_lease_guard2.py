"""Second read of the lease guard (0dbe7e7), DESIGN §6.5 and §6.12: each test failed on the code
as it was read.

- A copy (`state pull`/`state push`) loads its destination outside `_transaction`: a destination
  whose lease was taken over while it stalled overwrites the successor's state anyway.
- A takeover is now reported after its commit, outside the transaction: a signal (a cancelled CI
  job) or any error while the note is given leaves the new lease committed and no writer to
  release it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from batchops.errors import Interrupted, LockHeld
from batchops.state import open_writer
from batchops.state.records import LockInfo
from tests import statedb

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LONG_AGO = "2000-01-01T00:00:00Z"
INSERT_LEASE = (
    "insert into leases (lock_id, pid, host, since, command, name, expires_at, pid_ns, started)"
    " values (?, ?, ?, '2026-01-01T00:00:00Z', 'apply', ?, ?, ?, ?)"
)


def test_a_pull_whose_destination_lease_was_taken_over_writes_nothing(
    tmp_path, state_location, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_path = tmp_path / "source.db"
    seed = open_writer(source_path, "apply", jobs=["demo"])
    try:
        seed.record_plan_applied("plan-of-the-source", NOW)
    finally:
        seed.close()
    monkeypatch.setenv("BATCHOPS_LEASE_SECONDS", "1")
    source = open_writer(source_path, "state pull")
    destination = open_writer(state_location, "state pull")
    successor = None
    dump = source.dump_tables()
    try:
        destination.stop_keeper()  # stalled (a paused runner): nothing renews its `*` lease
        time.sleep(1.5)
        taken: list[LockInfo] = []
        successor = open_writer(state_location, "apply", jobs=["demo"], on_takeover=taken.append)
        assert [t.lock_id for t in taken] == [destination.held.lock_id]
        with pytest.raises(LockHeld, match="was taken over"):
            destination.load_tables(dump, expected=source.table_counts())
    finally:
        dump.close()
        source.close()
        destination.close()
        if successor is not None:
            successor.close()
    # the stalled copy wrote nothing under the apply that took the state over
    assert statedb.rows(state_location, "select plan_id from applied_plans") == []


def test_a_signal_while_a_takeover_is_told_leaves_no_lease(state_location) -> None:
    open_writer(state_location, "migrate").close()
    statedb.rows(state_location, INSERT_LEASE,
                 ["stale", 4242, "ci-runner-7", "job:demo", LONG_AGO, "pid:[1]", "9"])  # fmt: skip

    def told(_: LockInfo) -> None:
        raise Interrupted(15)  # SIGTERM (a cancelled CI job) while the note is written

    with pytest.raises(Interrupted):
        open_writer(state_location, "apply", jobs=["demo"], on_takeover=told)
    # nothing holds the state now: the next apply (on another runner) must not find it locked
    assert statedb.rows(state_location, "select lock_id, pid from leases") == []
