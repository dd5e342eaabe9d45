"""A requests file's lines taken plainly (`items._plain_request`) give exactly the items and the
errors that reading every line in full (`items._raw_item`) gives, on one core and on many
(`parallel`), for good lines of many shapes and every kind of bad or doubtful line."""

from __future__ import annotations

import json
import random
from datetime import date
from pathlib import Path

import pytest

from batchops.errors import SpecError
from batchops.pricing import PriceTable
from batchops.spec import items, parallel, rowmaker
from batchops.spec.items import iter_items
from batchops.spec.model import load_project

TODAY = date(2026, 11, 21)
MODEL = "claude-haiku-4-5"


def request(custom_id: str, text: str = "hello", **params: object) -> str:
    body = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
    body.update(params)
    return json.dumps({"custom_id": custom_id, "params": body})


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def good_lines(rng: random.Random, count: int, prefix: str = "r") -> list[str]:
    """Requests of many shapes, none of them wrong."""
    texts = ["hi", "ünïcödé ☃ 😀", "line\nbreak", "colon: here", "tab\there", "\u2028 sep", ""]
    out = []
    for i in range(count):
        extra: dict[str, object] = {}
        if rng.random() < 0.3:
            extra["temperature"] = rng.choice([0.0, 0.7, 1, 0.0001, 0.5e-3, 2.5e-1])
        if rng.random() < 0.2:
            extra["system"] = [{"type": "text", "text": rng.choice(texts)}]
        if rng.random() < 0.2:
            extra["metadata"] = {"user_id": f"u{i}", "tags": ["a", {"b": [1, 2.5, None, True]}]}
        if rng.random() < 0.1:
            extra["stream"] = False  # allowed: only `true` is refused
        line = request(f"{prefix}-{i}", rng.choice(texts), **extra)
        if rng.random() < 0.2:  # other spellings of the same JSON
            line = json.dumps(json.loads(line), indent=None, separators=(",", ":"))
        if rng.random() < 0.1:
            line = "  " + line + "  "
        out.append(line)
    return out


DOUBTFUL = [
    "",
    "   ",
    request("tiny-1", temperature=1e-5),
    request("tiny-2", temperature=5e-7),
    request("tiny-3").replace('"max_tokens": 16', '"max_tokens": 16, "top_p": 0.00009'),
    request("tiny-4").replace('"max_tokens": 16', '"max_tokens": 16, "top_p": 3E-6'),
    request("not-tiny", text="version 2e-5 of the text, 0.00001 in words"),
    request("huge-int").replace(
        '"max_tokens": 16', '"max_tokens": 16, "seed": 123456789012345678901234'
    ),
    request("deep-61", metadata=nested(61)),
    request("deep-62", metadata=nested(62)),
    request("deep-63", metadata=nested(63)),
    request("deep-70", metadata=nested(70)),
    request("esc-colon").replace('"hello"', '"a\\u003ab"'),
    request("surrogate").replace('"hello"', '"\\ud800"'),
    request("stream-true", stream=True),
    request("speed", speed="fast"),
    request("max-zero", max_tokens=0),
    request("max-bool", max_tokens=True),
    request("max-huge", max_tokens=10**9),
    request("model-int", model=4),
    request("messages-str", messages="hi"),
    request("trailing-newline-id\n"),
    request(""),
    request("has space"),
    request("x" * 65),
    request("x" * 64),
    '{"custom_id": "dup-key", "custom_id": "dup-key-2", "params": {"model": "m", "max_tokens": 1, "messages": []}}',
    '{"custom_id": "dup-nested", "params": {"model": "m", "model": "n", "max_tokens": 1, "messages": []}}',
    '{"custom_id": "extra", "params": {"model": "m", "max_tokens": 1, "messages": []}, "x": 1}',
    '{"custom_id": "no-params"}',
    '{"params": {"model": "m", "max_tokens": 1, "messages": []}}',
    '{"custom_id": "params-list", "params": []}',
    '["not", "an", "object"]',
    "42",
    request("r-3"),  # a duplicate of a good line's custom_id
]


def write_job(root: Path, lines: list[str], betas: bool = False) -> object:
    (root / "jobs" / "data").mkdir(parents=True, exist_ok=True)
    (root / "jobs" / "data" / "req.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = 'version = 1\n[jobs.j]\nrequests = { path = "data/req.jsonl" }\n'
    if betas:
        spec += 'betas = ["b-2025-01-01", "a-2024-01-01"]\n'
    (root / "jobs" / "j.toml").write_text(spec)
    return load_project(root / "jobs", root).jobs[0]


def items_of(job: object, root: Path) -> tuple[list[object], tuple[str, ...] | None]:
    out: list[object] = []
    try:
        out.extend(iter_items(job, root))  # type: ignore[arg-type]
    except SpecError as exc:
        return out, tuple(exc.problems)
    return out, None


def rows_of(job: object, root: Path, many: bool) -> tuple[list[tuple], tuple[str, ...] | None]:
    out: list[tuple] = []
    prices = PriceTable.load()
    try:
        if many:
            made = parallel.desired_rows(job, root, prices, TODAY, chunk_bytes=300, processes=2)  # type: ignore[arg-type]
        else:
            made = rowmaker.rows(job, root, prices, TODAY, {})  # type: ignore[arg-type]
        out.extend(made)
    except SpecError as exc:
        return out, tuple(exc.problems)
    return out, None


@pytest.fixture
def no_plain(monkeypatch: pytest.MonkeyPatch):
    """Every line read in full, as before the plain path."""

    def apply() -> None:
        monkeypatch.setattr(items, "_plain_request", lambda betas: lambda line: None)
        monkeypatch.setattr(parallel, "_plain_request", lambda betas: lambda line: None)

    return apply


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("betas", [False, True])
def test_good_lines_give_the_items_of_the_full_reading(
    tmp_path: Path, no_plain, seed: int, betas: bool
) -> None:
    lines = good_lines(random.Random(seed), 60)
    job = write_job(tmp_path, lines, betas)
    plain = items_of(job, tmp_path)
    assert plain[1] is None and len(plain[0]) == 60
    no_plain()
    assert items_of(job, tmp_path) == plain


@pytest.mark.parametrize("line", DOUBTFUL, ids=range(len(DOUBTFUL)))
def test_each_doubtful_line_is_read_as_in_full(tmp_path: Path, no_plain, line: str) -> None:
    lines = good_lines(random.Random(1), 5)
    job = write_job(tmp_path, [*lines[:3], line, *lines[3:]])
    plain = items_of(job, tmp_path)
    no_plain()
    assert items_of(job, tmp_path) == plain


def test_the_plain_path_takes_plain_lines_and_leaves_doubtful_ones() -> None:
    """What the equality above rests on: plain lines are taken (so they were compared), and
    the doubtful ones the plain path cannot vouch for are left to the full reading."""
    plain = items._plain_request(())
    lines = good_lines(random.Random(3), 40)
    taken = [line for line in lines if plain(line.encode())]
    # all but those naming a param the API may refuse (`stream`, here false): read in full
    assert taken == [line for line in lines if '"stream"' not in line]
    assert len(taken) > 30
    for line in taken:  # the params' size, from the canonical JSON made for the fingerprint
        _, params, _, body = plain(line.encode())
        assert body == items.request_size_of("", params) - items.REQUEST_FRAME
    for custom_id in ("tiny-1", "tiny-2", "tiny-3", "tiny-4", "not-tiny", "deep-63", "deep-70",
                      "esc-colon", "stream-true", "speed", "max-zero", "max-bool", "max-huge",
                      "model-int", "messages-str", "trailing-newline-id\n", "has space"):  # fmt: skip
        line = next(d for d in DOUBTFUL if f'"custom_id": {json.dumps(custom_id)},' in d)
        assert plain(line.encode()) is None, custom_id
    for line in DOUBTFUL[-9:-1]:
        assert plain(line.encode()) is None, line
    # brackets are counted, not nesting: at 64 in all the line is taken, past it read in full
    assert plain(request("deep-60", metadata=nested(60)).encode()) is not None
    assert plain(request("deep-61", metadata=nested(61)).encode()) is None


@pytest.mark.parametrize("many", [False, True])
def test_a_file_of_every_kind_of_line_reports_as_in_full(
    tmp_path: Path, no_plain, many: bool
) -> None:
    rng = random.Random(5)
    lines = good_lines(rng, 30) + DOUBTFUL
    rng.shuffle(lines)
    job = write_job(tmp_path, lines)
    got = rows_of(job, tmp_path, many)
    assert got[1] is not None and len(got[1]) > 10
    no_plain()
    assert rows_of(job, tmp_path, False) == got


@pytest.mark.parametrize("betas", [False, True])
def test_many_cores_give_the_rows_of_one(tmp_path: Path, no_plain, betas: bool) -> None:
    lines = good_lines(random.Random(7), 200) + [DOUBTFUL[2], DOUBTFUL[14].replace("true", "false")]
    job = write_job(tmp_path, lines, betas)
    many = rows_of(job, tmp_path, True)
    assert many[1] is None and len(many[0]) == 202
    assert rows_of(job, tmp_path, False) == many
    no_plain()
    assert rows_of(job, tmp_path, False) == many


def test_many_cores_find_a_custom_id_repeated_far_apart(tmp_path: Path) -> None:
    """Ranges are read apart: a custom_id given again in a later range is still an error, the
    one-core path's."""
    lines = good_lines(random.Random(9), 300)
    lines.append(request("r-2"))
    job = write_job(tmp_path, lines)
    many, one = rows_of(job, tmp_path, True), rows_of(job, tmp_path, False)
    assert many[1] == one[1] is not None
    assert any("duplicate custom_id (first at line 3)" in p for p in one[1])


def test_a_large_requests_file_is_planned_on_many_cores(tmp_path: Path) -> None:
    job = write_job(tmp_path, ["{}"])
    assert not parallel.wants_parallel(job, min_bytes=10)  # type: ignore[arg-type]
    (tmp_path / "jobs" / "data" / "req.jsonl").write_text(
        "\n".join(good_lines(random.Random(0), 50))
    )
    assert parallel.wants_parallel(job, min_bytes=10) == (parallel.workers() > 1)  # type: ignore[arg-type]


def errors_and_items(job: object, root: Path) -> tuple[tuple[str, ...] | None, list[object]]:
    """The SpecError's lines, or (when none) the items: a job with a duplicate is an error, so
    the items given before it are never used, and are not compared."""
    got, error = items_of(job, root)
    return error, [] if error else got


@pytest.mark.parametrize("seed", range(6))
def test_custom_ids_held_a_few_at_a_time_report_what_a_full_set_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """A requests file's custom_ids are held a window at a time, the rest logged as hashes:
    duplicates near and far apart, given three times, first on a bad line, before a line that
    ends the file's reading, and none at all, are reported as a full set of them reports."""
    rng = random.Random(seed)
    lines = good_lines(rng, 80)
    for _ in range(seed % 3 + (seed > 0)):  # seed 0: no duplicate at all
        at, again = rng.randrange(80), rng.randrange(80)
        lines.insert(again, lines[at])
    if seed == 3:
        lines.insert(5, request("r-70", max_tokens=0))  # a bad line first, then the good one
    if seed == 4:
        lines.append("{not json")  # ends the reading
    if seed == 5:
        lines[10] = lines[40] = lines[75] = request("thrice")
    job = write_job(tmp_path, lines)
    monkeypatch.setattr(items, "RECENT_CUSTOM_IDS", 10**9)
    full = errors_and_items(job, tmp_path)
    assert (full[0] is None) == (seed == 0)
    monkeypatch.setattr(items, "RECENT_CUSTOM_IDS", 7)
    assert errors_and_items(job, tmp_path) == full


def test_custom_ids_that_share_a_hash_are_not_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every custom_id given one hash: all are suspects, read again exactly, and none is a
    duplicate: the items are those of a full set."""
    from batchops.spec import keyhashes

    job = write_job(tmp_path, good_lines(random.Random(2), 50))
    full = errors_and_items(job, tmp_path)
    monkeypatch.setattr(keyhashes, "_hash", lambda key: 7)
    monkeypatch.setattr(items, "RECENT_CUSTOM_IDS", 5)
    assert errors_and_items(job, tmp_path) == full
    assert full[0] is None and len(full[1]) == 50


def test_a_duplicate_past_the_window_before_a_line_that_ends_the_reading_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A custom_id given again past the held window, then a line that is not JSON: both are
    told, as a full set of custom_ids tells them (the window's custom_ids are logged even when
    the reading ends on a bad line)."""
    lines = good_lines(random.Random(4), 30)
    lines += [request("r-2"), "{not json"]
    job = write_job(tmp_path, lines)
    monkeypatch.setattr(items, "RECENT_CUSTOM_IDS", 10**9)
    full = errors_and_items(job, tmp_path)
    assert full[0] is not None and any("duplicate custom_id" in p for p in full[0])
    monkeypatch.setattr(items, "RECENT_CUSTOM_IDS", 7)
    assert errors_and_items(job, tmp_path) == full


def test_a_duplicate_near_its_first_is_told_when_another_stands_far_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A custom_id given again among those held (told at once) and another given again far
    apart (which has the file read again holding only the suspects): both are told, as a full
    set of custom_ids tells them."""
    lines = good_lines(random.Random(6), 40)
    lines.insert(3, request("r-1"))  # near its first, at line 2: among the held custom_ids
    lines.append(request("r-20"))  # far from its first
    job = write_job(tmp_path, lines)
    monkeypatch.setattr(items, "RECENT_CUSTOM_IDS", 10**9)
    full = errors_and_items(job, tmp_path)
    assert full[0] is not None and len(full[0]) == 2
    monkeypatch.setattr(items, "RECENT_CUSTOM_IDS", 7)
    assert errors_and_items(job, tmp_path) == full
