"""Review of 574cf86/b39f50a: the export's lazy chunks of a job's source (`input_chunks`) give
what the renderer and the old whole read give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchops.spec.items import input_chunks, iter_inputs, iter_items
from tests.projects import apply, context, write_project
from tests.test_export_chunks import _lines_job
from tests.test_review3_export import STATES, _rows, parsed, status_counts


def test_a_data_file_holding_only_a_bom_has_no_input_rows(tmp_path: Path) -> None:
    """An empty data file saved "UTF-8 with BOM" (Notepad's way) is the three BOM bytes. The
    renderer drops the BOM and skips the then-empty line (`line.strip()`): no items. The old
    `iter_inputs` did the same; `input_chunks` tests blankness with `bytes.isspace`, which is
    False for b"", so it counts the empty line as a row and parsing it fails."""
    job = _lines_job(tmp_path, ["\ufeff"])
    assert list(iter_items(job, tmp_path)) == []
    assert [len(c) for c in input_chunks(job, tmp_path, 5)] == []
    assert list(iter_inputs(job, tmp_path)) == []


def test_an_item_waiting_for_a_moved_jobs_request_names_it_as_the_plan_does(
    tmp_path: Path, emulator: str, emulator_admin: Any
) -> None:
    """demo's batch is in flight; the specs rename demo to triage (`moved`, not yet applied) and
    add copy, rendering demo's very requests. The plan (and `status`) see demo's records under
    triage: copy's items are pending, "same request as triage r<i>". The export renames only the
    exported job's own records (`_Recorded.sending`), so copy's rows name the old job, demo."""
    write_project(tmp_path, _rows(3))
    emulator_admin.set_config(processing_seconds=1000)
    apply(context(tmp_path, emulator))
    demo = (tmp_path / "jobs" / "demo.toml").read_text(encoding="utf-8")
    (tmp_path / "jobs" / "copy.toml").write_text(
        demo.replace("[jobs.demo]", "[jobs.copy]"), encoding="utf-8"
    )
    (tmp_path / "jobs" / "demo.toml").write_text(
        demo.replace("[jobs.demo]", "[jobs.triage]").replace(
            "version = 1\n", 'version = 1\nmoved = [{ from = "demo", to = "triage" }]\n'
        ),
        encoding="utf-8",
    )
    ctx = context(tmp_path, emulator)
    plan, _ = ctx.plan(refresh=False)
    copy = plan.job("copy")
    assert copy is not None and copy.counts["pending"] == 3
    planned = [(r.key, "pending", r.reason) for r in copy.reuses]
    assert planned[0][2] == "same request as triage r1: takes its result once harvested"
    assert [(r["key"], r["state"], r["detail"]) for r in parsed(ctx, "copy")] == planned


def _spec(root: Path, name: str, data: str, rows: list[dict[str, str]], extra: str = "") -> None:
    import json

    (root / "jobs" / "data").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / "data" / data).write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"
    )
    (root / "jobs" / f"{name}.toml").write_text(
        f'version = 1\n{extra}\n[jobs.{name}]\nmodel = "claude-haiku-4-5"\nmax_tokens = 16\n'
        f'prompt = "Classify: {{{{ text }}}}"\ninput = {{ path = "data/{data}", key = "id" }}\n',
        encoding="utf-8",
    )


def test_a_moved_jobs_request_in_flight_changes_the_state_the_export_gives(
    tmp_path: Path, emulator: str, emulator_admin: Any
) -> None:
    """One request in flight twice: for copy k1, and for aaa r1 (aaa sent it with reuse off).
    The specs rename aaa to zzz (`moved`, not yet applied) and add k2 to copy, the same request.
    The plan sees (copy, k1) and (zzz, r1): the first by (job, key) is copy's own k1, still in
    its specs, so k2 is sent (`todo`, as `status` says). The export sees (aaa, r1) first, another
    job's, and calls k2 `pending`."""
    emulator_admin.set_config(processing_seconds=1000)
    one = {"id": "k1", "text": "same"}
    _spec(tmp_path, "copy", "copy.jsonl", [one])
    assert apply(context(tmp_path, emulator)).submitted == 1
    _spec(tmp_path, "aaa", "aaa.jsonl", [{"id": "r1", "text": "same"}], "")
    (tmp_path / "jobs" / "aaa.toml").write_text(
        (tmp_path / "jobs" / "aaa.toml").read_text() + "reuse = false\n", encoding="utf-8"
    )
    assert apply(context(tmp_path, emulator)).submitted == 1
    (tmp_path / "jobs" / "aaa.toml").unlink()
    _spec(tmp_path, "zzz", "aaa.jsonl", [{"id": "r1", "text": "same"}],
          'moved = [{ from = "aaa", to = "zzz" }]')  # fmt: skip
    _spec(tmp_path, "copy", "copy.jsonl", [one, {"id": "k2", "text": "same"}])
    ctx = context(tmp_path, emulator)
    plan, _ = ctx.plan(refresh=False)
    copy = plan.job("copy")
    assert copy is not None and (copy.counts["todo"], copy.counts["pending"]) == (1, 1)
    assert status_counts(ctx, "copy") == {**dict.fromkeys(STATES, 0), "todo": 1, "pending": 1}
    assert [(r["key"], r["state"]) for r in parsed(ctx, "copy")] == [
        ("k1", "pending"),
        ("k2", "todo"),
    ]
