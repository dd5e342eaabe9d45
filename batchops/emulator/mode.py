"""What `batchops --emulator` runs against: the built-in emulator, set up like a small real API.

Its batches live in a file beside the state file, so consecutive `--emulator` commands see the same
remote batches. A few faults are injected at fixed rates with a fixed seed, so the example jobs show
retries the way a real day would, reproducibly.
"""

from __future__ import annotations

from pathlib import Path

from batchops.emulator import EmulatorConfig

FAULT_RATES = {"overloaded_error": 0.06, "api_error": 0.03, "expired": 0.03}
SEED = 33  # with the example jobs: 7 faults, and every item succeeds within its max_attempts


def emulator_config_for(state_path: Path) -> EmulatorConfig:
    state_path = Path(state_path)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    return EmulatorConfig(
        db_path=state_path.with_name(state_path.stem + "-remote.db"),
        processing_seconds=1.0,
        seed=SEED,
        fault_rates=FAULT_RATES,
    )
