"""Review 17 (second reader): defects found using batchops as its users do, against the emulator.

Each test reproduces one defect and fails on the code it was written against.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.projects import rows, run_cli, write_project


def test_results_to_a_fifo_outside_the_project_is_not_replaced_by_a_file(tmp_path: Path) -> None:
    """`batchops results demo -o PIPE`, PIPE a named pipe outside the project (the same path as
    `-o /dev/stdout` or `-o /dev/null` in a CI container running as root): the user sees
    "Wrote 2 rows of demo to …" and exit 0, but the pipe's reader got nothing and the pipe is
    gone, replaced by a regular file (run as root on `/dev/null` it replaces the device node).
    Expected: the pipe is written through, or refused with one error line, as the same pipe
    inside the project is ("cannot write results there: it is not a regular file"): never
    replaced. `check_output_path` returns early for a path outside the project root without
    checking it is a regular file, and `atomic_write` renames its temporary file over it."""
    project = tmp_path / "project"
    write_project(project, rows(2))
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so a write through works
    try:
        run_cli(project, None, "results", "demo", "-o", str(pipe), timeout=60)
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(pipe.lstat().st_mode)


def test_results_to_a_long_but_legal_file_name_is_written(tmp_path: Path) -> None:
    """`batchops results demo -o NAME`, NAME 246 characters (legal: the file system takes up
    to 255, and `touch NAME` makes it): the user sees `Error: unexpected OSError: [Errno 36]
    File name too long: '….jsonl.<random>.tmp' (a bug in batchops, …)` and exit 1, about a
    file they never named. Expected: the file written (exit 0), as for any other legal name.
    `atomic_write` makes its temporary file with `files.new_temp` as `.{name}.<16 hex>.tmp`,
    22 characters longer than the name asked for, and nothing turns the OSError into a
    BatchopsError; a shorter temporary name (or the name cut) would do."""
    project = tmp_path / "project"
    write_project(project, rows(2))
    out = tmp_path / ("r" * 240 + ".jsonl")
    assert len(out.name) <= 255
    result = run_cli(project, None, "results", "demo", "-o", str(out), timeout=60)
    assert result.stderr == ""
    assert result.returncode == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


def test_apply_writes_a_spec_output_with_a_long_but_legal_name(
    tmp_path: Path, emulator: str
) -> None:
    """A spec whose `output.path` names a legal 246-character file: `validate` passes, `apply
    --yes --wait` sends every request and harvests it (money spent), then ends with `Error:
    unexpected OSError: [Errno 36] File name too long: '….jsonl.<random>.tmp' (a bug in
    batchops, …)` instead of its summary and the file. Expected: the output written and exit 0
    (or, if the name cannot be written, `validate` refusing it before anything is sent, as
    guarantee 7 asks). Same cause as the export above: `results.atomic_write` /
    `files.new_temp` make a temporary name 22 characters longer than the output's."""
    name = "r" * 240 + ".jsonl"
    write_project(tmp_path, rows(2), extra=f'output = {{ path = "out/{name}" }}\n')
    result = run_cli(tmp_path, emulator, "apply", "--yes", "--wait", "--poll-interval", "0.05")
    assert "unexpected" not in result.stderr
    assert result.returncode == 0
    assert len((tmp_path / "jobs" / "out" / name).read_text().splitlines()) == 2


def test_results_through_a_symlink_write_its_target_and_a_full_device_is_one_line(
    tmp_path: Path,
) -> None:
    """Beside the pipe: a symlink named by `-o` is written through (its target gets the rows,
    the link stays), and a device that takes no bytes (`/dev/full`) is one error line, not an
    'unexpected OSError'."""
    project = tmp_path / "project"
    write_project(project, rows(2))
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    made = run_cli(project, None, "results", "demo", "-o", str(link), timeout=60)
    assert made.returncode == 0, made.stderr
    assert link.is_symlink() and len(target.read_text().splitlines()) == 2
    if Path("/dev/full").exists():
        full = run_cli(project, None, "results", "demo", "-o", "/dev/full", timeout=60)
        assert full.returncode == 1
        assert full.stderr.splitlines() == [
            "Error: /dev/full: cannot write: No space left on device"
        ]
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
