"""`batchops results`: every input key once, joined to its current result; atomic files; outputs."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from batchops.cli import cli
from batchops.commands import results as results_mod
from batchops.commands.context import Context, Settings
from batchops.commands.results import COLUMNS, atomic_write, export, write_outputs, write_rows
from batchops.errors import BatchopsError
from batchops.safetext import csv_cell
from batchops.spec.items import iter_items
from batchops.spec.model import load_project
from tests.statefill import (
    NOW,
    context,
    fill_demo_state,
    fill_demo_state_at,
    items_of,
    write_project,
)

REPO_JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_project(tmp_path)
    fill_demo_state(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_location) -> Path:
    """`project`, with its state on either backend (BATCHOPS_STATE points at it)."""
    write_project(tmp_path)
    fill_demo_state_at(tmp_path, state_location)
    monkeypatch.chdir(tmp_path)
    if isinstance(state_location, str):  # PostgreSQL; SQLite is the default file
        monkeypatch.setenv("BATCHOPS_STATE", state_location)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(cli, list(args), obj={"clock": lambda: NOW})


def none_but(**fields) -> dict:
    row = dict.fromkeys(
        (
            "text",
            "tool_calls",
            "detail",
            "error_type",
            "error_message",
            "stop_reason",
            "model",
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "batch_id",
            "message",
        )
    )
    row.update(fields)
    return row


def expected_rows(root: Path) -> list[dict]:
    ids = items_of(root)
    rows = []
    for key, state, extra in [
        (
            "r1",
            "succeeded",
            none_but(
                text="positive",
                stop_reason="end_turn",
                model="claude-haiku-4-5",
                input_tokens=1000,
                output_tokens=20,
                cache_creation_input_tokens=404,
                cache_read_input_tokens=2000,
                batch_id="msgbatch_new",
            ),
        ),
        ("r2", "pending", none_but()),
        (
            "r3",
            "retry",
            none_but(
                detail="api_error: Internal server error",
                error_type="api_error",
                error_message="Internal server error",
            ),
        ),
        (
            "r4",
            "failed",
            none_but(
                detail="invalid_request_error: max_tokens: too large",
                error_type="invalid_request_error",
                error_message="max_tokens: too large",
            ),
        ),
        ("r5", "todo", none_but()),
        ("r6", "changed", none_but()),  # its stored success is for an older prompt: not current
    ]:
        rows.append(
            {
                "key": key,
                "custom_id": ids[key][0],
                "state": state,
                **extra,
                "input": {"id": key, "text": f"text number {key[1]}"},
            }
        )
    return rows


def test_results_jsonl(shared: Path) -> None:
    project = shared
    result = run("results", "demo")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    message = lines[0].pop("message")
    assert message["content"] == [{"type": "text", "text": "positive"}]
    assert message["usage"]["cache_read_input_tokens"] == 2000
    expected = expected_rows(project)
    expected[0].pop("message")
    assert lines == expected


def test_results_json_is_one_array(shared: Path) -> None:
    result = run("results", "demo", "--format", "json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["key"] for r in rows] == ["r1", "r2", "r3", "r4", "r5", "r6"]
    assert rows[0]["message"]["id"] == "msg_positi"
    assert result.stdout.startswith('[\n{"key":"r1",')
    assert result.stdout.endswith("}\n]\n")


def test_results_csv_exact(shared: Path) -> None:
    project = shared
    ids = items_of(project)
    result = run("results", "demo", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    c = {k: v[0] for k, v in ids.items()}
    assert result.stdout == (
        "key,custom_id,state,text,tool_calls,detail,error_type,error_message,stop_reason,model,"
        "input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,"
        "batch_id,input.id,input.text\n"
        f"r1,{c['r1']},succeeded,positive,,,,,end_turn,claude-haiku-4-5,1000,20,404,2000,"
        "msgbatch_new,r1,text number 1\n"
        f"r2,{c['r2']},pending,,,,,,,,,,,,,r2,text number 2\n"
        f"r3,{c['r3']},retry,,,api_error: Internal server error,api_error,Internal server error,"
        ",,,,,,,r3,text number 3\n"
        f"r4,{c['r4']},failed,,,invalid_request_error: max_tokens: too large,"
        "invalid_request_error,max_tokens: too large,,,,,,,,r4,text number 4\n"
        f"r5,{c['r5']},todo,,,,,,,,,,,,,r5,text number 5\n"
        f"r6,{c['r6']},changed,,,,,,,,,,,,,r6,text number 6\n"
    )


def test_results_failed_only(shared: Path) -> None:
    project = shared
    result = run("results", "demo", "--failed")
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [expected_rows(project)[3]]


def test_results_to_file_is_atomic(project: Path) -> None:
    out = project / "export.jsonl"
    out.write_text("previous\n", encoding="utf-8")
    result = run("results", "demo", "-o", "export.jsonl")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Wrote 6 rows of demo to export.jsonl (jsonl).\n"
    assert len(out.read_text(encoding="utf-8").splitlines()) == 6
    assert sorted(p.name for p in project.iterdir()) == ["export.jsonl", "jobs", "state"]


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    out.write_text("previous\n", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_write(out) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert out.read_text(encoding="utf-8") == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["results", "nope"], "Error: unknown job 'nope' (jobs: demo)\n"),
        (
            ["results", "demo", "--format", "xml"],
            "Error: unknown format 'xml' (formats: jsonl, csv, json)\n",
        ),
        (
            ["results", "demo", "-o", "missing/out.jsonl"],
            "Error: missing/out.jsonl: cannot write: directory missing does not exist\n",
        ),
        (
            ["results", "demo", "-o", "jobs"],
            "Error: jobs: cannot write results there: it is a folder\n",
        ),
    ],
)
def test_results_bad_input(project: Path, args: list[str], error: str) -> None:
    result = run(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", error)
    assert not (project / "missing").exists()


def test_results_without_state_lists_every_key_as_todo(tmp_path: Path) -> None:
    write_project(tmp_path)
    buffer = io.BytesIO()
    summary = export(context(tmp_path), "demo", "jsonl", buffer)
    rows = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert summary.rows == 6
    assert [(r["key"], r["state"], r["text"]) for r in rows] == [
        (f"r{i}", "todo", None) for i in range(1, 7)
    ]
    assert not (tmp_path / "state").exists()


def test_write_outputs_skips_a_job_with_work_left(project: Path) -> None:
    assert write_outputs(context(project)) == []
    assert not (project / "jobs" / "out").exists()


def test_write_outputs_writes_a_finished_job(tmp_path: Path) -> None:
    write_project(tmp_path, output="out/demo.csv")
    fill_demo_state(tmp_path)
    # Settle every item: r2 to r6 end as failed with a final error, like a finished job.
    import sqlite3

    conn = sqlite3.connect(tmp_path / "state" / "batchops.db")
    ids = items_of(tmp_path)
    with conn:
        conn.execute("delete from items where key != 'r1'")
        for key in ("r2", "r3", "r4", "r5", "r6"):
            conn.execute(
                "insert into items (job, key, custom_id, fingerprint, attempts, outcome,"
                " error_type, error_message) values ('demo', ?, ?, ?, 1, 'errored',"
                " 'invalid_request_error', 'bad')",
                [key, *ids[key]],
            )
    conn.close()
    written = write_outputs(context(tmp_path), ["demo"])
    out = tmp_path / "jobs" / "out" / "demo.csv"
    assert written == [out]
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["key"], r["state"], r["text"]) for r in rows] == [
        ("r1", "succeeded", "positive"),
        *((f"r{i}", "failed", "") for i in range(2, 7)),
    ]


def test_write_outputs_unknown_job(project: Path) -> None:
    with pytest.raises(BatchopsError, match="unknown job 'nope'"):
        write_outputs(context(project), ["nope"])


def test_example_jobs_round_trip(tmp_path: Path, emulator: str) -> None:
    """Apply the example jobs against the emulator, export every job in every format: every input
    key appears exactly once, with its answer."""
    shutil.copytree(REPO_JOBS, tmp_path / "jobs", ignore=shutil.ignore_patterns("out"))
    ctx = Context(
        Settings(
            jobs_path=tmp_path / "jobs",
            state_path=tmp_path / "state" / "batchops.db",
            root=tmp_path,
            base_url=emulator,
            api_key="test-key",
        )
    )
    ctx.apply(wait=True, poll_interval=0.05, timeout=60)
    project = load_project(tmp_path / "jobs", tmp_path)
    assert len(project.jobs) == 3
    for job in project.jobs:
        keys = [i.key for i in iter_items(job, project.root)]
        assert len(keys) == len(set(keys)) > 0
        for fmt in ("jsonl", "json", "csv"):
            out = tmp_path / f"{job.name}.{fmt}"
            summary = export(ctx, job.name, fmt, out)
            text = out.read_text(encoding="utf-8")
            if fmt == "jsonl":
                rows = [json.loads(line) for line in text.splitlines()]
            elif fmt == "json":
                rows = json.loads(text)
            else:
                rows = list(csv.DictReader(io.StringIO(text)))
            assert summary.rows == len(rows)
            assert [r["key"] for r in rows] == keys, (job.name, fmt)
            assert all(r["state"] == "succeeded" and r["text"] for r in rows), (job.name, fmt)
            if fmt == "csv":
                assert "message" not in rows[0]
            else:
                assert all(r["message"]["content"][0]["text"] == r["text"] for r in rows)
    written = write_outputs(ctx)
    assert sorted(p.name for p in written) == [
        "answer-quality-judge.jsonl",
        "product-descriptions.jsonl",
        "ticket-sentiment.jsonl",
    ]
    assert all(p.parent == tmp_path / "jobs" / "out" for p in written)


# ---------------------------------------------------------------- CSV lines
_CELL = st.one_of(
    st.none(),
    st.text(alphabet=st.sampled_from(list("ab ,\"\n\r\t=+-@'é☃\x00"))),
    st.text(),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1), max_size=2),
)


def _csv_module_bytes(rows: list[dict], fields: list[str], *, safe: bool) -> bytes:
    """What the export wrote before joining cells itself: every row through the csv module, its
    line ended by "\n" (a writer ending lines in "\r\n" quotes a cell holding a bare "\r" on
    every CPython; one ending them in "\n" alone does not before 3.11.9)."""
    text = io.StringIO()

    class Lines:
        def write(self, line: str) -> None:
            text.write(line.removesuffix("\r\n") + "\n")

    writer = csv.writer(Lines(), lineterminator="\r\n")
    writer.writerow([*COLUMNS, *(f"input.{f}" for f in fields)])
    for row in rows:
        values = [row[c] for c in COLUMNS] + [row["input"].get(f) for f in fields]
        cells = []
        for v in values:
            if isinstance(v, dict | list):
                v = json.dumps(v, ensure_ascii=False, separators=(",", ":"))
            cells.append(csv_cell(v) if safe else v)
        writer.writerow(cells)
    return text.getvalue().encode()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(_CELL, min_size=len(COLUMNS) + 2, max_size=len(COLUMNS) + 2), max_size=6),
    st.booleans(),
)
def test_csv_rows_are_the_csv_modules_bytes(values: list[list], safe: bool) -> None:
    fields = ["x", "y"]
    rows = [
        {**dict(zip(COLUMNS, v, strict=False)), "input": {"x": v[-2], "y": v[-1]}} for v in values
    ]
    out = io.BytesIO()
    assert write_rows(iter(rows), "csv", out, fields, raw_csv=not safe) == len(rows)
    assert out.getvalue() == _csv_module_bytes(rows, fields, safe=safe)


def test_csv_files_learn_their_header_as_the_stream_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV file learns its input fields from its first row, and is written again when a later
    row has another: the bytes are those of a stream, which reads every row's fields first."""
    from tests import test_results_golden as golden

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    golden.write_project(tmp_path)
    same = tmp_path / "jobs" / "data" / "same.jsonl"  # every row has the first row's fields
    same.write_text("".join(json.dumps({"id": f"s{n}", "text": "x"}) + "\n" for n in range(5)))
    spec = tmp_path / "jobs" / "spec.toml"
    spec.write_text(
        spec.read_text() + '\n[jobs.same]\nprompt = "{{ text }}"\n'
        'input = { path = "data/same.jsonl", key = "id" }\n'
    )
    golden.fill_state(tmp_path, tmp_path / "state" / "batchops.db")
    ctx = golden._context(tmp_path, tmp_path / "state" / "batchops.db")
    grew = []
    monkeypatch.setattr(results_mod, "_input_fields", _spy(results_mod._input_fields, grew))
    for job in ("mix", "arr", "inline", "sheet", "raw", "same"):
        for option_set in ("default", "columns", "thinking", "raw-csv", "no-input"):
            if job != "mix" and option_set not in ("default", "raw-csv"):
                continue
            stream = golden.export_bytes(ctx, job, "csv", option_set).split("\n", 1)[1]
            chosen = dict(golden.OPTION_SETS[option_set])
            raw_csv = chosen.pop("raw_csv", False)
            options = results_mod.export_options(
                ctx, job, chosen.get("columns"), chosen.get("input_columns"),
                thinking=chosen.get("thinking", False),
            )  # fmt: skip
            path = tmp_path / "out" / f"{job}-{option_set}.csv"
            grew.clear()
            export(ctx, job, "csv", path, create_dirs=True, raw_csv=raw_csv, options=options)
            assert path.read_text(encoding="utf-8") == stream, (job, option_set)
            # fields looked up first (or again) everywhere but in `same`: chosen, fixed by the
            # source (CSV, requests), or a row with a field the first lacks (mix, arr, inline)
            assert bool(grew) == (job != "same"), (job, option_set)


def _spy(function, calls: list):
    def spied(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return spied


def test_a_killed_exports_temporary_file_is_removed_and_no_other(tmp_path: Path) -> None:
    """An export writes beside its file through `.{name}.<random>.tmp` and renames it in place:
    one left by an export that was killed is removed by the next export to that file once it
    is a minute old. A younger one may be an export still running, and `.{name}.bak.<random>.tmp`
    is the temporary file of an export to another file (`{name}.bak`): both are kept."""
    import os
    import time

    from batchops.commands.results import STALE_TEMP_SECONDS, atomic_write

    out = tmp_path / "x.csv"
    killed, young, other = (
        tmp_path / n
        for n in (".x.csv.k1ll3d_0.tmp", ".x.csv.y0ung_00.tmp", ".x.csv.bak.0th3r_0.tmp")
    )
    for f in (killed, young, other):
        f.write_bytes(b"partial")
    old = time.time() - STALE_TEMP_SECONDS - 5
    for f in (killed, other):
        os.utime(f, (old, old))
    with atomic_write(out) as fh:
        fh.write(b"key\n")
    assert out.read_bytes() == b"key\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, young.name, other.name])
