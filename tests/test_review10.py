"""Review 10: specs (and files) from a stranger's pull request must be harmless to `validate`
and `plan` in CI. Each test reproduces one defect found by the review."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.hostile.helpers import one_line, problems_in_subprocess, write
from tests.test_hostile_settings import batchops

INPUT_JOB = """version = 1
[jobs.j]
model = "claude-haiku-4-5"
max_tokens = 8
prompt = "{{ body }}"
input = { path = "data/t.jsonl", key = "id" }
"""


def _batchops(root: Path, home_cache: Path, *args: str) -> subprocess.CompletedProcess:
    """`batchops ARGS` in `root`, in a child limited to 4 GB and 30 s, with the rows cache on."""
    return batchops(root, *args, env={"XDG_CACHE_HOME": str(home_cache)})


@pytest.mark.parametrize("command", [["validate"], ["plan", "--no-refresh"]])
def test_a_rows_cache_file_planted_as_a_symlink_to_dev_zero_is_not_read(
    tmp_path: Path, command: list[str]
) -> None:
    """`.batchops-cache/` sits inside the project, so a pull request can commit it: a job's rows
    file there symlinked to /dev/zero must be passed over like any other file the cache cannot
    trust (the plan memo already checks lstat), not read line by line without end."""
    root = tmp_path / "project"
    write(root, "batchops.toml", "")
    write(root, "jobs/a.toml", INPUT_JOB)
    write(root, "jobs/data/t.jsonl", '{"id": "a", "body": "hi"}\n')
    (root / ".batchops-cache/rows").mkdir(parents=True)
    os.symlink("/dev/zero", root / ".batchops-cache/rows/j.jsonl")

    done = _batchops(root, tmp_path / "home-cache", *command)

    assert done.stderr == ""
    assert done.returncode == 0
    if command == ["validate"]:
        assert done.stdout.rstrip("\n").endswith("Valid: 1 job, 1 item.")
    else:
        assert "Plan: 1 to submit." in done.stdout
    assert os.readlink(root / ".batchops-cache/rows/j.jsonl") == "/dev/zero"


def test_wordwrap_of_a_long_run_of_spaces_stops_at_the_time_budget(tmp_path: Path) -> None:
    """`wordwrap` runs textwrap in one call the budget never ticks inside, and textwrap is
    quadratic in a run of whitespace: a one-line template holds the render (and CI) for minutes
    (a million spaces: about nine minutes; three million, within the size budget: most of an
    hour). The item should fail at its time budget, with the usual one error line."""
    template = '{{ (" " * 1000000 + "x") | wordwrap(1) }}'
    write(
        tmp_path,
        "jobs/a.toml",
        'version = 1\n[defaults]\nrender_seconds = 0.5\n[jobs.j]\nmodel = "m"\nmax_tokens = 8\n'
        f"prompt = {json.dumps(template)}\n"
        'items = [{ key = "k" }]\n',
    )
    start = time.monotonic()
    try:
        lines = problems_in_subprocess(tmp_path, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the render was still running after 20 s, with a time budget of 0.5 s")
    assert time.monotonic() - start < 10
    assert one_line(lines) == (
        "jobs/a.toml: jobs.j.items.0: job j: item k: template 'prompt': "
        "took longer than the time budget of 0.5 s (render_seconds)"
    )
