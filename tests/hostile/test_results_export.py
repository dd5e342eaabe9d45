"""`results`: CSV cells a spreadsheet would run are neutralised; exports never land on the state;
a temporary file left by a killed export is cleaned up by the next one."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.commands.results import atomic_write, remove_stale_temps
from tests.projects import write_project

HOSTILE = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "plain"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, [{"id": v, "text": v} for v in HOSTILE])
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_csv_neutralises_formulas_in_keys_and_input_columns(project: Path) -> None:
    result = run("results", "demo", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    header, *rows = csv_rows(result.stdout)
    key, text = header.index("key"), header.index("input.text")
    assert [r[key] for r in rows] == ["'" + v for v in HOSTILE[:4]] + ["plain"]
    assert [r[text] for r in rows] == ["'" + v for v in HOSTILE[:4]] + ["plain"]
    assert [r[header.index("input.id")] for r in rows] == [r[key] for r in rows]


def test_raw_csv_writes_cells_as_they_are(project: Path) -> None:
    result = run("results", "demo", "--format", "csv", "--raw-csv")
    assert result.exit_code == 0, result.stderr
    header, *rows = csv_rows(result.stdout)
    assert [r[header.index("key")] for r in rows] == HOSTILE


def test_raw_csv_with_another_format_is_an_error(project: Path) -> None:
    result = run("results", "demo", "--raw-csv")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: --raw-csv applies to --format csv only, not jsonl\n"


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("state/batchops.db", "is also a protected file (state/batchops.db)"),
        ("state/batchops.db-wal", "is also a protected file (state/batchops.db-wal)"),
        ("jobs/demo.toml", "is also a spec file"),
        ("jobs/data/rows.jsonl", "is also the input of job demo"),
        (".git/config", "is inside .git"),
        ("batchops.toml", "is also the project settings"),
    ],
)
def test_results_file_is_checked_like_an_output(project: Path, target: str, why: str) -> None:
    (project / "state").mkdir()
    (project / ".git").mkdir()
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    result = run("results", "demo", "-o", target)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: {target}: cannot write results there: it {why}\n"
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before


def test_results_file_outside_the_root_may_not_be_the_state(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    state = elsewhere / "team.db"
    result = run("--state", str(state), "results", "demo", "-o", str(state))
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: {state}: refusing to write over the state or into .git\n"
    assert not state.exists()
    ok = run("results", "demo", "-o", str(elsewhere / "fine.jsonl"))
    assert ok.exit_code == 0, ok.stderr
    assert len((elsewhere / "fine.jsonl").read_text().splitlines()) == len(HOSTILE)


def test_a_killed_export_leaves_a_temp_file_the_next_write_removes(project: Path) -> None:
    out = project / "out.jsonl"
    stale = project / ".out.jsonl.k1ll3d__.tmp"
    fresh = project / ".out.jsonl.running.tmp"  # another export may still be writing it
    other = project / ".other.jsonl.k1ll3d__.tmp"  # not ours
    for p in (stale, fresh, other):
        p.write_bytes(b"half")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(other, (hour_ago, hour_ago))
    result = run("results", "demo", "-o", "out.jsonl")
    assert result.exit_code == 0, result.stderr
    assert not stale.exists()
    assert fresh.exists() and other.exists()
    assert len(out.read_text().splitlines()) == len(HOSTILE)


def test_remove_stale_temps_keeps_young_files_and_folders(tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    (tmp_path / ".x.csv.dir.tmp").mkdir()
    young = tmp_path / ".x.csv.abc.tmp"
    young.write_bytes(b"")
    assert remove_stale_temps(target) == []
    assert remove_stale_temps(target, older_than=-1) == [young]
    assert (tmp_path / ".x.csv.dir.tmp").is_dir()


def test_atomic_write_leaves_no_temp_file_when_it_fails(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    with pytest.raises(RuntimeError), atomic_write(out) as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
