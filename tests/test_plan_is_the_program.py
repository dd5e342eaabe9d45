"""What `plan` shows is what `apply` does (DESIGN §5, §6.1, §6.6).

Reproduces the review's findings: a batch deleted outside batchops (or whose results expired)
showed "No changes" while apply resent its items; a tampered saved plan was sent as edited.
"""

from __future__ import annotations

import json

import pytest

from batchops.errors import PlanError
from batchops.plan import saved as planfile
from tests.projects import apply, context, rewrite_digest, rows, run_cli, write_project
from tests.test_apply import DAY, states, submissions


def _deleted_before_harvest(tmp_path, emulator, sdk_client, state_location):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx)  # sent; ends at once, not harvested yet
    [batch] = list(sdk_client.messages.batches.list())
    sdk_client.messages.batches.delete(batch.id)
    return ctx


def test_a_batch_deleted_outside_batchops_is_planned_as_submits_with_their_cost(
    tmp_path, emulator, emulator_admin, sdk_client, state_location, list_caught_up
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
    tmp_path, emulator, emulator_admin, sdk_client, state_location, list_caught_up
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


def _edit_request(lines):
    request = json.loads(lines[2])
    request["params"]["model"] = "claude-opus-4-1"
    request["params"]["max_tokens"] = 64000
    return rewrite_digest([lines[0], lines[1], json.dumps(request), *lines[3:]])


def _add_request(lines):
    step = json.loads(lines[1])
    step["step"]["requests"] += 1
    extra = json.loads(lines[2])
    extra.update(key="zzz", custom_id="demo-zzz-aaaaaaaaaaaa")
    return rewrite_digest([lines[0], json.dumps(step), *lines[2:-1], json.dumps(extra), lines[-1]])


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


# -- a file of the wrong shape, its digest redone: refused naming the file and line


def _edit_plan(**fields):
    """Set fields of the header's plan, digest redone."""

    def edit(lines):
        header = json.loads(lines[0])
        header["plan"].update(fields)
        return rewrite_digest([json.dumps(header), *lines[1:]])

    return edit


def _edit_line(index, edit_entry):
    """Edit the object on line `index + 1` (the submit step is line 2, its requests follow)."""

    def edit(lines):
        entry = json.loads(lines[index])
        edit_entry(entry)
        return rewrite_digest([*lines[:index], json.dumps(entry), *lines[index + 1 :]])

    return edit


def _first_job(edit_job):
    def edit(header_plan):
        edit_job(header_plan["plan"]["jobs"][0])

    return _edit_line(0, edit)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_edit_plan(job_names="demo"), "line 1: the header's plan: job_names is not a list"),
        (_edit_plan(serial=True), "line 1: the header's plan: serial is not a count"),
        (_edit_plan(serial=-1), "line 1: the header's plan: serial is not a count"),
        (_edit_plan(created_at="soon"), "line 1: the header's plan: created_at is not a time"),
        (_edit_plan(notes="drift"), "line 1: the header's plan: notes is not a list of text"),
        (_edit_plan(jobs={"demo": 1}), "line 1: the header's plan: jobs is not a list"),
        (_edit_plan(prices=["x"]), "line 1: the header's plan: prices is not text"),
        (
            _first_job(lambda job: job["counts"].pop("todo")),
            "line 1: the header's plan: an entry of jobs: counts is not a count of each item",
        ),
        (
            _edit_line(0, lambda header: header.update(plan_id=7)),
            "line 1: the header: plan_id is not text",
        ),
        (
            _edit_line(1, lambda line: line["step"].update(job=["demo"])),
            "line 2: the submit step: job is not text",
        ),
        (
            _edit_line(1, lambda line: line["step"].update(betas="abc")),
            "line 2: the submit step: betas is not a list of text",
        ),
        (
            _edit_line(1, lambda line: line["step"].update(requests="3")),
            "line 2: the submit step: requests is not a count",
        ),
        (_edit_line(1, lambda line: line.update(step=[])), "line 2: not a plan step"),
        (_edit_line(2, lambda line: line.update(reason=1)), "line 3: bad reason"),
        (_edit_line(2, lambda line: line.update(attempt=True)), "line 3: bad attempt number"),
    ],
    ids=[
        "job_names-a-string",
        "serial-a-bool",
        "serial-negative",
        "created_at",
        "notes-a-string",
        "jobs-an-object",
        "prices-a-list",
        "counts-short",
        "plan_id-a-number",
        "job-a-list",
        "betas-a-string",
        "requests-a-string",
        "step-a-list",
        "reason-a-number",
        "attempt-a-bool",
    ],
)
def test_a_saved_plan_of_the_wrong_shape_is_one_error_naming_it(tmp_path, tamper, expected):
    """The digest proves a file whole, not that batchops wrote it: each of these ended in an
    AttributeError, TypeError or ValueError, or (job_names) was read letter by letter."""
    path = _saved(tmp_path)
    path.write_text("".join(line + "\n" for line in tamper(_lines(path))))
    with pytest.raises(PlanError) as refused:
        context(tmp_path, None).load_plan(path)
    assert str(refused.value).startswith(f"{path}: {expected}"), refused.value
