"""`cache = "auto"`: mark the longest shared prefix of a job's requests for prompt caching.

The prefix is the tools and the system prompt (what a template job's items share); it is marked
with `cache_control` at the 1-hour TTL the batch docs recommend (a batch may take hours, so a
5-minute entry would expire between items). A prefix is marked only when it is long enough for
the API to cache it and shared by enough items in a batch to pay back its write (at the 1-hour
price, twice the input price, one write and reads at a tenth pay from three items on).

Marks are added when a request is sent, never to the request a fingerprint is taken of: turning
`cache = "auto"` on (or off) changes no fingerprint, so nothing already answered is sent again.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson

from batchops.pricing import (
    ItemEstimate,
    ModelPrice,
    PriceTable,
    cache_min_tokens,
    estimate_item,
    non_ascii,
    typical_tokens,
)

if TYPE_CHECKING:
    from batchops.spec.model import Job

AUTO_TTL = "1h"
MIN_SHARING = 3  # items in a batch sharing a prefix before marking it saves money (1-hour TTL)


def _has_marks(params: dict[str, Any]) -> bool:
    if isinstance(params.get("cache_control"), dict):
        return True
    blocks: list[Any] = list(params.get("tools") or ())
    system = params.get("system")
    if isinstance(system, list):
        blocks += system
    for message in params.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            blocks += content
    return any(isinstance(b, dict) and "cache_control" in b for b in blocks)


def candidate(params: dict[str, Any], row: dict[str, Any] | None = None) -> str | None:
    """The id of the prefix `auto` would mark (model, tools, system), or None when there is none
    long enough to cache, or the request already carries its own cache_control marks."""
    tools = params.get("tools") or []
    system = params.get("system")
    if not tools and not system:
        return None
    if _has_marks(params):
        return None
    # Sized as the expected figure counts it (`pricing.typical_tokens`): a non-ASCII character
    # as more than a quarter of a token, or a prefix in Japanese would be judged too short.
    texts = [system] if isinstance(system, str) else [
        str(b.get("text", "")) for b in system or () if isinstance(b, dict)
    ]  # fmt: skip
    texts += [orjson.dumps(t).decode() for t in tools]
    chars, wide = sum(map(len, texts)), sum(map(non_ascii, texts))
    model = str(params.get("model", ""))
    if typical_tokens(chars, wide) < cache_min_tokens(model, row):
        return None
    data = orjson.dumps([model, tools, system], option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def mark(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with its last system block (or, without a system prompt, its last tool) marked
    for caching at the 1-hour TTL; a new dict, `params` is left as it was."""
    control = {"type": "ephemeral", "ttl": AUTO_TTL}
    out = dict(params)
    system = params.get("system")
    if isinstance(system, str) and system:
        out["system"] = [{"type": "text", "text": system, "cache_control": control}]
    elif isinstance(system, list) and system and isinstance(system[-1], dict):
        out["system"] = [*system[:-1], {**system[-1], "cache_control": control}]
    elif params.get("tools"):
        tools = list(params["tools"])
        tools[-1] = {**tools[-1], "cache_control": control}
        out["tools"] = tools
    return out


def estimate(
    job: Job, params: dict[str, Any], price: ModelPrice, prices: PriceTable
) -> ItemEstimate:
    """An item's estimate (output at the job's expected_output_tokens, or max_tokens; a marked
    prefix under the model's minimum as plain input); for `cache = "auto"`, as sent with its
    shared prefix marked (kept only where enough items share it: `desired._auto_cache`). The one
    estimate of both rendering paths (one core, and `parallel`)."""
    model = str(params.get("model", ""))
    row = prices.row_for(model)
    out, least = job.expected_output_tokens, cache_min_tokens(model, row)
    if job.cache != "auto" or job.requests is not None or candidate(params, row) is None:
        return estimate_item(params, price, out, least)
    plain = estimate_item(params, price, out, least)
    marked = estimate_item(mark(params), price, out, least)
    return marked._replace(auto=True, plain_expected=plain.expected, plain_high=plain.high)
