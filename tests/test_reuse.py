"""Never pay twice for an answer the state holds: results are found by fingerprint (issue 14).

End to end against the emulator: a revert, a rename and another job asking the very same request
reuse the stored result (nothing is sent); identical requests of two jobs in one apply are sent
once and fanned out; `reuse = false` opts out; a saved plan carries its reuse steps.
"""

from __future__ import annotations

import json

from batchops.emulator import EmulatorAdmin
from batchops.plan.actions import Reuse, ReuseItem
from batchops.plan.saved import load, save
from tests import statedb
from tests.projects import apply, context, rows, write_project, write_rows


def sent(admin: EmulatorAdmin) -> int:
    return sum(admin.stats()["submissions"].values())


def second_job(root, name: str = "copy", extra: str = "") -> None:
    """A job `name` asking exactly what `demo` asks (same model, tokens, prompt, data)."""
    (root / "jobs" / f"{name}.toml").write_text(
        "version = 1\n\n"
        f"[jobs.{name}]\n"
        'model = "claude-haiku-4-5"\n'
        "max_tokens = 16\n"
        'prompt = "Classify: {{ text }}"\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n' + extra,
        encoding="utf-8",
    )


def texts(ctx, job: str) -> dict[str, str | None]:
    return {
        key: text
        for key, text in statedb.rows(
            ctx.settings.state_path,
            "select i.key, r.text from items i left join results r on r.id = i.result_id"
            " where i.job = ?",
            (job,),
        )
    }


def test_a_reverted_row_reuses_its_stored_result(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    first = texts(ctx, "demo")
    write_rows(tmp_path, rows(3, r2="edited text"))
    apply(ctx, wait=True)
    before = sent(emulator_admin)

    write_rows(tmp_path, rows(3))  # the edit reverted
    plan, _ = ctx.plan(refresh=False)
    [job] = plan.jobs
    assert job.submits == []
    [reuse] = job.reuses
    assert (reuse.key, reuse.reason) == ("r2", "same request answered before")
    assert reuse.result_id is not None and reuse.saved_usd > 0
    assert plan.summary()["reuse"] == 1 and plan.saved_usd == round(reuse.saved_usd, 6)
    report = apply(ctx, wait=True)
    assert (report.submitted, report.reused) == (0, 1)
    assert sent(emulator_admin) == before
    assert texts(ctx, "demo") == first
    again, _ = ctx.plan(refresh=False)
    assert not again.changes and again.jobs[0].counts["succeeded"] == 3


def test_a_renamed_job_reuses_every_result(tmp_path, emulator, emulator_admin, state_location):
    write_project(tmp_path, rows(4))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    first = texts(ctx, "demo")
    before = sent(emulator_admin)
    spec = tmp_path / "jobs" / "demo.toml"
    spec.write_text(spec.read_text().replace("[jobs.demo]", "[jobs.renamed]"))

    plan, _ = ctx.plan(refresh=False)
    renamed = plan.job("renamed")
    assert renamed is not None and len(renamed.reuses) == 4 and renamed.submits == []
    report = apply(ctx, wait=True)
    assert (report.submitted, report.reused) == (0, 4)
    assert sent(emulator_admin) == before
    assert texts(ctx, "renamed") == first


def test_another_job_asking_the_same_request_reuses_it(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    before = sent(emulator_admin)
    second_job(tmp_path)
    write_rows(tmp_path, rows(4))  # r4 is new for both jobs: sent once, for demo
    report = apply(ctx, wait=True)
    assert report.submitted == 1
    assert sent(emulator_admin) == before + 1
    assert texts(ctx, "copy") == texts(ctx, "demo")
    assert len(texts(ctx, "copy")) == 4


def test_identical_requests_of_two_jobs_in_one_apply_are_sent_once_and_fanned_out(
    tmp_path, emulator, emulator_admin, state_location
):
    write_project(tmp_path, rows(3))
    second_job(tmp_path)
    ctx = context(tmp_path, emulator, state=state_location)
    plan, _ = ctx.plan(refresh=False)
    demo, copy = plan.job("demo"), plan.job("copy")
    assert copy is not None and demo is not None
    assert len(copy.submits) == 3 and demo.submits == []  # jobs are planned in name order
    assert [r.result_id for r in demo.reuses] == [None, None, None]
    assert demo.reuses[0].reason == "same request as copy r1: takes its result once harvested"
    assert demo.counts["pending"] == 3 and plan.saved_usd > 0
    assert not [s for s in plan.steps if isinstance(s, Reuse)]  # nothing to record yet

    report = apply(ctx, wait=True)
    assert (report.submitted, report.reused) == (3, 3)
    assert sent(emulator_admin) == 3
    assert texts(ctx, "demo") == texts(ctx, "copy")
    final = report.final_plan
    assert final is not None and not final.changes
    assert {j.name: j.counts["succeeded"] for j in final.jobs} == {"copy": 3, "demo": 3}


def test_reuse_false_opts_a_job_out(tmp_path, emulator, emulator_admin, state_location):
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    second_job(tmp_path, extra="reuse = false\n")
    plan, _ = ctx.plan(refresh=False)
    copy = plan.job("copy")
    assert copy is not None and copy.reuses == [] and len(copy.submits) == 2
    report = apply(ctx, wait=True)
    assert (report.submitted, report.reused) == (2, 0)
    assert sent(emulator_admin) == 4


def test_keys_of_one_job_asking_the_same_request_are_each_sent(
    tmp_path, emulator, emulator_admin, state_location
):
    # several samples of one prompt, one key each: not collapsed into one answer
    write_project(tmp_path, [{"id": f"s{i}", "text": "same"} for i in range(3)])
    ctx = context(tmp_path, emulator, state=state_location)
    report = apply(ctx, wait=True)
    assert (report.submitted, report.reused) == (3, 0)


def test_a_saved_plan_carries_its_reuse_steps(tmp_path, emulator, emulator_admin, state_location):
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    second_job(tmp_path)
    plan, desired = ctx.plan(refresh=False)
    path = tmp_path / "plan.jsonl"
    save(plan, desired, path, None)
    header = json.loads(path.read_text().splitlines()[0])
    assert header["plan"]["summary"]["reuse"] == 2
    assert header["plan"]["summary"]["saved_usd"] > 0
    loaded = load(path, lambda names: ctx.desired(names))
    [step] = [s for s in loaded.plan.steps if isinstance(s, Reuse)]
    assert [i.key for i in step.items] == ["r1", "r2"]
    assert all(isinstance(i, ReuseItem) and i.result_id for i in step.items)
    assert loaded.plan.job("copy").saved_usd == plan.job("copy").saved_usd
    before = sent(emulator_admin)
    report = apply(ctx, plan_file=path)
    assert report.reused == 2 and sent(emulator_admin) == before
    assert texts(ctx, "copy") == texts(ctx, "demo")


def test_a_saved_plan_whose_reuse_was_edited_is_refused(
    tmp_path, emulator, emulator_admin, state_location
):
    import hashlib

    import pytest

    from batchops.errors import PlanError

    write_project(tmp_path, rows(1))
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, wait=True)
    second_job(tmp_path)
    plan, desired = ctx.plan(refresh=False)
    path = tmp_path / "plan.jsonl"
    save(plan, desired, path, None)
    lines = path.read_text().splitlines()
    lines = [
        line.replace('"key":"r1"', '"key":"r9"') if '"reuse"' in line else line
        for line in lines[:-1]
    ]
    body = "".join(line + "\n" for line in lines)
    digest = "sha256:" + hashlib.sha256(body.encode()).hexdigest()
    end = json.dumps({"kind": "batchops-plan-end", "lines": len(lines), "digest": digest})
    path.write_text(body + end + "\n")
    with pytest.raises(PlanError, match="reuse of .* is not for an item of job copy"):
        load(path, lambda names: ctx.desired(names))


def test_a_job_outside_the_job_scope_is_never_paid_twice(
    tmp_path, emulator, emulator_admin, state_location
):
    """`apply --job copy`: demo (outside the scope) asked the same requests. Its stored results
    are reused; a request still in flight for it is waited for, not sent again, and the wait
    does not hold `--wait` (only an apply of demo harvests demo's batch)."""
    write_project(tmp_path, rows(3))
    second_job(tmp_path)
    ctx = context(tmp_path, emulator, state=state_location)
    apply(ctx, job_names=["demo"], wait=True)  # r1-r3 answered for demo
    write_rows(tmp_path, rows(4))
    apply(ctx, job_names=["demo"])  # r4 sent for demo, not harvested yet
    assert sent(emulator_admin) == 4

    plan, _ = ctx.plan(job_names=["copy"], refresh=False)
    copy = plan.job("copy")
    assert copy is not None and copy.submits == []
    stored = [r for r in copy.reuses if r.result_id is not None]
    [waiting] = [r for r in copy.reuses if r.result_id is None]
    assert len(stored) == 3 and waiting.key == "r4"
    assert waiting.reason == (
        "same request as demo r4, in flight for a job outside this run: takes its result once "
        "an apply of demo harvests it"
    )
    assert (copy.counts["pending"], copy.waiting_outside) == (1, 1)

    report = apply(ctx, job_names=["copy"], wait=True, timeout=20)
    assert (report.submitted, report.reused, report.timed_out) == (0, 3, False)
    assert sent(emulator_admin) == 4
    apply(ctx, wait=True)  # demo's apply harvests r4; copy takes it
    assert sent(emulator_admin) == 4
    assert texts(ctx, "copy") == texts(ctx, "demo") and len(texts(ctx, "copy")) == 4
