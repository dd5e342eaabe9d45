"""The throwaway PostgreSQL server the state backend's tests run against (tests/pgserver.py):
each test gets a fresh database of its own on a loopback-only server, and CI cannot silently skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.pgserver import PostgresServer, start_server_or_skip

REPO = Path(__file__).resolve().parent.parent


def test_a_table_round_trips(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE items (key text PRIMARY KEY, payload jsonb NOT NULL)")
        conn.execute(
            "INSERT INTO items VALUES (%s, %s), (%s, %s)",
            ("T-1", '{"n": 1}', "T-2 ✓", '{"n": 2}'),
        )
    with psycopg.connect(pg_dsn) as conn:  # a new connection: the rows were committed
        rows = conn.execute("SELECT key, payload FROM items ORDER BY key").fetchall()
    assert rows == [("T-1", {"n": 1}), ("T-2 ✓", {"n": 2})]


_seen_databases: list[str] = []


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_empty_database(pg_dsn: str, run: int) -> None:
    with psycopg.connect(pg_dsn) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
        conn.execute("CREATE TABLE leftover (x int)")  # the next run must not see this
    assert tables == []
    assert name.startswith("test_")
    assert name not in _seen_databases
    _seen_databases.append(name)


def test_databases_are_distinct_and_dropped_even_while_connected(
    pg_server: PostgresServer, pg_dsn: str
) -> None:
    other = pg_server.create_database()
    held = psycopg.connect(pg_server.dsn_for(other))  # open while dropped: FORCE must end it
    try:
        held.execute("CREATE TABLE only_here (x int)")
        held.commit()
        with psycopg.connect(pg_dsn) as conn:
            assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
        pg_server.drop_database(other)
    finally:
        held.close()
    with psycopg.connect(pg_server.dsn) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (other,)).fetchall()
    assert left == []


def test_the_server_listens_on_loopback_only(pg_server: PostgresServer, pg_dsn: str) -> None:
    assert pg_server.dsn == f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"
    assert pg_dsn.startswith(f"postgresql://postgres@127.0.0.1:{pg_server.port}/test_")
    with psycopg.connect(pg_dsn) as conn:
        addr = conn.execute("SELECT host(inet_server_addr())").fetchone()[0]
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]
        fsync = conn.execute("SHOW fsync").fetchone()[0]
        encoding = conn.execute("SHOW server_encoding").fetchone()[0]
    assert (addr, listen) == ("127.0.0.1", "127.0.0.1")
    assert (fsync, encoding) == ("off", "UTF8")


@pytest.mark.parametrize(
    ("required", "outcome"),
    [("", pytest.skip.Exception), ("0", pytest.skip.Exception), ("1", pytest.fail.Exception)],
)
def test_no_server_skips_unless_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, required: str, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("BATCHOPS_PG_BINDIR", str(tmp_path))
    monkeypatch.setenv("BATCHOPS_REQUIRE_POSTGRES", required)
    with pytest.raises(
        outcome, match=f"no PostgreSQL server.*BATCHOPS_PG_BINDIR={tmp_path} holds no initdb"
    ):
        start_server_or_skip()


def test_ci_fails_rather_than_skips_without_a_server(tmp_path: Path) -> None:
    """End to end, as CI runs it: the session fixture errors, and pytest exits 1."""
    env = dict(os.environ, BATCHOPS_PG_BINDIR=str(tmp_path), BATCHOPS_REQUIRE_POSTGRES="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + [f"{Path(__file__).name}::test_a_table_round_trips"],
        cwd=REPO / "tests",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert "no PostgreSQL server (BATCHOPS_REQUIRE_POSTGRES is set)" in result.stdout
