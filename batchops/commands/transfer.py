"""`batchops state push|pull`: copy the whole state between backends, as Terraform does.

A team adopts a shared backend with `state push postgresql://…` and snapshots it with
`--state postgresql://… state push snapshot.db`. The copy runs under both states' locks (the whole
state: no apply runs beside it), goes through the state API's dump and load (every table, lineage
and serial kept), and is one transaction on the destination whose row counts must match the
source's per table, or nothing is written. A destination that already records anything is refused
unless `force`; it is checked before anything is opened for writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchops.commands.context import Context
from batchops.errors import StateError
from batchops.lazyclass import dataclass
from batchops.state import is_postgres, open_reader, open_writer, shown, state_exists


@dataclass(frozen=True)
class Transfer:
    source: str  # locations as shown (a URL without its password)
    destination: str
    lineage: str | None
    serial: int
    rows: dict[str, int]  # rows copied per table
    replaced: bool  # the destination had rows, overwritten with force
    write_id: str | None = None  # the copy's own (see `StateReader.write_id`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "replaced": self.replaced,
            "rows": {table: n for table, n in self.rows.items() if table != "meta"},
            "state": {"lineage": self.lineage, "serial": self.serial, "write_id": self.write_id},
        }


def push(context: Context, destination: str | Path, *, force: bool = False) -> Transfer:
    """Copy the current state (`--state`) to `destination`."""
    return copy_state(context.settings.state_path, destination, force=force, command="state push")


def pull(context: Context, source: str | Path, *, force: bool = False) -> Transfer:
    """Copy `source` into the current state (`--state`), which must be empty unless `force`."""
    return copy_state(source, context.settings.state_path, force=force, command="state pull")


def copy_state(
    source: str | Path, destination: str | Path, *, force: bool, command: str
) -> Transfer:
    """Copy every table of `source` into `destination`, under both locks, verified by counts."""
    if _same(source, destination):
        raise StateError(f"{shown(source)}: source and destination are the same state")
    if not state_exists(source):
        raise StateError(f"{shown(source)}: no state to copy (nothing has been applied yet)")
    replaced = _check_destination(destination, force)
    created = not is_postgres(destination) and not Path(destination).exists()
    src = open_writer(source, command)  # the lock: nothing changes it while it is copied
    dump = src.dump_tables()
    try:
        expected = src.table_counts()
        try:
            dst = _open_destination(destination, command)
            try:
                rows = dst.load_tables(dump, replace=force, expected=expected)
                lineage, serial, write_id = dst.lineage, dst.serial, dst.write_id
            finally:
                dst.close()
        except BaseException:
            if created:  # leave no empty state file behind a failed copy
                Path(destination).unlink(missing_ok=True)
            raise
    finally:
        dump.close()  # ends its read transaction: a failed copy leaves it open otherwise
        src.close()
    return Transfer(shown(source), shown(destination), lineage, serial, rows, replaced, write_id)


def _open_destination(destination: str | Path, command: str):
    try:
        return open_writer(destination, command)
    except OSError as exc:  # a folder that cannot be made, a read-only file system …
        raise StateError(
            f"{shown(destination)}: cannot write the state ({exc.strerror or exc})"
        ) from None


def _same(a: str | Path, b: str | Path) -> bool:
    if is_postgres(a) and is_postgres(b):
        # one database may be spelled many ways (localhost or 127.0.0.1, a password in the URL
        # or in PGPASSWORD): the same database on the same server is the same state
        return str(a) == str(b) or _identity(a) == _identity(b)
    if is_postgres(a) or is_postgres(b):
        return False
    return Path(a).resolve() == Path(b).resolve()


def _identity(location: str | Path) -> Any:
    reader = open_reader(location)
    try:
        return reader.identity()  # type: ignore[attr-defined]
    finally:
        reader.close()


def _check_destination(destination: str | Path, force: bool) -> bool:
    """Whether the destination has rows; refused then unless `force` (nothing is written)."""
    if not is_postgres(destination) and Path(destination).is_dir():
        raise StateError(f"{destination}: is a directory, not a state file")
    reader = open_reader(destination)
    try:
        has_rows = not reader.is_empty()
    finally:
        reader.close()
    if has_rows and not force:
        raise StateError(
            f"{shown(destination)}: the destination state is not empty; "
            "use --force to replace its contents"
        )
    return has_rows
