"""`batchops init`: scaffold a project in a folder, never overwriting anything.

It writes a `batchops.toml` (which makes the folder the project root), an example job with a
small data file, the spec format's JSON Schema for editors, a `state/.gitignore` (state never
goes into git), and a pre-commit config that runs `batchops validate` before each commit. If any
of these files exists already, nothing at all is written and each one is named.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from batchops.errors import BatchopsError
from batchops.spec.schema import shipped_schema

SETTINGS = """\
# batchops project settings. Every batchops command run in this folder or below it uses this
# folder as the project root. Command-line options and environment variables win.
jobs = "jobs"                      # a spec file or a folder of specs
state = "state/batchops.db"        # or postgresql://user@host/db: never a password here (use
                                   # PGPASSWORD, ~/.pgpass or a PostgreSQL service file)
# prices = "prices.toml"           # a price table overriding the one batchops ships
"""

EXAMPLE_SPEC = """\
#:schema ../spec.schema.json
# An example job: try it offline with `batchops --emulator apply --yes --wait`, then
# `batchops --emulator results review-sentiment --format csv`.
version = 1

[defaults]
model = "claude-haiku-4-5"
max_attempts = 3

[jobs.review-sentiment]
description = "Label each product review positive, negative or neutral"
max_tokens = 8
system = "Reply with exactly one word: positive, negative or neutral."
prompt = "Review of {{ product }}:\\n\\n{{ text }}"
input = { path = "data/reviews.jsonl", key = "review_id" }
params = { temperature = 0.0 }
budget_usd = 0.10
output = { path = "out/review-sentiment.jsonl" }
"""

EXAMPLE_DATA = """\
{"review_id": "R-1", "product": "kettle", "text": "Boils fast and looks great on the counter."}
{"review_id": "R-2", "product": "kettle", "text": "The lid broke after a week."}
{"review_id": "R-3", "product": "toaster", "text": "It toasts bread."}
"""

STATE_GITIGNORE = """\
# batchops state (and the emulator's batches): keep it somewhere durable, never in git.
*
!.gitignore
"""

# The hook of this package's .pre-commit-hooks.yaml, as a local hook running the installed
# batchops (tests keep the two in step).
HOOK_ID = "batchops-validate"
HOOK_FIELDS = {
    "id": HOOK_ID,
    "name": "batchops validate",
    "entry": "batchops validate",
    "pass_filenames": "false",
    "files": r"\.(toml|json|jsonl|ndjson|csv)$",
}
PRE_COMMIT = f"""\
# pre-commit (pre-commit.com): `batchops validate` checks every spec and renders every item
# (no network, no state) before each commit. This runs the batchops installed here; to let
# pre-commit install batchops itself, use the batchops repository with `rev:` and the hook id
# {HOOK_ID} instead of this local repo.
repos:
  - repo: local
    hooks:
      - id: {HOOK_FIELDS["id"]}
        name: {HOOK_FIELDS["name"]}
        entry: {HOOK_FIELDS["entry"]}
        language: system
        pass_filenames: {HOOK_FIELDS["pass_filenames"]}
        files: {HOOK_FIELDS["files"]}
"""


def scaffold() -> dict[str, str]:
    """Relative path → content of every file `init` writes."""
    return {
        "batchops.toml": SETTINGS,
        "jobs/example.toml": EXAMPLE_SPEC,
        "jobs/data/reviews.jsonl": EXAMPLE_DATA,
        "spec.schema.json": shipped_schema(),
        "state/.gitignore": STATE_GITIGNORE,
        ".pre-commit-config.yaml": PRE_COMMIT,
    }


def init_project(folder: Path) -> list[Path]:
    """Write the scaffold into `folder`; refuses, writing nothing, if any file is there already
    or a file stands where a folder goes, and removes what it wrote if a write fails."""
    folder = Path(folder)
    files = scaffold()
    targets = [folder / name for name in files]
    problems = [
        f"{path}: already exists; init overwrites nothing"
        for path in targets
        if path.exists() or path.is_symlink()
    ]
    in_the_way = {p for path in targets for p in path.parents if p.exists() and not p.is_dir()}
    problems += [
        f"{p}: exists and is not a folder; init writes nothing" for p in sorted(in_the_way)
    ]
    if problems:
        raise BatchopsError(*problems)
    written: list[Path] = []
    made: list[Path] = []  # folders this init made, outermost first
    try:
        for path, content in zip(targets, files.values(), strict=True):
            missing = [p for p in reversed(path.parents) if not p.exists()]
            for parent in missing:
                parent.mkdir()
                made.append(parent)
            with open(path, "x", encoding="utf-8") as f:  # "x": never over a file made meanwhile
                written.append(path)
                f.write(content)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()
        where = exc.filename or folder
        raise BatchopsError(
            f"{where}: cannot write ({exc.strerror or exc}); init wrote nothing"
        ) from None
    return written
