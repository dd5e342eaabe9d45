"""The cyclic garbage collector, paused while many short-lived objects are made.

A million rows become millions of tuples and dicts, none in a cycle: while they are made the
collector would scan the growing heap again and again (up to half the time), and free nothing.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic collection inside the block; as it was after (nested pauses leave it off)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
