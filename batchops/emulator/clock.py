"""The emulator's clock, and the id and timestamp formats the real API uses.

batchops judges expiry and retention against its own wall clock, so the emulator cannot simply run
a fake calendar. Instead it keeps a cumulative offset: internal time is real time plus the offset,
and every instant it reports is shifted back by the current offset. Jumping ahead by N seconds is
therefore the same as every stored timestamp moving N seconds into the past, and nothing reported
as having happened ever lies in the client's future.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def random_id(prefix: str) -> str:
    """An id shaped like the real ones: prefix, `01`, then 22 base58 characters."""
    return prefix + "01" + "".join(secrets.choice(BASE58) for _ in range(22))


def derived_id(prefix: str, digest: bytes) -> str:
    """A deterministic id of the same shape, taken from a hash digest."""
    n = int.from_bytes(digest[:17], "big")
    chars = []
    for _ in range(22):
        n, r = divmod(n, 58)
        chars.append(BASE58[r])
    return prefix + "01" + "".join(chars)


def rfc3339(epoch: float) -> str:
    """RFC 3339 with microseconds and `Z`, as in the API's examples."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Clock:
    """Internal time = real time + offset; reported time = internal time - offset + skew.

    `skew` is a fault: a server whose clock is off by `skew` seconds from the client's (or a
    client whose clock is off by `-skew`). It changes only what is reported, never when a batch
    ends, expires or is archived.
    """

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.skew = 0.0

    def now(self) -> float:
        """Internal now, against which stored instants are compared."""
        return time.time() + self.offset

    def report(self, instant: float) -> str:
        """Format a stored internal instant as the client should see it."""
        return rfc3339(instant - self.offset + self.skew)

    def advance(self, seconds: float) -> float:
        self.offset += seconds
        return self.offset
