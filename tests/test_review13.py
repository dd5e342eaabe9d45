"""Review 13 (second read of reviews 10-12): each test reproduces one defect still there."""

from __future__ import annotations

import os

from tests.test_rows_cache import context, project  # noqa: F401  (the fixture)


def test_a_planted_symlink_at_the_rows_files_temporary_path_is_not_written_through(
    project,  # noqa: F811
):
    """`.batchops-cache/` is in the project, so a pull request can commit it. `_save` refuses a
    symlinked directory or rows file, but opens its temporary file `.<job>.jsonl.<pid>.tmp`
    with a plain `open("wb")`, which follows a symlink there: a pull request planting one per
    pid (32768 by default) has `plan` in CI overwrite any file the runner may write. The
    temporary file must be made anew (O_EXCL / O_NOFOLLOW), or the rows not kept, and the
    file outside the project left as it was."""
    victim = project.parent / "outside-the-project.txt"
    victim.write_text("precious\n", encoding="utf-8")
    rows_dir = project / ".batchops-cache" / "rows"
    rows_dir.mkdir(parents=True)
    os.symlink(victim, rows_dir / f".tickets.jsonl.{os.getpid()}.tmp")

    context(project).plan(refresh=False)

    assert victim.read_text(encoding="utf-8") == "precious\n"


def test_a_planted_symlink_at_a_saved_plans_temporary_path_is_not_written_through(
    project,  # noqa: F811
    monkeypatch,
):
    """The same for `plan -o plan.jsonl` in CI: its temporary file `.plan.jsonl.<pid>.tmp` sits
    beside the plan file, in the checkout a pull request fills."""
    from click.testing import CliRunner

    from batchops.cli import cli

    victim = project.parent / "outside-the-project.txt"
    victim.write_text("precious\n", encoding="utf-8")
    os.symlink(victim, project / f".plan.jsonl.{os.getpid()}.tmp")
    monkeypatch.chdir(project)
    done = CliRunner().invoke(cli, ["plan", "--no-refresh", "-o", "plan.jsonl"])
    assert done.exit_code == 0, done.output
    assert victim.read_text(encoding="utf-8") == "precious\n"
    assert (project / "plan.jsonl").read_text().startswith('{"kind":"batchops-plan"')
