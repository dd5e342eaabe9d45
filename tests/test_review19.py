"""Review 19 (second reader): the last session's changes to `results -o` (a symlink now replaced
at its real path, after `check_output_path`) and to how a PostgreSQL state URL is shown without
its password (`redact`, `_userinfo`). Each test reproduces one defect: it fails on the code as
reviewed and passes once fixed."""

from __future__ import annotations

from pathlib import Path

from batchops.state.postgres import redact
from tests.projects import rows, run_cli, write_project
from tests.test_review18 import state_list_error


def test_results_refuses_the_state_file_named_through_a_symlinked_folder(
    tmp_path: Path, emulator: str
) -> None:
    """The state lives outside the project, under a folder reached through a symlink (a
    persistent volume linked in, or macOS's /tmp and /var, which are links to /private/…).
    `batchops results demo -o <the very path given as --state>` says "Wrote 2 rows of demo to
    …/link/batchops.db (jsonl)." and exits 0: the state is replaced by the export, and the next
    command says "not a batchops state file (file is not a database)". `check_output_path`
    compares the output's resolved path with the protected paths as written (`abspath`, not
    resolved), so outside the project a state named through a symlink is not protected, and
    `atomic_write` now replaces a symlink's real file too. Expected: the one line "Error: PATH:
    refusing to write over the state or into .git", exit 1, the state untouched."""
    project = tmp_path / "project"
    volume = tmp_path / "volume"
    volume.mkdir()
    (tmp_path / "link").symlink_to(volume)
    state = tmp_path / "link" / "batchops.db"
    write_project(project, rows(2))
    made = run_cli(project, emulator, "apply", "--yes", "--wait", state=state)
    assert made.returncode == 0, made.stderr
    before = (volume / "batchops.db").read_bytes()
    out = run_cli(project, emulator, "results", "demo", "-o", str(state), state=state)
    assert out.stderr.splitlines() == [
        f"Error: {state}: refusing to write over the state or into .git"
    ], out.stdout + out.stderr
    assert out.returncode == 1
    assert (volume / "batchops.db").read_bytes() == before
    status = run_cli(project, emulator, "status", state=state)
    assert status.returncode == 0, status.stderr


def test_a_password_with_an_at_sign_in_the_query_is_not_shown_in_part(tmp_path: Path) -> None:
    """A state URL without a database path, with a port, and its password in the query
    (`postgresql://ci@127.0.0.1:1?password=Sup3r@Secret`, as an Azure-style user or a generated
    password gives it). libpq reads it rightly: user ci, host 127.0.0.1, port 1, password
    "Sup3r@Secret". `_userinfo` (a692ccb/9955014) takes the userinfo to the LAST `@` before any
    `/`, and with no `/` that `@` is the password's: `redact` shows
    "postgresql://ci@127.0.0.1@Secret", so `state list` prints "Error:
    postgresql://ci@127.0.0.1@Secret: cannot connect to PostgreSQL (…)" — the password's tail
    in the CI log, and a URL naming a host that is not the one libpq reached. Before a692ccb it
    was shown as postgresql://ci@127.0.0.1:1. Expected: that, and no piece of the password."""
    url = "postgresql://ci@127.0.0.1:1?password=Sup3r@Secret"
    assert redact(url) == "postgresql://ci@127.0.0.1:1"
    line = state_list_error(tmp_path, url)
    assert line.startswith("Error: postgresql://ci@127.0.0.1:1: cannot connect to PostgreSQL ("), (
        line
    )
    assert "Secret" not in line and "Sup3r" not in line, line


def test_a_password_holding_a_slash_is_not_shown_whole(tmp_path: Path) -> None:
    """A generated password holding an unencoded `/` (base64 gives them:
    `postgresql://ci:Zx9/Qw+e@127.0.0.1:1/state`). `_userinfo` stops at the first `/`, finds no
    `@` before it, and `redact` returns the URL as given: `state list` prints "Error:
    postgresql://ci:Zx9/Qw+e@127.0.0.1:1/state: cannot connect to PostgreSQL (failed to resolve
    host 'ci': …)", the whole password in the CI log. libpq finds no password in such a URL,
    but the user wrote one, and no host, port or database holds `user:…@host`: a state URL
    never shows a password (DESIGN §4: "never a password"). Expected: the URL shown without
    it, postgresql://ci@127.0.0.1:1/state, and no piece of it in the line."""
    url = "postgresql://ci:Zx9/Qw+e@127.0.0.1:1/state"
    assert redact(url) == "postgresql://ci@127.0.0.1:1/state"
    line = state_list_error(tmp_path, url)
    assert "Zx9" not in line and "Qw+e" not in line, line


def test_a_lost_stop_does_not_use_a_saved_plan_up(
    tmp_path: Path, emulator: str, emulator_admin
) -> None:
    """A saved plan is marked applied once checked, before its steps run: a SIGTERM whose
    raise was lost before then (review 16's case) stopped the apply after that mark, and the
    plan could not be applied again ("already applied") though nothing of it ran. Expected:
    exit 143, no batch, and the same plan applied by the next run."""
    import subprocess
    import sys

    from tests.test_review3_team import _env
    from tests.test_review16 import _LOSE_A_SIGTERM

    write_project(tmp_path, rows(2))
    planned = run_cli(tmp_path, emulator, "plan", "-o", "p.plan")
    assert planned.returncode == 0, planned.stderr
    script = _LOSE_A_SIGTERM.replace(
        '["batchops", "apply", "--yes"]', '["batchops", "apply", "p.plan"]'
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(emulator, None),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 143, out.stdout + out.stderr
    assert emulator_admin.stats()["batches_created"] == 0
    again = run_cli(tmp_path, emulator, "apply", "p.plan")
    assert again.returncode == 0, again.stderr
    assert emulator_admin.stats()["batches_created"] == 1
