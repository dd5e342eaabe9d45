"""The dated price table, its override, and cost estimates and actuals (ANTHROPIC_BATCHES_API §8)."""

from __future__ import annotations

import json
from datetime import date

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.commands.status import actual_costs
from batchops.errors import SpecError
from batchops.pricing import PriceTable, Usage, estimate_item, estimate_request, usage_from_message
from batchops.state.records import UsageRow
from tests.projects import rows, write_project


def test_shipped_batch_prices_and_cache_multipliers():
    table = PriceTable.load()
    haiku = table.price("claude-haiku-4-5", date(2026, 11, 21))
    assert (haiku.input, haiku.output) == (0.5, 2.5)
    assert haiku.cache_write_5m == pytest.approx(0.625)
    assert haiku.cache_write_1h == pytest.approx(1.0)
    assert haiku.cache_read == pytest.approx(0.05)
    # the doc's worked example: a Sonnet 4.6 cache read in a batch is $0.15/MTok
    assert table.price("claude-sonnet-4-6", date(2026, 11, 21)).cache_read == pytest.approx(0.15)
    assert table.price("claude-opus-5-5", date(2026, 11, 21)).cache_read == pytest.approx(0.1)


def test_dated_rows_and_model_aliases():
    table = PriceTable.load()
    assert table.price("claude-sonnet-5", date(2026, 8, 31)).input == 1.0
    assert table.price("claude-sonnet-5", date(2026, 9, 1)).input == 1.5
    assert table.price("claude-haiku-4-5-20251001", date(2026, 11, 21)).input == 0.5
    assert table.price("claude-opus-4-10", date(2026, 11, 21)) is None  # no prefix guessing
    assert table.price("gpt-5", date(2026, 11, 21)) is None


def test_a_user_file_overrides_rows(tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text(
        'as_of = "2027-01-01"\n[models."claude-haiku-4-5"]\ninput = 1.0\noutput = 4.0\n'
    )
    table = PriceTable.load(prices)
    assert table.price("claude-haiku-4-5", date(2027, 1, 1)).output == 4.0
    assert table.price("claude-opus-4-6", date(2027, 1, 1)).output == 12.5
    assert table.source == f"{prices} as of 2027-01-01"


def test_a_bad_price_file_is_one_error(tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text("as_of = \n")
    with pytest.raises(SpecError) as caught:
        PriceTable.load(prices)
    assert caught.value.problems[0].startswith(f"{prices}: invalid TOML: ")


ROW = '[models."claude-haiku-4-5"]\ninput = 1.0\noutput = 4.0\n'


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('models = "x"\n', "models: should be a table of model rows ([models.NAME])"),
        (
            "models = { claude-haiku-4-5 = 5 }\n",
            "models.claude-haiku-4-5: should be a table with input and output",
        ),
        (
            "models = { claude-haiku-4-5 = { output = 1.0 } }\n",
            "models.claude-haiku-4-5.input: missing",
        ),
        (
            'models = { claude-haiku-4-5 = { input = "abc", output = 1.0 } }\n',
            "models.claude-haiku-4-5.input: should be a number",
        ),
        (
            "models = { claude-haiku-4-5 = { input = true, output = 1.0 } }\n",
            "models.claude-haiku-4-5.input: should be a number",
        ),
        (
            "models = { claude-haiku-4-5 = { input = nan, output = 1.0 } }\n",
            "models.claude-haiku-4-5.input: should be a number 0 or more, not nan",
        ),
        (
            ROW + "cache_read = -0.1\n",
            "models.claude-haiku-4-5.cache_read: should be a number 0 or more, not -0.1",
        ),
        (
            ROW + "cache_min_tokens = 1.5\n",
            "models.claude-haiku-4-5.cache_min_tokens: should be a whole number of tokens, "
            "0 or more",
        ),
        (
            ROW + "inputs = 1.0\n",
            "models.claude-haiku-4-5.inputs: unknown key (one of before, cache_min_tokens, "
            "cache_read, cache_write_1h, cache_write_5m, input, long_context, output, "
            "tool_overhead_tokens)",
        ),
        (
            ROW + "long_context = 5\n",
            "models.claude-haiku-4-5.long_context: should be a table with above_tokens, "
            "input_times and output_times",
        ),
        (
            ROW + "long_context = { input_times = 5.0, output_times = 5.0 }\n",
            "models.claude-haiku-4-5.long_context.above_tokens: missing",
        ),
        (
            ROW + "long_context = { above_tokens = 1e5, input_times = 5.0, output_times = 5.0 }\n",
            "models.claude-haiku-4-5.long_context.above_tokens: should be a whole number of "
            "tokens, 0 or more",
        ),
        (
            ROW + "long_context = { above_tokens = 100_000, input_times = 5.0 }\n",
            "models.claude-haiku-4-5.long_context.output_times: missing",
        ),
        (
            ROW
            + 'long_context = { above_tokens = 100_000, input_times = "5x", output_times = 5 }\n',
            "models.claude-haiku-4-5.long_context.input_times: should be a number",
        ),
        (
            ROW + "long_context = { above_tokens = 9, input_times = 5, output_times = 5, x = 1 }\n",
            "models.claude-haiku-4-5.long_context.x: unknown key (one of above_tokens, "
            "input_times, output_times)",
        ),
        ('multipliers = { cache_read = "x" }\n', "multipliers.cache_read: should be a number"),
        (
            "multipliers = { cache_reads = 0.1 }\n",
            "multipliers.cache_reads: unknown multiplier (one of cache_write_5m, cache_write_1h, "
            "cache_read)",
        ),
        ("multipliers = 2\n", "multipliers: should be a table"),
        ("as_of = [1]\n", "as_of: should be a string or a date"),
        ("price = 1\n", "price: unknown key (one of as_of, multipliers, models)"),
        (
            ROW + 'before = [{ until = "soon", input = 1.0, output = 1.0 }]\n',
            "models.claude-haiku-4-5.before[0].until: should be a date (YYYY-MM-DD)",
        ),
        (
            ROW + "before = [{ until = 2026-09-01T00:00:00, input = 1.0, output = 1.0 }]\n",
            "models.claude-haiku-4-5.before[0].until: should be a date (YYYY-MM-DD)",
        ),
        (
            ROW + 'before = [{ until = "2026-09-01", input = 1.0 }]\n',
            "models.claude-haiku-4-5.before[0].output: missing",
        ),
        (
            ROW + "before = 3\n",
            "models.claude-haiku-4-5.before: should be an array of tables ([[models.NAME.before]])",
        ),
        (
            ROW + "before = [3]\n",
            "models.claude-haiku-4-5.before[0]: should be a table with until, input and output",
        ),
    ],
)
def test_a_malformed_price_file_names_the_file_and_the_place(tmp_path, content, problem):
    prices = tmp_path / "prices.toml"
    prices.write_text(content)
    with pytest.raises(SpecError) as caught:
        PriceTable.load(prices)
    assert caught.value.problems == [f"{prices}: {problem}"]


def test_a_price_change_may_be_dated_with_a_toml_date(tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text(
        ROW
        + '[[models."claude-haiku-4-5".before]]\nuntil = 2027-01-01\ninput = 0.5\noutput = 2.0\n'
    )
    table = PriceTable.load(prices)
    assert table.price("claude-haiku-4-5", date(2026, 12, 31)).input == 0.5
    assert table.price("claude-haiku-4-5", date(2027, 1, 1)).input == 1.0


def test_estimate_is_a_ceiling_with_the_cached_prefix_at_write_price():
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "r" * 3000, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "q" * 300}],
    }
    usage = estimate_request(params)
    assert usage == Usage(input_tokens=104, output_tokens=100, cache_write_5m_tokens=1000)
    price = PriceTable.load().price("claude-haiku-4-5", date(2026, 11, 21))
    assert usage.cost(price) == pytest.approx((104 * 0.5 + 100 * 2.5 + 1000 * 0.625) / 1e6)


def test_actual_usage_splits_cache_writes_by_ttl():
    usage = usage_from_message(
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_creation_input_tokens": 300,
            "cache_read_input_tokens": 7,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        }
    )
    assert usage == Usage(10, 5, 100, 200, 7)


def test_plan_uses_the_prices_option(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, rows(2))
    (tmp_path / "p.toml").write_text(
        'as_of = "2027-01-01"\n[models."claude-haiku-4-5"]\ninput = 1000.0\noutput = 1000.0\n'
    )
    result = CliRunner().invoke(cli, ["--prices", "p.toml", "plan", "--no-refresh"])
    assert result.exit_code == 0
    assert "Plan: 2 to submit. Estimated cost $0.0500 (up to $0.0560)." in result.output
    assert "Prices: p.toml as of 2027-01-01." in result.output


LONG_ROW = (
    '[models."m"]\ninput = 1.0\noutput = 2.0\n'
    '[[models."m".before]]\nuntil = 2027-01-01\ninput = 0.5\noutput = 1.0\n'
    '[models."m".long_context]\nabove_tokens = 1000\ninput_times = 3.0\noutput_times = 2.0\n'
)


def _long_price(tmp_path, day=date(2027, 1, 5)):
    prices = tmp_path / "prices.toml"
    prices.write_text(LONG_ROW)
    return PriceTable.load(prices).price("m", day)


def _asking(chars: int, **extra) -> dict:
    # a message of `chars` characters: with the message's overhead (12 characters), a ceiling of
    # (chars + 12) / 3 tokens and an expected (chars + 12) / 4
    return {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "x" * chars}], **extra}  # fmt: skip


def test_a_request_past_long_context_is_priced_there_by_each_figures_own_count(tmp_path):
    price = _long_price(tmp_path)
    # 1,000 tokens at the ceiling's count: not past it
    short = estimate_item(_asking(2988), price)
    assert (short.high, short.expected) == pytest.approx(((1000 + 200) / 1e6, (750 + 200) / 1e6))
    assert not short.long
    # 1,100 at the ceiling's count (3x input, 2x output), 825 at the expected figure's
    ceiling_only = estimate_item(_asking(3288), price)
    assert ceiling_only.high == pytest.approx((1100 * 3 + 100 * 4) / 1e6)
    assert ceiling_only.expected == pytest.approx((825 + 200) / 1e6)
    assert not ceiling_only.long
    # 1,050 at the expected figure's count: both past it, and so is an expected output
    both = estimate_item(_asking(4188), price)
    assert (both.high, both.expected) == pytest.approx(((1400 * 3 + 400) / 1e6, (1050 * 3 + 400) / 1e6))  # fmt: skip
    assert both.long
    assert both.with_output(10, price).expected == pytest.approx((1050 * 3 + 10 * 4) / 1e6)


def test_cached_tokens_count_towards_long_context(tmp_path):
    price = _long_price(tmp_path)
    params = _asking(600)
    params["system"] = [
        {"type": "text", "text": "s" * 3000, "cache_control": {"type": "ephemeral"}}
    ]
    estimate = estimate_item(params, price)
    # ceiling: 1,000 written to the cache and 204 plain, 1,204 in all: past 1,000
    assert estimate.high == pytest.approx((204 * 3 + 1000 * 1.25 * 3 + 100 * 4) / 1e6)
    assert estimate.high_saving == pytest.approx(1000 * (1.25 - 0.1) * 3 / 1e6)
    # expected: 750 and 153, 903: not past it
    assert estimate.expected == pytest.approx((153 + 750 * 1.25 + 200) / 1e6)
    assert not estimate.long


def test_the_day_before_a_price_change_the_ceiling_keeps_the_higher_long_price(tmp_path):
    price = _long_price(tmp_path, date(2026, 12, 31))
    assert (price.input, price.long.input, price.long.output) == (0.5, 1.5, 2.0)
    assert (price.ceiling.long.input, price.ceiling.long.output) == (3.0, 4.0)
    assert price.ceiling.long_above == 1000


class _Usage:
    def __init__(self, rows):
        self.rows, self.asked = rows, []

    def usage_rows(self, above=()):
        self.asked.append(tuple(above))
        return iter(self.rows)


def test_status_prices_a_result_past_long_context_there(tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text(LONG_ROW + '[models."n"]\ninput = 1.0\noutput = 1.0\n[models."n".long_context]\nabove_tokens = 10\ninput_times = 7.0\noutput_times = 7.0\n')  # fmt: skip
    table = PriceTable.load(prices)
    reader = _Usage([
        # job, model, day, input, output, 5m writes, 1h writes, reads, lengths passed
        UsageRow("j", "m", "2027-01-05", 100, 10, 0, 0, 0, 0),
        UsageRow("j", "m", "2027-01-05", 5000, 10, 0, 0, 0, 2),
        UsageRow("k", "m", "2027-01-05", 500, 10, 0, 0, 0, 1),  # past 10 only: m's base price
        UsageRow("k", "n", "2027-01-05", 500, 10, 0, 0, 0, 1),  # past n's 10
    ])  # fmt: skip
    costs, notes = actual_costs(reader, table)
    assert reader.asked == [(10, 1000, 100_000)] and notes == {}  # with the shipped rows
    assert costs["j"] == pytest.approx((100 + 20 + 5000 * 3 + 10 * 4) / 1e6)
    assert costs["k"] == pytest.approx((500 + 20 + 510 * 7) / 1e6)


def test_plan_prices_a_long_haiku_5_5_prompt_at_five_times(tmp_path, monkeypatch):
    # The shipped row: $0.05 / $0.25 a million tokens in a batch, 5x past 100,000 input tokens.
    monkeypatch.chdir(tmp_path)
    jobs = write_project(tmp_path, [{"id": "short", "text": "short"}, {"id": "long", "text": "w" * 450_000}])  # fmt: skip
    spec = jobs / "demo.toml"
    spec.write_text(spec.read_text().replace("claude-haiku-4-5", "claude-haiku-5-5"))
    result = CliRunner().invoke(cli, ["plan", "--no-refresh", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    # "Classify: " and the text, and a message's 12 characters: 27 and 450,022 characters, at
    # 4 characters a token expected (3 in the ceiling), 16 tokens out
    expected = (7 * 0.05 + 16 * 0.25) + (112_506 * 0.25 + 16 * 1.25)
    ceiling = (9 * 0.05 + 16 * 0.25) + (150_008 * 0.25 + 16 * 1.25)
    assert summary["expected_cost_usd"] == pytest.approx(expected / 1e6, abs=1e-6)
    assert summary["estimated_cost_usd"] == pytest.approx(ceiling / 1e6, abs=1e-6)
