"""Small wording helpers shared by every human-readable output."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 request`, `2 requests`, `0 batches`: the count with the word in the right number."""
    if count == 1:
        return f"{count} {word}"
    if many is None:
        many = word + "es" if word.endswith(("s", "sh", "ch", "x")) else word + "s"
    return f"{count} {many}"


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in `…` when cut."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"
