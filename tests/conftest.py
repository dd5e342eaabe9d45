"""Shared fixtures. Every test gets its own emulator on a free loopback port, so no test sees
another's batches, clock or faults, and nothing touches the network or the user's machine."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from batchops.emulator import EmulatorAdmin, EmulatorConfig, running_emulator

# The SDK honours proxy settings (trust_env); loopback must never go through a proxy.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

DUMMY_API_KEY = "test-dummy-key"


# ---------------------------------------------------------------- emulator
@pytest.fixture
def emulator_config() -> EmulatorConfig:
    """Override in a test module to start the emulator differently."""
    return EmulatorConfig(processing_seconds=0)


@pytest.fixture
def emulator(emulator_config: EmulatorConfig) -> Iterator[str]:
    """Base URL of a fresh emulator, e.g. http://127.0.0.1:54321."""
    with running_emulator(emulator_config) as base_url:
        yield base_url


@pytest.fixture
def emulator_admin(emulator: str) -> Iterator[EmulatorAdmin]:
    with EmulatorAdmin(emulator) as admin:
        yield admin


@pytest.fixture
def clock_running(emulator_admin: EmulatorAdmin) -> Callable[..., Any]:
    """`with clock_running():` moves the emulator's clock on by `step` seconds every `every`
    seconds of the block: a batch with an expired request ends only when its day is up
    (`expires_at`), as the API's does, and an `apply --wait` in the block gets there."""

    @contextlib.contextmanager
    def running(step: float = 3600.0, every: float = 0.05) -> Iterator[None]:
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(every):
                emulator_admin.advance_clock(step)

        thread = threading.Thread(target=tick, name="emulator-clock", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    return running


@pytest.fixture
def sdk_client(emulator: str) -> Iterator[anthropic.Anthropic]:
    """The real SDK pointed at the emulator, with the SDK's default retries."""
    with anthropic.Anthropic(base_url=emulator, api_key=DUMMY_API_KEY) as client:
        yield client


# ---------------------------------------------------------------- isolation
@pytest.fixture(autouse=True)
def _no_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the real API: whatever the developer's shell holds, no key, no base URL."""
    for name in (
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "ANTHROPIC_BASE_URL",
        "BATCHOPS_JOBS",
        "BATCHOPS_STATE",
        "BATCHOPS_PRICES",
    ):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------- PostgreSQL
from tests.pgserver import PostgresServer, start_server_or_skip  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole session (tests/pgserver.py); `.dsn` reaches it.

    No server skips the tests that use it, or fails them when BATCHOPS_REQUIRE_POSTGRES is set (CI).
    """
    server = start_server_or_skip()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: PostgresServer) -> Iterator[str]:
    """DSN of a fresh, empty database of its own, dropped (connections and all) after the test."""
    name = pg_server.create_database()
    try:
        yield pg_server.dsn_for(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def state_location(request: pytest.FixtureRequest, tmp_path):
    """Where a test's state lives, once per backend: the default SQLite file under tmp_path, or
    (the URL of) a fresh PostgreSQL database. Read it back with `tests.statedb.rows`."""
    if request.param == "sqlite":
        return tmp_path / "state" / "batchops.db"
    return request.getfixturevalue("pg_dsn")


@pytest.fixture
def ended_unharvested(tmp_path, emulator: str, emulator_admin: EmulatorAdmin) -> str:
    """Job demo r1, r2 sent in one batch that has ended remotely and was never harvested."""
    from tests.projects import apply, context, rows, write_project

    write_project(tmp_path, rows(2))
    emulator_admin.set_config(processing_seconds=2)
    (batch_id,) = apply(context(tmp_path, emulator)).batches_created
    emulator_admin.advance_clock(5)  # it ends; nobody harvests it
    return batch_id


@pytest.fixture
def list_caught_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch list has caught up with every batch made: a batch that a second retrieve and
    the list both lack reads as deleted at once, however new (`confirm_gone`'s list lag)."""
    monkeypatch.setenv("BATCHOPS_LIST_LAG_SECONDS", "0")
