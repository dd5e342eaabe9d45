"""Odd inputs to the command line that ended in an `Error: unexpected ...` line (the catch-all
for bugs), sent something before refusing a bad option, or let a price table's text or a long
model name break the Markdown plan (found by a review of the command line; each test failed
before its fix)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import anthropic
import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.emulator import EmulatorConfig
from tests.projects import API_KEY, rows, write_project

README = Path(__file__).resolve().parents[1] / "README.md"
GITHUB_COMMENT_LIMIT = 65_536


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(processing_seconds=3600)  # batches stay in progress


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_project(tmp_path, rows(3))
    return tmp_path


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def one_error_naming(result, name: str) -> None:
    """Exit 1 and exactly one `Error:` line on stderr, naming `name`, and no catch-all line."""
    assert result.exit_code == 1, result.output
    assert "unexpected" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert name in lines[0], result.stderr


# ---------------------------------------------------------------- the price table
def test_a_price_tables_as_of_cannot_put_html_into_the_markdown_plan(project: Path) -> None:
    """batchops.toml and its prices file are checked in, so a pull request writes them; the
    `prices:` footer of `plan --markdown` printed the table's `as_of` raw inside `<sub>`."""
    (project / "batchops.toml").write_text('prices = "prices.toml"\n', encoding="utf-8")
    (project / "prices.toml").write_text(
        'as_of = "2026</sub> <img src=https://evil.example/x.png> @octocat"\n', encoding="utf-8"
    )
    result = run("plan", "--no-refresh", "--markdown")
    assert result.exit_code == 0, result.output
    assert "<img" not in result.stdout
    assert result.stdout.count("</sub>") == 1


@pytest.mark.parametrize(
    "content",
    [
        'models = "x"\n',
        "models = { claude-haiku-4-5 = 5 }\n",
        "models = { claude-haiku-4-5 = { output = 1.0 } }\n",
        'models = { claude-haiku-4-5 = { input = "abc", output = 1.0 } }\n',
        'multipliers = { cache_read = "x" }\n',
        'models = { claude-haiku-4-5 = { input = 1.0, output = 1.0, before = [{ until = "soon", '
        "input = 1.0, output = 1.0 }] } }\n",
    ],
    ids=["models-a-string", "row-a-number", "no-input", "input-a-string", "multiplier", "until"],
)
def test_a_malformed_price_table_is_one_error_naming_it(project: Path, content: str) -> None:
    """Each of these ended in `Error: unexpected TypeError/KeyError/ValueError`."""
    (project / "prices.toml").write_text(content, encoding="utf-8")
    result = run("--prices", "prices.toml", "plan", "--no-refresh")
    one_error_naming(result, "prices.toml")


# ---------------------------------------------------------------- the Markdown plan
def test_the_markdown_plan_stays_under_githubs_limit_with_a_long_model_name(
    project: Path,
) -> None:
    """plan_markdown promises "always under GitHub's 65,536 characters", but the notes (here
    the cost note quoting the model name) are not capped: 70,000 characters came out."""
    (project / "jobs" / "long.toml").write_text(
        "version = 1\n[jobs.long]\n"
        f'model = "claude-{"x" * 70_000}"\n'
        'max_tokens = 5\nprompt = "hi"\nitems = [{ key = "a" }]\n',
        encoding="utf-8",
    )
    result = run("plan", "--no-refresh", "--markdown")
    assert result.exit_code == 0, result.output
    assert len(result.stdout) <= GITHUB_COMMENT_LIMIT


# ---------------------------------------------------------------- CLI options and state
def test_a_negative_poll_interval_is_refused_before_anything_is_sent(
    project: Path, emulator: str, sdk_client: anthropic.Anthropic
) -> None:
    """`apply --wait --poll-interval -5` created a batch (money spent), then stopped with
    `Error: unexpected ValueError: sleep length must be non-negative` and no summary."""
    env = {"ANTHROPIC_BASE_URL": emulator, "ANTHROPIC_API_KEY": API_KEY}
    result = run("apply", "--yes", "--wait", "--poll-interval", "-5", env=env)
    assert result.exit_code != 0, result.output  # a usage error: 1 from the command (main)
    assert "Invalid value for '--poll-interval': '-5' must be more than 0" in result.stderr
    assert "unexpected" not in result.stderr, result.stderr
    assert list(sdk_client.messages.batches.list()) == []


def test_a_malformed_postgres_url_is_one_error(project: Path) -> None:
    """`--state 'postgresql://[bad'` (or BATCHOPS_STATE) ended in `unexpected ValueError:
    Invalid IPv6 URL`."""
    result = run("--state", "postgresql://u:secret@[bad", "status")
    one_error_naming(result, "the postgresql state URL is not a valid URL (Invalid IPv6 URL)")
    assert "secret" not in result.stderr  # a URL that does not parse is not shown: any part
    # of it may be the password


def test_an_emulator_batches_file_that_is_not_sqlite_is_one_error(project: Path) -> None:
    """`--emulator plan` beside a damaged state/emulator-remote.db ended in `unexpected
    DatabaseError: file is not a database` (`emulator serve --db FILE` likewise)."""
    (project / "state").mkdir()
    (project / "state" / "emulator-remote.db").write_text("not a database\n", encoding="utf-8")
    result = run("--emulator", "plan")
    one_error_naming(result, "emulator-remote.db")


# ---------------------------------------------------------------- saved plans
def _rewritten(plan_file: Path, out: Path, header_plan=None, extra_line: bytes | None = None):
    """`plan_file` with its header's `plan` replaced and/or a body line added, digest redone
    (the digest proves the file whole, not that batchops wrote it)."""
    lines = plan_file.read_bytes().split(b"\n")
    header, body = json.loads(lines[0]), lines[1:-2]
    if header_plan is not None:
        header["plan"] = header_plan
    if extra_line is not None:
        body.append(extra_line)
    content = b"\n".join([json.dumps(header).encode(), *body]) + b"\n"
    end = {
        "kind": "batchops-plan-end",
        "lines": len(body) + 1,
        "digest": "sha256:" + hashlib.sha256(content).hexdigest(),
    }
    out.write_bytes(content + json.dumps(end).encode() + b"\n")
    return out


@pytest.mark.parametrize(
    "change",
    [{"header_plan": [1]}, {"extra_line": b"[]"}, {"header_plan": "serial"}],
    ids=["plan-a-list", "step-a-list", "serial-a-string"],
)
def test_a_damaged_saved_plan_is_one_error(project: Path, change: dict) -> None:
    """`show`/`apply` of a plan file of the wrong shape ended in `unexpected AttributeError`
    or `unexpected ValueError` instead of naming the file."""
    assert run("plan", "--no-refresh", "-o", "plan.json").exit_code == 0
    if change.get("header_plan") == "serial":
        header = json.loads((project / "plan.json").read_bytes().split(b"\n")[0])
        change = {"header_plan": {**header["plan"], "serial": "x"}}
    _rewritten(project / "plan.json", project / "bad.json", **change)
    result = run("show", "bad.json")
    one_error_naming(result, "bad.json")


# ---------------------------------------------------------------- documentation
def test_the_readme_gives_plan_jsons_format_version(project: Path) -> None:
    """README: "`plan --json` is versioned (`format_version: 1`)"; it has been 2 since the
    requeue change (CHANGELOG), and scripts gate on that number."""
    result = run("plan", "--no-refresh", "--json")
    assert result.exit_code == 0, result.output
    documented = re.search(
        r"`plan --json` is versioned \(`format_version: (\d+)`\)", README.read_text()
    )
    assert documented is not None
    assert int(documented.group(1)) == json.loads(result.stdout)["format_version"]
