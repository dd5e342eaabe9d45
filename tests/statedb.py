"""Read a test's state with raw SQL, whichever backend holds it (the schemas are the same).

For assertions only: batchops itself reads and writes state through `batchops.state` alone.
"""

from __future__ import annotations

import sqlite3
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
