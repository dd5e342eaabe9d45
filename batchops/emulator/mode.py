"""Ready-made emulator setups: what `batchops --emulator` runs against, and the fault modes of
`batchops emulator serve --faults none|markers|demo`.

`--emulator` keeps its batches in a file beside the state file, so consecutive `--emulator`
commands see the same remote batches. It injects a few faults at fixed rates with a fixed seed
(the `demo` mode), so the example jobs show retries the way a real day would, reproducibly.
Everywhere else faults are opt-in: `markers` honours `[[emulator:…]]` markers and any rates given,
`none` turns every fault off (markers are plain text; rates, HTTP faults and clock skew refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchops.emulator import EmulatorConfig

FAULT_RATES = {"overloaded_error": 0.06, "api_error": 0.06}
SEED = 6  # with the example jobs: 7 faults, and every item succeeds within its max_attempts
FAULT_MODES = ("none", "markers", "demo")


def fault_settings(
    faults: str, fault_rates: dict[str, float] | None = None, seed: int = 0
) -> dict[str, Any]:
    """EmulatorConfig fields for a fault mode; `demo` fills in its rates and seed if not given."""
    if faults not in FAULT_MODES:
        raise ValueError(f"faults: {faults!r} is not one of {', '.join(FAULT_MODES)}")
    rates = dict(fault_rates or {})
    if faults == "none":
        return {"faults_enabled": False, "fault_rates": rates, "seed": seed}
    if faults == "demo":
        return {"fault_rates": rates or FAULT_RATES, "seed": seed or SEED}
    return {"fault_rates": rates, "seed": seed}


def serve_config(
    faults: str = "markers",
    fault_rates: dict[str, float] | None = None,
    seed: int = 0,
    **settings: Any,
) -> EmulatorConfig:
    """The config of `batchops emulator serve --faults FAULTS`; raises ValidationError/ValueError."""
    return EmulatorConfig(**settings, **fault_settings(faults, fault_rates, seed))


def emulator_config_for(state_path: Path, faults: str = "demo") -> EmulatorConfig:
    state_path = Path(state_path)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    return EmulatorConfig(
        db_path=state_path.with_name(state_path.stem + "-remote.db"),
        processing_seconds=1.0,
        **fault_settings(faults),
    )
