"""Projects: `batchops init`, `batchops schema`, and `batchops.toml` found from any subfolder."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.commands.init import HOOK_FIELDS, scaffold
from batchops.commands.project import read_settings
from batchops.errors import BatchopsError
from batchops.spec.schema import render_schema, shipped_schema, spec_json_schema
from tests.projects import rows, write_project

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


# ---------------------------------------------------------------- schema
def test_the_shipped_schema_is_the_generated_one() -> None:
    # After changing the spec models: python -c "from batchops.spec.schema import render_schema;
    # open('batchops/data/spec.schema.json', 'w').write(render_schema())"
    assert shipped_schema() == render_schema()


def test_schema_prints_the_shipped_file() -> None:
    result = run("schema")
    assert result.exit_code == 0
    assert result.output == shipped_schema()
    jsonschema.Draft202012Validator.check_schema(json.loads(result.output))


def spec_files() -> list[Path]:
    return sorted(
        p for p in (REPO / "jobs").glob("*") if p.suffix in (".toml", ".json") and p.is_file()
    )


def parse(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)


@pytest.mark.parametrize("path", spec_files(), ids=lambda p: p.name)
def test_every_example_spec_is_valid_under_the_schema(path: Path) -> None:
    jsonschema.validate(parse(path), spec_json_schema())


def test_the_init_example_is_valid_under_the_schema() -> None:
    jsonschema.validate(tomllib.loads(scaffold()["jobs/example.toml"]), spec_json_schema())


GOOD_JOB = {"model": "claude-haiku-4-5", "max_tokens": 8, "prompt": "x", "items": [{"key": "a"}]}


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"jobs": {}}, "'version' is a required property"),
        ({"version": 2}, "1 was expected"),
        ({"version": 1, "jobz": {}}, "Additional properties are not allowed"),
        ({"version": 1, "jobs": {"Bad Name": GOOD_JOB}}, "does not match"),
        ({"version": 1, "jobs": {"a": {**GOOD_JOB, "streem": True}}}, "Additional properties"),
        ({"version": 1, "jobs": {"a": {**GOOD_JOB, "max_tokens": 0}}}, "less than the minimum"),
        ({"version": 1, "jobs": {"a": {**GOOD_JOB, "max_tokens": "8"}}}, "is not of type"),
        (
            {"version": 1, "jobs": {"a": {**GOOD_JOB, "input": {"path": "x"}}}},
            "'key' is a required",
        ),
        ({"version": 1, "defaults": {"items": []}}, "Additional properties"),
    ],
)
def test_the_schema_rejects_bad_specs(spec: dict, why: str) -> None:
    with pytest.raises(jsonschema.ValidationError, match=re.escape(why)):
        jsonschema.validate(spec, spec_json_schema())


def test_specs_may_point_editors_at_the_schema(here: Path) -> None:
    jobs = here / "jobs"
    jobs.mkdir()
    job = {"model": "claude-haiku-4-5", "max_tokens": 8, "prompt": "x", "items": [{"key": "a"}]}
    spec = {"$schema": "../spec.schema.json", "version": 1, "jobs": {"a": job}}
    (jobs / "a.json").write_text(json.dumps(spec))
    (jobs / "b.toml").write_text(
        '#:schema ../spec.schema.json\nversion = 1\n[jobs.b]\nmodel = "claude-haiku-4-5"\n'
        'max_tokens = 8\nprompt = "x"\nitems = [{key = "a"}]\n'
    )
    result = run("validate")
    assert result.exit_code == 0, result.output
    assert result.output.endswith("Valid: 2 jobs, 2 items.\n")
    spec["$schema"] = 5
    (jobs / "a.json").write_text(json.dumps(spec))
    result = run("validate")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: jobs/a.json: $schema: Input should be a valid string\n",
    )


# ---------------------------------------------------------------- init
def test_init_scaffolds_a_project_that_validates_and_plans(here: Path) -> None:
    result = run("init")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:6] == [
        "Wrote batchops.toml",
        "Wrote jobs/example.toml",
        "Wrote jobs/data/reviews.jsonl",
        "Wrote spec.schema.json",
        "Wrote state/.gitignore",
        "Wrote .pre-commit-config.yaml",
    ]
    assert (here / "spec.schema.json").read_text() == shipped_schema()
    assert (here / "state/.gitignore").read_text().splitlines()[-2:] == ["*", "!.gitignore"]
    assert run("validate").output.endswith("Valid: 1 job, 3 items.\n")
    plan = run("plan", "--no-refresh")
    assert plan.exit_code == 0 and "Plan: 3 to submit." in plan.output
    assert not (here / "state" / "batchops.db").exists()


def test_init_overwrites_nothing(here: Path) -> None:
    (here / "jobs").mkdir()
    (here / "jobs" / "example.toml").write_text("mine")
    (here / "batchops.toml").write_text("mine")
    result = run("init")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: batchops.toml: already exists; init overwrites nothing\n"
        "Error: jobs/example.toml: already exists; init overwrites nothing\n"
    )
    assert sorted(str(p.relative_to(here)) for p in here.rglob("*")) == [
        "batchops.toml",
        "jobs",
        "jobs/example.toml",
    ]
    assert (here / "batchops.toml").read_text() == "mine"


def test_init_into_a_folder(here: Path) -> None:
    result = run("init", "new-project")
    assert result.exit_code == 0, result.output
    assert "Wrote new-project/batchops.toml" in result.output
    assert (here / "new-project" / "jobs" / "example.toml").is_file()


def hook_fields(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*-?\s*(id|name|entry|pass_filenames|files): (.+)$", text, re.M))


def test_the_pre_commit_hook_and_the_init_config_agree() -> None:
    shipped = hook_fields((REPO / ".pre-commit-hooks.yaml").read_text())
    assert shipped == HOOK_FIELDS
    assert hook_fields(scaffold()[".pre-commit-config.yaml"]) == HOOK_FIELDS
    assert re.search(r"^  language: python$", (REPO / ".pre-commit-hooks.yaml").read_text(), re.M)


# ---------------------------------------------------------------- batchops.toml
def test_commands_work_from_any_subfolder(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(here, rows(2))
    (here / "batchops.toml").write_text('jobs = "jobs"\n')
    (here / "jobs" / "data" / "deeper").mkdir()
    for folder in ("jobs", "jobs/data/deeper"):
        monkeypatch.chdir(here / folder)
        result = run("plan", "--no-refresh")
        assert result.exit_code == 0, result.output
        assert "Plan: 2 to submit." in result.output
        assert run("validate").output.endswith("Valid: 1 job, 2 items.\n")
    assert sorted(p.name for p in here.rglob("*") if p.is_dir()) == ["data", "deeper", "jobs"]


def test_settings_set_jobs_state_and_prices(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_project(here, rows(2))
    (here / "jobs").rename(here / "specs")
    (here / "prices.toml").write_text((REPO / "batchops/data/prices.toml").read_text())
    (here / "batchops.toml").write_text(
        'jobs = "specs"\nstate = "var/team.db"\nprices = "prices.toml"\n'
    )
    (here / "specs" / "sub").mkdir()
    monkeypatch.chdir(here / "specs" / "sub")
    result = run("plan", "--no-refresh", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["jobs"][0]["name"] == "demo"
    # an output onto the state named in batchops.toml is refused
    (here / "specs" / "demo.toml").write_text(
        (here / "specs" / "demo.toml").read_text() + 'output = { path = "../var/team.db" }\n'
    )
    refused = run("validate")
    assert refused.exit_code == 1
    assert refused.stderr == (
        "Error: specs/demo.toml: jobs.demo.output.path: var/team.db is also a protected file "
        "(var/team.db)\n"
    )
    # the command line and the environment win over batchops.toml
    elsewhere = run("--state", str(here / "other.db"), "validate")
    assert elsewhere.exit_code == 0, elsewhere.output
    by_env = run("validate", env={"BATCHOPS_STATE": str(here / "other.db")})
    assert by_env.exit_code == 0, by_env.output


def test_emulator_state_is_never_the_team_state(here: Path, monkeypatch) -> None:
    write_project(here, rows(1))
    (here / "batchops.toml").write_text('state = "var/team.db"\n')
    (here / "jobs" / "demo.toml").write_text(
        (here / "jobs" / "demo.toml").read_text() + 'output = { path = "../state/emulator.db" }\n'
    )
    monkeypatch.chdir(here / "jobs")
    assert run("validate").exit_code == 0  # not the state without --emulator
    result = run("--emulator", "validate")
    assert result.exit_code == 1
    assert "state/emulator.db is also a protected file" in result.stderr


def test_emulator_batches_file_and_prices_are_protected(here: Path) -> None:
    write_project(here, rows(1))
    spec = (here / "jobs" / "demo.toml").read_text()
    (here / "jobs" / "demo.toml").write_text(
        spec + 'output = { path = "../state/emulator-remote.db" }\n'
    )
    assert run("validate").exit_code == 0
    result = run("--emulator", "validate")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: jobs/demo.toml: jobs.demo.output.path: state/emulator-remote.db is also a "
        "protected file (state/emulator-remote.db)\n"
    )
    (here / "jobs" / "demo.toml").write_text(spec + 'output = { path = "../my-prices.toml" }\n')
    (here / "my-prices.toml").write_text((REPO / "batchops/data/prices.toml").read_text())
    result = run("--prices", "my-prices.toml", "validate")
    assert result.exit_code == 1
    assert "my-prices.toml is also a protected file" in result.stderr


def test_a_password_in_the_state_url_is_refused(here: Path) -> None:
    write_project(here, rows(1))
    (here / "batchops.toml").write_text('state = "postgresql://batch:s3cret@db.internal/ops"\n')
    result = run("plan", "--no-refresh")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "Error: batchops.toml: state: the URL holds a password, and this file is checked in; "
        "remove it and use PGPASSWORD, ~/.pgpass or a PostgreSQL service file\n"
    )
    assert "s3cret" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://batch:pw@db/ops",
        "postgres://:pw@db/ops",
        "postgresql://db/ops?password=pw",
        "postgresql://db/ops?sslmode=require&PASSWORD=pw",
    ],
)
def test_every_form_of_password_is_refused(tmp_path: Path, url: str) -> None:
    (tmp_path / "batchops.toml").write_text(f'state = "{url}"\n')
    with pytest.raises(BatchopsError, match="the URL holds a password"):
        read_settings(tmp_path / "batchops.toml")


def test_a_url_without_password_is_kept(tmp_path: Path) -> None:
    (tmp_path / "batchops.toml").write_text('state = "postgresql://batch@db/ops?sslmode=require"\n')
    assert read_settings(tmp_path / "batchops.toml").state == (
        "postgresql://batch@db/ops?sslmode=require"
    )


def test_bad_settings_are_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "batchops.toml").write_text('jobz = "jobs"\nstate = 3\n')
    with pytest.raises(BatchopsError) as caught:
        read_settings(tmp_path / "batchops.toml")
    shown = str(tmp_path / "batchops.toml")
    assert caught.value.problems == [
        f"{shown}: jobz: unknown setting (settings: jobs, state, prices)",
        f"{shown}: state: should be a non-empty string",
    ]
