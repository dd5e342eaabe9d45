"""The project cache (batchops.spec.projectcache): a kept project is the project a fresh load
gives, and anything a load depends on makes it load in full again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import batchops
from batchops.errors import SpecError
from batchops.spec import projectcache, rawplain
from batchops.spec.model import load_project

REPO = Path(__file__).resolve().parent.parent

SPEC = """version = 1
[defaults]
model = "claude-haiku-4-5"
max_tokens = 8
budget_usd = 3
render_seconds = 1
output = { path = "../out/all.jsonl" }

[jobs.tickets]
system = [{ type = "text", text = "Be brief.", cache_control = { type = "ephemeral" } }]
prompt = "Say {{ word }}"
params = { temperature = 0.5, top_k = 3, stop_sequences = ["x"], metadata = { user_id = "u" } }
input = { path = "data/rows.jsonl", key = "id" }
output = { path = "../out/tickets.csv", columns = ["label"] }
attachments = ["{{ image }}"]

[jobs.inline]
messages = [{ role = "user", content = "{{ q }}" }]
items = [{ key = "a", q = "one", n = 1, f = 1.0, b = true }, { key = "b", q = "two" }]
betas = ["b1"]

[[moved]]
from = "old-inline"
to = "inline"
"""
JSON_SPEC = {
    "version": 1,
    "jobs": {"raw": {"requests": "data/requests.jsonl", "max_attempts": 5, "reuse": False}},
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.delenv("BATCHOPS_CACHE", raising=False)
    root = tmp_path / "p"
    (root / "jobs" / "data").mkdir(parents=True)
    (root / "jobs" / "a.toml").write_text(SPEC, encoding="utf-8")
    (root / "jobs" / "b.json").write_text(json.dumps(JSON_SPEC), encoding="utf-8")
    (root / "jobs" / "data" / "rows.jsonl").write_text('{"id": 1, "word": "hi"}\n')
    (root / "jobs" / "data" / "requests.jsonl").write_text("")
    # a JSON data file under jobs/: referenced, so not a spec
    (root / "jobs" / "data" / "more.json").write_text("[]")
    (root / "jobs" / "c.toml").write_text(
        'version = 1\n[jobs.arr]\nmodel = "m"\nmax_tokens = 1\nprompt = "x"\n'
        'input = { path = "data/more.json", key = "id" }\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def checks(monkeypatch):
    """How many spec files were checked (a cache hit checks none); each is checked first by
    `rawplain`, then by pydantic when it is not plain."""
    count = {"n": 0}
    real = rawplain.spec_of

    def counting(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(rawplain, "spec_of", counting)
    return count


def load(root: Path, protected=()):
    return load_project(Path("jobs"), protected=protected)


def fresh(root: Path, monkeypatch, protected=()):
    with monkeypatch.context() as m:
        m.setenv("BATCHOPS_CACHE", "off")
        return load(root, protected)


def kept_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "home-cache" / "batchops" / "projects").glob("*.json"))


def test_a_kept_project_equals_a_fresh_load(project, checks, monkeypatch, tmp_path):
    first = load(project)
    assert checks["n"] == 3 and len(kept_files(tmp_path)) == 1
    second = load(project)
    assert checks["n"] == 3  # served: no spec file checked again
    expected = fresh(project, monkeypatch)
    assert second == first == expected
    for got, want in zip(second.jobs, expected.jobs, strict=True):
        assert got.model_dump(mode="json") == want.model_dump(mode="json")
        for name in ("attachments", "output", "input", "requests", "spec_file", "budget_usd"):
            assert type(getattr(got, name)) is type(getattr(want, name)), name
        if got.output is not None:
            assert type(got.output.columns) is tuple
    assert second.spec_files == expected.spec_files
    assert [p.name for p in second.spec_files] == ["a.toml", "b.json", "c.toml"]
    assert second.moves == expected.moves
    inline = second.job("inline")
    assert inline.items == [
        {"key": "a", "q": "one", "n": 1, "f": 1.0, "b": True},
        {"key": "b", "q": "two"},
    ]
    assert [type(v) for v in inline.items[0].values()] == [str, str, int, float, bool]


def test_the_plan_memo_keys_are_the_same(project, monkeypatch):
    from batchops.pricing import PriceTable
    from batchops.spec.cache import definition_digest

    prices = PriceTable.load(None)
    load(project)
    served = load(project)
    expected = fresh(project, monkeypatch)
    assert [definition_digest(j, prices) for j in served.jobs] == [
        definition_digest(j, prices) for j in expected.jobs
    ]


def edit_spec(root: Path) -> None:
    path = root / "jobs" / "a.toml"
    text = path.read_text()
    path.write_text(text.replace("Say {{ word }}", "Ask {{ word }}"))  # same size


@pytest.mark.parametrize(
    "change",
    [
        "spec bytes",
        "spec added",
        "spec removed",
        "data file removed",
        "data file replaced by a folder",
        "input symlinked elsewhere",
        "version",
        "code",
        "pydantic",
    ],
)
def test_each_input_of_a_load_makes_it_load_again(project, checks, monkeypatch, change):
    load(project)
    assert checks["n"] == 3
    if change == "spec bytes":
        edit_spec(project)
    elif change == "spec added":
        (project / "jobs" / "d.toml").write_text(
            'version = 1\n[jobs.d]\nmodel = "m"\nmax_tokens = 1\nprompt = "x"\nitems = [{ key = "k" }]\n'
        )
    elif change == "spec removed":
        (project / "jobs" / "c.toml").unlink()
    elif change == "data file removed":
        (project / "jobs" / "data" / "requests.jsonl").unlink()
    elif change == "data file replaced by a folder":
        (project / "jobs" / "data" / "requests.jsonl").unlink()
        (project / "jobs" / "data" / "requests.jsonl").mkdir()
    elif change == "input symlinked elsewhere":
        rows = project / "jobs" / "data" / "rows.jsonl"
        (project / "jobs" / "data" / "rows2.jsonl").write_bytes(rows.read_bytes())
        rows.unlink()
        rows.symlink_to("rows2.jsonl")
    elif change == "version":
        monkeypatch.setattr(batchops, "__version__", "0.0.0-other")
    elif change == "code":
        package = project.parent / "pkg" / "batchops"
        for name in projectcache._CODE:
            (package / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(batchops.__file__).parent / name, package / name)
        monkeypatch.setattr(batchops, "__file__", str(package / "__init__.py"))
        load(project)
        assert checks["n"] == 3  # the same code elsewhere: served
        with (package / "spec" / "raw.py").open("a") as fh:
            fh.write("\n# changed\n")
    elif change == "pydantic":
        monkeypatch.setattr(projectcache, "_pydantic_version", lambda: "VERSION = '99'")
    before = checks["n"]
    try:
        got = load(project)
    except SpecError as e:
        with pytest.raises(SpecError) as expected:
            fresh(project, monkeypatch)
        assert e.problems == expected.value.problems
    else:
        assert got == fresh(project, monkeypatch)
        if change == "input symlinked elsewhere":
            assert got.job("tickets").input.path.name == "rows2.jsonl"
    assert checks["n"] > before, "loaded in full"


def test_protected_paths_and_outputs_are_checked_on_every_load(project, monkeypatch):
    load(project)
    # the output's folder is now a file: the kept project is not served, the error is the same
    (project / "out").write_text("")
    with pytest.raises(SpecError) as served:
        load(project)
    with pytest.raises(SpecError) as expected:
        fresh(project, monkeypatch)
    assert served.value.problems == expected.value.problems
    (project / "out").unlink()
    load(project)
    protected = [project / "out" / "tickets.csv"]
    with pytest.raises(SpecError) as served:
        load(project, protected)
    assert "is also a protected file" in served.value.problems[0]


def test_a_tampered_or_planted_file_is_refused(project, checks, monkeypatch, tmp_path):
    load(project)
    (kept,) = kept_files(tmp_path)
    text = kept.read_bytes()
    kept.write_bytes(text.replace(b"Say {{ word }}", b"Pwn {{ word }}"))
    assert load(project).job("tickets").prompt == "Say {{ word }}"
    assert checks["n"] == 6
    # a file written with another user's key (another cache folder, another key): refused
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-home"))
    planted = tmp_path / "other-home" / "batchops" / "projects" / kept.name
    planted.parent.mkdir(parents=True)
    planted.write_bytes(text)
    before = checks["n"]
    load(project)
    assert checks["n"] == before + 3
    assert planted.read_bytes() != text  # written again, with this folder's key


def test_a_symlinked_or_special_cache_file_is_not_read(project, checks, tmp_path):
    load(project)
    (kept,) = kept_files(tmp_path)
    real = tmp_path / "elsewhere.json"
    kept.rename(real)
    kept.symlink_to(real)
    load(project)
    assert checks["n"] == 6
    assert kept.is_symlink()  # not written through
    kept.unlink()
    os.mkfifo(kept)  # a FIFO would block a plain read
    load(project)
    assert checks["n"] == 9


def test_a_project_json_cannot_hold_is_not_kept(project, checks, tmp_path):
    path = project / "jobs" / "a.toml"
    # a date in an item (a template's context; where JSON is sent, it is a spec error)
    path.write_text(path.read_text().replace('q = "two"', "q = 1979-05-27"))
    first = load(project)
    assert kept_files(tmp_path) == []
    assert load(project) == first
    assert checks["n"] == 6


def test_a_failed_load_keeps_nothing(project, checks, tmp_path):
    (project / "jobs" / "c.toml").write_text('version = 1\n[jobs.arr]\nmodel = "m"\n')
    for _ in range(2):
        with pytest.raises(SpecError):
            load(project)
    assert kept_files(tmp_path) == []
    assert checks["n"] == 6


def test_the_cache_can_be_turned_off(project, checks, monkeypatch, tmp_path):
    monkeypatch.setenv("BATCHOPS_CACHE", "off")
    load(project)
    load(project)
    assert checks["n"] == 6 and kept_files(tmp_path) == []


def test_a_kept_project_loads_without_pydantic(tmp_path):
    shutil.copytree(REPO / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("out"))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from batchops.spec.model import load_project\n"
        "p = load_project(Path('jobs'))\n"
        "print(len(p.jobs), 'batchops.spec.rawplain' in sys.modules, 'pydantic' in sys.modules)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "home-cache")}
    env.pop("BATCHOPS_CACHE", None)
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.split()
        for _ in range(2)
    ]
    # the examples' spec files are plain: checked without pydantic, then kept
    assert runs == [["3", "True", "False"], ["3", "False", "False"]]
