"""`batchops emulator serve` as a real process, driven by a plain SDK script."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import anthropic


def test_serve_then_a_plain_sdk_script_creates_waits_and_reads(tmp_path):
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchops",
            "emulator",
            "serve",
            "--port",
            "0",
            "--processing-seconds",
            "0.2",
            "--db",
            str(tmp_path / "remote.db"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        client = anthropic.Anthropic(base_url=url, api_key="any-key")
        batch = client.messages.batches.create(
            requests=[
                {
                    "custom_id": f"q{i}",
                    "params": {
                        "model": "claude-haiku-4-5",
                        "max_tokens": 20,
                        "messages": [{"role": "user", "content": f"Hi {i}"}],
                    },
                }
                for i in range(3)
            ]
        )
        assert batch.processing_status == "in_progress"
        deadline = time.monotonic() + 30
        while client.messages.batches.retrieve(batch.id).processing_status != "ended":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
        assert results == {"q0": "succeeded", "q1": "succeeded", "q2": "succeeded"}
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert (tmp_path / "remote.db").exists()


def test_serve_rejects_a_bad_fault_rate():
    out = subprocess.run(
        [sys.executable, "-m", "batchops", "emulator", "serve", "--fault", "overloaded_error=2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("Error: fault_rates: ")
