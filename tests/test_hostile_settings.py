"""`batchops.toml` comes from pull requests too: its prices file is read like a spec's data file
(inside the project root, a regular file, bounded), its state may not be a FIFO or a device, and
an empty --jobs, --state or --prices is refused rather than read as the working directory (found
by a review of the project settings; each test of a fix failed before it).

What could hang (a FIFO, /dev/zero) runs in a child process with a timeout and a memory limit,
so that a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.spec.files import MIB
from tests.hostile.helpers import FOUR_GB
from tests.projects import rows, write_project

REPO = Path(__file__).resolve().parent.parent
SHIPPED_PRICES = (REPO / "batchops/data/prices.toml").read_text(encoding="utf-8")
MY_PRICES = 'as_of = "2027-01-01"\n[models."claude-haiku-4-5"]\ninput = 1.0\noutput = 4.0\n'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_project(root, rows(2))
    return root


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (FOUR_GB, FOUR_GB))


def batchops(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`batchops *args` as a real process in `root` (exit codes as `main` gives them), killed
    after 30 s and limited to 4 GB: a hang or a read without end fails the test."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BATCHOPS_"))
    }
    full_env.update({"PYTHONPATH": str(REPO), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "batchops", *args],
        cwd=root,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limit_memory,
    )


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


# ---------------------------------------------------------------- prices named by batchops.toml
def test_a_prices_file_in_batchops_toml_is_read(project: Path) -> None:
    """The fixes below keep the ordinary case working: a price file inside the root."""
    (project / "batchops.toml").write_text('prices = "prices.toml"\n')
    (project / "prices.toml").write_text(MY_PRICES)
    result = run("plan", "--no-refresh")
    assert result.exit_code == 0, result.output
    assert "Prices: prices.toml as of 2027-01-01." in result.output


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ("../outside/prices.toml", "../outside/prices.toml"),
        ("{outside}/prices.toml", "{outside}/prices.toml"),
    ],
    ids=["dotdot", "absolute"],
)
def test_a_prices_file_outside_the_root_is_refused(project: Path, setting: str, shown: str) -> None:
    """`prices = "../../etc/…"` or an absolute path was read (a price table, or any TOML file's
    values in the error lines)."""
    outside = project.parent / "outside"
    outside.mkdir()
    (outside / "prices.toml").write_text(MY_PRICES)
    setting, shown = (s.format(outside=outside) for s in (setting, shown))
    (project / "batchops.toml").write_text(f'prices = "{setting}"\n')
    result = run("plan", "--no-refresh")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: {shown}: is outside the project root\n"


def test_a_prices_file_symlinked_outside_the_root_is_refused(project: Path) -> None:
    outside = project.parent / "outside.toml"
    outside.write_text(MY_PRICES)
    (project / "prices.toml").symlink_to(outside)
    (project / "batchops.toml").write_text('prices = "prices.toml"\n')
    result = run("plan", "--no-refresh")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        f"Error: prices.toml: is outside the project root (a symlink to {outside})\n"
    )


def test_prices_dev_zero_does_not_eat_memory(project: Path) -> None:
    """`prices = "/dev/zero"` read without end until memory ran out."""
    (project / "batchops.toml").write_text('prices = "/dev/zero"\n')
    done = batchops(project, "plan", "--no-refresh")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "Error: /dev/zero: is outside the project root\n"


def test_a_prices_symlink_to_dev_zero_does_not_eat_memory(project: Path) -> None:
    (project / "prices.toml").symlink_to("/dev/zero")
    (project / "batchops.toml").write_text('prices = "prices.toml"\n')
    done = batchops(project, "plan", "--no-refresh")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "Error: prices.toml: is outside the project root (a symlink to /dev/zero)\n"
    )


def test_a_prices_fifo_does_not_hang(project: Path) -> None:
    """A FIFO blocked `batchops plan` until something wrote to it."""
    os.mkfifo(project / "prices.toml")
    (project / "batchops.toml").write_text('prices = "prices.toml"\n')
    done = batchops(project, "plan", "--no-refresh")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "Error: prices.toml: not a regular file (a FIFO)\n"


def test_a_prices_file_over_the_size_limit_is_refused(project: Path) -> None:
    (project / "prices.toml").write_text(MY_PRICES + "#" * MIB + "\n")
    (project / "batchops.toml").write_text('prices = "prices.toml"\n')
    result = run("plan", "--no-refresh")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: prices.toml: larger than the 1 MiB limit for a price file\n"


def test_a_deeply_nested_prices_file_is_one_error(project: Path) -> None:
    """Small enough, but nested past the parser's recursion: `Error: unexpected RecursionError`."""
    (project / "prices.toml").write_text("as_of = " + "[" * 5000 + "]" * 5000 + "\n")
    (project / "batchops.toml").write_text('prices = "prices.toml"\n')
    result = run("plan", "--no-refresh")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: prices.toml: invalid TOML: nested too deeply\n"


# ---------------------------------------------------------------- --prices and BATCHOPS_PRICES
def test_the_prices_option_may_name_a_file_outside_the_root(project: Path) -> None:
    """The person running the command is trusted with where the table is; a pull request is not."""
    (project / "batchops.toml").write_text('jobs = "jobs"\n')
    outside = project.parent / "mine.toml"
    outside.write_text(MY_PRICES)
    for result in (
        run("--prices", str(outside), "plan", "--no-refresh"),
        run("plan", "--no-refresh", env={"BATCHOPS_PRICES": str(outside)}),
    ):
        assert result.exit_code == 0, result.output
        assert f"Prices: {outside} as of 2027-01-01." in result.output


@pytest.mark.parametrize("how", ["option", "env"])
def test_the_prices_option_never_hangs_or_reads_without_end(project: Path, how: str) -> None:
    """Trusted, but a FIFO or a device is still refused, and a price file is still bounded."""
    os.mkfifo(project.parent / "fifo.toml")
    (project.parent / "big.toml").write_text("#" * (MIB + 1))
    expected = {
        "/dev/zero": "Error: /dev/zero: not a regular file (a device)\n",
        str(project.parent / "fifo.toml"): (
            f"Error: {project.parent / 'fifo.toml'}: not a regular file (a FIFO)\n"
        ),
        str(project.parent / "big.toml"): (
            f"Error: {project.parent / 'big.toml'}: larger than the 1 MiB limit for a price file\n"
        ),
    }
    for file, line in expected.items():
        if how == "option":
            done = batchops(project, "--prices", file, "plan", "--no-refresh")
        else:
            done = batchops(project, "plan", "--no-refresh", env={"BATCHOPS_PRICES": file})
        assert (done.returncode, done.stdout, done.stderr) == (1, "", line)


# ---------------------------------------------------------------- empty options
@pytest.mark.parametrize("option", ["--jobs", "--state", "--prices"])
def test_an_empty_path_option_is_refused(project: Path, option: str) -> None:
    """`--jobs ''` read the project root as the jobs folder (Path('') is '.'); `--state ''` and
    `--prices ''` ended in an error about '.'."""
    done = batchops(project, option, "", "plan", "--no-refresh")
    assert (done.returncode, done.stdout) == (1, "")  # a usage error: 1 from `main`
    assert errors(done.stderr) == [f"Error: Invalid value for '{option}': should not be empty"]


def test_an_empty_environment_variable_is_unset(project: Path) -> None:
    """Not a fix: click skips an empty BATCHOPS_* variable, as a CI workflow needs (a secret a
    fork's pull request does not get is an empty string): the defaults apply."""
    env = {"BATCHOPS_JOBS": "", "BATCHOPS_STATE": "", "BATCHOPS_PRICES": ""}
    done = batchops(project, "plan", "--no-refresh", env=env)
    assert (done.returncode, done.stderr) == (0, "")
    assert "Plan: 2 to submit." in done.stdout
    assert "Prices: batchops price table as of " in done.stdout


# ---------------------------------------------------------------- jobs and state of batchops.toml
@pytest.mark.parametrize(
    "setting", ["../other", "{other}", "linked"], ids=["dotdot", "absolute", "symlink"]
)
def test_a_jobs_folder_outside_the_root_is_refused(project: Path, setting: str) -> None:
    """Already held before this review (`load_project` confines the jobs folder to the root);
    pinned here for batchops.toml."""
    other = project.parent / "other"
    (project / "jobs").rename(other)
    (project / "linked").symlink_to(other)
    setting = setting.format(other=other)
    (project / "batchops.toml").write_text(f'jobs = "{setting}"\n')
    result = run("plan", "--no-refresh")
    assert (result.exit_code, result.stdout) == (1, "")
    why = "outside the project root" + (f" (a symlink to {other})" if setting == "linked" else "")
    assert result.stderr == f"Error: {setting}: {why} {project}\n"


@pytest.mark.parametrize(
    "args", [["plan", "--no-refresh"], ["status"], ["apply", "--yes"]], ids=lambda a: a[0]
)
def test_a_state_fifo_does_not_hang(project: Path, args: list[str]) -> None:
    """`state = "<a FIFO>"` blocked in SQLite's open, deaf to SIGTERM (`timeout` could not stop
    it): the reader (plan, status) and the writer (apply)."""
    (project / "state").mkdir()
    os.mkfifo(project / "state" / "batchops.db")
    (project / "batchops.toml").write_text('state = "state/batchops.db"\n')
    nowhere = {  # apply opens the state before any call: nothing listens on the discard port
        "ANTHROPIC_API_KEY": "test-dummy-key",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    done = batchops(project, *args, env=nowhere)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "Error: state/batchops.db: not a regular file (a FIFO)\n"


def test_a_state_device_is_refused(project: Path) -> None:
    """`state = "/dev/zero"` read as an empty state (and apply would have written to it)."""
    (project / "batchops.toml").write_text('state = "/dev/zero"\n')
    done = batchops(project, "plan", "--no-refresh")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "Error: /dev/zero: not a regular file (a device)\n"
