"""Text from pull requests, made safe to show: on a terminal, in a GitHub comment, in a CSV file.

Job names are checked, but keys, descriptions, data values, template names and the error lines
that quote them come from whoever wrote the spec or the data file. Written as they are, an ESC
sequence can rewrite the terminal or a CI log (colours, cursor moves, OSC 8 links, a fake
"Apply complete"), a backtick can close a Markdown code span and inject an image or a mention,
and a cell starting with `=` runs as a formula when a reviewer opens the CSV export. Each
function here takes any text and returns a form that is shown literally in one of those places.

A leaf module: it imports nothing from batchops, so every output layer can use it.
"""

from __future__ import annotations

import functools
import re
from typing import Any

# C0 controls (ESC, CR, BEL, BS, TAB, LF ...), DEL, C1 controls (0x9b is a one-byte CSI),
# zero-width and bidirectional formatting characters (Trojan Source), line/paragraph separators,
# the BOM, and lone surrogates (which cannot even be encoded to UTF-8). Every one of them is a
# character `str.isprintable` calls unprintable (`tests/hostile/test_safetext.py` checks each), so a
# printable text needs no search; the patterns are compiled when a text is not (2–3 ms of a
# cold start: the surrogate range makes a large character set).
_UNSAFE = "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]"
_UNSAFE_KEEP_NEWLINES = _UNSAFE.replace("\x00-\x1f", "\x00-\x09\x0b-\x1f")


@functools.cache
def _pattern(keep_newlines: bool) -> re.Pattern[str]:
    return re.compile(_UNSAFE_KEEP_NEWLINES if keep_newlines else _UNSAFE)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal(text: object, keep_newlines: bool = False) -> str:
    """`text` with every control or invisible formatting character shown escaped (`\\x1b`).

    The result is one line (LF shown as `\\x0a`) unless `keep_newlines`, holds no lone
    surrogate, and prints as itself: no escape sequence (CSI, OSC, a bare CR) reaches the
    terminal. Backslashes are left alone, so `\\x1b` typed by a user reads the same: harmless.
    """
    s = text if isinstance(text, str) else str(text)
    if s.isprintable():
        return s
    return _pattern(keep_newlines).sub(_escape, s)


def _longest_run(text: str, char: str) -> int:
    runs = re.findall(re.escape(char) + "+", text)
    return max((len(r) for r in runs), default=0)


def markdown_code(text: object, in_table: bool = False) -> str:
    """`text` as an inline code span in GitHub Markdown, shown literally.

    The fence is one backtick longer than the longest run of backticks in the text, so no key
    can close it; inside a code span nothing is markup (no HTML, image, link or @mention).
    Control characters and newlines are escaped as by `terminal`. With `in_table`, `|` is
    written `\\|`, which GitHub tables need even inside code spans.
    """
    s = terminal(text)
    if in_table:
        s = s.replace("|", "\\|")
    if not s:
        return "` `"
    fence = "`" * (_longest_run(s, "`") + 1)
    # A span starting or ending with a backtick (or a space) needs a space of padding, which
    # Markdown strips again.
    pad = " " if s[0] in "` " or s[-1] in "` " else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def markdown_block(text: object, info: str = "") -> str:
    """`text` as a fenced code block, shown literally whatever lines it holds.

    The fence is longer than any run of backticks inside, so no line can close the block early.
    `info` (a language name such as `json`) must be a plain word.
    """
    s = terminal(text, keep_newlines=True)
    fence = "`" * max(3, _longest_run(s, "`") + 1)
    info = info if re.fullmatch(r"[A-Za-z0-9_+-]*", info) else ""
    return f"{fence}{info}\n{s}\n{fence}"


_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~@:&=\"'$^%])")


_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def markdown_text(text: object, entities: bool = False) -> str:
    """`text` as plain Markdown prose: every ASCII punctuation character backslash-escaped.

    No emphasis, link, image, HTML, heading, table cell break, autolink or @mention survives.
    With `entities`, `&`, `<` and `>` are written `&amp;`, `&lt;` and `&gt;` instead, so the
    comment's source holds no `<` at all: for text inside an HTML element such as `<sub>`.
    Prefer `markdown_code` for keys and values: it shows them verbatim.
    """
    if entities:
        return _MARKDOWN_PUNCTUATION.sub(
            lambda m: _ENTITIES.get(m.group(), "\\" + m.group()), terminal(text)
        )
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", terminal(text))


# OWASP "CSV Injection": a cell starting with one of these runs as a formula in a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
FORMULA_FIRST = frozenset(FORMULA_STARTS)  # each start is one character: a set of first ones


def csv_cell(value: Any) -> Any:
    """A CSV cell value that a spreadsheet shows as text, never runs as a formula.

    A string starting with `=`, `+`, `-`, `@`, tab, CR or LF (or their full-width forms) is
    prefixed with `'`, as OWASP advises; the csv module then quotes it as needed. Numbers,
    booleans and None are returned unchanged (a negative number is not a formula).
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
