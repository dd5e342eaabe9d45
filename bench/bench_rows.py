"""The producer of planning rows alone: a loop over `desired._rows` for `run.py`'s plan job.

Everything `plan` does after the rows are made (the diff, the output) is left out, so this says
how much of a plan is rendering. CPU time (user + system, the workers' included), not wall time:
on a shared machine the load of others moves the wall clock, much less the CPU time. Each figure
is the best of `--repeat` runs in a child process, against `run.py`'s bare stdlib script in the
same run, one core (`taskset -c 0`) and all cores.

    .venv/bin/python bench/bench_rows.py [--items N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BARE_SCRIPT, make_project  # noqa: E402

# The child: every row of the job, counted; prints its CPU seconds and its workers'.
PRODUCER = r"""
import os, resource, sys
from datetime import date
from pathlib import Path
from batchops.heap import paused_gc
from batchops.pricing import PriceTable
from batchops.spec import desired
from batchops.spec.model import load_project
root = Path(sys.argv[1])
job = load_project(root / "jobs", root).jobs[0]
prices = PriceTable.load()
def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
start = cpu(resource.RUSAGE_SELF)
with paused_gc():  # as `cache.rows` runs it
    count = sum(1 for _ in desired._rows(job, root, prices, date.fromisoformat(sys.argv[2]), {}))
print(count, cpu(resource.RUSAGE_SELF) - start, cpu(resource.RUSAGE_CHILDREN))
"""

BARE = r"""
import resource, sys
def cpu():
    s = resource.getrusage(resource.RUSAGE_SELF)
    return s.ru_utime + s.ru_stime
start = cpu()
exec(compile(sys.argv[2], "bare", "exec"), {"__name__": "__main__"})
print(cpu() - start)
"""


def child(argv: list[str], one_core: bool) -> tuple[float, float]:
    """(CPU seconds of the child, of its workers)."""
    env = {**os.environ, "BATCHOPS_CACHE": "off"}
    out = subprocess.run(
        [sys.executable, "-c", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if one_core else None,
    ).stdout.split()
    return (float(out[-2]), float(out[-1])) if argv[0] == PRODUCER else (float(out[-1]), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    today = date.today().isoformat()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_project(Path(tmp), args.items)
        data = str(root / "jobs" / "data" / "rows.jsonl")
        best: dict[str, list[tuple[float, float]]] = {
            "bare": [],
            "rows, one core": [],
            "rows, all cores": [],
        }
        for _ in range(max(1, args.repeat)):  # interleaved: a burst of load hits all three
            best["bare"].append(child([BARE, data, BARE_SCRIPT], True))
            best["rows, one core"].append(child([PRODUCER, str(root), today], True))
            best["rows, all cores"].append(child([PRODUCER, str(root), today], False))
    bare = min(best["bare"])[0]
    print(f"{args.items:,} items, CPU seconds (user + system), best of {args.repeat}:")
    for what, runs in best.items():
        own, workers = min(runs, key=sum)
        split = f"  (this process {own:.2f} s, {own / bare:.2f}×; workers {workers:.2f} s)"
        print(
            f"  {what:<16} {own + workers:6.2f} s  {(own + workers) / bare:5.2f}× the bare script"
        )
        if workers:
            print(split)


if __name__ == "__main__":
    main()
