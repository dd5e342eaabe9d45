"""A spec cannot make batchops read outside the project root, or read what is not a file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from batchops.spec.files import MAX_SPEC_BYTES
from tests.hostile.helpers import load_problems, one_line, spec, write

INPUT = 'prompt = "{{ body }}"\ninput = { path = "data/t.jsonl", key = "id" }\n'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    write(tmp_path, "other/creds.jsonl", '{"id": "a", "body": "secret"}\n')
    write(root, "jobs/data/t.jsonl", '{"id": "a", "body": "hi"}\n')
    monkeypatch.chdir(root)
    return root


def test_jobs_folder_symlinked_to_the_parent(project: Path) -> None:
    (project / "jobs").rename(project / "real")
    os.symlink("..", project / "jobs")
    # Written inside the working directory, so the root is the working directory; resolved, the
    # jobs folder is outside it.
    line = one_line(load_problems(project))
    assert line == (
        f"{project / 'jobs'}: outside the project root (a symlink to {project.parent}) {project}"
    )


def test_jobs_folder_symlinked_to_the_parent_with_the_default_root(project: Path) -> None:
    from batchops.errors import SpecError
    from batchops.spec.model import load_project

    (project / "jobs").rename(project / "real")
    os.symlink("..", project / "jobs")
    with pytest.raises(SpecError) as info:
        load_project(Path("jobs"))
    assert one_line(info.value.problems) == (
        f"jobs: outside the project root (a symlink to {project.parent}) {project}"
    )


def test_data_path_escaping_by_dotdot(project: Path) -> None:
    spec(project, INPUT.replace("data/t.jsonl", "../../other/creds.jsonl"))
    assert one_line(load_problems(project)) == (
        'jobs/a.toml: jobs.j.input.path: "../../other/creds.jsonl" is outside the project root'
    )


def test_spec_file_symlinked_outside_the_root(project: Path, tmp_path: Path) -> None:
    outside = write(tmp_path, "elsewhere/x.toml", "version = 1\n")
    os.symlink(outside, project / "jobs/x.toml")
    spec(project, INPUT)
    assert one_line(load_problems(project)) == (
        f"jobs/x.toml: is outside the project root (a symlink to {outside.resolve()})"
    )


def test_spec_file_symlinked_to_dev_zero(project: Path) -> None:
    os.symlink("/dev/zero", project / "jobs/evil.json")
    spec(project, INPUT)
    assert one_line(load_problems(project)) == (
        "jobs/evil.json: is outside the project root (a symlink to /dev/zero)"
    )


def test_data_file_symlinked_to_dev_zero(project: Path) -> None:
    os.symlink("/dev/zero", project / "jobs/data/z.jsonl")
    spec(project, INPUT.replace("t.jsonl", "z.jsonl"))
    assert one_line(load_problems(project)) == (
        'jobs/a.toml: jobs.j.input.path: "data/z.jsonl" is outside the project root '
        "(a symlink to /dev/zero)"
    )


def _unblock(path: Path) -> threading.Thread:
    """Open the FIFO for writing and close it, so that a test that did block ends anyway."""

    def run() -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass

    return threading.Thread(target=run, daemon=True)


def test_fifo_as_a_spec_does_not_hang(project: Path) -> None:
    os.mkfifo(project / "jobs/f.toml")
    spec(project, INPUT)
    assert one_line(load_problems(project)) == "jobs/f.toml: not a regular file (a FIFO)"


def test_fifo_as_a_data_file_does_not_hang(project: Path) -> None:
    os.mkfifo(project / "jobs/data/f.jsonl")
    spec(project, INPUT.replace("t.jsonl", "f.jsonl"))
    assert one_line(load_problems(project)) == (
        'jobs/a.toml: jobs.j.input.path: "data/f.jsonl": not a file (a FIFO, device or socket)'
    )


def test_fifo_swapped_in_after_validation_does_not_hang(project: Path) -> None:
    from batchops.errors import SpecError
    from batchops.spec.items import iter_items
    from batchops.spec.model import load_project

    spec(project, INPUT)
    (job,) = load_project(Path("jobs")).jobs
    (project / "jobs/data/t.jsonl").unlink()
    os.mkfifo(project / "jobs/data/t.jsonl")
    with pytest.raises(SpecError) as info:
        list(iter_items(job, project))
    assert one_line(info.value.problems) == (
        "jobs/data/t.jsonl: job j: not a regular file (a FIFO)"
    )


def test_spec_over_the_size_ceiling(project: Path) -> None:
    write(project, "jobs/big.toml", b"#" * (MAX_SPEC_BYTES + 1))
    spec(project, INPUT)
    assert one_line(load_problems(project)) == (
        "jobs/big.toml: larger than the 16 MiB limit for a spec file"
    )


def test_jsonl_line_over_the_line_ceiling(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchops.spec import files

    monkeypatch.setattr(files, "MAX_LINE_BYTES", 1024 * 1024)
    monkeypatch.setattr(files.bounded_lines, "__defaults__", (1024 * 1024,))
    write(project, "jobs/data/t.jsonl", b'{"id": "a", "body": "' + b"x" * 2_000_000 + b'"}\n')
    spec(project, INPUT)
    from tests.hostile.helpers import item_problems

    assert one_line(item_problems(project)) == (
        "jobs/data/t.jsonl: line 1: job j: longer than the 1 MiB line limit"
    )
