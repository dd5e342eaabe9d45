"""A lease's holder on this machine, under a /proc mounted with `hidepid` (another user's
processes hidden): its pid answers as alive, its start time cannot be read. That proves
nothing: it used to read as "started at another time" (a reused pid), so the live holder's
lease was taken over, and a force-unlock of it was let through."""

from __future__ import annotations

import builtins
import subprocess
import sys

import pytest

from batchops.errors import LockHeld
from batchops.state import open_writer
from batchops.state.leases import holder_alive, holder_gone, holder_where, me, process_started
from tests import statedb
from tests.test_lease_guard import FAR_AHEAD, INSERT_LEASE, _lease


@pytest.fixture
def other_user_process(monkeypatch: pytest.MonkeyPatch):
    """A live process whose /proc entry this one cannot see (as `hidepid=2` hides another
    user's): (its pid, its start time as its own batchops recorded it)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = process_started(process.pid)
    assert started
    real_open = builtins.open

    def hidden(file, *args, **kwargs):
        if str(file).startswith(f"/proc/{process.pid}/"):
            raise FileNotFoundError(2, "No such file or directory", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", hidden)
    try:
        yield process.pid, started
    finally:
        process.kill()
        process.wait()


def test_a_holder_whose_proc_entry_is_hidden_is_neither_gone_nor_unknown(
    other_user_process,
) -> None:
    pid, started = other_user_process
    assert not holder_gone(_lease(pid=pid, started=started, pid_ns=holder_where()))
    assert holder_alive(_lease(pid=pid, started=started, pid_ns=holder_where()))


def test_a_live_holder_hidden_by_hidepid_keeps_its_lease(state_location, other_user_process):
    open_writer(state_location, "migrate").close()
    pid, started = other_user_process
    statedb.rows(state_location, INSERT_LEASE,
                 ["theirs", pid, me()[1], "job:demo", FAR_AHEAD, holder_where(), started])  # fmt: skip
    with pytest.raises(LockHeld, match="lock theirs held by pid"):
        open_writer(state_location, "apply", jobs=["demo"])
    assert [r[0] for r in statedb.rows(state_location, "select lock_id from leases")] == ["theirs"]
