"""Attachments: local images and PDFs sent as base64 content blocks of a template job's request.

A job's `attachments = ["{{ image_path }}", "docs/terms.pdf"]` names files by path (templates
rendered per item; an empty result attaches nothing). Each file becomes an `image` or `document`
block placed before the text of the last user message, so the fingerprint — the hash of the
rendered request — covers the file's bytes. Paths come from pull requests and data rows, so a file
is read like every other: relative to the spec file, inside the project root with symlinks
resolved, a regular file, and no larger than the API takes. Its media type is read from its first
bytes, never its name.
"""

from __future__ import annotations

import base64
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchops.spec.files import FileRefused, open_regular

# The API refuses an image whose base64 is over 5 MB (5,242,880 characters: "image exceeds 5 MB
# maximum"), i.e. 3,932,160 bytes of file; a PDF is bounded by the 32 MB request, base64 4/3.
MAX_IMAGE_BYTES = 5 * 1024 * 1024 * 3 // 4
MAX_PDF_BYTES = 32_000_000 * 3 // 4
# The base64 a job's rendering keeps of the files its rows name (`Kept`): enough for many small
# images or two of the largest PDFs.
ATTACHMENT_CACHE_CHARS = 64 * 1024 * 1024

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)


def media_type(head: bytes) -> str | None:
    """The media type the API knows for a file starting with `head`, or None."""
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


class AttachmentError(Exception):
    """A file that cannot be attached; args[0] says why, naming the file as written."""


def block(written: str, spec_dir: Path, root: Path) -> dict[str, Any]:
    """The content block for the file `written` (relative to `spec_dir`), read inside `root`."""
    shown = json.dumps(written, ensure_ascii=False)
    if os.path.isabs(written):
        raise AttachmentError(f"attachment {shown}: an absolute path (write it relative)")
    path = spec_dir / written
    try:
        with open_regular(path, root) as f:
            head = f.read(16)
            kind = media_type(head)
            if kind is None:
                raise AttachmentError(
                    f"attachment {shown}: not a PNG, JPEG, GIF, WebP image or a PDF "
                    "(by its first bytes)"
                )
            limit = MAX_PDF_BYTES if kind == "application/pdf" else MAX_IMAGE_BYTES
            data = head + f.read(limit + 1 - len(head))
    except FileRefused as e:
        why = e.args[0]
        if why.startswith("is outside") and not Path(os.path.normpath(path)).is_relative_to(root):
            why = "is outside the project root"
        raise AttachmentError(f"attachment {shown}: {why}") from None
    except OSError as e:
        raise AttachmentError(f"attachment {shown}: cannot read: {e.strerror}") from None
    if len(data) > limit:
        what = "a PDF" if kind == "application/pdf" else "an image"
        raise AttachmentError(
            f"attachment {shown}: larger than {limit:,} bytes, the API's limit for {what}"
        )
    source = {"type": "base64", "media_type": kind, "data": base64.b64encode(data).decode()}
    return {"type": "document" if kind == "application/pdf" else "image", "source": source}


class Kept:
    """The blocks of files named by rows (`block`), each file read once while its block is kept:
    rows naming one file (a million rows, one PDF) read it once, not once each. The blocks kept
    hold at most ATTACHMENT_CACHE_CHARS of base64, the least recently named going first; a file
    that cannot be attached is kept as its one-line reason."""

    def __init__(self, spec_dir: Path, root: Path) -> None:
        self.spec_dir, self.root = spec_dir, root
        self._kept: OrderedDict[str, tuple[dict[str, Any] | str, int]] = OrderedDict()
        self._chars = 0

    def block(self, written: str) -> dict[str, Any]:
        found = self._kept.get(written)
        if found is None:
            try:
                made: dict[str, Any] | str = block(written, self.spec_dir, self.root)
            except AttachmentError as e:
                made = e.args[0]
            size = len(made) if isinstance(made, str) else len(made["source"]["data"])
            found = (made, len(written) + size)
            self._keep(written, found)
        else:
            self._kept.move_to_end(written)
        made = found[0]
        if isinstance(made, str):
            raise AttachmentError(made)
        return made

    def _keep(self, written: str, entry: tuple[dict[str, Any] | str, int]) -> None:
        limit = ATTACHMENT_CACHE_CHARS
        if entry[1] > limit:
            return
        while self._kept and self._chars + entry[1] > limit:
            _, (_, size) = self._kept.popitem(last=False)
            self._chars -= size
        self._kept[written] = entry
        self._chars += entry[1]


def attach(params: dict[str, Any], blocks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`params` with `blocks` put before the content of its last user message (copied, since
    rendered params share structure with the job)."""
    if not blocks:
        return params
    messages = params.get("messages")
    index = None
    if isinstance(messages, list):
        index = next(
            (
                i
                for i in range(len(messages) - 1, -1, -1)
                if isinstance(messages[i], dict) and messages[i].get("role") == "user"
            ),
            None,
        )
    if index is None:
        raise AttachmentError("attachments need a user message to go in; there is none")
    message = messages[index]
    content = message.get("content")
    if isinstance(content, str):  # an empty text block is refused by the API: none then
        content = [{"type": "text", "text": content}] if content else []
    elif not isinstance(content, list):
        raise AttachmentError("attachments: the last user message's content is not text or blocks")
    new_messages = list(messages)
    new_messages[index] = {**message, "content": [*blocks, *content]}
    return {**params, "messages": new_messages}
