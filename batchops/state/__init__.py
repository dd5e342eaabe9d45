"""The single record of what was sent and what came back, behind one API (`api`).

`open_reader` and `open_writer` pick the backend from the location: a file path is SQLite (the
default, embedded); a `postgresql://` URL is PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# Backends and their records load when a state is opened: `validate` and `--help` open none.
if TYPE_CHECKING:
    from batchops.state.api import StateReader, StateWriter
    from batchops.state.records import LockInfo

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(POSTGRES_SCHEMES)


def shown(location: str | Path) -> str:
    """A location for messages and output: a PostgreSQL URL without its password."""
    if not is_postgres(location):
        return str(location)
    from batchops.state.postgres import redact

    return redact(str(location))


def open_reader(location: str | Path) -> StateReader:
    """A read-only view; a state that does not exist yet reads as empty and is not created."""
    if is_postgres(location):
        from batchops.state.postgres import PostgresReader

        return PostgresReader.open(str(location))
    from batchops.state.sqlite import SqliteReader

    return SqliteReader.open(Path(location))


def open_writer(
    location: str | Path,
    command: str,
    *,
    jobs: Sequence[str] | None = None,
    lock_timeout: float = 0.0,
    on_takeover: Callable[[LockInfo], None] | None = None,
) -> StateWriter:
    """The writable state, holding leases on `jobs` (None: the whole state), released by
    `close`; migrations run under them. A background thread renews them (`writer.keeper`)."""
    from batchops.state.leases import LeaseKeeper, lease_seconds

    seconds = lease_seconds()
    backend = _writer_class(location)
    writer = backend.open(
        _where(location),
        command,
        jobs=jobs,
        lock_timeout=lock_timeout,
        on_takeover=on_takeover,
        seconds=seconds,
    )
    held = writer.held
    if held is not None:
        renew = backend.renew_at
        writer.keeper = LeaseKeeper(
            lambda: renew(_where(location), held.lock_id, seconds), seconds
        ).start()
    return writer


def _writer_class(location: str | Path):
    if is_postgres(location):
        from batchops.state.postgres import PostgresWriter

        return PostgresWriter
    from batchops.state.sqlite import SqliteWriter

    return SqliteWriter


def _where(location: str | Path) -> str | Path:
    return str(location) if is_postgres(location) else Path(location)


def force_unlock(location: str | Path, lock_id: str) -> LockInfo:
    """Remove the lock `lock_id`, whoever holds it (the caller checked it is the one held)."""
    if is_postgres(location):
        from batchops.state.postgres import PostgresWriter

        return PostgresWriter.force_unlock_at(str(location), lock_id)
    from batchops.state.sqlite import SqliteWriter

    return SqliteWriter.force_unlock_at(Path(location), lock_id)


def state_exists(location: str | Path) -> bool:
    if is_postgres(location):
        reader = open_reader(location)
        try:
            return reader.exists
        finally:
            reader.close()
    return Path(location).exists()


__all__ = ["is_postgres", "open_reader", "open_writer"]
