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
import hashlib
import json
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
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


# A string this long in a block's source (a file's base64) is written and hashed once a file by
# `Written`, not once an item.
LARGE = 1 << 16
# The requests' beginnings `Written` keeps the hash of, each with its files: at most this many,
# holding at most ATTACHMENT_CACHE_CHARS of base64 beside the newest (mostly the strings `Kept`
# holds too).
_WRITTEN_KEPT = 8


class Written:
    """The fingerprint and size of requests whose blocks carry files' base64 (`attach`), with
    each file's base64 written out and hashed once, not once an item: a million rows naming one
    7 MB PDF wrote and hashed 9.3 MB an item (38 ms with the cost estimate, ten hours of `plan`).

    The request is written with each large source string (`LARGE`) replaced by a marker the
    writing cannot otherwise produce (an escaped NUL, a nonce of this process), and the hash of
    the request up to and through its last file is kept for that beginning and those very
    strings: the items after it hash only what follows. The result is the hash of the request
    written whole, byte for byte; anything that would not be (a marker found other than once, a
    string JSON would escape) returns None, and the caller writes the request whole."""

    def __init__(self) -> None:
        self._nonce = secrets.token_hex(8)
        # (beginning, id of file, ..., beginning, id of file) -> (the files, hash through them)
        self._kept: OrderedDict[tuple[Any, ...], tuple[list[str], Any]] = OrderedDict()

    def _marker(self, index: int) -> str:
        return f"\x00batchops-{self._nonce}-{index}\x00"

    def _swapped(self, params: dict[str, Any]) -> tuple[dict[str, Any], list[str]] | None:
        """`params` with each large source string of its messages' blocks replaced by its
        marker (new dicts and lists along the way; `params` is left as it is), and the strings."""
        messages = params.get("messages")
        if type(messages) is not list:
            return None
        found: list[str] = []
        new_messages: list[Any] | None = None
        for i, message in enumerate(messages):
            content = message.get("content") if type(message) is dict else None
            if type(content) is not list:
                continue
            new_content: list[Any] | None = None
            for j, block in enumerate(content):
                source = block.get("source") if type(block) is dict else None
                data = source.get("data") if type(source) is dict else None
                if type(data) is not str or len(data) < LARGE:
                    continue
                if new_content is None:
                    new_content = list(content)
                new_content[j] = {**block, "source": {**source, "data": self._marker(len(found))}}
                found.append(data)
            if new_content is not None:
                if new_messages is None:
                    new_messages = list(messages)
                new_messages[i] = {**message, "content": new_content}
        if not found:
            return None
        return {**params, "messages": new_messages}, found

    def hashed(
        self, params: dict[str, Any], wrap: Callable[[dict[str, Any]], Any], dumps: Callable
    ) -> tuple[Any, int] | None:
        """(the sha256 of `dumps(wrap(params))`, its length), or None (see the class)."""
        swapped = self._swapped(params)
        if swapped is None:
            return None
        written, files = swapped
        out = dumps(wrap(written))
        places = []
        for index, data in enumerate(files):
            marker = dumps(self._marker(index))
            at = out.find(marker)
            if at < 0 or out.find(marker, at + 1) >= 0:
                return None
            places.append((at, len(marker), data))
        places.sort(key=lambda place: place[0])
        key: list[Any] = []
        start = 0
        size = len(out)
        for at, width, data in places:
            key += (out[start:at], id(data))
            start = at + width
            size += len(data) + 2 - width
        ordered = [data for _, _, data in places]
        kept = self._kept.get(tuple(key))
        if kept is not None and all(a is b for a, b in zip(kept[0], ordered, strict=True)):
            self._kept.move_to_end(tuple(key))
            digest = kept[1].copy()
        else:
            digest = hashlib.sha256()
            start = 0
            for at, width, data in places:
                text = dumps(data)
                if len(text) != len(data) + 2:  # JSON escapes something in it: written whole
                    return None
                digest.update(out[start:at])
                digest.update(text)
                start = at + width
            self._kept[tuple(key)] = (ordered, digest.copy())
            held = sum(sum(map(len, files)) for files, _ in self._kept.values())
            while len(self._kept) > 1 and (
                len(self._kept) > _WRITTEN_KEPT or held > ATTACHMENT_CACHE_CHARS
            ):
                _, (files, _) = self._kept.popitem(last=False)
                held -= sum(map(len, files))
        digest.update(out[start:])
        return digest, size
