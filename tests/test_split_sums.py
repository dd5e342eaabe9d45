"""Submits split into batches by running sums of their sizes (`diff._split_sums`): the batches
the item-by-item rule gives — a batch ends before the item that would take it past a limit."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from batchops.plan.actions import SubmitItem
from batchops.plan.diff import ENVELOPE_BYTES, BatchLimits, split


def by_item(sizes: list[int], limits: BatchLimits) -> list[tuple[int, int, int]]:
    """(start, end, bytes) of each batch, by the rule, one item at a time."""
    out, start, size = [], 0, ENVELOPE_BYTES
    for n, item in enumerate(sizes):
        if n > start and (n - start >= limits.max_requests or size + item > limits.max_bytes):
            out.append((start, n, size))
            start, size = n, ENVELOPE_BYTES
        size += item
    if len(sizes) > start:
        out.append((start, len(sizes), size))
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 5_000), max_size=60),
    st.integers(1, 12),
    st.integers(ENVELOPE_BYTES - 10, ENVELOPE_BYTES + 20_000),
)
@example([3_000] * 30 + [1] * 25, 2, ENVELOPE_BYTES + 3_000)  # sums behind dropped, many times
def test_batches_by_running_sums_are_the_batches_item_by_item(sizes, max_requests, max_bytes):
    limits = BatchLimits(max_requests=max_requests, max_bytes=max_bytes)
    items = [
        SubmitItem("j", f"k{n}", f"c{n}", "fp", "todo", 1, 0.1, s) for n, s in enumerate(sizes)
    ]
    batches = split("j", (), items, limits)
    got, at = [], 0
    for batch in batches:
        assert [i.key for i in batch.items] == [f"k{n}" for n in range(at, at + len(batch.items))]
        got.append((at, at + len(batch.items), batch.request_bytes))
        at += len(batch.items)
    assert got == by_item(sizes, limits)
