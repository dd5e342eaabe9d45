"""Small batchops projects for tests: a spec and a data file written into a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from batchops.commands.context import Context, Settings

API_KEY = "test-dummy-key"


def write_project(root: Path, rows: list[dict], *, max_attempts: int = 3, extra: str = "") -> Path:
    """A project with one job `demo` over `rows` (each a dict with `id` and `text`)."""
    jobs = root / "jobs"
    (jobs / "data").mkdir(parents=True, exist_ok=True)
    write_rows(root, rows)
    (jobs / "demo.toml").write_text(
        "version = 1\n\n"
        "[jobs.demo]\n"
        'model = "claude-haiku-4-5"\n'
        "max_tokens = 16\n"
        f"max_attempts = {max_attempts}\n"
        'prompt = "Classify: {{ text }}"\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n' + extra,
        encoding="utf-8",
    )
    return jobs


def write_rows(root: Path, rows: list[dict]) -> None:
    path = root / "jobs" / "data" / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def rows(n: int, **overrides: str) -> list[dict]:
    """n rows r1..rn; `overrides` maps a key to a replacement text."""
    return [
        {"id": f"r{i}", "text": overrides.get(f"r{i}", f"text number {i}")} for i in range(1, n + 1)
    ]


def context(
    root: Path, base_url: str | None, *, state: Path | str | None = None, **settings
) -> Context:
    """A Context on `root`'s project; `state` defaults to the SQLite file under `root/state`."""
    return Context(
        Settings(
            jobs_path=root / "jobs",
            state_path=state if state is not None else root / "state" / "batchops.db",
            root=root,
            base_url=base_url,
            api_key=API_KEY if base_url else None,
            **settings,
        )
    )


def apply(ctx: Context, **kw):
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("timeout", 60)
    return ctx.apply(**kw)


def run_cli(
    root: Path,
    base_url: str | None,
    *args: str,
    env: dict | None = None,
    timeout: float = 120,
    state: Path | str | None = None,
) -> subprocess.CompletedProcess:
    """Run `batchops` as a real process in `root`, pointed at `base_url` (and at `state`
    through BATCHOPS_STATE, if given)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    full_env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    if base_url:
        full_env.update({"ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": API_KEY})
    if state is not None:
        full_env["BATCHOPS_STATE"] = str(state)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "batchops", *args],
        cwd=root,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows_outcome(rows_of):
    """(the rows `rows_of()` yields, and the problems of the SpecError that ended them, or
    None): what a render gave, errors included, for comparing two ways to render."""
    from batchops.errors import SpecError

    out = []
    try:
        for row in rows_of():
            out.append(row)
    except SpecError as e:
        return out, e.problems
    return out, None


def rewrite_digest(lines: list[str]) -> list[str]:
    """A saved plan's lines with its end line made anew over the others, as anyone editing the
    file on purpose can (the digest is a checksum, not a signature)."""
    import hashlib
    import json

    body = "".join(line + "\n" for line in lines[:-1]).encode()
    end = json.loads(lines[-1])
    end["digest"] = "sha256:" + hashlib.sha256(body).hexdigest()
    end["lines"] = len(lines) - 1
    return [*lines[:-1], json.dumps(end)]


def write_edited(path: Path, lines: list[str]) -> None:
    """Write a saved plan's lines, edited, with its digest made anew."""
    path.write_text("".join(line + "\n" for line in rewrite_digest(lines)))


def refused(ctx: Context, **kw) -> str:
    """What apply (with `kw`) is refused with: a PlanError's message."""
    import pytest

    from batchops.errors import PlanError

    with pytest.raises(PlanError) as caught:
        apply(ctx, **kw)
    return str(caught.value)


def record_forks(monkeypatch) -> list[int]:
    """The pids of the children the export forks from now on (`results._parts`), as they fork."""
    from batchops.commands import results as results_mod

    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(results_mod.os, "fork", fork)
    return forked
