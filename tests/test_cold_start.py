"""Cold start: heavy modules are imported only by the commands that use them.

`import anthropic` alone takes over a second; `--help`, `validate` and `plan --no-refresh` never
call the API, so they must never pay for it (nor for the emulator's server or PostgreSQL driver).
Each check runs in a fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

NEVER_AT_START = ("anthropic", "httpx", "uvicorn", "starlette", "psycopg")
ONLY_WHEN_USED = ("jinja2", "pydantic", "tabulate", "sqlite_utils", "multiprocessing")
# What checking specs does not need: the planner, the state's backends, apply and the remote API.
NOT_FOR_VALIDATE = (
    "jinja2",  # the examples' templates only substitute names
    "tabulate",  # their tables are plain (views.tables.simple_table)
    "sqlite_utils",
    "multiprocessing",
    "batchops.plan",
    "batchops.state.api",
    "batchops.state.sqlite",
    "batchops.apply",
    "batchops.remote",
)
# What an offline plan does not need: apply, the remote client, saved plans, a temporary file
# for the rows of jobs too small to keep, the host name a writer's lease records.
NOT_FOR_OFFLINE_PLAN = (
    "jinja2",
    "tabulate",
    "tempfile",
    "socket",
    "multiprocessing",
    "batchops.apply",
    "batchops.remote",
    "batchops.plan.saved",
)
REPO = Path(__file__).resolve().parent.parent

PROBE = """
import atexit, json, runpy, sys
watched = json.loads(sys.argv[1])
def report():
    sys.stderr.write("LOADED " + json.dumps([m for m in watched if m in sys.modules]) + "\\n")
atexit.register(report)
sys.argv = ["batchops", *json.loads(sys.argv[2])]
runpy.run_module("batchops", run_name="__main__")
"""


def loaded_by(
    argv: list[str], cwd: Path, watched: tuple[str, ...], env: dict[str, str] | None = None
) -> list[str]:
    """The modules of `watched` that `batchops *argv` imported, run in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(watched), json.dumps(argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    line = next(
        (x for x in proc.stderr.splitlines() if x.startswith("LOADED ")),
        None,
    )
    assert line is not None, proc.stderr
    return json.loads(line.removeprefix("LOADED "))


def test_importing_the_cli_imports_no_heavy_module():
    watched = NEVER_AT_START + ONLY_WHEN_USED
    code = (
        "import json, sys; import batchops.cli; "
        f"print(json.dumps([m for m in {list(watched)!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


def test_help_imports_only_the_command_line(tmp_path):
    assert loaded_by(["--help"], tmp_path, NEVER_AT_START + ONLY_WHEN_USED) == []


def test_offline_commands_never_import_the_sdk(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "small.toml").write_text(
        'version = 1\n[jobs.small]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
        'prompt = "Say {{ word }}"\nitems = [{ key = "a", word = "hello" }]\n',
        encoding="utf-8",
    )
    for argv in (["validate"], ["plan", "--no-refresh"], ["plan", "--no-refresh", "--json"]):
        assert loaded_by(argv, tmp_path, NEVER_AT_START) == [], argv


def test_the_sdk_is_imported_at_the_first_call():
    code = (
        "import sys\n"
        "from batchops.remote import BatchesClient\n"
        "c = BatchesClient('http://127.0.0.1:9', 'k', timeout=5)\n"
        "assert 'anthropic' not in sys.modules\n"
        "c._sdk  # what every call goes through\n"
        "print('anthropic' in sys.modules)\n"
        "c.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "True"


def test_the_examples_load_only_what_each_command_uses(tmp_path):
    # the repo's own jobs/, as `bench/run.py --only cold` runs them (no state file yet)
    shutil.copytree(REPO / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("out"))
    validate = loaded_by(["validate"], tmp_path, NEVER_AT_START + NOT_FOR_VALIDATE)
    assert validate == []
    for argv in (["plan", "--no-refresh"], ["plan", "--no-refresh", "--json"]):
        assert loaded_by(argv, tmp_path, NEVER_AT_START + NOT_FOR_OFFLINE_PLAN) == [], argv


def test_an_unchanged_project_starts_without_checking_its_specs(tmp_path):
    # the first command checks the specs and keeps the project; the next ones load it
    shutil.copytree(REPO / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("out"))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "home-cache")}
    env.pop("BATCHOPS_CACHE", None)
    watched = ("pydantic", "batchops.spec.raw", "batchops.spec.rawplain")
    checked = ["batchops.spec.rawplain"]  # plain spec files: pydantic is not needed
    assert loaded_by(["validate"], tmp_path, watched, env) == checked
    for argv in (["validate"], ["plan", "--no-refresh"], ["plan", "--no-refresh", "--json"]):
        assert loaded_by(argv, tmp_path, watched, env) == [], argv
    with (tmp_path / "jobs" / "support.toml").open("a") as fh:
        fh.write("\n# edited\n")
    assert loaded_by(["validate"], tmp_path, watched, env) == checked


def test_a_spec_with_a_problem_is_checked_by_pydantic(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "bad.toml").write_text(
        'version = 1\n[jobs.bad]\nmodel = "claude-haiku-4-5"\nmax_tokens = 0\n'
        'prompt = "hi"\nitems = [{ key = "a" }]\n',
        encoding="utf-8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "batchops", "validate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "Error: jobs/bad.toml: jobs.bad.max_tokens: Input should be greater than or equal to 1\n"
    )
    assert loaded_by(["validate"], tmp_path, ("pydantic",)) == ["pydantic"]


def test_schema_prints_the_shipped_file_without_pydantic(tmp_path):
    assert loaded_by(["schema"], tmp_path, ("pydantic",)) == []


def test_a_kept_job_plans_without_jinja_or_sqlite_utils(tmp_path):
    # Rows kept by the first plan spare the next ones jinja2 (nothing renders), and reading a
    # state file needs no sqlite-utils (only writers migrate).
    data = tmp_path / "jobs" / "data"
    data.mkdir(parents=True)
    with (data / "rows.jsonl").open("w") as fh:
        for i in range(10_000):  # the rows cache keeps jobs of this size and more
            fh.write(json.dumps({"id": f"r{i}", "body": f"text {i}"}) + "\n")
    (tmp_path / "jobs" / "big.toml").write_text(
        'version = 1\n[jobs.big]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
        # a filter: the first plan renders through Jinja
        'prompt = "Say {{ body | upper }}"\ninput = { path = "data/rows.jsonl", key = "id" }\n',
        encoding="utf-8",
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "home-cache")}
    env.pop("BATCHOPS_CACHE", None)
    env["BATCHOPS_STATE"] = str(tmp_path / "state.db")
    make_state = "import sys; from batchops.state.sqlite import SqliteWriter as W; W.open(sys.argv[1]).close()"
    subprocess.run(
        [sys.executable, "-c", make_state, env["BATCHOPS_STATE"]], check=True, timeout=120
    )
    watched = ("jinja2", "sqlite_utils", "batchops.spec.sandbox")
    assert loaded_by(["plan", "--no-refresh"], tmp_path, watched, env) == [
        "jinja2",
        "batchops.spec.sandbox",
    ]
    for argv in (["plan", "--no-refresh"], ["plan", "--no-refresh", "--json"]):
        assert loaded_by(argv, tmp_path, watched, env) == [], argv
    with (tmp_path / "jobs" / "big.toml").open("a") as fh:
        fh.write("\n# edited\n")  # the job definition is the same: its rows are still kept
    assert loaded_by(["plan", "--no-refresh"], tmp_path, watched, env) == []


def test_opening_state_needs_no_sqlite_utils(tmp_path):
    shutil.copytree(REPO / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("out"))
    env = {**os.environ, "BATCHOPS_STATE": str(tmp_path / "state.db")}
    make_state = "import sys; from batchops.state.sqlite import SqliteWriter as W; W.open(sys.argv[1]).close()"
    subprocess.run(
        [sys.executable, "-c", make_state, env["BATCHOPS_STATE"]], check=True, timeout=120
    )
    # nor does opening it to write, when no migration is pending
    for argv in (
        ["plan", "--no-refresh"],
        ["status"],
        ["results", "ticket-sentiment"],
        ["state", "migrate"],
    ):
        assert loaded_by(argv, tmp_path, ("sqlite_utils",), env) == [], argv


# What a no-op apply does not need: it plans once, takes its lock, polls the batches not yet
# archived (here the SDK is imported) and finds nothing to run.
NOT_FOR_NOOP_APPLY = (
    "batchops.apply.evaluator",  # nothing to run
    "batchops.plan.saved",  # no saved plan, nothing to send
    "batchops.commands.results",  # no output file to write
    "ctypes",  # the heap is given back after a create only
    "tabulate",  # its closing table is plain (views.tables.job_counts_table)
    "email.utils",  # read only for a Retry-After given as a date
)
# What a no-op plan of a state holding every answer does not need: its table (a `-` for the
# budget) is plain, and the memo answers it.
NOT_FOR_NOOP_PLAN = ("tabulate", "jinja2", "multiprocessing", "batchops.apply", "batchops.remote")


def test_a_noop_apply_imports_only_what_it_uses(tmp_path, emulator):
    from tests.projects import API_KEY, apply, context, rows, write_project

    write_project(tmp_path, rows(3))
    report = apply(context(tmp_path, emulator), wait=True)
    assert not report.problems and report.final_plan.jobs[0].counts["succeeded"] == 3
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(
        ANTHROPIC_BASE_URL=emulator,
        ANTHROPIC_API_KEY=API_KEY,
        NO_PROXY="127.0.0.1",
        BATCHOPS_STATE=str(tmp_path / "state" / "batchops.db"),
    )
    assert loaded_by(["apply", "--yes"], tmp_path, NOT_FOR_NOOP_APPLY, env) == []
    assert loaded_by(["plan", "--no-refresh"], tmp_path, NOT_FOR_NOOP_PLAN, env) == []
    # the same apply with a job to run loads the evaluator (the probe watches what it should)
    write_project(tmp_path, rows(4))
    assert loaded_by(["apply", "--yes"], tmp_path, NOT_FOR_NOOP_APPLY, env) == [
        "batchops.apply.evaluator",
        "batchops.plan.saved",
        "ctypes",
        "email.utils",  # the SDK's own, once it is imported
    ]
