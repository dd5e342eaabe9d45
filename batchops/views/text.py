"""Small wording helpers shared by every human-readable output."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 request`, `2 requests`, `0 batches`: the count with the word in the right number."""
    if count == 1:
        return f"{count} {word}"
    if many is None:
        many = word + "es" if word.endswith(("s", "sh", "ch", "x")) else word + "s"
    return f"{count:,} {many}"  # 400,000 items: as the money beside it, in thousands


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in `…` when cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def unknown_create_lines(creates: Iterable[Any]) -> list[str]:
    """What `status` and a stopped apply say of each create sent whose answer never came
    (`status.UnknownCreate`): its batch may be running, and is billed if it is."""
    return [
        f"Create for {c.job} ({plural(c.request_count, 'request')}, begun "
        f"{c.begun_at:%Y-%m-%d %H:%M} UTC) has no known outcome: a batch it made may be in "
        "flight, and billed. Run `batchops apply` again: it finds that batch (its custom_ids "
        "prove it ours) and sends nothing twice."
        for c in creates
    ]
