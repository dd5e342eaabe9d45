"""The spec format checked without pydantic, for spec files with nothing wrong in them.

Importing pydantic and building the models of `batchops.spec.raw` costs about 100 ms, more than
a cold start's whole budget, and a project whose spec files changed since they were last kept
(`batchops.spec.projectcache`) pays it on every command until it runs once unchanged. Most spec
files are plain: tables of strings, numbers in range, lists of tables. `spec_of` reads such a
file to the same values the models give (a float field given an int gives a float, as strict
pydantic does), and returns None at the first thing it does not find plainly right: an unknown
field, a wrong type, a number out of range, a `moved` list. Then the models check the file and
say what is wrong, in their words, as before. `tests/test_rawplain.py` holds the two to the same
values for generated specs, and to None wherever pydantic refuses.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from batchops.spec.model import (
    MAX_ATTACHMENTS,
    MAX_ATTEMPTS_CAP,
    MAX_TOKENS_CAP,
    RENDER_MAX_SIZE_CAP,
    RENDER_MAX_SIZE_MIN,
    RENDER_SECONDS_CAP,
)

_FORMATS = ("jsonl", "csv", "json")
_DEFAULT_FIELDS = (
    "description", "model", "max_tokens", "system", "prompt", "messages", "params", "betas",
    "budget_usd", "reuse", "cache", "expected_output_tokens", "max_attempts", "render_seconds",
    "render_max_size", "output",
)  # fmt: skip
_JOB_FIELDS = (*_DEFAULT_FIELDS, "input", "items", "requests", "attachments")


class _Refused(Exception):
    """Not plainly right: the models check it."""


# A table of the spec's fields, as the models give them (every field None when not written).
NO_DEFAULTS = SimpleNamespace(**dict.fromkeys(_DEFAULT_FIELDS))


def spec_of(raw: dict[str, Any]) -> SimpleNamespace | None:
    """The checked spec (`defaults`, `jobs`), as `raw.spec_of` gives it; None when the models
    must check it."""
    try:
        return _spec(raw)
    except _Refused:
        return None


def _spec(raw: dict[str, Any]) -> SimpleNamespace:
    if not set(raw) <= {"$schema", "version", "defaults", "jobs"}:
        raise _Refused  # unknown fields, and `moved`
    if type(raw.get("version")) is not int:
        raise _Refused
    if raw.get("$schema") is not None:
        _text(raw["$schema"])
    defaults = raw.get("defaults")
    jobs = raw.get("jobs", {})
    if type(jobs) is not dict:
        raise _Refused
    return SimpleNamespace(
        defaults=None if defaults is None else _table(defaults, _DEFAULT_FIELDS),
        jobs={_text(name): _table(job, _JOB_FIELDS) for name, job in jobs.items()},
    )


def _table(raw: Any, fields: tuple[str, ...]) -> SimpleNamespace:
    if type(raw) is not dict or not set(raw) <= set(fields):
        raise _Refused
    values = dict.fromkeys(fields)
    for name, value in raw.items():
        if value is not None:
            values[name] = _CHECKS[name](value)
    return SimpleNamespace(**values)


def _text(value: Any, min_length: int = 0) -> str:
    if type(value) is not str or len(value) < min_length:
        raise _Refused
    return value


def _int(low: int, high: int) -> Any:
    def check(value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise _Refused
        return value

    return check


def _number(value: Any) -> float:
    # strict pydantic takes an int for a float, and gives a float
    if type(value) is int and abs(value) < 2**53:
        value = float(value)
    if type(value) is not float or not math.isfinite(value):
        raise _Refused
    return value


def _budget(value: Any) -> float:
    value = _number(value)
    if not value >= 0:
        raise _Refused
    return value


def _seconds(value: Any) -> float:
    value = _number(value)
    if not 0 < value <= RENDER_SECONDS_CAP:
        raise _Refused
    return value


def _tables(value: Any, min_length: int = 0) -> list[dict[str, Any]]:
    if type(value) is not list or len(value) < min_length:
        raise _Refused
    return [_mapping(v) for v in value]


def _mapping(value: Any) -> dict[str, Any]:
    if type(value) is not dict or not all(type(k) is str for k in value):
        raise _Refused
    return dict(value)


def _texts(value: Any, min_length: int = 0, max_items: int | None = None) -> list[str]:
    if type(value) is not list or (max_items is not None and len(value) > max_items):
        raise _Refused
    return [_text(v, min_length) for v in value]


def _system(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, dict) for b in value):
        return value
    raise _Refused


def _format(value: Any) -> str | None:
    if value is None:
        return None
    if type(value) is not str or value not in _FORMATS:
        raise _Refused
    return value


def _path_table(value: Any, fields: dict[str, Any]) -> SimpleNamespace:
    if type(value) is not dict or "path" not in value or not set(value) <= {"path", *fields}:
        raise _Refused
    out = {"path": _text(value["path"])}
    for name, check in fields.items():
        out[name] = check(value[name]) if name in value else None
    return SimpleNamespace(**out)


def _output(value: Any) -> SimpleNamespace:
    columns = lambda v: None if v is None else _texts(v, min_length=1)  # noqa: E731
    return _path_table(value, {"format": _format, "columns": columns})


def _input(value: Any) -> SimpleNamespace:
    if type(value) is not dict or "key" not in value:
        raise _Refused
    return _path_table(value, {"key": lambda v: _text(v, min_length=1), "format": _format})


def _requests(value: Any) -> SimpleNamespace:
    return _path_table({"path": value} if isinstance(value, str) else value, {})


_CHECKS = {
    "description": _text,
    "model": lambda v: _text(v, min_length=1),
    "max_tokens": _int(1, MAX_TOKENS_CAP),
    "system": _system,
    "prompt": _text,
    "messages": lambda v: _tables(v, min_length=1),
    "params": _mapping,
    "betas": _texts,
    "budget_usd": _budget,
    "reuse": lambda v: v if type(v) is bool else _refuse(),
    "cache": lambda v: v if type(v) is str and v in ("auto", "off") else _refuse(),
    "expected_output_tokens": _int(1, MAX_TOKENS_CAP),
    "max_attempts": _int(1, MAX_ATTEMPTS_CAP),
    "render_seconds": _seconds,
    "render_max_size": _int(RENDER_MAX_SIZE_MIN, RENDER_MAX_SIZE_CAP),
    "output": _output,
    "input": _input,
    "items": _tables,
    "requests": _requests,
    "attachments": lambda v: _texts(v, max_items=MAX_ATTACHMENTS),
}


def _refuse() -> Any:
    raise _Refused
