"""The rendered rows of a job, kept between runs, so a plan costs in proportion to what changed.

Rendering a million-item job (templates, fingerprints, custom_ids, cost estimates) takes tens of
seconds; a `plan` on every pull request and an `apply` on a schedule would pay it each time though
nothing changed. `rows` keeps what `desired` needs of each item — (key, custom_id, fingerprint,
cost, model, request bytes) — in one file per job under `.batchops-cache/` at the project root, and
serves them again while everything they were made from is the same:

- the job's definition as loaded (every field, the spec file's path included), and today's price
  for each model the rows used;
- the data file: its size, mtime, ctime, inode and device unchanged — or, when those differ (a fresh
  checkout, `touch`), the same content by sha256;
- the price table's content, and batchops itself (its version and the source of the modules that
  render and price items, so a development checkout never serves rows an older code made).

Anything else renders in full, and the rows are written again. Rows are written only when a render
completes without a problem, atomically (a temporary file, then a rename). The files hold JSON,
never pickles, and carry a keyed hash (HMAC-SHA256) whose key lives in the user's cache folder
(`$XDG_CACHE_HOME/batchops`, or `~/.cache/batchops`), outside the project: specs come from pull
requests, and a cache file planted in one is refused, because no pull request knows the key.
Jobs of fewer than MIN_ROWS items are not kept (they render in a fraction of a second, and a small
project gets no cache folder).
`BATCHOPS_CACHE=off` turns the cache off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import importlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import orjson

import batchops
from batchops.errors import SpecError
from batchops.heap import paused_gc
from batchops.pricing import PriceTable
from batchops.spec.model import Job

if TYPE_CHECKING:
    from batchops.spec.items import Chunk

FORMAT = "batchops-rows-v2"  # v2: HMAC-SHA256 (v1: keyed BLAKE2b)
CACHE_DIR = ".batchops-cache"
# Rows per line of the file, every line but the last (the header says so, as `line_rows`): a
# line is parsed whole, so this bounds what reading holds at once (a few MB), and an export's
# chunks are lines, so that a process taking every other chunk reads the others past unparsed
# (`identity_chunks`). A file written with other line sizes reads the same, chunk by chunk.
CHUNK_ROWS = 1_000
MIN_ROWS = 10_000  # a smaller job renders in a fraction of a second: no file is kept for it
_HEADER_BYTES = 1 << 20  # a rows file's header line is read up to this
RACY_SECONDS = 2.0  # a file modified this close to when its rows were written is hashed anyway
# The modules whose code decides what a row holds: rendering, fingerprints, custom ids, prices.
_CODE = (
    "spec/items.py",
    "spec/sandbox.py",
    "spec/parallel.py",
    "spec/rowmaker.py",
    "spec/files.py",
    "spec/desired.py",
    "spec/caching.py",
    "pricing.py",
    "apirules.py",
)

Row = tuple[str, str, str, Any, str, int]  # or a `rowmaker.Block` of them, from `render()`


def enabled() -> bool:
    return os.environ.get("BATCHOPS_CACHE", "").lower() not in ("off", "0", "false", "no")


def cache_dir(root: Path) -> Path:
    return Path(root) / CACHE_DIR


def rows(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    render: Callable[[], Iterator[Row]],
) -> Iterator[Row]:
    """The rows `render()` yields, from the cache when nothing they depend on changed: one at
    a time, in lists, or in blocks (`rowmaker.Block`), as `rowmaker.blocks` takes them."""
    with paused_gc():  # a million rows the caller keeps: tuples, none in a cycle
        yield from _rows(job, root, prices, today, render)


def _rows(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    render: Callable[[], Iterator[Row]],
) -> Iterator[Row]:
    if not enabled() or job.attachments:  # attached files are read anew: their bytes may change
        yield from render()
        return
    key = _mac_key()
    if key is None:
        yield from render()
        return
    path = cache_dir(root) / "rows" / f"{job.name}.jsonl"
    definition = _definition_digest(job, prices)
    data_file = job.source_file()
    cached = _load(path, key, definition, data_file, prices, today)
    if cached is not None:
        yield from cached  # lists of rows
        return
    from batchops.spec.rowmaker import Block, unpack  # only a render needs them

    started = time.time()
    # The data file as the render starts reading it: rows are kept only if it is still so once
    # they are written, else a file saved during the render (a script, an editor) would have the
    # old content's rows filed under the new content's digest.
    stat_before = _stat_of(data_file)
    written = _Written()
    try:
        chunk: list[Row] = []
        for row in render():
            kind = type(row)
            if kind is Block or kind is list:  # a list of rows, or a block, as a line of its own
                if chunk:
                    written.add(chunk)
                    chunk = []
                written.add(row if kind is list else list(unpack(row)))  # type: ignore[arg-type]
            else:
                chunk.append(row)
                if len(chunk) == CHUNK_ROWS:
                    written.add(chunk)
                    chunk = []
            yield row
        # Fewer than MIN_ROWS rows are not kept: a small job writes no temporary file at all.
        if chunk and written.rows + len(chunk) >= MIN_ROWS:
            written.add(chunk)
        # Only a render that completed gets here (a SpecError ends it before): keep its rows.
        if written.rows >= MIN_ROWS and written.ok:
            with contextlib.suppress(OSError):
                _save(
                    path, key, definition, data_file, stat_before, prices, today, written, started
                )
    finally:
        written.close()


# --- identity -----------------------------------------------------------------------------------


def _definition_digest(job: Job, prices: PriceTable) -> str:
    """What the rows depend on apart from the data file's content and today's prices."""
    code = hashlib.sha256()
    package = Path(batchops.__file__).parent
    for name in _CODE:
        with contextlib.suppress(OSError):
            code.update(name.encode() + b"\0" + (package / name).read_bytes())
    parts = {
        "format": FORMAT,
        "version": batchops.__version__,
        "code": code.hexdigest(),
        "job": _exact(job),
        "prices": {
            "as_of": prices.as_of,
            "multipliers": prices.multipliers,
            "models": prices.models,
        },  # fmt: skip
    }
    data = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _exact(value: Any) -> Any:
    """`value` as JSON that tells apart what a template tells apart: a table's keys in the order
    written (a loop over them sees that order) and each TOML date or time tagged with its type
    (it renders unlike the string that spells it). The job's JSON form (`model_dump`) sorts
    neither out: two definitions that render differently had one digest."""
    t = type(value)
    if value is None or t is str or t is int or t is float or t is bool:
        return value
    if t is dict:
        return ["dict", [[k, _exact(v)] for k, v in value.items()]]
    if t is list or t is tuple:
        return ["list", [_exact(v) for v in value]]
    if dataclasses.is_dataclass(value):  # the job and its nested specs
        fields = dataclasses.fields(value)
        return [t.__name__, [[f.name, _exact(getattr(value, f.name))] for f in fields]]
    return [t.__name__, str(value)]  # a path, a date, a time: its type and its text


def _stat_of(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    # ctime too: no tool can set it, so content written with an old mtime put back shows
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _content_digest(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except OSError:
        return None
    return "sha256:" + digest.hexdigest()


def _prices_of(models: set[str], prices: PriceTable, today: date) -> dict[str, str]:
    return {m: repr(prices.price(m, today)) for m in sorted(models)}


def _mac_key() -> bytes | None:
    """This user's key for the cache files' hashes, made on first use; None: no cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "batchops" / "cache.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(32))
        return path.read_bytes()
    except FileExistsError:  # another process made it first
        with contextlib.suppress(OSError):
            return path.read_bytes()
    except OSError:
        pass
    return None


# --- the file -----------------------------------------------------------------------------------


class _Written:
    """The chunk lines of rows rendered so far, in a temporary file, and what the header needs."""

    def __init__(self) -> None:
        self.body: IO[bytes] | None = None  # made once MIN_ROWS rows came
        self.early: list[bytes] = []  # the lines before that (a small job writes no file)
        self.pending: list[Row] = []  # the rows not yet in a line: fewer than CHUNK_ROWS
        self.rows = 0
        self.models: set[str] = set()
        self.cost_type: type | None = None
        self.ok = True  # False once a write failed: nothing is kept then

    def add(self, chunk: list[Row]) -> None:
        """Add rows: written in lines of CHUNK_ROWS, the rest once `lines()` are read."""
        self.rows += len(chunk)
        self.models.update(r[4] for r in chunk)
        if self.cost_type is None:
            self.cost_type = next((type(r[3]) for r in chunk if isinstance(r[3], tuple)), None)
        pending = self.pending
        pending += chunk
        whole = len(pending) - len(pending) % CHUNK_ROWS
        for at in range(0, whole, CHUNK_ROWS):
            self._write(pending[at : at + CHUNK_ROWS])
        del pending[:whole]

    def _write(self, chunk: list[Row]) -> None:
        if self.ok:
            try:
                line = orjson.dumps(chunk, default=_plain) + b"\n"
                if self.body is None and self.rows < MIN_ROWS:
                    self.early.append(line)
                    return
                if self.body is None:
                    import tempfile  # only rows that may be kept need it (~3 ms to import)

                    self.body = tempfile.TemporaryFile()  # written as they come, never all held
                    self.body.writelines(self.early)
                    self.early = []
                self.body.write(line)
            except (OSError, TypeError, orjson.JSONEncodeError):
                self.ok = False

    def close(self) -> None:
        if self.body is not None:
            self.body.close()

    def lines(self) -> Iterator[bytes]:
        if self.pending:
            self._write(self.pending)
            self.pending = []
        if self.body is None:
            yield from self.early
            return
        self.body.flush()
        self.body.seek(0)
        yield from self.body


def _save(
    path: Path,
    key: bytes,
    definition: str,
    data_file: Path | None,
    stat_before: list[int] | None,
    prices: PriceTable,
    today: date,
    written: _Written,
    started: float,
) -> None:
    data = None
    if data_file is not None:
        digest = _content_digest(data_file)  # then the stat: the digest is of what it names
        data = {"stat": _stat_of(data_file), "sha256": digest}
        if digest is None or data["stat"] is None or data["stat"] != stat_before:
            return  # changed (or gone) since the render began: its rows may be of either
    directory = path.parent
    # A symlink planted in a pull request must not send these writes out of the project.
    if any(p.is_symlink() for p in (directory.parent, directory, path)):
        return
    directory.mkdir(parents=True, exist_ok=True)
    ignore = directory.parent / ".gitignore"
    if not ignore.exists() and not ignore.is_symlink():
        ignore.write_text("# batchops's cache: never commit it\n*\n", encoding="utf-8")
    cost_type = written.cost_type
    header = {
        "kind": FORMAT,
        "definition": definition,
        "data": data,
        "written_at": started,
        "prices": _prices_of(written.models, prices, today),
        "cost_type": None
        if cost_type is None
        else [cost_type.__module__, cost_type.__qualname__, list(cost_type._fields)],
        "rows": written.rows,
        "line_rows": CHUNK_ROWS,
    }
    mac = _mac(key)
    # a new file of a name no one can guess (`mkstemp`: O_EXCL): a symlink a pull request
    # planted at a temporary path would otherwise be written through, out of the project
    import tempfile  # here: a plan that keeps nothing never loads it

    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            for line in _lines(header, written):
                mac.update(line)
                fh.write(line)
            fh.write(b'{"mac":"' + mac.hexdigest().encode() + b'"}\n')
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _mac(key: bytes, first: bytes = b"") -> hmac.HMAC:
    """The MAC of a rows file, to be fed its lines: HMAC-SHA256, which this machine's CPU
    computes at 1.4 GB/s (SHA instructions) where keyed BLAKE2b took 0.63 GB/s; a file of a
    million rows is hashed twice a read (checked, then as its rows are used)."""
    return hmac.new(key, first, hashlib.sha256)


def _lines(header: dict[str, Any], written: _Written) -> Iterator[bytes]:
    yield orjson.dumps(header) + b"\n"
    yield from written.lines()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):  # a NamedTuple cost estimate, written as its fields
        return list(value)
    raise TypeError(type(value).__name__)


def _load(
    path: Path,
    key: bytes,
    definition: str,
    data_file: Path | None,
    prices: PriceTable,
    today: date,
) -> Iterator[list[Row]] | None:
    """The cached rows in chunks, or None when there are none that can be trusted and used.

    The file is read twice: once to check its MAC (nothing held), then chunk by chunk as the
    rows are used, checked again as it goes (SpecError if it changed in between)."""
    opened = _open_checked(path, key, definition, data_file, prices, today)
    if opened is None:
        return None
    fh, checked = opened
    return _chunks(fh, path, checked, key)


def _chunks(fh: IO[bytes], path: Path, checked: _Checked, key: bytes) -> Iterator[list[Row]]:
    cls = checked.cls
    new = tuple.__new__  # the NamedTuple from its fields in one C call (this runs per item)
    mac = _mac(key, checked.first)
    count = 0
    with fh:
        fh.seek(len(checked.first))
        for line in fh:
            if line.startswith(b'{"mac":'):
                break
            mac.update(line)
            try:
                part = orjson.loads(line)
            except orjson.JSONDecodeError:
                break  # reported below: the MAC no longer matches
            count += len(part)
            if cls is None:
                yield [tuple(r) for r in part]  # type: ignore[misc]
            else:
                yield [
                    (k, c, f, new(cls, cost) if type(cost) is list else cost, m, s)
                    for k, c, f, cost, m, s in part
                ]
    ended = b'{"mac":"' + mac.hexdigest().encode() + b'"}\n'
    if ended != checked.end or count != checked.header.get("rows"):
        raise SpecError(f"{path}: changed while it was read, or damaged; run the command again")


def identity_chunks(
    job: Job, root: Path, prices: PriceTable, today: date, size: int
) -> Iterator[Chunk] | None:
    """The cached row (key, custom_id, fingerprint, cost, model, size) of every item of `job`
    in source order, in chunks of `size` rows (`items.Chunk`), streamed; None when the cache
    cannot serve them (then render).

    What an export needs without rendering: the file is checked whole (header, prices, hash)
    before its first row is read again, through the same open file, so its memory stays flat.
    Where the file's lines hold `size` rows each (its `line_rows`), a chunk is a line, parsed
    only when its rows are asked for: a reader of every other chunk reads the others past."""
    opened = _opened(job, root, prices, today)
    if opened is None:
        return None
    fh, checked = opened
    return _identity_chunks(fh, checked.header, size)


def _identity_chunks(fh: IO[bytes], header: dict[str, Any], size: int) -> Iterator[Chunk]:
    from batchops.spec.items import Chunk  # what the rows' reader makes of them too

    with fh:
        fh.seek(0)
        fh.readline()  # the header
        if header.get("line_rows") == size:  # a chunk a line: counted, not parsed, till asked
            left = header.get("rows")
            for line in fh:
                if line.startswith(b'{"mac":'):
                    return
                if type(left) is not int or left <= 0:
                    raise _damaged(fh)
                rows = min(size, left)
                left -= rows
                yield Chunk(rows, lambda line=line, rows=rows: _line_rows(fh, line, rows))
            return
        pending: list[Row] = []  # the rows read and not yet in a chunk
        for line in fh:
            if line.startswith(b'{"mac":'):
                break
            pending += _line_rows(fh, line, None)
            whole = len(pending) - len(pending) % size
            for at in range(0, whole, size):
                taken = pending[at : at + size]
                yield Chunk(len(taken), lambda taken=taken: taken)
            del pending[:whole]
        if pending:
            yield Chunk(len(pending), lambda: pending)


def _line_rows(fh: IO[bytes], line: bytes, rows: int | None) -> list[Row]:
    """The rows of one line of a rows file (lists, as read: the caller takes what it needs of
    each), which must be `rows` of them unless that is None."""
    with paused_gc():  # a line is thousands of new lists at once
        try:
            made = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise _damaged(fh) from None
    if type(made) is not list or (rows is not None and len(made) != rows):
        raise _damaged(fh)
    return made


def _damaged(fh: IO[bytes]) -> SpecError:
    return SpecError(f"{fh.name}: changed while it was read, or damaged; run the command again")


def serves(job: Job, root: Path, prices: PriceTable, today: date) -> bool:
    """True when `identity_chunks` would serve the job's rows (its source rendered without a
    problem into the rows kept, and nothing they were made from changed since)."""
    opened = _opened(job, root, prices, today)
    if opened is None:
        return False
    opened[0].close()
    return True


def _opened(
    job: Job, root: Path, prices: PriceTable, today: date
) -> tuple[IO[bytes], _Checked] | None:
    """The job's rows file, open and checked whole (`_open_checked`), when it serves the job."""
    if not enabled() or job.attachments:
        return None
    key = _mac_key()
    if key is None:
        return None
    path = cache_dir(root) / "rows" / f"{job.name}.jsonl"
    definition = _definition_digest(job, prices)
    return _open_checked(path, key, definition, job.source_file(), prices, today)


def _open_checked(
    path: Path,
    key: bytes,
    definition: str,
    data_file: Path | None,
    prices: PriceTable,
    today: date,
) -> tuple[IO[bytes], _Checked] | None:
    """The rows file at `path`, open after a whole check (`_check`), and what it holds; None
    (and closed) when there is none or it cannot be trusted and used."""
    fh = _open_regular(path)
    if fh is None:
        return None
    try:
        checked = _check(fh, key, definition, data_file, prices, today)
    except BaseException:
        fh.close()
        raise
    if checked is None:
        fh.close()
        return None
    return fh, checked


def _open_regular(path: Path) -> IO[bytes] | None:
    """The file at `path` open for reading if it is a regular file, not through a symlink; else
    None. `.batchops-cache/` is in the project, so a pull request can put anything there: a
    symlink to /dev/zero or a FIFO would be read without end."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


class _Checked(NamedTuple):
    header: dict[str, Any]
    cls: Any  # the cost type (see `_cost_type`)
    first: bytes  # the header line, as read
    end: bytes  # the MAC line, as read


def _check(
    fh: IO[bytes],
    key: bytes,
    definition: str,
    data_file: Path | None,
    prices: PriceTable,
    today: date,
) -> _Checked | None:
    """What a cache file holds, when its rows were written for this definition and data, with
    this user's key, at today's prices; None otherwise. Reads the file through, holding nothing."""
    first = fh.readline(_HEADER_BYTES)  # a longer one is no header batchops wrote
    try:
        header = orjson.loads(first)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(header, dict) or header.get("kind") != FORMAT:
        return None
    if header.get("definition") != definition or not _same_data(header, data_file):
        return None
    mac = _mac(key, first)
    end = None
    for line in fh:
        if line.startswith(b'{"mac":'):
            end = line
            break
        mac.update(line)
    expected = b'{"mac":"' + mac.hexdigest().encode() + b'"}\n'
    if end is None or not hmac.compare_digest(end, expected):
        return None  # damaged, cut short, or not written with this user's key
    cached_prices = header.get("prices") or {}
    if cached_prices != _prices_of(set(cached_prices), prices, today):
        return None  # a dated price changed since (the table's content did not)
    cls = _cost_type(header.get("cost_type"))
    if cls is False:
        return None
    return _Checked(header, cls, first, end)


def _cost_type(spec: Any) -> Any:
    """The NamedTuple class of tuple-shaped costs (None: costs are plain numbers; False: it is
    gone or has other fields now)."""
    if spec is None:
        return None
    try:
        module, qualname, fields = spec
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if list(cls._fields) != fields:
            return False
        return cls
    except (ValueError, TypeError, ImportError, AttributeError):
        return False


def _same_data(header: dict[str, Any], data_file: Path | None) -> bool:
    data = header.get("data")
    if data_file is None:
        return data is None
    if not isinstance(data, dict):
        return False
    stat = _stat_of(data_file)
    if stat is None:
        return False
    written_at = header.get("written_at") or 0
    racy = stat[1] >= (written_at - RACY_SECONDS) * 1e9  # modified while, or just before, writing
    if stat == data.get("stat") and not racy:
        return True
    return _content_digest(data_file) == data.get("sha256")


# --- shared with the plan memo (batchops.plan.memo): the same identities, key and checks ---------

mac_key = _mac_key
definition_digest = _definition_digest
stat_of = _stat_of
content_digest = _content_digest
same_data = _same_data
