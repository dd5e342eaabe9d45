"""Review 12 (second reader): what the user sees must be true and consistent. Each test fails on
the code as reviewed and would pass once its defect is fixed."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from tests.test_state_cli import live, remote_project, submit_once  # noqa: F401 (a fixture)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """One job `demo` of three rows whose expected cost (10 tokens a reply) is far below its
    ceiling (max_tokens 4,000): `est. cost` and `up to` differ."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    (tmp_path / "jobs" / "data" / "rows.jsonl").write_text(
        '{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "c", "text": "z"}\n'
    )
    (tmp_path / "jobs" / "demo.toml").write_text(
        "version = 1\n\n"
        "[jobs.demo]\n"
        'model = "claude-haiku-4-5"\n'
        "max_tokens = 4000\n"
        "expected_output_tokens = 10\n"
        'prompt = "Classify: {{ text }}"\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n'
    )
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _column(table: str, header: str, job: str) -> str:
    """The cell of `job`'s row under `header` in a "simple" table (columns split on 2+ spaces)."""
    lines = table.splitlines()
    headers = re.split(r"\s{2,}", lines[0].strip())
    for line in lines[2:]:
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] == job:
            return cells[headers.index(header)]
    raise AssertionError(f"no row for {job} in:\n{table}")


def test_validate_est_cost_is_the_same_figure_plan_and_status_call_est_cost(project):
    """`est. cost` is the expected cost, `up to` the ceiling (README, "Estimates are a range";
    plan and status both show it so). `validate`'s table heads its column `est. cost` too, but
    fills it with the ceiling (`validate_table` prints `estimated_cost_usd`): for a job never
    sent, validate says est. cost $0.0300 where plan and status, a second later, say $0.0001.
    A user reading validate in CI takes a 300x overestimate for the expected bill."""
    plan = run("plan", "--no-refresh")
    assert plan.exit_code == 0
    status = run("status")
    assert status.exit_code == 0
    validate = run("validate")
    assert validate.exit_code == 0

    planned = _column(plan.stdout, "est. cost", "demo")
    ceiling = _column(plan.stdout, "up to", "demo")
    assert planned != ceiling  # the case at hand: a range, not one figure
    assert _column(status.stdout, "est. cost", "demo") == planned
    assert _column(validate.stdout, "est. cost", "demo") == planned


def test_a_budget_refusal_does_not_call_the_ceiling_the_estimated_cost(project):
    """`plan` says `Estimated cost $0.0001 (up to $0.0300)` and its table `est. cost $0.0001`,
    then refuses with `Error: job demo: estimated cost $0.0300 exceeds its budget_usd $0.0200`:
    the figure the budget gates on is the ceiling (`up to`), but the error line names it the
    estimated cost, the very words the line above used for $0.0001. The user is told two
    different estimated costs for the same job in one output (`budget_problems`)."""
    spec = project / "jobs" / "demo.toml"
    spec.write_text(spec.read_text() + "budget_usd = 0.02\n")
    result = run("plan", "--no-refresh")
    assert result.exit_code == 1
    assert "Plan: 3 to submit. Estimated cost $0.0001 (up to $0.0300)." in result.stdout
    assert re.fullmatch(
        r"Error: job demo: estimated cost (up to \$0\.0300|\$0\.0001 \(up to \$0\.0300\)) "
        r"exceeds its budget_usd \$0\.0200\n",
        result.stderr,
    ), result.stderr


def test_a_jsonl_line_cut_short_names_the_column_where_it_ends(project):
    """A data line cut short (`{"id": "b", "text": `, 20 characters) is reported at
    `(column 1)` when more lines follow it, but at `(column 21)` as the file's last line: the
    line is given to orjson with its newline, which then counts the end as line 2, column 1
    (`_json_line`). The user is sent to the start of a line that is fine up to where it ends."""
    data = project / "jobs" / "data" / "rows.jsonl"
    data.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": \n{"id": "c", "text": "z"}\n')
    result = run("validate")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: jobs/data/rows.jsonl: line 2: job demo: invalid JSON: unexpected end of data "
        "(column 21)\n"
    )


def test_one_batch_not_refreshed_is_one_batch_in_the_note(remote_project):  # noqa: F811
    """`plan --no-refresh` with one batch in flight says `Note: 1 batches in flight were not
    refreshed (--no-refresh): the plan uses their last recorded state` (`Context.plan` builds
    the count with an f-string where every other count goes through `plural`). The same note
    in --markdown and in --json's `offline_note`."""
    root, _, admin = remote_project
    admin.set_config(processing_seconds=3600)
    submit_once(root)
    result = live("plan", "--no-refresh")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "not refreshed" in line]
    assert len(notes) == 1 and re.fullmatch(
        r"Note: 1 batch in flight was not refreshed \(--no-refresh\): "
        r"the plan uses (its|their) last recorded state",
        notes[0],
    ), notes
