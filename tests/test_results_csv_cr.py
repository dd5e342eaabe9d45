"""A CSV export reads back as one record per item, whatever carriage returns its cells hold.

`_CsvLines.joined` sends a line holding a quote, a comma, a line feed or a carriage return to the
csv module, trusting it to quote "exactly those". With `lineterminator="\\n"`, CPython before
3.11.9 / 3.12.3 (gh-67044) quotes a field holding `\\n` but not one holding a bare `\\r`, so such a
cell was written as it is, and every CSV reader (Python's csv module, pandas, spreadsheets) takes
a bare CR as the end of a record: the item's row was read as two, its columns shifted. The fast
path (`_CsvLines.plain`) and the general one (`line(values(row))`) wrote the same bytes; both
were wrong (found by a review of the export's fast paths; this test failed on 3.11.7 before the
fix). A carriage return reaches a cell from an answer's text or from an input row (a key, a
field), both written by someone else.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from batchops.commands.context import Context, Settings
from batchops.commands.results import ExportOptions, export
from batchops.spec.items import iter_items
from batchops.spec.model import load_project
from tests.statefill import NOW
from tests.test_results_golden import _Filler

SPEC = """version = 1

[jobs.cr]
model = "claude-haiku-4-5"
max_tokens = 16
max_attempts = 2
prompt = "Label: {{ text }}"
input = { path = "data/cr.jsonl", key = "id" }
"""
ROWS = [
    {"id": "k1", "text": "first", "note": "old mac\rline break"},
    {"id": "k2", "text": "second", "note": "plain"},
]
ANSWER_TEXT = "yes\rno"  # a bare CR in the stored answer


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    data = tmp_path / "jobs" / "data"
    data.mkdir(parents=True)
    (tmp_path / "jobs" / "spec.toml").write_text(SPEC, encoding="utf-8")
    (data / "cr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    state = tmp_path / "state" / "batchops.db"
    state.parent.mkdir(parents=True)
    (job,) = load_project(tmp_path / "jobs", tmp_path).jobs
    f = _Filler(state)
    with f.store._transaction():
        for item in iter_items(job, tmp_path):
            f.item(job.name, item.key, item.custom_id, item.fingerprint, "succeeded", "plain")
        f.db.execute("update results set text = ? where key = 'k2'", [ANSWER_TEXT])
    f.store.close()
    settings = Settings(jobs_path=tmp_path / "jobs", state_path=state, root=tmp_path)
    return Context(settings, clock=lambda: NOW)


def _records(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


@pytest.mark.parametrize("to", ["stream", "file"])
def test_a_bare_carriage_return_in_a_csv_cell_keeps_its_row_whole(
    project: Context, tmp_path: Path, to: str
) -> None:
    if to == "stream":
        out = io.BytesIO()
        summary = export(project, "cr", "csv", out, options=ExportOptions())
        data = out.getvalue()
    else:
        path = tmp_path / "out" / "cr.csv"
        summary = export(project, "cr", "csv", path, create_dirs=True, options=ExportOptions())
        data = path.read_bytes()
    assert summary.rows == 2
    header, *records = _records(data)
    # One record per item, each as wide as the header, each cell as it was.
    assert [len(r) for r in records] == [len(header)] * 2, data
    by_key = {r[header.index("key")]: dict(zip(header, r, strict=True)) for r in records}
    assert by_key["k1"]["input.note"] == "old mac\rline break"
    assert by_key["k2"]["text"] == ANSWER_TEXT
