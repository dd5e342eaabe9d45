"""Review 9 (second reader): defects found, each test failing on the code as reviewed."""

from __future__ import annotations

import json
from datetime import timedelta

import anthropic
import pytest

from batchops.clock import iso, parse_time
from batchops.plan import saved as planfile
from batchops.plan.actions import Prune
from batchops.plan.serialize import step_dict
from tests.projects import apply, context, refused, rows, run_cli, write_edited, write_project
from tests.test_apply import submissions


def test_a_saved_plan_cannot_delete_a_batch_on_its_word_that_the_results_expire_soon(
    tmp_path, emulator, emulator_admin, sdk_client
):
    """`check_steps` takes `results_expire_at` / `created_at` of the file's `observed` batches
    as the truth, and `lost_claims` asked the API again only for requeues. A file whose header
    says a freshly harvested batch (28+ days of retention left) expires in 30 h, with a prune
    step added (digest made anew), passes every check and the batch is deleted remotely: a
    batch that should not be deleted, on the file's word alone (its remote copy, which
    `state recover` rebuilds from, is gone four weeks early)."""
    write_project(tmp_path, rows(3))
    ctx = context(tmp_path, emulator)
    apply(ctx, wait=True)
    [batch] = ctx.reader().batches()
    assert batch.harvested_at is not None
    plan, desired = ctx.plan(refresh=True, keep_requests=True)
    assert plan.steps == () and plan.observed == ()  # nothing to do: not even polled
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)

    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    created = parse_time(header["plan"]["created_at"])
    seen = planfile._record_dict(batch)
    seen["results_expire_at"] = iso(created + timedelta(hours=30))
    seen["created_at"] = iso(created + timedelta(hours=30) - timedelta(days=29))
    header["observed"] = [seen]
    lines[0] = json.dumps(header)
    step = Prune(batch.id, "demo", "results expire in 30 h: delete remotely")
    lines.insert(1, json.dumps({"step": step_dict(step)}))
    write_edited(path, lines)

    assert refused(ctx, plan_file=path) == (
        f"{path}: batch {batch.id} (demo) is not near the end of its results' retention as the "
        "plan says (the API, asked again, does not say so); refusing the plan; make a new plan"
    )
    try:
        sdk_client.messages.batches.retrieve(batch.id)
    except anthropic.NotFoundError:
        pytest.fail(f"batch {batch.id}, harvested minutes ago, was deleted remotely")


def test_apply_of_a_saved_plan_with_job_naming_another_job_does_not_run_it_silently(
    tmp_path, emulator, emulator_admin
):
    """`apply FILE --job demo` of a plan made with `--job other`: the `--job` given to apply is
    dropped without a word (`job_names = list(saved.plan.job_names or [])`) and job `other`
    is sent. Now that `apply FILE --replace` is read and checked against the plan, `--job` is
    the one option of `apply` still silently ignored with a plan file; it should be refused
    (or checked like --replace), not spend money on a job the user did not name."""
    write_project(tmp_path, rows(3))
    (tmp_path / "jobs" / "other.toml").write_text(
        "version = 1\n\n[jobs.other]\n"
        'model = "claude-haiku-4-5"\nmax_tokens = 16\n'
        'prompt = "Other: {{ text }}"\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n',
        encoding="utf-8",
    )
    ctx = context(tmp_path, emulator)
    plan, desired = ctx.plan(["other"], refresh=True, keep_requests=True)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    assert refused(ctx, job_names=["demo"], plan_file=path) == (
        f"{path}: --job demo is not what the plan was made for (other): a saved plan runs the "
        "jobs it was made for"
    )
    apply(ctx, job_names=["other"], plan_file=path)  # the jobs it was made for: it runs
    assert emulator_admin.stats()["batches_created"] == 1


def test_plan_o_with_replace_says_how_to_apply_it(tmp_path, emulator, emulator_admin):
    """The line after `plan --replace … -o FILE` names the `--replace` apply needs, and
    that command applies the plan; without it, apply is refused (exit 1, nothing sent)."""
    write_project(tmp_path, rows(2))
    apply(context(tmp_path, emulator), wait=True)
    result = run_cli(tmp_path, emulator, "plan", "--replace", "demo:r2", "-o", "plan.jsonl")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "Saved this plan to plan.jsonl: apply it with `batchops apply plan.jsonl --replace "
        "demo:r2`."
    )
    refused_run = run_cli(tmp_path, emulator, "apply", "plan.jsonl")
    assert (refused_run.returncode, refused_run.stderr) == (
        1,
        "Error: plan.jsonl: the plan sends demo:r2 again on purpose (plan --replace); apply it "
        "with the same --replace to confirm\n",
    )
    applied = run_cli(tmp_path, emulator, "apply", "plan.jsonl", "--replace", "demo:r2")
    assert applied.returncode == 0, applied.stderr
    assert (submissions(emulator_admin, "r1"), submissions(emulator_admin, "r2")) == (1, 2)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        (
            "observed",
            [{"id": "msgbatch_1", "created_at": "yesterday"}],
            "line 1: the header: an entry of observed: created_at is not a time: the file is "
            "damaged",
        ),
        (
            "replace",
            "demo:r1",
            "line 1: the header: replace is not a list of [job, key] pairs: the file is damaged",
        ),  # fmt: skip
    ],
)
def test_a_damaged_header_field_is_one_error_line(tmp_path, field, value, error):
    """What a saved plan's header says of its refresh and its `--replace` items is read as
    batchops writes it, or refused: one `Error:` line naming the file and line, exit 1, no
    network call (nothing listens at the API's address), the state not written."""
    write_project(tmp_path, rows(2))
    ctx = context(tmp_path, "http://127.0.0.1:9")
    plan, desired = ctx.plan(refresh=False, keep_requests=True)
    path = tmp_path / "plan.jsonl"
    planfile.save(plan, desired, path, None)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header[field] = value
    lines[0] = json.dumps(header)
    write_edited(path, lines)
    result = run_cli(tmp_path, "http://127.0.0.1:9", "apply", "plan.jsonl")
    assert (result.returncode, result.stderr) == (1, f"Error: plan.jsonl: {error}\n")
    assert not (tmp_path / "state").exists()
