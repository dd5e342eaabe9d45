"""Read a test's state with raw SQL, whichever backend holds it (the schemas are the same).

For assertions only: batchops itself reads and writes state through `batchops.state` alone.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from batchops.state import is_postgres


def rows(location: Path | str, sql: str, params: tuple | list = ()) -> list[tuple]:
    """Run `sql` (with `?` placeholders) on the state at `location`; SQLite flags come back as
    0/1 and PostgreSQL's as bools, so compare flags with `bool(...)`."""
    if is_postgres(location):
        import psycopg

        with psycopg.connect(str(location), autocommit=True) as conn:
            cursor = conn.execute(sql.replace("?", "%s"), list(params))
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []
    conn = sqlite3.connect(location)
    try:
        with conn:
            return conn.execute(sql, list(params)).fetchall()
    finally:
        conn.close()


def exists(location: Path | str) -> bool:
    """Whether anything was ever written to the state (a file, or the schema in a database)."""
    if is_postgres(location):
        return bool(rows(location, "select to_regclass('meta') is not null")[0][0])
    return Path(location).exists()


@contextlib.contextmanager
def login_role(server_dsn: str, dsn: str, prefix: str, *grants: str) -> Iterator[str]:
    """A new login role on the test server (`grants` run for it first, `{role}` in each), as
    the URL of `dsn`'s database under that role; at the end its sessions ended, its rights
    on the state's tables revoked and the role dropped."""
    import uuid
    from urllib.parse import urlsplit

    import psycopg

    role = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"create role {role} login")
        for grant in grants:
            admin.execute(grant.format(role=role))
    parts = urlsplit(dsn)
    try:
        yield f"postgresql://{role}@{parts.hostname}:{parts.port}{parts.path}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                [role],
            )
            admin.execute(f"revoke all on all tables in schema public from {role}")
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(f"drop role if exists {role}")
