"""The loaded project, kept between runs, so an unchanged project loads without pydantic.

Checking spec files needs pydantic, and importing it and building the spec models costs more than
a cold start's whole budget (`validate`, `plan --no-refresh`). What checking produces is plain
data (`batchops.spec.model`'s frozen dataclasses), so a project that loaded without a problem is
kept as JSON in this user's cache folder (`$XDG_CACHE_HOME/batchops/projects/`, or
`~/.cache/batchops/projects/`; one file per project root and jobs path, never inside the project,
which a command that fails must leave as it was) and served again while every input of the checks
is the same:

- the bytes of every spec file found under the jobs path (data files under it included), and the
  list of them; the jobs path, the project root, and the protected paths;
- batchops itself (its version and the source of the modules that load specs) and the installed
  pydantic's version;
- where each path the specs name leads now: every input, requests and output path is resolved and
  checked again (symlinks, existence, regular file), as are the paths that tell data files from
  spec files, and the outputs' checks run again (`check_outputs`). A path that leads elsewhere or
  no longer passes makes it a miss, and the full load reports what is wrong.

A project is kept only when its JSON gives back an equal project with values of the same types
(a TOML date inside `params` or `items` is not kept: JSON has no dates). The file carries a keyed
hash (BLAKE2b) with the rows cache's key (`batchops.spec.cache`), so a file not written by this
user's batchops is refused; symlinked cache folders or files, and anything but a regular file, are
refused too. `BATCHOPS_CACHE=off` turns it off.

A file not used for `KEEP_DAYS` days is removed, by the next command that writes one (a load in
full); a command served from a file marks it used at most once a day (its mtime), so neither a
hit nor an unchanged project pays for the pruning.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import os
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

import orjson

import batchops
from batchops.lazyclass import dataclass
from batchops.spec.files import MAX_SPEC_BYTES, FileRefused, read_bounded
from batchops.spec.model import (
    InputSpec,
    Job,
    Moved,
    OutputSpec,
    Project,
    RequestsSpec,
    _confined,
    check_outputs,
    referenced_path,
)

FORMAT = "batchops-project-v1"
MAX_FILE_BYTES = 16 * 1024 * 1024  # a bigger project (inline items) is not kept
KEEP_DAYS = 30  # a kept project not used for this long is removed
_MARK_USED_AFTER = 86_400  # seconds: a hit marks its file used at most once a day
# The modules whose code decides what a loaded project holds.
_CODE = (
    "spec/model.py",
    "spec/raw.py",
    "spec/rawplain.py",
    "spec/projectcache.py",
    "spec/files.py",
)


@dataclass
class Resolutions:
    """What a full load found on disk, checked again before a kept project is served."""

    # (spec file, path as written, must exist, resolved) for each path a job uses
    confined: list[tuple[str, str, bool, str]] = field(default_factory=list)
    # (spec file, path as written, resolved or None) for each path that tells data from specs
    referenced: list[tuple[str, str, str | None]] = field(default_factory=list)


def key_of(
    jobs_path: Path, root: Path, candidates: Sequence[Path], protected: Iterable[Path]
) -> str | None:
    """The digest of everything a load reads but the paths it resolves; None: not cached."""
    from batchops.spec.cache import enabled

    if not enabled():
        return None
    digest = hashlib.sha256()

    def add(*parts: str | bytes) -> None:
        for part in parts:
            data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
            digest.update(len(data).to_bytes(8, "big") + data)

    add(FORMAT, batchops.__version__, str(jobs_path), str(root), _pydantic_version())
    package = Path(batchops.__file__).parent
    for name in _CODE:
        try:
            add(name, (package / name).read_bytes())
        except OSError:
            return None
    add(*(str(Path(p)) for p in protected))
    add(str(len(candidates)))
    for file in candidates:
        try:
            data = read_bounded(file, root, MAX_SPEC_BYTES, "a spec file")
        except FileRefused:
            return None  # the full load says why
        add(str(file), data)
    return "sha256:" + digest.hexdigest()


def load(
    key: str,
    jobs_path: Path,
    root: Path,
    candidates: Sequence[Path],
    protected: Iterable[Path],
) -> Project | None:
    """The kept project for `key`, when it can be trusted and every path still leads where it
    did; None otherwise (then load in full)."""
    mac_key = _mac_key()
    if mac_key is None:
        return None
    data = _read(_file_of(root, jobs_path))
    if data is None:
        return None
    body, _, mac = data.rstrip(b"\n").rpartition(b"\n")
    expected = hashlib.blake2b(body, key=mac_key, digest_size=32).hexdigest().encode()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        kept = orjson.loads(body)
        if kept["kind"] != FORMAT or kept["key"] != key:
            return None
        project = _project_of(kept["project"])
        if not _same_paths(root, kept["confined"], kept["referenced"], candidates, project):
            return None
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if check_outputs(project, protected, candidates):
        return None  # the full load reports it
    _mark_used(_file_of(root, jobs_path))
    return project


def save(
    key: str,
    jobs_path: Path,
    root: Path,
    candidates: Sequence[Path],
    protected: Iterable[Path],
    project: Project,
    record: Resolutions,
) -> None:
    """Keep `project`, loaded from the inputs `key` digests, when JSON holds it exactly and the
    spec files did not change while it loaded."""
    mac_key = _mac_key()
    if mac_key is None:
        return
    form = _form_of(project)
    if form is None:
        return
    try:
        body = orjson.dumps(
            {
                "kind": FORMAT,
                "key": key,
                "project": form,
                "confined": record.confined,
                "referenced": record.referenced,
            }
        )
        if _project_of(orjson.loads(body)["project"]) != project:
            return
    except (orjson.JSONEncodeError, TypeError, ValueError):
        return
    if len(body) > MAX_FILE_BYTES or key_of(jobs_path, root, candidates, protected) != key:
        return  # a spec file changed while it was read
    mac = hashlib.blake2b(body, key=mac_key, digest_size=32).hexdigest().encode()
    with contextlib.suppress(OSError):
        _write(_file_of(root, jobs_path), body + b"\n" + mac + b"\n")
        _prune(_file_of(root, jobs_path).parent, time.time())


# --- the form kept ------------------------------------------------------------------------------


def _form_of(project: Project) -> dict[str, Any] | None:
    """The project as JSON values, or None when JSON cannot hold every value exactly."""
    for job in project.jobs:
        # The other fields were checked as str, int, float, bool, paths or tuples of str.
        free = (job.system, job.messages, job.params, job.items, job.betas)
        if not all(_plain(value) for value in free):
            return None
    return {
        "root": str(project.root),
        "spec_files": [str(f) for f in project.spec_files],
        "jobs": [job.model_dump(mode="json") for job in project.jobs],
        "moves": [[m.old, m.new, str(m.spec_file)] for m in project.moves],
    }


def _plain(value: Any) -> bool:
    """True when `value` is made of what JSON gives back as it was (no dates, no tuples)."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if v is None or t is str or t is bool or t is float or t is int:
            continue
        if t is list:
            stack.extend(v)
        elif t is dict:
            if not all(type(k) is str for k in v):
                return False
            stack.extend(v.values())
        else:
            return False
    return True


def _project_of(form: dict[str, Any]) -> Project:
    return Project(
        root=Path(form["root"]),
        spec_files=tuple(Path(f) for f in form["spec_files"]),
        jobs=tuple(_job_of(j) for j in form["jobs"]),
        moves=tuple(Moved(old, new, Path(f)) for old, new, f in form["moves"]),
    )


def _job_of(form: dict[str, Any]) -> Job:
    fields = dict(form)
    fields["spec_file"] = Path(form["spec_file"])
    fields["attachments"] = tuple(form["attachments"])
    if form["output"] is not None:
        out = form["output"]
        fields["output"] = OutputSpec(
            path=Path(out["path"]), format=out["format"], columns=tuple(out["columns"])
        )
    if form["input"] is not None:
        inp = form["input"]
        fields["input"] = InputSpec(path=Path(inp["path"]), key=inp["key"], format=inp["format"])
    if form["requests"] is not None:
        fields["requests"] = RequestsSpec(path=Path(form["requests"]["path"]))
    return Job(**fields)


def _same_paths(
    root: Path,
    confined: list[list[Any]],
    referenced: list[list[Any]],
    candidates: Sequence[Path],
    project: Project,
) -> bool:
    """Whether every path the kept project was checked with still leads where it did."""
    for file, value, must_exist, resolved in confined:
        problems: list[str] = []
        again = _confined(Path(file), root, value, problems, "", "", must_exist=must_exist)
        if problems or again is None or str(again) != resolved:
            return False
    found = set()
    for file, value, resolved in referenced:
        again = referenced_path(Path(file), value)
        if (None if again is None else str(again)) != resolved:
            return False
        if again is not None:
            found.add(again)
    return tuple(f for f in candidates if f not in found) == project.spec_files


# --- the file -----------------------------------------------------------------------------------


def _mac_key() -> bytes | None:
    from batchops.spec.cache import mac_key

    return mac_key()


def _file_of(root: Path, jobs_path: Path) -> Path:
    """One file per project root and jobs path, in this user's cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    where = f"{root}\0{jobs_path}".encode("utf-8", "surrogateescape")
    return Path(base) / "batchops" / "projects" / f"{hashlib.sha256(where).hexdigest()[:32]}.json"


def _read(path: Path) -> bytes | None:
    """The file's bytes, when it and its folders are no symlinks and it is a regular file."""
    if any(p.is_symlink() for p in (path.parent.parent, path.parent)):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            return None
        return fh.read(MAX_FILE_BYTES + 1)


def _write(path: Path, data: bytes) -> None:
    directory = path.parent
    if any(p.is_symlink() for p in (directory.parent, directory, path)):
        return
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _mark_used(path: Path) -> None:
    """Move the file's mtime to now, when it is older than a day (pruning reads it)."""
    with contextlib.suppress(OSError):
        if time.time() - os.stat(path, follow_symlinks=False).st_mtime > _MARK_USED_AFTER:
            os.utime(path, follow_symlinks=False)


def _prune(directory: Path, now: float) -> None:
    """Remove the kept projects (and left-over temporary files) not used for KEEP_DAYS days."""
    if directory.is_symlink():
        return
    cutoff = now - KEEP_DAYS * 86_400
    with os.scandir(directory) as entries:
        for entry in entries:
            if not (entry.name.endswith(".json") or entry.name.endswith(".tmp")):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    os.unlink(entry.path)


def _pydantic_version() -> str:
    """The installed pydantic's version file, found without importing pydantic (its checks
    decide what a spec loads to)."""
    try:
        spec = importlib.util.find_spec("pydantic")
    except (ImportError, ValueError):
        return ""
    if spec is None or spec.origin is None:
        return ""
    try:
        return (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return ""
