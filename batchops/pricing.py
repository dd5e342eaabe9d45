"""Prices and cost: a dated price table shipped with the package, overridable by a user file.

Prices move and sources disagree (ANTHROPIC_BATCHES_API.md §8), so nothing here is hard-coded: the
table is `batchops/data/prices.toml`, and a user file given by `--prices` or `BATCHOPS_PRICES`
overrides it row by row. One named by `batchops.toml`, which pull requests change, is read as a
spec's data file is: inside the project root, a regular file, bounded (`batchops.spec.files`).

Estimates are a range. The ceiling (what budgets gate on): input at 3 characters a token (a
character outside ASCII a whole token), output at `max_tokens`, each field at the higher of
today's price and tomorrow's (a batch runs up to 24 hours, across a dated price change), and a
cached prefix written once per batch it is sent in, then read by only 30% of the other items
sharing it (the docs' floor for batch cache hits, which are best-effort). The expected figure:
input at a typical 4 characters a token (a character outside ASCII half a token), output at what
a reply is expected to be (`OutputExpectation`: the job's stored results, its
`expected_output_tokens`, other jobs' results, else `max_tokens`), today's prices, and one cache
write per batch with every other item sharing the prefix reading it. A prefix is written at the
1-hour price up to its last 1-hour mark and at the 5-minute price after it, as the API bills it.
A marked prefix shorter than the model's minimum cacheable length is not cached by the API, and
is estimated as plain input. Both count the system prompt the API adds for tool use (the price
row's `tool_overhead_tokens`), and a PDF by its pages. Actual cost comes from stored usage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from batchops.apirules import cache_min_tokens as api_cache_min_tokens
from batchops.errors import SpecError, location
from batchops.lazyclass import dataclass
from batchops.spec.files import MIB, FileRefused, read_bounded

_DATED = re.compile(r"^(?P<base>.+?)(-\d{8}|-latest)$")
CHARS_PER_TOKEN = 3  # English runs nearer 3.5-4 characters a token: 3 keeps the estimate a ceiling
CHARS_PER_TOKEN_TYPICAL = 4  # the expected figure: the usual rule of thumb for English prose
# Text outside ASCII runs far fewer characters a token than English: CJK, Hangul, Thai and Indic
# scripts about one token a character, Cyrillic, Greek, Arabic or Hebrew nearer a third of one,
# and an accented letter mostly shares its word's token. The ceiling counts each non-ASCII
# character as a whole token (as CHARS_PER_TOKEN characters); the expected figure as half a
# token (2 of a typical token's 4 characters), between those scripts, the ceiling covering the
# worst of them. ASCII keeps the rules above.
WIDE_CHARS = CHARS_PER_TOKEN  # characters a non-ASCII one counts as in the ceiling
WIDE_CHARS_TYPICAL = 2  # ... in the expected figure
BATCH_HIT_RATE_FLOOR = 0.3  # the docs: batch cache hits are best-effort, "30 to 98%"
IMAGE_TOKENS = 1600
# A PDF is billed by the page: each page's text, "1,500-3,000 tokens per page depending on content
# density" (Anthropic's PDF support page), plus an image of the page, priced as any image (about
# IMAGE_TOKENS at most). A page counts as the top of that range plus a full image: 4,600 tokens in
# the ceiling, and so 3,450 in the expected figure (its 4 characters a token for the ceiling's 3:
# a mid-range 2,250 of text plus a 1,200-token image).
PDF_PAGE_TOKENS = 3_000 + IMAGE_TOKENS
# The pages of a PDF whose page objects cannot be found (held in compressed object streams, or
# not a PDF at all) are guessed from its size, at about what a page of text takes compressed, so
# that the guess errs on more pages; at most the pages the API takes in one request (600, per the
# PDF support page; 100 under a 1M-token context), beyond which it refuses the request unbilled.
PDF_BYTES_PER_PAGE = 3_000
PDF_MAX_PAGES = 600
# A page object's `/Type /Page` (not the page tree's `/Pages`): the name ends at a delimiter.
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![^\s/<>\[\]()%{}])")
# The system prompt the API adds to a request with tools (Anthropic's pricing page, Claude 4
# models: 346 tokens with tool_choice auto or none, 313 with any or tool): a price row's
# `tool_overhead_tokens`, this when it has none.
TOOL_OVERHEAD_TOKENS = 346
MESSAGE_OVERHEAD_TOKENS = 4
MAX_PRICE_BYTES = MIB  # a user's price file: the shipped table is a few kB


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens, batch prices, on one day.

    `high` is what the ceiling prices at when the price changes the next day (a batch created
    late in the day runs into it): each field the higher of the two days'. None: no change.
    """

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    tool_overhead_tokens: int = TOOL_OVERHEAD_TOKENS  # added to a request with tools
    high: ModelPrice | None = None
    # A request whose input tokens (cache reads and writes included) are more than `long_above`
    # is billed at `long` (the row's `long_context`); None: one price whatever the length.
    long_above: int = 0
    long: ModelPrice | None = None

    @property
    def ceiling(self) -> ModelPrice:
        """The price the ceiling counts at."""
        return self.high or self

    def at(self, prompt_tokens: float) -> ModelPrice:
        """The price of a request of `prompt_tokens` input tokens, cached ones included."""
        if self.long is not None and prompt_tokens > self.long_above:
            return self.long
        return self


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


_MULTIPLIERS = ("cache_write_5m", "cache_write_1h", "cache_read")  # times the input price
_COUNTS = ("cache_min_tokens", "tool_overhead_tokens")  # whole numbers of tokens
_ROW_KEYS = frozenset(("input", "output", "before", "long_context", *_COUNTS, *_MULTIPLIERS))
# A row's `long_context`: above how many input tokens a request costs more, and how much more.
_LONG_KEYS = ("above_tokens", "input_times", "output_times")


def _number_problem(value: Any) -> str | None:
    """Why `value` cannot be a price or multiplier, or None when it can."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "should be a number"
    if not math.isfinite(value) or value < 0:
        return f"should be a number 0 or more, not {value}"
    return None


def _is_date(value: Any) -> bool:
    """Whether `price` can read `value` as a day: a TOML date or a YYYY-MM-DD string."""
    if not isinstance(value, str | date) or isinstance(value, datetime):
        return False
    try:
        date.fromisoformat(str(value))
    except ValueError:
        return False
    return True


def _period_problems(period: Any, place: str) -> Iterator[tuple[str, str]]:
    """(place, why) of what is wrong in one `before` entry of a price row."""
    if not isinstance(period, dict):
        yield place, "should be a table with until, input and output"
        return
    for key in sorted(set(period) - {"until", "input", "output"}):
        yield f"{place}.{key}", "unknown key (a `before` entry has until, input and output)"
    until = period.get("until")
    if until is None:
        yield f"{place}.until", "missing"
    elif not _is_date(until):
        yield f"{place}.until", "should be a date (YYYY-MM-DD)"
    yield from _numbers_problems(period, ("input", "output"), place)


def _numbers_problems(
    table: dict[str, Any], keys: tuple[str, ...], place: str
) -> Iterator[tuple[str, str]]:
    """(place, why) of each of `keys` missing from `table`, or not a number 0 or more."""
    for key in keys:
        if key not in table:
            yield f"{place}.{key}", "missing"
        elif (why := _number_problem(table[key])) is not None:
            yield f"{place}.{key}", why


def _row_problems(row: Any, place: str) -> Iterator[tuple[str, str]]:
    """(place, why) of what is wrong in one model's price row."""
    if not isinstance(row, dict):
        yield place, "should be a table with input and output"
        return
    for key in sorted(set(row) - _ROW_KEYS):
        yield f"{place}.{key}", f"unknown key (one of {', '.join(sorted(_ROW_KEYS))})"
    for key in ("input", "output"):
        if key not in row:
            yield f"{place}.{key}", "missing"
    for key in ("input", "output", *_MULTIPLIERS):
        if key in row and (why := _number_problem(row[key])) is not None:
            yield f"{place}.{key}", why
    for key in _COUNTS:
        tokens = row.get(key, 0)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            yield f"{place}.{key}", "should be a whole number of tokens, 0 or more"
    if "long_context" in row:
        yield from _long_problems(row["long_context"], f"{place}.long_context")
    before = row.get("before", [])
    if not isinstance(before, list):
        yield f"{place}.before", "should be an array of tables ([[models.NAME.before]])"
        return
    for i, period in enumerate(before):
        yield from _period_problems(period, f"{place}.before[{i}]")


def _long_problems(table: Any, place: str) -> Iterator[tuple[str, str]]:
    """(place, why) of what is wrong in a price row's `long_context`."""
    if not isinstance(table, dict):
        yield place, "should be a table with above_tokens, input_times and output_times"
        return
    for key in sorted(set(table) - set(_LONG_KEYS)):
        yield f"{place}.{key}", f"unknown key (one of {', '.join(_LONG_KEYS)})"
    above = table.get("above_tokens")
    if above is None:
        yield f"{place}.above_tokens", "missing"
    elif isinstance(above, bool) or not isinstance(above, int) or above < 0:
        yield f"{place}.above_tokens", "should be a whole number of tokens, 0 or more"
    yield from _numbers_problems(table, ("input_times", "output_times"), place)


def _table_problems(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(place, why) of every value in a price file that the table cannot use.

    Plain type checks, no pydantic: the shipped table is checked on every command's cold start.
    """
    for key in sorted(set(data) - {"as_of", "multipliers", "models"}):
        yield key, "unknown key (one of as_of, multipliers, models)"
    if "as_of" in data and not isinstance(data["as_of"], str | date):
        yield "as_of", "should be a string or a date"
    multipliers = data.get("multipliers", {})
    if not isinstance(multipliers, dict):
        yield "multipliers", "should be a table"
    else:
        for key, value in multipliers.items():
            if key not in _MULTIPLIERS:
                yield f"multipliers.{key}", f"unknown multiplier (one of {', '.join(_MULTIPLIERS)})"
            elif (why := _number_problem(value)) is not None:
                yield f"multipliers.{key}", why
    models = data.get("models", {})
    if not isinstance(models, dict):
        yield "models", "should be a table of model rows ([models.NAME])"
        return
    for name, row in models.items():
        yield from _row_problems(row, f"models.{name}")


def _read_price_file(file: Path, root: Path | None) -> bytes:
    """A price file's bytes, read as the spec layer reads a data file: a regular file (a FIFO
    would block, /dev/zero never end), at most MAX_PRICE_BYTES, inside `root` when one is given;
    without one (`--prices`, given by the person running the command) anywhere."""
    within = root if root is not None else Path(Path(os.path.abspath(file)).anchor)
    try:
        return read_bounded(file, within, MAX_PRICE_BYTES, "a price file")
    except FileRefused as e:
        why = e.args[0]
        if root is not None and why.startswith("is outside"):
            if not Path(os.path.normpath(os.path.abspath(file))).is_relative_to(root):
                why = "is outside the project root"  # written so, not a symlink out
        raise SpecError(f"{file}: {why}") from None


def _checked(data: dict[str, Any], file: object) -> dict[str, Any]:
    """`data`, or a SpecError naming `file` and the place of each value the table cannot use."""
    problems = [location(file, place, why) for place, why in _table_problems(data)]
    if problems:
        raise SpecError(*problems)
    return data


class PriceTable:
    def __init__(self, data: dict[str, Any], source: str):
        self.as_of: str = str(data.get("as_of", "unknown"))
        self.source = source
        self.multipliers: dict[str, float] = dict(data.get("multipliers", {}))
        self.models: dict[str, dict[str, Any]] = dict(data.get("models", {}))

    @classmethod
    def load(cls, user_file: Path | None = None, root: Path | None = None) -> PriceTable:
        """The shipped table, with the rows (and multipliers) of `user_file` laid over it; with
        `root`, `user_file` must lie inside it (batchops.toml, which a pull request may change,
        named it)."""
        shipped = Path(__file__).parent / "data" / "prices.toml"
        data = _checked(tomllib.loads(shipped.read_text("utf-8")), shipped)
        source = f"batchops price table as of {data.get('as_of')}"
        if user_file is not None:
            try:
                user = tomllib.loads(_read_price_file(Path(user_file), root).decode("utf-8"))
            except (OSError, UnicodeDecodeError) as exc:
                raise SpecError(f"{user_file}: cannot read price file ({exc})") from None
            except tomllib.TOMLDecodeError as exc:
                raise SpecError(f"{user_file}: invalid TOML: {exc}") from None
            except RecursionError:
                raise SpecError(f"{user_file}: invalid TOML: nested too deeply") from None
            _checked(user, user_file)
            data["models"] = {**data.get("models", {}), **user.get("models", {})}
            data["multipliers"] = {**data.get("multipliers", {}), **user.get("multipliers", {})}
            if "as_of" in user:
                data["as_of"] = user["as_of"]
            source = f"{user_file} as of {data.get('as_of')}"
        return cls(data, source)

    def long_context_lengths(self) -> tuple[int, ...]:
        """Every row's `long_context.above_tokens`, ascending, each once."""
        return tuple(sorted({
            int(row["long_context"]["above_tokens"])
            for row in self.models.values()
            if isinstance(row, dict) and "long_context" in row
        }))  # fmt: skip

    def row_for(self, model: str) -> dict[str, Any] | None:
        if model in self.models:
            return self.models[model]
        match = _DATED.match(model)
        if match and match.group("base") in self.models:
            return self.models[match.group("base")]
        return None

    def price(self, model: str, on: date) -> ModelPrice | None:
        """The batch price of `model` on `on`, or None when the table has no row for it; with
        `high` set when it changes the next day."""
        row = self.row_for(model)
        if row is None:
            return None
        today = self._price_on(row, on)
        if on == date.max:
            return today
        tomorrow = self._price_on(row, on + timedelta(days=1))
        if tomorrow == today:
            return today
        return replace(today, high=_higher(today, tomorrow))

    def _price_on(self, row: dict[str, Any], on: date) -> ModelPrice:
        inp, out = float(row["input"]), float(row["output"])
        for period in sorted(row.get("before", []), key=lambda p: str(p["until"])):
            if on < date.fromisoformat(str(period["until"])):
                inp, out = float(period["input"]), float(period["output"])
                break
        mult = self.multipliers
        price = ModelPrice(
            input=inp,
            output=out,
            cache_write_5m=inp * float(row.get("cache_write_5m", mult.get("cache_write_5m", 1.25))),
            cache_write_1h=inp * float(row.get("cache_write_1h", mult.get("cache_write_1h", 2.0))),
            cache_read=inp * float(row.get("cache_read", mult.get("cache_read", 0.1))),
            tool_overhead_tokens=int(row.get("tool_overhead_tokens", TOOL_OVERHEAD_TOKENS)),
        )
        long = row.get("long_context")
        if long is None:
            return price
        times_in, times_out = float(long["input_times"]), float(long["output_times"])
        above = ModelPrice(
            input=price.input * times_in,
            output=price.output * times_out,
            cache_write_5m=price.cache_write_5m * times_in,
            cache_write_1h=price.cache_write_1h * times_in,
            cache_read=price.cache_read * times_in,
            tool_overhead_tokens=price.tool_overhead_tokens,
        )
        return replace(price, long_above=int(long["above_tokens"]), long=above)


def _higher(a: ModelPrice, b: ModelPrice) -> ModelPrice:
    """Each price the higher of `a`'s and `b`'s (two days of one row: the same long_context)."""
    long = None if a.long is None or b.long is None else _higher(a.long, b.long)
    return ModelPrice(
        input=max(a.input, b.input),
        output=max(a.output, b.output),
        cache_write_5m=max(a.cache_write_5m, b.cache_write_5m),
        cache_write_1h=max(a.cache_write_1h, b.cache_write_1h),
        cache_read=max(a.cache_read, b.cache_read),
        tool_overhead_tokens=a.tool_overhead_tokens,
        long_above=a.long_above,
        long=long,
    )


def non_ascii(text: str) -> int:
    """Characters of `text` outside ASCII (no work for ASCII text: `isascii` reads a flag)."""
    return 0 if text.isascii() else len(text) - len(text.encode("ascii", "ignore"))


def _json_size(value: Any) -> tuple[int, int]:
    """(characters, non-ASCII characters) of `value` written as JSON."""
    data = orjson.dumps(value)
    if data.isascii():
        return len(data), 0
    text = data.decode()
    return len(text), non_ascii(text)


# The pages of the last base64 PDFs counted, by the very string (rows naming one file share it:
# decoding 9 MB of base64 took 18 ms an item): (the string, its pages), newest last; at most
# _PAGES_KEPT of them, holding at most _PAGES_KEPT_CHARS of base64 beside the newest (a
# requests file's lines each hold a string of their own, which only the newest keeps alive).
_PAGES_KEPT = 4
_PAGES_KEPT_CHARS = 16 * 1024 * 1024
_pages_kept: list[tuple[str, int]] = []


def _pdf_pages(data: str) -> int:
    """Pages of a base64 PDF: its page objects, else a guess from its size (PDF_BYTES_PER_PAGE)."""
    for kept, pages in reversed(_pages_kept):
        if kept is data:
            return pages
    pages = _count_pdf_pages(data)
    if len(data) >= 1 << 16:  # a small one is counted again: quicker than keeping it
        _pages_kept.append((data, pages))
        del _pages_kept[:-_PAGES_KEPT]
        while len(_pages_kept) > 1 and sum(len(d) for d, _ in _pages_kept) > _PAGES_KEPT_CHARS:
            del _pages_kept[0]
    return pages


def _count_pdf_pages(data: str) -> int:
    try:
        pdf = base64.b64decode(data)
    except (binascii.Error, ValueError):
        pdf = b""
    pages = sum(1 for _ in _PDF_PAGE.finditer(pdf))
    if pages:
        return pages
    size = len(pdf) or len(data) * 3 // 4
    return min(max(1, math.ceil(size / PDF_BYTES_PER_PAGE)), PDF_MAX_PAGES)


def _size(block: Any) -> tuple[int, int, int]:
    """(characters, non-ASCII characters, documents left out) a content block counts as: text
    by its characters, an image at IMAGE_TOKENS, a PDF at PDF_PAGE_TOKENS a page, a document
    given by URL or file (which cannot be sized before it is sent) at nothing."""
    if isinstance(block, str):
        return len(block), non_ascii(block), 0
    if not isinstance(block, dict):
        return (*_json_size(block), 0)
    kind = block.get("type")
    if kind == "text":
        text = str(block.get("text", ""))
        return len(text), non_ascii(text), 0
    if kind == "image":
        return IMAGE_TOKENS * CHARS_PER_TOKEN, 0, 0
    if kind == "document":
        source = block.get("source")
        source = source if isinstance(source, dict) else {}
        of = source.get("type")
        if of == "text":
            text = str(source.get("data", ""))
            return len(text), non_ascii(text), 0
        if of == "content":
            content = source.get("content")
            parts = [content] if isinstance(content, str) else content
            chars = wide = unsized = 0
            for part in parts if isinstance(parts, list) else ():
                c, w, u = _size(part)
                chars, wide, unsized = chars + c, wide + w, unsized + u
            return chars, wide, unsized
        if of == "base64":
            pages = _pdf_pages(str(source.get("data", "")))
            return pages * PDF_PAGE_TOKENS * CHARS_PER_TOKEN, 0, 0
        return 0, 0, 1
    return (*_json_size(block), 0)


def _cache_ttl(block: Any) -> str | None:
    if isinstance(block, dict):
        control = block.get("cache_control")
        if isinstance(control, dict):
            return str(control.get("ttl", "5m"))
    return None


Size = tuple[int, int]  # characters, and how many of them are outside ASCII
Where = tuple[str, int, int]  # a cache mark's place: section, message index, block index


class _Scan(NamedTuple):
    """One pass over a request's tools → system → messages (sizes as `Size`)."""

    total: Size
    prefix: Size  # up to the last cache mark
    long: Size  # up to the last 1-hour cache mark ((0, 0): none)
    where: Where | None  # the last cache mark (or ("all", 0, 0): top-level cache_control)
    long_where: Where | None  # the last 1-hour cache mark
    tools: bool  # the API adds its tool-use system prompt, after the tools
    unsized: int  # documents given by URL or file, counted as nothing


def _scan(params: dict[str, Any]) -> _Scan:
    """Sizes of all of a request and of its cached prefixes, in one pass."""
    chars = wide = unsized = 0
    marks: list[tuple[str, int, int, Where]] = []  # (ttl, characters, non-ASCII, place)
    tools = params.get("tools") or ()
    for i, tool in enumerate(tools):
        c, w = _json_size(tool)
        chars, wide = chars + c, wide + w
        if (t := _cache_ttl(tool)) is not None:
            marks.append((t, chars, wide, ("tools", 0, i)))
    system = params.get("system")
    if isinstance(system, str):
        chars, wide = chars + len(system), wide + non_ascii(system)
    elif isinstance(system, list):
        for i, block in enumerate(system):
            c, w, u = _size(block)
            chars, wide, unsized = chars + c, wide + w, unsized + u
            if (t := _cache_ttl(block)) is not None:
                marks.append((t, chars, wide, ("system", 0, i)))
    for m, message in enumerate(params.get("messages") or ()):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars, wide = chars + len(content), wide + non_ascii(content)
        elif isinstance(content, list):
            for i, block in enumerate(content):
                c, w, u = _size(block)
                chars, wide, unsized = chars + c, wide + w, unsized + u
                if (t := _cache_ttl(block)) is not None:
                    marks.append((t, chars, wide, ("messages", m, i)))
        chars += MESSAGE_OVERHEAD_TOKENS * CHARS_PER_TOKEN
    top = params.get("cache_control")
    if isinstance(top, dict):  # top-level cache_control marks the last block: the whole prompt
        marks.append((str(top.get("ttl", "5m")), chars, wide, ("all", 0, 0)))
    prefix, long, where, long_where = (0, 0), (0, 0), None, None
    if marks:
        _, c, w, where = marks[-1]
        prefix = (c, w)
        for t, c, w, place in reversed(marks):
            if t == "1h":
                long, long_where = (c, w), place
                break
    return _Scan((chars, wide), prefix, long, where, long_where, bool(tools), unsized)


def _ceiling_tokens(chars: int, wide: int) -> int:
    return -(-(chars + (WIDE_CHARS - 1) * wide) // CHARS_PER_TOKEN)


def typical_tokens(chars: int, wide: int) -> int:
    return -(-(chars + (WIDE_CHARS_TYPICAL - 1) * wide) // CHARS_PER_TOKEN_TYPICAL)


def _tokens(
    scan: _Scan, tool: int, count: Callable[[int, int], int], cache_min: int
) -> tuple[int, int, int]:
    """(plain, 5-minute write, 1-hour write) input tokens of a scanned request, each part by
    `count`: up to the last 1-hour mark at 1 hour, on to the last mark at 5 minutes, the rest
    plain; all plain when there is no mark or the prefix is under `cache_min` tokens, which the
    API does not cache. The tool-use system prompt (`tool` tokens) sits after the tools."""
    (chars, wide), where = scan.total, scan.where
    if where is None:
        return count(chars, wide) + tool, 0, 0
    (p_chars, p_wide), (l_chars, l_wide) = scan.prefix, scan.long
    long = count(l_chars, l_wide)
    short = count(p_chars - l_chars, p_wide - l_wide)
    plain = count(chars - p_chars, wide - p_wide)
    if tool:
        if scan.long_where is not None and scan.long_where[0] != "tools":
            long += tool
        elif where[0] != "tools":
            short += tool
        else:
            plain += tool
    if long + short < cache_min:
        return count(chars, wide) + tool, 0, 0
    return plain, short, long


def estimate_input(params: dict[str, Any], tool_tokens: int = TOOL_OVERHEAD_TOKENS) -> Usage:
    """Estimate the input tokens of a request (the ceiling's count), splitting out its cached
    prefix by TTL (tools → system → messages); `tool_tokens` for the API's tool-use prompt.

    One pass over the blocks, counting characters; this runs once per item, a million times for a
    large job, so it stays lean.
    """
    scan = _scan(params)
    plain, short, long = _tokens(scan, tool_tokens if scan.tools else 0, _ceiling_tokens, 0)
    return Usage(input_tokens=plain, cache_write_5m_tokens=short, cache_write_1h_tokens=long)


def estimate_request(params: dict[str, Any], tool_tokens: int = TOOL_OVERHEAD_TOKENS) -> Usage:
    """The ceiling for one request: estimated input, output at max_tokens."""
    usage = estimate_input(params, tool_tokens)
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=int(params.get("max_tokens") or 0),
        cache_write_5m_tokens=usage.cache_write_5m_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
    )


class ItemEstimate(NamedTuple):
    """One item's cost, before batch-level cache sharing is known (see `batch_cost`).

    `high` and `expected` count its cached prefix (if any) as written; `*_saving` is what the item
    costs less when it reads that prefix from the cache instead. `prefix` names the prefix (model
    and blocks up to the last cache_control) so items sharing it can be grouped. `expected` counts
    `expected_output` output tokens (at most `max_tokens`); `with_output` moves it to another
    figure, so a row kept in the rows cache never holds a stale expectation.
    """

    high: float
    expected: float
    prefix: str | None = None
    high_saving: float = 0.0
    expected_saving: float = 0.0
    auto: bool = False  # sent with `cache = "auto"` marks (see batchops.spec.caching)
    plain_expected: float | None = None  # with auto marks: the expected cost without them
    plain_high: float | None = None  # with auto marks: the ceiling without them
    max_tokens: int = 0
    expected_output: float = 0.0  # output tokens `expected` counts
    unsized: int = 0  # documents given by URL or file: neither figure counts them
    long: bool = False  # `expected` is at the price above the model's long_context

    def with_output(self, tokens: float, price: ModelPrice) -> ItemEstimate:
        """This estimate with `tokens` output tokens expected (at most max_tokens)."""
        out = min(float(tokens), float(self.max_tokens))
        if self.long and price.long is not None:
            price = price.long
        delta = (out - self.expected_output) * price.output / 1_000_000
        if not delta:
            return self
        plain = self.plain_expected
        return self._replace(
            expected=self.expected + delta,
            plain_expected=None if plain is None else plain + delta,
            expected_output=out,
        )


def prefix_id(params: dict[str, Any], where: tuple[str, int, int]) -> str:
    """Identity of the cached prefix ending at `where`: what the API's cache is keyed on."""
    section, message, index = where
    tools = list(params.get("tools") or ())
    system = params.get("system")
    system = [system] if isinstance(system, str) else list(system or ())
    messages = list(params.get("messages") or ())
    if section == "tools":
        parts: list[Any] = [tools[: index + 1]]
    elif section == "system":
        parts = [tools, system[: index + 1]]
    elif section == "messages":
        last = dict(messages[message])
        last["content"] = list(last.get("content") or ())[: index + 1]
        parts = [tools, system, [*messages[:message], last]]
    else:
        parts = [tools, system, messages]
    data = orjson.dumps([params.get("model"), *parts], option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def estimate_item(
    params: dict[str, Any],
    price: ModelPrice,
    output_tokens: float | None = None,
    cache_min: int = 0,
) -> ItemEstimate:
    """The ceiling and the expected cost of one request; `output_tokens` is the expected output
    (`max_tokens` when None). A marked prefix under `cache_min` tokens is counted as plain input,
    as the API bills it (each figure at its own characters a token)."""
    scan = _scan(params)
    max_tokens = int(params.get("max_tokens") or 0)
    expected_out = max_tokens if output_tokens is None else min(output_tokens, max_tokens)
    tool = price.tool_overhead_tokens if scan.tools else 0
    # The ceiling: its characters a token, max_tokens out, the higher of today's and tomorrow's
    # prices; the expected figure: its characters a token, the expected output, today's.
    # A request past the model's long_context costs more, each figure by its own count.
    top = price.ceiling
    if scan.where is not None:
        plain, short, long = _tokens(scan, tool, _ceiling_tokens, cache_min)
        if short or long:
            top = top.at(plain + short + long)
            high = (
                plain * top.input + short * top.cache_write_5m + long * top.cache_write_1h
                + max_tokens * top.output
            ) / 1_000_000  # fmt: skip
            high_saving = (
                short * (top.cache_write_5m - top.cache_read)
                + long * (top.cache_write_1h - top.cache_read)
            ) / 1_000_000
            plain, short, long = _tokens(scan, tool, typical_tokens, cache_min)
            priced = price.at(plain + short + long)
            is_long, price = priced is not price, priced
            expected = (
                plain * price.input + short * price.cache_write_5m + long * price.cache_write_1h
                + expected_out * price.output
            ) / 1_000_000  # fmt: skip
            if not high_saving:  # a read costs what a write does: no prefix worth sharing
                return ItemEstimate(
                    high, expected, max_tokens=max_tokens, expected_output=expected_out,
                    unsized=scan.unsized, long=is_long,
                )  # fmt: skip
            expected_saving = (
                short * (price.cache_write_5m - price.cache_read)
                + long * (price.cache_write_1h - price.cache_read)
            ) / 1_000_000
            return ItemEstimate(
                high, expected, prefix_id(params, scan.where), high_saving, expected_saving,
                max_tokens=max_tokens, expected_output=expected_out, unsized=scan.unsized,
                long=is_long,
            )  # fmt: skip
    # Nothing cached: no mark, or a prefix under cache_min at the ceiling's count (and so at the
    # expected figure's, which counts fewer tokens). The common case, kept lean.
    chars, wide = scan.total
    ceiling_in = _ceiling_tokens(chars, wide) + tool
    typical_in = typical_tokens(chars, wide) + tool
    if price.long is not None or top.long is not None:
        top, priced = top.at(ceiling_in), price.at(typical_in)
        is_long, price = priced is not price, priced
    else:
        is_long = False
    high = ceiling_in * top.input + max_tokens * top.output
    expected = typical_in * price.input + expected_out * price.output
    return ItemEstimate(
        high / 1_000_000,
        expected / 1_000_000,
        max_tokens=max_tokens,
        expected_output=expected_out,
        unsized=scan.unsized,
        long=is_long,
    )


def batch_cost(
    estimates: Iterable[ItemEstimate | None], costs: Iterable[float]
) -> tuple[float, float]:
    """(expected, high) cost of items sent in one batch, `costs` standing in for a missing estimate.

    Per cached prefix, the first item writes it; the others read it: all of them in the expected
    figure, only BATCH_HIT_RATE_FLOOR of them in the ceiling (batch cache hits are best-effort).
    """
    expected = high = 0.0
    seen: set[str] = set()
    for estimate, cost in zip(estimates, costs, strict=True):
        if estimate is None:
            expected += cost
            high += cost
            continue
        expected += estimate.expected
        high += estimate.high
        if estimate.prefix is not None:
            if estimate.prefix in seen:
                expected -= estimate.expected_saving
                high -= BATCH_HIT_RATE_FLOOR * estimate.high_saving
            else:
                seen.add(estimate.prefix)
    return expected, high


def cache_min_tokens(model: str, row: dict[str, Any] | None = None) -> int:
    """The shortest prefix (tokens) the API caches for `model`: the price row's
    `cache_min_tokens` if it has one, else the API's rule (batchops.apirules)."""
    if row is not None and "cache_min_tokens" in row:
        return int(row["cache_min_tokens"])
    return api_cache_min_tokens(model)


# Jobs whose max_tokens is within this factor of a job's own are "similar": their replies'
# lengths stand in for its own until it has results.
SIMILAR_MAX_TOKENS = 2.0


@dataclass(frozen=True)
class OutputExpectation:
    """How many output tokens a reply of one job and model is expected to be, and why."""

    tokens: float | None  # None: max_tokens (nothing better is known)
    source: str  # "results", "expected_output_tokens", "other jobs' results" or "max_tokens"
    note: str  # the why, for the plan


def expected_output(
    job: str,
    model: str,
    max_tokens: int | None,
    declared: int | None,
    means: dict[str, dict[str, tuple[int, float]]],
    peers: dict[str, int],
) -> OutputExpectation:
    """The expected output of `job`'s replies on `model`, first found of: the mean output of
    the job's own stored results on that model; the spec's `expected_output_tokens`; the mean
    output of other jobs' results on that model whose max_tokens is similar (`peers`: job →
    max_tokens); else max_tokens. The ceiling stays at max_tokens whatever this says."""
    own = means.get(job, {}).get(model)
    if own is not None:
        count, mean = own
        return OutputExpectation(
            mean,
            "results",
            f"{mean:.1f} tokens a reply, the mean of {count:,} of its stored results",
        )
    if declared is not None:
        return OutputExpectation(
            float(declared),
            "expected_output_tokens",
            f"{declared} tokens a reply, as the spec's expected_output_tokens says",
        )
    if max_tokens:
        count, total, names = 0, 0.0, []
        for name, theirs in sorted(peers.items()):
            found = means.get(name, {}).get(model)
            similar = max_tokens / SIMILAR_MAX_TOKENS <= theirs <= max_tokens * SIMILAR_MAX_TOKENS
            if name != job and found is not None and similar:
                count += found[0]
                total += found[0] * found[1]
                names.append(name)
        if count:
            mean = total / count
            return OutputExpectation(
                mean,
                "other jobs' results",
                f"{mean:.1f} tokens a reply, the mean of {count:,} results of "
                f"{', '.join(names)} ({model}, similar max_tokens)",
            )
    return OutputExpectation(
        None,
        "max_tokens",
        "at max_tokens (no results yet: set expected_output_tokens for a closer estimate)",
    )


def usage_from_message(usage: dict[str, Any]) -> Usage:
    """Billed usage of a succeeded result's `message.usage`."""
    return Usage(*usage_counts(usage))


def usage_counts(usage: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """`usage_from_message`'s figures as a plain tuple (input, output, cache writes 5m and 1h,
    cache reads): a harvest reads them for every result line."""
    creation = usage.get("cache_creation") or {}
    write_1h = int(creation.get("ephemeral_1h_input_tokens") or 0)
    write_total = int(usage.get("cache_creation_input_tokens") or 0)
    return (
        int(usage.get("input_tokens") or 0),
        int(usage.get("output_tokens") or 0),
        max(write_total - write_1h, 0),
        write_1h,
        int(usage.get("cache_read_input_tokens") or 0),
    )


def money(value: float | None) -> str:
    """Dollars, the one way every output shows them: four decimal places (batch requests cost
    fractions of a cent, and a column of amounts lines up), `-` for none, and `<$0.0001` for an
    amount above nothing that four places would show as $0.0000."""
    if value is None:
        return "-"
    if 0 < value < 0.00005:
        return "<$0.0001"
    return f"${value:,.4f}"
