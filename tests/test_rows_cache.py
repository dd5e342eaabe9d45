"""The rendered-rows cache (`batchops.spec.cache`): the same plan as a full render, and a new
render whenever anything the rows depend on changes."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

import batchops
from batchops.commands.context import Context, Settings
from batchops.plan.serialize import plan_to_dict
from batchops.spec import cache
from batchops.spec import desired as desired_mod

SPEC = """\
version = 1
[jobs.tickets]
model = "claude-haiku-4-5"
max_tokens = 8
system = "Reply with one word."
prompt = "Subject: {{ subject }}\\n\\n{{ body }}"
input = { path = "data/rows.jsonl", key = "id" }
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.delenv("BATCHOPS_CACHE", raising=False)
    monkeypatch.delenv("BATCHOPS_PRICES", raising=False)
    monkeypatch.setattr(cache, "MIN_ROWS", 0)  # these jobs are small: keep their rows anyway
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    (tmp_path / "jobs" / "tickets.toml").write_text(SPEC, encoding="utf-8")
    write_rows(tmp_path, 50)
    return tmp_path


@pytest.fixture
def renders(monkeypatch):
    """How many times a job was rendered in full (not served from the cache)."""
    count = {"n": 0}
    real = desired_mod._rows

    def counting(*args, **kwargs):
        count["n"] += 1
        yield from real(*args, **kwargs)

    monkeypatch.setattr(desired_mod, "_rows", counting)
    return count


def write_rows(root: Path, n: int, body: str = "late") -> None:
    with (root / "jobs" / "data" / "rows.jsonl").open("wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"id": f"r{i}", "subject": f"Order {i}", "body": body}) + b"\n")


def context(root: Path, prices: Path | None = None) -> Context:
    return Context(
        Settings(
            jobs_path=root / "jobs", state_path=root / "state" / "b.db", root=root,
            prices_file=prices,
        )
    )  # fmt: skip


def plan_shape(root: Path, prices: Path | None = None) -> dict:
    the_plan, desired = context(root, prices).plan(refresh=False)
    shape = plan_to_dict(the_plan)
    shape.pop("created_at")
    return {"plan": shape, "jobs": desired.jobs, "digest": desired.spec_digest}


def full_render(root: Path, monkeypatch, prices: Path | None = None) -> dict:
    with monkeypatch.context() as m:
        m.setenv("BATCHOPS_CACHE", "off")
        return plan_shape(root, prices)


def test_a_cached_plan_is_the_plan_of_a_full_render(project, renders, monkeypatch):
    first = plan_shape(project)
    assert renders["n"] == 1
    assert (project / ".batchops-cache" / "rows" / "tickets.jsonl").is_file()
    assert (project / ".batchops-cache" / ".gitignore").read_text().splitlines()[-1] == "*"
    second = plan_shape(project)
    assert renders["n"] == 1  # served from the cache
    assert second == first == full_render(project, monkeypatch)
    assert renders["n"] == 2


def test_a_changed_spec_renders_again(project, renders, monkeypatch):
    before = plan_shape(project)
    spec = project / "jobs" / "tickets.toml"
    spec.write_text(SPEC.replace("one word", "one word, please"), encoding="utf-8")
    after = plan_shape(project)
    assert renders["n"] == 2
    assert after != before
    assert after == full_render(project, monkeypatch)


def test_a_changed_data_file_renders_again_even_with_the_same_size_and_mtime(
    project, renders, monkeypatch
):
    data = project / "jobs" / "data" / "rows.jsonl"
    old = os.stat(data)
    os.utime(data, ns=(old.st_atime_ns, old.st_mtime_ns - 10**10))  # written well before
    before = plan_shape(project)
    stat = os.stat(data)
    write_rows(project, 50, body="lost")  # same size, other content
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = plan_shape(project)
    assert renders["n"] == 2
    assert after != before
    assert after == full_render(project, monkeypatch)


def test_a_touched_data_file_with_the_same_content_is_served_from_the_cache(project, renders):
    before = plan_shape(project)
    data = project / "jobs" / "data" / "rows.jsonl"
    data.write_bytes(data.read_bytes())  # new mtime (perhaps inode), same bytes
    assert plan_shape(project) == before
    assert renders["n"] == 1


def test_a_changed_price_table_renders_again(project, renders, monkeypatch):
    before = plan_shape(project)
    prices = project / "prices.toml"
    prices.write_text('[models."claude-haiku-4-5"]\ninput = 7.0\noutput = 9.0\n', encoding="utf-8")
    after = plan_shape(project, prices)
    assert renders["n"] == 2
    assert after["plan"]["summary"] != before["plan"]["summary"]
    assert after == full_render(project, monkeypatch, prices)


def test_another_batchops_version_renders_again(project, renders, monkeypatch):
    before = plan_shape(project)
    monkeypatch.setattr(batchops, "__version__", "99.0.0")
    assert plan_shape(project) == before
    assert renders["n"] == 2


def test_a_cache_file_not_written_with_this_users_key_is_refused(project, renders, monkeypatch):
    before = plan_shape(project)
    path = project / ".batchops-cache" / "rows" / "tickets.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    rows = orjson.loads(lines[1])
    rows[0][2] = "sha256:" + "0" * 64  # a forged fingerprint, with a hash made without the key
    lines[1] = orjson.dumps(rows) + b"\n"
    import hashlib

    mac = hashlib.blake2b(b"".join(lines[:-1]), digest_size=32).hexdigest()
    lines[-1] = b'{"mac":"' + mac.encode() + b'"}\n'
    path.write_bytes(b"".join(lines))
    assert plan_shape(project) == before
    assert renders["n"] == 2


def test_a_failed_render_writes_no_cache(project, renders):
    with (project / "jobs" / "data" / "rows.jsonl").open("ab") as fh:
        fh.write(b'{"id": "bad", "subject": "no body"}\n')
    with pytest.raises(batchops.errors.SpecError):
        context(project).desired()
    assert not (project / ".batchops-cache" / "rows" / "tickets.jsonl").exists()


def test_the_cache_can_be_turned_off(project, renders, monkeypatch):
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    plan_shape(project)
    plan_shape(project)
    assert renders["n"] == 2
    assert not cache.cache_dir(project).exists()


def test_a_planted_symlink_sends_no_write_out_of_the_project(project, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (project / ".batchops-cache").symlink_to(outside, target_is_directory=True)
    plan_shape(project)
    assert list(outside.iterdir()) == []


def test_a_small_job_keeps_no_file(project, renders, monkeypatch):
    monkeypatch.setattr(cache, "MIN_ROWS", 51)
    plan_shape(project)
    plan_shape(project)
    assert renders["n"] == 2
    assert not cache.cache_dir(project).exists()
