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

    # -------------------------------------------------------------- shared-workspace faults
    def teammate_create(
        self,
        requests: list[dict[str, Any]],
        hidden_seconds: float | None = None,
        hidden_lists: int | None = None,
    ) -> dict[str, Any]:
        """Create a batch as another client in the same workspace would; returns the batch.

        It lists and retrieves like any batch but is not counted in `stats()["submissions"]`.
        `hidden_seconds` / `hidden_lists` keep it out of list calls for a while.
        """
        body: dict[str, Any] = {"requests": requests}
        if hidden_seconds is not None:
            body["hidden_seconds"] = hidden_seconds
        if hidden_lists is not None:
            body["hidden_lists"] = hidden_lists
        return self._call("POST", "/_emulator/teammate/batches", body)

    def hide_next_create(
        self, seconds: float | None = None, lists: int | None = None, lose_response: bool = False
    ) -> list[dict[str, Any]]:
        """The next create commits and answers (or, with `lose_response`, its answer is lost),
        but list calls leave the batch out for `seconds` of emulator time or for the next
        `lists` list calls (give exactly one)."""
        fault: dict[str, Any] = {"kind": "hidden", "endpoint": "create"}
        if lose_response:
            fault["lose_response"] = True
        if seconds is not None:
            fault["hidden_seconds"] = seconds
        if lists is not None:
            fault["hidden_lists"] = lists
        return self.add_faults([fault])

    def refuse_next_create(self, status: int = 500, **fields: Any) -> list[dict[str, Any]]:
        """The next create answers `status` before anything is committed (no batch is made)."""
        return self.add_faults(
            [{"kind": "status", "status": status, "endpoint": "create", **fields}]
        )

    def lose_next_create_response(self) -> list[dict[str, Any]]:
        """The next create commits its batch, then the connection closes without an answer."""
        return self.add_faults([{"kind": "lost_response", "endpoint": "create"}])

    def not_found(
        self, batch_id: str, endpoint: str = "retrieve", times: int = 1
    ) -> list[dict[str, Any]]:
        """The next `times` calls to `endpoint` (retrieve or results) for `batch_id` answer 404,
        although the batch exists."""
        return self.add_faults(
            [
                {
                    "kind": "status",
                    "status": 404,
                    "endpoint": endpoint,
                    "batch_id": batch_id,
                    "times": times,
                }
            ]
        )

    def set_clock_skew(self, seconds: float) -> dict[str, Any]:
        """Report every timestamp `seconds` off real time (+ ahead, - behind), as a server whose
        clock disagrees with the client's would; lifecycle timing is unchanged. 0 undoes it."""
        return self._call("POST", "/_emulator/clock", {"skew_seconds": seconds})

    def clock(self) -> dict[str, Any]:
        """`{"offset_seconds": …, "skew_seconds": …}`."""
        return self._call("GET", "/_emulator/clock")

    def stats(self) -> dict[str, Any]:
        """`{"batches_created": n, "submissions": {custom_id: count}}`."""
        return self._call("GET", "/_emulator/stats")
