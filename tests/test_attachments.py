"""Attachments: images and PDFs named by path become base64 content blocks of the request.

Round trips go plan → apply → results against the emulator; refusals (outside the root, a symlink
out, a folder, too large, not an image or PDF) are one error line naming file, job and item.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchops.cli import cli
from batchops.errors import SpecError
from batchops.spec import attachments
from batchops.spec.items import Item, iter_items
from batchops.spec.model import load_project
from tests.projects import API_KEY, apply, context


def png(width: int = 1, height: int = 1, shade: int = 0) -> bytes:
    """A valid greyscale PNG of `width` x `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = b"".join(b"\x00" + bytes([shade]) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def pdf(text: str = "Hello") -> bytes:
    """A valid one-page PDF (with a correct cross-reference table) showing `text`."""
    stream = f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def write_job(root: Path, rows: list[dict], extra: str = "") -> Path:
    """A project whose job `pics` attaches each row's `file` (relative to the spec)."""
    jobs = root / "jobs"
    (jobs / "data").mkdir(parents=True, exist_ok=True)
    (jobs / "data" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (jobs / "pics.toml").write_text(
        "version = 1\n\n[jobs.pics]\n"
        'model = "claude-haiku-4-5"\nmax_tokens = 16\n'
        'prompt = "Describe {{ name }}."\n'
        'attachments = ["{{ file }}"]\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n' + extra
    )
    return jobs


def items(root: Path) -> list[Item]:
    project = load_project(root / "jobs", root=root)
    return [i for job in project.jobs for i in iter_items(job, project.root)]


def problems(root: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        items(root)
    return info.value.problems


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs" / "files").mkdir(parents=True)
    (tmp_path / "jobs" / "files" / "dot.png").write_bytes(png())
    (tmp_path / "jobs" / "files" / "terms.pdf").write_bytes(pdf())
    return tmp_path


ROWS = [
    {"id": "p1", "name": "the dot", "file": "files/dot.png"},
    {"id": "d1", "name": "the terms", "file": "files/terms.pdf"},
    {"id": "t1", "name": "nothing", "file": ""},
]


def test_files_become_blocks_before_the_prompt(root: Path) -> None:
    write_job(root, ROWS)
    p1, d1, t1 = items(root)
    assert p1.params["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": base64.b64encode(png()).decode(),
                    },
                },
                {"type": "text", "text": "Describe the dot."},
            ],
        }
    ]
    document = d1.params["messages"][0]["content"][0]
    assert document["type"] == "document"
    assert document["source"]["media_type"] == "application/pdf"
    assert base64.b64decode(document["source"]["data"]) == pdf()
    # An empty path attaches nothing: the prompt is sent as it always was.
    assert t1.params["messages"] == [{"role": "user", "content": "Describe nothing."}]
    assert t1.row == ROWS[2]  # the row, not the file, is what results echo


def test_media_type_comes_from_the_bytes_not_the_name(root: Path) -> None:
    (root / "jobs" / "files" / "really-a-png.jpg").write_bytes(png())
    write_job(root, [{"id": "p1", "name": "x", "file": "files/really-a-png.jpg"}])
    (item,) = items(root)
    assert item.params["messages"][0]["content"][0]["source"]["media_type"] == "image/png"
    for head, kind in [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"<svg xmlns=", None),
    ]:
        assert attachments.media_type(head) == kind


def test_the_fingerprint_covers_the_file_bytes(root: Path) -> None:
    write_job(root, ROWS)
    before = {i.key: i.fingerprint for i in items(root)}
    (root / "jobs" / "files" / "dot.png").write_bytes(png(shade=255))
    after = {i.key: i.fingerprint for i in items(root)}
    assert before["p1"] != after["p1"]
    assert before["d1"] == after["d1"] and before["t1"] == after["t1"]


def test_a_file_written_in_the_spec_goes_to_every_item_and_messages_jobs_get_it_last(
    root: Path,
) -> None:
    jobs = root / "jobs"
    (jobs / "data").mkdir()
    (jobs / "data" / "rows.jsonl").write_text('{"id": "a", "q": "A?"}\n{"id": "b", "q": "B?"}\n')
    (jobs / "chat.toml").write_text(
        "version = 1\n\n[jobs.chat]\n"
        'model = "claude-haiku-4-5"\nmax_tokens = 16\n'
        'attachments = ["files/terms.pdf", "{{ \'\' }}"]\n'
        'input = { path = "data/rows.jsonl", key = "id" }\n'
        "messages = [\n"
        '  { role = "user", content = "Read this." },\n'
        '  { role = "assistant", content = "Done." },\n'
        '  { role = "user", content = [{ type = "text", text = "{{ q }}" }] },\n'
        "]\n"
    )
    a, b = items(root)
    for item, q in ((a, "A?"), (b, "B?")):
        first, _, last = item.params["messages"]
        assert first == {"role": "user", "content": "Read this."}
        assert [block["type"] for block in last["content"]] == ["document", "text"]
        assert last["content"][1] == {"type": "text", "text": q}


WHERE = "jobs/data/rows.jsonl: line 1: job pics: item p1: "


@pytest.mark.parametrize(
    ("file", "why"),
    [
        ("../../outside.png", 'attachment "../../outside.png": is outside the project root'),
        (
            "files/link.png",
            'attachment "files/link.png": is outside the project root (a symlink to ',
        ),
        ("files", 'attachment "files": not a regular file (a folder)'),
        ("files/missing.png", 'attachment "files/missing.png": cannot read: No such file'),
        (
            "files/notes.png",
            'attachment "files/notes.png": not a PNG, JPEG, GIF, WebP image or a PDF (by its first bytes)',
        ),
        (
            "files/huge.png",
            'attachment "files/huge.png": larger than 3,932,160 bytes, the API\'s limit for an image',
        ),
        ("/etc/hostname", 'attachment "/etc/hostname": an absolute path (write it relative)'),
    ],
)
def test_a_file_that_cannot_be_attached_is_one_line(root: Path, file: str, why: str) -> None:
    (root.parent / "outside.png").write_bytes(png())
    (root / "jobs" / "files" / "link.png").symlink_to(root.parent / "outside.png")
    (root / "jobs" / "files" / "notes.png").write_text("just text\n")
    (root / "jobs" / "files" / "huge.png").write_bytes(png() + b"\0" * attachments.MAX_IMAGE_BYTES)
    write_job(root, [{"id": "p1", "name": "x", "file": file}])
    (line,) = problems(root)
    assert line.startswith(WHERE + why)


def test_a_symlink_inside_the_root_is_followed(root: Path) -> None:
    (root / "jobs" / "files" / "alias.png").symlink_to("dot.png")
    write_job(root, [{"id": "p1", "name": "x", "file": "files/alias.png"}])
    (item,) = items(root)
    assert (
        item.params["messages"][0]["content"][0]["source"]["data"]
        == base64.b64encode(png()).decode()
    )


def test_a_pdf_may_be_larger_than_an_image(root: Path) -> None:
    big = pdf() + b"%" + b"x" * attachments.MAX_IMAGE_BYTES + b"\n"
    (root / "jobs" / "files" / "big.pdf").write_bytes(big)
    write_job(
        root, [{"id": "p1", "name": "x", "file": "files/big.pdf"}], "render_max_size = 32000000\n"
    )
    (item,) = items(root)
    assert item.params["messages"][0]["content"][0]["type"] == "document"


def test_requests_jobs_cannot_have_attachments(root: Path) -> None:
    (root / "jobs" / "raw.jsonl").write_text("")
    (root / "jobs" / "raw.toml").write_text(
        'version = 1\n[jobs.raw]\nrequests = "raw.jsonl"\nattachments = ["files/dot.png"]\n'
    )
    with pytest.raises(SpecError) as info:
        load_project(root / "jobs", root=root)
    assert info.value.problems == [
        "jobs/raw.toml: jobs.raw.attachments: a requests job sends its requests as written; "
        "remove this field"
    ]


def test_an_image_and_a_pdf_round_trip_through_the_emulator(
    root: Path, emulator: str, emulator_admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_job(root, ROWS, 'output = { path = "out/pics.csv" }\n')
    sent = {i.key: i for i in items(root)}
    ctx = context(root, emulator)
    plan = ctx.plan()
    assert plan is not None
    apply(ctx, wait=True)
    # The emulator got one request per item, under the custom_id derived from its fingerprint
    # (which hashes the base64 of the file).
    assert emulator_admin.stats()["submissions"] == {i.custom_id: 1 for i in sent.values()}

    monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    result = CliRunner().invoke(cli, ["results", "pics"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["key"] for r in lines if r["state"] == "succeeded") == ["d1", "p1", "t1"]
    # The export echoes the row (the path), never the request: no base64 in it.
    assert base64.b64encode(png()).decode() not in result.stdout
    assert base64.b64encode(pdf()).decode()[:40] not in result.stdout
    assert "files/dot.png" in result.stdout
    written = (root / "jobs" / "out" / "pics.csv").read_text()
    assert "files/terms.pdf" in written and base64.b64encode(pdf()).decode()[:40] not in written


def test_a_replaced_file_changes_the_plan_even_with_the_rows_cache_on(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchops.spec import cache, parallel

    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "home-cache"))
    monkeypatch.delenv("BATCHOPS_CACHE", raising=False)
    monkeypatch.setattr(cache, "MIN_ROWS", 0)  # would keep these rows, were files not attached
    monkeypatch.setattr(parallel.wants_parallel, "__defaults__", (0,))  # nor rendered in workers
    monkeypatch.setattr(parallel, "workers", lambda: 2)
    write_job(root, ROWS)
    ctx = context(root, None)

    def fingerprints() -> dict[str, str]:
        (job,) = ctx.desired().jobs
        return {i.key: i.fingerprint for i in job.items}

    before = fingerprints()
    assert not (root / cache.CACHE_DIR).exists()
    (root / "jobs" / "files" / "dot.png").write_bytes(png(shade=9))
    after = fingerprints()
    assert before["p1"] != after["p1"] and before["d1"] == after["d1"]


def test_a_file_named_by_every_row_is_read_once(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path rendered from the row was read and base64-encoded again for every row naming it: a
    pull request's data file of a million rows naming one 20 MB PDF made `validate` and `plan`
    read and encode 20 TB. A file's block is kept (within ATTACHMENT_CACHE_CHARS of base64) and
    given to every item that names it."""
    (root / "jobs" / "files" / "big.pdf").write_bytes(pdf() + b"%" + b"x" * 200_000 + b"\n")
    opened: list[Path] = []
    real = attachments.open_regular

    def counted(path: Path, root_: Path):
        opened.append(path)
        return real(path, root_)

    monkeypatch.setattr(attachments, "open_regular", counted)
    rows = [{"id": f"r{n}", "name": f"terms {n}", "file": "files/big.pdf"} for n in range(300)]
    write_job(root, [*rows, {"id": "p1", "name": "the dot", "file": "files/dot.png"}])
    made = items(root)
    assert [p.name for p in opened] == ["big.pdf", "dot.png"]
    expected = base64.b64encode((root / "jobs" / "files" / "big.pdf").read_bytes()).decode()
    for item in made[:-1]:
        assert item.params["messages"][0]["content"][0]["source"]["data"] == expected
    assert len({i.fingerprint for i in made[:-1]}) == 300  # each its own row's text


def test_files_beyond_the_kept_size_are_read_again_and_the_items_are_the_same(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept blocks are bounded: rows naming more files than fit are served by reading them
    again (the least recently named first out), with the same items as when all are kept."""
    rows = [
        {"id": f"r{n}", "name": "x", "file": ("files/dot.png", "files/terms.pdf")[n % 2]}
        for n in range(6)
    ]
    write_job(root, rows)
    kept = items(root)
    opened: list[str] = []
    real = attachments.open_regular
    monkeypatch.setattr(
        attachments, "open_regular", lambda p, r: opened.append(p.name) or real(p, r)
    )
    one_pdf = len("files/terms.pdf") + len(base64.b64encode(pdf()))  # the PDF, not the PNG too
    monkeypatch.setattr(attachments, "ATTACHMENT_CACHE_CHARS", one_pdf)
    again = items(root)
    assert [(i.key, i.fingerprint, i.params) for i in again] == [
        (i.key, i.fingerprint, i.params) for i in kept
    ]
    assert opened == ["dot.png", "terms.pdf"] * 3  # each evicts the other
