"""What one batch request turns into: a validation error or a plausible assistant Message.

Everything here is a pure function of the request's params (plus the cache state decided at create
time), so the same params always give the same text and usage and runs are reproducible. The text
is deliberately dull: plausible in shape, never clever.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
from collections.abc import Iterable
from typing import Any

import orjson

from batchops.apirules import cache_min_tokens, request_problems, thinking_enabled
from batchops.emulator.clock import derived_id

WORDS = (
    "the result looks consistent with the request and the main points are covered here "
    "overall this summary keeps to the facts given in the prompt without adding detail "
    "in short the answer is brief clear and suitable for further processing downstream"
).split()

CHOICE = re.compile(r"\b([A-Za-z][\w-]*), ([A-Za-z][\w-]*),? or ([A-Za-z][\w-]*)\b")
EITHER = re.compile(r"\beither ([A-Za-z][\w-]*) or ([A-Za-z][\w-]*)\b", re.IGNORECASE)


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes, the basis of every deterministic choice here."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def validation_error(params: Any, extra_models: Iterable[str] = ()) -> str | None:
    """Why the Messages API would refuse these params in a batch, or None if it would accept them."""
    problems = request_problems(params, batch=True, extra_models=extra_models)
    return problems[0] if problems else None


def _blocks(params: dict[str, Any]) -> list[Any]:
    """The prompt as an ordered list of blocks: tools, system, then message content."""
    out: list[Any] = list(params.get("tools") or [])
    system = params.get("system")
    if isinstance(system, str):
        out.append({"type": "text", "text": system})
    elif isinstance(system, list):
        out.extend(system)
    for msg in params.get("messages") or []:
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"type": "text", "text": content})
        elif isinstance(content, list):
            out.extend(content)
    top = params.get("cache_control")
    if isinstance(top, dict) and out and isinstance(out[-1], dict):
        # Top-level cache_control marks the last cacheable block (SDK MessageCreateParams).
        out[-1] = {**out[-1], "cache_control": top}
    return out


def _chars(block: Any) -> int:
    if isinstance(block, dict) and isinstance(block.get("text"), str):
        return len(block["text"])
    return len(canonical(block))


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def cache_prefix(params: dict[str, Any]) -> tuple[str, str] | None:
    """(hash, ttl) of the prompt prefix up to the last `cache_control` block, if any and if it
    is long enough for the model to cache (a shorter one is billed as plain input, as the API
    does)."""
    blocks = _blocks(params)
    last = None
    for i, block in enumerate(blocks):
        if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
            last = i
    if last is None:
        return None
    if _tokens(sum(_chars(b) for b in blocks[: last + 1])) < cache_min_tokens(
        str(params.get("model", ""))
    ):
        return None
    prefix = [params.get("model"), blocks[: last + 1]]
    ttl = blocks[last]["cache_control"].get("ttl", "5m")
    return hashlib.sha256(canonical(prefix)).hexdigest(), "1h" if ttl == "1h" else "5m"


def _usage(params: dict[str, Any], cache_state: str | None) -> dict[str, Any]:
    blocks = _blocks(params)
    total = _tokens(sum(_chars(b) for b in blocks)) + 3 * len(params.get("messages") or []) + 4
    cached = hour = 0
    if cache_state is not None:
        marks = [
            (i, b["cache_control"].get("ttl") == "1h")
            for i, b in enumerate(blocks)
            if isinstance(b, dict) and isinstance(b.get("cache_control"), dict)
        ]
        last = marks[-1][0]
        cached = min(total - 1, _tokens(sum(_chars(b) for b in blocks[: last + 1])))
        # As the API writes a prefix of mixed TTLs: at 1 hour up to its last 1-hour mark, at 5
        # minutes after it (a longer TTL must come first).
        long = max((i for i, one_hour in marks if one_hour), default=None)
        if long is not None:
            hour = min(cached, _tokens(sum(_chars(b) for b in blocks[: long + 1])))
    write = cached if cache_state == "write" else 0
    read = cached if cache_state == "read" else 0
    write_1h = min(write, hour)
    return {
        "input_tokens": total - cached,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": write - write_1h,
            "ephemeral_1h_input_tokens": write_1h,
        },
        "output_tokens": 0,
        "service_tier": "batch",
        "inference_geo": "not_available",
    }


def _last_user_text(params: dict[str, Any]) -> str:
    for msg in reversed(params.get("messages") or []):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _text(params: dict[str, Any], rng: random.Random) -> str:
    prompt = _last_user_text(params)
    system = params.get("system")
    if isinstance(system, list):
        system = " ".join(b.get("text", "") for b in system if isinstance(b, dict))
    m = next(
        (
            m
            for text in (prompt, system if isinstance(system, str) else "")
            for m in (CHOICE.search(text), EITHER.search(text))
            if m
        ),
        None,
    )
    if m:
        return rng.choice(m.groups())
    n = rng.randint(8, 30)
    words = [rng.choice(WORDS) for _ in range(n)]
    return (" ".join(words)).capitalize() + "."


def _rng(params: dict[str, Any], purpose: str) -> random.Random:
    return random.Random(hashlib.sha256(canonical(params) + purpose.encode()).digest())


def _word_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.split(" ")) * 1.3)) if text else 0


def _thinking_block(params: dict[str, Any], room: int) -> tuple[dict[str, Any], int]:
    """A thinking block with a signature, and the output tokens it used (at most `room`)."""
    rng = _rng(params, "thinking")
    thinking = params["thinking"]
    limit = room
    if thinking.get("type") == "enabled":
        limit = min(room, thinking["budget_tokens"])
    words = [rng.choice(WORDS) for _ in range(rng.randint(20, 60))]
    thought = "Let me work through the request. " + " ".join(words) + "."
    tokens = _word_tokens(thought)
    if tokens > limit:
        thought = " ".join(thought.split(" ")[: max(1, int(limit / 1.3))])
        tokens = min(limit, _word_tokens(thought))
    signature = base64.b64encode(hashlib.sha512(canonical(params) + thought.encode()).digest())
    block = {
        "type": "thinking",
        "thinking": "" if thinking.get("display") == "omitted" else thought,
        "signature": signature.decode(),
    }
    return block, tokens


def _custom_tools(params: dict[str, Any]) -> list[dict[str, Any]]:
    tools = params.get("tools") or []
    return [
        t
        for t in tools
        if isinstance(t, dict)
        and t.get("type") in (None, "custom")
        and isinstance(t.get("input_schema"), dict)
    ]


def _answers_tool_result(params: dict[str, Any]) -> bool:
    last = (params.get("messages") or [{}])[-1]
    content = last.get("content") if isinstance(last, dict) else None
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


def chosen_tool(params: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
    """(tool, forced) the reply calls, or None for a text reply.

    `tool_choice` `tool` calls that tool and `any` the tool the last user message names (else the
    first one); with `auto` (or no tool_choice) a tool is called only when the last user message
    names it and is not itself a tool result. Server tools are never called.
    """
    tools = _custom_tools(params)
    choice = params.get("tool_choice") or {"type": "auto"}
    kind = choice.get("type")
    if not tools or kind == "none":
        return None
    if kind == "tool":
        named = next((t for t in tools if t["name"] == choice.get("name")), None)
        return (named, True) if named is not None else None
    prompt = _last_user_text(params)
    mentioned = next((t for t in tools if re.search(rf"\b{re.escape(t['name'])}\b", prompt)), None)
    if kind == "any":
        return mentioned or tools[0], True
    if mentioned is None or _answers_tool_result(params):
        return None
    return mentioned, False


def example_value(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A deterministic value of the JSON schema's type: required properties only, for objects."""
    if not isinstance(schema, dict):
        return "example"
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return example_value((usable or options)[0], rng, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "integer":
        low = math.ceil(schema.get("minimum", 0))
        return rng.randint(low, max(low, math.floor(schema.get("maximum", low + 100))))
    if kind == "number":
        low = schema.get("minimum", 0)
        return round(rng.uniform(low, max(low, schema.get("maximum", low + 100))), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "array":
        n = max(1, schema.get("minItems", 1))
        n = min(n, schema.get("maxItems", n))
        return [example_value(schema.get("items", {}), rng, depth + 1) for _ in range(n)]
    if kind == "object":
        props = schema.get("properties") or {}
        required = [k for k in schema.get("required") or [] if isinstance(k, str)]
        if depth > 8:
            return {}
        return {k: example_value(props.get(k, {}), rng, depth + 1) for k in required}
    formats = {"date": "2026-01-15", "date-time": "2026-01-15T09:30:00Z", "email": "a@example.com"}
    if schema.get("format") in formats:
        return formats[schema["format"]]
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    return text[: schema.get("maxLength", len(text))].ljust(schema.get("minLength", 0), "x")


def _tool_use_block(
    params: dict[str, Any], tool: dict[str, Any], message_id: str
) -> tuple[dict[str, Any], int]:
    rng = _rng(params, "tool:" + tool["name"])
    value = example_value(tool["input_schema"], rng)
    digest = hashlib.sha256(f"{message_id}\x00{tool['name']}".encode()).digest()
    block = {
        "type": "tool_use",
        "id": derived_id("toolu_", digest),
        "name": tool["name"],
        "input": value if isinstance(value, dict) else {},
    }
    return block, 10 + _tokens(len(canonical(block["input"])))


def build_message(params: dict[str, Any], message_id: str, cache_state: str | None) -> dict:
    """A succeeded result's Message; `cache_state` is None, "write" or "read".

    Content is a thinking block (with a signature) when thinking is on, then either a tool_use
    block (see `chosen_tool`, preceded by a short text unless the tool was forced) or text.
    Thinking counts toward `max_tokens`, as it does in the API.
    """
    rng = random.Random(hashlib.sha256(canonical(params)).digest())
    text = _text(params, rng)
    usage = _usage(params, cache_state)
    room = params["max_tokens"]
    content: list[dict[str, Any]] = []
    thinking_tokens = 0
    if thinking_enabled(params):
        block, thinking_tokens = _thinking_block(params, max(0, room - 1))
        content.append(block)
        room -= thinking_tokens
    stop_reason = "end_turn"
    tool = chosen_tool(params)
    if tool is not None:
        target, forced = tool
        text = "" if forced else f"I'll use the {target['name']} tool."
    words = text.split(" ") if text else []
    text_tokens = _word_tokens(text)
    if text_tokens > room:
        keep = max(1, int(room / 1.3)) if room > 0 else 0
        text = " ".join(words[:keep])
        text_tokens = room  # stopped at the limit: every remaining token was used
        stop_reason = "max_tokens"
    if text:
        content.append({"type": "text", "text": text})
    room -= text_tokens
    output_tokens = thinking_tokens + text_tokens
    if tool is not None and stop_reason != "max_tokens":
        block, tool_tokens = _tool_use_block(params, tool[0], message_id)
        if tool_tokens <= room:
            content.append(block)
            output_tokens += tool_tokens
            stop_reason = "tool_use"
        else:
            output_tokens += room
            stop_reason = "max_tokens"
    usage["output_tokens"] = max(1, output_tokens)
    if thinking_tokens:
        usage["output_tokens_details"] = {"thinking_tokens": thinking_tokens}
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def errored(error_type: str, message: str) -> dict[str, Any]:
    """An errored result's payload: a full error envelope with a null request_id."""
    return {
        "type": "errored",
        "error": {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": None,
        },
    }


FAULT_MESSAGES = {
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
    "timeout_error": "Request timed out",
    "rate_limit_error": "Rate limited",
    "invalid_request_error": "Invalid request (injected by the emulator)",
}
