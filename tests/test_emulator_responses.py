"""Succeeded results: deterministic text, plausible usage, prompt-caching counters."""

from __future__ import annotations

from typing import Any

import anthropic


def params(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def messages(client: anthropic.Anthropic, reqs: dict[str, dict]) -> dict[str, Any]:
    batch = client.messages.batches.create(
        requests=[{"custom_id": k, "params": v} for k, v in reqs.items()]
    )
    out = {}
    for line in client.messages.batches.results(batch.id):
        assert line.result.type == "succeeded"
        out[line.custom_id] = line.result.message
    return out


def test_same_params_give_the_same_text(sdk_client: anthropic.Anthropic) -> None:
    reqs = {"a": params("Describe the sea."), "b": params("Describe the sea."), "c": params("Hi")}
    first = messages(sdk_client, reqs)
    second = messages(sdk_client, reqs)
    assert first["a"].content[0].text == first["b"].content[0].text == second["a"].content[0].text
    assert first["a"].usage == second["a"].usage
    assert first["a"].id != first["b"].id != second["a"].id
    assert len(first["a"].content[0].text.split()) <= 40


def test_input_tokens_follow_prompt_length(sdk_client: anthropic.Anthropic) -> None:
    got = messages(sdk_client, {"short": params("x" * 40), "long": params("x" * 4000)})
    assert 10 <= got["short"].usage.input_tokens <= 30
    assert 1000 <= got["long"].usage.input_tokens <= 1030


def test_one_word_choice_is_picked_from_the_list(sdk_client: anthropic.Anthropic) -> None:
    prompt = "Classify the sentiment as positive, negative or neutral. Text: {}"
    got = messages(sdk_client, {f"r{i}": params(prompt.format(i)) for i in range(12)})
    answers = {m.content[0].text for m in got.values()}
    assert answers <= {"positive", "negative", "neutral"} and len(answers) > 1


def test_output_never_exceeds_max_tokens(sdk_client: anthropic.Anthropic) -> None:
    got = messages(sdk_client, {"tiny": {**params("Tell a long story."), "max_tokens": 2}})
    msg = got["tiny"]
    assert msg.usage.output_tokens <= 2 and msg.stop_reason == "max_tokens"
    assert msg.content[0].text


def test_cache_control_writes_first_then_reads(sdk_client: anthropic.Anthropic) -> None:
    system = [
        {
            "type": "text",
            "text": "Long shared context. " * 600,
            "cache_control": {"type": "ephemeral"},
        }
    ]
    hour = [
        {
            **system[0],
            "text": "Other context. " * 800,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    first = messages(sdk_client, {"a": params("Q1", system=system)})["a"].usage
    assert first.cache_creation_input_tokens > 2048 and first.cache_read_input_tokens == 0
    assert first.cache_creation.ephemeral_5m_input_tokens == first.cache_creation_input_tokens
    assert first.cache_creation.ephemeral_1h_input_tokens == 0
    assert first.input_tokens < 20

    later = messages(sdk_client, {"b": params("Q2", system=system), "c": params("Q3", system=hour)})
    assert later["b"].usage.cache_read_input_tokens == first.cache_creation_input_tokens
    assert later["b"].usage.cache_creation_input_tokens == 0
    one_hour = later["c"].usage
    assert (
        one_hour.cache_creation.ephemeral_1h_input_tokens
        == one_hour.cache_creation_input_tokens
        > 0
    )


def test_a_prefix_of_mixed_ttls_is_written_at_each_ttl(sdk_client: anthropic.Anthropic) -> None:
    # the part up to the last 1-hour mark at 1 hour, the rest up to the last mark at 5 minutes
    system = [
        {
            "type": "text",
            "text": "Hour context. " * 800,  # 11,200 characters: 2,800 tokens
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        },
        {
            "type": "text",
            "text": "Five minute context. " * 200,
            "cache_control": {"type": "ephemeral"},
        },
    ]
    usage = messages(sdk_client, {"a": params("Q1", system=system)})["a"].usage
    assert usage.cache_creation.ephemeral_1h_input_tokens == 2_800
    assert usage.cache_creation.ephemeral_5m_input_tokens == 1_050
    assert usage.cache_creation_input_tokens == 2_800 + 1_050


def test_no_cache_control_means_no_cache_tokens(sdk_client: anthropic.Anthropic) -> None:
    usage = messages(sdk_client, {"a": params("Plain.")})["a"].usage
    assert usage.cache_creation_input_tokens == usage.cache_read_input_tokens == 0
    assert usage.cache_creation.ephemeral_5m_input_tokens == 0
    assert usage.service_tier == "batch"


def test_a_prefix_shorter_than_the_models_minimum_is_not_cached(
    sdk_client: anthropic.Anthropic,
) -> None:
    # claude-sonnet-4-6 caches from 2,048 tokens: ~1,000 tokens marked are billed as plain input
    short = [
        {"type": "text", "text": "Short rubric. " * 280, "cache_control": {"type": "ephemeral"}}
    ]
    got = messages(sdk_client, {"a": params("Q1", system=short), "b": params("Q2", system=short)})
    for message in got.values():
        usage = message.usage
        assert usage.cache_creation_input_tokens == usage.cache_read_input_tokens == 0
        assert usage.input_tokens > 900
