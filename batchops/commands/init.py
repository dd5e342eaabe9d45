"""`batchops init`: scaffold a project in a folder, never overwriting anything.

It writes a `batchops.toml` (which makes the folder the project root), an example job with a
small data file, the spec format's JSON Schema for editors, a `state/.gitignore` (state never
goes into git), and a pre-commit config that runs `batchops validate` before each commit. If any
of these files exists already, nothing at all is written and each one is named.
"""

from __future__ import annotations

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
    """Write the scaffold into `folder`; refuses, writing nothing, if any file is there already."""
    folder = Path(folder)
    files = scaffold()
    existing = [name for name in files if (folder / name).exists() or (folder / name).is_symlink()]
    if existing:
        raise BatchopsError(
            *(f"{folder / name}: already exists; init overwrites nothing" for name in existing)
        )
    written = []
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as f:  # "x": never over a file made meanwhile
            f.write(content)
        written.append(path)
    return written
