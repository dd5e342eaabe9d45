"""`batchops emulator serve` as a real process, driven by a plain SDK script."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.emulator import EmulatorConfig, running_emulator
from batchops.errors import BatchopsError


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


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"not a database\n", "file is not a database"),
        (None, "no such column: value"),  # SQLite, but another program's
    ],
    ids=["not-sqlite", "another-database"],
)
def test_serve_refuses_a_db_that_is_not_the_emulators_in_one_line(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    """`serve --db FILE` on such a file ended in `Error: unexpected DatabaseError`."""
    db = tmp_path / "remote.db"
    if content is None:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE meta (key TEXT)")
        conn.close()
    else:
        db.write_bytes(content)
    before = db.read_bytes()
    result = CliRunner().invoke(
        cli, ["emulator", "serve", "--port", "0", "--db", str(db)], catch_exceptions=False
    )
    assert result.exit_code == 1, result.output
    advice = "move it away or pass another"
    assert result.stderr == f"Error: {db}: not an emulator batches file ({why}); {advice}\n"
    assert result.stdout == ""  # no URL: nothing was served
    if content is not None:
        assert db.read_bytes() == before


def test_the_emulator_refuses_a_directory_as_its_db(tmp_path: Path) -> None:
    (tmp_path / "remote.db").mkdir()
    with pytest.raises(BatchopsError, match="remote.db: cannot open the emulator's batches file"):
        with running_emulator(EmulatorConfig(db_path=tmp_path / "remote.db")):
            pass
