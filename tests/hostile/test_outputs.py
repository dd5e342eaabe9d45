"""An output path can never be the state, a spec, a data file, `.git`, a folder, or under a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchops.spec.model import check_outputs, load_project
from tests.hostile.helpers import load_problems, one_line, spec, write

JOB = 'prompt = "{{ body }}"\ninput = { path = "data/t.jsonl", key = "id" }\n'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "jobs/data/t.jsonl", '{"id": "a", "body": "hi"}\n')
    write(tmp_path, "state/emulator.db", b"SQLite format 3\x00")
    (tmp_path / ".git").mkdir()
    write(tmp_path, ".git/config", "[core]\n")
    return tmp_path


def output(project: Path, path: str) -> None:
    spec(project, JOB + f'output = {{ path = "{path}" }}\n')


STATE = [Path("state/emulator.db")]


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_output_cannot_replace_the_state_file(project: Path, suffix: str) -> None:
    output(project, f"../state/emulator.db{suffix}")
    assert one_line(load_problems(project, protected=STATE)) == (
        f"jobs/a.toml: jobs.j.output.path: state/emulator.db{suffix} is also a protected file "
        f"(state/emulator.db{suffix})"
    )


def test_output_cannot_reach_the_state_through_a_symlink(project: Path) -> None:
    (project / "jobs/out").mkdir()
    (project / "jobs/out/x.jsonl").symlink_to(project / "state/emulator.db")
    output(project, "out/x.jsonl")
    assert one_line(load_problems(project, protected=[project / "state/emulator.db"])) == (
        "jobs/a.toml: jobs.j.output.path: state/emulator.db is also a protected file "
        "(state/emulator.db)"
    )


def test_output_cannot_be_inside_git(project: Path) -> None:
    output(project, "../.git/config")
    assert one_line(load_problems(project)) == (
        "jobs/a.toml: jobs.j.output.path: .git/config is inside .git"
    )


def test_output_cannot_be_the_project_settings(project: Path) -> None:
    output(project, "../batchops.toml")
    assert one_line(load_problems(project)) == (
        "jobs/a.toml: jobs.j.output.path: batchops.toml is also the project settings"
    )


def test_output_cannot_be_a_spec_or_a_data_file(project: Path) -> None:
    write(project, "jobs/b.toml", "version = 1\n")
    output(project, "b.toml")
    assert one_line(load_problems(project)) == (
        "jobs/a.toml: jobs.j.output.path: jobs/b.toml is also a spec file"
    )
    output(project, "data/t.jsonl")
    assert one_line(load_problems(project)) == (
        "jobs/a.toml: jobs.j.output.path: jobs/data/t.jsonl is also the input of job j"
    )


def test_output_that_is_a_folder(project: Path) -> None:
    output(project, "data")
    assert one_line(load_problems(project)) == (
        "jobs/a.toml: jobs.j.output.path: jobs/data is a folder"
    )


def test_output_under_a_file(project: Path) -> None:
    output(project, "data/t.jsonl/out.jsonl")
    assert one_line(load_problems(project)) == (
        "jobs/a.toml: jobs.j.output.path: jobs/data/t.jsonl/out.jsonl is under "
        "jobs/data/t.jsonl, which is a file"
    )


def test_output_in_a_folder_still_to_make_is_fine(project: Path) -> None:
    output(project, "out/deep/er/x.jsonl")
    (job,) = load_project(Path("jobs"), protected=STATE).jobs
    assert job.output is not None
    assert job.output.path == project.resolve() / "jobs/out/deep/er/x.jsonl"


def test_check_outputs_on_a_loaded_project(project: Path) -> None:
    output(project, "../state/emulator.db")
    loaded = load_project(Path("jobs"))  # nothing protected: loads
    assert check_outputs(loaded, [project / "state/emulator.db"]) == [
        "jobs/a.toml: jobs.j.output.path: state/emulator.db is also a protected file "
        "(state/emulator.db)"
    ]
