"""Review of the money paths (plan ceiling, budget, status actual cost): each test here FAILS
on the code as reviewed and names its finding. The facts are shared/ANTHROPIC_BATCHES_API.md §8
unless a test says otherwise."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, date, datetime

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.commands.context import Context
from batchops.errors import SpecError
from batchops.pricing import (
    PriceTable,
    estimate_item,
    estimate_request,
    money,
)
from batchops.spec import rowmaker
from batchops.spec.items import iter_items
from batchops.spec.model import load_project
from tests.projects import context, rows, write_project

TODAY = date(2026, 11, 21)
TABLE = PriceTable.load()
HAIKU = TABLE.price("claude-haiku-4-5", TODAY)


# ---------------------------------------------------------------- ceiling below the bill


def test_mixed_ttl_prefix_ceiling_prices_the_1h_part_at_the_1h_write_price():
    # FINDING 1 (overspend): a prefix with a 1h breakpoint followed by a 5m breakpoint is priced
    # wholly at the LAST breakpoint's TTL (5m, 1.25x). The API writes the part up to the 1h
    # breakpoint at 2x (usage.cache_creation splits ephemeral_1h / ephemeral_5m tokens).
    system = "A" * 30_000  # 10,000 tokens at the ceiling's 3 characters a token
    question = "B" * 3_000  # 1,000 tokens
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1,
        "system": [
            {"type": "text", "text": system, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": question, "cache_control": {"type": "ephemeral"}}
                ],
            }
        ],
    }
    estimate = estimate_item(params, HAIKU, None, 4096)
    billed_at_least = (
        10_000 * HAIKU.cache_write_1h + 1_000 * HAIKU.cache_write_5m + 1 * HAIKU.output
    ) / 1e6
    assert estimate.high >= billed_at_least  # now $0.00688 < $0.01063
    usage = estimate_request(params)
    assert usage.cache_write_1h_tokens >= 10_000  # now 0 (all 11,000 counted as 5m writes)


def test_mixed_ttl_prefix_expected_figure_prices_each_part_at_its_own_ttl():
    # F1, the expected figure: 30,000 and 3,000 characters at its 4 characters a token
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1,
        "system": [
            {
                "type": "text",
                "text": "A" * 30_000,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "B" * 3_000, "cache_control": {"type": "ephemeral"}}
                ],
            }
        ],
    }
    estimate = estimate_item(params, HAIKU, None, 4096)
    written = (7_500 * HAIKU.cache_write_1h + 750 * HAIKU.cache_write_5m) / 1e6
    assert estimate.expected >= written
    # what a read saves: each part read instead of written at its own price
    assert estimate.expected_saving == pytest.approx(
        (
            7_500 * (HAIKU.cache_write_1h - HAIKU.cache_read)
            + 750 * (HAIKU.cache_write_5m - HAIKU.cache_read)
        )
        / 1e6
    )


def test_a_document_of_text_content_blocks_is_counted_by_its_text_not_a_fixed_1600_tokens():
    # FINDING 2 (overspend): a `document` whose source is `content` (text blocks) falls into the
    # image branch of pricing._chars and counts as a fixed 1,600 tokens, whatever its length.
    text = "x" * 300_000  # 100,000 tokens at the ceiling's own 3 characters a token
    params = _summarise({"type": "content", "content": [{"type": "text", "text": text}]})
    assert estimate_request(params).input_tokens >= 100_000  # now 1,607


def _summarise(source: dict) -> dict:
    """A request asking to summarise one document of `source`."""
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 1,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": source},
                    {"type": "text", "text": "Summarise."},
                ],
            }
        ],
    }


def _pdf(pages: int, filler: int = 10_000) -> bytes:
    """A PDF-shaped file of `pages` page objects, each with a text stream of `filler` bytes."""
    out = [b"%PDF-1.4\n"]
    for n in range(pages):
        body = b"BT /F1 12 Tf (" + b"lorem ipsum " * (filler // 12) + b") Tj ET"
        out.append(b"%d 0 obj << /Type /Page /Contents %d 0 R >> endobj\n" % (2 * n + 3, 2 * n + 4))
        out.append(
            b"%d 0 obj << /Length %d >> stream\n%s\nendstream endobj\n"
            % (2 * n + 4, len(body), body)
        )
    out.append(b"%%EOF\n")
    return b"".join(out)


def test_a_base64_pdf_is_not_counted_as_one_image():
    # FINDING 2b (overspend): a base64 PDF document is counted as one image, 1,600 tokens. The
    # API bills a PDF per page (its text plus an image of the page; Anthropic's PDF support page:
    # 1,500-3,000 tokens a page of text alone). Not in ANTHROPIC_BATCHES_API.md.
    data = base64.b64encode(_pdf(50)).decode()
    params = _summarise({"type": "base64", "media_type": "application/pdf", "data": data})
    assert estimate_request(params).input_tokens >= 50 * 1_500  # now 1,607


def test_a_pdf_whose_pages_cannot_be_found_is_sized_by_its_bytes():
    # F2b: page objects in compressed object streams are not found; the size stands in for them
    blob = bytes(range(256)) * 120  # 30,720 bytes, no `/Type /Page`: 11 pages at 3,000 bytes
    data = base64.b64encode(b"%PDF-1.7\n" + blob).decode()
    document = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data},
    }
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": [document]}],
    }
    assert estimate_request(params).input_tokens == 11 * 4_600 + 4
    # `/Pages` (the page tree) is not a page
    tree = base64.b64encode(
        b"<< /Type /Pages /Count 2 >> << /Type/Page >> << /Type /Page>>"
    ).decode()
    document["source"]["data"] = tree
    assert estimate_request(params).input_tokens == 2 * 4_600 + 4


def test_a_document_given_by_url_or_file_is_named_in_a_cost_note(tmp_path, monkeypatch):
    # F2b: a document the estimate cannot size is left out, and the plan says so
    monkeypatch.chdir(tmp_path)
    jobs = write_project(tmp_path, rows(2))
    spec = jobs / "demo.toml"
    spec.write_text(
        spec.read_text().replace(
            'prompt = "Classify: {{ text }}"\n',
            'messages = [{ role = "user", content = [\n'
            '  { type = "document", source = { type = "url", url = "https://example.com/a.pdf" } },\n'
            '  { type = "document", source = { type = "file", file_id = "file_011" } },\n'
            '  { type = "text", text = "{{ text }}" }] }]\n',
        )
    )
    note = (
        "Note: demo: documents given by URL or file_id cannot be sized before they are sent: "
        "the estimate leaves them out"
    )
    result = CliRunner().invoke(cli, ["plan", "--no-refresh"])
    assert result.exit_code == 0, result.output
    assert note in result.output
    as_json = json.loads(CliRunner().invoke(cli, ["plan", "--no-refresh", "--json"]).stdout)
    assert as_json["jobs"][0]["cost_note"] == note.removeprefix("Note: demo: ")
    write_project(tmp_path, rows(2))  # no documents: no note
    assert "cannot be sized" not in CliRunner().invoke(cli, ["plan", "--no-refresh"]).output


def test_tool_use_system_prompt_tokens_are_in_the_ceiling():
    # FINDING 4 (overspend on small requests): a request with tools is billed for the tool-use
    # system prompt the API adds (Anthropic's pricing page: 313 tokens with tool_choice any/tool,
    # 346 with auto/none, for the Claude 4 family). Not in ANTHROPIC_BATCHES_API.md. The
    # ceiling counts only the tools' JSON: 41 input tokens for this classification request.
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1,
        "tools": [
            {
                "name": "label",
                "description": "Label",
                "input_schema": {"type": "object", "properties": {"l": {"type": "string"}}},
            }
        ],
        "tool_choice": {"type": "tool", "name": "label"},
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert estimate_request(params).input_tokens >= 313


def test_a_price_row_sets_its_tool_overhead_and_a_bad_one_is_refused(tmp_path):
    # F4: `tool_overhead_tokens` per model, checked like the row's other keys
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1,
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "hi"}],
    }
    without = estimate_item({**params, "tools": []}, HAIKU).high
    assert estimate_item(params, HAIKU).high >= without + 346 * HAIKU.input / 1e6
    prices = tmp_path / "prices.toml"
    row = '[models."claude-haiku-4-5"]\ninput = 1.0\noutput = 1.0\n'
    prices.write_text(row + "tool_overhead_tokens = 1000\n")
    priced = PriceTable.load(prices).price("claude-haiku-4-5", TODAY)
    assert priced.tool_overhead_tokens == 1000
    none = estimate_item(params, replace(priced, tool_overhead_tokens=0))
    assert estimate_item(params, priced).high == pytest.approx(none.high + 1000 * 1.0 / 1e6)
    # once per request, however many tools it has
    two = {**params, "tools": params["tools"] * 2}
    assert estimate_request(two).input_tokens - estimate_request(two, 0).input_tokens == 346
    for bad in ("-1", "1.5", "true", '"346"'):
        prices.write_text(row + f"tool_overhead_tokens = {bad}\n")
        with pytest.raises(SpecError) as caught:
            PriceTable.load(prices)
        assert caught.value.problems == [
            f"{prices}: models.claude-haiku-4-5.tool_overhead_tokens: should be a whole number "
            "of tokens, 0 or more"
        ]


def test_cjk_text_is_not_estimated_at_three_characters_a_token():
    # FINDING 5 (overspend for non-Latin text): CHARS_PER_TOKEN = 3 is a ceiling for English
    # only; CJK text runs about one token a character or more, so 3,000 characters of Japanese
    # are counted as 1,004 tokens.
    params = {
        "model": "claude-haiku-4-5",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "日本語" * 1_000}],
    }
    assert estimate_request(params).input_tokens >= 3_000


def test_non_ascii_text_in_the_expected_figure_and_ascii_as_before():
    # F5: the expected figure counts a non-ASCII character as half a token; ASCII is unchanged
    def request(text: str) -> dict:
        return {
            "model": "claude-haiku-4-5",
            "max_tokens": 0,
            "messages": [{"role": "user", "content": text}],
        }

    cjk = estimate_item(request("日本語" * 1_000), HAIKU)
    assert cjk.expected == pytest.approx((1_500 + 3) * HAIKU.input / 1e6)
    assert cjk.high == pytest.approx((3_000 + 4) * HAIKU.input / 1e6)
    ascii_ = estimate_item(request("a" * 3_000), HAIKU)
    assert ascii_.high == pytest.approx((1_000 + 4) * HAIKU.input / 1e6)
    assert ascii_.expected == pytest.approx((750 + 3) * HAIKU.input / 1e6)
    mixed = estimate_request(request("é" * 10 + "a" * 9))  # 10 tokens + 3 + the message's 4
    assert mixed.input_tokens == 17


def test_the_fast_path_prices_non_ascii_rows_as_the_general_path(tmp_path):
    # F5: the fast path keeps one estimate per rendered length; rows of one length but other
    # non-ASCII counts cost differently, and both paths must say so alike
    texts = ["abcdef", "日本語日本語", "abc日本語", "éèêabc", "abcdef", "日本語日本語"]
    write_project(tmp_path, [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)])
    (job,) = load_project(tmp_path / "jobs", tmp_path).jobs
    fast = list(rowmaker.rows(job, tmp_path, TABLE, TODAY, {}))
    general = [rowmaker.item_row(job, i, TABLE, TODAY, {}) for i in iter_items(job, tmp_path)]
    assert [r[3] for r in fast] == [r[3] for r in general]
    highs = [r[3].high for r in fast]
    assert highs[0] < highs[2] < highs[1]  # 0, 3 and 6 characters outside ASCII


def test_a_plan_before_a_dated_price_change_covers_the_new_price(tmp_path):
    # FINDING 7 (overspend at a price boundary): the ceiling uses the price of the plan's UTC
    # day only. A batch created at 23:30 on 2026-08-31 is processed for up to 24 h, into
    # 2026-09-01 when Sonnet 5 costs $1.50/$7.50 instead of $1/$5 (§8). Its ceiling must be at
    # least what the same request costs an hour later.
    jobs = write_project(tmp_path, rows(3))
    spec = jobs / "demo.toml"
    spec.write_text(spec.read_text().replace("claude-haiku-4-5", "claude-sonnet-5"))
    settings = context(tmp_path, None).settings

    def ceiling(moment: datetime) -> float:
        plan, _ = Context(settings, clock=lambda: moment).plan(refresh=False)
        return plan.jobs[0].estimated_cost_usd

    before = ceiling(datetime(2026, 8, 31, 23, 30, tzinfo=UTC))
    after = ceiling(datetime(2026, 9, 1, 0, 30, tzinfo=UTC))
    assert after > 0
    assert before >= after  # now 2/3 of it


def test_the_expected_figure_stays_at_todays_price_before_a_change():
    # F7: only the ceiling looks at tomorrow's price
    late = TABLE.price("claude-sonnet-5", date(2026, 8, 31))
    assert (late.input, late.output) == (1.0, 5.0)
    assert (late.ceiling.input, late.ceiling.output) == (1.5, 7.5)
    assert TABLE.price("claude-sonnet-5", date(2026, 8, 30)).high is None
    assert TABLE.price("claude-sonnet-5", date(2026, 9, 1)).high is None
    params = {
        "model": "claude-sonnet-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "x" * 300}],
    }
    estimate = estimate_item(params, late)
    assert estimate.high == pytest.approx(((100 + 4) * 1.5 + 100 * 7.5) / 1e6)
    assert estimate.expected == pytest.approx(((75 + 3) * 1.0 + 100 * 5.0) / 1e6)
    # a price that falls: the ceiling keeps today's
    prices = TABLE.models["claude-sonnet-5"]
    falling = PriceTable({"models": {"m": {**prices, "input": 0.5, "output": 2.5}}}, "test")
    today = falling.price("m", date(2026, 8, 31))
    assert (today.ceiling.input, today.ceiling.output) == (1.0, 5.0)


# ---------------------------------------------------------------- how it is shown


def test_a_real_cost_is_never_shown_as_zero(tmp_path, monkeypatch):
    # FINDING 9 (cosmetic): money() shows four decimals, so a one-item Haiku plan (ceiling
    # $0.000046) reads "Estimated cost $0.0000" and "up to $0.0000".
    monkeypatch.chdir(tmp_path)
    write_project(tmp_path, rows(1))
    as_json = json.loads(CliRunner().invoke(cli, ["plan", "--no-refresh", "--json"]).stdout)
    assert as_json["summary"]["estimated_cost_usd"] > 0
    text = CliRunner().invoke(cli, ["plan", "--no-refresh"]).output
    assert "$0.0000" not in text
    markdown = CliRunner().invoke(cli, ["plan", "--no-refresh", "--markdown"]).output
    assert "$0.0000" not in markdown


def test_money_shows_an_amount_under_a_hundredth_of_a_cent_as_under_it():
    # F9: only an amount four places show as $0.0000 changes
    assert money(0.0) == "$0.0000"
    assert money(0.000046) == "<$0.0001"
    assert money(0.00005) == "$0.0001"
    assert money(0.0012) == "$0.0012"
    assert money(None) == "-"
