"""The dated price table, its override, and cost estimates and actuals (ANTHROPIC_BATCHES_API §8)."""

from __future__ import annotations

from datetime import date

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.errors import SpecError
from batchops.pricing import PriceTable, Usage, estimate_request, usage_from_message
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
            "cache_read, cache_write_1h, cache_write_5m, input, output, tool_overhead_tokens)",
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
