"""Does `batchops results` stream? Times a results export and measures its peak memory.

Writes a spec, an N-row jsonl data file (default 1,000,000) and a state file holding a succeeded
result (with its full message) for every item, in a temporary directory. Then, each in a fresh
process so peak RSS is its own:

- baseline `render`: `iter_items` alone (the rendering every export must do anyway);
- baseline `load-all`: the naive export, every result row loaded into a dict first;
- `export jsonl` and `export csv`: `batchops.results.export` to a file.

    .venv/bin/python bench/bench_results.py [--rows N]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_items import SPEC, peak_mb  # the same job as the rendering benchmark


def setup(root: Path, rows: int) -> None:
    from batchops.spec.items import iter_items
    from batchops.spec.model import load_project
    from batchops.state.sqlite import SqliteWriter as StateStore

    data = root / "jobs" / "data" / "rows.jsonl"
    data.parent.mkdir(parents=True)
    with data.open("w", encoding="utf-8") as f:
        for n in range(rows):
            row = {
                "id": f"T-{n:07d}",
                "subject": f"Order {n} arrived damaged",
                "plan": ("free", "pro", "team")[n % 3],
                "body": f"Ticket {n}: the box was crushed and the item inside is broken.",
            }
            f.write(json.dumps(row) + "\n")
    (root / "jobs" / "bench.toml").write_text(SPEC, encoding="utf-8")
    project = load_project(root / "jobs", root)
    (job,) = project.jobs
    store = StateStore.open(root / "state.db")
    db = store.db
    chunk: list = []

    def flush() -> None:
        db.conn.executemany(
            "insert into results (id, job, key, custom_id, fingerprint, batch_id, attempt_id, type,"
            " text, message, stop_reason, model, input_tokens, output_tokens, received_at)"
            " values (?, 'bench', ?, ?, ?, 'msgbatch_bench', ?, 'succeeded', ?, ?, 'end_turn',"
            " 'claude-haiku-4-5', 70, 2, '2026-03-01T00:00:00Z')",
            [(i, k, c, fp, i, t, m) for i, k, c, fp, t, m in chunk],
        )
        db.conn.executemany(
            "insert into items (job, key, custom_id, fingerprint, attempts, outcome, result_id)"
            " values ('bench', ?, ?, ?, 1, 'succeeded', ?)",
            [(k, c, fp, i) for i, k, c, fp, _, _ in chunk],
        )
        chunk.clear()

    with store._transaction():
        for i, item in enumerate(iter_items(job, project.root), 1):
            text = ("positive", "negative", "neutral")[i % 3]
            message = json.dumps(
                {
                    "id": f"msg_{i:024d}",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-haiku-4-5",
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": 70, "output_tokens": 2},
                }
            )
            chunk.append((i, item.key, item.custom_id, item.fingerprint, text, message))
            if len(chunk) >= 10_000:
                flush()
        flush()
    store.close()


def measure(root: Path, mode: str) -> dict:
    from batchops.commands.context import Context, Settings

    ctx = Context(Settings(jobs_path=root / "jobs", state_path=root / "state.db", root=root))
    start = time.perf_counter()
    rows = 0
    if mode == "render":
        from batchops.spec.items import iter_items

        project = ctx.project()
        for _ in iter_items(project.jobs[0], project.root):
            rows += 1
    elif mode == "load-all":
        conn = sqlite3.connect(root / "state.db")
        results = {
            r[0]: r for r in conn.execute("select key, text, message, fingerprint from results")
        }
        from batchops.spec.items import iter_items

        project = ctx.project()
        with (root / "naive.jsonl").open("w", encoding="utf-8") as f:
            for item in iter_items(project.jobs[0], project.root):
                r = results.get(item.key)
                f.write(json.dumps({"key": item.key, "text": r and r[1], "input": item.row}))
                f.write("\n")
                rows += 1
    else:
        from batchops.commands.results import export

        fmt = mode.split()[1]
        rows = export(ctx, "bench", fmt, root / f"out.{fmt}").rows
    return {
        "mode": mode,
        "rows": rows,
        "seconds": time.perf_counter() - start,
        "peak_mb": peak_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.root), args.measure)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        setup(root, args.rows)
        size = (root / "state.db").stat().st_size / 2**20
        print(
            f"{args.rows:,} results in a {size:,.0f} MB state, set up in "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
        print(f"{'run':<22}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS':>12}")
        for mode in ("render", "load-all", "export jsonl", "export csv"):
            out = subprocess.run(
                [sys.executable, __file__, "--measure", mode, "--root", str(root)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out)
            label = f"baseline {mode}" if mode in ("render", "load-all") else mode
            print(
                f"{label:<22}{r['rows']:>12,}{r['seconds']:>10.1f}"
                f"{r['rows'] / r['seconds']:>12,.0f}{r['peak_mb']:>9,.0f} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
