"""The spec file format as written: the pydantic models that check a parsed spec file.

Kept apart from `batchops.spec.model` because importing pydantic and building these models is
most of a cold start's cost: a project whose spec files are unchanged since they were last
checked loads from `batchops.spec.projectcache` without them, and `batchops schema` reads them.
Every model is closed (unknown fields are errors) and strict (no silent coercion).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from batchops.errors import location
from batchops.spec.model import (
    MAX_ATTACHMENTS,
    MAX_ATTEMPTS_CAP,
    MAX_TOKENS_CAP,
    RENDER_MAX_SIZE_CAP,
    RENDER_MAX_SIZE_MIN,
    RENDER_SECONDS_CAP,
    DataFormat,
    _loc,
)

_CLOSED = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _RawPath(BaseModel):
    model_config = _CLOSED
    path: str


class _RawInput(_RawPath):
    key: str = Field(min_length=1)
    format: DataFormat | None = None


class _RawOutput(_RawPath):
    format: DataFormat | None = None
    columns: list[Annotated[str, Field(min_length=1)]] | None = None


def _requests_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class _RawDefaults(BaseModel):
    """Fields a job may inherit from `[defaults]` (no item source)."""

    model_config = _CLOSED
    description: str | None = None
    model: str | None = Field(default=None, min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    system: str | list[dict[str, Any]] | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    params: dict[str, Any] | None = None
    betas: list[str] | None = None
    budget_usd: float | None = Field(default=None, ge=0)
    reuse: bool | None = None
    cache: Literal["auto", "off"] | None = None
    expected_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_ATTEMPTS_CAP)
    render_seconds: float | None = Field(default=None, gt=0, le=RENDER_SECONDS_CAP)
    render_max_size: int | None = Field(
        default=None, ge=RENDER_MAX_SIZE_MIN, le=RENDER_MAX_SIZE_CAP
    )
    output: _RawOutput | None = None

    @field_validator("render_seconds", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        # `render_seconds = 1` is as good as `1.0` (strict mode refuses ints for floats).
        return float(value) if type(value) is int else value

    @field_validator("system", mode="plain")
    @classmethod
    def _system(cls, value: Any) -> Any:
        # One readable message instead of one per union member.
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(b, dict) for b in value):
            return value
        raise ValueError("should be a string or a list of content blocks (tables)")


class _RawJob(_RawDefaults):
    input: _RawInput | None = None
    items: list[dict[str, Any]] | None = None
    requests: _RawPath | None = None
    attachments: list[str] | None = Field(default=None, max_length=MAX_ATTACHMENTS)

    _requests = field_validator("requests", mode="before")(_requests_shorthand)


class _RawMove(BaseModel):
    """`moved = [{ from = "old-name", to = "new-name" }]`: a job renamed, reviewed like code."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    from_: str = Field(alias="from")
    to: str


class _RawSpec(BaseModel):
    model_config = _CLOSED
    # An editor's pointer at the JSON Schema (`batchops schema`); read by editors, ignored here.
    # TOML specs use a `#:schema ./path` comment instead.
    schema_: str | None = Field(default=None, alias="$schema")
    version: int
    defaults: _RawDefaults | None = None
    jobs: dict[str, _RawJob] = Field(default_factory=dict)
    moved: list[_RawMove] = Field(default_factory=list)


def spec_of(shown: str, raw: dict[str, Any]) -> _RawSpec | list[str]:
    """The checked spec of file `shown`, or one problem line per thing wrong with it."""
    try:
        return _RawSpec.model_validate(raw)
    except ValidationError as e:
        return _validation_lines(shown, e)


def _validation_lines(shown: str, e: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    for err in e.errors(include_url=False):
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field missing"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(location(shown, _loc(prefix + tuple(err["loc"])), msg))
    return lines
