"""A jsonl export makes the lines of plain answers a run at a time (`results._plain_run`), column
by column; every line must be the bytes `orjson.dumps` gives the row `iter_results` builds for it.

One job of a few hundred items, most of them plain answers (so that whole runs are plain) with the
other kinds scattered through them: errored, missing, in flight, changed, a result reused from
another fingerprint, answers with tool calls, cache usage, \\u escapes, newlines, quotes and
backslashes, keys and inputs in other scripts, texts that are None or empty. It is exported with
runs and chunks of several lengths, with and without the rows cache, on SQLite and PostgreSQL,
every input-column option, and compared with the rows written one by one.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from batchops.commands import results as results_mod
from batchops.commands.context import Context
from batchops.commands.results import ExportOptions, export, iter_results, write_rows
from batchops.spec import cache
from batchops.spec.items import iter_items
from batchops.spec.model import load_project
from batchops.state import is_postgres
from tests.statefill import copy_state
from tests.test_results_golden import ANSWERS, OLD_FP, _context, _Filler, _message, _text

SPEC = """version = 1

[jobs.many]
model = "claude-haiku-4-5"
max_tokens = 16
max_attempts = 2
prompt = "Label: {{ text }}"
input = { path = "data/many.jsonl", key = "id" }
"""
ITEMS = 600
# The items that are not plain answers (the rest are), none from 256 to 511: with runs of 256,
# one run is plain throughout and the runs around it are not.
ODD = {
    40: ("succeeded", "reused"),  # its result is another fingerprint's, reused for it
    97: ("succeeded", "tool"),
    131: ("failed-invalid", None),
    200: ("todo-absent", None),
    515: ("changed", "plain"),
    530: ("succeeded-other-fp", "plain"),
    531: ("pending", None),
    540: ("succeeded", "thinking"),  # cache usage in the message
    550: ("succeeded", "nomessage"),
    560: ("retry-api", None),
    570: ("succeeded-no-result", None),
    580: ("succeeded", "control"),  # a control character, \u-escaped in the message
    590: ("succeeded", "escaped"),
}


def _answer(n: int) -> tuple[str | None, str]:
    """A plain answer of its own for item n: texts with what JSON escapes, in other scripts."""
    texts = [
        f"answer {n}",
        f'line one\nline "two" {n}\twith a tab',
        f"back\\slash {n} and a / slash",
        f"héllo ☃ {n} 🎉",
        "",
        f"ends with a backslash {n}\\",
    ]
    text = texts[n % len(texts)]
    usage = {"input_tokens": 100 + n, "output_tokens": n % 7}
    stored: str | None = None if n % 11 == 5 else text
    return stored, _message(_text(text), usage)


def _rows() -> list[dict[str, Any]]:
    rows = []
    for n in range(ITEMS):
        key = f"k{n:03d}" if n % 9 else f'ключ-{n}-"q"\\'
        row: dict[str, Any] = {"id": key, "text": f"row {n}\nwith «quotes»"}
        if n % 5 == 1:
            row["extra"] = {"list": [n, None, "x"], "f": n / 4}
        rows.append(row)
    return rows


def write_project(root: Path) -> None:
    data = root / "jobs" / "data"
    data.mkdir(parents=True)
    (root / "jobs" / "spec.toml").write_text(SPEC, encoding="utf-8")
    with (data / "many.jsonl").open("w", encoding="utf-8") as fh:
        for n, row in enumerate(_rows()):
            fh.write(json.dumps(row, ensure_ascii=n % 2 == 0) + "\n")


def fill_state(root: Path, location: Path | str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = root / "state" / "filled.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    (job,) = load_project(root / "jobs", root).jobs
    monkeypatch.setitem(
        ANSWERS,
        "escaped",
        # a tool call whose type is spelt with an escape: found only by parsing the message
        (
            None,
            _message([{"type": "tool_use", "name": "f", "input": {}}]).replace(
                "tool", "\\u0074ool"
            ),
        ),
    )
    control = "control \x01\x1f"
    monkeypatch.setitem(ANSWERS, "control", (control, _message(_text(control))))
    f = _Filler(path)
    with f.store._transaction():
        for n, item in enumerate(iter_items(job, root)):
            scenario, answer = ODD.get(n, ("succeeded", f"own-{n}"))
            if answer in (f"own-{n}", "reused"):
                monkeypatch.setitem(ANSWERS, answer, _answer(n))
            f.item(job.name, item.key, item.custom_id, item.fingerprint, scenario, answer)
            if answer == "reused":  # its result is another fingerprint's
                result_id = f.db["items"].get((job.name, item.key))["result_id"]
                f.db["results"].update(result_id, {"fingerprint": OLD_FP})
    f.store.close()
    if not is_postgres(location):
        path.replace(location)
        return
    copy_state(path, location)


@pytest.fixture
def many(tmp_path: Path, state_location, monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    write_project(tmp_path)
    fill_state(tmp_path, state_location, monkeypatch)
    return _context(tmp_path, state_location)


def _row_by_row(context: Context, options: ExportOptions) -> bytes:
    """The export as `iter_results` builds each row and `orjson.dumps` writes it."""
    out = io.BytesIO()
    write_rows(iter_results(context, "many", options=options), "jsonl", out)
    return out.getvalue()


@pytest.mark.parametrize("rows_cache", ["off", "on"])
def test_plain_runs_write_the_bytes_of_each_row_dumped(
    many: Context, rows_cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rows_cache == "on":
        monkeypatch.setenv("BATCHOPS_CACHE", "on")
        monkeypatch.setattr(cache, "MIN_ROWS", 0)
        many.desired()
    made: list[int] = []
    real = results_mod._plain_run

    def counted(*args: Any) -> Any:
        lines = real(*args)
        made.append(0 if lines is None else lines.count(b"\n"))
        return lines

    monkeypatch.setattr(results_mod, "_plain_run", counted)
    for input_columns in (None, (), ("text", "missing", "extra")):
        options = ExportOptions(input_columns=input_columns)
        expected = _row_by_row(many, options)
        assert expected.count(b"\n") == ITEMS
        for chunk, run in ((1000, 256), (128, 256), (50, 7), (7, 3), (1, 1)):
            monkeypatch.setattr(results_mod, "CHUNK_KEYS", chunk)
            monkeypatch.setattr(results_mod, "PLAIN_RUN", run)
            made.clear()
            out = io.BytesIO()
            summary = export(many, "many", "jsonl", out, options=options)
            assert summary.rows == ITEMS
            assert out.getvalue() == expected, (input_columns, chunk, run)
            assert sum(made) >= 256  # items 256 to 511 at least were made a run at a time
            assert 0 in made  # and some runs fell back to one row at a time


def test_a_run_with_a_bool_or_float_token_count_is_made_row_by_row() -> None:
    """`%d` writes True as 1 and 2.0 as 2, orjson as true and 2.0: such a run is not plain."""
    item = results_mod.ExportItem("k", "c", "fp", {"id": "k"})
    message = _message(_text("x"))
    for tokens in (True, 2.0):
        answer = ("fp", "x", message, "end_turn", "m", tokens, 1, "b")
        assert results_mod._plain_run([item], [answer], None) is None  # type: ignore[list-item]
    plain = results_mod._plain_run([item], [("fp", "x", message, "end_turn", "m", 2, 1, "b")], None)
    assert plain is not None and b'"input_tokens":2,' in plain


def test_a_file_sent_to_disk_as_it_grows_holds_every_line(
    many: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its pages sent to disk after every block (`_write_back`), a file holds what a
    stream gets; a stream is never advised."""
    advised: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", advise)
    monkeypatch.setattr(results_mod, "WRITE_BACK_BYTES", 1)
    monkeypatch.setattr(results_mod, "CHUNK_KEYS", 50)
    streamed = io.BytesIO()
    export(many, "many", "jsonl", streamed)
    assert advised == []
    path = many.project().root / "many.jsonl"
    export(many, "many", "jsonl", path)
    assert path.read_bytes() == streamed.getvalue() == _row_by_row(many, ExportOptions())
    assert len(advised) == ITEMS // 50  # a block a chunk, each advised from where the last ended
    assert [offset for offset, _ in advised[1:]] == [o + n for o, n in advised[:-1]]
    assert advised[-1][0] + advised[-1][1] == len(streamed.getvalue())
