"""Fault modes: `--emulator` keeps the README demo's faults; `emulator serve --faults none` has none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx2
import pytest

from batchops.emulator import EmulatorAdmin
from batchops.emulator.mode import FAULT_RATES, SEED, emulator_config_for, serve_config


def test_emulator_mode_keeps_the_demo_faults(tmp_path: Path) -> None:
    config = emulator_config_for(tmp_path / "state" / "emulator.db")
    assert config.faults_enabled and config.fault_rates == FAULT_RATES and config.seed == SEED
    assert config.db_path == tmp_path / "state" / "emulator-remote.db"
    quiet = emulator_config_for(tmp_path / "s.db", faults="none")
    assert not quiet.faults_enabled and quiet.fault_rates == {}


def test_serve_modes() -> None:
    assert serve_config().fault_rates == {} and serve_config().faults_enabled
    assert serve_config("markers", {"api_error": 0.1}).fault_rates == {"api_error": 0.1}
    demo = serve_config("demo")
    assert (demo.fault_rates, demo.seed) == (FAULT_RATES, SEED)
    assert serve_config("demo", {"expired": 0.5}, seed=4).fault_rates == {"expired": 0.5}
    assert not serve_config("none").faults_enabled
    with pytest.raises(ValueError, match="faults are off"):
        serve_config("none", {"api_error": 0.1})
    with pytest.raises(ValueError, match="not one of"):
        serve_config("some")


def test_serve_faults_none_as_a_process() -> None:
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    cmd = [sys.executable, "-m", "batchops", "emulator", "serve", "--port", "0"]
    server = subprocess.Popen(
        [*cmd, "--processing-seconds", "0", "--faults", "none", "--api-key", "sekrit"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), server.stderr.read()
        with anthropic.Anthropic(base_url=url, api_key="sekrit") as client:
            batch = client.messages.batches.create(
                requests=[
                    {
                        "custom_id": "x",
                        "params": {
                            "model": "claude-haiku-4-5",
                            "max_tokens": 20,
                            "messages": [{"role": "user", "content": "[[emulator:expired]] Hi"}],
                        },
                    }
                ]
            )
            (line,) = list(client.messages.batches.results(batch.id))
            assert line.result.type == "succeeded"
        with EmulatorAdmin(url, api_key="sekrit") as admin:
            with pytest.raises(httpx2.HTTPStatusError) as info:
                admin.add_faults([{"status": 500}])
            assert info.value.response.status_code == 400
            assert admin.stats()["batches_created"] == 1
        with EmulatorAdmin(url) as admin, pytest.raises(httpx2.HTTPStatusError) as info:
            admin.stats()
        assert info.value.response.status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_serve_refuses_rates_with_faults_none() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "batchops", "emulator", "serve", "--faults", "none",
         "--fault", "api_error=0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert out.stderr.startswith("Error: ") and "faults are off" in out.stderr
