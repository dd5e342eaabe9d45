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
never pickles, and carry a keyed hash (BLAKE2b) whose key lives in the user's cache folder
(`$XDG_CACHE_HOME/batchops`, or `~/.cache/batchops`), outside the project: specs come from pull
requests, and a cache file planted in one is refused, because no pull request knows the key.
Jobs of fewer than MIN_ROWS items are not kept (they render in a fraction of a second).
`BATCHOPS_CACHE=off` turns the cache off.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import hmac
import importlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson

import batchops
from batchops.pricing import PriceTable
from batchops.spec.model import Job

FORMAT = "batchops-rows-v1"
CACHE_DIR = ".batchops-cache"
CHUNK_ROWS = 20_000
MIN_ROWS = 10_000  # a smaller job renders in a fraction of a second: no file is kept for it
RACY_SECONDS = 2.0  # a file modified this close to when its rows were written is hashed anyway
# The modules whose code decides what a row holds: rendering, fingerprints, custom ids, prices.
_CODE = (
    "spec/items.py",
    "spec/sandbox.py",
    "spec/parallel.py",
    "spec/desired.py",
    "spec/caching.py",
    "pricing.py",
    "apirules.py",
)

Row = tuple[str, str, str, Any, str, int]


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
    """The rows `render()` yields, from the cache when nothing they depend on changed."""
    # A million rows become millions of tuples, none in a cycle, while the caller keeps them:
    # the collector would scan the growing heap again and again (half the time), so it waits.
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield from _rows(job, root, prices, today, render)
    finally:
        if collecting:
            gc.enable()


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
        for chunk in cached:
            yield from chunk
        return
    written: list[Row] = []
    started = time.time()
    for row in render():
        written.append(row)
        yield row
    # Only a render that completed gets here (a SpecError ends it before): keep its rows.
    if len(written) >= MIN_ROWS:
        with contextlib.suppress(OSError):
            _save(path, key, definition, data_file, prices, today, written, started)


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
        "job": job.model_dump(mode="json"),
        "prices": {
            "as_of": prices.as_of,
            "multipliers": prices.multipliers,
            "models": prices.models,
        },  # fmt: skip
    }
    data = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str)
    return "sha256:" + hashlib.sha256(data).hexdigest()


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


def _save(
    path: Path,
    key: bytes,
    definition: str,
    data_file: Path | None,
    prices: PriceTable,
    today: date,
    written: list[Row],
    started: float,
) -> None:
    directory = path.parent
    # A symlink planted in a pull request must not send these writes out of the project.
    if any(p.is_symlink() for p in (directory.parent, directory, path)):
        return
    directory.mkdir(parents=True, exist_ok=True)
    ignore = directory.parent / ".gitignore"
    if not ignore.exists() and not ignore.is_symlink():
        ignore.write_text("# batchops's cache: never commit it\n*\n", encoding="utf-8")
    cost_type = next((type(r[3]) for r in written if isinstance(r[3], tuple)), None)
    header = {
        "kind": FORMAT,
        "definition": definition,
        "data": None
        if data_file is None
        else {"stat": _stat_of(data_file), "sha256": _content_digest(data_file)},
        "written_at": started,
        "prices": _prices_of({r[4] for r in written}, prices, today),
        "cost_type": None
        if cost_type is None
        else [cost_type.__module__, cost_type.__qualname__, list(cost_type._fields)],
        "rows": len(written),
    }
    mac = hashlib.blake2b(key=key, digest_size=32)
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        with tmp.open("wb") as fh:
            for line in _lines(header, written):
                mac.update(line)
                fh.write(line)
            fh.write(b'{"mac":"' + mac.hexdigest().encode() + b'"}\n')
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _lines(header: dict[str, Any], written: list[Row]) -> Iterator[bytes]:
    yield orjson.dumps(header) + b"\n"
    for start in range(0, len(written), CHUNK_ROWS):
        yield orjson.dumps(written[start : start + CHUNK_ROWS], default=_plain) + b"\n"


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
) -> list[list[Row]] | None:
    """The cached rows in chunks, or None when there are none that can be trusted and used."""
    try:
        fh = path.open("rb")
    except OSError:
        return None
    with fh:
        first = fh.readline()
        try:
            header = orjson.loads(first)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(header, dict) or header.get("kind") != FORMAT:
            return None
        if header.get("definition") != definition or not _same_data(header, data_file):
            return None
        mac = hashlib.blake2b(first, key=key, digest_size=32)
        chunks: list[bytes] = []
        end = None
        for line in fh:
            if line.startswith(b'{"mac":'):
                end = line
                break
            mac.update(line)
            chunks.append(line)
    expected = b'{"mac":"' + mac.hexdigest().encode() + b'"}\n'
    if end is None or not hmac.compare_digest(end, expected):
        return None  # damaged, cut short, or not written with this user's key
    cached_prices = header.get("prices") or {}
    if cached_prices != _prices_of(set(cached_prices), prices, today):
        return None  # a dated price changed since (the table's content did not)
    cls = _cost_type(header.get("cost_type"))
    if cls is False:
        return None
    new = tuple.__new__  # the NamedTuple from its fields in one C call (this runs per item)
    out: list[list[Row]] = []
    count = 0
    for line in chunks:
        part = orjson.loads(line)
        if cls is None:
            out.append([tuple(r) for r in part])  # type: ignore[misc]
        else:
            out.append(
                [
                    (k, c, f, new(cls, cost) if type(cost) is list else cost, m, s)
                    for k, c, f, cost, m, s in part
                ]
            )
        count += len(part)
    if count != header.get("rows"):
        return None
    return out


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
