"""A local, wire-faithful emulator of the Anthropic Message Batches API.

The official `anthropic` SDK pointed at it with `base_url` cannot tell it from the real API for
everything in ANTHROPIC_BATCHES_API.md. It owns a clock that can jump ahead (24 h expiry, 29-day
archive), answers deterministically, and injects faults on request: see `faults` for the marker
grammar and the HTTP fault shape, and `admin.EmulatorAdmin` for the control calls.

    with running_emulator(EmulatorConfig(processing_seconds=0)) as base_url:
        client = anthropic.Anthropic(base_url=base_url, api_key="test")
"""

from batchops.emulator.admin import EmulatorAdmin
from batchops.emulator.config import EmulatorConfig, RuntimeSettings
from batchops.emulator.faults import HttpFault
from batchops.emulator.server import running_emulator, serve

__all__ = [
    "EmulatorAdmin",
    "EmulatorConfig",
    "HttpFault",
    "RuntimeSettings",
    "running_emulator",
    "serve",
]
