"""`batchops results` for every kind of job: tool calls, thinking, structured outputs parsed into
columns (with parse errors reported), and the choice of input columns. Run against the emulator,
which answers tool requests with tool_use blocks and thinking requests with thinking blocks."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from tests.projects import API_KEY, apply, context, rows, write_project

TOOLS = """
[jobs.demo.params]
tool_choice = { type = "tool", name = "label" }

[[jobs.demo.params.tools]]
name = "label"
description = "Label a ticket"
input_schema = { type = "object", required = ["sentiment", "score"], properties = { sentiment = { enum = ["positive", "negative"] }, score = { type = "integer", minimum = 1, maximum = 5 } } }
"""


@pytest.fixture
def cli_env(emulator: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_tool_job_exports_its_calls_and_columns(cli_env: Path, emulator: str) -> None:
    root = cli_env
    output = 'output = { path = "out/demo.csv", columns = ["sentiment", "score"] }\n'
    write_project(root, rows(3), extra=output + TOOLS)
    spec = root / "jobs" / "demo.toml"
    spec.write_text(spec.read_text().replace("max_tokens = 16", "max_tokens = 200"))
    apply(context(root, emulator), wait=True)
    assert (root / "jobs" / "out" / "demo.csv").exists()

    result = run("results", "demo")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    lines = jsonl(result.stdout)
    assert [r["state"] for r in lines] == ["succeeded"] * 3
    for line in lines:
        message = line["message"]
        (call,) = [b for b in message["content"] if b["type"] == "tool_use"]
        assert line["tool_calls"] == [{"name": "label", "input": call["input"]}]
        wanted = {"sentiment": call["input"]["sentiment"], "score": call["input"]["score"]}
        assert line["output"] == wanted
        assert line["output"]["sentiment"] in ("positive", "negative")
        assert line["parse_error"] is None
        assert line["stop_reason"] == "tool_use"
        assert line["input"] == {"id": line["key"], "text": f"text number {line['key'][1]}"}

    # the output file apply wrote carries the same columns
    written = list(csv.DictReader((root / "jobs" / "out" / "demo.csv").open(encoding="utf-8")))
    assert [r["output.sentiment"] for r in written] == [r["output"]["sentiment"] for r in lines]
    assert [r["output.score"] for r in written] == [str(r["output"]["score"]) for r in lines]
    assert json.loads(written[0]["tool_calls"]) == lines[0]["tool_calls"]

    # --columns overrides the spec's; --input-columns '' echoes no input
    result = run("results", "demo", "--format", "csv", "--columns", "score", "--input-columns", "")
    assert result.exit_code == 0, result.stderr
    header = next(csv.reader(io.StringIO(result.stdout)))
    assert header[-3:] == ["batch_id", "output.score", "parse_error"]
    assert not any(h.startswith("input.") for h in header)
    result = run("results", "demo", "--input-columns", "id", "--columns", "")
    lines = jsonl(result.stdout)
    assert lines[0]["input"] == {"id": "r1"}
    assert "output" not in lines[0] and "parse_error" not in lines[0]
    result = run("results", "demo", "--input-columns", "")
    assert "input" not in jsonl(result.stdout)[0]


def test_thinking_is_opt_in(cli_env: Path, emulator: str) -> None:
    root = cli_env
    write_project(root, rows(2))
    spec = root / "jobs" / "demo.toml"
    spec.write_text(
        spec.read_text().replace("max_tokens = 16", "max_tokens = 3000")
        + 'params = { thinking = { type = "enabled", budget_tokens = 1024 } }\n'
    )
    apply(context(root, emulator), wait=True)
    plain = jsonl(run("results", "demo").stdout)
    assert "thinking" not in plain[0]
    thought = jsonl(run("results", "demo", "--thinking").stdout)
    blocks = [b["thinking"] for b in thought[0]["message"]["content"] if b["type"] == "thinking"]
    assert blocks and thought[0]["thinking"] == "\n\n".join(blocks)
    assert list(thought[0])[3:6] == ["text", "thinking", "tool_calls"]
    result = run("results", "demo", "--thinking", "--format", "csv")
    header, first = list(csv.reader(io.StringIO(result.stdout)))[:2]
    assert header[3:6] == ["text", "thinking", "tool_calls"]
    assert first[4] == thought[0]["thinking"]


def test_json_text_answers_parse_into_columns_and_failures_are_counted(
    cli_env: Path, emulator: str
) -> None:
    root = cli_env
    write_project(root, rows(5))
    apply(context(root, emulator), wait=True)
    answers = {
        "r1": '{"a": 1, "b": "two", "c": 3}',
        "r2": '```json\n{"a": [1, 2]}\n```',
        "r3": "not json at all",
        "r4": "[1, 2]",
    }  # r5 keeps the emulator's words
    conn = sqlite3.connect(root / "state" / "batchops.db")
    with conn:
        for key, text in answers.items():
            (raw,) = conn.execute("select message from results where key = ?", [key]).fetchone()
            message = json.loads(raw)
            message["content"] = [{"type": "text", "text": text}]
            conn.execute(
                "update results set message = ?, text = ? where key = ?",
                [json.dumps(message), text, key],
            )
    conn.close()

    result = run("results", "demo", "--columns", "a,b")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (
        "Note: 3 answers did not parse as JSON with the asked columns (see parse_error).\n"
    )
    lines = jsonl(result.stdout)
    assert [(r["output"], r["parse_error"]) for r in lines] == [
        ({"a": 1, "b": "two"}, None),
        ({"a": [1, 2], "b": None}, None),
        ({"a": None, "b": None}, "not JSON (error at character 1)"),
        ({"a": None, "b": None}, "not a JSON object (list)"),
        ({"a": None, "b": None}, lines[4]["parse_error"]),
    ]
    assert lines[4]["parse_error"].startswith("not JSON")

    out = root / "parsed.csv"
    result = run("results", "demo", "--columns", "a,b", "--format", "csv", "-o", str(out))
    assert result.exit_code == 0
    assert "3 answers did not parse" in result.stderr
    rows_ = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["output.a"], r["output.b"]) for r in rows_[:2]] == [("1", "two"), ("[1,2]", "")]
