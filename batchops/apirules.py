"""What the Messages API refuses in a batch request's `params`, as plain rules with no I/O.

One copy of the rules, so the emulator can reject what the real API rejects and the spec validator
can warn about the same things offline before anything is sent. The rules follow the installed
`anthropic` SDK's types (model ids, top-level params, thinking and tool_choice shapes) and
shared/ANTHROPIC_BATCHES_API.md (params a batch may not carry). Messages follow the API's style,
`<location>: <problem>`; their exact wording is ours.

This module is a leaf: it imports nothing from batchops.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# Model ids the API serves: the SDK's `Model` literal (SDK 2.15.0) plus the older ids batchops
# still prices (batchops/data/prices.toml), with their dated and `-0` aliases.
MODELS: frozenset[str] = frozenset(
    {
        "claude-fable-5-2",
        "claude-mythos-5-2",
        "claude-haiku-5-5",
        "claude-sonnet-5-5",
        "claude-fable-5-1",
        "claude-opus-5-5",
        "claude-mythos-5-1",
        "claude-sonnet-5",
        "claude-fable-5",
        "claude-mythos-5",
        "claude-opus-5",
        "claude-opus-4-8",
        "claude-opus-4-7",
        "claude-mythos-preview",
        "claude-opus-4-6",
        "claude-sonnet-4-6",
        "claude-haiku-4-5",
        "claude-haiku-4-5-20251001",
        "claude-opus-4-5",
        "claude-opus-4-5-20251101",
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "claude-opus-4-1",
        "claude-opus-4-1-20250805",
        "claude-opus-4-0",
        "claude-opus-4-20250514",
        "claude-sonnet-4-0",
        "claude-sonnet-4-20250514",
    }
)

# The most output tokens a model allows, where known; a model not listed is not checked.
MAX_OUTPUT_TOKENS: dict[str, int] = {
    "claude-haiku-4-5": 64_000,  # ANTHROPIC_BATCHES_API.md §4, errored example
    "claude-haiku-4-5-20251001": 64_000,
    "claude-sonnet-4-5": 64_000,
    "claude-sonnet-4-5-20250929": 64_000,
    "claude-sonnet-4-0": 64_000,
    "claude-sonnet-4-20250514": 64_000,
    "claude-opus-4-1": 32_000,
    "claude-opus-4-1-20250805": 32_000,
    "claude-opus-4-0": 32_000,
    "claude-opus-4-20250514": 32_000,
}

# Top-level params of a Messages create body: the SDK's MessageCreateParams and its beta
# variant, plus the sampling params the API still accepts (temperature, top_p, top_k).
KNOWN_PARAMS: frozenset[str] = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "cache_control",
        "container",
        "diagnostics",
        "inference_geo",
        "metadata",
        "output_config",
        "service_tier",
        "speed",
        "stop_sequences",
        "stream",
        "system",
        "thinking",
        "tool_choice",
        "tools",
        "temperature",
        "top_p",
        "top_k",
        # beta
        "billing_policy",
        "compaction",
        "context_management",
        "fallback_credit_token",
        "fallbacks",
        "mcp_servers",
        "output_format",
        "thread",
        # known to the API, refused in a batch (ANTHROPIC_BATCHES_API.md §2.1)
        "store",
        "previous_thread_event_id",
        "cache_hint",
        "context_hint",
        "research_preview_2026_02",
    }
)

# Params a batch may not carry at all (ANTHROPIC_BATCHES_API.md §2.1).
BATCH_FORBIDDEN: tuple[str, ...] = (
    "speed",
    "store",
    "previous_thread_event_id",
    "cache_hint",
    "context_hint",
)

# The shortest prefix, in tokens, the API caches per model: a `cache_control` mark on a shorter
# prefix is accepted and ignored (billed as plain input, no cache write, no read). The shared API
# notes do not list these; they are the prompt-caching page as quoted by third parties (LiteLLM's
# docs of 2026-10-07, orq.ai), which disagree in places: a prices file may override a model with
# `cache_min_tokens` (see batchops.pricing). A model not listed is taken at DEFAULT_CACHE_MIN_TOKENS.
CACHE_MIN_TOKENS: dict[str, int] = {
    "claude-opus-5": 512,
    "claude-fable-5": 512,
    "claude-mythos-5": 512,
    "claude-sonnet-5": 1024,
    "claude-opus-4-8": 1024,
    "claude-opus-4-7": 4096,
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-sonnet-4-5": 1024,
    "claude-sonnet-4-0": 1024,
    "claude-sonnet-4": 1024,
    "claude-opus-4-1": 1024,
    "claude-opus-4-0": 1024,
    "claude-opus-4": 1024,
}
DEFAULT_CACHE_MIN_TOKENS = 1024
_DATED_ID = re.compile(r"-(\d{8}|latest)$")


def cache_min_tokens(model: str) -> int:
    """The shortest prefix (tokens) the API caches for `model` (its dated ids included)."""
    found = CACHE_MIN_TOKENS.get(model)
    if found is None:
        found = CACHE_MIN_TOKENS.get(_DATED_ID.sub("", model), DEFAULT_CACHE_MIN_TOKENS)
    return found


ROLES = ("user", "assistant")
THINKING_TYPES = ("enabled", "disabled", "adaptive", "between_tools")
THINKING_ON = ("enabled", "adaptive", "between_tools")
MIN_THINKING_BUDGET = 1024
MAX_CACHE_BREAKPOINTS = 4
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}\Z")
TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def thinking_enabled(params: dict[str, Any]) -> bool:
    """Whether `params` ask for thinking (any `thinking.type` but `disabled`)."""
    thinking = params.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in THINKING_ON


def _cache_breakpoints(params: dict[str, Any]) -> int:
    """How many blocks carry `cache_control` (tools, system, message content)."""
    blocks: list[Any] = list(params.get("tools") or [])
    if isinstance(params.get("system"), list):
        blocks += params["system"]
    for msg in params.get("messages") or []:
        if isinstance(msg, dict) and isinstance(msg.get("content"), list):
            blocks += msg["content"]
    return sum(1 for b in blocks if isinstance(b, dict) and b.get("cache_control") is not None)


def _message_problems(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ["messages: at least one message is required"]
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            out.append(f"messages.{i}.role: Input should be 'user' or 'assistant'")
            continue
        content = msg.get("content")
        if not isinstance(content, str | list):
            out.append(f"messages.{i}.content: Input should be a valid string or list")
        elif isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    out.append(f"messages.{i}.content.{j}.type: Field required")
    return out


def _tool_problems(params: dict[str, Any]) -> list[str]:
    out = []
    tools = params.get("tools")
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return ["tools: Input should be a valid list"]
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                out.append(f"tools.{i}: Input should be a valid dictionary")
                continue
            name = tool.get("name")
            if not isinstance(name, str) or not TOOL_NAME.match(name):
                out.append(
                    f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
                continue
            if name in names:
                out.append(f"tools: Tool names must be unique, {name!r} appears twice")
            names.append(name)
            if tool.get("type") in (None, "custom"):
                schema = tool.get("input_schema")
                if not isinstance(schema, dict):
                    out.append(f"tools.{i}.input_schema: Field required")
                elif schema.get("type") != "object":
                    out.append(f"tools.{i}.input_schema.type: Input should be 'object'")
    choice = params.get("tool_choice")
    if choice is None:
        return out
    if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICE_TYPES:
        return [*out, "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"]
    kind = choice["type"]
    if kind in ("any", "tool") and not names:
        out.append("tool_choice: tool_choice may only be specified while providing tools")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str):
            out.append("tool_choice.tool.name: Field required")
        elif names and name not in names:
            out.append(f"tool_choice.name: Tool {name!r} not found in tools")
    return out


def _thinking_problems(params: dict[str, Any]) -> list[str]:
    thinking = params.get("thinking")
    if thinking is None:
        return []
    if not isinstance(thinking, dict) or thinking.get("type") not in THINKING_TYPES:
        return [
            "thinking.type: Input should be 'enabled', 'disabled', 'adaptive' or 'between_tools'"
        ]
    out = []
    if thinking["type"] == "enabled":
        budget = thinking.get("budget_tokens")
        max_tokens = params.get("max_tokens")
        if not _is_int(budget):
            out.append("thinking.enabled.budget_tokens: Field required")
        elif budget < MIN_THINKING_BUDGET:
            out.append(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to "
                f"{MIN_THINKING_BUDGET}"
            )
        elif _is_int(max_tokens) and budget >= max_tokens:
            out.append(
                f"max_tokens: `max_tokens` ({max_tokens}) must be greater than "
                f"`thinking.budget_tokens` ({budget})"
            )
    if thinking.get("display") not in (None, "summarized", "omitted"):
        out.append(
            f"thinking.{thinking['type']}.display: Input should be 'summarized' or 'omitted'"
        )
    if thinking["type"] not in THINKING_ON:
        return out
    temperature = params.get("temperature")
    if temperature is not None and temperature != 1:
        out.append("temperature: `temperature` may only be set to 1 when thinking is enabled")
    if params.get("top_k") is not None:
        out.append("top_k: `top_k` cannot be set when thinking is enabled")
    top_p = params.get("top_p")
    if _is_number(top_p) and top_p < 0.95:
        out.append("top_p: `top_p` must be between 0.95 and 1 when thinking is enabled")
    choice = params.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        out.append("tool_choice: Thinking may not be enabled when tool_choice forces tool use")
    return out


def _sampling_problems(params: dict[str, Any]) -> list[str]:
    out = []
    for key in ("temperature", "top_p"):
        value = params.get(key)
        if value is not None and (not _is_number(value) or not 0 <= value <= 1):
            out.append(f"{key}: Input should be a number between 0 and 1")
    top_k = params.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        out.append("top_k: Input should be an integer greater than or equal to 0")
    stops = params.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        out.append("stop_sequences: Input should be a valid list of strings")
    return out


def request_problems(
    params: Any, *, batch: bool = True, extra_models: Iterable[str] = ()
) -> list[str]:
    """Every reason the API would refuse these Messages params; empty if it would accept them.

    With `batch`, also the params a Message Batch may not carry. `extra_models` are accepted
    as model ids besides MODELS (for models newer than this list).
    """
    if not isinstance(params, dict):
        return ["params: Input should be a valid dictionary"]
    out = [
        f"{key}: Field required" for key in ("model", "max_tokens", "messages") if key not in params
    ]
    out += [f"{key}: Extra inputs are not permitted" for key in params if key not in KNOWN_PARAMS]
    model = params.get("model")
    if "model" in params:
        if not isinstance(model, str) or not model:
            out.append("model: Input should be a valid string")
        elif model not in MODELS and model not in set(extra_models):
            out.append(f"model: {model!r} is not a known model id")
    max_tokens = params.get("max_tokens")
    if "max_tokens" in params:
        if not _is_int(max_tokens):
            out.append("max_tokens: Input should be a valid integer")
        elif max_tokens < 1:
            out.append("max_tokens: Input should be greater than or equal to 1")
        elif isinstance(model, str) and max_tokens > MAX_OUTPUT_TOKENS.get(model, max_tokens):
            out.append(
                f"max_tokens: {max_tokens} > {MAX_OUTPUT_TOKENS[model]}, which is the maximum "
                f"allowed number of output tokens for {model}"
            )
    if batch:
        if params.get("stream") is True:
            out.append("stream: streaming is not supported in the Message Batches API")
        out += [
            f"{key}: not supported in the Message Batches API"
            for key in BATCH_FORBIDDEN
            if key in params
        ]
        if params.get("research_preview_2026_02") == "active":
            out.append("research_preview_2026_02: not supported in the Message Batches API")
    if "messages" in params:
        out += _message_problems(params["messages"])
    system = params.get("system")
    if system is not None and not isinstance(system, str | list):
        out.append("system: Input should be a valid string or list")
    out += _sampling_problems(params)
    out += _thinking_problems(params)
    out += _tool_problems(params)
    breakpoints = _cache_breakpoints(params)
    if breakpoints > MAX_CACHE_BREAKPOINTS:
        out.append(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {breakpoints}."
        )
    return out
