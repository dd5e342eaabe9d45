"""The request lines of a plan's render, kept so that `plan -o` writes them without rendering
every item a second time.

While a job's rows are rendered for planning, the producer (`rowmaker.rows`) also writes each
item's request, in order, to a temporary file as the start of its line in a plan file:
`{"key":…,"custom_id":…,"fingerprint":…,"params":…` and a newline. What follows the params in a
plan file (the item's reason and attempt) is known only once the plan is made: `expand` puts it
in place of each newline as `plan.saved` copies the lines the plan sends.

A job of the common shape (`rowmaker.RowMaker`) keeps less: where its params are the same bytes
around one template's JSON string, a line holds only that string after a NUL byte, and `expand`
puts the job's bytes around it. JSON as orjson writes it holds no raw control character, so the
NUL byte, and the \x01 that ends a line of the job's other items (made by the general path,
whole), can mean nothing else.

A job rendered by worker processes (`spec.parallel`) is kept by each worker in a file of its own
(`JobSpool.at`), a range at a time; the parent appends each range's lines to the job's spool in
the order of the ranges (`take`), so they stand in item order as one core would have written them.
A job's lines are kept only when its render ran to its end: rows served by the rows cache, or a
render the workers handed back to one core, leave none, and a saved plan renders that job again.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_right
from collections.abc import Iterator

import orjson

_READ = 1 << 20  # bytes of lines read at once
# Lines between two marks (`fold`) at most: a run of items that begins or ends between two marks
# is read from the mark before it, counting newlines, up to the mark after it (16 bytes a mark).
_MARK_LINES = 1024


def head(key: str, custom_id: str, fingerprint: str) -> bytes:
    """How every kept line of the item begins."""
    dumps = orjson.dumps
    return b'{"key":%b,"custom_id":%b,"fingerprint":%b' % (
        dumps(key),
        dumps(custom_id),
        dumps(fingerprint),
    )


def request_line(
    key: str, custom_id: str, fingerprint: str, params: bytes, end: bytes = b"\n"
) -> bytes:
    """An item's line as kept: its request's fields, its params as `orjson.dumps` writes them,
    and a newline where the rest of its line in a plan file goes (or `end`, that rest)."""
    dumps = orjson.dumps
    return b'{"key":%b,"custom_id":%b,"fingerprint":%b,"params":%b%b' % (
        dumps(key),
        dumps(custom_id),
        dumps(fingerprint),
        params,
        end,
    )


class JobSpool:
    """The lines of one job's items, in the order they were rendered."""

    __slots__ = (
        "file", "write", "sizes", "size", "count", "_lines", "_bytes", "broken", "around", "mixed",
    )  # fmt: skip

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            import tempfile  # ~10 ms to import: only `plan -o` needs it

            self.file = tempfile.TemporaryFile(buffering=_READ)  # open until the spool closes
        else:
            self.file = open(path, "w+b", buffering=_READ)  # noqa: SIM115 (closed by `close`)
        self.write = self.file.write  # the producer writes each line …
        self.sizes = array("I")
        self.size = self.sizes.append  # … and adds its length (`fold` sums them)
        self.count: int | None = None  # set when the render ended: its lines
        # where lines start, every `_MARK_LINES` lines or fewer (`fold`): the line, its byte
        # offset; a line is found from there by its newlines (JSON as orjson writes holds none)
        self._lines, self._bytes = array("Q", [0]), array("Q", [0])
        self.broken = False
        self.around: tuple[bytes, bytes] | None = None  # `,"params":` + before, after a template
        self.mixed = False  # lines of both kinds were kept

    def template(self, before: bytes, after: bytes) -> None:
        """The job's params are `before`, a template's JSON string, `after`: its producer keeps
        a line as its head, a NUL byte, that string and a newline (set before any line)."""
        self.around = (b',"params":' + before, after)

    def add(self, key: str, custom_id: str, fingerprint: str, params: bytes) -> None:
        """Keep an item's whole line (params written by the caller)."""
        try:
            line = request_line(key, custom_id, fingerprint, params)
        except orjson.JSONEncodeError:  # a string orjson will not write: render again instead
            self.broken = True
            return
        if self.around is not None:
            line = line[:-1] + b"\x01\n"
            self.mixed = True
        self.write(line)
        self.size(len(line))

    def add_params(self, key: str, custom_id: str, fingerprint: str, params: dict) -> None:
        try:
            data = orjson.dumps(params)
        except (TypeError, orjson.JSONEncodeError):
            self.broken = True
            return
        self.add(key, custom_id, fingerprint, data)

    @classmethod
    def at(cls, path: str) -> JobSpool:
        """A worker process's spool, in a file the parent reads (`piece`, then `take`)."""
        return cls(path)

    def begin(self) -> int:
        """Where the lines of the range a worker starts now begin in its file."""
        del self.sizes[:]  # in place: the producer holds `self.sizes.append`
        return self.file.tell()

    def piece(self, start: int) -> tuple[str, int, int, array, tuple | None, bool, bool]:
        """What the parent needs of the lines a worker kept since `begin` gave `start`."""
        self.file.flush()
        end = self.file.tell()
        return self.file.name, start, end, self.sizes[:], self.around, self.mixed, self.broken

    def take(
        self,
        path: str,
        start: int,
        end: int,
        sizes: array,
        around: tuple[bytes, bytes] | None,
        mixed: bool,
        broken: bool,
    ) -> None:
        """Append the lines a worker kept for one range (`piece`), after those taken before."""
        if broken or self.broken:
            self.broken = True
            return
        self.around = around  # the same for every range: each worker compiled the same job
        self.mixed = self.mixed or mixed
        with open(path, "rb") as source:
            fd = source.fileno()
            while start < end:
                data = os.pread(fd, min(_READ, end - start), start)
                if not data:
                    raise OSError(f"the request spool {path} was cut short")
                self.write(data)
                start += len(data)
        self.sizes.extend(sizes)
        self.fold()

    def fold(self) -> None:
        """Note where the next line starts (and every `_MARK_LINES` lines before it), and forget
        the sizes of the lines before it (held for every line, they would take 4 bytes an item)."""
        sizes = self.sizes
        line, at = self._lines[-1], self._bytes[-1]
        for first in range(0, len(sizes), _MARK_LINES):
            part = sizes[first : first + _MARK_LINES]
            line += len(part)
            at += sum(part)
            self._lines.append(line)
            self._bytes.append(at)
        del sizes[:]  # in place: the producer holds `self.sizes.append`

    def finish(self) -> None:
        """The render ended: every item has its line."""
        self.fold()
        if not self.broken:
            self.file.flush()
            self.count = self._lines[-1]

    def expand(self, data: bytes, tail: bytes) -> bytes:
        """Whole kept lines as a plan file holds them, each newline replaced by `tail`."""
        if self.around is None:
            return data.replace(b"\n", tail)
        before, after = self.around
        data = data.replace(b"\x00", before)
        if not self.mixed:
            return data.replace(b"\n", after + tail)
        data = data.replace(b"\x01\n", b"\x01").replace(b"\n", after + tail)
        return data.replace(b"\x01", tail)

    def __len__(self) -> int:
        return self.count or 0

    def line(self, index: int) -> bytes:
        """The line of item `index`."""
        for data in self.read(index, index + 1):
            return data
        raise IndexError("no such kept line")

    def read(self, start: int, stop: int) -> Iterator[bytes]:
        """The lines of items start … stop-1, in pieces of whole lines, about a megabyte each.

        From the first mark (`fold`) in the range to the last, where the lines end is known:
        they are read without counting their newlines, which took a third of the time a 400 MB
        plan's lines took to copy. Only the lines before the first mark and after the last (fewer
        than `_MARK_LINES` each) are counted."""
        fd = self.file.fileno()
        marks, offsets = self._lines, self._bytes
        mark = bisect_right(marks, start) - 1
        line, at = marks[mark], offsets[mark]  # line `line` starts at byte `at`
        last = bisect_right(marks, stop) - 1  # the last mark within the range
        while line < stop:
            mark = bisect_right(marks, line) - 1
            following = mark + 1
            if line == marks[mark] and line >= start and last > mark:
                end = offsets[last]
                while at < end:
                    data = _whole_lines(fd, at, end)
                    yield data
                    at += len(data)
                line = marks[last]
                continue
            # up to the next mark at most: from there on, whole stretches need no counting
            data = _whole_lines(fd, at, offsets[following] if following < len(marks) else None)
            count = data.count(b"\n")
            if line + count > start:
                lo = _after(data, start - line) if line < start else 0
                hi = _after(data, stop - line) if line + count > stop else len(data)
                if hi > lo:
                    yield data[lo:hi]
            line += count
            at += len(data)

    def close(self) -> None:
        self.file.close()


def _whole_lines(fd: int, at: int, end: int | None) -> bytes:
    """Whole lines from byte `at`: about `_READ` bytes of them, at least one line, and not past
    byte `end` (where a line starts) when it is given."""
    size = _READ
    while True:
        want = size if end is None else min(size, end - at)
        data = os.pread(fd, want, at)
        if len(data) == want and end is not None and at + want == end:
            return data  # what ends where a line starts ends with its newline
        cut = data.rfind(b"\n") + 1
        if cut:
            return data[:cut] if cut < len(data) else data
        if len(data) < want:
            raise OSError("the request spool was cut short")
        size *= 2


def _after(data: bytes, lines: int) -> int:
    """Where the line after the first `lines` lines of `data` starts (at most its end)."""
    at = 0
    for _ in range(lines):
        found = data.find(b"\n", at)
        if found < 0:
            return len(data)
        at = found + 1
    return at


class RequestSpool:
    """Per job rendered, its kept lines (`job`), and which are whole (`complete`)."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobSpool] = {}

    def job(self, name: str) -> JobSpool:
        """A new spool for the render of job `name` (one made before for it is dropped)."""
        old = self._jobs.pop(name, None)
        if old is not None:
            old.close()
        spool = self._jobs[name] = JobSpool()
        return spool

    def complete(self, name: str, items: int) -> JobSpool | None:
        """Job `name`'s lines, if its render ended here and kept one line for each of its
        `items` items."""
        spool = self._jobs.get(name)
        if spool is None or spool.count is None or spool.count != items:
            return None
        return spool

    def close(self) -> None:
        for spool in self._jobs.values():
            spool.close()
        self._jobs.clear()
