"""How fast does a job render? Times `iter_items` over a generated jsonl job.

Writes a spec and an N-row jsonl data file (default 1,000,000) in a temporary directory, then
reports items/s and peak memory for rendering + fingerprinting every item, against a baseline of
just parsing the same file line by line with the standard library.

    .venv/bin/python bench/bench_items.py [--rows N]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from batchops.spec.items import iter_items
from batchops.spec.model import load_project

SPEC = """\
version = 1

[jobs.bench]
model = "claude-haiku-4-5"
max_tokens = 8
system = "Reply with exactly one word: positive, negative or neutral."
prompt = "Subject: {{ subject }}\\nCustomer plan: {{ plan }}\\n\\n{{ body }}"
input = { path = "data/rows.jsonl", key = "id" }
params = { temperature = 0.0 }
"""


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_rows(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True)
    with path.open("w", encoding="utf-8") as f:
        for n in range(rows):
            row = {
                "id": f"T-{n:07d}",
                "subject": f"Order {n} arrived damaged",
                "plan": ("free", "pro", "team")[n % 3],
                "body": f"Ticket {n}: the box was crushed and the item inside is broken. "
                "I would like a replacement or a refund, please.",
            }
            f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "jobs/data/rows.jsonl"
        write_rows(data, args.rows)
        (root / "jobs/bench.toml").write_text(SPEC, encoding="utf-8")
        size_mb = data.stat().st_size / 1e6
        print(
            f"{args.rows:,} rows, {size_mb:.0f} MB jsonl; peak RSS after setup {peak_mb():.0f} MB"
        )

        project = load_project(root / "jobs", root=root)
        (job,) = project.jobs
        start = time.perf_counter()
        count = 0
        for _item in iter_items(job, project.root):
            count += 1
        items_s = time.perf_counter() - start
        peak_items = peak_mb()
        print(
            f"iter_items:        {items_s:6.2f} s  {count / items_s:>10,.0f} items/s  "
            f"peak RSS {peak_items:.0f} MB"
        )

        start = time.perf_counter()
        with data.open("rb") as f:
            parsed = sum(1 for line in f if json.loads(line))
        base_s = time.perf_counter() - start
        print(f"baseline json.loads: {base_s:4.2f} s  {parsed / base_s:>10,.0f} rows/s")
        print(f"ratio iter_items / baseline: {items_s / base_s:.1f}x")
    if count != args.rows:
        sys.exit(f"expected {args.rows} items, got {count}")


if __name__ == "__main__":
    main()
