"""Prices and cost: a dated price table shipped with the package, overridable by a user file.

Prices move and sources disagree (ANTHROPIC_BATCHES_API.md §8), so nothing here is hard-coded: the
table is `batchops/data/prices.toml`, and a user file given by `--prices` or `BATCHOPS_PRICES`
overrides it row by row.

Estimates are ceilings: output at `max_tokens`, and every token of a cached prefix at the
cache-write price (batch cache hits are best-effort). Actual cost comes from stored usage.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from batchops.errors import SpecError

_DATED = re.compile(r"^(?P<base>.+?)(-\d{8}|-latest)$")
CHARS_PER_TOKEN = 3  # English runs nearer 3.5-4 characters a token: 3 keeps the estimate a ceiling
IMAGE_TOKENS = 1600
MESSAGE_OVERHEAD_TOKENS = 4


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens, batch prices."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0

    def cost(self, price: ModelPrice) -> float:
        return (
            self.input_tokens * price.input
            + self.output_tokens * price.output
            + self.cache_write_5m_tokens * price.cache_write_5m
            + self.cache_write_1h_tokens * price.cache_write_1h
            + self.cache_read_tokens * price.cache_read
        ) / 1_000_000


class PriceTable:
    def __init__(self, data: dict[str, Any], source: str):
        self.as_of: str = str(data.get("as_of", "unknown"))
        self.source = source
        self.multipliers: dict[str, float] = dict(data.get("multipliers", {}))
        self.models: dict[str, dict[str, Any]] = dict(data.get("models", {}))

    @classmethod
    def load(cls, user_file: Path | None = None) -> PriceTable:
        """The shipped table, with the rows (and multipliers) of `user_file` laid over it."""
        shipped = resources.files("batchops").joinpath("data/prices.toml").read_text("utf-8")
        data = tomllib.loads(shipped)
        source = f"batchops price table as of {data.get('as_of')}"
        if user_file is not None:
            try:
                user = tomllib.loads(Path(user_file).read_text("utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise SpecError(f"{user_file}: cannot read price file ({exc})") from None
            except tomllib.TOMLDecodeError as exc:
                raise SpecError(f"{user_file}: invalid TOML: {exc}") from None
            data["models"] = {**data.get("models", {}), **user.get("models", {})}
            data["multipliers"] = {**data.get("multipliers", {}), **user.get("multipliers", {})}
            if "as_of" in user:
                data["as_of"] = user["as_of"]
            source = f"{user_file} as of {data.get('as_of')}"
        return cls(data, source)

    def row_for(self, model: str) -> dict[str, Any] | None:
        if model in self.models:
            return self.models[model]
        match = _DATED.match(model)
        if match and match.group("base") in self.models:
            return self.models[match.group("base")]
        return None

    def price(self, model: str, on: date) -> ModelPrice | None:
        """The batch price of `model` on `on`, or None when the table has no row for it."""
        row = self.row_for(model)
        if row is None:
            return None
        inp, out = float(row["input"]), float(row["output"])
        for period in sorted(row.get("before", []), key=lambda p: str(p["until"])):
            if on < date.fromisoformat(str(period["until"])):
                inp, out = float(period["input"]), float(period["output"])
                break
        mult = self.multipliers
        return ModelPrice(
            input=inp,
            output=out,
            cache_write_5m=inp * float(row.get("cache_write_5m", mult.get("cache_write_5m", 1.25))),
            cache_write_1h=inp * float(row.get("cache_write_1h", mult.get("cache_write_1h", 2.0))),
            cache_read=inp * float(row.get("cache_read", mult.get("cache_read", 0.1))),
        )


def _chars(block: Any) -> int:
    """Characters a content block counts as (images and binary documents at a fixed size)."""
    if isinstance(block, str):
        return len(block)
    if not isinstance(block, dict):
        return len(orjson.dumps(block))
    kind = block.get("type")
    if kind == "text":
        return len(str(block.get("text", "")))
    if kind in ("image", "document"):
        source = block.get("source") or {}
        if kind == "document" and source.get("type") == "text":
            return len(str(source.get("data", "")))
        return IMAGE_TOKENS * CHARS_PER_TOKEN
    return len(orjson.dumps(block))


def _cache_ttl(block: Any) -> str | None:
    if isinstance(block, dict):
        control = block.get("cache_control")
        if isinstance(control, dict):
            return str(control.get("ttl", "5m"))
    return None


def estimate_input(params: dict[str, Any]) -> Usage:
    """Estimate the input tokens of a request, splitting out a cached prefix (tools → system → messages).

    One pass over the blocks, counting characters; this runs once per item, a million times for a
    large job, so it stays lean.
    """
    total = 0
    prefix = 0
    ttl: str | None = None
    for tool in params.get("tools") or ():
        total += len(orjson.dumps(tool))
        if (t := _cache_ttl(tool)) is not None:
            prefix, ttl = total, t
    system = params.get("system")
    if isinstance(system, str):
        total += len(system)
    elif isinstance(system, list):
        for block in system:
            total += _chars(block)
            if (t := _cache_ttl(block)) is not None:
                prefix, ttl = total, t
    for message in params.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for block in content:
                total += _chars(block)
                if (t := _cache_ttl(block)) is not None:
                    prefix, ttl = total, t
        total += MESSAGE_OVERHEAD_TOKENS * CHARS_PER_TOKEN
    cached = math.ceil(prefix / CHARS_PER_TOKEN)
    return Usage(
        input_tokens=math.ceil((total - prefix) / CHARS_PER_TOKEN),
        cache_write_5m_tokens=cached if ttl is not None and ttl != "1h" else 0,
        cache_write_1h_tokens=cached if ttl == "1h" else 0,
    )


def estimate_request(params: dict[str, Any]) -> Usage:
    """The ceiling for one request: estimated input, output at max_tokens."""
    usage = estimate_input(params)
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=int(params.get("max_tokens") or 0),
        cache_write_5m_tokens=usage.cache_write_5m_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
    )


def usage_from_message(usage: dict[str, Any]) -> Usage:
    """Billed usage of a succeeded result's `message.usage`."""
    creation = usage.get("cache_creation") or {}
    write_1h = int(creation.get("ephemeral_1h_input_tokens") or 0)
    write_total = int(usage.get("cache_creation_input_tokens") or 0)
    return Usage(
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        cache_write_5m_tokens=max(write_total - write_1h, 0),
        cache_write_1h_tokens=write_1h,
        cache_read_tokens=int(usage.get("cache_read_input_tokens") or 0),
    )


def money(value: float | None) -> str:
    """Dollars, the one way every output shows them: four decimal places (batch requests cost
    fractions of a cent, and a column of amounts lines up), `-` for none."""
    if value is None:
        return "-"
    return f"${value:,.4f}"
