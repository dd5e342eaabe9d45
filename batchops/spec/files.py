"""Reading files a pull request points at: inside the project root, regular files, bounded.

A spec or data file may be a symlink (to `/etc/passwd`, to `/dev/zero`), a FIFO that blocks
every reader, or gigabytes of one line. Every read of the spec layer goes through `open_regular`
(the path, symlinks resolved, must lie inside the root; the open never blocks and is refused
for anything but a regular file) and reads at most a stated number of bytes.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

MIB = 1024 * 1024
MAX_SPEC_BYTES = 16 * MIB  # one spec file (inline items included)
MAX_JSON_DATA_BYTES = 64 * MIB  # a .json array data file, parsed whole: jsonl has no such limit
MAX_LINE_BYTES = 32 * MIB  # one line of a jsonl or csv data file (the API's request limit)


class FileRefused(Exception):
    """A file that is not read; args[0] is the reason, without the file's name (args[1], if
    there, the line number)."""


def confined(path: Path, root: Path) -> Path:
    """`path` with symlinks resolved, refused unless inside `root`."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError) as e:
        raise FileRefused(f"cannot resolve: {e}") from None
    if not resolved.is_relative_to(root):
        raise FileRefused(f"is outside the project root (a symlink to {resolved})")
    return resolved


def open_regular(path: Path, root: Path) -> BinaryIO:
    """Open `path` for reading if, symlinks resolved, it is a regular file inside `root`."""
    resolved = confined(path, root)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(resolved, flags)
    except OSError as e:
        raise FileRefused(f"cannot read: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileRefused(f"not a regular file ({_kind(mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a file"


def read_bounded(path: Path, root: Path, limit: int, what: str) -> bytes:
    """The whole file, refused past `limit` bytes (`what` names the limit in the message)."""
    with open_regular(path, root) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileRefused(f"larger than the {limit // MIB} MiB limit for {what}")
    return data


def bounded_lines(f: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """(line number, line) from an open file; FileRefused for a line longer than `limit`."""
    number = 0
    readline = f.readline
    while True:
        line = readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not line.endswith(b"\n"):
            raise FileRefused(f"longer than the {limit // MIB} MiB line limit", number)
        yield number, line


def bounded_line_blocks(
    f: BinaryIO, limit: int | None = None, block: int = 4 * MIB
) -> Iterator[tuple[int, list[bytes]]]:
    """(number of the first line, lines) from an open file, the lines `bounded_lines` gives, read
    a block at a time: a million lines cost a few hundred reads, not a million calls. FileRefused
    for a line longer than `limit` (MAX_LINE_BYTES), after every line before it."""
    limit = MAX_LINE_BYTES if limit is None else limit
    number = 1
    carry = b""  # the start of a line the last block cut
    read = f.read
    while True:
        data = read(max(block, len(carry)))
        if not data:
            if carry:
                if len(carry) > limit:
                    raise FileRefused(f"longer than the {limit // MIB} MiB line limit", number)
                yield number, [carry]
            return
        lines = BytesIO(carry + data if carry else data).readlines()
        last = lines[-1]
        carry = b"" if last.endswith(b"\n") else lines.pop()
        if lines and max(map(len, lines)) > limit + 1:  # with its newline
            for i, line in enumerate(lines):
                if len(line) > limit + 1:
                    if i:
                        yield number, lines[:i]
                    raise FileRefused(f"longer than the {limit // MIB} MiB line limit", number + i)
        if len(carry) > limit:
            if lines:
                yield number, lines
            raise FileRefused(f"longer than the {limit // MIB} MiB line limit", number + len(lines))
        if lines:
            yield number, lines
            number += len(lines)


# Past this many characters a file's name is cut in its temporary files' names (`temp_stem`):
# `.{name}.<16 hex>.tmp` adds 22 to a name that may have up to 255 (NAME_MAX).
TEMP_STEM_MAX = 200


def temp_stem(name: str) -> str:
    """What `name`'s temporary files are named after: `name` itself, or, for a long one, its
    start and a hash of it (no dot in the hash: `remove_stale_temps` splits on them)."""
    if len(name.encode()) <= TEMP_STEM_MAX:
        return name
    import hashlib

    cut = name.encode()[: TEMP_STEM_MAX - 17].decode(errors="ignore")
    return f"{cut}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def new_temp(directory: Path, name: str) -> tuple[int, Path]:
    """A new file `.{name}.<random>.tmp` in `directory` (the name cut, `temp_stem`), for a write
    renamed over `name` once whole: a name no one can guess, made with O_EXCL (never through a
    symlink planted in the checkout), its mode what `open` gives (0666 less the umask). Its
    descriptor and path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    stem = temp_stem(name)
    while True:
        path = directory / f".{stem}.{secrets.token_hex(8)}.tmp"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:  # 64 random bits taken already: another name
            continue
