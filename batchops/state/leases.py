"""Leases: locks with an expiry that their holder renews while it runs (DESIGN §2, §6.5).

A lease is named for what it guards: `job:<name>` for one job, or `*` for the whole state (an
apply of every job, state surgery, migrations). `*` conflicts with every lease; a job lease with
`*` and with the same job's. A live holder renews its leases (see `LeaseKeeper`) and is never taken
over; a lease left unrenewed past its expiry is stale and is taken over, with a message naming the
old holder. Every write of a holder checks, in its transaction, that its leases are still there:
one that stalled past its expiry (a stopped process, a paused VM) and was taken over writes
nothing more when it wakes.

A holder that died on this machine, in this PID namespace, since the machine last booted, is
known dead at once (its pid is gone, or now belongs to a process started later), so a crashed
run's lease need not expire first. A host name proves no machine (VMs cloned from one image,
containers given one `--hostname`), nor does a PID namespace id (the initial namespace's is the
same on every Linux machine), so a lease records the machine's boot id beside its namespace
(`holder_where`: the kernel draws the id at each boot, so a pid of another boot is never judged
here either). A lease from anywhere else, or from a batchops that recorded no boot id, proves
nothing by its pid: it is only taken over once it expires.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from batchops.errors import LockHeld
from batchops.state.records import LockInfo, pid_alive

WHOLE_STATE = "*"
BOOT_ID = "/proc/sys/kernel/random/boot_id"  # Linux: a random id drawn at each boot
_BOOT = " boot:"  # between the PID namespace and the boot id in a lease's `pid_ns`
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


def to_be_free(names: list[str], pending: Sequence[str]) -> tuple[list[str], str]:
    """The leases a writer must be free to take before it takes `names`: the whole state while
    migrations are pending (they change the schema under every runner, of every job), with the
    reason to add to a "locked" error."""
    if not pending:
        return names, ""
    return [WHOLE_STATE], (
        f"; the state's schema needs upgrading (migration {pending[0]}), which takes the whole"
        " state: wait for it (--lock-timeout), or run `batchops state migrate` once it is free"
    )


def to_take_over(
    names: Iterable[str], held: Sequence[LockInfo], now: datetime, where: str, why: str = ""
) -> list[LockInfo]:
    """The stale leases standing in the way of `names`, one per lock id (naming all its leases,
    which go together); a LockHeld naming the holder of the first live one."""
    stale_ids: list[str] = []
    for lease in conflicting(names, held):
        if not stale(lease, now):
            raise LockHeld(f"{where}: state is locked: {lease.describe()}{why}")
        if lease.lock_id not in stale_ids:
            stale_ids.append(lease.lock_id)
    out = []
    for lock_id in stale_ids:
        rows = [lease for lease in held if lease.lock_id == lock_id]
        out.append(dataclasses.replace(rows[0], name=",".join(sorted({r.name for r in rows}))))
    return out


def taken_over(held: LockInfo, where: str) -> LockHeld:
    """The error of a write refused because the writer's leases are gone: taken over (or
    force-unlocked) while it stalled past their expiry."""
    return LockHeld(
        f"{where}: the state's lease ({held.lock_id} on {held.name}) was taken over while this "
        f"{held.command} ran (it stalled past the lease's expiry): nothing more was written; "
        f"run {held.command} again"
    )


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


@functools.cache
def boot_id() -> str:
    """This machine's current boot ("" where the kernel tells none)."""
    try:
        with open(BOOT_ID, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def holder_where() -> str:
    """What a lease records as its `pid_ns`: this process's PID namespace and this machine's
    boot id (`pid:[4026531836] boot:<uuid>`), or the namespace alone where there is no boot id.
    Only ever compared whole (no schema change): an older batchops compares it with its bare
    namespace, finds it unequal, and judges the lease by its expiry alone."""
    namespace, boot = pid_namespace(), boot_id()
    return f"{namespace}{_BOOT}{boot}" if namespace and boot else namespace


def _host() -> str:
    """The host's name as `socket.gethostname()` gives it, without importing socket (~5 ms)
    where `os.uname` exists."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def _judged_here(lease: LockInfo) -> bool:
    """Its holder ran here: this host, this PID namespace, this machine since its last boot."""
    where = holder_where()
    return _BOOT in where and lease.host == _host() and lease.pid_ns == where


def holder_gone(lease: LockInfo) -> bool:
    """True only when the holder provably died: it ran here (`_judged_here`), its pid is gone
    or belongs to a process started later."""
    if not _judged_here(lease):
        return False
    if not pid_alive(lease.pid):
        return True
    if not lease.started:
        return False
    # Unreadable (`hidepid` hides another user's processes; or it ended just now): that proves
    # nothing, and the lease is judged by its expiry.
    now_started = process_started(lease.pid)
    return bool(now_started) and now_started != lease.started


def holder_alive(lease: LockInfo) -> bool:
    """True when the holder runs here: its pid alive and started when the lease says (a lease
    from elsewhere proves nothing either way). A lease of an older batchops (no boot id) of this
    host and namespace is judged by its pid too: this only refuses a `force-unlock`."""
    older = bool(lease.pid_ns) and lease.pid_ns == pid_namespace() and lease.host == _host()
    if not older and not _judged_here(lease):
        return False
    if not pid_alive(lease.pid):
        return False
    now_started = process_started(lease.pid) if lease.started else ""
    return not now_started or now_started == lease.started  # unreadable: alive, as its pid says


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
    That is a courtesy: the keeper beats only while the process runs, so what keeps a holder
    that was taken over from writing is the check of every write transaction (`taken_over`).
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
