"""The harvest given what the API does not send, and where it runs (found by a review of the
harvest, worker path and in-process path, both backends; each test failed before its fix):

1. The harvest worker was started as `python -m batchops.apply.harvest_worker`, and `-m` puts
   the current directory first on the worker's `sys.path`. `apply` runs in the project root (a
   repository whose files come from pull requests), so a file there named like a module the
   worker imports (`orjson.py`, `uuid.py`, `json/`...) was imported, and run, by the worker,
   with the environment (API key included) it inherited.
2. On SQLite, a result whose error message or stop_reason is a JSON object (a protocol slip)
   made the harvest raise `sqlite3.ProgrammingError` out of `apply`, every run; PostgreSQL
   stored it as its JSON text. Both store its JSON text now.
3. A result line of an odd shape (a `type` that is a list, a `message` or an `error` that is a
   string, a `usage` that is a list, a count that is no number or past 64 bits, a text that is
   not a string) escaped the harvest as a bare TypeError/AttributeError/OverflowError (a
   traceback, the whole apply stopped, every run) instead of being reported as a harvest
   problem, as a line without a result or of an unknown type is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from batchops.apply import harvest
from batchops.apply.evaluator import Evaluator
from batchops.state import open_writer
from tests.test_harvest_store import NOW, send
from tests.test_harvest_worker import Replayed

BATCH = "msgbatch_1"


def _succeeded(**fields: Any) -> dict:
    message = {"content": [{"type": "text", "text": "hi"}], "model": "claude-haiku-4-5",
               "stop_reason": "end_turn", "usage": {"input_tokens": 5, "output_tokens": 2}}  # fmt: skip
    return {"type": "succeeded", "message": message | fields}


def harvest_once(
    location: str, odd: dict, worker: str, monkeypatch: pytest.MonkeyPatch, n: int = 20
) -> tuple[Any, list[str], list[str], int, int]:
    """Send `n` items in one batch; harvest replayed results in which the 4th is `odd`. What
    `Evaluator.harvest` returned (or the exception it raised), the notes, the problems, the
    results stored and the items still in flight."""
    monkeypatch.setenv(harvest.WORKER_ENV, worker)
    writer = open_writer(location, "test")
    try:
        send(writer, BATCH, [f"k{i:03}" for i in range(n)])
        lines = [
            orjson.dumps({"custom_id": custom_id, "result": odd if i == 3 else _succeeded()})
            for i, custom_id in enumerate(writer.sent_attempts(BATCH))
        ]
        notes: list[str] = []
        ev = Evaluator(writer, Replayed(b"\n".join(lines) + b"\n"), lambda: NOW)  # type: ignore[arg-type]
        ev._note = notes.append  # type: ignore[method-assign]
        (record,) = writer.batches()
        try:
            outcome: Any = ev.harvest(record)
        except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
            outcome = exc
        stored = writer._one("select count(*) from results")  # type: ignore[attr-defined]
        inflight = sum(1 for r in writer.item_records() if r.inflight)
        return outcome, notes, list(ev.report.problems), stored, inflight
    finally:
        writer.close()


# -- 1. the worker imports (and runs) what the working directory holds


def test_the_harvest_worker_does_not_run_code_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"  # where `batchops apply` runs: a repository's root
    project.mkdir()
    ran = tmp_path / "ran"
    (project / "orjson.py").write_text(
        f"open({str(ran)!r}, 'w').write('imported from the working directory')\n"
        "raise ImportError('not the real orjson')\n"
    )
    monkeypatch.chdir(project)
    outcome, notes, problems, stored, inflight = harvest_once(
        str(tmp_path / "state.db"), _succeeded(), "1", monkeypatch
    )
    assert outcome is True and (stored, inflight, problems) == (20, 0, [])
    # Actual: the worker imported ./orjson.py (it ran, then the worker died of it, and the
    # harvest fell back to this process: "the harvest worker ended (exit code 1): ImportError").
    assert not ran.exists(), f"the worker ran {project / 'orjson.py'}; notes: {notes}"
    assert not any("harvest worker ended" in note for note in notes), notes


# -- 2. SQLite refuses what PostgreSQL stores


@pytest.mark.parametrize("worker", ["0", "1"])
@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(
            {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "api_error", "message": {"detail": "overloaded"}},
                },
            },  # fmt: skip
            id="error-message-an-object",
        ),
        pytest.param(_succeeded(stop_reason={"type": "end_turn"}), id="stop_reason-an-object"),
    ],
)
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_value_that_is_not_a_string_is_stored_on_both_backends(
    backend: str,
    odd: dict,
    worker: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL stores such a value as its JSON text (`postgres._storable`, and the docstring
    of test_harvest_store's NUL test: "A value that is not a string where the API sends one (a
    protocol slip) is stored"); SQLite raised `ProgrammingError: Error binding parameter ...:
    type 'dict' is not supported` out of `harvest`, on every apply, until the results expire."""
    location = (
        str(tmp_path / "state.db") if backend == "sqlite" else request.getfixturevalue("pg_dsn")
    )
    outcome, _, problems, stored, inflight = harvest_once(location, odd, worker, monkeypatch)
    assert outcome is True, f"harvest raised {outcome!r}"
    assert (stored, inflight, problems) == (20, 0, [])


# -- 3. an odd line is a crash, not a harvest problem


@pytest.mark.parametrize("worker", ["0", "1"])
@pytest.mark.parametrize(
    "odd",
    [
        pytest.param({"type": ["succeeded"]}, id="type-a-list"),
        pytest.param({"type": "succeeded", "message": "overloaded"}, id="message-a-string"),
        pytest.param({"type": "errored", "error": "overloaded"}, id="error-a-string"),
        pytest.param(_succeeded(usage=[5, 2]), id="usage-a-list"),
        pytest.param(_succeeded(usage={"input_tokens": 2**63}), id="a-count-past-64-bits"),
        pytest.param(_succeeded(usage={"input_tokens": "many"}), id="a-count-no-number"),
        pytest.param(
            _succeeded(content=[{"type": "text", "text": 3}]), id="a-text-that-is-a-number"
        ),
    ],
)
def test_a_result_line_of_an_odd_shape_is_a_harvest_problem_not_a_crash(
    odd: dict, worker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Expected: as for a line without a result or of an unknown type (`HarvestFailed`), the
    harvest is reported as a problem ("Nothing was stored for it; the next run tries again"),
    nothing is stored, and apply goes on with the other batches and jobs. Actual: a TypeError
    ("unhashable type: 'list'", from `kind not in RESULT_TYPES`) or an AttributeError
    ("'str' object has no attribute 'get'") escapes `Evaluator.harvest`, and so `apply`."""
    outcome, _, problems, stored, inflight = harvest_once(
        str(tmp_path / "state.db"), odd, worker, monkeypatch
    )
    assert outcome is False, f"harvest raised {outcome!r}"
    assert len(problems) == 1 and (stored, inflight) == (0, 20)


@pytest.mark.parametrize("worker", ["0", "1"])
def test_a_count_postgresql_cannot_store_is_a_harvest_problem(
    worker: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, _, problems, stored, inflight = harvest_once(
        pg_dsn, _succeeded(usage={"input_tokens": 2**63}), worker, monkeypatch
    )
    assert outcome is False and (stored, inflight) == (0, 20)
    assert problems == [
        f"harvest of batch {BATCH} (demo): a result holds a number past what the state stores"
        " (64 bits)"
    ]
