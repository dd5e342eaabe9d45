"""Whatever a spec or data file holds, the answer is one error line naming file and place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchops.spec.model import load_project
from tests.hostile.helpers import item_problems, load_problems, one_line, spec, write

DEEP = 100_000


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def data_job(project: Path, data: str, content: str | bytes, **extra: str) -> None:
    write(project, f"jobs/data/{data}", content)
    spec(project, f'prompt = "{{{{ body }}}}"\ninput = {{ path = "data/{data}", key = "id" }}\n')


def test_json_array_nested_100000_deep(project: Path) -> None:
    data_job(project, "t.json", "[" * DEEP + "]" * DEEP)
    assert one_line(item_problems(project)) == (
        "jobs/data/t.json: job j: invalid JSON: nested too deeply"
    )


def test_jsonl_row_nested_100000_deep(project: Path) -> None:
    data_job(project, "t.jsonl", '{"id": "a", "body": ' + "[" * DEEP + "]" * DEEP + "}\n")
    assert one_line(item_problems(project)) == (
        "jobs/data/t.jsonl: line 1: job j: invalid JSON: nested too deeply"
    )


def test_jsonl_row_nested_300_deep(project: Path) -> None:
    # orjson reads it; written out again (a results export) it would fail: refused now.
    data_job(project, "t.jsonl", '{"id": "a", "body": ' + "[" * 300 + "]" * 300 + "}\n")
    assert one_line(item_problems(project)) == "jobs/data/t.jsonl: line 1: job j: nested too deeply"


def test_json_spec_nested_100000_deep(project: Path) -> None:
    write(project, "jobs/a.json", '{"version": 1, "x": ' + "[" * DEEP + "]" * DEEP + "}")
    assert one_line(load_problems(project)) == "jobs/a.json: invalid JSON: nested too deeply"


def test_toml_spec_nested_100000_deep(project: Path) -> None:
    write(project, "jobs/a.toml", "version = 1\nx = " + "[" * DEEP + "]" * DEEP + "\n")
    assert one_line(load_problems(project)) == "jobs/a.toml: invalid TOML: nested too deeply"


def test_spec_nested_past_the_depth_limit(project: Path) -> None:
    params = "{ a = " * 70 + "1" + " }" * 70
    spec(project, f'prompt = "hi"\nitems = [{{ key = "k" }}]\nparams = {{ x = {params} }}\n')
    line = one_line(load_problems(project))
    assert line.startswith("jobs/a.toml: jobs.j.params.x.a.a.")
    assert line.endswith(": nested more than 64 levels deep")


def test_5000_digit_integer_key_in_jsonl(project: Path) -> None:
    data_job(project, "t.jsonl", '{"id": ' + "9" * 5000 + ', "body": "x"}\n')
    assert one_line(item_problems(project)) == (
        "jobs/data/t.jsonl: line 1: job j: invalid JSON: a number with too many digits"
    )


def test_5000_digit_integer_in_a_json_spec(project: Path) -> None:
    write(project, "jobs/a.json", '{"version": ' + "1" * 5000 + "}")
    assert one_line(load_problems(project)) == (
        "jobs/a.json: invalid JSON: a number with too many digits"
    )


def test_5000_digit_integer_in_a_toml_spec(project: Path) -> None:
    write(project, "jobs/a.toml", "version = " + "1" * 5000 + "\n")
    line = one_line(load_problems(project))
    assert line.startswith("jobs/a.toml: invalid TOML: Exceeds the limit (4300 digits)")


def test_integer_key_beyond_64_bits(project: Path) -> None:
    data_job(project, "t.json", '[{"id": ' + "9" * 30 + ', "body": "x"}]')
    assert one_line(item_problems(project)) == (
        "jobs/data/t.json: row 1: job j: id: integer out of range (64 bits at most)"
    )


def test_lone_surrogate_key_in_jsonl(project: Path) -> None:
    data_job(project, "t.jsonl", '{"id": "\\ud800", "body": "x"}\n')
    assert one_line(item_problems(project)) == (
        "jobs/data/t.jsonl: line 1: job j: id: lone surrogate \\ud800 in a string (not UTF-8)"
    )


def test_lone_surrogate_value_in_jsonl(project: Path) -> None:
    data_job(project, "t.jsonl", '{"id": "a", "body": "\\udfff"}\n')
    assert one_line(item_problems(project)) == (
        "jobs/data/t.jsonl: line 1: job j: body: lone surrogate \\udfff in a string (not UTF-8)"
    )


def test_lone_surrogate_in_a_json_spec_key(project: Path) -> None:
    write(
        project,
        "jobs/a.json",
        '{"version": 1, "jobs": {"j": {"model": "m", "max_tokens": 1, "prompt": "x", '
        '"items": [{"key": "k", "\\ud800": 1}]}}}',
    )
    assert one_line(load_problems(project)) == (
        "jobs/a.json: jobs.j.items.0.\\ud800: lone surrogate \\ud800 in a key (not UTF-8)"
    )


def test_lone_surrogate_rendered_from_inline_items(project: Path) -> None:
    write(
        project,
        "jobs/a.json",
        json.dumps(
            {
                "version": 1,
                "jobs": {
                    "j": {
                        "model": "m",
                        "max_tokens": 1,
                        "prompt": "{{ key }}{{ '\\udfff' }}",
                        "items": [{"key": "k"}],
                    }
                },
            }
        ),
    )
    assert one_line(item_problems(project)) == (
        "jobs/a.json: jobs.j.items.0: job j: item k: the rendered request at "
        "messages.0.content: lone surrogate \\udfff in a string (not UTF-8)"
    )


def test_max_tokens_beyond_any_model(project: Path) -> None:
    write(
        project,
        "jobs/a.toml",
        'version = 1\n[jobs.j]\nmodel = "m"\nmax_tokens = 99999999999999999999999\n'
        'prompt = "x"\nitems = [{ key = "k" }]\n',
    )
    assert one_line(load_problems(project)) == (
        "jobs/a.toml: jobs.j.max_tokens: integer out of range (64 bits at most)"
    )
    write(
        project,
        "jobs/a.toml",
        'version = 1\n[jobs.j]\nmodel = "m"\nmax_tokens = 9999999999\nprompt = "x"\n'
        'items = [{ key = "k" }]\n',
    )
    assert one_line(load_problems(project)) == (
        "jobs/a.toml: jobs.j.max_tokens: Input should be less than or equal to 1000000"
    )


def test_max_tokens_beyond_any_model_in_raw_requests(project: Path) -> None:
    request = {
        "custom_id": "r1",
        "params": {"model": "m", "max_tokens": 99999999999, "messages": []},
    }
    write(project, "jobs/data/r.jsonl", json.dumps(request) + "\n")
    spec_text = 'version = 1\n[jobs.r]\nrequests = "data/r.jsonl"\n'
    write(project, "jobs/a.toml", spec_text)
    assert one_line(item_problems(project)) == (
        "jobs/data/r.jsonl: line 1: job r: item r1: params.max_tokens: at most 1,000,000"
    )


def test_nan_in_params(project: Path) -> None:
    spec(project, 'prompt = "x"\nitems = [{ key = "k" }]\nparams = { temperature = nan }\n')
    assert one_line(load_problems(project)) == (
        "jobs/a.toml: jobs.j.params.temperature: nan is not a JSON number"
    )


def test_duplicate_key_in_a_json_spec(project: Path) -> None:
    write(project, "jobs/a.json", '{"version": 1, "version": 1}')
    assert one_line(load_problems(project)) == (
        'jobs/a.json: invalid JSON: duplicate key "version"'
    )


def test_duplicate_key_in_a_jsonl_row(project: Path) -> None:
    data_job(project, "t.jsonl", '{"id": "a", "body": "x", "body": "y"}\n')
    assert one_line(item_problems(project)) == (
        'jobs/data/t.jsonl: line 1: job j: invalid JSON: duplicate key "body"'
    )


def test_duplicate_key_hidden_behind_an_escaped_colon(project: Path) -> None:
    data_job(project, "t.jsonl", '{"id": "a", "body": "\\u003a", "body": "y"}\n')
    assert one_line(item_problems(project)) == (
        'jobs/data/t.jsonl: line 1: job j: invalid JSON: duplicate key "body"'
    )


def test_colons_in_values_are_not_duplicates(project: Path) -> None:
    data_job(
        project, "t.jsonl", '{"id": "a:b", "body": "10:30 http://x \\u003a", "n": {"c:": 1}}\n'
    )
    project_ = load_project(Path("jobs"))
    from batchops.spec.items import iter_items

    (item,) = iter_items(project_.jobs[0], project)
    assert item.key == "a:b"


def test_duplicate_key_in_a_json_array_data_file(project: Path) -> None:
    data_job(project, "t.json", '[{"id": "a", "id": "b", "body": "x"}]')
    assert one_line(item_problems(project)) == (
        'jobs/data/t.json: job j: invalid JSON: duplicate key "id"'
    )


def test_data_file_error_names_every_job_reading_it(project: Path) -> None:
    write(project, "jobs/data/t.jsonl", "{oops\n")
    for name in ("one", "two"):
        write(
            project,
            f"jobs/{name}.toml",
            f'version = 1\n[jobs.{name}]\nmodel = "m"\nmax_tokens = 1\nprompt = "{{{{ body }}}}"\n'
            'input = { path = "data/t.jsonl", key = "id" }\n',
        )
    from datetime import date

    from batchops.errors import SpecError
    from batchops.pricing import PriceTable
    from batchops.spec import desired

    with pytest.raises(SpecError) as info:
        desired.collect(load_project(Path("jobs")), PriceTable.load(), date(2026, 1, 1))
    assert info.value.problems == [
        "jobs/data/t.jsonl: line 1: job one: invalid JSON: unexpected character, expected a string key (column 2)",
        "jobs/data/t.jsonl: line 1: job two: invalid JSON: unexpected character, expected a string key (column 2)",
    ]


def test_control_characters_in_a_key_are_shown_escaped(project: Path) -> None:
    data_job(project, "t.jsonl", '{"id": "\\u001b]0;pwned\\u0007\\r", "nobody": 1}\n')
    assert one_line(item_problems(project)) == (
        "jobs/data/t.jsonl: line 1: job j: item \\x1b]0;pwned\\x07\\x0d: template 'prompt': "
        "'body' is undefined"
    )
