"""`validate` warns offline about what the API would refuse, with the emulator's own rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.projects import run_cli

SPEC = """version = 1
[jobs.typo]
model = "claude-haiku-45"
max_tokens = 100
prompt = "Hi {{ key }}"
items = [{ key = "a" }, { key = "b" }]
params = { max_token = 5 }

[jobs.think]
model = "claude-sonnet-4-5"
max_tokens = 1000
prompt = "Hi {{ key }}"
items = [{ key = "x" }]
params = { thinking = { type = "enabled", budget_tokens = 2000 } }

[jobs.fine]
model = "claude-haiku-4-5"
max_tokens = 10
prompt = "Hi {{ key }}"
items = [{ key = "x" }]
"""


def test_validate_warns_once_per_problem_naming_file_job_and_item(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "a.toml").write_text(SPEC)
    result = run_cli(tmp_path, None, "validate")
    assert result.returncode == 0  # warnings: a newer model than batchops knows is still valid
    assert result.stderr.splitlines() == [
        "Warning: jobs/a.toml: job think: item x: the API would refuse this request: "
        "max_tokens: `max_tokens` (1000) must be greater than `thinking.budget_tokens` (2000)",
        "Warning: jobs/a.toml: job typo: item a: the API would refuse this request: "
        "max_token: Extra inputs are not permitted",
        "Warning: jobs/a.toml: job typo: item a: the API would refuse this request: "
        "model: 'claude-haiku-45' is not a known model id",
    ]
    shape = json.loads(run_cli(tmp_path, None, "validate", "--json").stdout)
    assert {j["name"]: len(j["warnings"]) for j in shape["jobs"]} == {
        "fine": 0,
        "think": 1,
        "typo": 2,
    }


def test_the_example_jobs_draw_no_warning(tmp_path: Path) -> None:
    shutil.copytree(Path(__file__).resolve().parent.parent / "jobs", tmp_path / "jobs")
    result = run_cli(tmp_path, None, "validate")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
