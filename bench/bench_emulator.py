"""Benchmark: a 100,000-request batch through the real SDK against the emulator.

Runs the emulator in a child process (so its memory is measured alone), creates a 1,000-request
batch as a baseline and then a 100,000-request one, streams both result files, and prints wall time
and peak RSS of the server and of this client process. A ratio near 1 means the work scales
linearly; the server's peak RSS should stay a small multiple of the request payload.

    .venv/bin/python bench/bench_emulator.py [--requests 100000] [--memory-db]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anthropic
import orjson

os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

SERVER = """
import sys
from pathlib import Path
from batchops.emulator import EmulatorConfig, serve
db = Path(sys.argv[1]) if sys.argv[1] != "-" else None
serve(EmulatorConfig(processing_seconds=0, db_path=db), on_ready=lambda u: print(u, flush=True))
"""


def requests(n: int, tag: str) -> list[dict]:
    return [
        {
            "custom_id": f"{tag}-{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 64,
                "messages": [
                    {
                        "role": "user",
                        "content": f"Classify item {i}: positive, negative or neutral?",
                    }
                ],
            },
        }
        for i in range(n)
    ]


def run(client: anthropic.Anthropic, n: int, tag: str) -> tuple[float, float, float, int]:
    """(create seconds, stream seconds, total, payload bytes) for one batch of n requests."""
    reqs = requests(n, tag)
    payload = len(orjson.dumps({"requests": reqs}))
    start = time.perf_counter()
    batch = client.messages.batches.create(requests=reqs, timeout=600)
    created = time.perf_counter()
    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(0.05)
    lines = 0
    with client.messages.batches.with_streaming_response.results(batch.id) as resp:
        for _ in resp.iter_lines():
            lines += 1
    done = time.perf_counter()
    if lines != n:
        raise SystemExit(f"expected {n} result lines, got {lines}")
    return created - start, done - created, done - start, payload


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--memory-db", action="store_true", help="in-memory SQLite on the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = "-" if args.memory_db else str(Path(tmp) / "emu.db")
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, db], stdout=subprocess.PIPE, text=True
        )
        try:
            url = server.stdout.readline().strip() if server.stdout else ""
            with anthropic.Anthropic(base_url=url, api_key="bench", max_retries=0) as client:
                base = run(client, 1_000, "base")
                idle_rss = peak_rss_mb(server.pid)
                big = run(client, args.requests, "big")
                server_rss = peak_rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=10)
    client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    scale = args.requests / 1_000
    print(
        f"baseline 1,000 requests: create {base[0]:.2f}s, stream {base[1]:.2f}s, total {base[2]:.2f}s"
    )
    print(
        f"{args.requests:,} requests: create {big[0]:.2f}s, stream {big[1]:.2f}s, "
        f"total {big[2]:.2f}s; payload {big[3] / 1e6:.1f} MB"
    )
    print(f"ratio total / (baseline x {scale:g}): {big[2] / (base[2] * scale):.2f}")
    print(
        f"server peak RSS: {server_rss:.0f} MB (after baseline {idle_rss:.0f} MB; "
        f"{(server_rss - idle_rss) / (big[3] / 1e6):.1f}x payload above that)"
    )
    print(f"client peak RSS: {client_rss:.0f} MB")


if __name__ == "__main__":
    main()
