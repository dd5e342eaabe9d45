"""The emulator refuses what the API refuses, and answers tools and thinking the way the API does.

Params are checked when the batch is processed, as in the API: a bad request is an `errored`
result with `invalid_request_error`, never a refused create.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import anthropic
import pytest

from batchops import apirules
from batchops.emulator import EmulatorAdmin

MODEL = "claude-sonnet-4-6"


def params(text: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def run(client: anthropic.Anthropic, reqs: dict[str, dict]) -> dict[str, Any]:
    batch = client.messages.batches.create(
        requests=[{"custom_id": k, "params": v} for k, v in reqs.items()]
    )
    return {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}


THINKING = {"type": "enabled", "budget_tokens": 1024}
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "units": {"type": "string", "enum": ["c", "f"]},
            "hourly": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                "required": ["lat", "lon"],
            },
            "optional": {"type": "string"},
        },
        "required": ["city", "days", "units", "hourly", "tags", "where"],
    },
}
CLOCK = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


# ---------------------------------------------------------------- refusals
REFUSED = {
    "unknown_model": ({**params(), "model": "claude-sonnet-9"}, "model: 'claude-sonnet-9'"),
    "typo_param": ({**params(), "max_token": 5}, "max_token: Extra inputs are not permitted"),
    "budget_too_big": (
        params(thinking={"type": "enabled", "budget_tokens": 2000}),
        "must be greater than `thinking.budget_tokens`",
    ),
    "budget_too_small": (
        params(thinking={"type": "enabled", "budget_tokens": 100}),
        "greater than or equal to 1024",
    ),
    "thinking_temperature": (params(thinking=THINKING, temperature=0.0), "temperature"),
    "thinking_top_k": (params(thinking=THINKING, top_k=5), "top_k"),
    "thinking_top_p": (params(thinking={"type": "adaptive"}, top_p=0.5), "top_p"),
    "thinking_forced_tool": (
        params(thinking=THINKING, tools=[WEATHER], tool_choice={"type": "any"}),
        "forces tool use",
    ),
    "tool_choice_without_tools": (params(tool_choice={"type": "any"}), "tool_choice"),
    "tool_choice_unknown_tool": (
        params(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}),
        "'nope' not found",
    ),
    "bad_tool_schema": (params(tools=[{"name": "x"}]), "input_schema"),
    "over_model_max": (
        {**params(), "model": "claude-haiku-4-5", "max_tokens": 100_000},
        "max_tokens: 100000 > 64000",
    ),
    "temperature_range": (params(temperature=1.5), "temperature"),
    "five_breakpoints": (
        params(
            system=[
                {"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}}
                for i in range(5)
            ]
        ),
        "A maximum of 4 blocks with cache_control",
    ),
}


def test_invalid_params_become_errored_results(sdk_client: anthropic.Anthropic) -> None:
    reqs = {k: p for k, (p, _) in REFUSED.items()}
    batch = sdk_client.messages.batches.create(
        requests=[{"custom_id": k, "params": v} for k, v in {**reqs, "ok": params()}.items()]
    )
    assert batch.processing_status == "in_progress"  # params are not checked at create
    got = {r.custom_id: r.result for r in sdk_client.messages.batches.results(batch.id)}
    assert got["ok"].type == "succeeded"
    for key, (_, fragment) in REFUSED.items():
        assert got[key].type == "errored", key
        assert got[key].error.error.type == "invalid_request_error", key
        assert fragment in got[key].error.error.message, (key, got[key].error.error.message)
    counts = sdk_client.messages.batches.retrieve(batch.id).request_counts
    assert counts.errored == len(REFUSED) and counts.succeeded == 1


def test_accepted_combinations_succeed(sdk_client: anthropic.Anthropic) -> None:
    got = run(
        sdk_client,
        {
            "thinking_t1": params(thinking=THINKING, temperature=1, top_p=0.95),
            "adaptive": params(thinking={"type": "adaptive"}),
            "disabled_temp": params(thinking={"type": "disabled"}, temperature=0.0, top_k=3),
            "dated": {**params(), "model": "claude-haiku-4-5-20251001"},
            "auto_tool_thinking": params(thinking=THINKING, tools=[WEATHER]),
            "metadata": params(metadata={"user_id": "u1"}, stop_sequences=["END"]),
        },
    )
    assert {k: v.type for k, v in got.items()} == dict.fromkeys(got, "succeeded")


def test_extra_models_accepts_a_newer_model(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    newer = {**params(), "model": "claude-sonnet-9"}
    assert run(sdk_client, {"a": newer})["a"].type == "errored"
    emulator_admin.set_config(extra_models=["claude-sonnet-9"])
    ok = run(sdk_client, {"a": newer})["a"]
    assert ok.type == "succeeded" and ok.message.model == "claude-sonnet-9"


# ---------------------------------------------------------------- answers
def test_forced_tool_gets_a_tool_use_block_matching_the_schema(
    sdk_client: anthropic.Anthropic,
) -> None:
    reqs = {
        "tool": params(tools=[CLOCK, WEATHER], tool_choice={"type": "tool", "name": "get_weather"}),
        "any": params("What time is it?", tools=[WEATHER, CLOCK], tool_choice={"type": "any"}),
    }
    first = run(sdk_client, reqs)
    msg = first["tool"].message
    assert msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["tool_use"]  # forced: no text before the call
    use = msg.content[0]
    assert use.name == "get_weather" and use.id.startswith("toolu_01")
    data = use.input
    assert set(data) == set(WEATHER["input_schema"]["required"])
    assert isinstance(data["city"], str) and data["city"]
    assert isinstance(data["days"], int) and 1 <= data["days"] <= 7
    assert data["units"] in ("c", "f") and isinstance(data["hourly"], bool)
    assert isinstance(data["tags"], list) and all(isinstance(t, str) for t in data["tags"])
    assert set(data["where"]) == {"lat", "lon"}
    assert all(isinstance(v, float | int) for v in data["where"].values())
    assert first["any"].message.content[0].name == "get_weather"  # no tool named: the first
    again = run(sdk_client, reqs)
    assert again["tool"].message.content[0].input == data  # deterministic
    assert again["tool"].message.content[0].id != use.id


def test_auto_tool_choice_calls_a_tool_only_when_the_prompt_names_it(
    sdk_client: anthropic.Anthropic,
) -> None:
    got = run(
        sdk_client,
        {
            "named": params("Please call get_time for me.", tools=[WEATHER, CLOCK]),
            "plain": params("Say hello.", tools=[WEATHER, CLOCK]),
            "none": params("Call get_time.", tools=[CLOCK], tool_choice={"type": "none"}),
        },
    )
    named = got["named"].message
    assert [b.type for b in named.content] == ["text", "tool_use"]
    assert named.content[1].name == "get_time" and named.content[1].input == {}
    assert named.stop_reason == "tool_use"
    for key in ("plain", "none"):
        assert [b.type for b in got[key].message.content] == ["text"]
        assert got[key].message.stop_reason == "end_turn"


def test_thinking_block_with_signature_comes_first(sdk_client: anthropic.Anthropic) -> None:
    got = run(
        sdk_client,
        {
            "on": params(thinking=THINKING),
            "omitted": params(thinking={**THINKING, "display": "omitted"}),
            "adaptive_tight": {**params(thinking={"type": "adaptive"}), "max_tokens": 20},
        },
    )
    msg = got["on"].message
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking and len(msg.content[0].signature) > 40
    thinking_tokens = msg.usage.output_tokens_details.thinking_tokens
    assert 0 < thinking_tokens <= 1024 and msg.usage.output_tokens > thinking_tokens
    hidden = got["omitted"].message.content[0]
    assert hidden.type == "thinking" and hidden.thinking == "" and hidden.signature
    tight = got["adaptive_tight"].message
    assert tight.usage.output_tokens <= 20 and tight.content[0].type == "thinking"


def test_top_level_cache_control_caches_up_to_the_last_block(
    sdk_client: anthropic.Anthropic,
) -> None:
    shared = "Shared reference text. " * 900
    top = {"type": "ephemeral"}
    first = run(sdk_client, {"a": params(shared, cache_control=top)})["a"].message.usage
    assert first.cache_creation_input_tokens > 1000 and first.cache_read_input_tokens == 0
    two = run(
        sdk_client,
        {"b": params(shared, cache_control=top), "c": params(shared, cache_control=top)},
    )
    reads = sorted(r.message.usage.cache_read_input_tokens for r in two.values())
    assert reads == [first.cache_creation_input_tokens] * 2


def test_first_request_in_a_batch_writes_the_cache_and_later_ones_read(
    sdk_client: anthropic.Anthropic,
) -> None:
    system = [{"type": "text", "text": "Rubric. " * 1200, "cache_control": {"type": "ephemeral"}}]
    got = run(sdk_client, {f"q{i}": params(f"Question {i}", system=system) for i in range(4)})
    usage = {k: v.message.usage for k, v in got.items()}
    writes = [k for k, u in usage.items() if u.cache_creation_input_tokens]
    assert writes == ["q0"]
    assert all(usage[k].cache_read_input_tokens > 0 for k in ("q1", "q2", "q3"))


# ---------------------------------------------------------------- the rules module
def test_request_problems_lists_every_problem_offline() -> None:
    bad = {"model": "gpt-4", "max_token": 5, "messages": [], "thinking": {"type": "enabled"}}
    problems = apirules.request_problems(bad)
    assert "max_tokens: Field required" in problems
    assert "max_token: Extra inputs are not permitted" in problems
    assert "model: 'gpt-4' is not a known model id" in problems
    assert "messages: at least one message is required" in problems
    assert "thinking.enabled.budget_tokens: Field required" in problems
    assert apirules.request_problems(params()) == []
    assert apirules.request_problems({**params(), "stream": True}, batch=False) == []
    assert apirules.request_problems({**params(), "stream": True}) != []
    assert apirules.request_problems({**params(), "model": "x"}, extra_models=["x"]) == []


@pytest.mark.parametrize("model", sorted(apirules.MAX_OUTPUT_TOKENS))
def test_model_limits_only_name_known_models(model: str) -> None:
    assert model in apirules.MODELS


def test_apirules_is_a_leaf_module() -> None:
    tree = ast.parse(Path(apirules.__file__).read_text())
    imported = [
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in (n.names if isinstance(n, ast.Import) else [n])
    ]
    assert [m for m in imported if m and m.startswith("batchops")] == []
