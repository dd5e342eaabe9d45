"""From spec files to what the planner needs: desired items, their cost, and the spec digest.

This is the I/O half of planning (reading specs and data files, rendering templates). The planner
itself (`planner.make_plan`) is pure and takes what this module returns.
"""

from __future__ import annotations

import hashlib
import os
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, overload

from batchops.errors import BatchopsError, SpecError
from batchops.lazyclass import dataclass
from batchops.pricing import ItemEstimate, OutputExpectation, PriceTable, expected_output
from batchops.spec import cache, caching, parallel, rowmaker
from batchops.spec.items import FINGERPRINT_PREFIX, Item, custom_id_for, iter_items
from batchops.spec.model import Job, Project, former_names

if TYPE_CHECKING:
    from batchops.spec.spool import RequestSpool


class DesiredItem(NamedTuple):
    """An item as the specs want it (rendered elsewhere; only what the diff needs)."""

    key: str
    custom_id: str
    fingerprint: str
    cost_usd: float
    size: int = 0  # bytes of its request line in a create body (for splitting into batches)
    estimate: ItemEstimate | None = None  # expected cost and cached prefix (None: cost_usd only)


# --- a job's desired items, held as columns ------------------------------------------------------

# Estimate objects a plan knows by identity at once (`_desired_job`): the producers share a few,
# rows read back from the rows cache each hold their own, which must not all be kept alive.
_KNOWN_ESTIMATES = 256
_BLOCK = rowmaker.BLOCK_ROWS  # items per block that `append` and `extend` pack
# Items a table holds in memory; the blocks past them are written to a file and read back
# when read (a table of a million items would hold some 80 MB, of ten million 800 MB).
RESIDENT_ITEMS = 1 << 16
_WIDER = {"B": ("H", 1 << 8), "H": ("I", 1 << 16)}  # a profile index's next width, past its limit


class SequenceView(Sequence):
    """A sequence compared element by element with any other (a tuple of the same items is
    equal), as the tuples these views stand in for were."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


class ItemTable(SequenceView, Sequence[DesiredItem]):
    """The desired items of one job, as a `Sequence[DesiredItem]` that holds no object per item.

    A million items as tuples of strings cost hundreds of bytes each; here keys and custom_ids are
    held a block at a time as one joined string with end offsets, fingerprints as 32-byte digests
    in one bytes object per block, and each item's (cost, size, estimate) as an index into the
    job's few distinct ones. Blocks come whole from a producer (`add`, any length) or are packed
    here from rows (`append`, `extend`). An item is rebuilt, equal to the one added, when read.
    Past RESIDENT_ITEMS, blocks are written to a temporary file and read back a block at a time
    (`_BlockFile`), so that a table of ten million items holds about a byte each in memory.
    """

    __slots__ = (
        "_blocks", "_starts", "_odd", "_profiles", "_profile_of", "_pending", "_n", "_file",
    )  # fmt: skip

    def __init__(self, items: Iterable[DesiredItem] = ()):
        # per block: (keys, their ends, custom_ids, their ends, fingerprint digests), or None
        # for a block in _file (past RESIDENT_ITEMS)
        self._blocks: list[_Columns | None] = []
        self._file: _BlockFile | None = None
        self._starts: list[int] = []  # the index of each block's first item
        self._odd: dict[int, str] = {}  # fingerprints not of the sha256:<hex> form, by index
        self._profiles: list[tuple[float, int, ItemEstimate | None]] = []
        # item → its (cost, size, estimate) in _profiles, in as few bytes as their count allows
        self._profile_of = array("B")
        self._pending: list[tuple[str, str, str]] = []
        self._n = 0  # items in blocks
        for item in items:
            self.append(item.key, item.custom_id, item.fingerprint,
                        self.profile((item.cost_usd, item.size, item.estimate)))  # fmt: skip
        self.close()

    # -- building

    def profile(self, value: tuple[float, int, ItemEstimate | None]) -> int:
        """A new profile's index (the caller shares equal ones)."""
        self._profiles.append(value)
        code = self._profile_of.typecode
        if code in _WIDER and len(self._profiles) > _WIDER[code][1]:
            self._profile_of = array(_WIDER[code][0], self._profile_of)
        return len(self._profiles) - 1

    def append(self, key: str, custom_id: str, fp: str, profile: int) -> None:
        self._pending.append((key, custom_id, fp))
        self._profile_of.append(profile)
        if len(self._pending) == _BLOCK:
            self._flush()

    def extend(self, rows: list[tuple[str, str, str]], profiles: list[int]) -> None:
        """`append` of many: (key, custom_id, fingerprint) rows and their profiles."""
        self._profile_of.extend(profiles)
        self._pending.extend(rows)
        while len(self._pending) >= _BLOCK:
            self._flush()

    def add(self, block: rowmaker.Block, profiles: array) -> None:
        """A producer's block whole, its rows' profiles in order (after any rows appended)."""
        if self._pending:
            self._flush()
        if profiles.typecode != self._profile_of.typecode:
            profiles = array(self._profile_of.typecode, profiles)
        self._profile_of.extend(profiles)
        self._add(block.keys, block.key_ends, block.custom_ids, block.custom_id_ends,
                  block.digests, block.odd, block.count)  # fmt: skip

    def close(self) -> ItemTable:
        """Pack the last, partial block (call once every item is added)."""
        if self._pending:
            self._flush()
        return self

    def _flush(self) -> None:
        """Pack the first block of the pending rows."""
        keys, cids, fps = zip(*self._pending[:_BLOCK], strict=True)
        del self._pending[:_BLOCK]
        self._add(*rowmaker.joined(keys), *rowmaker.joined(cids), *rowmaker.digests(fps), len(keys))

    def _add(self, keys, key_ends, cids, cid_ends, digests, odd, count) -> None:
        if not count:
            return
        base = self._n
        columns = (keys, key_ends, cids, cid_ends, digests)
        if base < RESIDENT_ITEMS:
            self._blocks.append(columns)
        else:
            if self._file is None:
                self._file = _BlockFile()
            self._file.write(len(self._blocks), columns)
            self._blocks.append(None)
        self._starts.append(base)
        for n, fp in odd.items():
            self._odd[base + n] = fp
        self._n += count

    def set_profile(self, index: int, profile: int) -> None:
        self._profile_of[index] = profile

    # -- reading

    @property
    def profiles(self) -> list[tuple[float, int, ItemEstimate | None]]:
        """The distinct (cost_usd, size, estimate) of the items (`profile_of` indexes it)."""
        return self._profiles

    @property
    def profile_of(self) -> array:
        return self._profile_of

    def __len__(self) -> int:
        return self._n + len(self._pending)

    def _block(self, block: int) -> _Columns:
        columns = self._blocks[block]
        if columns is None:
            return self._file.read(block)  # type: ignore[union-attr]
        return columns

    def _block_fps(self, block: int) -> list[str]:
        return rowmaker.fingerprints(self._block(block)[4], self._odd, self._starts[block])

    def costs(self) -> Iterator[float]:
        """Each item's cost_usd, in order."""
        costs = [cost for cost, _, _ in self._profiles]
        return map(costs.__getitem__, self._profile_of)

    def keys(self) -> Iterator[str]:
        for block in range(len(self._blocks)):
            keys, ends, *_ = self._block(block)
            yield from rowmaker.split(keys, ends)

    def fingerprints(self) -> Iterator[str]:
        for block in range(len(self._blocks)):
            yield from self._block_fps(block)

    def __iter__(self) -> Iterator[DesiredItem]:
        return self.iter_range(0, len(self))

    def _spans(self, start: int, stop: int) -> Iterator[tuple[int, int, int, int]]:
        """(block, its first item's index, from, to within it) of the blocks holding items
        start … stop-1."""
        if self._pending:
            raise RuntimeError("ItemTable read before close()")
        if start >= stop:
            return
        starts = self._starts
        block = bisect_right(starts, start) - 1
        while block < len(starts) and starts[block] < stop:
            base = starts[block]
            end = starts[block + 1] if block + 1 < len(starts) else self._n
            yield block, base, max(start - base, 0), min(stop, end) - base
            block += 1

    def iter_range(self, start: int, stop: int) -> Iterator[DesiredItem]:
        """Items start … stop-1, rebuilt a block at a time."""
        new, profiles, profile_of = tuple.__new__, self._profiles, self._profile_of
        split = rowmaker.split
        for block, base, lo, hi in self._spans(start, stop):
            key_text, key_ends, cid_text, cid_ends, _ = self._block(block)
            keys, cids = split(key_text, key_ends), split(cid_text, cid_ends)
            fps = self._block_fps(block)
            for n in range(lo, hi):
                yield new(DesiredItem, (keys[n], cids[n], fps[n], *profiles[profile_of[base + n]]))

    def ids(self, start: int, stop: int) -> Iterator[tuple[str, str]]:
        """(key, custom_id) of items start … stop-1, a block at a time."""
        for keys, cids in self.id_lists(start, stop):
            yield from zip(keys, cids, strict=True)

    def id_lists(self, start: int, stop: int) -> Iterator[tuple[list[str], list[str]]]:
        """The keys and the custom_ids of items start … stop-1, as lists, a block at a time."""
        split = rowmaker.split
        for block, _, lo, hi in self._spans(start, stop):
            key_text, key_ends, cid_text, cid_ends, _ = self._block(block)
            keys, cids = split(key_text, key_ends), split(cid_text, cid_ends)
            if lo or hi < len(keys):
                keys, cids = keys[lo:hi], cids[lo:hi]
            yield keys, cids

    def _where(self, index: int) -> tuple[int, int]:
        block = bisect_right(self._starts, index) - 1
        return block, index - self._starts[block]

    @staticmethod
    def _string(text: str, ends: array, n: int) -> str:
        return text[ends[n - 1] if n else 0 : ends[n]]

    def key(self, index: int) -> str:
        block, n = self._where(index)
        return self._string(*self._block(block)[:2], n)

    def fingerprint(self, index: int) -> str:
        if index in self._odd:
            return self._odd[index]
        block, n = self._where(index)
        return FINGERPRINT_PREFIX + self._block(block)[4][32 * n : 32 * n + 32].hex()

    @overload
    def __getitem__(self, index: int) -> DesiredItem: ...
    @overload
    def __getitem__(self, index: slice) -> list[DesiredItem]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self) or self._pending:
            raise IndexError("item index out of range")
        block, n = self._where(index)
        keys, key_ends, cids, cid_ends, _ = self._block(block)
        return DesiredItem(
            self._string(keys, key_ends, n),
            self._string(cids, cid_ends, n),
            self.fingerprint(index),
            *self._profiles[self._profile_of[index]],
        )

    def __repr__(self) -> str:
        return f"ItemTable({len(self)} items)"


_Columns = tuple[str, array, str, array, bytes]
_HEAD = struct.Struct("<4Q2s")  # bytes of keys, key ends, custom_ids, their ends; ends' types


class _BlockFile:
    """An ItemTable's blocks in a temporary file, read back whole (the two last read are
    kept: items are mostly read in order, a block at a time). Read with pread, not mapped:
    the pages of a mapped file that were read would count as the process's memory."""

    __slots__ = ("_file", "_end", "_at", "_kept")

    def __init__(self) -> None:
        import tempfile  # ~10 ms to import: only a job of more than RESIDENT_ITEMS needs it

        self._file = tempfile.TemporaryFile(prefix="batchops-items-")
        self._end = 0
        self._at: dict[int, tuple[int, int]] = {}  # block → (offset, length)
        self._kept: dict[int, _Columns] = {}

    def write(self, block: int, columns: _Columns) -> None:
        keys, key_ends, cids, cid_ends, digests = columns
        key_bytes = keys.encode("utf-8", "surrogatepass")
        cid_bytes = cids.encode("utf-8", "surrogatepass")
        codes = (key_ends.typecode + cid_ends.typecode).encode()
        data = b"".join((
            _HEAD.pack(len(key_bytes), len(key_ends) * key_ends.itemsize, len(cid_bytes),
                       len(cid_ends) * cid_ends.itemsize, codes),
            key_bytes, key_ends.tobytes(), cid_bytes, cid_ends.tobytes(), digests,
        ))  # fmt: skip
        os.pwrite(self._file.fileno(), data, self._end)
        self._at[block] = (self._end, len(data))
        self._end += len(data)

    def read(self, block: int) -> _Columns:
        columns = self._kept.get(block)
        if columns is not None:
            return columns
        offset, length = self._at[block]
        data = os.pread(self._file.fileno(), length, offset)
        if len(data) != length:
            raise OSError(f"an item table's file was cut short (block {block})")
        *sizes, codes = _HEAD.unpack_from(data)
        at = _HEAD.size
        parts = []
        for size in sizes:
            parts.append(data[at : at + size])
            at += size
        key_ends, cid_ends = array(chr(codes[0])), array(chr(codes[1]))
        key_ends.frombytes(parts[1])
        cid_ends.frombytes(parts[3])
        columns = (
            parts[0].decode("utf-8", "surrogatepass"), key_ends,
            parts[2].decode("utf-8", "surrogatepass"), cid_ends, data[at:],
        )  # fmt: skip
        if len(self._kept) >= 2:
            del self._kept[next(iter(self._kept))]
        self._kept[block] = columns
        return columns


@dataclass(frozen=True)
class DesiredJob:
    name: str
    max_attempts: int
    budget_usd: float | None
    items: Sequence[DesiredItem]  # an ItemTable when collected from specs
    cost_note: str | None = None  # why the estimate is incomplete (e.g. no price for the model)
    betas: tuple[str, ...] = ()
    reuse: bool = True  # answer items from stored results of the same request (any job)
    output_basis: str | None = None  # where the expected output per reply came from


@dataclass(frozen=True)
class Desired:
    project: Project
    jobs: tuple[DesiredJob, ...]
    spec_digest: str
    all_jobs_in_scope: bool
    # (job, key) of items to send again on purpose (`apply --replace`), even if they succeeded
    replace: frozenset[tuple[str, str]] = frozenset()
    # the request lines of the jobs rendered (`plan -o`)
    spool: RequestSpool | None = field(default=None, compare=False, repr=False)

    def spec_job(self, name: str) -> Job:
        return next(j for j in self.project.jobs if j.name == name)


def sent_custom_ids(desired: Desired, job: DesiredJob) -> Iterator[tuple[str, DesiredItem]]:
    """Every custom_id a request of one of `job`'s items may have been sent with: its own, and
    the one made under each name the job had before (`moved`), with the item it names."""
    for item in job.items:
        yield item.custom_id, item
    for old in former_names(desired.project.moves, job.name):
        for item in job.items:
            yield custom_id_for(old, item.key, item.fingerprint), item


def select_jobs(project: Project, names: Iterable[str] | None) -> list[Job]:
    """The jobs named by `--job` (all when none), refusing unknown names."""
    names = list(names or [])
    known = {j.name for j in project.jobs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BatchopsError(
            *(f"unknown job {n!r} (jobs: {', '.join(sorted(known)) or 'none'})" for n in unknown)
        )
    return [j for j in project.jobs if not names or j.name in names]


def collect(
    project: Project,
    prices: PriceTable,
    today: date,
    job_names: Iterable[str] | None = None,
    outputs: dict[str, dict[str, tuple[int, float]]] | None = None,
    spool: RequestSpool | None = None,
) -> Desired:
    """Render every item of the selected jobs; gather every problem of every job before failing.

    `outputs` (job → model → (results, mean output tokens), from the state) sets the expected
    output of replies; without it, a job's `expected_output_tokens` or max_tokens does. With
    `spool`, the request line of every item rendered in this process is kept there."""
    job_names = list(job_names or [])
    jobs = select_jobs(project, job_names)
    digest = hashlib.sha256(b"batchops-spec-digest-v1\n")
    desired: list[DesiredJob] = []
    problems: list[str] = []
    peers = {j.name: j.max_tokens for j in project.jobs if j.max_tokens}
    for job in jobs:
        try:
            desired.append(
                _desired_job(job, project.root, prices, today, digest, outputs or {}, peers, spool)
            )
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(*problems)
    return Desired(
        project, tuple(desired), "sha256:" + digest.hexdigest(), not job_names, spool=spool
    )


def _desired_job(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    digest,
    outputs: dict[str, dict[str, tuple[int, float]]],
    peers: dict[str, int],
    spool: RequestSpool | None = None,
) -> DesiredJob:
    price_cache: dict[str, object] = {}
    missing: set[str] = set()
    table = ItemTable()
    digest.update(f"job\x1f{job.name}\x1f{job.max_attempts}\x1f{job.budget_usd}\n".encode())
    rendered = cache.rows(
        job, root, prices, today, lambda: _rows(job, root, prices, today, price_cache, spool)
    )
    # Most items of a job cost the same and have sizes in a narrow range: each distinct
    # (cost, size, estimate) is held once, as a profile the table indexes, not once per item.
    # Only values equal in every way share one (a cost of -0.0 is not 0.0, a size 261.0 not 261).
    profiles: dict[tuple, int] = {}
    # The expected output per model, applied to each row after it is rendered or read from the
    # rows cache (which keeps what the spec alone says), so a cached row is never stale; each
    # distinct estimate is adjusted once: (estimate, model) → (cost, adjusted, its identity).
    expecting: dict[str, tuple[OutputExpectation, float, object]] = {}
    adjusted: dict[tuple, tuple] = {}
    # The producers hand out one object per distinct estimate: known by identity, an estimate
    # is not hashed again (each entry holds its estimate, so that id is never another's).
    known: dict[int, tuple] = {}

    def profile_of(cost, model: str, size) -> tuple[int, tuple | None]:
        """The profile of a row's (cost, model, size), and the row's value of it when rows of
        this value each need a profile of their own (None: they share it)."""
        estimate = None
        same: object = None  # what equal (cost, estimate) pairs share; None: not shared
        if isinstance(cost, ItemEstimate):
            done = known.get(id(cost))
            if done is None or done[3] is not cost or done[4] != model:
                shared = cost.high > 0 and cost.expected > 0  # (0.0 and -0.0 are equal keys)
                done = adjusted.get((cost, model)) if shared else None
                if done is not None:
                    if len(known) >= _KNOWN_ESTIMATES:  # rows read back each hold their own
                        known.clear()
                    known[id(cost)] = (*done, cost, model)
            if done is None:
                raw = cost
                seen = expecting.get(model)
                if seen is None:
                    found = expected_output(
                        job.name, model, job.max_tokens, job.expected_output_tokens, outputs, peers
                    )
                    tokens = float("inf") if found.tokens is None else found.tokens
                    seen = expecting[model] = (found, tokens, prices.price(model, today))
                if seen[2] is not None:
                    cost = cost.with_output(seen[1], seen[2])  # type: ignore[arg-type]
                estimate = cost
                cost = estimate.high
                if shared and estimate.high > 0 and estimate.expected > 0:
                    same = ("e", len(adjusted))
                    adjusted[(raw, model)] = (cost, estimate, same)
                    known[id(raw)] = (cost, estimate, same, raw, model)
            else:
                cost, estimate, same = done[0], done[1], done[2]
        elif cost is None:
            missing.add(model)
            cost = 0.0
            same = "unpriced"
        elif type(cost) is float and cost > 0:
            same = ("f", cost)
        value = (cost, size, estimate)
        if same is not None and type(size) is int:
            profile = profiles.get((same, size))
            if profile is None:
                profile = profiles[(same, size)] = table.profile(value)
            return profile, None
        return table.profile(value), value

    # A block's rows take their profiles from its table's few entries, not one by one.
    for block in rowmaker.blocks(rendered):
        found = [profile_of(*entry) for entry in block.table]
        if len(found) == 1 and found[0][1] is None:
            indexes = array(table.profile_of.typecode, [found[0][0]]) * block.count
        else:
            indexes = array("I", map([p for p, _ in found].__getitem__, block.index))
            loose = {e for e, (_, value) in enumerate(found) if value is not None}
            if loose:  # each row of these takes a profile of its own; the first, the one made
                taken: set[int] = set()
                for n, e in enumerate(block.index):
                    if e in loose and e in taken:
                        indexes[n] = table.profile(found[e][1])  # type: ignore[arg-type]
                    taken.add(e)
        table.add(block, indexes)
        digest.update(block.spelled.encode())
    table.close()
    if job.cache == "auto":
        _auto_cache(table)
    notes = []
    if missing and job.budget_usd is not None:
        raise SpecError(*(unpriced_budget(job.name, model, prices) for model in sorted(missing)))
    if missing:
        notes.append(
            f"no price for model {', '.join(sorted(missing))} in {prices.source}: "
            "estimate excludes it"
        )
    if any(e is not None and e.unsized for _, _, e in table.profiles):
        notes.append(UNSIZED_NOTE)
    note = "; ".join(notes) or None
    basis = None
    if expecting:
        notes = {found.note for found, _, _ in expecting.values()}
        if len(notes) == 1:
            basis = notes.pop()
        else:
            basis = "; ".join(f"{m}: {f.note}" for m, (f, _, _) in sorted(expecting.items()))
    return DesiredJob(
        job.name,
        job.max_attempts,
        job.budget_usd,
        table,
        note,
        tuple(job.betas),
        job.reuse,
        basis,
    )


def _auto_cache(table: ItemTable) -> None:
    """Keep auto marks only on prefixes shared by enough items to pay back their write."""
    profiles, profile_of = table.profiles, table.profile_of
    sharing: dict[str | None, int] = {}
    for p in profile_of:
        e = profiles[p][2]
        if e is not None and e.auto:
            sharing[e.prefix] = sharing.get(e.prefix, 0) + 1
    if all(n >= caching.MIN_SHARING for n in sharing.values()):
        return
    plain_of: dict[int, int] = {}  # profile → its plain twin, made once per profile
    for index, p in enumerate(profile_of):
        cost, size, e = profiles[p]
        if e is not None and e.auto and sharing[e.prefix] < caching.MIN_SHARING:
            twin = plain_of.get(p)
            if twin is None:
                plain = ItemEstimate(
                    e.plain_high or e.high,
                    e.plain_expected or e.expected,
                    max_tokens=e.max_tokens,
                    expected_output=e.expected_output,
                    long=e.long,
                )
                twin = plain_of[p] = table.profile((plain.high, size, plain))
            table.set_profile(index, twin)


# A document given by URL or by file_id cannot be sized before it is sent (pricing._size).
UNSIZED_NOTE = (
    "documents given by URL or file_id cannot be sized before they are sent: "
    "the estimate leaves them out"
)


def unpriced_budget(job: str, model: str, prices: PriceTable) -> str:
    """The error for a job with a budget whose model has no price: the budget could not work."""
    return (
        f"job {job}: model {model!r} has no price in {prices.source}, so budget_usd cannot be "
        f'checked; add a row `[models."{model}"]` with `input` and `output` (USD per million '
        "tokens, batch prices) to a prices file given by --prices, BATCHOPS_PRICES or `prices` "
        "in batchops.toml"
    )


def _rows(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    price_cache: dict,
    spool: RequestSpool | None = None,
) -> Iterator[rowmaker.Row | list[rowmaker.Row] | rowmaker.Block]:
    """(key, custom_id, fingerprint, cost (an estimate, or None when unpriced), model, request
    bytes) per item: one at a time, in lists, or in blocks (`rowmaker.Block`); with `spool`,
    each item's request line is kept there (by this process, or by the worker processes)."""
    lines = spool.job(job.name) if spool is not None else None
    if parallel.wants_parallel(job):
        yield from parallel.desired_blocks(job, root, prices, today, lines=lines)
    else:
        for part in rowmaker.chunks(job, root, prices, today, price_cache, lines):
            if lines is not None:
                lines.fold()  # its lines were written: only where they start is kept
            yield part
    if lines is not None:
        lines.finish()


def items_for(
    project: Project, job_name: str, keys: set[str] | None = None, custom_ids: bool = True
) -> Iterator[Item]:
    """Render the items of one job again (for sending or saving a plan), optionally only `keys`;
    without `custom_ids`, those of template items are "" (the plan has them)."""
    job = next(j for j in project.jobs if j.name == job_name)
    for item in iter_items(job, project.root, custom_ids):
        if keys is None or item.key in keys:
            yield item


def requests_for(
    project: Project, job_name: str, keys: set[str] | None = None
) -> Iterator[rowmaker.Request]:
    """(key, fingerprint, params as JSON) of the items of one job, rendered again (for saving a
    plan), optionally only `keys`: `items_for`'s items, by the fast producer where it can."""
    job = next(j for j in project.jobs if j.name == job_name)
    for request in rowmaker.requests(job, project.root):
        if keys is None or request[0] in keys:
            yield request
