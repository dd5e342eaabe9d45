"""Renames and replacements: `state mv`, a spec's `moved` entry, and `apply --replace JOB:KEY`.

A renamed job keeps its results (nothing it has is sent again, though its custom_ids now carry
the new name); a replaced item is sent again on purpose, once, and shows in the plan with its cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from tests.projects import API_KEY, apply, context, rows, write_project


@pytest.fixture
def applied(emulator: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Job `demo` over r1..r3, applied to the end against the emulator."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    write_project(tmp_path, rows(3))
    report = apply(context(tmp_path, emulator), wait=True)
    assert report.submitted == 3
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def rename_in_spec(root: Path, moved: str = "") -> None:
    spec = root / "jobs" / "demo.toml"
    text = spec.read_text().replace("[jobs.demo]", "[jobs.sentiment]")
    spec.write_text(text.replace("version = 1\n", "version = 1\n" + moved))


def plan_json(*args: str) -> dict:
    result = run("plan", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def texts(job: str) -> dict[str, str]:
    result = run("results", job)
    assert result.exit_code == 0, result.stderr
    return {r["key"]: (r["state"], r["text"]) for r in map(json.loads, result.stdout.splitlines())}


def test_state_mv_keeps_the_results(applied: Path, emulator: str) -> None:
    before = texts("demo")
    rename_in_spec(applied)
    assert plan_json()["changes"] is True  # without the move: a new job, to send (or reuse)
    result = run("state", "mv", "demo", "sentiment")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Moved job demo to sentiment in the state: items 3, ")
    plan = plan_json()
    assert plan["changes"] is False
    assert plan["jobs"][0]["counts"]["succeeded"] == 3
    assert texts("sentiment") == before
    assert apply(context(applied, emulator), wait=True).submitted == 0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["state", "mv", "nope", "other"], "Error: no job 'nope' in state"),
        (["state", "mv", "demo", "Bad Name"], "Error: invalid job name 'Bad Name'"),
        (["state", "mv", "demo", "demo"], "Error: cannot move job 'demo' onto itself"),
    ],
)
def test_state_mv_refusals(applied: Path, args: list[str], error: str) -> None:
    result = run(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith(error), result.stderr


def test_state_mv_refuses_a_name_with_rows(applied: Path, emulator: str) -> None:
    spec = applied / "jobs" / "demo.toml"
    spec.write_text(
        spec.read_text() + spec.read_text().split("\n\n", 1)[1].replace("demo", "other")
    )
    apply(context(applied, emulator), wait=True)
    result = run("state", "mv", "demo", "other")
    assert result.exit_code == 1
    assert "job 'other' already has rows in state" in result.stderr


def test_moved_block_is_planned_and_applied_first(applied: Path, emulator: str) -> None:
    before = texts("demo")
    rename_in_spec(applied, 'moved = [{ from = "demo", to = "sentiment" }]\n')
    plan = plan_json()
    assert plan["changes"] is True
    assert plan["summary"]["move"] == 1 and plan["summary"]["submit"] == 0
    assert plan["batches"][0] == {
        "action": "move",
        "job": "sentiment",
        "from_job": "demo",
        "reason": "renamed in the specs (moved): its state and results follow it",
    }
    assert plan["jobs"][0]["counts"]["succeeded"] == 3
    text = run("plan")
    assert "~ move    sentiment  from demo  [renamed in the specs (moved)" in text.stdout

    report = apply(context(applied, emulator), wait=True)
    assert report.submitted == 0
    assert texts("sentiment") == before
    assert plan_json()["changes"] is False  # the move is done: the entry is now a no-op
    result = run("state", "list")
    assert "sentiment" in result.stdout and "demo " not in result.stdout


@pytest.mark.parametrize(
    ("moved", "error"),
    [
        ('moved = [{ from = "demo", to = "nope" }]\n', 'moved.0: to: no job "nope" is defined'),
        ('moved = [{ from = "sentiment", to = "sentiment" }]\n', "from and to are the same job"),
        ('moved = [{ from = "demo", to = "sentiment", by = "me" }]\n', "moved.0.by: unknown field"),
        (
            'moved = [{ from = "a", to = "sentiment" }, { from = "b", to = "sentiment" }]\n',
            'moved.1: job "sentiment" is moved twice',
        ),
    ],
)
def test_bad_moved_entries_are_spec_errors(applied: Path, moved: str, error: str) -> None:
    rename_in_spec(applied, moved)
    result = run("validate")
    assert result.exit_code == 1
    assert error in result.stderr, result.stderr


def test_replace_sends_one_item_again_once(applied: Path, emulator: str) -> None:
    plan = plan_json("--replace", "demo:r2")
    (job,) = plan["jobs"]
    assert job["actions"] == [
        {
            "action": "submit",
            "key": "r2",
            "reason": "replace",
            "custom_id": job["actions"][0]["custom_id"],
            "attempt": 1,
        }
    ]
    assert job["counts"]["todo"] == 1 and job["counts"]["succeeded"] == 2
    assert job["estimated_cost_usd"] > 0 and plan["summary"]["estimated_cost_usd"] > 0
    assert "+ submit  demo  r2  [replace]" in run("plan", "--replace", "demo:r2").stdout
    assert plan_json()["changes"] is False  # without the flag, nothing to do

    result = run("apply", "--yes", "--wait", "--poll-interval", "0.05", "--replace", "demo:r2")
    assert result.exit_code == 0, result.stderr
    assert "1 request sent" in result.stdout
    assert plan_json()["changes"] is False
    assert texts("demo")["r2"][0] == "succeeded"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("demo", "Error: --replace 'demo': expected JOB:KEY"),
        ("nope:r1", "Error: --replace 'nope:r1': no job 'nope' in this run"),
        ("demo:r9", "Error: --replace 'demo:r9': job demo has no item 'r9'"),
    ],
)
def test_replace_refusals(applied: Path, value: str, error: str) -> None:
    result = run("plan", "--replace", value)
    assert (result.exit_code, result.stderr) == (1, error + "\n")
