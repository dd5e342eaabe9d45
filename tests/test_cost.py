"""Truthful estimates, packing for cache hits and `cache = "auto"` (issue 14)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.commands.status import status
from batchops.plan.actions import SubmitItem
from batchops.plan.diff import BatchLimits, make_plan, split
from batchops.pricing import (
    BATCH_HIT_RATE_FLOOR,
    ItemEstimate,
    PriceTable,
    batch_cost,
    cache_min_tokens,
    estimate_item,
    estimate_request,
    expected_output,
)
from batchops.spec import cache as rows_cache
from batchops.spec import caching
from batchops.spec.desired import DesiredItem, DesiredJob
from tests import statedb
from tests.projects import apply, context, rows, write_project

TODAY = date(2026, 11, 21)
HAIKU = PriceTable.load().price("claude-haiku-4-5", TODAY)
RUBRIC = "Grade the answer against the rubric. " * 600  # 22,200 characters


def cached_params(question: str, ttl: str = "1h") -> dict:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 10,
        "system": [
            {"type": "text", "text": RUBRIC, "cache_control": {"type": "ephemeral", "ttl": ttl}}
        ],
        "messages": [{"role": "user", "content": question}],
    }


# ---------------------------------------------------------------- estimates
def test_the_item_estimate_keeps_the_ceiling_and_adds_the_expected_figure():
    params = cached_params("q" * 300)
    estimate = estimate_item(params, HAIKU)
    assert estimate.high == pytest.approx(estimate_request(params).cost(HAIKU))
    assert estimate.expected < estimate.high
    assert estimate.prefix is not None and estimate.prefix.startswith("sha256:")
    # reading the 22,200-character prefix instead of writing it at the 1-hour price
    assert estimate.expected_saving == pytest.approx(5550 * (1.0 - 0.05) / 1e6)
    assert estimate.high_saving == pytest.approx(7400 * (1.0 - 0.05) / 1e6)
    assert estimate_item(cached_params("other"), HAIKU).prefix == estimate.prefix
    assert estimate_item(cached_params("q", ttl="5m"), HAIKU).prefix != estimate.prefix


def test_a_shared_prefix_is_one_write_and_reads_for_the_rest_of_the_batch():
    estimates = [estimate_item(cached_params(f"question {i}"), HAIKU) for i in range(100)]
    expected, high = batch_cost(estimates, [e.high for e in estimates])
    one = estimates[0]
    assert expected == pytest.approx(sum(e.expected for e in estimates) - 99 * one.expected_saving)
    assert high == pytest.approx(
        sum(e.high for e in estimates) - BATCH_HIT_RATE_FLOOR * 99 * one.high_saving
    )
    # the complaint: caching must not raise the estimate above not caching (expected)
    plain = [
        estimate_item({**cached_params(f"question {i}"), "system": RUBRIC}, HAIKU)
        for i in range(100)
    ]
    assert expected < sum(e.expected for e in plain) / 5


def test_plan_budget_gates_on_the_ceiling_and_shows_the_range(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(
        tmp_path,
        rows(30),
        extra='system = [{ type = "text", text = "'
        + RUBRIC
        + '", cache_control = { type = "ephemeral", ttl = "1h" } }]\nbudget_usd = 0.0001\n',
    )
    result = CliRunner().invoke(cli, ["plan", "--no-refresh"])
    assert result.exit_code == 1
    assert "exceeds its budget_usd $0.0001" in result.output
    result = CliRunner().invoke(cli, ["plan", "--no-refresh", "--json"])
    summary = __import__("json").loads(result.stdout)["summary"]
    assert summary["expected_cost_usd"] < summary["estimated_cost_usd"]


def test_a_budget_with_an_unpriced_model_is_an_error_naming_the_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = write_project(tmp_path, rows(2), extra="budget_usd = 1.0\n")
    spec = jobs / "demo.toml"
    spec.write_text(spec.read_text().replace("claude-haiku-4-5", "claude-haiku-9"))
    result = CliRunner().invoke(cli, ["plan", "--no-refresh"])
    assert result.exit_code == 1
    assert result.output.startswith(
        "Error: job demo: model 'claude-haiku-9' has no price in batchops price table as of "
        '2026-11-21, so budget_usd cannot be checked; add a row `[models."claude-haiku-9"]` '
        "with `input` and `output`"
    )
    # a prices file with the row makes it plannable
    (tmp_path / "p.toml").write_text('[models."claude-haiku-9"]\ninput = 1.0\noutput = 5.0\n')
    assert CliRunner().invoke(cli, ["--prices", "p.toml", "plan", "--no-refresh"]).exit_code == 0
    # without a budget the estimate only notes what it leaves out, as before
    spec.write_text(spec.read_text().replace("budget_usd = 1.0\n", ""))
    result = CliRunner().invoke(cli, ["plan", "--no-refresh"])
    assert result.exit_code == 0 and "no price for model claude-haiku-9" in result.output


# ---------------------------------------------------------------- packing
def submit(key: str, prefix: str | None, size: int = 10) -> SubmitItem:
    estimate = ItemEstimate(0.01, 0.008, prefix, 0.002, 0.002)
    return SubmitItem("j", key, f"cid-{key}", f"fp-{key}", "todo", 1, 0.01, size, estimate=estimate)


def test_items_sharing_a_prefix_are_packed_adjacent_in_one_batch():
    items = [
        submit("a1", "A"),
        submit("x1", None),
        submit("b1", "B"),
        submit("a2", "A"),
        submit("x2", None),
        submit("b2", "B"),
        submit("a3", "A"),
    ]
    [batch] = split("j", (), items, BatchLimits())
    assert [i.key for i in batch.items] == ["a1", "a2", "a3", "x1", "b1", "b2", "x2"]
    expected, high = batch.costs()
    assert expected == pytest.approx(7 * 0.008 - 3 * 0.002)  # a2, a3, b2 read


def test_a_group_that_would_straddle_a_batch_starts_the_next_one():
    items = [submit("x1", None), submit("x2", None), *(submit(f"a{i}", "A") for i in range(3))]
    batches = split("j", (), items, BatchLimits(max_requests=4))
    assert [[i.key for i in b.items] for b in batches] == [["x1", "x2"], ["a0", "a1", "a2"]]
    # a group larger than a batch is cut where it must be
    batches = split("j", (), [submit(f"a{i}", "A") for i in range(5)], BatchLimits(max_requests=2))
    assert [len(b.items) for b in batches] == [2, 2, 1]


def test_the_plan_packs_submits_of_a_job():
    now = datetime(2026, 11, 21, tzinfo=UTC)
    items = [
        DesiredItem(k, f"cid-{k}", f"fp-{k}", 0.01, 10, ItemEstimate(0.01, 0.008, p, 0.002, 0.002))
        for k, p in (("a1", "A"), ("b1", "B"), ("a2", "A"))
    ]
    plan = make_plan(
        [DesiredJob("j", 3, None, tuple(items))], [], [], [], now=now, lineage=None, serial=0,
        spec_digest="x",
    )  # fmt: skip
    [step] = plan.submits
    assert [i.key for i in step.items] == ["a1", "a2", "b1"]
    assert plan.jobs[0].expected_cost_usd == pytest.approx(3 * 0.008 - 0.002)


# ---------------------------------------------------------------- cache = "auto"
def test_auto_marks_the_system_prompt_at_the_one_hour_ttl():
    params = {"model": "claude-haiku-4-5", "max_tokens": 5, "system": RUBRIC, "messages": []}
    assert caching.candidate(params) is not None
    marked = caching.mark(params)
    assert marked["system"] == [
        {"type": "text", "text": RUBRIC, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    assert params["system"] == RUBRIC  # left as it was
    short = {**params, "system": "Be brief."}
    assert caching.candidate(short) is None  # too short for the API to cache
    assert caching.candidate(caching.mark(params)) is None  # already marked: the user's marks win


def write_auto_project(root, n: int, cache: str = 'cache = "auto"\n') -> None:
    write_project(root, rows(n), extra=f'system = "{RUBRIC}"\n{cache}')


def test_auto_plans_the_saving_and_changes_no_fingerprint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_auto_project(tmp_path, 10, cache="")
    ctx = context(tmp_path, None)
    plain, _ = ctx.plan(refresh=False)
    write_auto_project(tmp_path, 10)
    auto, desired = ctx.plan(refresh=False)
    assert [i.fingerprint for i in auto.submits[0].items] == [
        i.fingerprint for i in plain.submits[0].items
    ]
    assert auto.jobs[0].expected_usd < plain.jobs[0].expected_usd / 3
    assert auto.cache_saving_usd == pytest.approx(
        plain.jobs[0].expected_usd - auto.jobs[0].expected_usd, rel=1e-3
    )
    result = CliRunner().invoke(cli, ["plan", "--no-refresh"])
    assert "prompt caching (cache = auto) saves $" in result.output
    # too few items sharing the prefix to pay back its write: nothing is marked
    write_auto_project(tmp_path, 2)
    few, _ = ctx.plan(refresh=False)
    assert few.cache_saving_usd == 0
    assert not any(i.estimate.auto for i in few.submits[0].items)


def test_auto_sends_the_marked_prefix_and_the_emulator_bills_reads(
    tmp_path, emulator, emulator_admin
):
    write_auto_project(tmp_path, 6)
    ctx = context(tmp_path, emulator)
    report = apply(ctx, wait=True)
    assert report.submitted == 6
    [(writes, writes_1h, reads)] = statedb.rows(
        ctx.settings.state_path,
        "select sum(cache_creation_input_tokens > 0), sum(cache_creation_1h_input_tokens > 0),"
        " sum(cache_read_input_tokens > 0) from results",
    )
    assert (writes, writes_1h, reads) == (1, 1, 5)
    again, _ = ctx.plan(refresh=False)
    assert not again.changes  # the marks are not part of the fingerprint


# ---------------------------------------------------------------- the API's minimum cacheable prefix
def test_a_marked_prefix_shorter_than_the_models_minimum_is_estimated_as_plain_input():
    # claude-haiku-4-5 caches prefixes from 4,096 tokens
    assert cache_min_tokens("claude-haiku-4-5") == cache_min_tokens("claude-haiku-4-5-20251001")
    least = cache_min_tokens("claude-haiku-4-5")
    assert least == 4096

    def marked(chars: int) -> dict:
        params = cached_params("q")
        params["system"] = [{**params["system"][0], "text": "x" * chars}]
        return params

    def unmarked(chars: int) -> dict:
        return {**cached_params("q"), "system": "x" * chars}

    short = estimate_item(marked(12_000), HAIKU, cache_min=least)  # 3,000-4,000 tokens
    plain = estimate_item(unmarked(12_000), HAIKU, cache_min=least)
    assert short.prefix is None and (short.high, short.expected) == (plain.high, plain.expected)
    # without the minimum it would be a write (and reads): the API would not do that
    assert estimate_item(marked(12_000), HAIKU).prefix is not None
    # 14,000 characters: cached in the ceiling (3 a token: 4,667), not in the expected (3,500)
    edge = estimate_item(marked(14_000), HAIKU, cache_min=least)
    assert edge.prefix is not None and edge.expected_saving == 0 and edge.high_saving > 0
    assert edge.expected == estimate_item(unmarked(14_000), HAIKU).expected
    # a prices file may say otherwise for a model
    table = PriceTable.load()
    assert cache_min_tokens("claude-haiku-4-5", {**table.row_for("claude-haiku-4-5"),
                                                   "cache_min_tokens": 1024}) == 1024  # fmt: skip


def test_auto_marks_nothing_shorter_than_the_models_minimum():
    system = "Policy. " * 1500  # 12,000 characters: ~3,000 tokens
    params = {"model": "claude-haiku-4-5", "max_tokens": 5, "system": system, "messages": []}
    assert caching.candidate(params) is None  # haiku 4.5 caches from 4,096 tokens
    assert caching.candidate({**params, "model": "claude-sonnet-4-5"}) is not None  # from 1,024


def test_auto_sizes_a_non_ascii_prefix_as_the_estimate_counts_it():
    """A system prompt in Japanese runs about a token a character, not four characters a
    token: 3,000 of its characters are over Sonnet's 1,024-token minimum (the expected figure
    counts a non-ASCII character as half a token: 1,500), and are marked. Sized at four
    characters a token (750) it was left unmarked, and every item paid its full input."""
    system = "規約に従って分類してください。" * 200  # 3,000 characters
    params = {"model": "claude-sonnet-4-5", "max_tokens": 5, "system": system, "messages": []}
    assert caching.candidate(params) is not None
    ascii_twin = {**params, "system": "x" * 3_000}  # 750 tokens: still too short
    assert caching.candidate(ascii_twin) is None
    tools = [{"name": "label", "description": system, "input_schema": {"type": "object"}}]
    assert caching.candidate({**params, "system": "Classify.", "tools": tools}) is not None


def test_the_plan_and_the_emulator_agree_a_short_marked_prefix_is_not_cached(tmp_path, emulator):
    short = "Short rubric. " * 300  # ~1,050 tokens: under haiku 4.5's 4,096
    write_project(
        tmp_path,
        rows(4),
        extra=f'system = [{{ type = "text", text = "{short}", cache_control = {{ type = "ephemeral" }} }}]\n',
    )
    ctx = context(tmp_path, emulator)
    plan, _ = ctx.plan(refresh=False)
    assert all(i.estimate.prefix is None for i in plan.submits[0].items)
    apply(ctx, wait=True)
    [(writes, reads)] = statedb.rows(
        ctx.settings.state_path,
        "select sum(cache_creation_input_tokens), sum(cache_read_input_tokens) from results",
    )
    assert (writes, reads) == (0, 0)


# ---------------------------------------------------------------- the expected output per reply
def test_an_estimate_moves_to_another_expected_output_and_keeps_its_ceiling():
    params = {**cached_params("q"), "max_tokens": 100}
    estimate = estimate_item(params, HAIKU)
    assert (estimate.max_tokens, estimate.expected_output) == (100, 100)
    three = estimate.with_output(3, HAIKU)
    assert three.expected == pytest.approx(estimate.expected - 97 * HAIKU.output / 1e6)
    assert (three.high, three.prefix, three.expected_output) == (estimate.high, estimate.prefix, 3)
    assert estimate.with_output(500, HAIKU) == estimate  # never above max_tokens
    assert estimate_item(params, HAIKU, 3) == three  # the same as estimating it so at first
    auto = estimate._replace(plain_expected=1.0)
    assert auto.with_output(3, HAIKU).plain_expected == pytest.approx(1.0 - 97 * HAIKU.output / 1e6)


def test_the_expected_output_comes_from_results_then_the_spec_then_similar_jobs():
    means = {"demo": {"m": (10, 3.5)}, "near": {"m": (4, 6.0)}, "far": {"m": (100, 900.0)}}
    peers = {"demo": 16, "near": 20, "far": 1000, "other-model": 16}

    def found(job: str = "demo", declared=None, model="m", max_tokens=16):
        return expected_output(job, model, max_tokens, declared, means, peers)

    own = found(declared=2)
    assert (own.tokens, own.source) == (3.5, "results")
    assert "mean of 10 of its stored results" in own.note
    spec = found("new", declared=2)
    assert (spec.tokens, spec.source) == (2.0, "expected_output_tokens")
    # demo's and near's max_tokens (16, 20) are within a factor 2 of 16; far's 1000 is not
    similar = found("new")
    assert similar.tokens == pytest.approx((10 * 3.5 + 4 * 6.0) / 14)
    assert similar.source == "other jobs' results"
    assert "14 results of demo, near (m, similar max_tokens)" in similar.note
    nothing = found("new", model="other")
    assert (nothing.tokens, nothing.source) == (None, "max_tokens")


def test_the_plan_expects_replies_as_long_as_the_jobs_results(tmp_path, emulator, monkeypatch):
    jobs = write_project(tmp_path, rows(6), extra="expected_output_tokens = 100\n")
    spec = jobs / "demo.toml"
    spec.write_text(spec.read_text().replace("max_tokens = 16", "max_tokens = 400"))
    ctx = context(tmp_path, emulator)
    first, _ = ctx.plan(refresh=False)
    assert first.jobs[0].output_basis == (
        "100 tokens a reply, as the spec's expected_output_tokens says"
    )
    apply(ctx, wait=True)
    [(mean,)] = statedb.rows(ctx.settings.state_path, "select avg(output_tokens) from results")
    assert mean < 100
    # every prompt edited: every item is sent again, expected as long as the replies so far
    spec.write_text(spec.read_text().replace("Classify:", "Classify this:"))
    again, desired = ctx.plan(refresh=False)
    assert len(again.submits[0].items) == 6
    assert (
        again.jobs[0].output_basis
        == f"{mean:.1f} tokens a reply, the mean of 6 of its stored results"
    )
    assert all(i.estimate.expected_output == pytest.approx(mean) for i in again.submits[0].items)
    assert again.jobs[0].expected_usd < first.jobs[0].expected_usd
    assert again.jobs[0].estimated_cost_usd == pytest.approx(
        first.jobs[0].estimated_cost_usd, rel=0.01
    )
    result = CliRunner().invoke(
        cli, ["--state", str(ctx.settings.state_path), "--jobs", str(jobs), "plan", "--no-refresh"]
    )
    assert f"Note: demo: expected output {mean:.1f} tokens a reply, the mean of 6" in result.output
    as_json = CliRunner().invoke(
        cli,
        [
            "--state",
            str(ctx.settings.state_path),
            "--jobs",
            str(jobs),
            "plan",
            "--no-refresh",
            "--json",
        ],
    )
    assert (
        __import__("json")
        .loads(as_json.stdout)["jobs"][0]["expected_output"]
        .startswith(f"{mean:.1f} tokens")
    )


def test_a_cached_row_takes_the_expectation_of_the_moment(tmp_path, emulator, monkeypatch):
    monkeypatch.setattr(rows_cache, "MIN_ROWS", 1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.delenv("BATCHOPS_CACHE", raising=False)
    jobs = write_project(tmp_path, rows(5))
    spec = jobs / "demo.toml"
    spec.write_text(spec.read_text().replace("max_tokens = 16", "max_tokens = 400"))
    ctx = context(tmp_path, emulator)
    before = ctx.desired().jobs[0]
    assert (rows_cache.cache_dir(tmp_path) / "rows" / "demo.jsonl").exists()
    apply(ctx, wait=True)
    cached = ctx.desired().jobs[0]  # the rows cache, with the results' expectation laid over it
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    fresh = ctx.desired().jobs[0]
    assert [i.estimate for i in cached.items] == [i.estimate for i in fresh.items]
    assert (
        cached.output_basis == fresh.output_basis and "of its stored results" in fresh.output_basis
    )
    assert cached.items[0].estimate.expected < before.items[0].estimate.expected
    assert [i.cost_usd for i in cached.items] == [i.cost_usd for i in before.items]  # the ceiling


def test_expected_output_tokens_is_checked_against_max_tokens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, rows(2), extra="expected_output_tokens = 17\n")
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: jobs/demo.toml: jobs.demo.expected_output_tokens: 17 is more than max_tokens (16):"
        " a reply never exceeds max_tokens\n"
    )
    write_project(tmp_path, rows(2), extra="expected_output_tokens = 0\n")
    result = CliRunner().invoke(cli, ["validate"])
    assert result.exit_code == 1 and "expected_output_tokens" in result.output


def test_status_estimates_every_item_as_the_plan_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_auto_project(tmp_path, 10)
    ctx = context(tmp_path, None)
    plan, desired = ctx.plan(refresh=False)
    report = status(ctx)
    [job] = report.jobs
    # one cache write and nine reads, as the plan estimates the same ten items
    assert job.expected_cost_usd == pytest.approx(plan.jobs[0].expected_usd, abs=1e-6)
    assert job.estimated_cost_usd == pytest.approx(plan.jobs[0].estimated_cost_usd, abs=1e-6)
    assert job.expected_cost_usd < sum(i.estimate.expected for i in desired.jobs[0].items) / 3
