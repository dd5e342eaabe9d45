"""Every benchmark of "Performance at a million", each against its baseline in the same run.

    .venv/bin/python bench/run.py              # the issue's sizes: 1,000,000 items (a few minutes)
    .venv/bin/python bench/run.py --scale 0.1  # a tenth of every size
    .venv/bin/python bench/run.py --only plan,noop,cold

Every figure is measured in a child process of its own (`os.wait4` gives its wall time and peak
RSS alone), the best of `--repeat` runs; every ratio divides by a baseline measured by this same
run on this same machine, its runs taken by turns with the figure's (`best_pair`), so the load
other users put on a shared machine, and its drift, cancel out as far as they can. The table
printed at the end holds: what, figure, baseline, ratio, peak RSS, goal, met.

Sizes: `--items` (plan, no-op plan and apply, export; default 1,000,000), `--harvest` (results in
one batch; 100,000), `--submit-mb` (the payload of one create; 200), `--curve` (sizes for the cost
curve; 10,000,100,000,1,000,000). `--scale` multiplies the defaults of all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

SPEC = (
    'version = 1\n[jobs.big]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
    'system = "Reply with one word: positive, negative or neutral."\n'
    'prompt = "Subject: {{ subject }}\\n\\n{{ body }}"\n'
    'input = { path = "data/rows.jsonl", key = "id" }\n'
)

# The hand-written script a user would write instead: stdlib only, one core.
BARE_SCRIPT = r"""
import hashlib, json, sys
system = "Reply with one word: positive, negative or neutral."
template = "Subject: {subject}\n\n{body}"
count = 0
with open(sys.argv[1], "rb") as fh:
    for line in fh:
        row = json.loads(line)
        params = {
            "model": "claude-haiku-4-5",
            "max_tokens": 8,
            "system": system,
            "messages": [{"role": "user", "content": template.format(**row)}],
        }
        canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        hashlib.sha256(canonical.encode()).hexdigest()
        count += 1
print(count)
"""

# What a user would write to fingerprint a requests file by hand: each line parsed, its params
# written as canonical JSON and hashed.
BARE_REQUESTS = r"""
import hashlib, json, sys
count = 0
with open(sys.argv[1], "rb") as fh:
    for line in fh:
        request = json.loads(line)
        canonical = json.dumps(
            request["params"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        hashlib.sha256(canonical.encode()).hexdigest()
        count += 1
print(count)
"""

# The floor for an export: SQLite writes the JSON itself.
RAW_EXPORT = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
n = 0
with open(sys.argv[2], "w") as out:
    for (line,) in conn.execute(
        "select json_object('key', i.key, 'custom_id', i.custom_id, 'state', i.outcome,"
        " 'text', r.text, 'message', json(r.message)) from items i"
        " left join results r on r.id = i.result_id"
    ):
        out.write(line)
        out.write("\n")
        n += 1
print(n)
"""


@dataclass
class Run:
    seconds: float
    peak_mb: float
    stdout: str
    cpu: float = 0.0  # the child's user + system time


# Children are started by a small process of their own, started before this one grows: a child
# forked (or vforked) from a large process reports that process's pages in its peak RSS, which
# the kernel keeps across exec (a 10,000-item plan of 32 MB showed 108 MB late in a full run).
LAUNCHER = r"""
import json, os, subprocess, sys, time
for request in sys.stdin:
    job = json.loads(request)
    every = os.sched_getaffinity(0)
    if job["cpus"]:
        os.sched_setaffinity(0, job["cpus"])
    with open(job["out"], "wb") as out, open(job["err"], "wb") as err:
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(job["argv"], cwd=job["cwd"], env=job["env"], stdout=out, stderr=err)
        finally:
            os.sched_setaffinity(0, every)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_kb": usage.ru_maxrss,
                      "cpu": usage.ru_utime + usage.ru_stime,
                      "code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Launcher:
    """The process that starts every measured child (`LAUNCHER`)."""

    proc: subprocess.Popen | None = None

    @classmethod
    def start(cls, python: str) -> None:
        cls.proc = subprocess.Popen(
            [python, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    @classmethod
    def run(cls, job: dict) -> dict:
        if cls.proc is None:
            cls.start(PYTHON)
        assert cls.proc is not None and cls.proc.stdin and cls.proc.stdout
        cls.proc.stdin.write(json.dumps(job) + "\n")
        cls.proc.stdin.flush()
        line = cls.proc.stdout.readline()
        if not line:
            raise SystemExit("the bench's launcher process stopped")
        return json.loads(line)


@dataclass
class Row:
    what: str
    figure: str
    baseline: str
    ratio: float | None
    peak_mb: float | None
    goal: str
    met: bool | None

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}×"
        peak = "" if self.peak_mb is None else f"{self.peak_mb:,.0f} MB"
        met = {True: "yes", False: "**no**", None: "—"}[self.met]
        return [self.what, self.figure, self.baseline, ratio, peak, self.goal, met]


def run(
    argv: list[str],
    *,
    cwd: Path | None = None,
    env: dict | None = None,
    cpus: set[int] | None = None,
    stdout_to: Path | None = None,
    check: bool = True,
) -> Run:
    """Run `argv` in a child (started by the launcher); its wall time, its own peak RSS and its
    CPU time (from wait4)."""
    full_env = {**os.environ, **NO_PROXY, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="batchops-bench-run-") as tmp:
        out = str(stdout_to) if stdout_to else os.path.join(tmp, "out")
        err = os.path.join(tmp, "err")
        done = Launcher.run({"argv": [str(a) for a in argv], "cwd": str(cwd) if cwd else None,
                             "env": full_env, "cpus": sorted(cpus) if cpus else None,
                             "out": out, "err": err})  # fmt: skip
        data = b"" if stdout_to else Path(out).read_bytes()
        errors = Path(err).read_bytes()
    if check and done["code"] not in (0, 2):
        raise SystemExit(
            f"{' '.join(map(str, argv))} exited {done['code']}:\n{errors.decode()[-3000:]}"
        )
    return Run(done["seconds"], done["rss_kb"] / 1024, data.decode(errors="replace"), done["cpu"])


def best(times: int, fn) -> Run:
    """The fastest of `times` runs (its peak RSS is the highest seen: memory is not noise; its
    CPU time the least any took)."""
    return _fastest([fn() for _ in range(max(1, times))])


def best_pair(times: int, base_fn, fn) -> tuple[Run, Run]:
    """The fastest of `times` runs of a baseline and of what it is compared with, run by turns
    (baseline, figure, baseline, figure …): a shared machine's speed drifts by a third within a
    minute (seen here), and turns put both sides of a ratio under the same drift."""
    bases, runs = [], []
    for _ in range(max(1, times)):
        bases.append(base_fn())
        runs.append(fn())
    return _fastest(bases), _fastest(runs)


def _fastest(runs: list[Run]) -> Run:
    fastest = min(runs, key=lambda r: r.seconds)
    return Run(
        fastest.seconds, max(r.peak_mb for r in runs), fastest.stdout, min(r.cpu for r in runs)
    )


def batchops(*args: str) -> list[str]:
    return [PYTHON, "-m", "batchops", *args]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


# --- setup --------------------------------------------------------------------------------------


def make_project(root: Path, n: int, body_bytes: int = 0) -> Path:
    """A project with one jsonl job of n rows (padded to about body_bytes per request)."""
    import orjson

    data = root / "jobs" / "data" / "rows.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    pad = "x" * body_bytes
    with data.open("wb") as fh:
        for i in range(n):
            row = {
                "id": f"row-{i}",
                "subject": f"Order {i} late",
                "body": f"My order number {i} has not arrived yet.{pad}",
            }
            fh.write(orjson.dumps(row) + b"\n")
    (root / "jobs" / "big.toml").write_text(SPEC, encoding="utf-8")
    (root / "state").mkdir(exist_ok=True)
    return root


def fill_state(root: Path, state: Path) -> None:
    """`fill_state_here` in a child: this process must stay small, since a child's peak RSS as
    wait4 reports it is at least what this process held when it forked the child."""
    run([PYTHON, str(Path(__file__).resolve()), "--fill", str(root), str(state)])


def fill_state_here(root: Path, state: Path) -> int:
    """Record every item as sent and succeeded, with a result, as a finished apply leaves it."""
    from batchops.commands.context import Context, Settings
    from batchops.state.sqlite import SqliteWriter

    ctx = Context(Settings(jobs_path=root / "jobs", state_path=state, root=root))
    desired = ctx.desired()
    SqliteWriter.open(state).close()
    conn = sqlite3.connect(state)
    chunk: list[tuple] = []

    def flush() -> None:
        conn.executemany(
            "insert into results (id, job, key, custom_id, fingerprint, batch_id, attempt_id,"
            " type, text, message, stop_reason, model, input_tokens, output_tokens, received_at)"
            " values (?, 'big', ?, ?, ?, 'msgbatch_bench', ?, 'succeeded', ?, ?, 'end_turn',"
            " 'claude-haiku-4-5', 30, 2, '2026-03-01T00:00:00Z')",
            [(i, k, c, f, i, t, m) for i, k, c, f, t, m in chunk],
        )
        conn.executemany(
            "insert into items (job, key, custom_id, fingerprint, attempts, outcome, result_id)"
            " values ('big', ?, ?, ?, 1, 'succeeded', ?)",
            [(k, c, f, i) for i, k, c, f, _, _ in chunk],
        )
        chunk.clear()

    with conn:
        for i, item in enumerate(desired.jobs[0].items, 1):
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
                    "usage": {"input_tokens": 30, "output_tokens": 2},
                }
            )
            chunk.append((i, item.key, item.custom_id, item.fingerprint, text, message))
            if len(chunk) >= 20_000:
                flush()
        flush()
    conn.close()
    return len(desired.jobs[0].items)


class Emulator:
    """`batchops emulator serve` in a child process, faults off, batches ending at once."""

    def __init__(self, db: Path):
        self.proc = subprocess.Popen(
            batchops(
                "emulator",
                "serve",
                "--port",
                "0",
                "--processing-seconds",
                "0",
                "--faults",
                "none",
                "--db",
                str(db),
            ),  # fmt: skip
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **NO_PROXY},
        )
        self.url = (self.proc.stdout.readline() if self.proc.stdout else "").strip()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


# --- the benchmarks -----------------------------------------------------------------------------


def installed_python(root: Path) -> str:
    """An interpreter that has batchops as `pip install` leaves it (the package's files in its own
    site-packages, compiled), its dependencies seen through one `.pth` line to this venv's: a start
    without the editable checkout's import finder (setuptools' `.pth` imports pathlib and a finder
    on every start, 15–20 ms here, what `pip install -e` adds and `pip install batchops` does not)."""
    venv = root / "installed"
    if not (venv / "bin" / "python").exists():
        subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    deps = subprocess.run(
        [PYTHON, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    target = Path(purelib) / "batchops"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(HERE.parent / "batchops", target, ignore=shutil.ignore_patterns("__pycache__"))
    (Path(purelib) / "batchops-deps.pth").write_text(deps + "\n")
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "compileall", "-q", str(target)], check=True
    )
    return str(venv / "bin" / "python")


def bench_cold(args, rows: list[Row]) -> None:
    repo = HERE.parent
    env = {"BATCHOPS_STATE": str(Path(args.tmp) / "cold" / "none.db")}
    (Path(args.tmp) / "cold").mkdir(exist_ok=True)
    # An installed package starts from compiled bytecode (pip compiles it; an editable checkout
    # writes it on the first run). A session with PYTHONDONTWRITEBYTECODE set would compile all of
    # batchops on every start and measure the compiler, so it is written once, before timing.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(repo / "batchops")], check=True)
    installed = installed_python(Path(args.tmp) / "cold")
    # The project cache (batchops.spec.projectcache) lives in the user's cache folder: a folder of
    # this run's own, emptied before each cache-miss start, kept for the cache-hit ones.
    home = Path(args.tmp) / "cold" / "home-cache"
    env["XDG_CACHE_HOME"] = str(home)

    def cpu_of(fn) -> tuple[Run, float]:
        """`fn()`'s run and its child's CPU time (user + sys): what a busy machine inflates least."""
        r = fn()
        return r, r.cpu

    def best_cold(fn) -> tuple[Run, float]:
        """The fastest of --cold-repeat runs, and the least CPU time any of them took."""
        runs = [cpu_of(fn) for _ in range(max(1, args.cold_repeat))]
        fastest = min((r for r, _ in runs), key=lambda r: r.seconds)
        return Run(fastest.seconds, max(r.peak_mb for r, _ in runs), ""), min(c for _, c in runs)

    starts = (
        ("`batchops --help`", ["--help"], None),
        ("`batchops validate` (examples), project cache miss", ["validate"], True),
        ("`batchops validate` (examples), project cache hit", ["validate"], False),
        (
            "`batchops plan --no-refresh` (examples), project cache miss",
            ["plan", "--no-refresh"],
            True,
        ),
        (
            "`batchops plan --no-refresh` (examples), project cache hit",
            ["plan", "--no-refresh"],
            False,
        ),
    )
    for python, how in ((installed, "installed"), (PYTHON, "editable checkout")):

        def start(argv: list[str], python: str = python) -> Run:
            # -P: the working directory (the checkout) is not put first on the import path, so
            # the installed copy is the one imported, as a user's `batchops` command imports it
            return run([python, "-P", "-m", "batchops", *argv], cwd=repo, env=env)

        def miss(argv: list[str]) -> Run:
            shutil.rmtree(home / "batchops" / "projects", ignore_errors=True)
            return start(argv)

        base, base_cpu = best_cold(lambda python=python: run([python, "-c", "pass"]))
        for label, argv, first in starts if how == "installed" else starts[-1:]:
            if first:
                r, cpu = best_cold(lambda a=argv: miss(a))
            else:
                if first is False:
                    start(argv)  # keeps the project
                r, cpu = best_cold(lambda a=argv: start(a))
            rows.append(
                Row(
                    f"cold start: {label}, {how}",
                    f"{fmt_s(r.seconds)} (CPU {fmt_s(cpu)})",
                    f"`python -c pass` {fmt_s(base.seconds)} (CPU {fmt_s(base_cpu)})",
                    r.seconds / base.seconds,
                    r.peak_mb,
                    "≤ 150 ms" if how == "installed" else "—",
                    r.seconds <= 0.150 if how == "installed" else None,
                )  # fmt: skip
            )


def bench_plan(args, rows: list[Row], root: Path) -> None:
    n = args.items
    data = root / "jobs" / "data" / "rows.jsonl"
    state = {"BATCHOPS_STATE": str(root / "state" / "empty.db")}
    one = {0}

    def bare() -> Run:
        return run([PYTHON, "-c", BARE_SCRIPT, str(data)], cpus=one)

    # Every item rendered, as the bare script does: the rows cache is off. The last row is the
    # same plan again with the rows a first plan kept (what a pull request's plan pays when the
    # data file did not change but the state or another job did).
    cold = {**state, "BATCHOPS_CACHE": "off"}
    cases = [
        ("text, one core", [], one, 1.0, cold),
        ("text, all cores", [], None, 0.6, cold),
        ("`--json`, one core", ["--json"], one, 1.0, cold),
        ("`-o plan.jsonl`, one core", ["-o", str(root / "plan.jsonl")], one, 1.0, cold),
        ("`-o plan.jsonl`, all cores", ["-o", str(root / "plan.jsonl")], None, 0.6, cold),
        ("text, one core, rows kept by a first plan", [], one, 1.0, state),
    ]
    run(batchops("plan", "--no-refresh"), cwd=root, env=state, stdout_to=root / "plan.out")
    for what, extra, cpus, goal, env in cases:
        base, r = best_pair(
            args.repeat,
            bare,
            lambda e=extra, c=cpus, v=env: run(
                batchops("plan", "--no-refresh", *e),
                cwd=root,
                env=v,
                cpus=c,
                stdout_to=root / "plan.out",
            ),
        )
        # the no-op and curve rows compare with the fastest bare run seen
        args.bare = min(args.bare or base.seconds, base.seconds)
        ratio = r.seconds / base.seconds
        rows.append(
            Row(
                f"`plan --no-refresh` {n:,} items, empty state, {what}",
                f"{fmt_s(r.seconds)} (CPU {fmt_s(r.cpu)})",
                f"bare stdlib script {fmt_s(base.seconds)}",
                ratio,
                r.peak_mb,
                f"≤ {goal}×, ≤ 300 MB",
                ratio <= goal and r.peak_mb <= 300,
            )  # fmt: skip
        )
        if what == "text, one core":
            args.curve_plan[n] = r


def make_requests_project(root: Path, n: int) -> Path:
    """A project with one job of n requests in the Anthropic batch format (a `requests` file)."""
    import orjson

    data = root / "jobs" / "data" / "requests.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    with data.open("wb") as fh:
        for i in range(n):
            text = f"Subject: Order {i} late\n\nMy order number {i} has not arrived yet."
            params = {"model": "claude-haiku-4-5", "max_tokens": 8,
                      "system": "Reply with one word: positive, negative or neutral.",
                      "messages": [{"role": "user", "content": text}]}  # fmt: skip
            fh.write(orjson.dumps({"custom_id": f"row-{i}", "params": params}) + b"\n")
    spec = 'version = 1\n[jobs.requests]\nrequests = { path = "data/requests.jsonl" }\n'
    (root / "jobs" / "requests.toml").write_text(spec, encoding="utf-8")
    (root / "state").mkdir(exist_ok=True)
    return root


def bench_requests(args, rows: list[Row]) -> None:
    """Plan a job whose requests are written in a file (sent as they are), one core and all:
    no goal of the issue names it; measured against a bare script's fingerprinting of it."""
    n = args.items
    root = make_requests_project(Path(args.tmp) / "requests", n)
    data = root / "jobs" / "data" / "requests.jsonl"
    one = {0}
    env = {"BATCHOPS_STATE": str(root / "state" / "empty.db"), "BATCHOPS_CACHE": "off"}
    for what, cpus in (("one core", one), ("all cores", None)):
        base, r = best_pair(
            args.repeat,
            lambda: run([PYTHON, "-c", BARE_REQUESTS, str(data)], cpus=one),
            lambda c=cpus: run(
                batchops("plan", "--no-refresh"),
                cwd=root,
                env=env,
                cpus=c,
                stdout_to=root / "plan.out",
            ),
        )
        rows.append(
            Row(
                f"`plan --no-refresh`, a requests file of {n:,} lines, empty state, {what}",
                f"{fmt_s(r.seconds)} (CPU {fmt_s(r.cpu)})",
                f"bare stdlib script {fmt_s(base.seconds)}",
                r.seconds / base.seconds,
                r.peak_mb,
                "—",
                None,
            )  # fmt: skip
        )
    shutil.rmtree(root, ignore_errors=True)


def bench_noop(args, rows: list[Row], root: Path) -> None:
    """No-op plan and apply against a state where every item succeeded (the cache warmed once)."""
    n = args.items
    state = root / "state" / "full.db"
    env = {
        "BATCHOPS_STATE": str(state),
        "ANTHROPIC_API_KEY": "bench",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",  # a no-op apply makes no call at all
    }
    cold = run(batchops("plan", "--no-refresh"), cwd=root, env=env)  # fills any cache
    # by turns, as a baseline and its figure (`best_pair`): the apply is judged against the plan
    plan, apply = best_pair(
        args.repeat,
        lambda: run(batchops("plan", "--no-refresh"), cwd=root, env=env),
        lambda: run(batchops("apply", "--yes"), cwd=root, env=env),
    )
    if "No changes" not in plan.stdout:
        raise SystemExit(f"the no-op plan is not a no-op:\n{plan.stdout[-2000:]}")
    bare = f"bare script {fmt_s(args.bare)}" if args.bare else ""
    rows.append(
        Row(
            f"no-op `plan`, {n:,} items all succeeded",
            fmt_s(plan.seconds),
            bare + f"; first plan {fmt_s(cold.seconds)}",
            plan.seconds / args.bare if args.bare else None,
            plan.peak_mb,
            "≤ 2 s",
            plan.seconds <= 2.0,
        )  # fmt: skip
    )
    ratio = apply.seconds / plan.seconds
    rows.append(
        Row(
            f"no-op `apply --yes`, {n:,} items",
            fmt_s(apply.seconds),
            f"no-op plan {fmt_s(plan.seconds)}",
            ratio,
            apply.peak_mb,
            "≤ 1.1× plan, ≤ 2 s",
            ratio <= 1.1 and apply.seconds <= 2.0,
        )  # fmt: skip
    )
    args.curve_noop[n] = apply


def bench_export(args, rows: list[Row], root: Path) -> None:
    n = args.items
    state = root / "state" / "full.db"
    env = {"BATCHOPS_STATE": str(state)}
    # A large export runs on two processes where it may: the figure on every core, and on one.
    # And once as on a fresh checkout (CI), another batchops or a changed spec: the rows cache
    # (git-ignored) does not serve the job, and every item is made again before its result.
    cases = [(fmt, goal, cpus, False) for (fmt, goal), cpus in
             product((("jsonl", 150_000), ("csv", 100_000)), (None, {0}))]  # fmt: skip
    for fmt, goal, cpus, fresh in [*cases, ("jsonl", 150_000, None, True)]:
        out = root / f"out{'-fresh' if fresh else ''}.{fmt}"
        run_env = {**env, "BATCHOPS_CACHE": "off"} if fresh else env
        base, r = best_pair(
            args.repeat,
            lambda: run([PYTHON, "-c", RAW_EXPORT, str(state), str(root / "raw.jsonl")]),
            lambda f=fmt, o=out, c=cpus, e=run_env: run(
                batchops("results", "big", "--format", f, "-o", str(o)), cwd=root, env=e, cpus=c
            ),
        )
        per_s = n / r.seconds
        where = (", one core" if cpus else "") + (
            ", no rows cache (a fresh checkout)" if fresh else ""
        )
        rows.append(
            Row(
                f"`results --format {fmt}`, {n:,} rows{where}",
                rate(n, r.seconds),
                f"sqlite3 `json_object` dump {rate(n, base.seconds)}",
                r.seconds / base.seconds,
                r.peak_mb,
                f"≥ {goal:,}/s" + (", flat memory" if fresh else ""),
                per_s >= goal,
            )  # fmt: skip
        )


HARVEST_CHILD = r"""
import contextlib, json, resource, sys, time
from pathlib import Path
from batchops.apply.evaluator import Evaluator, NullProgress
from batchops.clock import utcnow
from batchops.remote.client import _parse_blocks
from batchops.state import open_writer
state_path, results_file = sys.argv[1:3]


class Recorded:
    # the API client's `results`, replayed from the bytes the emulator served, in blocks of
    # the size httpx2 reads from a socket

    @contextlib.contextmanager
    def results(self, batch_id):
        with self.result_blocks(batch_id) as blocks:
            yield _parse_blocks(blocks, "read results")

    @contextlib.contextmanager
    def result_blocks(self, batch_id):
        with open(results_file, "rb") as fh:
            yield iter(lambda: fh.read(1 << 16), b"")


state = open_writer(state_path, "bench")  # a SQLite file or a PostgreSQL URL
(record,) = [b for b in state.batches() if b.harvested_at is None]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
ev = Evaluator(state, Recorded(), utcnow, NullProgress())
start = time.perf_counter()
ok = ev.harvest(record)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # 0: none was used
start = time.perf_counter()
state.close()  # SQLite: waits for the WAL's copy into the file, which the harvest left running
closing = time.perf_counter() - start
print(json.dumps({"ok": ok, "stored": ev.report.results_stored, "seconds": seconds,
                  "closing": closing, "before": before, "after": after, "worker": worker,
                  "problems": ev.report.problems}))
"""

# What the emulator served, saved once: both sides of the harvest comparison read these bytes, so
# neither measures the emulator (a real API streams them from the network).
FETCH_RESULTS = r"""
import sys, anthropic
url, batch_id, path = sys.argv[1:4]
client = anthropic.Anthropic(base_url=url, api_key="bench")
with client.messages.batches.with_streaming_response.results(batch_id) as resp:
    with open(path, "wb") as out:
        for chunk in resp.iter_bytes():
            out.write(chunk)
"""


def bench_harvest(args, rows: list[Row]) -> None:
    n = args.harvest
    root = make_project(Path(args.tmp) / "harvest", n)
    emulator = Emulator(root / "remote.db")
    results = root / "results.jsonl"
    try:
        env = {"BATCHOPS_STATE": str(root / "state" / "h.db"), "ANTHROPIC_BASE_URL": emulator.url,
               "ANTHROPIC_API_KEY": "bench"}  # fmt: skip
        run(batchops("apply", "--yes"), cwd=root, env=env)  # submit only: harvested below
        conn = sqlite3.connect(root / "state" / "h.db")
        (batch_id,) = conn.execute("select id from batches").fetchone()
        conn.close()
        run([PYTHON, "-c", FETCH_RESULTS, emulator.url, batch_id, str(results)])
    finally:
        emulator.close()
    # The batch was 109 MB: replies of a hundred words or so, not one. The same lines
    # with such replies (the API's shape, only each text longer) are harvested too.
    long_results = root / "results-long.jsonl"
    lengthen(results, long_results)
    base_s = harvest_rows(args, rows, root, results, "one-word replies")
    harvest_rows(args, rows, root, long_results, "replies of 80–130 words, the issue's size")
    bench_harvest_postgres(args, rows, root, results, base_s)


def lengthen(source: Path, target: Path) -> None:
    """The results in `source` with each reply's text 80–130 words long (its usage to match)."""
    import random

    import orjson

    rng = random.Random(12)
    words = ("the result looks consistent with the request and the main points are covered "
             "here overall this summary keeps to the facts given in the prompt").split()  # fmt: skip
    with source.open("rb") as src, target.open("wb") as dst:
        for raw in src:
            line = orjson.loads(raw)
            message = line["result"]["message"]
            count = rng.randint(80, 130)
            text = " ".join(rng.choice(words) for _ in range(count)).capitalize() + "."
            message["content"] = [{"type": "text", "text": text}]
            message["usage"]["output_tokens"] = int(count * 1.3)
            dst.write(orjson.dumps(line) + b"\n")


def harvest_rows(args, rows: list[Row], root: Path, results: Path, replies: str) -> float:
    """Harvest `results` into copies of the submitted state and the raw baseline on the same
    bytes, by turns (the best of --repeat each, as `best_pair`): a row; the baseline's seconds."""
    n = args.harvest
    best_child: dict | None = None
    raw_db = root / "raw.db"
    base_s = float("inf")
    for _ in range(args.repeat):
        raw_db.unlink(missing_ok=True)
        base = run([PYTHON, "-c", RAW_HARVEST, str(results), str(raw_db)])
        base_s = min(base_s, float(base.stdout.strip().splitlines()[-1]))  # its own timing
        copy = root / "state" / "copy.db"
        shutil.copy(root / "state" / "h.db", copy)
        r = run([PYTHON, "-c", HARVEST_CHILD, str(copy), str(results)], cwd=root)
        child = json.loads(r.stdout.strip().splitlines()[-1])
        if not child["ok"] or child["stored"] != n:
            raise SystemExit(f"harvest failed: {child}")
        child["peak"] = r.peak_mb
        if best_child is None or child["seconds"] < best_child["seconds"]:
            best_child = child
    assert best_child is not None
    seconds = best_child["seconds"]
    grown = best_child["after"] - best_child["before"]
    ratio = seconds / base_s
    rows.append(
        Row(
            f"harvest, one {n:,}-result batch ({results.stat().st_size / 1e6:,.0f} MB, {replies})",
            rate(n, seconds),
            f"raw stream + orjson + executemany {rate(n, base_s)}",
            ratio,
            best_child["peak"],
            "≥ 66,000/s and ≤ 1.5× the raw limit, flat memory",
            n / seconds >= 66_000 and ratio <= 1.5 and grown < 50,
        )  # fmt: skip
    )
    # The harvest returns once its results are durable (the commit synced the WAL); copying the
    # WAL into the file goes on beside what apply does next, and closing waits for what is left.
    worker = (
        f"; its rows made by a worker process of {best_child['worker']:,.0f} MB peak"
        if best_child["worker"]
        else ""
    )
    rows[-1].figure += (
        f" (+{grown:,.0f} MB while harvesting{worker}; closing the state after it "
        f"{best_child['closing']:.2f} s)"
    )
    return base_s


# A copy of a SQLite state into an empty PostgreSQL database (what `state push` does).
PG_LOAD = r"""
import sys
from batchops.state import open_reader, open_writer
source, dsn = sys.argv[1:3]
reader, writer = open_reader(source), open_writer(dsn, "bench")
writer.load_tables(reader.dump_tables())
writer.close()
reader.close()
"""


def bench_harvest_postgres(args, rows: list[Row], root: Path, results: Path, base_s: float) -> None:
    """The same harvest into a PostgreSQL state, on a throwaway server of tests/pgserver.py
    (durability off there: fsync and synchronous_commit), when this machine can start one."""
    sys.path.insert(0, str(HERE.parent))
    try:
        from tests.pgserver import PostgresUnavailable, running_server
    except ImportError as exc:  # pytest (the test extra) missing
        print(f"PostgreSQL harvest skipped: {exc}", file=sys.stderr)
        return
    n = args.harvest
    try:
        with running_server() as server:
            best_child: dict | None = None
            for _ in range(args.repeat):
                dsn = server.dsn_for(server.create_database())
                run([PYTHON, "-c", PG_LOAD, str(root / "state" / "h.db"), dsn])
                r = run([PYTHON, "-c", HARVEST_CHILD, dsn, str(results)], cwd=root)
                child = json.loads(r.stdout.strip().splitlines()[-1])
                if not child["ok"] or child["stored"] != n:
                    raise SystemExit(f"PostgreSQL harvest failed: {child}")
                child["peak"] = r.peak_mb
                if best_child is None or child["seconds"] < best_child["seconds"]:
                    best_child = child
            intent = bench_intent_postgres(args, server, root)
    except PostgresUnavailable as exc:
        print(f"PostgreSQL harvest skipped: {exc}", file=sys.stderr)
        return
    rows.append(intent)
    assert best_child is not None
    seconds = best_child["seconds"]
    grown = best_child["after"] - best_child["before"]
    rows.append(
        Row(
            f"harvest into PostgreSQL (throwaway server, fsync off), {n:,} results",
            rate(n, seconds) + f" (+{grown:,.0f} MB while harvesting)",
            f"raw stream + orjson + executemany {rate(n, base_s)}",
            seconds / base_s,
            best_child["peak"],
            "—",
            None,
        )  # fmt: skip
    )


INTENT_CHILD = r"""
import sys, time
from datetime import UTC, datetime
from batchops.state import open_writer
location, n = sys.argv[1], int(sys.argv[2])


class Attempt:
    def __init__(self, i):
        self.key = f"row-{i}"
        self.custom_id = f"big-row_{i}-{i:012d}"
        self.fingerprint = f"sha256:{i:064x}"
        self.attempt = 1


attempts = [Attempt(i) for i in range(n)]
writer = open_writer(location, "bench")
start = time.perf_counter()
writer.record_intent("intent-bench", "big", attempts, 100, datetime.now(UTC))
print(time.perf_counter() - start)
writer.close()
"""


def bench_intent_postgres(args, server, root: Path) -> Row:
    """Recording the intent of a full batch before its create (its attempts written, its items
    put in flight) into PostgreSQL, against the same into SQLite, by turns."""
    n = args.harvest
    folder = root / "intents"
    folder.mkdir(exist_ok=True)
    count = [0]

    def record(postgres: bool) -> Run:
        count[0] += 1
        if postgres:
            location = server.dsn_for(server.create_database())
        else:
            location = str(folder / f"intent-{count[0]}.db")
        r = run([PYTHON, "-c", INTENT_CHILD, location, str(n)])
        return Run(float(r.stdout.strip().splitlines()[-1]), r.peak_mb, "")

    base, figure = best_pair(args.repeat, lambda: record(False), lambda: record(True))
    return Row(
        f"record the intent of a {n:,}-request batch into PostgreSQL (before its create)",
        fmt_s(figure.seconds),
        f"the same into SQLite {fmt_s(base.seconds)}",
        figure.seconds / base.seconds,
        figure.peak_mb,
        "—",
        None,
    )  # fmt: skip


RAW_HARVEST = r"""
import sqlite3, sys, time, orjson
path, db = sys.argv[1:3]
conn = sqlite3.connect(db)
conn.execute("create table r (custom_id text, type text, text text, message text)")
start = time.perf_counter()
chunk = []
insert = "insert into r values (?, ?, ?, ?)"
with open(path, "rb") as fh, conn:
    for line in fh:
        value = orjson.loads(line)
        result = value["result"]
        message = result.get("message") or {}
        text = "".join(b.get("text", "") for b in message.get("content") or [])
        chunk.append((value["custom_id"], result["type"], text, orjson.dumps(message)))
        if len(chunk) >= 5000:
            conn.executemany(insert, chunk)
            chunk.clear()
    conn.executemany(insert, chunk)
print(time.perf_counter() - start)
"""

SUBMIT_RAW = r"""
import sys, anthropic, orjson
url, path = sys.argv[1:3]
requests = [orjson.loads(line) for line in open(path, "rb")]
client = anthropic.Anthropic(base_url=url, api_key="bench", max_retries=0)
client.messages.batches.create(requests=requests, timeout=1800)
"""


def bench_submit(args, rows: list[Row]) -> None:
    """One create of about `submit_mb` MB (100,000 requests at the full size), through the SDK."""
    requests = max(1_000, int(100_000 * args.submit_mb / 200))
    per_request = int(args.submit_mb * 1e6 / requests)
    root = make_project(Path(args.tmp) / "submit", requests, body_bytes=max(0, per_request - 330))
    emulator = Emulator(root / "remote.db")
    try:
        env = {"BATCHOPS_STATE": str(root / "state" / "s.db"), "ANTHROPIC_BASE_URL": emulator.url,
               "ANTHROPIC_API_KEY": "bench"}  # fmt: skip
        plan = run(batchops("plan", "--no-refresh", "--json"), cwd=root, env=env)
        payload = json.loads(plan.stdout)["submit_batches"][0]["request_bytes"]
        # baseline: the same requests, built in memory and handed to the SDK by a bare script
        lines = root / "requests.jsonl"
        run(batchops("plan", "--no-refresh", "-o", str(root / "p.jsonl")), cwd=root, env=env)
        with (root / "p.jsonl").open("rb") as src, lines.open("wb") as dst:
            import orjson

            for raw in src:
                line = orjson.loads(raw)
                if "params" in line:
                    dst.write(orjson.dumps({"custom_id": line["custom_id"],
                                            "params": line["params"]}) + b"\n")  # fmt: skip
        base = run([PYTHON, "-c", SUBMIT_RAW, emulator.url, str(lines)])
        r = run(batchops("apply", "--yes"), cwd=root, env=env)
    finally:
        emulator.close()
    mb = payload / 1e6
    rows.append(
        Row(
            f"submit one {requests:,}-request batch of {mb:,.1f} MB",
            fmt_s(r.seconds),
            f"bare SDK create: {base.peak_mb:,.0f} MB = {base.peak_mb / mb:.2f}× the payload",
            r.peak_mb / base.peak_mb,
            r.peak_mb,
            "≤ 2.5× the payload",
            r.peak_mb <= 2.5 * mb,
        )  # fmt: skip
    )
    rows[-1].figure += f", {r.peak_mb / mb:.2f}× the payload"


def bench_curve(args, rows: list[Row]) -> None:
    """Plan (empty state, one core) and no-op apply at growing sizes: linear time, flat memory."""
    for n in args.curve:
        if n not in args.curve_plan or n not in args.curve_noop:
            root = make_project(Path(args.tmp) / f"curve{n}", n)
            env = {"BATCHOPS_STATE": str(root / "state" / "empty.db")}
            if n not in args.curve_plan:
                args.curve_plan[n] = best(
                    args.repeat,
                    lambda r=root, e=env: run(
                        batchops("plan", "--no-refresh"),
                        cwd=r,
                        env={**e, "BATCHOPS_CACHE": "off"},  # every item rendered
                        cpus={0},
                        stdout_to=r / "plan.out",
                    ),  # fmt: skip
                )
            if n not in args.curve_noop:
                fill_state(root, root / "state" / "full.db")
                noop_env = {"BATCHOPS_STATE": str(root / "state" / "full.db"),
                            "ANTHROPIC_API_KEY": "bench",
                            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"}  # fmt: skip
                run(batchops("plan", "--no-refresh"), cwd=root, env=noop_env)
                args.curve_noop[n] = best(
                    args.repeat,
                    lambda r=root, e=noop_env: run(batchops("apply", "--yes"), cwd=r, env=e),
                )
            shutil.rmtree(root, ignore_errors=True)
    smallest = min(args.curve)
    p0 = args.curve_plan[smallest]
    # Linear: no size costs more an item than the smallest (1.25x for noise). Flat memory: no
    # size's peak over 1.5x the second size's (100,000 items by default; the smallest is mostly
    # Python and its imports).
    sizes = sorted(args.curve)
    second = sizes[1] if len(sizes) > 1 else sizes[0]
    flat_peak = 1.5 * max(args.curve_plan[second].peak_mb, args.curve_noop[second].peak_mb)
    for n in args.curve:
        p, a = args.curve_plan[n], args.curve_noop[n]
        per_item = p.seconds / n * 1e6
        linear = per_item <= 1.25 * p0.seconds / smallest * 1e6
        rows.append(
            Row(
                f"cost curve, {n:,} items: plan (one core) / no-op apply",
                f"{fmt_s(p.seconds)} ({per_item:.1f} µs/item, CPU {fmt_s(p.cpu)}, "
                f"{p.peak_mb:,.0f} MB) / {fmt_s(a.seconds)} ({a.peak_mb:,.0f} MB)",
                f"{smallest:,} items: {p0.seconds / smallest * 1e6:.1f} µs/item",
                per_item / (p0.seconds / smallest * 1e6),
                max(p.peak_mb, a.peak_mb),
                f"linear, flat memory (≤ {flat_peak:,.0f} MB: 1.5× at {second:,})",
                linear and max(p.peak_mb, a.peak_mb) <= flat_peak,
            )  # fmt: skip
        )


# --- main ---------------------------------------------------------------------------------------

ALL = ("cold", "plan", "requests", "noop", "export", "harvest", "submit", "curve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every default size")
    parser.add_argument("--items", type=int, help="plan/no-op/export size [1,000,000]")
    parser.add_argument("--harvest", type=int, help="results in the harvested batch [100,000]")
    parser.add_argument("--submit-mb", type=float, help="payload of one create in MB [200]")
    parser.add_argument("--curve", help="comma-separated sizes [10,000,100,000,1,000,000]")
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure; the best counts")
    parser.add_argument("--cold-repeat", type=int, default=11)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(ALL)}")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--fill", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        fill_state_here(Path(args.fill[0]), Path(args.fill[1]))
        return
    Launcher.start(PYTHON)  # while this process is small
    s = args.scale
    args.items = args.items or int(1_000_000 * s)
    args.harvest = args.harvest or int(100_000 * s)
    args.submit_mb = args.submit_mb or 200 * s
    sizes = args.curve or f"{int(10_000 * s)},{int(100_000 * s)},{int(1_000_000 * s)}"
    args.curve = [int(x) for x in sizes.split(",") if x]
    only = set((args.only or ",".join(ALL)).split(","))
    args.bare = 0.0
    args.curve_plan, args.curve_noop = {}, {}
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="batchops-bench-") as tmp:
        args.tmp = tmp

        def say(message: str) -> None:
            elapsed = time.perf_counter() - started
            print(f"[{elapsed:6.0f} s] {message}", file=sys.stderr, flush=True)

        if "cold" in only:
            say("cold start")
            bench_cold(args, rows)
        if only & {"plan", "noop", "export", "curve"}:
            say(f"writing a {args.items:,}-row project")
            root = make_project(Path(tmp) / "big", args.items)
            if "plan" in only or "curve" in only:
                say("plan")
                bench_plan(args, rows, root)
            if only & {"noop", "export", "curve"}:
                say("filling a state where every item succeeded")
                fill_state(root, root / "state" / "full.db")
            if "noop" in only or "curve" in only:
                say("no-op plan and apply")
                if not args.bare:
                    data = root / "jobs" / "data" / "rows.jsonl"
                    args.bare = run([PYTHON, "-c", BARE_SCRIPT, str(data)], cpus={0}).seconds
                bench_noop(args, rows, root)
            if "export" in only:
                say("export")
                bench_export(args, rows, root)
            shutil.rmtree(root, ignore_errors=True)
        if "requests" in only:
            say("plan of a requests file")
            bench_requests(args, rows)
        if "harvest" in only:
            say("harvest")
            bench_harvest(args, rows)
        if "submit" in only:
            say("submit")
            bench_submit(args, rows)
        if "curve" in only:
            say("cost curve")
            bench_curve(args, rows)
    say("done")
    print_table(rows, markdown=args.markdown)


def print_table(rows: list[Row], markdown: bool = False) -> None:
    headers = ["what", "figure", "baseline, same run", "ratio", "peak RSS", "goal", "met"]
    cells = [r.cells() for r in rows]
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "---|" * len(headers))
        for c in cells:
            print("| " + " | ".join(c) + " |")
        return
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)))


if __name__ == "__main__":
    main()
