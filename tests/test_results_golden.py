"""`batchops results` writes the same bytes whichever way it reads: a varied project (every item
state, every kind of answer, every input source) exported in every format with every option, on
SQLite and PostgreSQL, with and without the rows cache, compared byte for byte with
`data/results_golden.json`.

The golden file was written by the export as it was before it read state in chunks (one point
lookup per key, every item rendered): `python -m tests.test_results_golden` writes it again, which
is only right after a change meant to alter the output.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from batchops.commands import results as results_mod
from batchops.commands.context import Context, Settings
from batchops.commands.results import ExportOptions, export, export_options
from batchops.errors import SpecError
from batchops.spec import cache, inputs
from batchops.spec.items import Chunk, iter_items
from batchops.spec.model import load_project
from batchops.state.sqlite import SqliteWriter
from tests.statefill import NOW, copy_state

GOLDEN = Path(__file__).resolve().parent / "data" / "results_golden.json"
OLD_FP = "sha256:" + "1" * 64

SPEC = """version = 1

[defaults]
model = "claude-haiku-4-5"
max_tokens = 16
max_attempts = 2

[jobs.mix]
prompt = "Label: {{ text }}"
input = { path = "data/mix.jsonl", key = "id" }

[jobs.sheet]
prompt = "Label: {{ text }}"
input = { path = "data/sheet.csv", key = "id" }
output = { path = "out/sheet.csv", format = "csv", columns = ["label", "score"] }

[jobs.arr]
prompt = "Label: {{ text | upper }}"
input = { path = "data/arr.json", key = "n" }

[jobs.inline]
prompt = "Label: {{ text }}"
items = [
  { key = "i1", text = "one" },
  { key = "i2", text = "=2+2", extra = { deep = [1, 2] } },
  { key = "i3", text = "three" },
]

[jobs.raw]
requests = "data/raw.jsonl"
"""


def _message(content: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
    return json.dumps(
        {
            "id": "msg_x",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": content,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage or {"input_tokens": 10, "output_tokens": 2},
        },
        ensure_ascii=False,
    )


def _text(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}]


# Answers: (text column, stored message)
ANSWERS: dict[str, tuple[str | None, str | None]] = {
    "plain": ("positive", _message(_text("positive"))),
    "json": ('{"label": "pos", "score": 4}', _message(_text('{"label": "pos", "score": 4}'))),
    "fenced": (
        '```json\n{"label": "neg"}\n```',
        _message(_text('```json\n{"label": "neg", "score": 1.5}\n```')),
    ),
    "notjson": ("not json at all", _message(_text("not json at all"))),
    "array": ("[1, 2]", _message(_text("[1, 2]"))),
    "empty": ("", _message([])),
    "tool": (
        None,
        _message(
            [
                {"type": "text", "text": "calling"},
                {"type": "tool_use", "id": "t1", "name": "label", "input": {"label": "x"}},
                {"type": "server_tool_use", "id": "t2", "name": "web", "input": {"q": "y"}},
            ]
        ),
    ),
    "badtool": (
        None,
        _message([{"type": "tool_use", "id": "t1", "name": "label", "input": "oops"}]),
    ),
    "thinking": (
        "=SUM(A1:A2)",
        _message(
            [
                {"type": "thinking", "thinking": "hmm, a formula", "signature": "s"},
                {"type": "redacted_thinking", "data": "zz"},
                {"type": "thinking", "thinking": None},
                {"type": "text", "text": "=SUM(A1:A2)"},
            ],
            {
                "input_tokens": 5,
                "output_tokens": 7,
                "cache_creation_input_tokens": 3,
                "cache_read_input_tokens": 9,
            },
        ),
    ),
    "unicode": (
        'héllo ☃, "quoted"\nnext line',
        _message(_text('héllo ☃, "quoted"\nnext line 🎉'), {"input_tokens": 1}),
    ),
    "formula": ("+1", _message(_text("@cmd"), "not a dict")),  # type: ignore[arg-type]
    "scalar": (None, "[1, 2, 3]"),  # a stored message that is JSON but no object
    "nomessage": ("kept text", None),
}

# The state of each item: how it was recorded, with which answer where it has one.
SCENARIOS = [
    ("succeeded", "plain"),
    ("succeeded", "json"),
    ("succeeded", "fenced"),
    ("succeeded", "notjson"),
    ("succeeded", "array"),
    ("succeeded", "empty"),
    ("succeeded", "tool"),
    ("succeeded", "badtool"),
    ("succeeded", "thinking"),
    ("succeeded", "unicode"),
    ("succeeded", "formula"),
    ("succeeded", "scalar"),
    ("succeeded", "nomessage"),
    ("succeeded-no-result", None),  # outcome succeeded, no result row pointed at
    ("succeeded-other-fp", "plain"),  # the item's fingerprint is current, its result's is not
    ("succeeded-errored-result", None),  # pointing at a result of another type
    ("succeeded-forgotten", "json"),  # forgotten once, back in the spec
    ("changed", "plain"),
    ("pending", None),
    ("pending-changed", None),
    ("retry-api", None),
    ("failed-overloaded-used-up", None),
    ("failed-invalid", None),
    ("retry-expired", None),
    ("retry-canceled-by-us", None),
    ("failed-canceled-outside", None),
    ("todo-lost", None),
    ("todo-never-finished", None),
    ("todo-absent", None),
]


def _mix_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n, (scenario, answer) in enumerate(SCENARIOS):
        row: dict[str, Any] = {"id": f"m{n:02d}", "text": f"{scenario} {answer}"}
        if n % 3 == 0:
            row["extra"] = {"nested": [n, "=bad"], "none": None}
        if n % 4 == 1:
            row["score"] = n * 1.5
        if n % 5 == 2:
            row = {"flag": n % 2 == 0, **row, "late": "-minus"}
        rows.append(row)
    rows.append({"id": 1234, "text": "an integer key"})
    return rows


def write_project(root: Path) -> None:
    data = root / "jobs" / "data"
    data.mkdir(parents=True)
    (root / "jobs" / "spec.toml").write_text(SPEC, encoding="utf-8")
    with (data / "mix.jsonl").open("w", encoding="utf-8") as fh:
        for i, row in enumerate(_mix_rows()):
            fh.write(json.dumps(row, ensure_ascii=i % 2 == 0) + "\n")
            if i == 3:
                fh.write("\n")  # a blank line is no row
    (data / "sheet.csv").write_text(
        'id,text,note\ns1,first,"=1+1"\ns2,"second, with comma",\n\ns3,third,@x\ns4,"4\nlines",+\n',
        encoding="utf-8",
    )
    (data / "arr.json").write_text(
        json.dumps(
            [{"n": 1, "text": "a"}, {"n": 2, "text": "b", "more": [1]}, {"text": "c", "n": 3}]
        ),
        encoding="utf-8",
    )
    raw = [
        {"custom_id": "q1", "params": _raw_params("one")},
        {"params": _raw_params("two", temperature=0.5), "custom_id": "q2"},
        {"custom_id": "q3", "params": _raw_params("=three")},
    ]
    (data / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw), encoding="utf-8")


def _raw_params(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


class _Filler:
    """Rows written straight into a SQLite state, one item at a time."""

    def __init__(self, path: Path):
        self.store = SqliteWriter.open(path)
        self.db = self.store.db
        self.attempt_id = 0
        for batch in ("msgbatch_a", "msgbatch_live"):
            self.db["batches"].insert(
                {
                    "id": batch,
                    "job": "x",
                    "intent_id": f"intent_{batch}",
                    "request_count": 1,
                    "processing_status": "ended" if batch == "msgbatch_a" else "in_progress",
                    "created_at": "2026-03-01T00:00:00Z",
                }
            )

    def attempt(self, job: str, key: str, cid: str, fp: str, batch: str, outcome: str | None):
        self.attempt_id += 1
        self.db["attempts"].insert(
            {
                "id": self.attempt_id,
                "job": job,
                "key": key,
                "custom_id": cid,
                "fingerprint": fp,
                "number": 1,
                "intent_id": f"intent_{batch}",
                "batch_id": batch,
                "status": "done" if outcome else "sent",
                "outcome": outcome,
                "created_at": "2026-03-01T00:00:00Z",
            }
        )
        return self.attempt_id

    def result(self, job: str, key: str, cid: str, fp: str, kind: str, answer: str | None) -> int:
        text, message = ANSWERS[answer] if answer else (None, None)
        attempt = self.attempt(job, key, cid, fp, "msgbatch_a", kind)
        return (
            self.db["results"]
            .insert(
                {
                    "job": job,
                    "key": key,
                    "custom_id": cid,
                    "fingerprint": fp,
                    "batch_id": "msgbatch_a",
                    "attempt_id": attempt,
                    "type": kind,
                    "text": text if kind == "succeeded" else None,
                    "message": message if kind == "succeeded" else None,
                    "stop_reason": "end_turn" if kind == "succeeded" else None,
                    "error_type": None if kind == "succeeded" else "invalid_request_error",
                    "error_message": None if kind == "succeeded" else "bad",
                    "model": "claude-haiku-4-5" if kind == "succeeded" else None,
                    "input_tokens": 10 if kind == "succeeded" else None,
                    "output_tokens": 2 if kind == "succeeded" else None,
                    "received_at": "2026-03-02T00:00:00Z",
                }
            )
            .last_pk
        )

    def item(self, job: str, key: str, cid: str, fp: str, scenario: str, answer: str | None):
        fields: dict[str, Any] = {"attempts": 1}
        item_fp = fp
        if scenario == "todo-absent":
            return
        if scenario.startswith("succeeded"):
            result_fp = OLD_FP if scenario == "succeeded-other-fp" else fp
            kind = "errored" if scenario == "succeeded-errored-result" else "succeeded"
            fields["outcome"] = "succeeded"
            if scenario != "succeeded-no-result":
                fields["result_id"] = self.result(job, key, cid, result_fp, kind, answer)
            if scenario == "succeeded-forgotten":
                fields["forgotten_at"] = "2026-03-03T00:00:00Z"
        elif scenario == "changed":
            item_fp = OLD_FP
            fields["outcome"] = "succeeded"
            fields["result_id"] = self.result(job, key, cid, OLD_FP, "succeeded", answer)
        elif scenario.startswith("pending"):
            sent_fp = OLD_FP if scenario == "pending-changed" else fp
            fields["inflight_attempt"] = self.attempt(job, key, cid, sent_fp, "msgbatch_live", None)
        elif scenario in ("retry-api", "failed-overloaded-used-up", "failed-invalid"):
            error = {
                "retry-api": ("api_error", "Internal server error"),
                "failed-overloaded-used-up": ("overloaded_error", ""),
                "failed-invalid": ("invalid_request_error", "max_tokens: =too large"),
            }[scenario]
            fields |= {"outcome": "errored", "error_type": error[0], "error_message": error[1]}
            if scenario == "failed-overloaded-used-up":
                fields["attempts"] = 2
        elif scenario == "retry-expired":
            fields["outcome"] = "expired"
        elif scenario == "retry-canceled-by-us":
            fields |= {"outcome": "canceled", "canceled_by_us": 1}
        elif scenario == "failed-canceled-outside":
            fields["outcome"] = "canceled"
        elif scenario == "todo-lost":
            fields["outcome"] = "lost"
        self.db["items"].insert(
            {
                "job": job,
                "key": key,
                "custom_id": cid,
                "fingerprint": item_fp,
                "updated_at": "2026-03-02T00:00:00Z",
                **fields,
            }
        )


def fill_state(root: Path, location: Path | str) -> None:
    """Every scenario for the `mix` job; a few for the others; a job no spec has any more."""
    from batchops.state import is_postgres

    path = root / "state" / "filled.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    project = load_project(root / "jobs", root)
    f = _Filler(path)
    with f.store._transaction():
        for job in project.jobs:
            items = list(iter_items(job, project.root))
            for n, item in enumerate(items):
                if job.name == "mix":
                    scenario, answer = SCENARIOS[n] if n < len(SCENARIOS) else ("succeeded", "json")
                else:
                    scenario, answer = SCENARIOS[(n * 7) % len(SCENARIOS)]
                f.item(job.name, item.key, item.custom_id, item.fingerprint, scenario, answer)
        # Same keys in a job that is gone: never part of another job's export.
        f.item("gone", "m00", "gone-m00", OLD_FP, "succeeded", "plain")
    f.store.close()
    if not is_postgres(location):
        path.replace(location)
        return
    copy_state(path, location)


# Every job in every format; the mixed job with every option.
OPTION_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "failed": {"failed_only": True},
    "columns": {"columns": "label,score"},
    "no-input": {"input_columns": ""},
    "some-input": {"input_columns": "text,missing,extra"},
    "thinking": {"thinking": True},
    "everything": {"columns": "score", "input_columns": "id", "thinking": True},
    "raw-csv": {"raw_csv": True},
}


def cases() -> list[tuple[str, str, str]]:
    out = []
    for job in ("mix", "sheet", "arr", "inline", "raw"):
        for fmt in ("jsonl", "csv", "json"):
            for name in OPTION_SETS if job == "mix" else ("default", "failed", "raw-csv"):
                if name == "raw-csv" and fmt != "csv":
                    continue
                out.append((job, fmt, name))
    return out


def export_bytes(context: Context, job: str, fmt: str, option_set: str) -> str:
    chosen = dict(OPTION_SETS[option_set])
    failed_only = chosen.pop("failed_only", False)
    raw_csv = chosen.pop("raw_csv", False)
    options = export_options(
        context,
        job,
        chosen.get("columns"),
        chosen.get("input_columns"),
        thinking=chosen.get("thinking", False),
    )
    out = io.BytesIO()
    summary = export(
        context, job, fmt, out, failed_only=failed_only, raw_csv=raw_csv, options=options
    )
    return f"{summary.rows} rows, {summary.parse_errors} parse errors\n" + out.getvalue().decode()


def _context(root: Path, location: Path | str) -> Context:
    settings = Settings(jobs_path=root / "jobs", state_path=location, root=root)
    return Context(settings, clock=lambda: NOW)


@pytest.fixture
def filled(tmp_path: Path, state_location, monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    write_project(tmp_path)
    fill_state(tmp_path, state_location)
    return _context(tmp_path, state_location)


@pytest.mark.parametrize("rows_cache", ["off", "on"])
def test_every_export_is_byte_identical_to_the_golden_file(
    filled: Context, rows_cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    if rows_cache == "on":
        monkeypatch.setenv("BATCHOPS_CACHE", "on")
        monkeypatch.setattr(cache, "MIN_ROWS", 0)
        filled.desired()  # a plan keeps every job's rendered rows
        assert (filled.project().root / cache.CACHE_DIR / "rows" / "mix.jsonl").is_file()

        def no_render(*args: Any) -> None:
            raise AssertionError("rendered, though the rows cache serves every job")

        monkeypatch.setattr(inputs, "_identities", no_render)
    monkeypatch.setattr(results_mod, "CHUNK_KEYS", 4)  # many chunks, a ragged last one
    got = {"/".join(case): export_bytes(filled, *case) for case in cases()}
    assert got.keys() == golden.keys()
    for name, text in golden.items():
        assert got[name] == text, name


def test_cli_file_and_stream_match_the_library(
    filled: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from batchops.cli import cli

    root = filled.project().root
    monkeypatch.chdir(root)
    monkeypatch.setenv("BATCHOPS_STATE", str(filled.settings.state_path))
    (root / "out").mkdir()
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    for fmt in ("jsonl", "csv", "json"):
        body = golden[f"mix/{fmt}/everything"].split("\n", 1)[1]
        args = ["results", "mix", "--format", fmt, "--columns", "score", "--input-columns", "id"]
        args.append("--thinking")
        streamed = CliRunner().invoke(cli, args, obj={"clock": lambda: NOW})
        assert streamed.exit_code == 0, streamed.stderr
        assert streamed.stdout_bytes.decode() == body
        written = CliRunner().invoke(cli, [*args, "-o", f"out/mix.{fmt}"])
        assert written.exit_code == 0, written.stderr
        assert (root / "out" / f"mix.{fmt}").read_text(encoding="utf-8") == body


def rechunked(rows: list[Any], size: int) -> Any:
    """`input_chunks`' chunks of these (key, row) pairs: what a source holding them gives."""
    parts = [rows[at : at + size] for at in range(0, len(rows), size)]
    return (Chunk(len(part), lambda part=part: part) for part in parts)


def test_a_source_that_disagrees_with_its_cached_rows_is_an_error(
    filled: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHOPS_CACHE", "on")
    monkeypatch.setattr(cache, "MIN_ROWS", 0)
    filled.desired()
    real = inputs.input_chunks

    def one_row_short(job: Any, root: Path, size: int) -> Any:
        return rechunked(
            [row for chunk in real(job, root, size) for row in chunk.rows()][:-1], size
        )

    monkeypatch.setattr(inputs, "input_chunks", one_row_short)
    with pytest.raises(SpecError) as raised:
        export_bytes(filled, "mix", "jsonl", "default")
    assert raised.value.problems == [
        "jobs/data/mix.jsonl: job mix: changed while it was read; export again"
    ]


def test_a_source_rewritten_with_the_same_keys_while_exported_is_an_error(
    filled: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identities come from the rows cache, checked against the data file, and the input
    rows from reading the file after that: content saved in between with the same keys (found
    by a review of the caches) was echoed beside the answers to the old requests. The export
    now ends with the file as it was before the check, or with the error."""
    monkeypatch.setenv("BATCHOPS_CACHE", "on")
    monkeypatch.setattr(cache, "MIN_ROWS", 0)
    filled.desired()
    data = filled.project().root / "jobs" / "data" / "mix.jsonl"
    real = inputs.input_chunks

    def rewritten_after_the_first_chunk(job: Any, root: Path, size: int) -> Any:
        chunks = real(job, root, size)
        yield next(chunks)
        text = data.read_text(encoding="utf-8")
        assert "integer key" in text
        data.write_text(text.replace("integer key", "integer KEY"), encoding="utf-8")  # same size
        yield from chunks

    monkeypatch.setattr(inputs, "input_chunks", rewritten_after_the_first_chunk)
    with pytest.raises(SpecError) as raised:
        export_bytes(filled, "mix", "jsonl", "default")
    assert raised.value.problems == [
        "jobs/data/mix.jsonl: job mix: changed while it was read; export again"
    ]


def test_options_default_to_the_spec_columns(filled: Context) -> None:
    assert export_options(filled, "sheet") == ExportOptions(columns=("label", "score"))


def write_golden(root: Path) -> None:
    write_project(root)
    location = root / "state" / "batchops.db"
    fill_state(root, location)
    context = _context(root, location)
    out = {"/".join(case): export_bytes(context, *case) for case in cases()}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(out)} exports to {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    import os
    import tempfile

    os.environ["BATCHOPS_CACHE"] = "off"
    with tempfile.TemporaryDirectory() as tmp:
        write_golden(Path(tmp))
