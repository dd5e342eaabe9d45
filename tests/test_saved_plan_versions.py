"""A plan file written by an earlier batchops: it has no record of what its refresh saw, so apply
cannot make the same plan again when the plan holds steps only a refresh makes. It is refused as
made by an older batchops, not as edited, and told what to do."""

from __future__ import annotations

import json

from batchops.plan import saved as planfile
from tests.projects import apply, context, refused, write_edited


def _older_plan(ctx, tmp_path, kinds):
    """A plan made now (its steps of `kinds`), saved as the batchops before `observed` and
    `replace` wrote it."""
    plan, desired = ctx.plan(refresh=True, keep_requests=True)
    assert [s.kind for s in plan.steps] == kinds
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    _as_older(path)
    return path


def _as_older(path):
    """The plan file as the batchops before `observed` and `replace` wrote it."""
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    del header["observed"], header["replace"]
    lines[0] = json.dumps(header)
    write_edited(path, lines)


def test_an_older_plan_with_a_harvest_it_saw_is_refused_as_older(
    tmp_path, emulator, ended_unharvested
):
    ctx = context(tmp_path, emulator)
    path = _older_plan(ctx, tmp_path, ["harvest"])
    assert refused(ctx, plan_file=path) == (
        f"{path}: written by an older batchops, it does not say what its refresh saw, so its "
        "steps cannot be checked; make a new plan"
    )
    assert ctx.reader().batch(ended_unharvested).harvested_at is None  # nothing ran


def test_an_older_plan_without_refresh_made_steps_still_applies(tmp_path, emulator):
    from tests.projects import rows, write_project

    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator)
    path = _older_plan(ctx, tmp_path, ["submit"])
    report = apply(ctx, plan_file=path, wait=True)
    assert len(report.batches_created) == 1
    assert {r.key for r in ctx.reader().item_records() if r.outcome == "succeeded"} == {"r1", "r2"}
