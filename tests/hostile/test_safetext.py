"""safetext: a key from a pull request is shown, never obeyed, on a terminal, in Markdown, in CSV."""

from __future__ import annotations

import re

import pytest

from batchops import safetext
from batchops.safetext import csv_cell, markdown_block, markdown_code, markdown_text, terminal


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain key-1", "plain key-1"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        (
            "\x1b]8;;https://evil\x07link\x1b]8;;\x07",
            "\\x1b]8;;https://evil\\x07link\\x1b]8;;\\x07",
        ),
        ("ok\rApply complete!", "ok\\x0dApply complete!"),
        ("two\nlines", "two\\x0alines"),
        ("\x9b2J", "\\x9b2J"),
        ("bidi \u202eevil", "bidi \\u202eevil"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("lone \udfff", "lone \\udfff"),
        ("caf\u00e9 \u65e5\u672c \U0001f600", "caf\u00e9 \u65e5\u672c \U0001f600"),
    ],
)
def test_terminal(text: str, shown: str) -> None:
    assert terminal(text) == shown
    terminal(text).encode("utf-8")


def test_every_character_terminal_escapes_is_one_isprintable_refuses() -> None:
    """`terminal` returns a printable text as it is, without its search: sound only while every
    character of its patterns is unprintable to `str.isprintable` (checked over all of Unicode,
    against the patterns themselves, compiled)."""
    for keep_newlines, source in (
        (False, safetext._UNSAFE),
        (True, safetext._UNSAFE_KEEP_NEWLINES),
    ):
        pattern = re.compile(source)
        caught = [chr(c) for c in range(0x110000) if pattern.match(chr(c))]
        assert len(caught) == (2136 if keep_newlines else 2137)
        assert [c for c in caught if c.isprintable()] == []
        assert all(terminal(c, keep_newlines) != c for c in caught)


def test_terminal_can_keep_newlines() -> None:
    assert terminal("a\nb\r\x1b", keep_newlines=True) == "a\nb\\x0d\\x1b"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("key", "`key`"),
        ("a`b", "``a`b``"),
        ("``` ![x](https://evil/p.png)", "```` ``` ![x](https://evil/p.png) ````"),
        ("`", "`` ` ``"),
        ("", "` `"),
        ("<img src=x onerror=alert(1)>", "`<img src=x onerror=alert(1)>`"),
        ("line\nbreak", "`line\\x0abreak`"),
    ],
)
def test_markdown_code(text: str, code: str) -> None:
    assert markdown_code(text) == code


def test_markdown_code_in_a_table_escapes_pipes() -> None:
    assert markdown_code("a|b", in_table=True) == "`a\\|b`"


def test_markdown_block_cannot_be_closed_from_inside() -> None:
    block = markdown_block("x\n```\n# injected\n````", info="json")
    assert block == "`````json\nx\n```\n# injected\n````\n`````"
    assert markdown_block("x", info="js onload") == "```\nx\n```"


def test_markdown_text_escapes_every_markup_character() -> None:
    assert markdown_text("![i](u) @team *b* <b> #1") == (
        "\\!\\[i\\]\\(u\\) \\@team \\*b\\* \\<b\\> \\#1"
    )


def test_markdown_text_with_entities_holds_no_angle_bracket() -> None:
    """Inside `<sub>`, `</sub><img>` must not even appear backslash-escaped."""
    assert markdown_text("</sub><img> &lt; *b*", entities=True) == (
        "&lt;/sub&gt;&lt;img&gt; &amp;lt; \\*b\\*"
    )


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://evil")', '\'=HYPERLINK("http://evil")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("\uff1d1+1", "'\uff1d1+1"),
        ("plain", "plain"),
        ("a=b", "a=b"),
        (-5, -5),
        (1.5, 1.5),
        (None, None),
        (True, True),
    ],
)
def test_csv_cell(value: object, cell: object) -> None:
    assert csv_cell(value) == cell
