"""Review 18 (second reader): the last session's changes to `results -o` (written through a
pipe, a device or a symlink), to how a PostgreSQL state URL is shown without its password, and
to the message of an insufficient_privilege met while opening the state. Each test reproduces
one defect: it fails on the code as reviewed and passes once fixed."""

from __future__ import annotations

from pathlib import Path

from batchops.state.postgres import redact
from tests import statedb
from tests.projects import rows, run_cli, write_project


def test_results_to_dev_stdout_is_the_export_alone(tmp_path: Path, emulator: str) -> None:
    """040446d makes `results -o /dev/stdout` write through the device (its own example in
    `atomic_write`'s docstring: a script that always passes `-o "$OUT"`). The export goes to
    standard output, and then so does the summary the command prints for `-o`: the stream a
    script pipes into `jq` ends with the line "Wrote 2 rows of demo to /dev/stdout (jsonl).",
    which is not JSON. Expected: standard output holds the export and nothing else, as without
    `-o` (the summary, if any, on standard error): a written-through stream is the reader's."""
    write_project(tmp_path, rows(2))
    made = run_cli(tmp_path, emulator, "apply", "--yes", "--wait")
    assert made.returncode == 0, made.stderr
    plain = run_cli(tmp_path, emulator, "results", "demo")
    assert plain.returncode == 0, plain.stderr
    assert len(plain.stdout.splitlines()) == 2, plain.stdout
    through = run_cli(tmp_path, emulator, "results", "demo", "-o", "/dev/stdout")
    assert through.returncode == 0, through.stderr
    assert through.stdout.splitlines()[-1] == plain.stdout.splitlines()[-1], through.stdout[-200:]
    assert through.stdout == plain.stdout


def test_a_password_holding_an_at_sign_is_not_shown_in_part(tmp_path: Path) -> None:
    """a692ccb splits a URL's userinfo at the FIRST `@` (`_userinfo`, as libpq's parser does),
    where `redact` used to cut at the last one. A password holding an unencoded `@` (the usual
    mistake: `ci:Sup3r@Secret@host`) now has its part after the `@` shown as if it were the
    host: `state list` says "Error: postgresql://ci@Secret@127.0.0.1:1/state: cannot connect
    to PostgreSQL (failed to resolve host 'Secret@127.0.0.1': …)" in the CI log. No host holds
    an `@`: everything before the last `@` of the authority may be the password, and none of it
    may be shown (DESIGN: a state URL never shows a password). Expected: the URL shown as
    postgresql://ci@127.0.0.1:1/state, and no part of the password anywhere in the line."""
    url = "postgresql://ci:Sup3r@Secret@127.0.0.1:1/state"
    assert redact(url) == "postgresql://ci@127.0.0.1:1/state"
    line = state_list_error(tmp_path, url)
    assert line.startswith(
        "Error: postgresql://ci@127.0.0.1:1/state: cannot connect to PostgreSQL ("
    ), line
    assert "Secret" not in line and "Sup3r" not in line, line


def state_list_error(root: Path, url: str) -> str:
    """The one error line `state list` gives for a state URL it cannot reach."""
    (root / "jobs").mkdir()
    out = run_cli(root, None, "state", "list", state=url)
    assert out.returncode == 1, out.stdout
    (line,) = out.stderr.splitlines()
    return line


def test_a_role_that_may_not_read_the_state_is_not_told_it_may(
    tmp_path: Path, emulator: str, pg_server, pg_dsn: str
) -> None:
    """a692ccb words every insufficient_privilege met while opening the state (other than a
    migration's) as "this role may read the state but not write it (a command that writes
    needs insert, update and delete on its tables)". A reader's open only reads: its 42501 is
    the refusal of a read. A role granted nothing on the state's tables (a new CI role whose
    grants were forgotten) runs `batchops status` and is told "permission denied for table
    _batchops_migrations: this role may read the state but not write it", the opposite of
    what happened, pointing the admin at insert/update/delete grants while SELECT is the one
    missing. Expected: one line naming the refusal, not claiming the role may read."""
    write_project(tmp_path, rows(2))
    made = run_cli(tmp_path, emulator, "apply", "--yes", state=pg_dsn)
    assert made.returncode == 0, made.stderr
    with statedb.login_role(pg_server.dsn, pg_dsn, "none") as url:
        out = run_cli(tmp_path, emulator, "status", state=url)
    assert out.returncode == 1, out.stdout
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"Error: {url}: permission denied for table _batchops_migrations"), line
    assert "may read the state" not in line, line
