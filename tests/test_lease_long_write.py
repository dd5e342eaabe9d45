"""A SQLite write longer than the lease (a slow disk, a large harvest or copy): the lease's
renewal, on its own connection, waits for the write's lock like everyone else, so the lease
looked unrenewed when the write committed, and a same-job apply waiting for it took it over from
a live holder, whose next write was then refused. A write that holds a lease renews it as it
commits."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from batchops.errors import LockHeld
from batchops.state import open_writer

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_live_holder_of_a_write_longer_than_its_lease_keeps_its_lease(
    state_location, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the renewal was never held back: the write locks its lease's row only as
    it ends, FOR KEY SHARE, which an update of the expiry does not wait for."""
    monkeypatch.setenv("BATCHOPS_LEASE_SECONDS", "1")
    location = state_location
    holder = open_writer(location, "apply", jobs=["demo"])
    started = threading.Event()

    def slow_rows():
        started.set()
        time.sleep(2.5)  # the write outlasts the lease: no renewal can land meanwhile
        return
        yield

    outcome: list[object] = []

    def waiting_apply() -> None:
        started.wait()
        try:
            open_writer(location, "apply", jobs=["demo"], lock_timeout=1.5).close()
            outcome.append("taken over")
        except LockHeld as exc:
            outcome.append(exc)

    other = threading.Thread(target=waiting_apply)
    try:
        other.start()
        holder.store_harvest("msgbatch_none", slow_rows(), canceled_by_us=False, now=NOW)
        other.join()
        (got,) = outcome
        assert isinstance(got, LockHeld), "a live holder's lease was taken over"
        assert not holder.lease_lost
        holder.record_plan_applied("after-the-long-write", NOW)  # still ours: it writes
    finally:
        other.join()
        holder.close()
