"""The harvest worker (see `batchops.apply.harvest`): reads the sent attempts and the raw result
stream on stdin, answers row frames on stdout. Run as `python -m batchops.apply.harvest_worker`
by a harvest, never by hand."""

from __future__ import annotations

import marshal
import os
import sys

from batchops.apply.harvest import (
    CHUNK_ROWS,
    DONE,
    FAILED,
    FRAME_TEXT,
    HEAD,
    MESSAGE,
    ROWS,
    SENT,
    ForeignResults,
    HarvestFailed,
    _read_frame,
    _widen,
    _write_frame,
    verified_rows,
)
from batchops.errors import RemoteError
from batchops.remote.client import _parse_blocks

_BLOCK = 1 << 16


def main() -> int:
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the frames
    source = os.fdopen(os.dup(0), "rb", buffering=0)
    _widen(source)
    tag, head = _read_frame(source)
    if tag != HEAD:
        return 2
    job, batch_id, now, expected = marshal.loads(head)
    sent: dict[str, tuple | None] = {}
    while True:
        tag, piece = _read_frame(source)
        if tag != SENT:
            return 2
        attempts = marshal.loads(piece)
        if not attempts:
            break
        sent.update({row[0]: row[1:] for row in attempts})
    blocks = iter(lambda: source.read(_BLOCK), b"")
    lines = _parse_blocks(blocks, f"read results of batch {batch_id}")
    chunk: list[tuple] = []
    text = 0  # the messages' characters in `chunk` (a row's text is a part of its message)
    try:
        for row in verified_rows(job, batch_id, now, lines, sent, expected):
            chunk.append(row)
            if row[MESSAGE] is not None:
                text += len(row[MESSAGE])
            if len(chunk) == CHUNK_ROWS or text >= FRAME_TEXT:
                _write_frame(out, ROWS, marshal.dumps(chunk))
                chunk, text = [], 0
        if chunk:
            _write_frame(out, ROWS, marshal.dumps(chunk))
    except ForeignResults as exc:
        _write_frame(out, FAILED, marshal.dumps(("foreign", str(exc))))
    except HarvestFailed as exc:
        _write_frame(out, FAILED, marshal.dumps(("failed", str(exc))))
    except RemoteError as exc:
        _write_frame(out, FAILED, marshal.dumps(("remote", str(exc))))
    else:
        _write_frame(out, DONE, b"")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # the harvest ended (or died) first: nobody is listening
        os._exit(1)
