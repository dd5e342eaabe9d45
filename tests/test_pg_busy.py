"""Opening a PostgreSQL state whose role has a `lock_timeout` (or `statement_timeout`) while
another runner holds the state's lock: the open is cancelled by the server. It read "not a
batchops state database (canceling statement due to lock timeout)", which sends a team looking
for a broken database; it is one line saying why, to be tried again."""

from __future__ import annotations

import psycopg
import pytest

from batchops.errors import StateError
from batchops.state.postgres import PostgresWriter, redact
from tests.test_review14 import ADVISORY_KEY


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout"])
def test_an_open_cancelled_by_the_roles_timeout_says_the_state_was_busy(
    pg_dsn: str, setting: str
) -> None:
    PostgresWriter.open(pg_dsn, "state migrate").close()
    url = f"{pg_dsn}?options=-c{setting}%3D200"
    with psycopg.connect(pg_dsn) as holder:  # a runner's open, under way
        holder.execute("select pg_advisory_xact_lock(%s)", [ADVISORY_KEY])
        with pytest.raises(StateError) as caught:
            PostgresWriter.open(url, "apply")
        holder.rollback()
    expected = {
        "lock_timeout": "canceling statement due to lock timeout: another batchops was opening"
        " or migrating the state for longer than the session's lock_timeout; try again",
        "statement_timeout": "canceling statement due to statement timeout: opening the state"
        " took longer than the session's statement_timeout (another batchops opening or"
        " migrating it, or a long migration); try again",
    }[setting]
    assert str(caught.value).splitlines() == [f"{redact(url)}: {expected}"]


def test_an_open_cancelled_by_an_administrator_says_so(pg_dsn: str) -> None:
    """pg_cancel_backend on a runner waiting to open the state read "not a batchops state
    database (canceling statement due to user request)"."""
    import threading
    import time

    PostgresWriter.open(pg_dsn, "state migrate").close()
    caught: list[BaseException] = []

    def open_it() -> None:
        try:
            PostgresWriter.open(pg_dsn, "apply").close()
        except BaseException as exc:  # noqa: BLE001 - looked at below
            caught.append(exc)

    with psycopg.connect(pg_dsn) as holder, psycopg.connect(pg_dsn, autocommit=True) as admin:
        holder.execute("select pg_advisory_xact_lock(%s)", [ADVISORY_KEY])
        opener = threading.Thread(target=open_it)
        opener.start()
        waiting: list = []
        for _ in range(200):
            waiting = admin.execute(
                "select pid from pg_stat_activity where wait_event_type = 'Lock'"
                " and datname = current_database() and pid <> pg_backend_pid()"
            ).fetchall()
            if waiting:
                break
            time.sleep(0.05)
        assert waiting
        admin.execute("select pg_cancel_backend(%s)", [waiting[0][0]])
        opener.join(timeout=30)
        holder.rollback()
    (error,) = caught
    assert isinstance(error, StateError)
    assert str(error).splitlines() == [
        f"{redact(pg_dsn)}: canceling statement due to user request: the server cancelled"
        " opening the state; try again"
    ]
