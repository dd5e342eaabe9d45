"""The rows planning needs, made fast for the common shape of job.

Planning wants, per item, (key, custom_id, fingerprint, cost, model, request bytes). The general
path (`items.iter_items`, then pricing) builds each request as a dict, writes it as canonical
JSON, scans it for the cost and writes it again for its size: about a hundred Python calls an item.
Most jobs have one shape: templates that only substitute names (`{{ body }}`), and everything else
(model, max_tokens, params, betas, the literal text) the same for every item. For such a job the
canonical JSON of every request is the same bytes but for the JSON strings of its rendered
templates, so `RowMaker` writes it once per job with a marker in each template's place, and per
item only renders the templates (`str.format`), writes each one as a JSON string and joins the
pieces. A JSON string is written by orjson exactly as `json.dumps(ensure_ascii=False)` writes it,
so the bytes are those `items._encoder` hashes. The request's size follows from the same lengths,
and its cost from the total length of the rendered templates and how many of their characters
are outside ASCII, alone (every template sits where `pricing._scan` counts its characters, and no
cache mark depends on it): it is estimated once per distinct pair, from the request the general
path renders.

A row the fast path does not take (a value that is not a string, a missing name, a key that is
not a string, a duplicate, a bad line, a request over the size budget) goes through the general
path (`items.TemplateRows`), which reports it exactly as `iter_items` would.
`tests/test_rowmaker.py` holds the two paths to the same rows and errors.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from binascii import unhexlify
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date
from itertools import accumulate, chain, islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from batchops.errors import SpecError
from batchops.pricing import ItemEstimate, ModelPrice, PriceTable, _scan, non_ascii
from batchops.spec import caching
from batchops.spec.items import (
    _FLAT,
    FINGERPRINT_PREFIX,
    REQUEST_FRAME,
    Item,
    TemplateRows,
    _big_floats,
    _custom_id_maker,
    _Fatal,
    _line_blocks,
    _Problems,
    _Renderer,
    _Struct,
    _Template,
    input_of,
    iter_items,
    request_size,
)
from batchops.spec.keyhashes import KeyHashes, SuspectKeys
from batchops.spec.model import RENDER_MAX_SIZE_DEFAULT, Job, display_path

if TYPE_CHECKING:
    from batchops.spec.spool import JobSpool

Row = tuple[str, str, str, ItemEstimate | None, str, int]

_FP_HEX = len(FINGERPRINT_PREFIX) + 64
_FP_RUN = re.compile(r"(?:sha256:[0-9a-f]{64})*")
_FP_TAIL = itemgetter(slice(len(FINGERPRINT_PREFIX), None))
BLOCK_ROWS = 4096  # rows a producer packs into one block


class Block(NamedTuple):
    """Consecutive rows of a job packed as columns: what `desired.ItemTable` holds of them, and
    the spec digest's line of each, so that a consumer takes a block whole, not row by row.

    Keys and custom_ids are joined strings with each one's end offset, fingerprints 32-byte
    digests (a fingerprint not of the `sha256:<hex>` form is in `odd`, by position), and each
    row's (cost, model, size) an index into the block's distinct ones (`table`). Rows whose cost
    is the same object share an entry (`pack`), so an entry's cost stands for each of them.
    """

    count: int
    keys: str
    key_ends: array
    custom_ids: str
    custom_id_ends: array
    digests: bytes
    odd: dict[int, str]
    table: list[tuple[Any, str, Any]]
    index: array
    spelled: str  # "{key}\x1f{fingerprint}\n" of every row (the spec digest hashes it)


def joined(strings: Sequence[str]) -> tuple[str, array]:
    """`strings` as one string and each one's end offset in it."""
    text = "".join(strings)
    return text, array("I" if len(text) < 1 << 32 else "Q", accumulate(map(len, strings)))


def split(text: str, ends: array) -> list[str]:
    """The strings `joined` joined."""
    return [text[a:b] for a, b in zip(chain((0,), ends), ends, strict=False)]


def digests(fps: Sequence[str]) -> tuple[bytes, dict[int, str]]:
    """Fingerprints as 32-byte sha256 digests, and by position those not of that form (their
    digest is zeros)."""
    n = len(fps)
    # Every one `sha256:` and 64 lowercase hex digits: checked on the whole column at once.
    if n and set(map(len, fps)) == {_FP_HEX}:
        text = "".join(fps)
        if all(text[i::_FP_HEX] == c * n for i, c in enumerate(FINGERPRINT_PREFIX)):
            text = "".join(map(_FP_TAIL, fps))
            if text == text.lower():
                try:
                    return unhexlify(text), {}
                except ValueError:  # a digit not hex (binascii.Error), or not ASCII
                    pass
    out, odd = [], {}
    for n, fp in enumerate(fps):
        if len(fp) == _FP_HEX and _FP_RUN.fullmatch(fp):
            out.append(bytes.fromhex(fp[len(FINGERPRINT_PREFIX) :]))
        else:
            out.append(bytes(32))
            odd[n] = fp
    return b"".join(out), odd


def fingerprints(data: bytes, odd: dict[int, str], base: int = 0) -> list[str]:
    """The fingerprints `digests` packed (`odd` by position plus `base`)."""
    text = data.hex()
    out = [FINGERPRINT_PREFIX + text[a : a + 64] for a in range(0, len(text), 64)]
    for n in range(len(out)) if odd else ():
        if base + n in odd:
            out[n] = odd[base + n]
    return out


_SEP, _END = ("\x1f",), ("\n",)


def pack(rows: Sequence[Row]) -> Block:
    """Rows as one block."""
    keys, cids, fps, costs, models, sizes = zip(*rows, strict=True)
    n = len(keys)
    # Rows share an entry when their cost is one object and model and size are equal (a size
    # 261.0 is not 261): producers hand out one estimate object per distinct estimate.
    first: dict[tuple, int] = {}
    where = list(
        map(
            first.setdefault,
            zip(map(id, costs), models, sizes, map(type, sizes), strict=True),
            range(n),
        )
    )
    slots = list(first.values())
    if len(slots) == 1:
        index = array("I", bytes(4 * n))
    else:
        entry = dict(zip(slots, range(len(slots)), strict=True))
        index = array("I", map(entry.__getitem__, where))
    table = [(costs[p], models[p], sizes[p]) for p in slots]
    fp_data, odd = digests(fps)
    spelled: list[str] = [""] * (4 * n)  # key, \x1f, fingerprint, \n: one join
    spelled[0::4], spelled[1::4], spelled[2::4], spelled[3::4] = keys, _SEP * n, fps, _END * n
    return Block(n, *joined(keys), *joined(cids), fp_data, odd, table, index, "".join(spelled))


def blocks(rendered: Iterable[Row | list[Row] | Block], size: int = BLOCK_ROWS) -> Iterator[Block]:
    """Rows, lists of rows and blocks as blocks, in order (single rows packed `size` at a
    time, a list as one block)."""
    chunk: list[Row] = []
    for part in rendered:
        kind = type(part)
        if kind is Block or kind is list:
            if chunk:
                yield pack(chunk)
                chunk = []
            if part:
                yield part if kind is Block else pack(part)  # type: ignore[misc, arg-type]
            continue
        chunk.append(part)  # type: ignore[arg-type]
        if len(chunk) == size:
            yield pack(chunk)
            chunk = []
    if chunk:
        yield pack(chunk)


def unpack(block: Block) -> Iterator[Row]:
    """The rows of a block, as they were packed."""
    table = block.table
    keys, cids = split(block.keys, block.key_ends), split(block.custom_ids, block.custom_id_ends)
    fps = fingerprints(block.digests, block.odd)
    for key, cid, fp, i in zip(keys, cids, fps, block.index, strict=True):
        cost, model, size = table[i]
        yield key, cid, fp, cost, model, size


# A template's place in the request while the job's pieces are written: a JSON string no
# literal of the spec holds (checked: each is found exactly once, else no fast path).
_MARK = "\x00batchops-template-{}\x00"


def rows(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    price_cache: dict[str, Any],
    spool: JobSpool | None = None,
) -> Iterator[Row]:
    """Every item's row of `job`, in order; SpecError as `iter_items` raises it. With `spool`,
    each item's request line is written there too, in the same order (for `plan -o`)."""
    if job.requests is not None or job.attachments:
        yield from chunks(job, root, prices, today, price_cache, spool, 1)
        return
    for chunk in chunks(job, root, prices, today, price_cache, spool):
        yield from chunk


def chunks(
    job: Job,
    root: Path,
    prices: PriceTable,
    today: date,
    price_cache: dict[str, Any],
    spool: JobSpool | None = None,
    size: int = BLOCK_ROWS,
) -> Iterator[list[Row]]:
    """`rows` in lists of about `size` (a consumer takes them a list at a time: no work per
    row on the way); SpecError as `iter_items` raises it. A requests or attachments job
    gives single rows when `size` is 1. With `spool`, each item's request line is written
    there too, in the same order (for `plan -o`)."""

    def of_item(item: Item) -> Row:
        row = item_row(job, item, prices, today, price_cache)
        if spool is not None:
            spool.add_params(item.key, item.custom_id, item.fingerprint, item.params)
        return row

    if job.requests is not None or job.attachments:
        made = map(of_item, iter_items(job, root))
        yield from made if size == 1 else iter(lambda: list(islice(made, size)), [])
        return

    yield from _checked(job, root, _row_maker(job, prices, today, spool), of_item)


def _row_maker(job: Job, prices: PriceTable, today: date, spool: JobSpool | None = None) -> Start:
    """`start` of `_checked` for rows (the spool only on the first pass)."""

    def start(general: TemplateRows, keep: bool) -> Callable[[dict[str, Any], str], Any] | None:
        maker = RowMaker.compile(job, general.renderer, prices, today, spool if keep else None)
        return maker and maker.make

    return start


def exact_error(
    job: Job, root: Path, prices: PriceTable, today: date, suspects: frozenset[int]
) -> SpecError | None:
    """The SpecError `rows` raises for a template job whose keys of the hashes `suspects` were
    logged more than once (None: none, they were keys with one hash)."""
    return _exact_error(job, root, _row_maker(job, prices, today), suspects, True)


# A maker of rows for a general path (True: the first pass, which keeps request lines)
Start = Callable[[TemplateRows, bool], Callable[[dict[str, Any], str], Any] | None]
Request = tuple[str, str, bytes]  # key, fingerprint, params as `orjson.dumps` writes them


def requests(job: Job, root: Path) -> Iterator[Request]:
    """Every item of `job` as (key, fingerprint, params as JSON), in order: what `iter_items`
    gives as (item.key, item.fingerprint, orjson.dumps(item.params)), with no dict per item for
    a job of the common shape. SpecError as `iter_items` raises it."""
    dumps = orjson.dumps

    def of_item(item: Item) -> Request:
        return item.key, item.fingerprint, dumps(item.params)

    if job.requests is not None or job.attachments:
        yield from map(of_item, iter_items(job, root, custom_ids=False))
        return

    def start(general: TemplateRows, keep: bool) -> Callable[[dict[str, Any], str], Any] | None:
        layout = _Layout.of(job, general.renderer)
        return None if layout is None else _request_maker(general.renderer, layout)

    for made in _checked(job, root, start, of_item, custom_ids=False):
        yield from made


Identity = tuple[str, str, str, Any]  # key, custom_id, fingerprint, the item's input row


def identities(job: Job, root: Path) -> Iterator[list[Identity]]:
    """(key, custom_id, fingerprint, input row) of every item of `job`, in order, in lists of
    about BLOCK_ROWS: what `iter_items` gives as (item.key, item.custom_id, item.fingerprint,
    input_of(item)), with no request built for a job of the common shape and the keys checked
    for duplicates in little memory (`_checked`). What an export joins results to when the
    rows cache does not serve the job (a fresh checkout, another batchops, a changed spec).

    SpecError as `iter_items` raises it; a key given again far from its first row is given
    too before the error is raised (`_checked`), so the lists are of use only when none is."""

    def of_item(item: Item) -> Identity:
        return item.key, item.custom_id, item.fingerprint, input_of(item)

    if job.requests is not None or job.attachments:
        made = map(of_item, iter_items(job, root))
        yield from iter(lambda: list(islice(made, BLOCK_ROWS)), [])
        return

    def start(general: TemplateRows, keep: bool) -> Callable[[dict[str, Any], str], Any] | None:
        layout = _Layout.of(job, general.renderer)
        if layout is None:
            return None
        request, custom_id = _request_maker(general.renderer, layout), general.custom_id

        def make(row: dict[str, Any], key: str) -> Identity | None:
            made = request(row, key)
            if made is None:
                return None
            return key, custom_id(key, made[1]), made[1], row

        return make

    yield from _checked(job, root, start, of_item)


def item_row(
    job: Job, item: Item, prices: PriceTable, today: date, price_cache: dict[str, Any]
) -> Row:
    """The row of an item the general path rendered."""
    model = str(item.params.get("model", ""))
    if model not in price_cache:
        price_cache[model] = prices.price(model, today)
    price = price_cache[model]
    cost = caching.estimate(job, item.params, price, prices) if price is not None else None
    return item.key, item.custom_id, item.fingerprint, cost, model, request_size(item)


def plain_row(
    line: bytes,
    loads: Callable[[bytes], Any] = orjson.loads,
    dumps: Callable[[Any], bytes] = orjson.dumps,
    flat: Callable[[Iterable[type]], bool] = _FLAT.issuperset,
) -> dict[str, Any] | None:
    """The object on a jsonl line, when the fast path may take it: valid JSON, an object, no
    key given twice and no integer past 64 bits (what `items._json_line` checks), found
    cheaply: a flat object holds exactly one colon a key when no key is repeated and no string
    has one, and orjson reads an integer past 64 bits as a float, which a value that is a
    string, an int, a bool or null is not (`items._big_floats`). None sends the line to the
    general path, which reports or takes it as before."""
    try:
        row = loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(row) is not dict:
        return None
    if not flat(map(type, row.values())) and _big_floats(row):
        return None  # maybe an integer past 64 bits: the general path reads it exactly
    colons = line.count(b":")
    if colons != len(row):
        try:  # two levels down, as the general path writes it (`items._colons`)
            if colons != dumps([[row]]).count(b":") or b"\\u003" in line:
                return None
        except orjson.JSONEncodeError:
            return None
    elif len(line) > _DEEP and line.count(b"[") + line.count(b"{") > _DEEP:
        # nested past what orjson writes two levels down, as an export writes a row (the
        # general path writes every row out so, and refuses it: "nested too deeply"); a
        # shorter line cannot be
        try:
            dumps([[row]])
        except orjson.JSONEncodeError:
            return None
    return row


# brackets a line holds below which it cannot nest as deep as orjson refuses two levels down
# (252: orjson writes 254)
_DEEP = 250


def _checked(
    job: Job,
    root: Path,
    start: Start,
    of_item: Callable[[Item], Any],
    custom_ids: bool = True,
) -> Iterator[list[Any]]:
    """`_made_lists` of a new general path and `start(general, True)`'s maker, the keys checked
    for duplicates in little memory; SpecError as `iter_items` raises it.

    Only the keys of the last rows are held (`_made_lists`); the hash of the key of every row
    that asks for one is logged, once per such row (a duplicate reported among the rows held
    is logged again). A hash logged twice (a duplicate key, or two keys with one hash) has the
    job read again, holding the keys of those hashes exactly: every key a full set of keys
    would find again was asked for by two rows, so that pass reports what a full set does. A
    duplicate is always an error, so the rows given meanwhile are never used; when no hash was
    logged twice, no key was asked for twice, and they were those of a full set."""
    problems = _Problems()
    log = KeyHashes()
    error = None
    try:
        try:
            general = TemplateRows(
                job, root, display_path(job.spec_file, root), problems, custom_ids
            )
            yield from _made_lists(job, root, general, start(general, True), of_item, log)
        except _Fatal as e:
            error = problems.error(e.line(job.name))
        else:
            if problems.count:
                error = problems.error()
        suspects = log.suspects()
    finally:
        log.close()
    if suspects:
        error = _exact_error(job, root, start, suspects, custom_ids)
    if error is not None:
        raise error


def _exact_error(
    job: Job,
    root: Path,
    start: Start,
    suspects: frozenset[int],
    custom_ids: bool,
) -> SpecError | None:
    """The problems of `job` read again with the keys of `suspects` held exactly (None: none,
    the suspects were keys with one hash): what a full set of keys reports."""
    problems = _Problems()
    try:
        general = TemplateRows(job, root, display_path(job.spec_file, root), problems, custom_ids)
        general.seen = SuspectKeys(suspects)
        for _ in _made_lists(job, root, general, start(general, False), _nothing):
            pass
    except _Fatal as e:
        return problems.error(e.line(job.name))
    return problems.error() if problems.count else None


def _nothing(item: Item) -> None:
    return None


def _made_lists(
    job: Job,
    root: Path,
    general: TemplateRows,
    make: Callable[[dict[str, Any], str], Any] | None,
    of_item: Callable[[Item], Any],
    log: KeyHashes | None = None,
) -> Iterator[list[Any]]:
    """`make(row, key)` of each row it takes, `of_item` of the general path's item of the
    others (every row when `make` is None), in lists of about BLOCK_ROWS; what came before a
    problem that ends the job is given before it is raised. With `log`, the keys seen are held
    only until their list is given (a duplicate among them is reported as ever), and logged
    there (`_checked` finds the rest)."""
    out: list[Any] = []
    add = out.append
    seen = general.seen

    def window() -> None:
        if log is not None:
            log.add(seen)
            log.add(general.repeats)  # a key met again among the rows held: logged twice
            general.repeats.clear()
            seen.clear()

    try:
        if make is None:
            for number, row in general.source():
                item = general.item(number, row)
                if item is not None:
                    add(of_item(item))
                    if len(out) == BLOCK_ROWS:
                        yield out
                        window()
                        out = []
                        add = out.append
        elif job.input is not None and job.input.format == "jsonl":
            seen, key_field = general.seen, general.key_field
            for first, lines in _line_blocks(job.input.path, general.shown, root):
                for number, line in enumerate(lines, first):
                    row = plain_row(line)
                    if row is not None:
                        key = row.get(key_field)
                        if type(key) is str and key and key not in seen:
                            made = make(row, key)
                            if made is not None:
                                seen[key] = number
                                add(made)
                                if len(out) == BLOCK_ROWS:
                                    yield out
                                    window()
                                    out = []
                                    add = out.append
                                continue
                    item = general.line(number, line)
                    if item is not None:
                        add(of_item(item))
                if len(out) >= BLOCK_ROWS:
                    yield out
                    window()
                    out = []
                    add = out.append
        else:
            seen, key_field, item_of = general.seen, general.key_field, general.item
            for number, row in general.source():
                made = None
                if type(row) is dict:
                    key = row.get(key_field)
                    if type(key) is str and key and key not in seen:
                        made = make(row, key)
                        if made is not None:
                            seen[key] = number
                if made is None:
                    item = item_of(number, row)
                    if item is None:
                        continue
                    made = of_item(item)
                add(made)
                if len(out) == BLOCK_ROWS:
                    yield out
                    window()
                    out = []
                    add = out.append
    except _Fatal:
        if out:
            yield out
        raise
    finally:
        window()
    if out:
        yield out


class RowMaker:
    """One job's requests as constant byte pieces around its templates' JSON strings.

    `make(row, key)` is the item's row, or None when the general path must make it.
    """

    def __init__(
        self,
        job: Job,
        renderer: _Renderer,
        layout: _Layout,
        model: str,
        price: ModelPrice | None,
        prices: PriceTable,
        spool: JobSpool | None = None,
    ):
        self.model = model
        self.make = _maker(job, renderer, layout, model, price, prices, spool)

    @classmethod
    def compile(
        cls,
        job: Job,
        renderer: _Renderer,
        prices: PriceTable,
        today: date,
        spool: JobSpool | None = None,
    ) -> RowMaker | None:
        """The job's RowMaker, or None when its shape is not the common one. With `spool`, its
        rows write their request lines there."""
        layout = _Layout.of(job, renderer)
        if layout is None:
            return None
        params, places = layout.params, layout.places
        # The cost is a function of the templates' total length only if no cache mark lies
        # after a template (or, with `cache = "auto"`, none is in the system prompt).
        where = _scan(params)[3]
        if where is not None and (where[0] == "all" or min(places, default=(9,)) <= _rank(where)):
            return None
        if job.cache == "auto" and any(p[0] < 2 for p in places):
            return None
        model = str(params.get("model", ""))
        return cls(job, renderer, layout, model, prices.price(model, today), prices, spool)


class _Layout:
    """A job's request in the common shape as constant byte pieces around its templates' JSON
    strings, twice: as the fingerprint hashes it (sorted keys, betas beside it), and as
    `orjson.dumps(params)` writes it (what a saved plan holds)."""

    def __init__(
        self,
        params: dict[str, Any],
        templates: list[_Template],
        places: list[tuple[int, int, int]],
        data: bytes,
        plain: bytes,
        marks: list[bytes],
    ):
        self.params, self.templates, self.places = params, templates, places
        self.pieces, self.order = _split(data, marks)
        self.plain_pieces, self.plain_order = _split(plain, marks)
        self.size = (
            len(plain) - sum(map(len, marks)) + REQUEST_FRAME
        )  # `request_size_of` without strings

    @classmethod
    def of(cls, job: Job, renderer: _Renderer) -> _Layout | None:
        """The job's layout, or None when its shape is not the common one."""
        if not renderer.exact or renderer.render.__func__ is not _Renderer._render_from_row:  # type: ignore[attr-defined]
            return None
        found = _skeleton(renderer, job)
        if found is None:
            return None
        params, templates, places = found
        marks = [orjson.dumps(_MARK.format(i)) for i in range(len(templates))]
        try:
            obj = {"betas": sorted(job.betas), "params": params} if job.betas else params
            data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
            plain = orjson.dumps(params)
        except (TypeError, orjson.JSONEncodeError):
            return None
        if any(data.count(m) != 1 or plain.count(m) != 1 for m in marks):
            return None  # a literal holds a marker, or params replaced a templated part
        return cls(params, templates, places, data, plain, marks)


def _split(data: bytes, marks: list[bytes]) -> tuple[list[bytes], list[int]]:
    """The pieces of `data` between the marks, and which mark ends each piece but the last."""
    order = sorted(range(len(marks)), key=lambda i: data.index(marks[i]))
    pieces, at = [], 0
    for i in order:
        start = data.index(marks[i])
        pieces.append(data[at:start])
        at = start + len(marks[i])
    pieces.append(data[at:])
    return pieces, order


def _rank(where: tuple[str, int, int]) -> tuple[int, int, int]:
    section, message, block = where
    return ({"tools": 0, "system": 1, "messages": 2}[section], message, block)


def _skeleton(
    renderer: _Renderer, job: Job
) -> tuple[dict[str, Any], list[_Template], list[tuple[int, int, int]]] | None:
    """The request `renderer._render_from_row` makes, each template's output a marker; the
    templates in marker order, and where each sits (tools 0 / system 1 / messages 2, message,
    block; -1 for a message whose content is a string). None for another shape."""
    templates: list[_Template] = []
    places: list[tuple[int, int, int]] = []

    def mark(template: _Template, place: tuple[int, int, int]) -> str | None:
        shape = template.shape
        if shape is None or "row" in shape.names:
            return None
        templates.append(template)
        places.append(place)
        return _MARK.format(len(templates) - 1)

    def text_block(part: Any, place: tuple[int, int, int]) -> Any:
        """A literal block, or a text block whose text is a template (its characters are what
        `pricing._chars` counts)."""
        if not isinstance(part, _Struct | _Template):
            return part
        if not isinstance(part, _Struct) or part.kind is not dict:
            return None
        fields = dict(part.parts)
        if fields.get("type") != "text" or not isinstance(fields.get("text"), _Template):
            return None
        if any(isinstance(p, _Struct | _Template) for k, p in part.parts if k != "text"):
            return None
        text = mark(fields["text"], place)
        return None if text is None else {k: text if k == "text" else p for k, p in part.parts}

    def blocks(part: _Struct, section: int, message: int) -> list[Any] | None:
        out = []
        for i, (_, block) in enumerate(part.parts):
            made = text_block(block, (section, message, i))
            if made is None:
                return None
            out.append(made)
        return out

    params: dict[str, Any] = {"model": renderer.model, "max_tokens": renderer.max_tokens}
    system = renderer.system
    if isinstance(system, _Template):
        system = mark(system, (1, 0, 0))
    elif isinstance(system, _Struct):
        system = blocks(system, 1, 0) if system.kind is list else None
        if system is None:
            return None
    if renderer.system is not None:
        if system is None:
            return None
        params["system"] = system
    if renderer.messages is None:
        prompt = renderer.prompt
        content = mark(prompt, (2, 0, -1)) if isinstance(prompt, _Template) else prompt
        if content is None:
            return None
        params["messages"] = [{"role": "user", "content": content}]
    elif isinstance(renderer.messages, _Struct):
        if renderer.messages.kind is not list:
            return None
        messages = []
        for m, (_, message) in enumerate(renderer.messages.parts):
            if not isinstance(message, _Struct):
                messages.append(message)
                continue
            if message.kind is not dict:
                return None
            out: dict[str, Any] = {}
            for k, part in message.parts:
                if k == "content" and isinstance(part, _Template):
                    out[k] = mark(part, (2, m, -1))
                elif k == "content" and isinstance(part, _Struct) and part.kind is list:
                    out[k] = blocks(part, 2, m)
                elif isinstance(part, _Struct | _Template):
                    return None
                else:
                    out[k] = part
                if out[k] is None:
                    return None
            messages.append(out)
        params["messages"] = messages
    else:
        params["messages"] = renderer.messages
    params.update(renderer.params)
    return params, templates, places


_Shape = tuple[Callable[..., str], tuple[str, ...], int, int, tuple[int, ...] | None]


def _shapes(templates: list[_Template]) -> list[_Shape]:
    """Per template: its format, the names it reads, where `key` is among them (-1: nowhere),
    its literal characters, and how often each name is used when one is used more than once."""
    shapes = []
    for s in (t.shape for t in templates):
        if s is None:
            raise ValueError("a template without a shape")  # _skeleton takes none of them
        at = s.names.index("key") if "key" in s.names else -1
        repeated = s.counts if any(c != 1 for c in s.counts) else None
        shapes.append((s.format, s.names, at, s.literal, repeated))
    return shapes


def _texts(shapes: list[_Shape], budget: int) -> Callable[[dict[str, Any], str], list[str] | None]:
    """`texts(row, key)`: each template's output, or None when the general path must render."""

    def texts(row: dict[str, Any], key: str) -> list[str] | None:
        out = []
        for format_, names, at, literal, repeated in shapes:
            values = list(map(row.get, names))
            if at >= 0:
                values[at] = key
            try:
                joined = "".join(values)  # TypeError unless every value is a string
            except TypeError:
                return None
            if repeated is None:
                size = literal + len(joined)
            else:
                size = literal + sum(len(v) * c for v, c in zip(values, repeated, strict=True))
            if size > budget:
                return None  # the general path says why
            out.append(format_(*values))
        return out

    return texts


def _maker(
    job: Job,
    renderer: _Renderer,
    layout: _Layout,
    model: str,
    price: ModelPrice | None,
    prices: PriceTable,
    spool: JobSpool | None,
) -> Callable[[dict[str, Any], str], Row | None]:
    """`make(row, key)`: the row of an item whose every name is a string of its row (and its
    request line written to `spool`, if given)."""
    limit = renderer.max_size if renderer.max_size is not None else RENDER_MAX_SIZE_DEFAULT
    budget = renderer.budget.max_size  # type: ignore[attr-defined]
    sha256, dumps, join, encode_error = (
        hashlib.sha256,
        orjson.dumps,
        b"".join,
        orjson.JSONEncodeError,
    )
    custom_id = _custom_id_maker(job.name)
    # by the total length of the templates, with their non-ASCII characters when there are any
    estimates: dict[int | tuple[int, int], ItemEstimate | None] = {}
    pieces, order, size_base = layout.pieces, layout.order, layout.size
    plain_pieces, plain_order = layout.plain_pieces, layout.plain_order
    shapes = _shapes(layout.templates)
    spool_add = spool.add if spool is not None else None

    def estimate(
        row: dict[str, Any], key: str, length: int | tuple[int, int]
    ) -> ItemEstimate | None:
        if price is None:
            cost = None
        else:
            cost = caching.estimate(job, renderer.render(row, key), price, prices)
        estimates[length] = cost
        return cost

    texts = _texts(shapes, budget)

    if len(shapes) == 1 and shapes[0][4] is None and shapes[0][2] < 0:
        # The common case: one template, each name used once, `key` not among them.
        format_, names, _, literal, _ = shapes[0]
        head, tail = pieces
        get = itemgetter(*names) if names else lambda row: ()
        single = len(names) == 1  # itemgetter gives the value, not a tuple
        if spool is not None:
            # The line `spool.template` describes, the custom_id and fingerprint written
            # directly: both are ASCII letters, digits, `_`, `-` and `:`, never escaped.
            spool.template(*plain_pieces)
            spool_write, spool_size = spool.write, spool.size

        def make(row: dict[str, Any], key: str) -> Row | None:
            try:
                values = (get(row),) if single else get(row)
                size = literal + len("".join(values))  # TypeError unless all are strings
            except (KeyError, TypeError):
                return None
            if size > budget:
                return None  # the general path says why
            text = format_(*values)
            written = dumps(text)
            data = join((head, written, tail))
            if len(data) > limit:
                return None
            fp = FINGERPRINT_PREFIX + sha256(data).hexdigest()
            cid = custom_id(key, fp)
            length = size if text.isascii() else (size, non_ascii(text))
            try:
                cost = estimates[length]
            except KeyError:
                cost = estimate(row, key, length)
            if spool is not None:
                try:
                    line = join((b'{"key":', dumps(key), b',"custom_id":"', cid.encode(),
                                 b'","fingerprint":"', fp.encode(), b'"\x00', written, b"\n"))  # fmt: skip
                except encode_error:
                    spool.broken = True
                else:
                    spool_write(line)
                    spool_size(len(line))
            return key, cid, fp, cost, model, size_base + len(written) + len(cid)

        return make

    def make_any(row: dict[str, Any], key: str) -> Row | None:
        found = texts(row, key)
        if found is None:
            return None
        written = [dumps(t) for t in found]
        data = _between(pieces, order, written)
        if len(data) > limit:
            return None
        fp = FINGERPRINT_PREFIX + sha256(data).hexdigest()
        cid = custom_id(key, fp)
        length: int | tuple[int, int] = sum(map(len, found))
        if not all(map(str.isascii, found)):
            length = (length, sum(map(non_ascii, found)))
        cost = estimates[length] if length in estimates else estimate(row, key, length)
        if spool_add is not None:
            spool_add(key, cid, fp, _between(plain_pieces, plain_order, written))
        return key, cid, fp, cost, model, size_base + sum(map(len, written)) + len(cid)

    return make_any


def _request_maker(
    renderer: _Renderer, layout: _Layout
) -> Callable[[dict[str, Any], str], Request | None]:
    """`make(row, key)`: (key, fingerprint, params as JSON) of an item whose every name is a
    string of its row, or None when the general path must make it."""
    limit = renderer.max_size if renderer.max_size is not None else RENDER_MAX_SIZE_DEFAULT
    budget = renderer.budget.max_size  # type: ignore[attr-defined]
    sha256, dumps, join, encode_error = (
        hashlib.sha256,
        orjson.dumps,
        b"".join,
        orjson.JSONEncodeError,
    )
    shapes = _shapes(layout.templates)
    pieces, order = layout.pieces, layout.order
    plain_pieces, plain_order = layout.plain_pieces, layout.plain_order

    if len(shapes) == 1 and shapes[0][4] is None and shapes[0][2] < 0:
        # The common case: one template, each name used once, `key` not among them.
        format_, names, _, literal, _ = shapes[0]
        head, tail = pieces
        plain_head, plain_tail = plain_pieces
        get = itemgetter(*names) if names else lambda row: ()
        single = len(names) == 1  # itemgetter gives the value, not a tuple

        def make(row: dict[str, Any], key: str) -> Request | None:
            try:
                values = (get(row),) if single else get(row)
                size = literal + len("".join(values))  # TypeError unless all are strings
                if size > budget:
                    return None  # the general path says why
                written = dumps(format_(*values))
            except (KeyError, TypeError, encode_error):  # encode: a lone surrogate
                return None
            data = join((head, written, tail))
            if len(data) > limit:
                return None
            fp = FINGERPRINT_PREFIX + sha256(data).hexdigest()
            return key, fp, join((plain_head, written, plain_tail))

        return make

    texts = _texts(shapes, budget)

    def make_any(row: dict[str, Any], key: str) -> Request | None:
        found = texts(row, key)
        if found is None:
            return None
        try:
            written = [dumps(t) for t in found]
        except encode_error:
            return None
        data = _between(pieces, order, written)
        if len(data) > limit:
            return None
        fp = FINGERPRINT_PREFIX + sha256(data).hexdigest()
        return key, fp, _between(plain_pieces, plain_order, written)

    return make_any


def _between(pieces: list[bytes], order: list[int], written: list[bytes]) -> bytes:
    """The pieces of a layout joined with each template's JSON string in its place."""
    parts = [pieces[0]]
    for i, piece in zip(order, pieces[1:], strict=True):
        parts.append(written[i])
        parts.append(piece)
    return b"".join(parts)
