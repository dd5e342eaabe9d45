"""A small client for the emulator's `/_emulator/` admin calls, for tests and scripts.

It talks plain HTTP (httpx2, which the SDK already depends on) and ignores proxy settings, so it
works however the environment is set up.
"""

from __future__ import annotations

from typing import Any

import httpx2


class EmulatorAdmin:
    """Move the emulator's clock, change its settings, queue faults and read its counters."""

    def __init__(self, base_url: str, timeout: float = 30.0, api_key: str | None = None) -> None:
        """`api_key` is needed when the emulator was started with one; admin calls check it too."""
        headers = {"x-api-key": api_key} if api_key else {}
        self._http = httpx2.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, trust_env=False, headers=headers
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmulatorAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def advance_clock(self, seconds: float) -> float:
        """Jump ahead: every stored instant moves `seconds` into the past. Returns the offset."""
        return self._call("POST", "/_emulator/clock", {"advance_seconds": seconds})[
            "offset_seconds"
        ]

    def set_config(self, **settings: Any) -> dict[str, Any]:
        """Change runtime settings: processing_seconds, speed, cancel_seconds, seed, fault_rates."""
        return self._call("POST", "/_emulator/config", settings)

    def add_faults(self, faults: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Queue one-shot HTTP faults (see faults.HttpFault); returns every pending fault."""
        return self._call("POST", "/_emulator/faults", faults)["pending"]

    def clear_faults(self) -> None:
        self._call("DELETE", "/_emulator/faults")

    def stats(self) -> dict[str, Any]:
        """`{"batches_created": n, "submissions": {custom_id: count}}`."""
        return self._call("GET", "/_emulator/stats")
