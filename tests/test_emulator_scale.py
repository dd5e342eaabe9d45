"""A large batch goes through create, processing and a streamed result file intact.

Kept well under 100,000 requests so the suite stays fast on a 2-core CI box; the full-size run is
bench/bench_emulator.py.
"""

from __future__ import annotations

import anthropic
import orjson

from batchops.emulator import EmulatorAdmin

N = 20_000


def test_large_batch_round_trip(
    sdk_client: anthropic.Anthropic, emulator_admin: EmulatorAdmin
) -> None:
    reqs = [
        {
            "custom_id": f"row-{i}",
            "params": {
                "model": "claude-haiku-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"Item {i}: yes or no? either yes or no"}],
            },
        }
        for i in range(N)
    ]
    batch = sdk_client.messages.batches.create(requests=reqs)
    assert batch.request_counts.processing == N
    done = sdk_client.messages.batches.retrieve(batch.id)
    assert done.processing_status == "ended" and done.request_counts.succeeded == N
    seen: set[str] = set()
    with sdk_client.messages.batches.with_streaming_response.results(batch.id) as resp:
        for line in resp.iter_lines():
            row = orjson.loads(line)
            assert row["result"]["type"] == "succeeded"
            seen.add(row["custom_id"])
    assert len(seen) == N
    stats = emulator_admin.stats()
    assert stats["batches_created"] == 1 and len(stats["submissions"]) == N
    assert set(stats["submissions"].values()) == {1}
