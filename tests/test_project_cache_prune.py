"""Kept projects not used for 30 days are removed from the user's cache folder
(`projectcache.KEEP_DAYS`), by a command that writes one; a hit marks its file used."""

from __future__ import annotations

import os
import time

import pytest

from batchops.spec import projectcache
from batchops.spec.model import load_project

DAY = 86_400
SPEC = 'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\nprompt = "hi"\nitems = [{ key = "a" }]\n'


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.delenv("BATCHOPS_CACHE", raising=False)
    return tmp_path / "home-cache" / "batchops" / "projects"


def project(tmp_path, name):
    root = tmp_path / name
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "a.toml").write_text(SPEC, encoding="utf-8")
    return root


def load(root):
    return load_project(root / "jobs", root)


def age(path, days):
    when = time.time() - days * DAY
    os.utime(path, (when, when))


def test_a_miss_removes_what_was_not_used_for_30_days(tmp_path, home):
    load(project(tmp_path, "one"))
    [kept] = home.iterdir()
    old, recent, other = home / f"{'0' * 32}.json", home / f"{'1' * 32}.json", home / "notes.txt"
    leftover = home / f".{'2' * 32}.json.123.tmp"
    for path in (old, recent, other, leftover):
        path.write_bytes(b"x")
    age(old, 31)
    age(leftover, 31)
    age(recent, 29)
    age(other, 400)
    load(project(tmp_path, "two"))  # a miss: writes its file, and prunes
    assert sorted(p.name for p in home.iterdir()) == sorted(
        [
            kept.name,
            recent.name,
            other.name,
            projectcache._file_of(tmp_path / "two", tmp_path / "two" / "jobs").name,
        ]
    )


def test_a_hit_marks_its_file_used_and_prunes_nothing(tmp_path, home):
    root = project(tmp_path, "one")
    load(root)
    [kept] = home.iterdir()
    old = home / f"{'0' * 32}.json"
    old.write_bytes(b"x")
    age(old, 31)
    age(kept, 40)
    assert load(root) is not None  # a hit
    assert time.time() - kept.stat().st_mtime < DAY  # used now
    assert old.exists()  # a hit does not scan the folder
    load(project(tmp_path, "two"))  # a miss prunes: the old file goes, the used one stays
    assert kept.exists() and not old.exists()


def test_a_hit_within_a_day_leaves_the_file_alone(tmp_path, home):
    root = project(tmp_path, "one")
    load(root)
    [kept] = home.iterdir()
    age(kept, 0.5)
    before = kept.stat().st_mtime_ns
    load(root)
    assert kept.stat().st_mtime_ns == before
