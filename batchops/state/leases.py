"""Leases: locks with an expiry that their holder renews while it runs (DESIGN §2, §6.5).

A lease is named for what it guards: `job:<name>` for one job, or `*` for the whole state (an
apply of every job, state surgery, migrations). `*` conflicts with every lease; a job lease with
`*` and with the same job's. A live holder renews its leases (see `LeaseKeeper`) and is never taken
over; a lease left unrenewed past its expiry is stale and is taken over, with a message naming the
old holder. A holder that died on this host, in this PID namespace, is known dead at once (its
pid is gone, or now belongs to a process started later), so a crashed run's lease need not expire
first. A pid from another PID namespace (another container with the same host name) proves
nothing: such a lease is only taken over once it expires.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from batchops.state.records import LockInfo, pid_alive

WHOLE_STATE = "*"
DEFAULT_LEASE_SECONDS = 120.0
LEASE_ENV = "BATCHOPS_LEASE_SECONDS"


def lease_seconds() -> float:
    try:
        return max(float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_SECONDS)), 1.0)
    except ValueError:
        return DEFAULT_LEASE_SECONDS


def lease_names(jobs: Sequence[str] | None) -> list[str]:
    """The leases a command takes: one per job, or the whole state when `jobs` is None."""
    return [WHOLE_STATE] if jobs is None else sorted({f"job:{j}" for j in jobs})


def conflicting(wanted: Iterable[str], held: Iterable[LockInfo]) -> list[LockInfo]:
    wanted = set(wanted)
    out = []
    for lease in held:
        if WHOLE_STATE in wanted or lease.name == WHOLE_STATE or lease.name in wanted:
            out.append(lease)
    return out


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_started(pid: int) -> str:
    """When process `pid` started (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def me() -> tuple[int, str, str, str]:
    """(pid, host, pid namespace, start time) of this process."""
    pid = os.getpid()
    return pid, _host(), pid_namespace(), process_started(pid)


def _host() -> str:
    """The host's name as `socket.gethostname()` gives it, without importing socket (~5 ms)
    where `os.uname` exists."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def holder_gone(lease: LockInfo) -> bool:
    """True only when the holder provably died: same host, same PID namespace, pid gone."""
    _, host, namespace, _ = me()
    if lease.host != host or not lease.pid_ns or lease.pid_ns != namespace:
        return False
    if not pid_alive(lease.pid):
        return True
    return bool(lease.started) and process_started(lease.pid) != lease.started


def holder_alive(lease: LockInfo) -> bool:
    """True only when the holder provably runs: same host, same PID namespace, its pid alive
    and started when the lease says (a lease from elsewhere proves nothing either way)."""
    _, host, namespace, _ = me()
    if lease.host != host or not lease.pid_ns or lease.pid_ns != namespace:
        return False
    if not pid_alive(lease.pid):
        return False
    return not lease.started or process_started(lease.pid) == lease.started


def stale(lease: LockInfo, now: datetime) -> bool:
    """Unrenewed past its expiry, or its holder provably died."""
    expires = lease.expires
    return (expires is not None and expires <= now) or holder_gone(lease)


def expiry(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)


class LeaseKeeper:
    """Renews a lease from a background thread while the holder runs.

    `renew()` is called every third of the lease's life with its own connection; when it finds the
    lease gone (taken over after a stall), `lost` is set and the holder stops before its next step.
    """

    def __init__(self, renew: Callable[[], bool], seconds: float):
        self._renew = renew
        self._interval = max(seconds / 3.0, 0.2)
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name="batchops-lease", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._renew():
                    self.lost = True
                    return
            except Exception:  # a passing database error: try again at the next beat
                continue

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
