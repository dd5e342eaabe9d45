"""Review 25: the fast paths of `batchops results`, tested against the general path.

The export has paths that must write the very bytes of the general one:

- jsonl: a run of plain answers made column by column (`_plain_run`), a plain answer made alone
  (`_PLAIN_INPUT` / `_PLAIN_NO_INPUT` in `_jsonl_blocks`), against `orjson.dumps` of each row
  `iter_results` builds (`_row`);
- csv: `_CsvLines.plain` against what Python's csv module writes for those rows
  (`tests.test_results._csv_module_bytes`), formula neutralisation on and off;
- several processes (`_parts`, each taking every n-th chunk) against one;
- the rows cache serving the job (`export_chunks`) against a miss (`BATCHOPS_CACHE=off`).

`test_every_fast_path_writes_the_general_paths_bytes` draws jobs (keys and inputs holding what
JSON escapes and what a spreadsheet runs, nested values, NUL, CR, LF; stored answers with tool
calls, cache usage, \\u escapes, empty or missing messages; token counts, stop reasons and models
of the odd types a SQLite state can hold; succeeded, failed, pending, to-do and changed items
mixed in one run) and exports them with chunks and runs of many lengths, every input-column
option, one to three processes, the rows cache on and off, to streams and to files. It found
nothing: the fast paths agree with the general one on everything they may take.

What failed is the boundary of nesting: orjson writes at most 254 levels, and the general path
writes a row one level deeper than the data row it echoes (inside `input`), and an answer's tool
call input three levels deeper (inside `tool_calls`). A jsonl row of 254 levels, which `validate`,
`plan` and `apply` accept (CHANGELOG: "A jsonl row nested past 254 levels is refused"), is written
by the plain fast path but makes the general path raise `TypeError: Recursion limit reached`: the
fast path and `iter_results` disagree, and every export that meets such a row on the general path
(an item pending or failed, `--format json`, `--columns`, `--thinking`, or merely a stored message
holding `cache_`, which every real API reply's usage holds) ends in "unexpected TypeError".
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchops.commands import results as results_mod
from batchops.commands.context import Context
from batchops.commands.results import ExportOptions, export, iter_results
from batchops.errors import SpecError
from batchops.spec import cache
from batchops.spec.items import iter_items
from batchops.spec.model import load_project
from tests.projects import record_forks
from tests.test_results import _csv_module_bytes
from tests.test_results_golden import ANSWERS, _context, _Filler, _message, _text

JOB = "odd"
SPEC = f"""version = 1

[jobs.{JOB}]
model = "claude-haiku-4-5"
max_tokens = 16
max_attempts = 2
prompt = "Label: {{{{ text }}}}"
input = {{ path = "data/odd.jsonl", key = "id" }}
"""


# ----------------------------------------------------------------------------- the project


def _build(
    root: Path,
    rows: list[dict[str, Any]],
    states: list[tuple[str, tuple[str | None, str | None] | None]],
    stored: dict[int, dict[str, Any]] | None = None,
) -> Context:
    """A project of one jsonl job holding `rows`, and its SQLite state: item n recorded as
    `states[n]` = (scenario of `test_results_golden._Filler`, its answer (text, message) or
    None), then its result row's columns overwritten with `stored[n]` (what SQLite holds of a
    value is what its column's affinity makes of it)."""
    data = root / "jobs" / "data"
    data.mkdir(parents=True)
    (root / "jobs" / "spec.toml").write_text(SPEC, encoding="utf-8")
    (data / "odd.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    state = root / "state" / "batchops.db"
    state.parent.mkdir(parents=True)
    (job,) = load_project(root / "jobs", root).jobs
    items = list(iter_items(job, root))
    assert [i.key for i in items] == [r["id"] for r in rows]
    with pytest.MonkeyPatch.context() as mp:
        filler = _Filler(state)
        with filler.store._transaction():
            for n, item in enumerate(items):
                scenario, answer = states[n]
                name = None
                if answer is not None:
                    name = f"review25-{n}"
                    mp.setitem(ANSWERS, name, answer)
                filler.item(job.name, item.key, item.custom_id, item.fingerprint, scenario, name)
                for column, value in (stored or {}).get(n, {}).items():
                    filler.db.execute(
                        f"update results set {column} = ? where job = ? and key = ?",
                        [value, job.name, item.key],
                    )
        filler.store.close()
    return _context(root, state)


def _general_jsonl(ctx: Context, options: ExportOptions) -> bytes:
    """The general path: each row `iter_results` builds, as `orjson.dumps` writes it."""
    newline = orjson.OPT_APPEND_NEWLINE
    return b"".join(
        orjson.dumps(row, option=newline) for row in iter_results(ctx, JOB, options=options)
    )


def _general_csv(ctx: Context, options: ExportOptions, fields: list[str], *, safe: bool) -> bytes:
    """What Python's csv module writes for the rows `iter_results` builds."""
    return _csv_module_bytes(list(iter_results(ctx, JOB, options=options)), fields, safe=safe)


def _streamed(ctx: Context, fmt: str, options: ExportOptions, raw_csv: bool = False) -> bytes:
    out = io.BytesIO()
    export(ctx, JOB, fmt, out, options=options, raw_csv=raw_csv)
    return out.getvalue()


def _filed(ctx: Context, fmt: str, options: ExportOptions, raw_csv: bool = False) -> bytes:
    """An export to a file: a CSV file with every input field learns its header from its first
    row, and is written again when a later row holds another field (`_FieldsGrew`)."""
    path = ctx.project().root / "out" / f"{JOB}.{fmt}"
    export(ctx, JOB, fmt, path, create_dirs=True, options=options, raw_csv=raw_csv)
    return path.read_bytes()


@contextlib.contextmanager
def _exporting(
    mp: pytest.MonkeyPatch, ctx: Context, *, chunk: int, run: int, processes: int, cached: bool
) -> Iterator[list[int]]:
    """Exports in chunks of `chunk` keys and plain runs of `run`, with the rows cache kept and
    serving (then on `processes` processes, from the first byte) or off; yields the pids of the
    children forked."""
    mp.setattr(results_mod, "CHUNK_KEYS", chunk)
    mp.setattr(results_mod, "PLAIN_RUN", run)
    mp.setattr(results_mod, "PARALLEL_MIN_BYTES", 0)
    mp.setattr(results_mod, "_idle_cores", lambda: processes)
    forked = record_forks(mp)
    if cached:
        mp.setenv("BATCHOPS_CACHE", "on")
        mp.setattr(cache, "MIN_ROWS", 0)
        ctx.desired()  # a plan keeps the job's rows
        assert results_mod.rows_kept(ctx.project().jobs[0], ctx.project().root)
    yield forked


def _first_difference(got: bytes, want: bytes) -> str:
    for n, (a, b) in enumerate(zip(got.split(b"\n"), want.split(b"\n"), strict=False)):
        if a != b:
            return f"line {n}:\n got  {a!r}\n want {b!r}"
    lines, wanted = got.count(b"\n"), want.count(b"\n")
    return f"{lines} lines, want {wanted}"


def _compare(
    ctx: Context,
    mp: pytest.MonkeyPatch,
    rows: list[dict[str, Any]],
    *,
    input_columns: tuple[str, ...] | None,
    chunk: int,
    run: int,
    processes: int,
    cached: bool,
    raw_csv: bool,
) -> list[int]:
    """Every fast way of exporting against the general path; the children forked."""
    options = ExportOptions(input_columns=input_columns)
    if input_columns is None:
        fields = list(dict.fromkeys(f for row in rows for f in row))
    else:
        fields = list(input_columns)
    mp.setenv("BATCHOPS_CACHE", "off")
    want_jsonl = _general_jsonl(ctx, options)
    want_csv = _general_csv(ctx, options, fields, safe=not raw_csv)
    assert want_jsonl.count(b"\n") == len(rows)
    with _exporting(mp, ctx, chunk=chunk, run=run, processes=processes, cached=cached) as forked:
        for way, got, want in (
            ("jsonl stream", _streamed(ctx, "jsonl", options), want_jsonl),
            ("jsonl file", _filed(ctx, "jsonl", options), want_jsonl),
            ("csv stream", _streamed(ctx, "csv", options, raw_csv), want_csv),
            ("csv file", _filed(ctx, "csv", options, raw_csv), want_csv),
        ):
            assert got == want, f"{way}: {_first_difference(got, want)}"
        return list(forked)


# ------------------------------------------------------------------ drawn jobs, every path

# What JSON escapes, what a spreadsheet runs, what ends a CSV record, in other scripts.
_ALPHABET = "=+-@\t\r\n\x00\"',\\/u{}[]:é☃\u2028\uff1d 🎉aZ0"
_STRINGS = st.text(alphabet=_ALPHABET, max_size=6)
_WORDS = st.sampled_from(["tool_use", "cache_read", "\\u0074", "=SUM(A1)", "-1", "", "plain"])
# Floats only where `_csv_module_bytes` (json.dumps) and the export (orjson) spell them alike.
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0.5, -1.25, 2.0, -0.0]),
    _STRINGS,
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(_STRINGS, inner, max_size=3)
    ),
    max_leaves=6,
)
_TOP_VALUES = st.one_of(_VALUES, st.sampled_from([1e300, -1e-300, 123456.789]))
_SCENARIOS = st.sampled_from(
    ["succeeded"] * 8
    + [
        "failed-invalid",
        "retry-api",
        "pending",
        "todo-absent",
        "changed",
        "succeeded-other-fp",
        "succeeded-no-result",
        "succeeded-forgotten",
    ]
)
_MESSAGE_KINDS = st.sampled_from(
    ["plain"] * 4
    + ["ascii", "tool", "escaped-tool", "cache", "empty", "none", "scalar", "not json"]
)
# Values a SQLite state can hold in a result's columns: TEXT columns turn numbers into text,
# INTEGER ones turn integral text and floats into integers and keep the rest.
_STORED = st.fixed_dictionaries(
    {},
    optional={
        "text": st.one_of(st.none(), _STRINGS, _WORDS),
        "stop_reason": st.one_of(st.none(), _STRINGS, _WORDS, st.just(7)),
        "model": st.one_of(st.none(), _STRINGS, st.just(2.5)),
        "batch_id": st.one_of(st.none(), _STRINGS),
        "input_tokens": st.sampled_from(
            [None, 0, -1, 2**63 - 1, -(2**63), 2.5, 1e20, "12", "abc", "-x", "=1", True]
        ),
        "output_tokens": st.sampled_from([None, 0, 3, 2.5, "", "tool_use"]),
    },
)


def _stored_message(kind: str, text: str) -> str | None:
    if kind == "plain":
        return _message(_text(text))
    if kind == "ascii":  # every non-ASCII character a \u escape
        return json.dumps(json.loads(_message(_text(text))))
    if kind in ("tool", "escaped-tool"):
        call = {"type": "tool_use", "id": "t1", "name": "label", "input": {"v": [1, "=x"]}}
        made = _message([*_text(text), call])
        return made.replace('"tool_use"', '"\\u0074ool_use"') if kind == "escaped-tool" else made
    if kind == "cache":
        return _message(_text(text), {"input_tokens": 4, "cache_read_input_tokens": 3})
    return {"empty": "", "none": None, "scalar": "[1, 2]", "not json": "not json"}[kind]


@st.composite
def _jobs(draw: st.DrawFn) -> dict[str, Any]:
    size = draw(st.integers(1, 24))
    rows, states, stored = [], [], {}
    for n in range(size):
        # a key of its own: the drawn prefix, then a separator the alphabet lacks, then n
        key = f"{draw(_STRINGS)}\u00b7{n}"
        extra = draw(
            st.dictionaries(
                st.sampled_from(["extra", "=f", "é", "nested", 'a,"b\r']), _TOP_VALUES, max_size=3
            )
        )
        text = draw(_STRINGS)
        rows.append(
            {"id": key, "text": text, **extra} if n % 2 else {"text": text, "id": key, **extra}
        )
        scenario = draw(_SCENARIOS)
        answer = None
        if scenario.startswith("succeeded") or scenario == "changed":
            said = draw(st.one_of(_STRINGS, _WORDS))
            answer = (
                draw(st.one_of(st.none(), st.just(said))),
                _stored_message(draw(_MESSAGE_KINDS), said),
            )
        states.append((scenario, answer))
        overwritten = draw(_STORED)
        if overwritten and answer is not None:
            stored[n] = overwritten
    return {"rows": rows, "states": states, "stored": stored}


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    job=_jobs(),
    input_columns=st.sampled_from([None, (), ("text", "=f", "missing", 'a,"b\r')]),
    chunk=st.sampled_from([1, 2, 3, 5, 1000]),
    run=st.sampled_from([1, 2, 3, 256]),
    processes=st.sampled_from([1, 2, 3]),
    cached=st.booleans(),
    raw_csv=st.booleans(),
)
def test_every_fast_path_writes_the_general_paths_bytes(
    job: dict[str, Any],
    input_columns: tuple[str, ...] | None,
    chunk: int,
    run: int,
    processes: int,
    cached: bool,
    raw_csv: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        root = Path(tmp)
        mp.setenv("XDG_CACHE_HOME", str(root / "home-cache"))
        ctx = _build(root, job["rows"], job["states"], job["stored"])
        _compare(
            ctx,
            mp,
            job["rows"],
            input_columns=input_columns,
            chunk=chunk,
            run=run,
            processes=processes,
            cached=cached,
            raw_csv=raw_csv,
        )


# ------------------------------------------------- one job, every odd value at chunk edges

# 13 items: chunks of 4 keys (the last ragged) and runs of 3, so that plain runs, items made
# alone and items of other states meet at every boundary.
_PLAIN = ("positive", _message(_text("positive")))
_ODD_ITEMS: list[tuple[str, dict[str, Any], str, tuple[str | None, str | None] | None, dict]] = [
    ("=key", {"extra": "=1+1"}, "succeeded", _PLAIN, {}),
    ('q"\\,\r\n', {"extra": {"a": ["-x", None]}}, "succeeded", _PLAIN, {"text": "line\r\nnext"}),
    ("nul\x00", {"=f": "@cmd"}, "succeeded", _PLAIN, {"stop_reason": 7, "model": 2.5}),
    ("é☃🎉", {}, "succeeded", ("", _message(_text(""))), {"input_tokens": 2.5}),
    ("-minus", {"extra": "\tTab"}, "succeeded", _PLAIN, {"input_tokens": "abc"}),
    ("+plus", {}, "failed-invalid", None, {}),
    ("@at", {"extra": True}, "succeeded", ("tool_use cache_", _message(_text("\\u0041"))), {}),
    ("\uff1dwide", {}, "succeeded", _PLAIN, {"output_tokens": "-3x", "batch_id": "=b"}),
    ("big", {"extra": 2**63 - 1}, "succeeded", _PLAIN, {"input_tokens": -(2**63)}),
    ("empty-message", {}, "succeeded", ("kept", ""), {}),
    ("ascii", {"extra": "é"}, "succeeded", ("é", json.dumps(json.loads(_PLAIN[1]))), {}),
    ("waiting", {}, "pending", None, {}),
    ("last", {"extra": 1e300}, "succeeded", _PLAIN, {"stop_reason": None, "model": None}),
]


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_odd_stored_values_at_chunk_and_run_edges_write_the_general_paths_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    """Regression guard: token counts that are floats or text, a stop reason and a model that
    SQLite stored as text of a number, keys and cells a spreadsheet would run, CR and LF in
    cells, a NUL in a key, a row whose fields the first row lacks (a CSV file learns its header
    again, in a child when on several processes), written alike by every path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    rows = [{"id": key, "text": "t", **extra} for key, extra, *_ in _ODD_ITEMS]
    states = [(scenario, answer) for _, _, scenario, answer, _ in _ODD_ITEMS]
    stored = {n: item[4] for n, item in enumerate(_ODD_ITEMS) if item[4]}
    ctx = _build(tmp_path, rows, states, stored)
    forked = []
    for input_columns in (None, (), ("extra", "=f")):
        for raw_csv in (False, True):
            with monkeypatch.context() as mp:
                forked += _compare(
                    ctx,
                    mp,
                    rows,
                    input_columns=input_columns,
                    chunk=4,
                    run=3,
                    processes=processes,
                    cached=True,
                    raw_csv=raw_csv,
                )
    assert bool(forked) == (processes > 1)


# --------------------------------------------------------------- nesting: defects found


def _nested(levels: int) -> Any:
    """A value of `levels` lists, one inside the other, around a 1."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


# The data row {"id": …, "text": …, "deep": _nested(251)}: 252 levels, the most a jsonl source
# may hold, so that every export writes it: `--format json` holds it two levels down
# (`[{"input": row}]`), and orjson writes 254 levels. A row one level deeper is refused.
_DEEPEST_ROW_LISTS = 251


def _deep_project(root: Path, second: str) -> tuple[Context, list[dict[str, Any]]]:
    """Two items whose rows are as deep as a jsonl source may be: `plain`, a plain answer, and
    `second`, in the state `second` names."""
    rows = [
        {"id": "plain", "text": "one", "deep": _nested(_DEEPEST_ROW_LISTS)},
        {"id": second, "text": "two", "deep": _nested(_DEEPEST_ROW_LISTS)},
    ]
    answer = _PLAIN if second == "succeeded" else None
    return _build(root, rows, [("succeeded", _PLAIN), (second, answer)]), rows


@pytest.mark.parametrize("cache", ["on", "off"])
def test_a_row_one_level_deeper_than_an_export_writes_is_refused_by_every_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: str
) -> None:
    """Found with the rows below: a row of 254 levels (the most orjson writes) was taken by
    `validate`, `plan` and `apply`, and its export then failed ("unexpected TypeError:
    Recursion limit reached"). Now a row of 253 levels is refused, in one line naming its file
    and line, by the fast path (`rowmaker.plain_row`) and the general one (`items._colons`)
    alike; the row beside it is taken."""
    monkeypatch.setenv("BATCHOPS_CACHE", cache)
    rows = [
        {"id": "deep", "text": "one", "deep": _nested(_DEEPEST_ROW_LISTS + 1)},
        {"id": "fine", "text": "two", "deep": _nested(_DEEPEST_ROW_LISTS)},
    ]
    with pytest.raises(SpecError) as refused:  # the plan's render: the fast path
        _build(tmp_path, rows, [("succeeded", _PLAIN), ("succeeded", _PLAIN)])
    assert str(refused.value) == "jobs/data/odd.jsonl: line 1: job odd: nested too deeply"
    (job,) = load_project(tmp_path / "jobs", tmp_path).jobs
    with pytest.raises(SpecError) as general:  # what `validate` and `apply` read
        list(iter_items(job, tmp_path))
    assert str(general.value) == str(refused.value)


def test_a_row_as_deep_as_a_jsonl_source_may_be_gets_the_fast_paths_bytes_from_iter_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: two plain answers whose rows were 254 levels deep. The fast path (`_plain_run`)
    wrote each row's line; the general path, the row `iter_results` builds dumped by orjson,
    raised `TypeError: Recursion limit reached`: the row's input sits one level deeper inside
    the row than the data row itself, past the 254 levels orjson writes. Such rows are refused
    now (above); at the deepest taken, the bytes of the two paths are the same."""
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    ctx, rows = _deep_project(tmp_path, "succeeded")
    fast = _streamed(ctx, "jsonl", ExportOptions())
    assert [json.loads(line)["input"] for line in fast.splitlines()] == rows
    assert _general_jsonl(ctx, ExportOptions()) == fast


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
@pytest.mark.parametrize("second", ["pending", "failed-invalid"])
def test_a_row_as_deep_as_a_jsonl_source_may_be_is_exported_whatever_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, second: str
) -> None:
    """Found: the same rows, the second item pending or failed (so written by the general
    path): `batchops results` ended in "unexpected TypeError: Recursion limit reached" and
    wrote nothing, though `validate`, `plan` and `apply` took the rows. At the deepest rows
    taken now, every input key appears, once, with its input row."""
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    ctx, rows = _deep_project(tmp_path, second)
    data = _streamed(ctx, fmt, ExportOptions())
    exported = json.loads(data) if fmt == "json" else [json.loads(x) for x in data.splitlines()]
    assert [(r["key"], r["state"], r["input"]) for r in exported] == [
        ("plain", "succeeded", rows[0]),
        (second, "pending" if second == "pending" else "failed", rows[1]),
    ]


# Beyond the fast paths, the same limit met by an answer: a stored tool call's input sits three
# levels deeper in a row (tool_calls, the call, its input) than in the message, which the harvest
# reads with orjson (1024 levels) and stores as the API wrote it.
_DEEP_CALL = _message(
    [{"type": "tool_use", "id": "t1", "name": "label", "input": {"label": _nested(300)}}]
)


@pytest.mark.parametrize(
    ("fmt", "columns"),
    [("jsonl", ()), ("csv", ()), ("json", ()), ("csv", ("label",))],
    ids=["jsonl", "csv", "json", "csv-columns"],
)
def test_one_deeply_nested_answer_does_not_stop_the_export_of_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, columns: tuple[str, ...]
) -> None:
    """Found (the general path, not a fast one): one stored answer whose tool call input is
    nested 300 levels (a model's reply; the harvest stores it) makes every export of the job
    end in "unexpected TypeError: Recursion limit reached", in every format, with or without
    `--columns`: no item's result can be exported, and apply's `output` file is not written.
    The other items' rows, and a row for this one, must be written."""
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    rows = [{"id": key, "text": key} for key in ("before", "deep", "after")]
    ctx = _build(
        tmp_path,
        rows,
        [("succeeded", _PLAIN), ("succeeded", (None, _DEEP_CALL)), ("succeeded", _PLAIN)],
    )
    data = _streamed(ctx, fmt, ExportOptions(columns=columns))
    if fmt == "csv":
        records = list(csv.DictReader(io.StringIO(data.decode(), newline="")))
        got = [(r["key"], r["state"], r["text"] or None) for r in records]
        # the deep answer's tool call, and its column, written whole as JSON
        assert json.loads(records[1]["tool_calls"]) == [
            {"name": "label", "input": {"label": _nested(300)}}
        ]
        if columns:
            assert json.loads(records[1]["output.label"]) == _nested(300)
    else:
        exported = json.loads(data) if fmt == "json" else [json.loads(x) for x in data.splitlines()]
        got = [(r["key"], r["state"], r["text"]) for r in exported]
        assert exported[1]["message"] == json.loads(_DEEP_CALL)
        assert exported[1]["tool_calls"] == [{"name": "label", "input": {"label": _nested(300)}}]
    assert got == [("before", "succeeded", "positive"), ("deep", "succeeded", None),
                   ("after", "succeeded", "positive")]  # fmt: skip


def test_a_thinking_block_that_is_not_text_does_not_stop_the_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: `--thinking` over a stored thinking block whose `thinking` is an object (not what
    the API sends, but what a harvest stores as sent) ended the export in "sequence item 0:
    expected str instance, dict found". Its JSON text is shown instead."""
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    odd = _message([{"type": "thinking", "thinking": {"step": 1}}, {"type": "text", "text": "ok"}])
    rows = [{"id": key, "text": key} for key in ("odd", "after")]
    ctx = _build(tmp_path, rows, [("succeeded", ("ok", odd)), ("succeeded", _PLAIN)])
    lines = _streamed(ctx, "jsonl", ExportOptions(thinking=True)).splitlines()
    assert [json.loads(x)["thinking"] for x in lines] == ['{"step":1}', None]
