"""The chunks an export reads its items in: a job's source rows and its kept rows, each chunk made
only when its rows are asked for, so that a process taking every other chunk parses only its own
(`items.input_chunks`, `cache.identity_chunks`), and what they give is what a whole read gives."""

from __future__ import annotations

import io
import json
from pathlib import Path

import orjson
import pytest

from batchops.errors import SpecError
from batchops.spec import cache
from batchops.spec.items import input_chunks, iter_inputs
from batchops.spec.model import load_project
from tests.test_export_identities import PRICES, TODAY, _job, _rows

SPEC = (
    'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
    'prompt = "{{ body }}"\ninput = { path = "data/rows.jsonl", key = "id" }\n'
)


def _lines_job(root: Path, lines: list[str]):
    (root / "jobs" / "data").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / "j.toml").write_text(SPEC, encoding="utf-8")
    (root / "jobs" / "data" / "rows.jsonl").write_text("".join(lines), encoding="utf-8")
    return load_project(root / "jobs", root).jobs[0]


def _row(i: int) -> str:
    return json.dumps({"id": f"r{i}", "body": f"b{i}"}) + "\n"


def test_input_chunks_give_what_iter_inputs_gives_blank_lines_skipped(tmp_path: Path) -> None:
    lines = [_row(i) if i % 4 else "  \n" for i in range(23)] + ["\n", _row(99)]
    job = _lines_job(tmp_path, lines)
    chunks = list(input_chunks(job, tmp_path, 5))
    assert [len(c) for c in chunks] == [5, 5, 5, 3]
    assert [pair for c in chunks for pair in c.rows()] == list(iter_inputs(job, tmp_path))
    assert [key for key, _ in iter_inputs(job, tmp_path)] == [
        *(f"r{i}" for i in range(23) if i % 4),
        "r99",
    ]


def test_a_chunk_read_past_is_not_parsed_and_a_bad_line_is_named_when_its_chunk_is(
    tmp_path: Path,
) -> None:
    """Line 9 (the fourth chunk's second row, a blank line before it) is not JSON: the chunks
    before and after it are made, and asking for its chunk's rows names the line."""
    lines = [_row(i) for i in range(6)] + ["\n", _row(6), "{not json\n", _row(8)]
    job = _lines_job(tmp_path, lines)
    chunks = list(input_chunks(job, tmp_path, 2))  # every line counted, none parsed
    assert [len(c) for c in chunks] == [2, 2, 2, 2, 1]
    assert [key for key, _ in chunks[0].rows()] == ["r0", "r1"]
    assert [key for key, _ in chunks[4].rows()] == ["r8"]
    with pytest.raises(SpecError) as raised:
        chunks[3].rows()
    assert raised.value.problems == [
        "jobs/data/rows.jsonl: line 9: job j: invalid JSON: unexpected character, expected a string key"
        " (column 2)"
    ]


def test_kept_rows_are_written_a_line_of_chunk_rows_whatever_blocks_come(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cache, "CHUNK_ROWS", 3)
    monkeypatch.setattr(cache, "MIN_ROWS", 0)
    written = cache._Written()
    rows = [(f"k{i}", f"c{i}", f"f{i}", 0.5, "m", 10) for i in range(17)]
    at = 0
    for size in (1, 5, 2, 7, 0, 2):
        written.add(rows[at : at + size])
        at += size
    lines = [orjson.loads(line) for line in written.lines()]
    assert [len(line) for line in lines] == [3, 3, 3, 3, 3, 2]
    assert [tuple(r) for line in lines for r in line] == rows


def test_a_line_holding_other_than_its_header_says_is_an_error_not_other_rows() -> None:
    """A kept file whose header says 3 rows a line and whose second line holds 2 (no batchops
    writes one; the file's MAC is checked before): that line's chunk is an error when made."""
    rows = [[f"k{i}", f"c{i}", f"f{i}", 0.5, "m", 10] for i in range(7)]
    header = {"rows": 7, "line_rows": 3}
    body = [rows[0:3], rows[3:5], rows[5:7]]
    fh = io.BytesIO(b"".join(orjson.dumps(x) + b"\n" for x in [header, *body]) + b'{"mac":""}\n')
    fh.name = "rows/j.jsonl"
    chunks = list(cache._identity_chunks(fh, header, 3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    assert chunks[0].rows() == rows[0:3]
    with pytest.raises(SpecError) as raised:
        chunks[1].rows()
    assert raised.value.problems == [
        "rows/j.jsonl: changed while it was read, or damaged; run the command again"
    ]


@pytest.mark.parametrize("line_rows", [4, 3])  # a chunk a line; chunks made of longer lines
def test_kept_rows_in_chunks_are_the_rows_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line_rows: int
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.setenv("BATCHOPS_CACHE", "on")
    monkeypatch.setattr(cache, "MIN_ROWS", 0)
    monkeypatch.setattr(cache, "CHUNK_ROWS", line_rows)
    job = _job(tmp_path, _rows(10))
    from batchops.spec.rowmaker import identities

    made = [(k, c, f) for block in identities(job, tmp_path) for k, c, f, _ in block]
    rendered = [(*m, 0.5, "claude-haiku-4-5", 10) for m in made]
    assert list(cache.rows(job, tmp_path, PRICES, TODAY, lambda: iter(rendered))) == rendered
    chunks = cache.identity_chunks(job, tmp_path, PRICES, TODAY, 4)
    assert chunks is not None
    listed = list(chunks)
    assert [len(c) for c in listed] == [4, 4, 2]
    assert [tuple(r) for c in listed for r in c.rows()] == rendered
