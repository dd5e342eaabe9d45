"""A job whose rows attach files: each file's base64 is written and hashed once, not once an item
(`attachments.Written`), and every item's fingerprint and size are still those of its request
written whole (`items.fingerprint`, `items.request_size_of`), whatever the request holds: files
in any block of any message, text that imitates the marker, strings JSON escapes, betas."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchops.spec import attachments
from batchops.spec.items import (
    REQUEST_FRAME,
    _attached_encoder,
    _encoder,
    _RenderError,
    fingerprint,
    request_size,
    request_size_of,
)
from tests.test_attachments import items, pdf, write_job

# a few large strings the requests share, as rows naming the same files do
FILES = [
    base64.b64encode(os.urandom(attachments.LARGE)).decode(),
    base64.b64encode(os.urandom(attachments.LARGE * 2 + 7)).decode(),
    'a "quoted" large string\n' * (attachments.LARGE // 20),  # escaped by JSON: written whole
]
MAX_SIZE = 32_000_000


def encoders(betas: list[str]):
    renderer = SimpleNamespace(exact=True, max_size=MAX_SIZE)
    plain = _encoder(True, betas, MAX_SIZE)
    return _attached_encoder(plain, renderer, betas)


texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\x00batchops-", "\x00", '"', "\\u0000batchops-0\\u0000"]),
)
file_block = st.builds(
    lambda kind, data, media: {
        "type": kind,
        "source": {"type": "base64", "media_type": media, "data": data},
    },  # fmt: skip
    st.sampled_from(["document", "image"]),
    st.one_of(st.sampled_from(FILES), texts),
    st.sampled_from(["application/pdf", "image/png"]),
)
text_block = st.builds(lambda t: {"type": "text", "text": t}, texts)
message = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["user", "assistant"]),
    st.one_of(texts, st.lists(st.one_of(file_block, text_block), max_size=4)),
)
params = st.builds(
    lambda messages, system, tokens: {
        "model": "claude-haiku-4-5",
        "max_tokens": tokens,
        "system": system,
        "messages": messages,
    },  # fmt: skip
    st.lists(message, min_size=1, max_size=3),
    texts,
    st.integers(1, 4096),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(params, min_size=1, max_size=6),
    st.lists(st.sampled_from(["files-api-2025-04-14", "pdfs-2024-09-25"]), unique=True),
)
def test_each_fingerprint_and_size_is_the_request_written_whole(
    requests: list[dict[str, Any]], betas: list[str]
) -> None:
    encode, size_of = encoders(betas)
    for request in requests * 2:  # the second time, from what was kept
        assert encode(request) == fingerprint(request, betas)
        size = size_of()
        if size is not None:
            assert size + len(b"x") + REQUEST_FRAME == request_size_of("x", request)


def test_a_request_over_the_size_budget_is_refused_as_ever() -> None:
    block = {"type": "document", "source": {"type": "base64", "data": FILES[1] * 100}}
    request = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [block, {"type": "text", "text": "Read."}]}],
    }
    renderer = SimpleNamespace(exact=True, max_size=1_000_000)
    plain = _encoder(True, (), 1_000_000)
    encode, _ = _attached_encoder(plain, renderer, ())
    with pytest.raises(_RenderError) as attached:
        encode(request)
    with pytest.raises(_RenderError) as whole:
        plain(request)
    assert attached.value.describe() == whole.value.describe()
    assert "over the size budget of 1,000,000 (render_max_size)" in whole.value.describe()


def test_rows_naming_one_file_get_the_fingerprints_and_sizes_of_their_whole_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job attaching one PDF named by every row and one written in the spec, and a row whose
    text holds what a marker looks like: every item as `fingerprint` and `request_size_of`
    make it from its params, and the file was written once."""
    monkeypatch.chdir(tmp_path)
    files = tmp_path / "jobs" / "files"
    files.mkdir(parents=True)
    (files / "big.pdf").write_bytes(pdf() + os.urandom(200_000))
    (files / "terms.pdf").write_bytes(pdf("terms") + os.urandom(100_000))
    rows = [{"id": f"r{i}", "name": f"row {i}", "file": "files/big.pdf"} for i in range(40)]
    rows.append({"id": "odd", "name": '\x00batchops-"\\u0000', "file": "files/big.pdf"})
    write_job(tmp_path, rows, "")
    spec = tmp_path / "jobs" / "pics.toml"
    spec.write_text(
        spec.read_text().replace(
            'attachments = ["{{ file }}"]', 'attachments = ["{{ file }}", "files/terms.pdf"]'
        )
    )
    written: list[Any] = []
    dumps = attachments.Written.hashed

    def counting(self, params, wrap, write):
        written.append(1)
        return dumps(self, params, wrap, write)

    monkeypatch.setattr(attachments.Written, "hashed", counting)
    made = items(tmp_path)
    assert len(made) == 41 and len(written) == 41
    for item in made:
        assert item.size is not None  # known from the fingerprint's writing
        assert item.fingerprint == fingerprint(item.params)
        assert request_size(item) == request_size_of(item.custom_id, item.params)
        data = [b["source"]["data"] for b in item.params["messages"][-1]["content"][:2]]
        assert [len(base64.b64decode(d)) for d in data] == [
            (files / "big.pdf").stat().st_size,
            (files / "terms.pdf").stat().st_size,
        ]
    assert json.dumps(made[-1].params).count("batchops-") == 1  # the row's own text
