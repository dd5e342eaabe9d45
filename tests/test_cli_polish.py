"""The command line's manners: a closed pipe, Ctrl-C, -h, exit codes, conflicting flags,
plurals and shell completion. Processes are real where the behaviour is the process's own."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.emulator import EmulatorConfig
from tests.projects import API_KEY, rows, write_project


@pytest.fixture
def emulator_config() -> EmulatorConfig:
    return EmulatorConfig(processing_seconds=3600)  # batches stay in progress


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, rows(3))
    return tmp_path


def process_env(base_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHOPS_"))}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    if base_url:
        env.update({"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": API_KEY})
    return env


def batchops(root: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchops", *args],
        cwd=root,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def test_a_pipe_closed_early_ends_quietly(tmp_path: Path) -> None:
    write_project(tmp_path, [{"id": f"r{i}", "text": "x" * 200} for i in range(3000)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchops", "results", "demo"],
        cwd=tmp_path,
        env=process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # like `| head -1`: read a little, then go away
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert first.startswith(b'{"key":"r0"')
    assert stderr == ""


@pytest.mark.parametrize(
    "args", [["-h"], ["plan", "-h"], ["state", "list", "-h"], ["results", "-h"], ["init", "-h"]]
)
def test_h_is_help_everywhere(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0
    assert result.output.startswith("Usage: ")
    assert "-h, --help" in result.output


@pytest.mark.parametrize("command", ["plan", "show"])
def test_json_and_markdown_together_are_an_error(project: Path, command: str) -> None:
    args = [command] + (["plan.json"] if command == "show" else ["--no-refresh"])
    out = batchops(project, *args, "--json", "--markdown")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.rstrip().splitlines()[-1] == (
        "Error: --json and --markdown cannot be used together"
    )


def at_the_prompt(project: Path, emulator: str) -> tuple[subprocess.Popen, int]:
    """`batchops apply` with a terminal on stdin (so it asks), once it has asked."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchops", "apply"],
        cwd=project,
        env=process_env(emulator),
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 60
    while b"Apply this plan? [y/N]: " not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            seen += os.read(proc.stdout.fileno(), 65536)
    assert b"Apply this plan? [y/N]: " in seen
    return proc, leader


def finish(proc: subprocess.Popen, leader: int) -> tuple[int, str, str]:
    try:
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout.decode(), stderr.decode()


def test_ctrl_c_at_the_prompt_exits_130_without_a_traceback(project: Path, emulator: str) -> None:
    proc, leader = at_the_prompt(project, emulator)
    proc.send_signal(2)  # SIGINT, as Ctrl-C sends it
    rc, _, stderr = finish(proc, leader)
    assert rc == 130
    assert "Traceback" not in stderr and "unexpected" not in stderr
    assert len(stderr.strip().splitlines()) <= 2, stderr  # what stopped, and what is in flight


@pytest.mark.parametrize(
    ("answer", "rc", "said"), [(b"n\n", 1, "Apply cancelled"), (b"y\n", 0, "")]
)
def test_the_prompt_takes_an_answer(project: Path, emulator: str, answer, rc, said) -> None:
    proc, leader = at_the_prompt(project, emulator)
    os.write(leader, answer)
    code, stdout, stderr = finish(proc, leader)
    assert code == rc, stdout + stderr
    if said:
        assert said in stdout
    else:
        assert "Apply complete: 3 requests sent in 1 batch" in stdout


def test_timeout_with_items_pending_exits_3(project: Path, emulator: str) -> None:
    env = {"ANTHROPIC_BASE_URL": emulator, "ANTHROPIC_API_KEY": API_KEY}
    result = CliRunner().invoke(
        cli,
        ["apply", "--yes", "--wait", "--timeout", "0.5", "--poll-interval", "0.1"],
        env=env,
    )
    assert result.exit_code == 3, result.output
    assert result.stderr == (
        "Timed out: 3 items still pending; run `batchops apply` again to continue.\n"
    )
    assert "Apply complete: 3 requests sent in 1 batch, 0 batches harvested (0 results)" in (
        result.stdout
    )


def complete(args: str, cwd: Path | None = None) -> list[str]:
    words = ["batchops", *args.split(" ")]
    env = {
        "_BATCHOPS_COMPLETE": "bash_complete",
        "COMP_WORDS": " ".join(words),
        "COMP_CWORD": str(len(words) - 1),
    }
    result = CliRunner().invoke(cli, [], prog_name="batchops", env=env)
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if line]


def test_completion_of_job_names_formats_and_plan_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, rows(1))
    (tmp_path / "jobs" / "other.toml").write_text(
        'version = 1\n[jobs.daily-digest]\nmodel = "m"\nmax_tokens = 1\nprompt = "x"\n'
        'items = [{key = "a"}]\n'
    )
    assert complete("results ") == ["plain,daily-digest", "plain,demo"]
    assert complete("results de") == ["plain,demo"]
    assert complete("plan --job d") == ["plain,daily-digest", "plain,demo"]
    assert complete("results demo --format ") == ["plain,jsonl", "plain,csv", "plain,json"]
    assert complete("results demo --format c") == ["plain,csv"]
    assert complete("apply pl") == ["file,pl"]
    assert complete("show ") == ["file,"]


def test_completion_with_a_broken_spec_offers_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "bad.toml").write_text("version = [")
    assert complete("results ") == []
