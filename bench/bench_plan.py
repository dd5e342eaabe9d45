"""How long `plan` takes for a million-item job, and how much memory it needs.

Three measurements in one run, on one generated 1,000,000-row jsonl job:
- baseline: parse every line of the data file with orjson (the floor for reading the input);
- plan against an empty state (everything to submit);
- plan against a state that holds all 1,000,000 items as succeeded (the everyday re-plan).
Ratios are against the baseline measured in the same run; peak RSS is the process high-water mark.

    .venv/bin/python bench/bench_plan.py [N]
"""

from __future__ import annotations

import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import orjson

from batchops.commands.context import Context, Settings
from batchops.state.sqlite import SqliteWriter as StateStore


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_project(root: Path, n: int) -> None:
    (root / "jobs" / "data").mkdir(parents=True)
    with (root / "jobs" / "data" / "rows.jsonl").open("wb") as fh:
        for i in range(n):
            fh.write(
                orjson.dumps(
                    {
                        "id": f"row-{i}",
                        "subject": f"Order {i} late",
                        "body": f"My order number {i} has not arrived yet.",
                    }
                )
                + b"\n"
            )
    (root / "jobs" / "big.toml").write_text(
        'version = 1\n[jobs.big]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
        'system = "Reply with one word: positive, negative or neutral."\n'
        'prompt = "Subject: {{ subject }}\\n\\n{{ body }}"\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n'
    )


def fill_state(ctx: Context, n: int) -> None:
    """Record every item as sent and succeeded, as a finished apply would leave it."""
    desired = ctx.desired()
    store = StateStore.open(ctx.settings.state_path)
    store.close()
    conn = sqlite3.connect(ctx.settings.state_path)
    with conn:
        conn.executemany(
            "insert into items (job, key, custom_id, fingerprint, attempts, outcome)"
            " values ('big', ?, ?, ?, 1, 'succeeded')",
            ((i.key, i.custom_id, i.fingerprint) for i in desired.jobs[0].items),
        )
    conn.close()


def timed(label: str, fn) -> float:
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    print(f"{label:<40} {elapsed:8.2f} s   peak RSS so far {peak_mb():8.0f} MB   {result}")
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, n)
        ctx = Context(
            Settings(jobs_path=root / "jobs", state_path=root / "state" / "b.db", root=root)
        )

        def baseline() -> str:
            count = 0
            with (root / "jobs" / "data" / "rows.jsonl").open("rb") as fh:
                for line in fh:
                    orjson.loads(line)
                    count += 1
            return f"{count} rows"

        def plan() -> str:
            the_plan, _ = ctx.plan(refresh=False)
            return f"{the_plan.summary()['submit']} to submit"

        base = timed(f"baseline: orjson-parse {n} rows", baseline)
        empty = timed("plan, empty state", plan)
        fill_state(ctx, n)
        full = timed("plan, all items succeeded in state", plan)
        print(
            f"\nratio to baseline: empty state {empty / base:.1f}x, full state {full / base:.1f}x;"
            f" peak RSS {peak_mb():.0f} MB"
        )


if __name__ == "__main__":
    main()
