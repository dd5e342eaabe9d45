"""Building hostile projects and reading back exactly what batchops says about them."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from batchops.errors import SpecError
from batchops.spec.items import iter_items
from batchops.spec.model import load_project

ROOT = Path(__file__).resolve().parents[2]
FOUR_GB = 4 << 30

JOB = """
[jobs.j]
model = "claude-haiku-4-5"
max_tokens = 8
"""


def write(root: Path, relative: str, content: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(textwrap.dedent(content), encoding="utf-8")
    return path


def spec(root: Path, body: str, name: str = "jobs/a.toml", header: str = "") -> Path:
    """A version-1 spec with job `j` (model and max_tokens set) followed by `body`."""
    return write(root, name, "version = 1\n" + header + JOB + textwrap.dedent(body))


def load_problems(root: Path, jobs: str = "jobs", **kwargs: object) -> list[str]:
    """The problem lines of loading the project (fails if it loads)."""
    try:
        load_project(root / jobs, root, **kwargs)  # type: ignore[arg-type]
    except SpecError as e:
        return e.problems
    raise AssertionError("the project loaded")


def item_problems(root: Path, jobs: str = "jobs") -> list[str]:
    """The problem lines of loading the project and rendering every item of every job."""
    try:
        project = load_project(root / jobs, root)
        for job in project.jobs:
            list(iter_items(job, root))
    except SpecError as e:
        return e.problems
    raise AssertionError("every item rendered")


def timed_problems(root: Path, budget_s: float) -> list[str]:
    start = time.monotonic()
    lines = item_problems(root)
    elapsed = time.monotonic() - start
    assert elapsed < budget_s, f"took {elapsed:.2f}s, over {budget_s}s"
    return lines


_CHILD = """
import json, sys
from pathlib import Path
from batchops.errors import SpecError
from batchops.spec.items import iter_items
from batchops.spec.model import load_project
root = Path(sys.argv[1])
try:
    project = load_project(root / "jobs", root)
    for job in project.jobs:
        list(iter_items(job, root))
    print(json.dumps({"ok": True}))
except SpecError as e:
    print(json.dumps({"problems": e.problems}))
"""


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (FOUR_GB, FOUR_GB))


def problems_in_subprocess(root: Path, timeout: float = 20.0) -> list[str]:
    """item_problems, run in a child limited to 4 GB of address space (a crash cannot spread)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
        env=env,
        cwd=root,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    result = json.loads(done.stdout)
    assert "problems" in result, "every item rendered"
    return result["problems"]


def one_line(lines: list[str]) -> str:
    """The single problem line, checked to be one printable line."""
    assert len(lines) == 1, lines
    (line,) = lines
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    line.encode("utf-8")  # no lone surrogate: it can be printed
    return line
