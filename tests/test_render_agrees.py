"""Inputs where two paths that must agree did not: the planning fast path and the general one,
plan and validate, one process and the next (found by a review of the planning fast paths; each
test failed before its fix)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from batchops.pricing import PriceTable
from batchops.spec import rowmaker
from batchops.spec.items import iter_items
from batchops.spec.model import load_project
from tests.projects import rows_outcome, run_cli

TODAY = date(2026, 11, 21)
PRICES = PriceTable.load()


def _job(root: Path, prompt: str, data: str):
    (root / "jobs" / "data").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / "data" / "rows.jsonl").write_text(data, encoding="utf-8")
    (root / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.j]\nmodel = "claude-haiku-4-5"\nmax_tokens = 16\n'
        f"prompt = {json.dumps(prompt)}\n"
        'input = { path = "data/rows.jsonl", key = "id" }\n',
        encoding="utf-8",
    )
    return load_project(root / "jobs", root).jobs[0]


# A row holding, in a field no template reads, arrays nested deeper than orjson writes (254):
# orjson reads the line, and the line holds exactly one colon a key, so `rowmaker.plain_row`
# takes it without writing it again; `items._json_line` writes it again to count its colons,
# fails, and refuses the row ("nested too deeply").
DEEP = "[" * 300 + "]" * 300
DEEP_DATA = f'{{"id": "a", "body": "hi", "extra": {DEEP}}}\n{{"id": "b", "body": "yo"}}\n'


def test_a_row_nested_past_what_orjson_writes_is_told_alike_by_both_paths(tmp_path):
    job = _job(tmp_path, "{{ body }}", DEEP_DATA)
    fast = rows_outcome(lambda: rowmaker.rows(job, tmp_path, PRICES, TODAY, {}))
    general = rows_outcome(
        lambda: (rowmaker.item_row(job, i, PRICES, TODAY, {}) for i in iter_items(job, tmp_path))
    )
    # general: (rows of "b"), ["jobs/data/rows.jsonl: line 1: job j: nested too deeply"]
    # fast:    (rows of "a" and "b"), None
    assert fast == general


def test_plan_and_validate_agree_on_a_row_nested_past_what_orjson_writes(tmp_path):
    """`plan` (the fast path) plans the row that `validate` and a plain `apply` (the general
    path, `items_for`) refuse; `plan -o` then saves it and `apply PLANFILE` sends it."""
    _job(tmp_path, "{{ body }}", DEEP_DATA)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "BATCHOPS_CACHE": "off"}
    state = tmp_path / "state.db"
    validate = run_cli(tmp_path, None, "validate", env=env, state=state)
    plan = run_cli(tmp_path, None, "plan", "--no-refresh", env=env, state=state)
    # validate: exit 1, "Error: jobs/data/rows.jsonl: line 1: job j: nested too deeply"
    # plan:     exit 0, "Plan: 2 to submit."
    assert (plan.returncode, plan.stderr) == (validate.returncode, validate.stderr), plan.stdout


# A template name a row does not hold but Jinja's globals do (`range`), or an attribute that is
# a method (`body.upper`), printed a Python repr holding a memory address: the request, and so
# its fingerprint, was another in every process. Each plan showed the item `changed`, and each
# apply sent it again (and paid again). Such a template is now an error on every path.
UNSTABLE = [
    (
        "{{ body }} {{ range }}",
        "'range' is undefined (a template function has that name: give the item that field,"
        " or call the function)",
    ),
    (
        "{{ body.upper }}",
        "prints a function or method (builtin_function_or_method), whose text changes from run"
        " to run: call it, or print a value",
    ),
    ("{{ [body, dict] }}", "'dict' is undefined (a template function has that name"),
    ("{{ body ~ cycler(1) }}", "prints an object with no text of its own (Cycler)"),
    ("{{ body | default(joiner) }}", "'joiner' is undefined (a template function has that name"),
    ("{{ joiner() | string }}", "prints a function or method (Joiner)"),
    ("{{ '%s' % body.upper }}", "prints a function or method (builtin_function_or_method)"),
    ("{{ '{} {}'.format(body, body.strip) }}", "prints a function or method (builtin_"),
]


@pytest.mark.parametrize(("prompt", "message"), UNSTABLE)
def test_a_template_printing_a_function_is_an_error_on_every_path(tmp_path, prompt, message):
    job = _job(tmp_path, prompt, '{"id": "a", "body": "x"}\n')
    fast = rows_outcome(lambda: rowmaker.rows(job, tmp_path, PRICES, TODAY, {}))
    general = rows_outcome(
        lambda: (rowmaker.item_row(job, i, PRICES, TODAY, {}) for i in iter_items(job, tmp_path))
    )
    assert fast == general
    _, problems = general
    assert problems is not None and len(problems) == 1
    where = "jobs/data/rows.jsonl: line 1: job j: item a: template 'prompt': "
    assert problems[0].startswith(where + message), problems


def test_a_template_printing_a_field_named_like_a_function_renders_the_field(tmp_path):
    job = _job(tmp_path, "{{ body }} {{ range }}", '{"id": "a", "body": "x", "range": "1-5"}\n')
    (item,) = iter_items(job, tmp_path)
    assert item.params["messages"] == [{"role": "user", "content": "x 1-5"}]


def test_a_second_apply_of_an_unchanged_spec_sends_nothing(tmp_path, emulator):
    """DESIGN §6.2 end to end: every row renders the same request in every process (a row
    without the template's `range` field rendered another function address each time)."""
    data = '{"id": "a", "body": "x", "range": "1-5"}\n{"id": "b", "body": "y", "range": ""}\n'
    _job(tmp_path, "{{ body }} {{ range }}", data)
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "BATCHOPS_CACHE": "off"}
    state = tmp_path / "state.db"
    first = run_cli(tmp_path, emulator, "apply", "--yes", "--wait", "--timeout", "60",
                    env={**env, "PYTHONHASHSEED": "1"}, state=state)  # fmt: skip
    assert first.returncode == 0, first.stderr
    again = run_cli(tmp_path, emulator, "plan", "--detailed-exitcode",
                    env={**env, "PYTHONHASHSEED": "2"}, state=state)  # fmt: skip
    assert again.returncode == 0, again.stdout


def test_a_requests_file_custom_id_ending_in_a_newline_is_refused(tmp_path):
    """`CUSTOM_ID_RE` ends in `$`, which matches before a last newline: `_raw_item` takes the
    custom_id "abc\\n" (the fast `_plain_request` leaves it to it) as a key beside "abc", though
    a custom_id is 1-64 characters of [A-Za-z0-9_-] (DESIGN §2)."""
    from batchops.errors import SpecError

    params = '{"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}'
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    (tmp_path / "jobs" / "data" / "r.jsonl").write_text(
        f'{{"custom_id": "abc\\n", "params": {params}}}\n', encoding="utf-8"
    )
    (tmp_path / "jobs" / "j.toml").write_text(
        'version = 1\n[jobs.raw]\nrequests = { path = "data/r.jsonl" }\n', encoding="utf-8"
    )
    job = load_project(tmp_path / "jobs", tmp_path).jobs[0]
    with pytest.raises(SpecError, match="invalid custom_id"):
        list(iter_items(job, tmp_path))


def test_a_tool_name_or_an_emulated_custom_id_ending_in_a_newline_is_refused() -> None:
    """The same "$" in the rule for a tool's name and in the emulator's custom_id check."""
    from batchops.apirules import TOOL_NAME
    from batchops.emulator.app import CUSTOM_ID

    assert TOOL_NAME.match("lookup") and not TOOL_NAME.match("lookup\n")
    assert CUSTOM_ID.match("abc") and not CUSTOM_ID.match("abc\n")


def test_a_row_one_level_deeper_than_an_export_writes_is_one_error_line_everywhere(tmp_path):
    """A row of 253 levels (252 is the deepest an export writes, inside `[{"input": row}]`):
    `validate`, `plan` and `apply` end in the same one `Error:` line naming the file and line,
    exit 1, no traceback, and no state file is written."""
    deep = "[" * 252 + "1" + "]" * 252  # with the row's object: 253 levels
    _job(
        tmp_path,
        "{{ body }}",
        f'{{"id": "a", "body": "hi", "x": {deep}}}\n{{"id": "b", "body": "yo"}}\n',
    )
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "BATCHOPS_CACHE": "off"}
    state = tmp_path / "state.db"
    line = "Error: jobs/data/rows.jsonl: line 1: job j: nested too deeply\n"
    for args in (["validate"], ["plan", "--no-refresh"], ["apply", "--yes"]):
        done = run_cli(tmp_path, "http://127.0.0.1:9", *args, env=env, state=state)
        assert (done.returncode, done.stderr) == (1, line), args
    assert not state.exists()
