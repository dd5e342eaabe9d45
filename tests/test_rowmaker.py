"""The fast rows (`spec.rowmaker`) are exactly the general path's rows, and fail the same way.

The general path is `iter_items` then pricing (`rowmaker.item_row`), as planning did before;
every row and every error line must be the same, whatever the data holds."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import textwrap
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batchops.pricing import PriceTable
from batchops.spec import files, rowmaker
from batchops.spec.items import TemplateRows, _Problems, input_of, iter_items
from batchops.spec.model import load_project
from tests.projects import rows_outcome

TODAY = date(2026, 11, 21)
PRICES = PriceTable.load()

HEAD = 'version = 1\n[defaults]\nmodel = "claude-haiku-4-5"\nmax_tokens = 16\n'

# Job shapes: the common one and its neighbours (each template place, cache marks before and
# after a template, `cache = "auto"`, betas, params, a small size budget, names used twice,
# `key`, a Jinja filter, an unpriced model, CSV and inline items).
JOBS = {
    "prompt": 'system = "Reply with one word."\nprompt = "Subject: {{ subject }}\\n\\n{{ body }}"',
    "bare": 'prompt = "{{ body }}"',
    "key": 'prompt = "{{ key }}: {{ body }} {{ subject }}"\nparams = { temperature = 0.5 }',
    "twice": 'prompt = "{{ body }}{{ body }} {{ n }}"\nbetas = ["b2", "b1"]',
    "system": 'system = "About {{ subject }}"\nprompt = "{{ body }}"',
    "blocks": textwrap.dedent(
        """\
        system = [{ type = "text", text = "Rubric.", cache_control = { type = "ephemeral" } }]
        messages = [
          { role = "user", content = [{ type = "text", text = "{{ subject }}" }] },
          { role = "assistant", content = "ok" },
          { role = "user", content = "{{ body }} {{ key }}" },
        ]"""
    ),
    "late-mark": textwrap.dedent(
        """\
        messages = [
          { role = "user", content = "{{ body }}" },
          { role = "assistant", content = "ok" },
          { role = "user", content = [
            { type = "text", text = "then", cache_control = { type = "ephemeral" } }] },
        ]"""
    ),
    "auto": (
        'system = "' + "Long shared rubric. " * 300 + '"\nprompt = "{{ body }}"\ncache = "auto"'
    ),
    "auto-system": 'system = "{{ subject }}"\nprompt = "{{ body }}"\ncache = "auto"',
    "small": 'prompt = "{{ subject }} {{ body }}"\nrender_max_size = 1000',
    "jinja": 'prompt = "{{ subject | upper }} {{ body }}"',
    "unpriced": 'model = "no-such-model"\nprompt = "{{ body }}"',
    "row": 'prompt = "{{ row }}"',
}

texts = st.text(
    st.sampled_from(list('ab :"\\/\x00\x1f\x7f\n\t\u2028é☃🙂{}')), max_size=12
) | st.text(st.characters(codec="utf-8"), max_size=12)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | texts
    | st.sampled_from(["a:b", "\\u003a", ""])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=4,
)
ids = st.one_of(
    st.sampled_from(["a", "b", "row-1", "k" * 40, "é/ключ", "a:b"]),
    texts,
    values,
)


@st.composite
def lines(draw) -> str:
    """One line of a jsonl file: mostly good rows, some of them broken in every way a file can
    be (a value of another type, a missing field, a key given twice, a lone surrogate...)."""
    row = {"id": draw(ids), "subject": draw(texts), "body": draw(texts)}
    for name in draw(st.lists(st.sampled_from(["id", "subject", "body", "n", "key"]), max_size=2)):
        if draw(st.booleans()):
            row[name] = draw(values)
        else:
            row.pop(name, None)
    kind = draw(st.sampled_from(["row"] * 8 + ["ascii", "dup", "surrogate", "blank", "other"]))
    if kind == "row":
        return json.dumps(row, ensure_ascii=False)
    if kind == "ascii":
        return json.dumps(row)
    if kind == "dup":  # a key given twice: orjson keeps the last, the strict parse refuses
        return json.dumps(row)[:-1] + (", " if row else "") + '"subject": "again"}'
    if kind == "surrogate":
        return json.dumps({**row, "body": "lone \ud800"})
    if kind == "blank":
        return draw(st.sampled_from(["", "   ", "\t"]))
    return draw(st.sampled_from(["[1, 2]", "3", '"text"', "{", "nul\x00", '{"id": "x",}']))


def _both(job, root):
    fast = rows_outcome(lambda: rowmaker.rows(job, root, PRICES, TODAY, {}))
    slow = rows_outcome(
        lambda: (rowmaker.item_row(job, i, PRICES, TODAY, {}) for i in iter_items(job, root))
    )
    return fast, slow


def _same_identities(job, root):
    """`rowmaker.identities` (an export's items when the rows cache misses) is `iter_items`'
    (key, custom_id, fingerprint, input row) of each item, errors included."""
    made = rows_outcome(lambda: (i for part in rowmaker.identities(job, root) for i in part))
    general = rows_outcome(
        lambda: ((i.key, i.custom_id, i.fingerprint, input_of(i)) for i in iter_items(job, root))
    )
    assert made == general


def _project(root: Path, shape: str, data_line: str, data: str, ext: str = "jsonl"):
    (root / "jobs" / "data").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / "data" / f"rows.{ext}").write_text(
        data, encoding="utf-8", errors="surrogatepass"
    )
    (root / "jobs" / "j.toml").write_text(
        f"{HEAD}[jobs.j]\n{JOBS[shape]}\n{data_line}\n", encoding="utf-8"
    )
    return load_project(root / "jobs", root).jobs[0]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(sorted(JOBS)), data=st.lists(lines(), max_size=8))
@example("prompt", ['{"id": "a", "subject": "s", "body": "b"}'] * 2)
@example("small", ['{"id": "a", "subject": "s", "body": "' + "x" * 1100 + '"}'])
@example("small", ['{"id": "a", "subject": "s", "body": "' + "x" * 990 + '"}'])
@example("key", ['{"id": 7, "subject": "s", "body": "b", "key": "not me"}'])
@example("key", ['{"id": "a", "subject": "s", "body": "b", "key": "not me"}'])
@example("twice", ['{"id": "a", "body": "b", "n": 1e-7}', '{"id": "b", "body": "c"}'])
@example("prompt", ['{"id": "a", "subject": "x:y", "body": "b"}', '{"id": "a", "id": "b"}'])
def test_jsonl_rows_are_the_general_rows(shape, data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        text = "".join(line + "\n" for line in data)
        job = _project(root, shape, 'input = { path = "data/rows.jsonl", key = "id" }', text)
        fast, slow = _both(job, root)
        assert fast == slow
        _same_identities(job, root)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(["prompt", "key", "twice", "small", "system"]),
    records=st.lists(
        st.lists(
            st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=8),
            min_size=3,
            max_size=4,
        ),
        max_size=6,
    ),
)
def test_csv_rows_are_the_general_rows(shape, records):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "subject", "body"])
    writer.writerows(records)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        line = 'input = { path = "data/rows.csv", key = "id" }'
        job = _project(root, shape, line, buffer.getvalue(), "csv")
        fast, slow = _both(job, root)
        assert fast == slow
        _same_identities(job, root)


def test_every_size_around_the_budget(tmp_path):
    """Requests and template outputs from under to over `render_max_size`, a byte at a time."""
    data = "".join(
        json.dumps({"id": f"r{n}-{s}", "subject": s, "body": "x" * n}) + "\n"
        for n in range(900, 1010)
        for s in ("", "é")
    )
    job = _project(tmp_path, "small", 'input = { path = "data/rows.jsonl", key = "id" }', data)
    fast, slow = _both(job, tmp_path)
    assert fast == slow
    assert 0 < len(fast[0]) < 220 and fast[1]


@pytest.mark.parametrize("shape", sorted(JOBS))
def test_inline_items_are_the_general_rows(tmp_path, shape):
    items = 'items = [{ key = "one", subject = "s", body = "first" }, { key = "two", body = "x" }]'
    job = _project(tmp_path, shape, items, "")
    fast, slow = _both(job, tmp_path)
    assert fast == slow
    _same_identities(job, tmp_path)


@pytest.mark.parametrize(
    ("shape", "fast"),
    [
        ("prompt", True),
        ("key", True),
        ("twice", True),
        ("blocks", True),  # the cache mark is before every template
        ("auto", True),  # the marked prefix (the system prompt) holds no template
        ("late-mark", False),  # a cache mark after a template: its prefix differs per item
        ("auto-system", False),  # `cache = "auto"` would mark a templated system prompt
        ("jinja", False),  # a filter: rendered by Jinja
        ("row", False),  # `{{ row }}` prints the row as JSON
    ],
)
def test_which_shapes_take_the_fast_path(tmp_path, shape, fast):
    job = _project(tmp_path, shape, 'input = { path = "data/rows.jsonl", key = "id" }', "")
    general = TemplateRows(job, tmp_path, "j.toml", _Problems())
    maker = rowmaker.RowMaker.compile(job, general.renderer, PRICES, TODAY)
    assert (maker is not None) == fast


def test_a_million_style_job_is_made_by_the_fast_path(tmp_path, monkeypatch):
    """Rows the fast path makes never reach the general one (which would make them slowly)."""
    data = "".join(
        json.dumps({"id": f"row-{i}", "subject": f"S {i}", "body": "b" * i}) + "\n"
        for i in range(50)
    )
    job = _project(tmp_path, "prompt", 'input = { path = "data/rows.jsonl", key = "id" }', data)
    fast, slow = _both(job, tmp_path)
    assert fast == slow and len(fast[0]) == 50
    monkeypatch.setattr(TemplateRows, "line", lambda *a: pytest.fail("general path used"))
    assert rows_outcome(lambda: rowmaker.rows(job, tmp_path, PRICES, TODAY, {})) == fast


def test_a_line_over_the_limit_ends_both_paths_alike(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_LINE_BYTES", 64)
    monkeypatch.setattr(files.bounded_lines, "__defaults__", (64,))
    data = '{"id": "a", "body": "b"}\n{"id": "a"}\n{"id": "c", "body": "' + "x" * 80 + '"}\n'
    job = _project(tmp_path, "bare", 'input = { path = "data/rows.jsonl", key = "id" }', data)
    fast, slow = _both(job, tmp_path)
    assert fast == slow
    assert fast[1] == [
        "jobs/data/rows.jsonl: line 2: job j: item a: duplicate key (first at line 1)",
        "jobs/data/rows.jsonl: line 3: job j: longer than the 0 MiB line limit",
    ]


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.sampled_from([b"\n", b"a", b"bb\n", b"x" * 9, b"\r\n", b"\xef\xbb\xbf", b"\n\n"]),
        max_size=30,
    ),
    limit=st.integers(min_value=1, max_value=12),
    block=st.integers(min_value=1, max_value=16),
)
def test_line_blocks_are_bounded_lines(chunks, limit, block):
    data = b"".join(chunks)

    def read(lines_of):
        out = []
        try:
            for number, line in lines_of(io.BytesIO(data)):
                out.append((number, line))
        except files.FileRefused as e:
            return out, e.args
        return out, None

    blocks = read(
        lambda f: (
            (first + i, line)
            for first, lines_ in files.bounded_line_blocks(f, limit, block)
            for i, line in enumerate(lines_)
        )
    )
    assert blocks == read(lambda f: files.bounded_lines(f, limit))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(["prompt", "key", "blocks", "jinja", "unpriced", "small"]),
    data=st.lists(lines(), max_size=12),
    chunk=st.integers(min_value=1, max_value=300),
    bom=st.booleans(),
)
@example("prompt", ['{"id": "a", "body": "b", "subject": "s"}'] * 3, 1, True)
@example(
    "prompt", ['{"id": "a", "body": "b"}', '{"id": "a", "body": "b", "subject": "s"}'], 1, False
)
@example("prompt", ['{"id": "a", "body": "b", "subject": "s"}', "{", '{"id": "b"}'], 40, False)
def test_many_cores_give_the_rows_of_one(shape, data, chunk, bom):
    from batchops.spec import parallel

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        text = ("\ufeff" if bom else "") + "".join(line + "\n" for line in data)
        job = _project(root, shape, 'input = { path = "data/rows.jsonl", key = "id" }', text)
        one = rows_outcome(lambda: rowmaker.rows(job, root, PRICES, TODAY, {}))
        many = rows_outcome(
            lambda: parallel.desired_rows(job, root, PRICES, TODAY, chunk_bytes=chunk, processes=2)
        )
        assert many == one


@pytest.mark.parametrize(
    "text",
    [
        '{"id": "a", "body": "b"}\n{"id": "b", "body": "c"}',  # no newline at the end
        '{"id": "a", "body": "b"}\n{"id": "b", "body": "' + "x" * 100 + '"}\n{"id": "c"}\n',
        '\ufeff{"id": "a", "body": "b"}\n\n  \n{"id": "a", "body": "c"}\n',
    ],
)
def test_many_cores_at_the_edges_of_a_file(tmp_path, monkeypatch, text):
    from batchops.spec import parallel

    monkeypatch.setattr(files, "MAX_LINE_BYTES", 64)  # the workers are forked: they see it too
    job = _project(tmp_path, "bare", 'input = { path = "data/rows.jsonl", key = "id" }', text)
    one = rows_outcome(lambda: rowmaker.rows(job, tmp_path, PRICES, TODAY, {}))
    for chunk in (1, 30, 1000):
        many = rows_outcome(
            lambda c=chunk: parallel.desired_rows(
                job, tmp_path, PRICES, TODAY, chunk_bytes=c, processes=2
            )
        )
        assert many == one
    assert one[0]
    if "x" * 100 in text:
        assert one[1] == ["jobs/data/rows.jsonl: line 2: job j: longer than the 0 MiB line limit"]
