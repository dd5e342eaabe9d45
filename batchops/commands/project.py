"""Project settings: `batchops.toml` at the project root, found by walking up like git.

A project is the folder holding `batchops.toml`; every command run anywhere below it uses that
folder as the project root (which confines every spec, data and output path) and reads its jobs
folder, state location and prices file from the settings, so `cd jobs && batchops plan` works.
Command-line options and environment variables win over the file. The file is checked in, so a
state URL in it may not carry a password (use PGPASSWORD, ~/.pgpass or a PostgreSQL service file).

```toml
jobs = "jobs"                      # spec file or folder of specs
state = "state/batchops.db"        # or postgresql://user@host/db (no password)
prices = "prices.toml"             # a price table overriding the shipped one
```
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from batchops.errors import BatchopsError
from batchops.lazyclass import dataclass
from batchops.safetext import terminal
from batchops.state import is_postgres

SETTINGS_FILE = "batchops.toml"
KEYS = ("jobs", "state", "prices")
MAX_SETTINGS_BYTES = 1_000_000


@dataclass(frozen=True)
class ProjectSettings:
    """What `batchops.toml` says, its relative paths resolved against the project root."""

    root: Path
    file: Path
    jobs: Path | None = None
    state: Path | str | None = None  # a file, or a postgresql:// URL
    prices: Path | None = None


def find_settings_file(start: Path | None = None) -> Path | None:
    """The nearest `batchops.toml` in `start` (default: the working directory) or above it."""
    here = Path(os.path.abspath(start or Path.cwd()))
    for folder in (here, *here.parents):
        candidate = folder / SETTINGS_FILE
        if candidate.is_file():
            return candidate
    return None


def read_settings(file: Path) -> ProjectSettings:
    """Parse and check a `batchops.toml`; BatchopsError lists every problem, one line each."""
    file = Path(file)
    shown = terminal(_shown(file))
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_SETTINGS_BYTES + 1)
    except OSError as e:
        raise BatchopsError(f"{shown}: cannot read: {e.strerror}") from None
    if len(data) > MAX_SETTINGS_BYTES:
        raise BatchopsError(f"{shown}: larger than {MAX_SETTINGS_BYTES:,} bytes")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BatchopsError(f"{shown}: not valid UTF-8") from None
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as e:
        raise BatchopsError(f"{shown}: invalid TOML: {terminal(e)}") from None
    root = file.parent.resolve()
    problems = [
        f"{shown}: {terminal(key)}: unknown setting (settings: {', '.join(KEYS)})"
        for key in raw
        if key not in KEYS
    ]
    for key in KEYS:
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            problems.append(f"{shown}: {key}: should be a non-empty string")
    state = raw.get("state")
    if isinstance(state, str) and is_postgres(state) and _has_password(state):
        problems.append(
            f"{shown}: state: the URL holds a password, and this file is checked in; remove it "
            "and use PGPASSWORD, ~/.pgpass or a PostgreSQL service file"
        )
    if problems:
        raise BatchopsError(*problems)

    def path(key: str) -> Path | None:
        value = raw.get(key)
        return None if value is None else root / value

    return ProjectSettings(
        root=root,
        file=file,
        jobs=path("jobs"),
        state=state if isinstance(state, str) and is_postgres(state) else path("state"),
        prices=path("prices"),
    )


def _has_password(url: str) -> bool:
    try:
        parts = urlsplit(url)
        if parts.password:
            return True
        return any(k.lower() == "password" for k in parse_qs(parts.query))
    except ValueError:
        return ":" in url.split("@", 1)[0].split("//", 1)[-1]  # unparsable: judge conservatively


def near(path: Path) -> Path:
    """`path` relative to the working directory when it lies below it (shorter messages)."""
    path = Path(path)
    cwd = Path.cwd()
    try:
        return path.relative_to(cwd) if path.is_absolute() else path
    except ValueError:
        return path


def _shown(file: Path) -> str:
    return str(near(file))
