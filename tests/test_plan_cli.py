"""`batchops validate` and `batchops plan` through the CLI: exact output and exit codes."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.state.sqlite import SqliteWriter as StateStore
from tests.projects import API_KEY, apply, context, rows, write_project


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, rows(3), extra="budget_usd = 1.00\n")
    return tmp_path


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


PLAN_TEXT = """\
job      todo    changed    pending    retry    failed    succeeded    removed    to send    reuse    est. cost    up to    budget
-----  ------  ---------  ---------  -------  --------  -----------  ---------  ---------  -------  -----------  -------  --------
demo        3          0          0        0         0            0          0          3        0      $0.0001  $0.0001   $1.0000

Actions:
  + submit  demo  r1  [todo]
  + submit  demo  r2  [todo]
  + submit  demo  r3  [todo]

Note: demo: expected output at max_tokens (no results yet: set expected_output_tokens for a closer estimate)

Plan: 3 to submit. Estimated cost $0.0001.
Prices: batchops price table as of 2026-11-21.
"""


def test_plan_table(project):
    result = run("plan", "--no-refresh")
    assert result.exit_code == 0
    assert result.output == PLAN_TEXT
    assert not (project / "state").exists()


def test_validate(project):
    result = run("validate")
    assert result.exit_code == 0
    assert result.output == (
        "job    spec            source      items  model               est. cost    up to\n"
        "-----  --------------  --------  -------  ----------------  -----------  -------\n"
        "demo   jobs/demo.toml  input           3  claude-haiku-4-5      $0.0001  $0.0001\n"
        "\n"
        "Valid: 1 job, 3 items.\n"
    )


def test_plan_json_shape(project):
    result = run("plan", "--no-refresh", "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["format_version"] == 2
    assert data["changes"] is True
    assert data["lineage"] is None and data["serial"] == 0
    assert data["spec_digest"].startswith("sha256:")
    assert data["summary"] == {
        "submit": 3,
        "forget": 0,
        "harvest": 0,
        "cancel": 0,
        "prune": 0,
        "adopt": 0,
        "requeue": 0,
        "reuse": 0,
        "move": 0,
        "estimated_cost_usd": data["summary"]["estimated_cost_usd"],
        "expected_cost_usd": data["summary"]["expected_cost_usd"],
        "saved_usd": 0,
        "cache_saving_usd": 0,
        "deferred_cost_usd": 0,
        "batches_to_create": 1,
    }
    assert 0 < data["summary"]["expected_cost_usd"] <= data["summary"]["estimated_cost_usd"]
    assert 0 < data["summary"]["estimated_cost_usd"] < 0.001
    [job] = data["jobs"]
    assert job["name"] == "demo"
    assert job["counts"] == {
        "todo": 3,
        "changed": 0,
        "pending": 0,
        "retry": 0,
        "failed": 0,
        "succeeded": 0,
        "removed": 0,
    }
    assert [(a["action"], a["key"], a["reason"]) for a in job["actions"]] == [
        ("submit", "r1", "todo"),
        ("submit", "r2", "todo"),
        ("submit", "r3", "todo"),
    ]
    assert job["budget_usd"] == 1.0
    assert data["batches"] == []


def test_plan_markdown(project):
    result = run("plan", "--no-refresh", "--markdown")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "### batchops plan"
    assert lines[2] == "**Plan: 3 to submit. Estimated cost $0.0001.**"
    assert "| demo  |      3 |" in result.output
    assert "```diff" in result.output and "+ submit  demo  r1  [todo]" in lines  # column 0


def test_detailed_exitcode(project, emulator):
    assert run("plan", "--no-refresh", "--detailed-exitcode").exit_code == 2
    apply(context(project, emulator), wait=True)
    env = {"ANTHROPIC_BASE_URL": emulator, "ANTHROPIC_API_KEY": API_KEY}
    result = run("plan", "--detailed-exitcode", env=env)
    assert result.exit_code == 0
    assert "No changes. State matches the specs." in result.output


def test_budget_exceeded_exits_1_naming_job_estimate_and_budget(project):
    (project / "jobs" / "demo.toml").write_text(
        (project / "jobs" / "demo.toml")
        .read_text()
        .replace("budget_usd = 1.00", "budget_usd = 0.00001")
    )
    result = CliRunner().invoke(cli, ["plan", "--no-refresh", "-o", "plan.jsonl"])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: job demo: estimated cost up to $0.0001 exceeds its budget_usd <$0.0001\n"
    )
    assert "Plan: 3 to submit." in result.stdout
    assert not (project / "plan.jsonl").exists()  # a plan over budget is never saved


def test_saved_plan_file_holds_the_exact_requests(project):
    result = run("plan", "--no-refresh", "-o", "plan.jsonl")
    assert result.exit_code == 0
    assert result.output.endswith(
        "Saved this plan to plan.jsonl: apply it with `batchops apply plan.jsonl`.\n"
    )
    lines = (project / "plan.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["kind"] == "batchops-plan" and header["plan"]["summary"]["submit"] == 3
    body = [json.loads(line) for line in lines[1:-1]]
    assert body[0]["step"]["action"] == "submit" and body[0]["step"]["requests"] == 3
    requests = body[1:]
    assert [r["key"] for r in requests] == ["r1", "r2", "r3"]
    assert json.loads(lines[-1])["kind"] == "batchops-plan-end"
    assert requests[0]["params"] == {
        "model": "claude-haiku-4-5",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Classify: text number 1"}],
    }


def test_plan_output_in_a_missing_directory_is_one_error(project):
    result = CliRunner().invoke(cli, ["plan", "--no-refresh", "-o", "nowhere/plan.jsonl"])
    assert result.exit_code == 1
    assert result.stderr == "Error: nowhere/plan.jsonl: directory nowhere does not exist\n"
    assert result.stdout == ""  # refused before the plan is made, not after it is printed
    (project / "here").mkdir()
    result = CliRunner().invoke(cli, ["plan", "--no-refresh", "--markdown", "-o", "here"])
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: here: is a directory\n"


def test_unknown_job_is_one_error(project):
    result = CliRunner().invoke(cli, ["plan", "--no-refresh", "--job", "nope"])
    assert result.exit_code == 1
    assert result.stderr == "Error: unknown job 'nope' (jobs: demo)\n"


def test_bad_spec_is_reported_per_problem_and_nothing_is_written(project):
    (project / "jobs" / "demo.toml").write_text(
        'version = 1\n[jobs.demo]\nmodel = "claude-haiku-4-5"\nmax_tokens = "many"\nprompt = "x"\n'
        'items = [{ key = "a" }]\nstreem = true\n'
    )
    result = CliRunner().invoke(cli, ["plan", "--no-refresh"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "Error: jobs/demo.toml: jobs.demo.max_tokens: Input should be a valid integer",
        "Error: jobs/demo.toml: jobs.demo.streem: unknown field",
    ]
    assert not (project / "state").exists()


def test_a_newer_state_file_is_refused(project):
    state = project / "state" / "batchops.db"
    StateStore.open(state).close()
    conn = sqlite3.connect(state)
    conn.execute(
        "insert into _sqlite_migrations (migration_set, name, applied_at)"
        " values ('batchops', 'm9999_from_the_future', '2030-01-01')"
    )
    conn.commit()
    conn.close()
    before = state.read_bytes()
    for command in (["plan", "--no-refresh"], ["apply", "--yes"]):
        result = CliRunner().invoke(cli, command, env={"ANTHROPIC_API_KEY": "test-not-a-key"})
        assert result.exit_code == 1
        assert result.stderr == (
            "Error: state/batchops.db: state schema is newer than this batchops understands "
            "(migration 'm9999_from_the_future'); upgrade batchops to use this state file\n"
        )
    assert state.read_bytes() == before


def test_a_corrupt_state_file_is_refused(project):
    state = project / "state" / "batchops.db"
    state.parent.mkdir()
    state.write_bytes(b"this is not sqlite at all" * 100)
    result = CliRunner().invoke(cli, ["plan", "--no-refresh"])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: state/batchops.db: not a batchops state file (file is not a database)\n"
    )


def test_state_lineage_and_serial(project):
    store = StateStore.open(project / "state" / "batchops.db")
    lineage, serial = store.lineage, store.serial
    assert lineage and serial == 0
    with store._transaction():
        pass
    assert store.serial == 1
    lock = store.held
    store.release_lock(lock.lock_id)
    assert store.serial == 1  # the lock is not state
    store.close()
    again = StateStore.open(project / "state" / "batchops.db")
    assert again.lineage == lineage and again.serial == 1
    again.close()


def test_an_unexpected_failure_is_one_line_without_debug(project):
    state = project / "state" / "batchops.db"
    StateStore.open(state).close()
    conn = sqlite3.connect(state)
    conn.execute("drop table items")  # a state file damaged by hand
    conn.commit()
    conn.close()
    result = CliRunner().invoke(cli, ["plan", "--no-refresh"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: unexpected OperationalError: no such table: items")
    assert result.stderr.count("\n") == 1
    with pytest.raises(sqlite3.OperationalError):
        CliRunner().invoke(cli, ["--debug", "plan", "--no-refresh"], catch_exceptions=False)


def test_plan_markdown_is_capped_for_github_with_a_summary_of_what_was_left_out(project):
    jobs = project / "jobs"
    keys = [f"{i:03d}-" + "k" * 400 for i in range(25)]
    (jobs / "data" / "long.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": "t"}) + "\n" for k in keys), encoding="utf-8"
    )
    spec = ['version = 1\n[defaults]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n']
    for n in range(20):
        spec.append(
            f'[jobs.long-{n:02d}]\nprompt = "{{{{ text }}}}"\n'
            'input = { path = "data/long.jsonl", key = "id" }\n'
        )
    (jobs / "long.toml").write_text("".join(spec), encoding="utf-8")
    result = run("plan", "--no-refresh", "--markdown")
    assert result.exit_code == 0
    out = result.output
    assert len(out) < 65_536
    last = out.rstrip("\n").splitlines()[-3]
    assert re.fullmatch(
        r"\*\*Left out to stay under GitHub's 65,536-character comment limit: \d+ action lines\. "
        r"Run `batchops plan` for the whole plan\.\*\*",
        last,
    ), last
    assert out.count("```diff") == 1 and out.count("\n```\n") == 1  # the block is closed
    assert "+ submit  long-00  000-kkkk" in out
    assert "000-" + "k" * 295 + "…  [todo]" in out  # a long key is cut to 300 characters
    assert "k" * 296 not in out


def test_plan_markdown_footer_names_the_write_that_made_the_state(project, emulator):
    """Two copies of one state (after `state push`) share lineage and serial; a PR comment's
    footer names the write too, so a reader can tell which copy the plan was made from."""
    prices = "; prices: batchops price table as of 2026\\-11\\-21.</sub>"
    assert lines_of(run("plan", "--no-refresh", "--markdown"))[-1] == (
        "<sub>State lineage `new`, serial 0" + prices
    )
    apply(context(project, emulator), wait=True)
    made = json.loads(run("plan", "--no-refresh", "--json").output)
    lineage, serial, write_id = made["lineage"], made["serial"], made["write_id"]
    assert serial > 0 and len(write_id) == 32
    footer = lines_of(run("plan", "--no-refresh", "--markdown"))[-1]
    assert footer == (
        f"<sub>State lineage `{lineage}`, serial {serial}, write `{write_id[:12]}`" + prices
    )


def lines_of(result) -> list[str]:
    assert result.exit_code == 0, result.output
    return result.output.splitlines()
