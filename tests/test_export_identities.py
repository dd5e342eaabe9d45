"""What an export joins results to when the rows cache does not serve the job (a fresh checkout,
another batchops, a changed spec): every item made again, as a plan makes it, in memory that does
not grow with the item count, and exactly `iter_items`' items and errors (`rowmaker.identities`)."""

from __future__ import annotations

import json
import tracemalloc
from datetime import date
from pathlib import Path

import pytest

from batchops.pricing import PriceTable
from batchops.spec import files, inputs, rowmaker
from batchops.spec.items import input_of, iter_items
from batchops.spec.model import load_project
from tests.projects import rows_outcome

TODAY = date(2026, 12, 3)
PRICES = PriceTable.load()
SPEC = (
    'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
    'prompt = "Subject: {{ subject }}\\n\\n{{ body }}"\n'
    'input = { path = "data/rows.jsonl", key = "id" }\n'
)


def _job(root: Path, rows: list[dict]):
    (root / "jobs" / "data").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / "j.toml").write_text(SPEC, encoding="utf-8")
    with (root / "jobs" / "data" / "rows.jsonl").open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    return load_project(root / "jobs", root).jobs[0]


def _rows(n: int) -> list[dict]:
    return [{"id": f"row-{i}", "subject": f"Order {i}", "body": f"Late {i}."} for i in range(n)]


def _general(job, root):
    return rows_outcome(
        lambda: (
            (item.key, item.custom_id, item.fingerprint, input_of(item))
            for item in iter_items(job, root)
        )
    )


def _made(job, root):
    return rows_outcome(lambda: (i for made in rowmaker.identities(job, root) for i in made))


def _peak_while_exported(job, root) -> int:
    """The most memory Python held while an export's items were made (tracemalloc)."""
    tracemalloc.start()
    try:
        count = sum(1 for _ in inputs.export_items(job, root, PRICES, TODAY))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count > 0
    return peak


def test_an_export_without_the_rows_cache_holds_no_key_of_every_item(tmp_path, monkeypatch):
    """A million-item export on a fresh checkout held every key (179 MB at 1,000,000 items,
    62 MB with the rows cache): three times the items now takes no more memory."""
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    # the data file read 64 KiB at a time, not 4 MiB: the files here are smaller than that
    monkeypatch.setattr(files.bounded_line_blocks, "__defaults__", (None, 64 * 1024))
    small = _job(tmp_path / "small", _rows(20_000))
    large = _job(tmp_path / "large", _rows(60_000))
    _peak_while_exported(small, tmp_path / "small")  # warm: imports, compiled templates
    grown = _peak_while_exported(large, tmp_path / "large") - _peak_while_exported(
        small, tmp_path / "small"
    )
    # Every key held: 40,000 more of them (about 3.5 MB). Here: a few thousand at a time.
    assert grown < 1_500_000, grown


def test_the_items_made_again_are_the_items_of_iter_items(tmp_path):
    rows = _rows(30)
    rows[3]["body"] = 7  # not a string: the general path makes this one
    rows[5]["subject"] = "x" * 40
    rows.insert(9, {"subject": "no key"})  # a problem: reported alike
    job = _job(tmp_path, rows)
    made, general = _made(job, tmp_path), _general(job, tmp_path)
    assert made == general
    assert len(made[0]) == 30 and made[1] and "no key" not in str(made[0])


@pytest.mark.parametrize("apart", [1, rowmaker.BLOCK_ROWS + 5])
def test_a_key_given_again_far_apart_is_the_error_iter_items_raises(tmp_path, apart):
    rows = _rows(apart + 2)
    rows[apart] = {**rows[apart], "id": "row-0"}
    job = _job(tmp_path, rows)
    made, general = _made(job, tmp_path), _general(job, tmp_path)
    assert (
        made[1]
        == general[1]
        == [
            f"jobs/data/rows.jsonl: line {apart + 1}: job j: item row-0: duplicate key (first at "
            "line 1)"
        ]
    )
    # and an export's items end with that error (`export` writes a file atomically, so none)
    with pytest.raises(Exception, match="duplicate key"):
        list(inputs.export_items(job, tmp_path, PRICES, TODAY))


def test_an_inline_items_job_gives_iter_items_items(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "i.toml").write_text(
        'version = 1\n[jobs.i]\nmodel = "claude-haiku-4-5"\nmax_tokens = 8\n'
        'prompt = "{{ body }}"\n'
        'items = [{ key = "a", body = "one" }, { key = "b", body = "two" }]\n',
        encoding="utf-8",
    )
    (job,) = load_project(tmp_path / "jobs", tmp_path).jobs
    assert _made(job, tmp_path) == _general(job, tmp_path)
    assert len(_made(job, tmp_path)[0]) == 2


def test_an_export_of_a_job_with_a_key_given_again_far_apart_is_one_error_line(tmp_path):
    """From the command line, without the rows cache: exit 1, one `Error:` line naming the file
    and line, no traceback, and no output file."""
    import os
    import subprocess
    import sys

    rows = _rows(rowmaker.BLOCK_ROWS + 600)
    rows[-100] = {**rows[-100], "id": "row-0"}
    _job(tmp_path, rows)
    env = {**os.environ, "BATCHOPS_CACHE": "off", "BATCHOPS_STATE": str(tmp_path / "s.db")}
    done = subprocess.run(
        [sys.executable, "-m", "batchops", "results", "j", "-o", "out.jsonl"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = len(rows) - 100 + 1
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"Error: jobs/data/rows.jsonl: line {line}: job j: item row-0: duplicate key (first at "
        "line 1)"
    ]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "out.jsonl").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]
