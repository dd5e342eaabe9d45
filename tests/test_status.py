"""`batchops status`: counts per item state, actual cost from stored usage, batches in flight."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.commands.context import Context, Settings
from batchops.commands.status import duration, status
from batchops.state import open_reader
from batchops.state.sqlite import SqliteReader as StateReader
from tests.statefill import NOW, context, fill_demo_state, fill_demo_state_at, write_project

REPO_JOBS = Path(__file__).resolve().parent.parent / "jobs"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def shared(project: Path, monkeypatch: pytest.MonkeyPatch, state_location) -> Path:
    """`project` with the demo state filled, on either backend (BATCHOPS_STATE points at it)."""
    fill_demo_state_at(project, state_location)
    if isinstance(state_location, str):  # PostgreSQL; SQLite is the default file
        monkeypatch.setenv("BATCHOPS_STATE", state_location)
    return project


def run(*args: str):
    return CliRunner().invoke(cli, list(args), obj={"clock": lambda: NOW})


def lineage(root: Path) -> str:
    reader = StateReader.open(root / "state" / "batchops.db")
    try:
        return reader.lineage or ""
    finally:
        reader.close()


def test_status_table(shared: Path) -> None:
    result = run("status")
    assert result.exit_code == 0, result.output
    assert result.output == (
        "job      items    succeeded    pending    retrying    failed    to do    removed    actual cost    est. cost\n"
        "-----  -------  -----------  ---------  ----------  --------  -------  ---------  -------------  -----------\n"
        "demo         6            1          1           1         1        2          1        $0.0012      $0.0002\n"
        "\n"
        "Actual cost $0.0012 of an estimated $0.0002 (up to $0.0003), every item sent, at batch prices.\n"
        "\n"
        "Actual cost by what was billed:\n"
        "job      input    cache write    cache read    output    actual cost    est. cost\n"
        "-----  -------  -------------  ------------  --------  -------------  -----------\n"
        "demo   $0.0007        $0.0003       $0.0001   $0.0001        $0.0012      $0.0002\n"
        "\n"
        "Batches in flight:\n"
        "batch          job    status         requests    age    expires in\n"
        "-------------  -----  -----------  ----------  -----  ------------\n"
        "msgbatch_live  demo   in_progress           1  3.0 h        21.0 h\n"
        "\n"
        "Nearest remote result expiry: batch msgbatch_old (demo), 2026-03-30 00:00 UTC, in 19.5 days.\n"
    )


def test_status_json(shared: Path) -> None:
    where = os.environ.get("BATCHOPS_STATE", "state/batchops.db")
    reader = open_reader(where)
    try:
        state = {"path": where, "lineage": reader.lineage, "serial": 1}
    finally:
        reader.close()
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "format_version": 1,
        "created_at": "2026-03-10T12:00:00Z",
        "state": state,
        "jobs": [
            {
                "name": "demo",
                "items": 6,
                "succeeded": 1,
                "pending": 1,
                "retrying": 1,
                "failed": 1,
                "todo": 2,
                "removed": 1,
                # every succeeded row, history included, at haiku batch prices ($/MTok 0.5 in,
                # 2.5 out, 0.625 5m write, 1.0 1h write, 0.05 read):
                # r1 old 75 + r1 940 + r6 old 120 + gone 31 = 1166 µ$
                "actual_cost_usd": 0.001166,
                "actual_cost_parts_usd": {
                    "input": 0.000671,
                    "cache_write": 0.00029,
                    "cache_read": 0.0001,
                    "output": 0.000105,
                },
                "estimated_cost_usd": 0.000276,
                "expected_cost_usd": 0.000187,
                "cost_note": None,
            }
        ],
        "totals": {
            "actual_cost_usd": 0.001166,
            "estimated_cost_usd": 0.000276,
            "expected_cost_usd": 0.000187,
        },
        "batches_in_flight": [
            {
                "id": "msgbatch_live",
                "job": "demo",
                "processing_status": "in_progress",
                "request_count": 1,
                "created_at": "2026-03-10T09:00:00Z",
                "expires_at": "2026-03-11T09:00:00Z",
                "age_seconds": 10800.0,
                "expires_in_seconds": 75600.0,
            }
        ],
        "unknown_creates": [],
        "next_result_expiry": {
            "batch_id": "msgbatch_old",
            "job": "demo",
            "results_expire_at": "2026-03-30T00:00:00Z",
            "in_seconds": 1684800.0,
        },
    }


def test_status_never_writes_state(project: Path) -> None:
    path = fill_demo_state(project)
    before = path.read_bytes()
    assert run("status").exit_code == 0
    assert run("status", "--json").exit_code == 0
    assert path.read_bytes() == before


def test_status_without_state_creates_nothing(project: Path) -> None:
    result = run("status")
    assert result.exit_code == 0, result.output
    assert result.output == (
        "job      items    succeeded    pending    retrying    failed    to do    removed    actual cost    est. cost\n"
        "-----  -------  -----------  ---------  ----------  --------  -------  ---------  -------------  -----------\n"
        "demo         6            0          0           0         0        6          0        $0.0000      $0.0003\n"
        "\n"
        "Actual cost $0.0000 of an estimated $0.0003, every item sent, at batch prices.\n"
        "\n"
        "No batches in flight.\n"
        "\n"
        "No harvested results are held remotely.\n"
    )
    assert not (project / "state").exists()


def test_status_needs_no_network(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with credentials and an unreachable API configured, status answers offline."""
    fill_demo_state(project)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-dummy-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    assert run("status").exit_code == 0


def test_status_job_filter_and_unknown_job(shared: Path) -> None:
    result = run("status", "--job", "demo", "--json")
    assert [j["name"] for j in json.loads(result.output)["jobs"]] == ["demo"]
    result = run("status", "--job", "nope")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "Error: unknown job 'nope' (jobs: demo)\n"


def test_removed_job_still_shows_its_cost(shared: Path) -> None:
    project = shared
    (project / "jobs" / "other.toml").write_text(
        'version = 1\n[jobs.other]\nmodel = "claude-haiku-4-5"\nmax_tokens = 4\n'
        'items = [{ key = "a", prompt = "x" }]\nprompt = "{{ prompt }}"\n',
        encoding="utf-8",
    )
    (project / "jobs" / "demo.toml").unlink()
    data = json.loads(run("status", "--json").output)
    demo = next(j for j in data["jobs"] if j["name"] == "demo")
    assert (demo["items"], demo["removed"], demo["actual_cost_usd"]) == (0, 6, 0.001166)
    parts = demo["actual_cost_parts_usd"]
    assert set(parts) == {"input", "cache_write", "cache_read", "output"}
    assert sum(parts.values()) == pytest.approx(0.001166, abs=1e-6)


def test_unpriced_model_is_noted(project: Path) -> None:
    path = fill_demo_state(project)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("update results set model = 'claude-unknown-9' where key = 'gone'")
    conn.close()
    ctx = context(project)
    (job,) = status(ctx).jobs
    assert job.actual_cost_usd == 0.001135  # 1166 µ$ without gone's 31
    assert job.cost_note == (
        f"no price for model claude-unknown-9 in {ctx.prices.source}: actual cost excludes it"
    )


def test_duration() -> None:
    assert [duration(s) for s in (None, 5, 600, 7200, 3 * 86400, -120)] == [
        "-",
        "5 s",
        "10 min",
        "2.0 h",
        "3.0 days",
        "2 min ago",
    ]


def test_status_after_emulator_apply(tmp_path: Path, emulator: str) -> None:
    """End to end: the example jobs, applied against the emulator, all succeed and cost less than
    their ceiling estimate."""
    shutil.copytree(REPO_JOBS, tmp_path / "jobs", ignore=shutil.ignore_patterns("out"))
    ctx = Context(
        Settings(
            jobs_path=tmp_path / "jobs",
            state_path=tmp_path / "state" / "batchops.db",
            root=tmp_path,
            base_url=emulator,
            api_key="test-key",
        )
    )
    ctx.apply(wait=True, poll_interval=0.05, timeout=60)
    report = status(ctx)
    assert [(j.name, j.items, j.succeeded, j.items - j.succeeded) for j in report.jobs] == [
        ("answer-quality-judge", 12, 12, 0),
        ("product-descriptions", 13, 13, 0),
        ("ticket-sentiment", 16, 16, 0),
    ]
    # The actual cost is every stored success priced from its own usage.
    conn = sqlite3.connect(tmp_path / "state" / "batchops.db")
    rows = conn.execute(
        "select job, model, input_tokens, output_tokens, cache_creation_input_tokens,"
        " cache_read_input_tokens from results where type = 'succeeded'"
    ).fetchall()
    conn.close()
    expected: dict[str, float] = {}
    for job, model, inp, out, write, read in rows:
        price = ctx.prices.price(model, date.today())
        assert price is not None
        cost = (inp * price.input + out * price.output + write * price.cache_write_5m) / 1e6
        expected[job] = expected.get(job, 0.0) + cost + read * price.cache_read / 1e6
    assert {j.name: j.actual_cost_usd for j in report.jobs} == pytest.approx(expected, abs=1e-6)
    assert report.batches_in_flight == ()
    assert report.next_result_expiry is not None
    assert 28.9 * 86400 < report.next_result_expiry.in_seconds <= 29 * 86400
