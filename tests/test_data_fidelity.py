"""A data file's values reach the requests as the user wrote them, or the row is refused with one
line naming the file and line, the same on every path (found by a review of data fidelity; each
test but the guards marked so failed before its fix).

A CSV file ending inside a quoted field was read as if the quote closed at the end of the file,
and an integer past 64 bits in a jsonl line became a float (orjson reads one so, silently): the
row rendered `1.2345678901234568e+29` for `123456789012345678901234567890`. Such an integer is
now refused as a .json data file, a spec and a requests file's full reading refuse it."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from batchops.errors import SpecError
from batchops.pricing import PriceTable
from batchops.spec import items, parallel, rowmaker
from batchops.spec.items import input_of, iter_items
from batchops.spec.model import load_project
from tests.projects import rows_outcome, run_cli

TODAY = date(2026, 11, 21)
PRICES = PriceTable.load()
BIG = "123456789012345678901234567890"
OUT_OF_RANGE = "integer out of range (64 bits at most)"


def _job(root: Path, prompt: str, data: str, ext: str = "jsonl"):
    """A template job reading `data` from data/rows.<ext> (beside the specs' folder: a .json
    file under jobs/ would be read as a spec)."""
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / f"rows.{ext}").write_text(data, encoding="utf-8")
    (root / "jobs").mkdir(exist_ok=True)
    (root / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 16\n'
        f"prompt = {json.dumps(prompt)}\n"
        f'input = {{ path = "../data/rows.{ext}", key = "id" }}\n',
        encoding="utf-8",
    )
    return load_project(root / "jobs", root).jobs[0]


def _every_path(job, root: Path):
    """(rows, problems) of the fast path, after checking that the general path, an export's
    identities and many cores give exactly the same."""
    fast = rows_outcome(lambda: rowmaker.rows(job, root, PRICES, TODAY, {}))
    general = rows_outcome(
        lambda: (rowmaker.item_row(job, i, PRICES, TODAY, {}) for i in iter_items(job, root))
    )
    assert fast == general
    made = rows_outcome(lambda: (i for part in rowmaker.identities(job, root) for i in part))
    full = rows_outcome(
        lambda: ((i.key, i.custom_id, i.fingerprint, input_of(i)) for i in iter_items(job, root))
    )
    assert made == full
    if job.input.format == "jsonl":
        many = rows_outcome(
            lambda: parallel.desired_rows(job, root, PRICES, TODAY, chunk_bytes=40, processes=2)
        )
        assert many == fast
    return fast


def _cli_agrees(root: Path, emulator: str, line: str) -> None:
    """validate, plan, apply and an export (`results`) all refuse with exactly `line`."""
    env = {"XDG_CACHE_HOME": str(root / "cache"), "BATCHOPS_CACHE": "off"}
    state = root / "state.db"
    for args in (
        ("validate",),
        ("plan", "--no-refresh"),
        ("apply", "--yes"),
        ("results", "j"),
    ):
        done = run_cli(root, emulator, *args, env=env, state=state)
        assert (done.returncode, done.stderr) == (1, f"Error: {line}\n"), (args, done.stdout)


# --- 1. a CSV file ending inside a quoted field -----------------------------------------------

UNCLOSED = [
    ('id,text\n1,"unterminated\n', 2),
    ('id,text\n1,"unterminated', 2),  # no line break at the end
    ('id,text\n1,fine\n2,"opens\n3,runs on\n4,to the end\n', 3),  # the row starting there
    ('id,"text\n1,x\n', 1),  # the header's
]


@pytest.mark.parametrize(("data", "line"), UNCLOSED)
def test_a_csv_file_ending_inside_a_quoted_field_is_refused(tmp_path, data, line):
    job = _job(tmp_path, "{{ text }}", data, "csv")
    _, problems = _every_path(job, tmp_path)
    assert problems == [
        f"data/rows.csv: line {line}: job j: invalid CSV: a quoted field is never closed"
        " (the file ends inside it)"
    ]


def test_a_csv_quote_closed_before_the_end_of_its_field_is_refused(tmp_path):
    """`"a"b` was read as `ab` (the csv module's lenient reading): a value the user did not
    write. Read strictly, it is malformed CSV."""
    job = _job(tmp_path, "{{ text }}", 'id,text\n1,"a"b\n2,c\n', "csv")
    _, problems = _every_path(job, tmp_path)
    assert problems == ["data/rows.csv: line 2: job j: invalid CSV: ',' expected after '\"'"]


def test_well_formed_quoted_csv_fields_are_read_as_written(tmp_path):
    """Guard (passed before the fix): quotes, doubled quotes and line breaks in a field."""
    data = 'id,text\n1,"a, ""b""\nc"\n2,plain\n3,""\n'
    job = _job(tmp_path, "{{ text }}|", data, "csv")
    rows, problems = _every_path(job, tmp_path)
    assert problems is None and len(rows) == 3
    texts = [i.params["messages"][0]["content"] for i in iter_items(job, tmp_path)]
    assert texts == ['a, "b"\nc|', "plain|", "|"]


def test_every_command_refuses_an_unclosed_csv_quote_alike(tmp_path, emulator):
    _job(tmp_path, "{{ text }}", 'id,text\n1,"unterminated\n', "csv")
    _cli_agrees(
        tmp_path,
        emulator,
        "data/rows.csv: line 2: job j: invalid CSV: a quoted field is never closed"
        " (the file ends inside it)",
    )


# --- 2. integers past 64 bits in a jsonl data file ---------------------------------------------

BIG_ROWS = [
    # (template, the first line, the place named): a field no template reads (the fast path
    # takes such a row), one the template reads, the key, nested, negative, past 2**64
    ("{{ body }}", f'{{"id": "a", "n": {BIG}, "body": "x"}}', "n"),
    ("{{ n }}", f'{{"id": "a", "n": {BIG}, "body": "x"}}', "n"),
    ("{{ body }}", f'{{"id": {BIG}, "body": "x"}}', "id"),
    ("{{ body }}", f'{{"id": "a", "body": "x", "meta": {{"n": [1, {BIG}]}}}}', "meta.n.1"),
    ("{{ body }}", '{"id": "a", "body": "x", "n": -9223372036854775809}', "n"),
    ("{{ body }}", '{"id": "a", "body": "x", "n": 18446744073709551616}', "n"),
    ("{{ body }}", '{"id": "a", "body": "x:y", "n": 18446744073709551616}', "n"),  # colons
]


@pytest.mark.parametrize(("prompt", "first", "place"), BIG_ROWS)
def test_an_integer_past_64_bits_in_a_jsonl_row_is_refused_on_every_path(
    tmp_path, prompt, first, place
):
    job = _job(tmp_path, prompt, first + '\n{"id": "b", "n": 5, "body": "y"}\n')
    rows, problems = _every_path(job, tmp_path)
    assert problems == [f"data/rows.jsonl: line 1: job j: {place}: {OUT_OF_RANGE}"]
    assert [r[0] for r in rows] == ["b"]


@pytest.mark.parametrize(
    "value",
    ["18446744073709551615", "-9223372036854775808", "1000000000000000000", "1.5e300"],
)
def test_numbers_within_range_render_exactly(tmp_path, value):
    """Guard (passed before the fix): 64-bit integers at the edges, a 19-digit one, a big
    float, and digits in a string render as written (Python's json renders the same)."""
    data = f'{{"id": "a", "n": {value}, "s": "{BIG}", "body": "x"}}\n'
    job = _job(tmp_path, "{{ n }} {{ s }}", data)
    rows, problems = _every_path(job, tmp_path)
    assert problems is None and len(rows) == 1
    (item,) = iter_items(job, tmp_path)
    want = str(json.loads(value))
    assert item.params["messages"] == [{"role": "user", "content": f"{want} {BIG}"}]


def test_digits_in_a_string_beside_a_big_float_stay_a_string(tmp_path):
    """Guard (passed before the fix): a row holding a float of 2**63 or more (as an integer past
    64 bits becomes) and 30 digits in a row, in a string, is read again exactly, and taken."""
    data = f'{{"id": "a", "body": "x", "ids": ["{BIG}"], "big": 1e20}}\n'
    job = _job(tmp_path, "{{ body }}", data)
    rows, problems = _every_path(job, tmp_path)
    assert problems is None and len(rows) == 1
    (made,) = (i for part in rowmaker.identities(job, tmp_path) for i in part)
    assert made[3] == {"id": "a", "body": "x", "ids": [BIG], "big": 1e20}


def test_a_json_data_file_refuses_an_integer_past_64_bits_alike(tmp_path):
    """Guard (passed before the fix): the behaviour jsonl now shares."""
    job = _job(tmp_path, "{{ body }}", f'[{{"id": "a", "n": {BIG}, "body": "x"}}]', "json")
    _, problems = _every_path(job, tmp_path)
    assert problems == [f"data/rows.json: row 1: job j: n: {OUT_OF_RANGE}"]


def test_inline_items_refuse_an_integer_past_64_bits(tmp_path):
    """Guard (passed before the fix): TOML reads such an integer exactly (tomllib does not stop
    at 64 bits); the spec is refused as it is read."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 16\n'
        f'prompt = "{{{{ n }}}}"\nitems = [{{ key = "a", n = {BIG} }}]\n',
        encoding="utf-8",
    )
    with pytest.raises(SpecError) as caught:
        load_project(tmp_path / "jobs", tmp_path)
    assert caught.value.problems == [f"jobs/j.toml: jobs.j.items.0.n: {OUT_OF_RANGE}"]


def test_a_requests_file_refuses_an_integer_past_64_bits_on_every_path(tmp_path, monkeypatch):
    params = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": []}
    good = json.dumps({"custom_id": "b", "params": params})
    bad = good.replace('"b"', '"a"').replace('"messages"', f'"top_k": {BIG}, "messages"')
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "req.jsonl").write_text(f"{bad}\n{good}\n", encoding="utf-8")
    (tmp_path / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nrequests = "req.jsonl"\n', encoding="utf-8"
    )
    job = load_project(tmp_path / "jobs", tmp_path).jobs[0]
    want = [f"jobs/req.jsonl: line 1: job j: params.top_k: {OUT_OF_RANGE}"]
    plain = rows_outcome(lambda: rowmaker.rows(job, tmp_path, PRICES, TODAY, {}))
    many = rows_outcome(
        lambda: parallel.desired_rows(job, tmp_path, PRICES, TODAY, chunk_bytes=40, processes=2)
    )
    # every line read in full (`_raw_item`), as the plain path must agree with
    monkeypatch.setattr(items, "_plain_request", lambda betas: lambda line: None)
    monkeypatch.setattr(parallel, "_plain_request", lambda betas: lambda line: None)
    full = rows_outcome(lambda: rowmaker.rows(job, tmp_path, PRICES, TODAY, {}))
    assert plain == many == full
    assert plain[1] == want and [r[0] for r in plain[0]] == ["b"]


def test_every_command_refuses_an_integer_past_64_bits_alike(tmp_path, emulator):
    _job(tmp_path, "{{ body }}", f'{{"id": "a", "n": {BIG}, "body": "x"}}\n')
    _cli_agrees(tmp_path, emulator, f"data/rows.jsonl: line 1: job j: n: {OUT_OF_RANGE}")
