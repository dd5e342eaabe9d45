"""What the caches (rows cache, plan memo) serve is what a full render (`BATCHOPS_CACHE=off`)
gives, for definitions that JSON spells alike and for a data file saved during a render (found
by a review of the caches; each test failed before its fix).

The thresholds (MIN_ROWS, MIN_ITEMS) are lowered so that small jobs are kept; a job of 10,000
items behaves the same (checked by hand through the CLI).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchops.clock import utcnow
from batchops.commands.context import Context, Settings
from batchops.errors import SpecError
from batchops.plan import memo
from batchops.spec import cache
from batchops.spec import desired as desired_mod
from tests.projects import API_KEY, apply


@pytest.fixture
def caches_on(tmp_path, monkeypatch):
    """Every cache on, with this test's own key, for small jobs too."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    monkeypatch.delenv("BATCHOPS_CACHE", raising=False)
    monkeypatch.delenv("BATCHOPS_PRICES", raising=False)
    monkeypatch.setattr(cache, "MIN_ROWS", 0)
    monkeypatch.setattr(memo, "MIN_ITEMS", 0)


def context(root: Path, base_url: str | None = None) -> Context:
    return Context(
        Settings(
            jobs_path=root / "jobs",
            state_path=root / "state" / "b.db",
            root=root,
            base_url=base_url,
            api_key=API_KEY if base_url else None,
        )
    )


def identities(root: Path) -> list[tuple[str, str, str]]:
    """(key, custom_id, fingerprint) of every item, as the plan sees them (caches as they are)."""
    _, planner = context(root).plan(refresh=False)
    return [(i.key, i.custom_id, i.fingerprint) for j in planner.jobs for i in j.items]


def full_identities(root: Path, monkeypatch) -> list[tuple[str, str, str]]:
    with monkeypatch.context() as m:
        m.setenv("BATCHOPS_CACHE", "off")
        return identities(root)


# -- a data file written while its rows render -------------------------------------------------

DATA_SPEC = """\
version = 1
[jobs.tickets]
model = "claude-haiku-4-5"
max_tokens = 8
prompt = "Subject: {{ subject }}\\n\\n{{ body }}"
input = { path = "data/rows.jsonl", key = "id" }
"""


def write_rows(root: Path, body: str) -> None:
    with (root / "jobs" / "data" / "rows.jsonl").open("wb") as fh:
        for i in range(50):
            fh.write(orjson.dumps({"id": f"r{i}", "subject": f"Order {i}", "body": body}) + b"\n")


def test_rows_of_a_data_file_changed_while_they_rendered_are_not_served_for_its_new_content(
    tmp_path, caches_on, monkeypatch
):
    """The rows cache records the data file's stat and sha256 when it writes, after the render:
    a file changed during the render (a teammate's script, an editor's save) gets the old
    content's rows filed under the new content's identity, and every later plan is served them.
    (The plan memo guards this: it keeps nothing when the stat moved during the render.)"""
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    (tmp_path / "jobs" / "tickets.toml").write_text(DATA_SPEC, encoding="utf-8")
    write_rows(tmp_path, "late")
    real = desired_mod._rows
    calls = {"n": 0}

    def rewritten_while_rendering(*args, **kwargs):
        yield from real(*args, **kwargs)  # every row read from the old content...
        calls["n"] += 1
        if calls["n"] == 1:  # ...and the file saved anew before the render ended
            write_rows(tmp_path, "soon")  # same size, other content

    monkeypatch.setattr(desired_mod, "_rows", rewritten_while_rendering)
    identities(tmp_path)  # rendered from the old content, while the file changed
    full = full_identities(tmp_path, monkeypatch)
    assert calls["n"] == 2
    assert identities(tmp_path) == full  # rendered again: nothing was kept of the first
    assert calls["n"] == 3
    assert identities(tmp_path) == full  # and now served, from the rows that one kept
    assert calls["n"] == 3


# -- inline items that JSON spells alike ---------------------------------------------------------


def inline_spec(root: Path, prompt: str, item: str) -> None:
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    items = ",\n".join("  " + item.replace("KEY", f"k{i}") for i in range(20))
    (root / "jobs" / "a.toml").write_text(
        "version = 1\n[jobs.a]\n"
        'model = "claude-haiku-4-5"\nmax_tokens = 8\n'
        f"prompt = {prompt}\n"
        f"items = [\n{items}\n]\n",
        encoding="utf-8",
    )


def test_a_toml_datetime_in_place_of_the_same_string_renders_again(
    tmp_path, caches_on, monkeypatch
):
    """The job's definition digest is its JSON form: an offset datetime and the string spelling
    it are one digest, yet a template renders them differently ('1979-05-27 07:32:00+00:00' vs
    '1979-05-27T07:32:00Z'). Unquoting the value changes every request; the rows cache (and the
    memo, keyed by the same digest) keeps serving the quoted value's rows."""
    prompt = '"Meeting {{ key }} at {{ when }}"'
    inline_spec(tmp_path, prompt, '{ key = "KEY", when = "1979-05-27T07:32:00Z" }')
    before = identities(tmp_path)
    inline_spec(tmp_path, prompt, '{ key = "KEY", when = 1979-05-27T07:32:00Z }')
    full = full_identities(tmp_path, monkeypatch)
    assert full != before  # the requests did change
    assert identities(tmp_path) == full


def test_reordered_keys_of_an_inline_table_render_again(tmp_path, caches_on, monkeypatch):
    """The definition digest sorts keys, but a template iterating a table sees them in the
    order written: reordering them changes every request, not the digest."""
    prompt = '"{{ key }}: {% for k, v in meta.items() %}{{ k }}={{ v }}; {% endfor %}"'
    inline_spec(tmp_path, prompt, '{ key = "KEY", meta = { colour = "red", size = "L" } }')
    before = identities(tmp_path)
    inline_spec(tmp_path, prompt, '{ key = "KEY", meta = { size = "L", colour = "red" } }')
    full = full_identities(tmp_path, monkeypatch)
    assert full != before
    assert identities(tmp_path) == full


def test_the_memo_says_no_changes_where_a_full_plan_resends_every_item(
    tmp_path, emulator, caches_on, monkeypatch
):
    """What a user sees: every item succeeded; the spec's value is unquoted (a TOML datetime
    now), which changes every request. `plan` and `apply` answer "no changes" from the caches;
    with BATCHOPS_CACHE=off the plan submits every item as changed."""
    prompt = '"Meeting {{ key }} at {{ when }}"'
    inline_spec(tmp_path, prompt, '{ key = "KEY", when = "1979-05-27T07:32:00Z" }')
    ctx = context(tmp_path, emulator)
    assert apply(ctx, wait=True).submitted == 20
    inline_spec(tmp_path, prompt, '{ key = "KEY", when = 1979-05-27T07:32:00Z }')
    now = utcnow()
    with monkeypatch.context() as m:
        m.setenv("BATCHOPS_CACHE", "off")
        full, _ = Context(ctx.settings, clock=lambda: now).plan(refresh=False)
    assert full.jobs[0].counts["changed"] == 20
    served, _ = Context(ctx.settings, clock=lambda: now).plan(refresh=False)
    assert served.jobs[0].counts == full.jobs[0].counts
    assert served.changes == full.changes


def test_a_toml_datetime_in_params_is_a_spec_error_not_hidden_by_the_rows_cache(
    tmp_path, caches_on, monkeypatch
):
    """The same digest collision in `params`, where the unquoted value is no JSON value at all:
    a full render failed with an unexpected TypeError while the cached plan served the quoted
    value's rows. Both now refuse the spec, with one line naming the file and the place."""
    (tmp_path / "jobs" / "data").mkdir(parents=True)
    write_rows(tmp_path, "late")
    spec = tmp_path / "jobs" / "tickets.toml"
    quoted = DATA_SPEC + 'params = { metadata = { user_id = "2024-05-01T10:00:00Z" } }\n'
    spec.write_text(quoted, encoding="utf-8")
    identities(tmp_path)
    spec.write_text(quoted.replace('"2024-05-01T10:00:00Z"', "2024-05-01T10:00:00Z"))
    line = (
        "jobs/tickets.toml: jobs.tickets.params.metadata.user_id: a TOML date-time is not a"
        " JSON value; write it as a quoted string"
    )
    with pytest.raises(SpecError) as full:
        full_identities(tmp_path, monkeypatch)
    assert str(full.value) == line
    with pytest.raises(SpecError) as cached:
        identities(tmp_path)
    assert str(cached.value) == line
