"""The keys of a job seen so far, as 8-byte hashes spilled to a temporary file: duplicate keys
found in memory that does not grow with the item count.

Holding every key of a ten-million-item job (to report the line where a duplicate first
appeared) costs over a gigabyte. The producers keep the keys of only the last few thousand rows
(and report a duplicate among them as before), and log the hash of every key here; a hash logged
twice is a duplicate key, or very rarely two keys with one hash. Only then is the job read again
with those hashes' keys held exactly (`SuspectKeys`), which reports every duplicate as a full
set of keys would have.

Hashes are Python's own string hash (cached on each key, and the same in forked workers). They
are kept in runs of RUN; each full run is sorted and written to the file split into BUCKETS
ranges of hash values, so that the check reads one range at a time: a set of a few thousand
hashes per range, not one of every key.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left
from collections.abc import Iterable

RUN = 1 << 16  # hashes held before they are written (about 3 MB while a run is sorted)
BUCKETS = 256  # ranges of hash values, read back one at a time
_hash = hash  # (tests give keys one hash)
_BOUNDS = [-(1 << 63) + (b << 64) // BUCKETS for b in range(1, BUCKETS)]


class KeyHashes:
    """A log of key hashes; `suspects()` gives those logged more than once."""

    __slots__ = ("_run", "_file", "_end", "_extents", "count")

    def __init__(self) -> None:
        self._run = array("q")
        self._file = None  # a TemporaryFile once a run is written
        self._end = 0
        self._extents: list[array] = []  # per bucket: (offset, bytes) pairs of its pieces
        self.count = 0

    def add(self, keys: Iterable[str]) -> None:
        """Log the keys (their hashes)."""
        self.add_hashes(map(_hash, keys))

    def add_hashes(self, hashes: Iterable[int]) -> None:
        run = self._run
        before = len(run)
        run.extend(hashes)
        self.count += len(run) - before
        if len(run) >= RUN:
            self._write()

    def _write(self) -> None:
        """Sort the run and append it to the file, a piece per bucket."""
        values = sorted(self._run)
        self._run = array("q")
        if self._file is None:
            import tempfile  # ~10 ms to import: only a job of more than RUN items needs it

            self._file = tempfile.TemporaryFile(prefix="batchops-keys-")
            self._extents = [array("q") for _ in range(BUCKETS)]
        fd = self._file.fileno()
        data = array("q", values).tobytes()
        os.pwrite(fd, data, self._end)
        lo = 0
        for bucket in range(BUCKETS):
            hi = bisect_left(values, _BOUNDS[bucket]) if bucket < BUCKETS - 1 else len(values)
            if hi > lo:
                self._extents[bucket].extend((self._end + 8 * lo, 8 * (hi - lo)))
            lo = hi
        self._end += len(data)

    def suspects(self) -> frozenset[int]:
        """The hashes logged more than once (usually none)."""
        if self._file is None:
            return _repeated(self._run)
        if self._run:
            self._write()
        found: set[int] = set()
        fd = self._file.fileno()
        for extents in self._extents:
            hashes = array("q")
            for n in range(0, len(extents), 2):
                hashes.frombytes(os.pread(fd, extents[n + 1], extents[n]))
            found |= _repeated(hashes)
        return frozenset(found)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _repeated(hashes: array) -> frozenset[int]:
    if len(set(hashes)) == len(hashes):
        return frozenset()
    once: set[int] = set()
    twice = {h for h in hashes if h in once or once.add(h)}  # type: ignore[func-returns-value]
    return frozenset(twice)


class SuspectKeys:
    """`seen` (key → where it first appeared) for a pass that knows which hashes were logged
    more than once: only keys of those hashes are held, since every other key appears once."""

    __slots__ = ("suspects", "keys")

    def __init__(self, suspects: frozenset[int]):
        self.suspects = suspects
        self.keys: dict[str, int] = {}

    def __contains__(self, key: object) -> bool:
        return _hash(key) in self.suspects and key in self.keys

    def __getitem__(self, key: str) -> int:
        return self.keys[key]

    def __setitem__(self, key: str, where: int) -> None:
        if _hash(key) in self.suspects:
            self.keys[key] = where
