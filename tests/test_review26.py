"""Review 26: the export of deeply nested answers (`results._writable`), the 252-level limit on
jsonl rows (`items._colons`, `rowmaker.plain_row`) and apply's closing table written without
tabulate (`tables.job_counts_table`).

Found: a stored answer whose tool call `name` is nested past what orjson writes (a reply the
harvest stores as sent, as it stores a thinking block that is not text) still ended every jsonl
and json export of the job in "Recursion limit reached" (`_answer` made only the call's input
`_writable`); the csv export of the same job was written. Now every field of a call is.

Held (no defect found): tool inputs and `--columns` values at and around the boundaries
(249-252 levels) and at the deepest a stored reply can hold (1020 levels inside the input) are
written whole in every format, with `--thinking`, and the recursion limit is left as it was,
also when the stdlib's encoder raises; jsonl rows of 251-254 levels, nested as lists or objects,
with or without a colon in a string (the two branches of `plain_row`), are taken or refused
alike by the fast and the general path, and a 252-level row is exported in csv, with
`--columns` and `--thinking`. apply's closing table, and every plain table, matched tabulate's
over 20,000 drawn tables of any printable ASCII names (not kept: `tests/test_tables.py` covers
them).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchops.commands import results as results_mod
from batchops.commands.results import ExportOptions
from batchops.pricing import PriceTable
from batchops.spec import rowmaker
from batchops.spec.items import iter_items
from tests.projects import rows_outcome
from tests.test_harvest_worker import in_process
from tests.test_render_agrees import _job
from tests.test_results_golden import _message, _text
from tests.test_review25 import _PLAIN, _build, _nested, _streamed


def _deep_text(levels: int) -> str:
    """The JSON of `_nested(levels)`, as orjson and the stdlib both write it."""
    return "[" * levels + "1" + "]" * levels


def _three_items(tmp_path: Path, message: str):
    rows = [{"id": key, "text": key} for key in ("before", "deep", "after")]
    states = [("succeeded", _PLAIN), ("succeeded", (None, message)), ("succeeded", _PLAIN)]
    return _build(tmp_path, rows, states)


# ------------------------------------------------------------------------ defect found

_DEEP_NAME = _message(
    [{"type": "tool_use", "id": "t1", "name": _nested(300), "input": {"label": "x"}}]
)


def test_the_harvest_stores_a_reply_whose_tool_name_is_deeply_nested() -> None:
    """What the export below meets is stored: the harvest checks a reply's content, text and
    usage, not the type of a tool call's name, and keeps the message as the API wrote it."""
    line = b'{"custom_id":"c1","result":{"type":"succeeded","message":%b}}\n' % (
        _DEEP_NAME.encode()
    )
    (row,) = in_process(line, [("c1", 1, "deep", "sha256:" + "0" * 64)], 1)
    assert orjson.loads(row[8])["content"][0]["name"] == _nested(300)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("jsonl", ExportOptions()),
        ("json", ExportOptions()),
        ("jsonl", ExportOptions(columns=("label",), thinking=True)),
    ],
    ids=["jsonl", "json", "jsonl-columns-thinking"],
)
def test_a_tool_call_name_nested_past_what_orjson_writes_does_not_stop_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, options: ExportOptions
) -> None:
    """Found: one stored reply whose tool_use block's `name` is nested 300 levels makes the
    jsonl and json exports of the whole job end in "TypeError: Recursion limit reached" (the
    fix made the call's `input` `_writable`, not its `name`); the csv export of the same job is
    written, with the name as JSON. Every item's row must be written, the name whole."""
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    ctx = _three_items(tmp_path, _DEEP_NAME)
    data = _streamed(ctx, fmt, options)
    exported = json.loads(data) if fmt == "json" else [json.loads(x) for x in data.splitlines()]
    assert [r["key"] for r in exported] == ["before", "deep", "after"]
    assert exported[1]["tool_calls"] == [{"name": _nested(300), "input": {"label": "x"}}]


# ------------------------------------------------------------- held: the boundaries


def _deep_answer(levels: int) -> str:
    """A reply with a thinking block and a tool call whose input's `l` are `_nested(levels)`;
    `levels` 1020 is the deepest the harvest stores (orjson reads 1024 levels: the message,
    its content, the block and the input hold it)."""
    marker = '"@deep@"'
    made = _message(
        [
            {"type": "thinking", "thinking": "@deep@"},
            {"type": "tool_use", "id": "t1", "name": "label", "input": {"l": "@deep@"}},
        ]
    ).replace(marker, _deep_text(levels))
    assert type(orjson.loads(made)) is dict
    return made


@pytest.mark.parametrize("levels", [249, 250, 251, 252, 1020])
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_a_deep_tool_input_column_and_thought_are_written_whole_at_every_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, levels: int
) -> None:
    """Regression guard: the input is `_writable` 4 levels down (a fragment from 250 levels
    of `l`), the column 3 levels down (from 252), the thought at the top; each is written as
    the JSON of the value whichever encoder wrote it, the other items' rows too, and the
    recursion limit the stdlib's encoder needed is put back."""
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    ctx = _three_items(tmp_path, _deep_answer(levels))
    limit = sys.getrecursionlimit()
    options = ExportOptions(columns=("l",), thinking=True)
    data = _streamed(ctx, fmt, options).decode()
    assert sys.getrecursionlimit() == limit
    value = _deep_text(levels)
    calls = '[{"name":"label","input":{"l":' + value + "}}]"
    if fmt == "csv":
        records = list(csv.DictReader(io.StringIO(data, newline="")))
        assert [r["key"] for r in records] == ["before", "deep", "after"]
        deep = records[1]
        assert (deep["tool_calls"], deep["output.l"], deep["thinking"]) == (calls, value, value)
        assert deep["parse_error"] == ""
        return
    lines = data.splitlines()
    if fmt == "json":
        assert (lines[0], lines[-1]) == ("[", "]")
        lines = [x.removesuffix(",") for x in lines[1:-1]]
    assert len(lines) == 3
    assert all(f'"key":"{k}"' in x for k, x in zip(["before", "deep", "after"], lines, strict=True))
    deep = lines[1]
    assert f'"thinking":"{value}","tool_calls":{calls},' in deep
    assert '"output":{"l":' + value + '},"parse_error":null,' in deep


def test_the_recursion_limit_is_put_back_when_the_stdlib_encoder_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = sys.getrecursionlimit()

    def failing(*args: Any, **kwargs: Any) -> str:
        assert sys.getrecursionlimit() > limit  # raised for the encoder
        raise MemoryError("encoder failed")

    monkeypatch.setattr(json, "dumps", failing)
    with pytest.raises(MemoryError):
        results_mod._writable(_nested(300), 0)
    assert sys.getrecursionlimit() == limit


# ------------------------------------------------------------- held: rows at the limit

PRICES = PriceTable.load()
TODAY = date(2026, 11, 21)


def _nested_objects(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"k": value}
    return value


@pytest.mark.parametrize("row_levels", [251, 252, 253, 254])
@pytest.mark.parametrize("shape", [_nested, _nested_objects], ids=["lists", "objects"])
@pytest.mark.parametrize("colon", [False, True], ids=["colons-as-keys", "colon-in-a-string"])
def test_a_row_at_the_limit_is_taken_or_refused_alike_by_both_paths(
    tmp_path: Path, row_levels: int, shape: Any, colon: bool
) -> None:
    """Regression guard: `plain_row` writes a row again two levels down on either branch (a
    line whose colons are one a key, or not); the general path (`_colons`) refuses what it
    refuses, nothing else: rows of 252 levels are taken, of 253 refused."""
    row = {"id": "a", "body": "a:b" if colon else "hi", "extra": shape(row_levels - 1)}
    data = json.dumps(row) + '\n{"id": "b", "body": "yo"}\n'
    job = _job(tmp_path, "{{ body }}", data)
    fast = rows_outcome(lambda: rowmaker.rows(job, tmp_path, PRICES, TODAY, {}))
    general = rows_outcome(
        lambda: (rowmaker.item_row(job, i, PRICES, TODAY, {}) for i in iter_items(job, tmp_path))
    )
    assert fast == general
    made, problems = general
    if row_levels <= 252:
        assert problems is None and len(made) == 2
    else:
        assert problems == ["jobs/data/rows.jsonl: line 1: job j: nested too deeply"]


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("csv", ExportOptions()),
        ("csv", ExportOptions(columns=("label",), thinking=True)),
        ("jsonl", ExportOptions(columns=("label",), thinking=True)),
        ("json", ExportOptions(input_columns=("deep",), thinking=True)),
    ],
    ids=["csv", "csv-columns-thinking", "jsonl-columns-thinking", "json-chosen-input"],
)
def test_a_row_as_deep_as_may_be_is_exported_with_every_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, options: ExportOptions
) -> None:
    """Regression guard beside test_review25 (jsonl and json, no options): the deepest row
    taken (252 levels) in csv, and on the general path `--columns` and `--thinking` take."""
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    deep = _nested(251)
    rows = [{"id": "one", "text": "t", "deep": deep}, {"id": "two", "text": "t", "deep": deep}]
    answer = ('{"label": "x"}', _message(_text('{"label": "x"}')))
    ctx = _build(tmp_path, rows, [("succeeded", answer), ("pending", None)])
    data = _streamed(ctx, fmt, options).decode()
    if fmt == "csv":
        records = list(csv.DictReader(io.StringIO(data, newline="")))
        assert [json.loads(r["input.deep"]) for r in records] == [deep, deep]
        if options.columns:
            assert [r["output.label"] for r in records] == ["x", ""]
        return
    exported = json.loads(data) if fmt == "json" else [json.loads(x) for x in data.splitlines()]
    assert [r["input"]["deep"] for r in exported] == [deep, deep]
    assert [r["state"] for r in exported] == ["succeeded", "pending"]
