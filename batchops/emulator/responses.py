"""What one batch request turns into: a validation error or a plausible assistant Message.

Everything here is a pure function of the request's params (plus the cache state decided at create
time), so the same params always give the same text and usage and runs are reproducible. The text
is deliberately dull: plausible in shape, never clever.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Any

import orjson

# Params the batch endpoint refuses (ANTHROPIC_BATCHES_API.md §2.1); reported per request.
FORBIDDEN_KEYS = ("speed", "store", "previous_thread_event_id", "cache_hint", "context_hint")
ROLES = ("user", "assistant")

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


def validation_error(params: Any) -> str | None:
    """Why the Messages API would refuse these params, or None if it would accept them."""
    if not isinstance(params, dict):
        return "params: Input should be a valid dictionary"
    for key in ("model", "max_tokens", "messages"):
        if key not in params:
            return f"{key}: Field required"
    if not isinstance(params["model"], str) or not params["model"]:
        return "model: Input should be a valid string"
    max_tokens = params["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return "max_tokens: Input should be a valid integer"
    if max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    if params.get("stream") is True:
        return "stream: streaming is not supported in the Message Batches API"
    for key in FORBIDDEN_KEYS:
        if key in params:
            return f"{key}: not supported in the Message Batches API"
    if params.get("research_preview_2026_02") == "active":
        return "research_preview_2026_02: not supported in the Message Batches API"
    messages = params["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(msg.get("content"), str | list):
            return f"messages.{i}.content: Input should be a valid string or list"
    if not isinstance(params.get("system", ""), str | list):
        return "system: Input should be a valid string or list"
    return None


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
    return out


def _chars(block: Any) -> int:
    if isinstance(block, dict) and isinstance(block.get("text"), str):
        return len(block["text"])
    return len(canonical(block))


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def cache_prefix(params: dict[str, Any]) -> tuple[str, str] | None:
    """(hash, ttl) of the prompt prefix up to the last `cache_control` block, if any."""
    blocks = _blocks(params)
    last = None
    for i, block in enumerate(blocks):
        if isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
            last = i
    if last is None:
        return None
    prefix = [params.get("model"), blocks[: last + 1]]
    ttl = blocks[last]["cache_control"].get("ttl", "5m")
    return hashlib.sha256(canonical(prefix)).hexdigest(), "1h" if ttl == "1h" else "5m"


def _usage(params: dict[str, Any], cache_state: str | None) -> dict[str, Any]:
    blocks = _blocks(params)
    total = _tokens(sum(_chars(b) for b in blocks)) + 3 * len(params.get("messages") or []) + 4
    cached = 0
    ttl = "5m"
    if cache_state is not None:
        last = max(i for i, b in enumerate(blocks) if isinstance(b, dict) and "cache_control" in b)
        cached = min(total - 1, _tokens(sum(_chars(b) for b in blocks[: last + 1])))
        if blocks[last]["cache_control"].get("ttl") == "1h":
            ttl = "1h"
    write = cached if cache_state == "write" else 0
    read = cached if cache_state == "read" else 0
    return {
        "input_tokens": total - cached,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": write if ttl == "5m" else 0,
            "ephemeral_1h_input_tokens": write if ttl == "1h" else 0,
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


def build_message(params: dict[str, Any], message_id: str, cache_state: str | None) -> dict:
    """A succeeded result's Message; `cache_state` is None, "write" or "read"."""
    rng = random.Random(hashlib.sha256(canonical(params)).digest())
    text = _text(params, rng)
    usage = _usage(params, cache_state)
    max_tokens = params["max_tokens"]
    words = text.split(" ")
    output_tokens = max(1, math.ceil(len(words) * 1.3))
    stop_reason = "end_turn"
    if output_tokens > max_tokens:
        keep = max(1, int(max_tokens / 1.3))
        text = " ".join(words[:keep])
        output_tokens = max_tokens
        stop_reason = "max_tokens"
    usage["output_tokens"] = output_tokens
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": [{"type": "text", "text": text}],
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
