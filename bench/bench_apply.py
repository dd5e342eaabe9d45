"""One `apply --wait` of a large job against the emulator: submit, wait, harvest, end to end.

The emulator runs in a child process (`batchops emulator serve`), so the peak RSS reported is the
apply's own. Baseline in the same run: `plan` of the same job (rendering everything once), so the
ratio shows what sending and harvesting add on top of rendering.

    .venv/bin/python bench/bench_apply.py [N]
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_plan import make_project

from batchops.commands.context import Context, Settings


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, n)
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
                "0",
                "--db",
                str(root / "remote.db"),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            url = server.stdout.readline().strip()  # type: ignore[union-attr]
            ctx = Context(
                Settings(
                    jobs_path=root / "jobs",
                    state_path=root / "state" / "b.db",
                    root=root,
                    base_url=url,
                    api_key="bench",
                )
            )
            start = time.perf_counter()
            ctx.plan(refresh=False)
            plan_s = time.perf_counter() - start
            start = time.perf_counter()
            report = ctx.apply(wait=True, poll_interval=0.5, timeout=3600)
            apply_s = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"items: {n}")
    print(f"baseline plan:         {plan_s:8.2f} s")
    print(
        f"apply --wait:          {apply_s:8.2f} s  ({report.submitted} sent in "
        f"{len(report.batches_created)} batches, {report.results_stored} results stored)"
    )
    print(f"ratio apply/plan:      {apply_s / plan_s:8.1f}x")
    print(f"peak RSS (apply side): {peak:8.0f} MB")


if __name__ == "__main__":
    main()
