"""PostgreSQL beside SQLite, in one run: plan and a no-op apply of one large job whose every item
succeeded, against the same state on each backend (issue "Team state": within 2× of SQLite).

    .venv/bin/python bench/bench_postgres.py [--items 1000000] [--repeat 2]

A throwaway PostgreSQL server is started for the run (as tests/pgserver.py does) and stopped at
the end. The SQLite state is filled as `bench/run.py` fills it, then copied to PostgreSQL with
`batchops state push`. Each figure is the best of `--repeat` runs of a real `batchops` process,
with its own peak RSS; the ratio is PostgreSQL over SQLite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import batchops, best, fill_state, fmt_s, make_project, run  # noqa: E402
from tests.pgserver import start_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    server = start_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
            root = make_project(Path(tmp), args.items)
            sqlite_state = root / "state" / "full.db"
            fill_state(root, sqlite_state)
            dsn = server.dsn_for(server.create_database())
            pushed = run(batchops("--state", str(sqlite_state), "state", "push", dsn), cwd=root)
            print(f"filled {args.items:,} items; pushed to PostgreSQL in {fmt_s(pushed.seconds)}")
            env = {
                "ANTHROPIC_API_KEY": "bench",
                "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",  # a no-op makes no call at all
                "BATCHOPS_CACHE": "off",  # measure the state, not the rows cache
            }
            rows = []
            for what, argv in (
                ("plan --no-refresh", ["plan", "--no-refresh"]),
                ("no-op apply --yes", ["apply", "--yes"]),
            ):
                figures = {}
                for name, location in (("sqlite", str(sqlite_state)), ("postgres", dsn)):
                    full = batchops("--state", location, *argv)
                    figures[name] = best(args.repeat, lambda f=full: run(f, cwd=root, env=env))
                    if "No changes" not in figures[name].stdout and what.startswith("plan"):
                        raise SystemExit(f"not a no-op on {name}:\n{figures[name].stdout[-500:]}")
                ratio = figures["postgres"].seconds / figures["sqlite"].seconds
                rows.append((what, figures["sqlite"], figures["postgres"], ratio))
            print(
                f"\n| {args.items:,} items | SQLite | PostgreSQL | ratio | peak RSS (SQLite / PG) | goal |"
            )
            print("|---|---|---|---|---|---|")
            for what, lite, pg, ratio in rows:
                met = "met" if ratio <= 2.0 else "**not met**"
                print(
                    f"| {what} | {fmt_s(lite.seconds)} | {fmt_s(pg.seconds)} | {ratio:.2f}× | "
                    f"{lite.peak_mb:,.0f} MB / {pg.peak_mb:,.0f} MB | ≤ 2× ({met}) |"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
