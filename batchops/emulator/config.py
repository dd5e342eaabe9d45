"""Settings of one emulator process.

Kept apart from the app so the CLI, the tests and `running_emulator` build the same object, and so
the few settings a test may change while the server runs (`RuntimeSettings`) are named in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Outcomes a request can be given by rate; errored ones are named by their error type.
RATE_OUTCOMES: tuple[str, ...] = (
    "invalid_request_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
    "rate_limit_error",
    "expired",
    "canceled",
)


def _check_rates(rates: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(rates) - set(RATE_OUTCOMES))
    if unknown:
        raise ValueError(f"unknown fault outcome(s) {unknown}; known: {list(RATE_OUTCOMES)}")
    if any(not 0.0 <= r <= 1.0 for r in rates.values()):
        raise ValueError("every fault rate must be between 0 and 1")
    if sum(rates.values()) > 1.0:
        raise ValueError("fault rates add up to more than 1")
    return dict(rates)


class RuntimeSettings(BaseModel):
    """Settings `POST /_emulator/config` may change; they apply to batches created afterwards."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    processing_seconds: float = Field(default=1.0, ge=0)
    speed: float = Field(default=1.0, gt=0)
    cancel_seconds: float = Field(default=0.25, ge=0)
    seed: int = 0
    fault_rates: dict[str, float] = Field(default_factory=dict)
    # Model ids accepted besides batchops.apirules.MODELS (a model newer than that list).
    extra_models: list[str] = Field(default_factory=list)
    # Whether a deleted batch's id still works as a list cursor (`after_id`, `before_id`): the
    # API does not document it. "refused" answers it as an id never seen (400).
    deleted_cursors: Literal["accepted", "refused"] = "accepted"
    # Requests of unfinished batches the workspace may hold (the processing queue); a create
    # past it is refused with 429 rate_limit_error. 500,000: the highest tier's limit.
    max_queued_requests: int = Field(default=500_000, ge=1)

    @field_validator("fault_rates")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_rates(v)


class EmulatorConfig(RuntimeSettings):
    """Everything needed to start an emulator.

    `processing_seconds / speed` is how long a batch stays in progress; `speed` never touches the
    calendar (expiry and archive follow the clock, which only `advance_clock` moves ahead).
    `fault_rates` maps an outcome from RATE_OUTCOMES to the share of requests given it.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    db_path: Path | None = None
    max_body_bytes: int = Field(default=256_000_000, gt=0)
    api_key: str | None = None
    # False turns every fault off: markers are plain text, and rates and HTTP faults are refused.
    faults_enabled: bool = True

    @model_validator(mode="after")
    def _no_rates_without_faults(self) -> EmulatorConfig:
        if not self.faults_enabled and self.fault_rates:
            raise ValueError("fault_rates: faults are off (faults none); drop the rates")
        return self

    def runtime(self) -> RuntimeSettings:
        return RuntimeSettings(**self.model_dump(include=set(RuntimeSettings.model_fields)))
