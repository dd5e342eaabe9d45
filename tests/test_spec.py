"""Spec loading: the file format, defaults, discovery, paths and every bad-input error line."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from batchops.errors import SpecError
from batchops.spec.model import Job, Project, load_project

REPO = Path(__file__).resolve().parent.parent

MINIMAL_JOB = """
[jobs.sentiment]
model = "claude-haiku-4-5"
max_tokens = 8
prompt = "{{ body }}"
input = { path = "data/t.jsonl", key = "id" }
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project root as the working directory, with a small data file."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "jobs/data/t.jsonl", '{"id": "a", "body": "hi"}\n')
    return tmp_path


def write(root: Path, relative: str, text: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(jobs: str | Path = "jobs") -> list[str]:
    with pytest.raises(SpecError) as info:
        load_project(Path(jobs))
    return info.value.problems


# --- the format ---------------------------------------------------------------------------------


def test_minimal_spec_loads_with_defaults_applied(project: Path) -> None:
    write(project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB)
    loaded = load_project(Path("jobs"))
    assert isinstance(loaded, Project)
    assert loaded.root == project.resolve()
    assert loaded.spec_files == (project.resolve() / "jobs/a.toml",)
    (job,) = loaded.jobs
    assert isinstance(job, Job)
    assert job.name == "sentiment"
    assert job.max_attempts == 3
    assert job.params == {}
    assert job.betas == []
    assert job.input is not None
    assert job.input.path == project.resolve() / "jobs/data/t.jsonl"
    assert job.input.format == "jsonl"
    assert job.source_file() == job.input.path
    assert job.spec_file == project.resolve() / "jobs/a.toml"


def test_defaults_are_inherited_and_job_values_win(project: Path) -> None:
    write(
        project,
        "jobs/a.toml",
        """
        version = 1
        [defaults]
        model = "claude-haiku-4-5"
        max_tokens = 16
        max_attempts = 5
        system = "Be brief."
        params = { temperature = 0.0, top_k = 5 }
        betas = ["b1"]
        prompt = "default {{ body }}"

        [jobs.one]
        input = { path = "data/t.jsonl", key = "id" }
        max_tokens = 8
        params = { temperature = 1.0 }

        [jobs.two]
        input = { path = "data/t.jsonl", key = "id" }
        messages = [{ role = "user", content = "{{ body }}" }]
        """,
    )
    one, two = load_project(Path("jobs")).jobs
    assert (one.model, one.max_tokens, one.max_attempts) == ("claude-haiku-4-5", 8, 5)
    assert one.params == {"temperature": 1.0, "top_k": 5}
    assert one.system == "Be brief."
    assert one.betas == ["b1"]
    assert one.prompt == "default {{ body }}"
    # A job's own `messages` replaces an inherited `prompt` (they are one choice).
    assert two.prompt is None
    assert two.messages == [{"role": "user", "content": "{{ body }}"}]


def test_json_spec_has_the_same_structure(project: Path) -> None:
    spec = {
        "version": 1,
        "jobs": {
            "sentiment": {
                "model": "claude-haiku-4-5",
                "max_tokens": 8,
                "prompt": "{{ body }}",
                "input": {"path": "data/t.jsonl", "key": "id"},
            }
        },
    }
    write(project, "jobs/a.json", json.dumps(spec))
    (job,) = load_project(Path("jobs")).jobs
    assert job.name == "sentiment"
    assert job.max_tokens == 8


def test_requests_job_ignores_template_defaults(project: Path) -> None:
    write(project, "jobs/data/r.jsonl", "")
    write(
        project,
        "jobs/a.toml",
        """
        version = 1
        [defaults]
        model = "claude-haiku-4-5"
        max_tokens = 8
        params = { temperature = 0.0 }
        max_attempts = 2
        budget_usd = 1.5

        [jobs.raw]
        requests = "data/r.jsonl"
        """,
    )
    (job,) = load_project(Path("jobs")).jobs
    assert job.requests is not None
    assert job.requests.path == project.resolve() / "jobs/data/r.jsonl"
    assert (job.model, job.max_tokens, job.params) == (None, None, {})
    assert (job.max_attempts, job.budget_usd) == (2, 1.5)


def test_output_path_and_format(project: Path) -> None:
    write(
        project,
        "jobs/a.toml",
        "version = 1\n" + MINIMAL_JOB + 'output = { path = "out/s.csv" }\n',
    )
    (job,) = load_project(Path("jobs")).jobs
    assert job.output is not None
    assert job.output.path == project.resolve() / "jobs/out/s.csv"
    assert job.output.format == "csv"


def test_discovery_is_recursive_sorted_and_skips_data_files(project: Path) -> None:
    write(project, "jobs/z/b.toml", "version = 1\n" + MINIMAL_JOB.replace("sentiment", "bee"))
    write(project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB.replace("data/", "z/data/"))
    # A JSON array of rows under jobs/ is data, not a spec, when a spec points at it.
    write(project, "jobs/z/data/t.json", '[{"id": "a", "body": "hi"}]')
    write(project, "jobs/z/data/t.jsonl", '{"id": "a", "body": "hi"}\n')
    write(
        project,
        "jobs/z/c.json",
        json.dumps(
            {
                "version": 1,
                "jobs": {
                    "cee": {
                        "model": "m",
                        "max_tokens": 1,
                        "prompt": "x",
                        "input": {"path": "data/t.json", "key": "id"},
                    }
                },
            }
        ),
    )
    loaded = load_project(Path("jobs"))
    root = project.resolve()
    assert loaded.spec_files == (
        root / "jobs/a.toml",
        root / "jobs/z/b.toml",
        root / "jobs/z/c.json",
    )
    assert [j.name for j in loaded.jobs] == ["bee", "cee", "sentiment"]


def test_single_spec_file_and_root_outside_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere, "data/t.jsonl", '{"id": "a", "body": "hi"}\n')
    spec = write(elsewhere, "a.toml", "version = 1\n" + MINIMAL_JOB)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    loaded = load_project(spec)
    assert loaded.root == elsewhere.resolve()
    assert [j.name for j in loaded.jobs] == ["sentiment"]


def test_example_jobs_load() -> None:
    loaded = load_project(REPO / "jobs", root=REPO)
    names = [j.name for j in loaded.jobs]
    assert names == ["answer-quality-judge", "product-descriptions", "ticket-sentiment"]
    kinds = {j.name: j.kind for j in loaded.jobs}
    assert kinds == {
        "answer-quality-judge": "requests",
        "product-descriptions": "input",
        "ticket-sentiment": "input",
    }
    assert {p.suffix for p in loaded.spec_files} == {".toml", ".json"}
    for job in loaded.jobs:
        assert job.description
        assert job.output is not None
        assert job.output.path == REPO / "jobs/out" / f"{job.name}.jsonl"


# --- bad input: one exact line per problem --------------------------------------------------------


def test_invalid_toml(project: Path) -> None:
    write(project, "jobs/a.toml", "version = 1\n[jobs.x\n")
    assert problems() == [
        "jobs/a.toml: invalid TOML: Expected ']' at the end of a table declaration "
        "(at line 2, column 8)"
    ]


def test_invalid_json(project: Path) -> None:
    write(project, "jobs/a.json", '{"version": 1,\n "jobs": {,}}')
    assert problems() == [
        "jobs/a.json: invalid JSON: Expecting property name enclosed in double quotes "
        "(at line 2, column 11)"
    ]


def test_json_duplicate_key_and_non_object(project: Path) -> None:
    write(project, "jobs/a.json", '{"version": 1, "version": 1}')
    write(project, "jobs/b.json", "[1, 2]")
    assert problems() == [
        'jobs/a.json: invalid JSON: duplicate key "version"',
        "jobs/b.json: a spec must be a JSON object, not an array",
    ]


def test_spec_file_not_utf8(project: Path) -> None:
    write(project, "jobs/a.toml", b"version = 1\n# caf\xe9\n")
    assert problems() == ["jobs/a.toml: not valid UTF-8 (byte 0xe9 at line 2, column 6)"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("verison = 1\n", "jobs/a.toml: verison: unknown field"),
        ("[defaults]\nmodle = 'x'\n", "jobs/a.toml: defaults.modle: unknown field"),
        (
            "[jobs.sentiment.output]\npath = 'o.jsonl'\nformt = 'csv'\n",
            "jobs/a.toml: jobs.sentiment.output.formt: unknown field",
        ),
    ],
)
def test_unknown_field_at_any_level(project: Path, extra: str, expected: str) -> None:
    write(project, "jobs/a.toml", "version = 1\n" + extra + MINIMAL_JOB)
    assert problems() == [expected]


def test_unknown_field_in_job_and_input(project: Path) -> None:
    spec = MINIMAL_JOB.replace('key = "id" }', 'key = "id", kye = "x" }') + "promt = 'x'\n"
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    assert problems() == [
        "jobs/a.toml: jobs.sentiment.input.kye: unknown field",
        "jobs/a.toml: jobs.sentiment.promt: unknown field",
    ]


def test_params_pass_through_unchecked(project: Path) -> None:
    spec = MINIMAL_JOB + 'params = { anything = { goes = [1, "x"] }, top_k = 3 }\n'
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    (job,) = load_project(Path("jobs")).jobs
    assert job.params == {"anything": {"goes": [1, "x"]}, "top_k": 3}


def test_missing_required_fields(project: Path) -> None:
    write(
        project,
        "jobs/a.toml",
        """
        version = 1
        [jobs.sentiment]
        prompt = "x"
        input = { path = "data/t.jsonl" }
        """,
    )
    assert problems() == ["jobs/a.toml: jobs.sentiment.input.key: required field missing"]


def test_missing_model_and_max_tokens(project: Path) -> None:
    spec = MINIMAL_JOB.replace('model = "claude-haiku-4-5"\n', "").replace("max_tokens = 8\n", "")
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    assert problems() == [
        "jobs/a.toml: jobs.sentiment: model is required (set it in the job or in [defaults])",
        "jobs/a.toml: jobs.sentiment: max_tokens is required (set it in the job or in [defaults])",
    ]


def test_missing_version(project: Path) -> None:
    write(project, "jobs/a.toml", MINIMAL_JOB)
    assert problems() == [
        "jobs/a.toml: version: required field missing (this batchops reads version = 1)"
    ]


@pytest.mark.parametrize("version", ["2", "0", '"1"', "1.0"])
def test_unsupported_version(project: Path, version: str) -> None:
    write(project, "jobs/a.toml", f"version = {version}\n" + MINIMAL_JOB)
    shown = json.dumps(json.loads(version))
    assert problems() == [
        f"jobs/a.toml: version: unsupported spec version {shown} (this batchops reads version = 1)"
    ]


def test_wrong_types(project: Path) -> None:
    spec = (
        MINIMAL_JOB.replace("max_tokens = 8", 'max_tokens = "lots"')
        + "budget_usd = true\nsystem = 5\nbetas = 'x'\n"
    )
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    assert problems() == [
        "jobs/a.toml: jobs.sentiment.max_tokens: Input should be a valid integer",
        "jobs/a.toml: jobs.sentiment.system: should be a string or a list of content blocks "
        "(tables)",
        "jobs/a.toml: jobs.sentiment.betas: Input should be a valid list",
        "jobs/a.toml: jobs.sentiment.budget_usd: Input should be a valid number",
    ]


def test_out_of_range_numbers(project: Path) -> None:
    spec = MINIMAL_JOB.replace("max_tokens = 8", "max_tokens = 0") + "max_attempts = 0\n"
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    assert problems() == [
        "jobs/a.toml: jobs.sentiment.max_tokens: Input should be greater than or equal to 1",
        "jobs/a.toml: jobs.sentiment.max_attempts: Input should be greater than or equal to 1",
    ]


@pytest.mark.parametrize("name", ["Sentiment", "-x", "a b", "x" * 65, "é"])
def test_bad_job_name(project: Path, name: str) -> None:
    write(project, "jobs/a.json", json.dumps({"version": 1, "jobs": {name: {}}}))
    assert problems() == [
        f"jobs/a.json: jobs.{name}: invalid job name {json.dumps(name, ensure_ascii=False)} "
        "(lowercase letters, "
        "digits, '-' and '_', starting with a letter or digit, at most 64 characters)"
    ]


def test_a_job_name_ending_in_a_newline_is_refused(project: Path) -> None:
    """The name rule's "$" matched before a last newline: `[jobs."abc\\n"]` was a job."""
    write(project, "jobs/a.json", json.dumps({"version": 1, "jobs": {"abc\n": {}}}))
    assert problems() == [
        'jobs/a.json: jobs.abc\\x0a: invalid job name "abc\\n" (lowercase letters, digits, '
        "'-' and '_', starting with a letter or digit, at most 64 characters)"
    ]


def test_duplicate_job_across_files_names_both(project: Path) -> None:
    write(project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB)
    write(project, "jobs/b/c.toml", "version = 1\n" + MINIMAL_JOB.replace("data/", "../data/"))
    assert problems() == [
        "jobs/b/c.toml: jobs.sentiment: job 'sentiment' is already defined in jobs/a.toml"
    ]


def test_no_item_source(project: Path) -> None:
    spec = MINIMAL_JOB.replace('input = { path = "data/t.jsonl", key = "id" }\n', "")
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    assert problems() == [
        "jobs/a.toml: jobs.sentiment: no item source: set one of input, items or requests"
    ]


def test_two_item_sources(project: Path) -> None:
    spec = MINIMAL_JOB + 'items = [{ key = "k", body = "b" }]\n'
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    assert problems() == [
        "jobs/a.toml: jobs.sentiment: more than one item source (input, items): set exactly one"
    ]


def test_prompt_and_messages_are_exclusive(project: Path) -> None:
    both = MINIMAL_JOB + 'messages = [{ role = "user", content = "x" }]\n'
    neither = MINIMAL_JOB.replace('prompt = "{{ body }}"\n', "").replace("sentiment", "other")
    write(project, "jobs/a.toml", "version = 1\n" + both + neither)
    assert problems() == [
        "jobs/a.toml: jobs.sentiment: set exactly one of prompt or messages",
        "jobs/a.toml: jobs.other: set exactly one of prompt or messages",
    ]


def test_requests_job_refuses_template_fields(project: Path) -> None:
    write(project, "jobs/data/r.jsonl", "")
    write(
        project,
        "jobs/a.toml",
        """
        version = 1
        [jobs.raw]
        requests = { path = "data/r.jsonl" }
        model = "claude-haiku-4-5"
        prompt = "x"
        """,
    )
    assert problems() == [
        "jobs/a.toml: jobs.raw.model: a requests job sends its requests as written; "
        "remove this field",
        "jobs/a.toml: jobs.raw.prompt: a requests job sends its requests as written; "
        "remove this field",
    ]


def test_stream_true_is_refused(project: Path) -> None:
    write(project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB + "params = { stream = true }\n")
    assert problems() == [
        "jobs/a.toml: jobs.sentiment.params.stream: true is not allowed in a Message Batch"
    ]


def test_stream_false_is_fine(project: Path) -> None:
    write(project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB + "params = { stream = false }\n")
    (job,) = load_project(Path("jobs")).jobs
    assert job.params == {"stream": False}


def test_other_params_the_batch_api_refuses(project: Path) -> None:
    params = (
        'params = { speed = "fast", store = true, previous_thread_event_id = "e", '
        'cache_hint = "x", context_hint = "y", research_preview_2026_02 = "active", '
        "max_tokens = 5, model = 'm' }\n"
    )
    write(project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB + params)
    where = "jobs/a.toml: jobs.sentiment.params"
    assert problems() == [
        f"{where}.model: set model as a job field, not in params",
        f"{where}.max_tokens: set max_tokens as a job field, not in params",
        f"{where}.speed: not allowed in a Message Batch",
        f"{where}.store: not allowed in a Message Batch",
        f"{where}.previous_thread_event_id: not allowed in a Message Batch",
        f"{where}.cache_hint: not allowed in a Message Batch",
        f"{where}.context_hint: not allowed in a Message Batch",
        f'{where}.research_preview_2026_02: "active" is not allowed in a Message Batch',
    ]


def test_refused_param_in_defaults_is_reported_once(project: Path) -> None:
    spec = "version = 1\n[defaults]\nparams = { stream = true }\n" + MINIMAL_JOB
    spec += MINIMAL_JOB.replace("sentiment", "other")
    write(project, "jobs/a.toml", spec)
    assert problems() == [
        "jobs/a.toml: defaults.params.stream: true is not allowed in a Message Batch"
    ]


def test_a_toml_date_or_time_where_json_is_sent_is_a_spec_error(project: Path) -> None:
    """Params, system blocks and messages are sent as JSON, which has no date or time: an
    unquoted TOML value there failed every command with an unexpected TypeError. It is one line
    naming the file and the place; in an item (a template's context) it stays a value."""
    spec = (
        "version = 1\n[defaults]\nsystem = [{ type = 'text', text = 'x', at = 07:32:00 }]\n"
        + MINIMAL_JOB
        + "params = { metadata = { user_id = 2024-05-01T10:00:00Z }, stop_sequences = ['a', 2024-05-01] }\n"
        + "[jobs.chat]\nmodel = 'claude-haiku-4-5'\nmax_tokens = 8\nsystem = 'plain'\n"
        + "messages = [{ role = 'user', content = '{{ when }}', sent = 1979-05-27T07:32:00 }]\n"
        + "items = [{ key = 'k', when = 1979-05-27 }]\n"
    )
    write(project, "jobs/a.toml", spec)
    fix = "is not a JSON value; write it as a quoted string"
    assert problems() == [
        f"jobs/a.toml: defaults.system.0.at: a TOML time {fix}",
        f"jobs/a.toml: jobs.sentiment.params.metadata.user_id: a TOML date-time {fix}",
        f"jobs/a.toml: jobs.sentiment.params.stop_sequences.1: a TOML date {fix}",
        f"jobs/a.toml: jobs.chat.messages.0.sent: a TOML date-time {fix}",
    ]


def test_path_escaping_root_by_dotdot(project: Path) -> None:
    write(project, "outside.jsonl", '{"id": "a"}\n')
    spec = MINIMAL_JOB.replace("data/t.jsonl", "../../outside.jsonl")
    write(project, "jobs/sub/a.toml", "version = 1\n" + spec)
    # ../../outside.jsonl from jobs/sub/ is <root>/outside.jsonl: inside. One more level is not.
    assert [j.name for j in load_project(Path("jobs")).jobs] == ["sentiment"]
    write(project, "jobs/sub/a.toml", "version = 1\n" + spec.replace("../../", "../../../"))
    assert problems() == [
        'jobs/sub/a.toml: jobs.sentiment.input.path: "../../../outside.jsonl" is outside the '
        "project root"
    ]


def test_path_escaping_root_by_absolute_path(project: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "t.jsonl"
    outside.write_text('{"id": "a"}\n')
    spec = MINIMAL_JOB.replace("data/t.jsonl", str(outside))
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    assert problems() == [
        f'jobs/a.toml: jobs.sentiment.input.path: "{outside}" is outside the project root'
    ]


def test_absolute_path_inside_root_is_fine(project: Path) -> None:
    inside = (project / "jobs/data/t.jsonl").resolve()
    write(
        project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB.replace("data/t.jsonl", str(inside))
    )
    (job,) = load_project(Path("jobs")).jobs
    assert job.input is not None and job.input.path == inside


def test_path_escaping_root_by_symlink(project: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside") / "secret.jsonl"
    outside.write_text('{"id": "a"}\n')
    os.symlink(outside, project / "jobs/data/link.jsonl")
    write(project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB.replace("t.jsonl", "link.jsonl"))
    assert problems() == [
        'jobs/a.toml: jobs.sentiment.input.path: "data/link.jsonl" is outside the project root '
        f"(a symlink to {outside.resolve()})"
    ]


def test_output_path_escaping_root(project: Path) -> None:
    spec = MINIMAL_JOB + 'output = { path = "../../out.jsonl" }\n'
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    assert problems() == [
        'jobs/a.toml: jobs.sentiment.output.path: "../../out.jsonl" is outside the project root'
    ]


def test_missing_data_file(project: Path) -> None:
    write(project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB.replace("t.jsonl", "nope.jsonl"))
    assert problems() == ['jobs/a.toml: jobs.sentiment.input.path: "data/nope.jsonl": no such file']


def test_unknown_data_format(project: Path) -> None:
    write(project, "jobs/data/t.txt", "")
    write(project, "jobs/a.toml", "version = 1\n" + MINIMAL_JOB.replace("t.jsonl", "t.txt"))
    assert problems() == [
        "jobs/a.toml: jobs.sentiment.input.format: cannot tell the format from the file name; "
        "set format"
    ]


def test_problems_are_collected_across_files(project: Path) -> None:
    write(project, "jobs/a.toml", "version = 1\n[jobs.x\n")
    write(project, "jobs/b.toml", "version = 2\n")
    write(project, "jobs/c.toml", "version = 1\n" + MINIMAL_JOB + "typo = 1\n")
    lines = problems()
    assert [line.split(":")[0] for line in lines] == ["jobs/a.toml", "jobs/b.toml", "jobs/c.toml"]


def test_empty_jobs_directory(project: Path) -> None:
    (project / "empty").mkdir()
    assert problems("empty") == ["empty: no .toml or .json spec files found"]


def test_missing_jobs_path(project: Path) -> None:
    assert problems("nowhere") == ["nowhere: no such file or directory"]


def test_output_clashing_with_another_output_or_an_input(project: Path) -> None:
    spec = MINIMAL_JOB + 'output = { path = "out/x.jsonl" }\n'
    spec += MINIMAL_JOB.replace("sentiment", "second") + 'output = { path = "out/x.jsonl" }\n'
    spec += MINIMAL_JOB.replace("sentiment", "third") + 'output = { path = "data/t.jsonl" }\n'
    write(project, "jobs/a.toml", "version = 1\n" + spec)
    assert problems() == [
        "jobs/a.toml: jobs.sentiment.output.path: jobs/out/x.jsonl is also the output of job second",
        "jobs/a.toml: jobs.third.output.path: jobs/data/t.jsonl is also the input of job second",
    ]
