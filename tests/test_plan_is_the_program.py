"""What `plan` shows is what `apply` does (DESIGN §5, §6.1, §6.6).

Reproduces the review's findings: a batch deleted outside batchops (or whose results expired)
showed "No changes" while apply resent its items; a tampered saved plan was sent as edited.
"""

from __future__ import annotations

import json

import pytest

from batchops.plan import saved as planfile
from tests.projects import apply, context, rows, run_cli, write_project
from tests.test_apply import DAY, states, submissions


def _deleted_before_harvest(tmp_path, emulator, sdk_client, state_location):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)  # sent; ends at once, not harvested yet
    [batch] = list(sdk_client.messages.batches.list())
    sdk_client.messages.batches.delete(batch.id)
    return ctx


def test_a_batch_deleted_outside_batchops_is_planned_as_submits_with_their_cost(
    tmp_path, emulator, emulator_admin, sdk_client, state_location
):
    _deleted_before_harvest(tmp_path, emulator, sdk_client, state_location)
    result = run_cli(
        tmp_path, emulator, "plan", "--detailed-exitcode", "--json", state=state_location
    )
    assert result.returncode == 2, result.stderr
    shape = json.loads(result.stdout)
    [job] = shape["jobs"]
    submits = [a for a in job["actions"] if a["action"] == "submit"]
    assert sorted(a["key"] for a in submits) == ["r1", "r2", "r3"]
    assert {a["reason"] for a in submits} == {"requeue"}
    assert job["estimated_cost_usd"] > 0 and shape["summary"]["requeue"] == 1
    assert [b["action"] for b in shape["batches"]] == ["requeue"]
    # apply sends exactly those: each item a second time, nothing else
    ctx = context(tmp_path, emulator, state=state_location)
    report = apply(ctx, wait=True)
    assert report.submitted == 3 and len(report.requeued) == 1
    assert set(states(ctx).values()) == {"succeeded"}
    assert {submissions(emulator_admin, k) for k in ("r1", "r2", "r3")} == {2}


def test_results_expired_before_harvest_are_planned_as_submits(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)
    emulator_admin.advance_clock(30 * DAY)
    plan, _ = ctx.plan(refresh=True)
    assert plan.changes
    assert sorted((a.key, a.reason) for a in plan.jobs[0].submits) == [
        ("r1", "requeue"),
        ("r2", "requeue"),
    ]
    assert [s.kind for s in plan.batches] == ["requeue"]
    assert plan.estimated_cost_usd > 0
    report = apply(ctx, wait=True)
    assert report.submitted == 2
    assert {submissions(emulator_admin, k) for k in ("r1", "r2")} == {2}


def test_a_saved_plan_runs_its_harvest_and_submit_steps_as_written(
    tmp_path, emulator, emulator_admin, sdk_client, state_location
):
    ctx = _deleted_before_harvest(tmp_path, emulator, sdk_client, state_location)
    plan, desired = ctx.plan(refresh=True)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    report = apply(ctx, plan_file=path)
    assert report.requeued and report.submitted == 3


# -- tampering: refused before any network call


def _saved(tmp_path):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, "http://127.0.0.1:9")  # nothing listens there: no network call
    plan, desired = ctx.plan(refresh=False)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, ctx.prices.source)
    return path


def _lines(path):
    return path.read_text().splitlines()


def _rewrite_digest(lines):
    """Recompute the end line, as someone editing the file on purpose would."""
    import hashlib

    body = "".join(line + "\n" for line in lines[:-1]).encode()
    end = json.loads(lines[-1])
    end["digest"] = "sha256:" + hashlib.sha256(body).hexdigest()
    end["lines"] = len(lines) - 1
    return [*lines[:-1], json.dumps(end)]


def _edit_request(lines):
    request = json.loads(lines[2])
    request["params"]["model"] = "claude-opus-4-1"
    request["params"]["max_tokens"] = 64000
    return _rewrite_digest([lines[0], lines[1], json.dumps(request), *lines[3:]])


def _add_request(lines):
    step = json.loads(lines[1])
    step["step"]["requests"] += 1
    extra = json.loads(lines[2])
    extra.update(key="zzz", custom_id="demo-zzz-aaaaaaaaaaaa")
    return _rewrite_digest([lines[0], json.dumps(step), *lines[2:-1], json.dumps(extra), lines[-1]])


def _remove_request(lines):
    step = json.loads(lines[1])
    step["step"]["requests"] -= 1
    return [lines[0], json.dumps(step), *lines[3:]]  # digest left as it was


def _truncate(lines):
    return lines[:-2]


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_edit_request, "is not what the specs render for job demo item r1"),
        (_add_request, "is not an item of job demo in the specs"),
        (_remove_request, "its content does not match its digest"),
        (_truncate, "truncated (no end line)"),
    ],
    ids=["edited", "added", "removed", "truncated"],
)
def test_a_tampered_saved_plan_is_refused_before_any_network_call(tmp_path, tamper, expected):
    path = _saved(tmp_path)
    path.write_text("".join(line + "\n" for line in tamper(_lines(path))))
    result = run_cli(
        tmp_path, "http://127.0.0.1:9", "apply", "plan.jsonl", env={"BATCHOPS_STATE": "state/x.db"}
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: plan.jsonl: ") and expected in line, line
    assert not (tmp_path / "state" / "x.db").exists()


def test_show_renders_a_saved_plan_like_plan(tmp_path):
    path = _saved(tmp_path)
    shown = run_cli(tmp_path, None, "show", path.name)
    planned = run_cli(tmp_path, None, "plan", "--no-refresh")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == planned.stdout
    as_json = run_cli(tmp_path, None, "show", path.name, "--json")
    assert json.loads(as_json.stdout)["summary"]["submit"] == 3
    markdown = run_cli(tmp_path, None, "show", path.name, "--markdown")
    assert markdown.stdout.startswith("### batchops plan")
