"""A throwaway PostgreSQL server for the test session.

The PostgreSQL state backend must pass the same tests as SQLite, against a real server, on any
machine that has the Debian server binaries — without a system service, a password or the network.
So the session starts its own cluster in a temporary folder on a free loopback port (trust auth,
durability off: the data dies with the session), and stops and deletes it at the end. PostgreSQL
refuses to run as root, so as root the binaries run as the `postgres` user on a folder it owns.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_ENV = "BATCHOPS_REQUIRE_POSTGRES"  # set by CI: no server fails the tests, never skips them
BIN_GLOB = "/usr/lib/postgresql/*/bin"
BINDIR_ENV = "BATCHOPS_PG_BINDIR"  # where the server binaries are, when not in BIN_GLOB or on PATH
SERVER_USER = "postgres"  # the OS user the server runs as under root, and the superuser's name
HOST = "127.0.0.1"
START_TIMEOUT_S = 30
START_ATTEMPTS = 3  # a free port can be taken between finding it and the server binding it


class PostgresUnavailable(Exception):
    """No server could be started here; the message says why."""


def find_bindir() -> Path:
    """$BATCHOPS_PG_BINDIR, else the newest `/usr/lib/postgresql/<version>/bin`, else the PATH's."""
    if chosen := os.environ.get(BINDIR_ENV):
        if (Path(chosen) / "initdb").is_file() and (Path(chosen) / "pg_ctl").is_file():
            return Path(chosen)
        raise PostgresUnavailable(f"{BINDIR_ENV}={chosen} holds no initdb and pg_ctl")
    candidates = [Path(p) for p in glob.glob(BIN_GLOB)]
    candidates = [p for p in candidates if (p / "initdb").is_file() and (p / "pg_ctl").is_file()]
    if candidates:
        return max(candidates, key=lambda p: _version_key(p.parent.name))
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    raise PostgresUnavailable(
        f"no initdb/pg_ctl under {BIN_GLOB} or on PATH (Debian: apt-get install postgresql)"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name)) or (0,)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running throwaway server; `dsn` reaches its `postgres` database as the superuser."""

    bindir: Path
    root: Path  # the temporary folder: data/, the socket, server.log
    port: int = 0
    startup_seconds: float = 0.0
    _as_user: str | None = field(default=None, repr=False)  # run the binaries as this OS user
    _running: bool = field(default=False, repr=False)

    @property
    def host(self) -> str:
        return HOST

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{SERVER_USER}@{HOST}:{self.port}/{dbname}"

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """initdb, then pg_ctl start on a free port (retried if another process took it)."""
        t0 = time.monotonic()
        self._run(
            "initdb",
            "-D",
            str(self.datadir),
            "-U",
            SERVER_USER,
            "-A",
            "trust",  # the default pg_hba.conf lines are all local/loopback
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        last_error = ""
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            options = (
                f"-p {self.port} -k {shlex.quote(str(self.root))} -c listen_addresses={HOST}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            result = self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "start",
                check=False,
            )
            if result.returncode == 0:
                self._running = True
                self.startup_seconds = time.monotonic() - t0
                return
            last_error = f"{result.stdout}{result.stderr}".strip()
            self._run("pg_ctl", "-D", str(self.datadir), "stop", "-m", "immediate", check=False)
        raise PostgresUnavailable(f"pg_ctl start failed: {last_error}\n{self._log_tail()}")

    def stop(self) -> None:
        """Stop the server at once (nothing in it is worth a clean shutdown) and delete its folder."""
        atexit.unregister(self.stop)
        try:
            if self._running:
                self._running = False
                self._run(
                    "pg_ctl", "-D", str(self.datadir), "stop", "-m", "immediate", "-w", check=False
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ databases
    def create_database(self) -> str:
        """A fresh empty database; returns its name."""
        name = f"test_{uuid.uuid4().hex}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg  # here, so that merely importing this module needs no driver

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    # ------------------------------------------------------------ plumbing
    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self._as_user:
            cmd = ["runuser", "-u", self._as_user, "--", *cmd]
        # A clean environment: the developer's PGDATA/PGPORT/LANG must not steer the test server.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
        try:
            result = subprocess.run(
                cmd,
                cwd=self.root,  # as postgres, the caller's working directory may be unreadable
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S + 30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"{tool} could not run: {exc}") from exc
        if check and result.returncode != 0:
            output = f"{result.stdout}{result.stderr}".strip()
            raise PostgresUnavailable(f"{tool} exited {result.returncode}: {output}")
        return result

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def start_server() -> PostgresServer:
    """Start a throwaway server, or raise PostgresUnavailable saying why not."""
    bindir = find_bindir()
    as_user = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root and there is no {SERVER_USER!r} user to run the server as"
            ) from None
        if not shutil.which("runuser"):
            raise PostgresUnavailable("running as root and runuser is missing")
        as_user = SERVER_USER
    # As root, under /tmp: the postgres user must be able to reach the folder, and $TMPDIR may not
    # let it; a short path also keeps the socket's name under the 107-byte limit.
    root = Path(tempfile.mkdtemp(prefix="batchops-pg-", dir="/tmp" if as_user else None))
    server = PostgresServer(bindir=bindir, root=root, _as_user=as_user)
    # Stopped at exit even if the caller's own cleanup never runs (a second Ctrl-C, sys.exit).
    atexit.register(server.stop)
    try:
        if as_user:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_server() -> Iterator[PostgresServer]:
    """A throwaway server for the duration of the block, stopped and deleted however it ends."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


def start_server_or_skip() -> PostgresServer:
    """start_server() for a fixture: no server skips the test, or fails it when CI requires one."""
    try:
        return start_server()
    except PostgresUnavailable as exc:
        if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
            pytest.fail(f"no PostgreSQL server ({REQUIRE_ENV} is set): {exc}", pytrace=False)
        pytest.skip(f"no PostgreSQL server: {exc}")
