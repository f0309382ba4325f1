"""XML: a repeated record element (``rss/channel/item``, ``feed/entry``, ``products/product``)
streamed with lxml's pull parser, one record at a time, each made a dict and batched by
``record_blocks``. Memory stays flat: a record is cleared once read, with what came before it.

**Where the records are.** ``record_path`` names the record element by the local names (the
namespace is ignored) from the root element down: ``rss/channel/item``. Of several alternatives
the first one the document has is used; the first MiB of the document decides, or else the first
alternative met further on. A document without one is refused with what it holds instead:
``the XML document's root <catalog> holds repeated <product> elements: set record_path =
"catalog/product"``. A document in which an alternative's parent element is there but holds no record (a feed
with no items) has no rows.

**A record as columns.** Child elements are named by their local name, so ``<g:price>`` and
``<price>`` are both ``price`` (Google feeds with or without the ``g:`` prefix read the same):

- an element with text only is its text, without the whitespace around it (CDATA is text; an
  empty element is an empty cell); its attributes are named beside it, ``price@currency``;
- an element with child elements is a nested record, its columns ``shipping.country``; its
  attributes are inside it, like the record's own: ``@id`` (``shipping.@zone``);
- mixed content (text between child elements, ``Hello <b>bold</b> world``) is its whole text;
- an element with attributes but no text (Atom's ``<link href="..."/>``) is its attributes only
  (``link@href``), no empty ``link`` beside them;
- an element repeated in its parent is a list (JSON text, or rows with ``expand``); the
  attributes of repeated text elements are lists beside it, in the same order, null where one
  has none;
- two children of one element with the same local name in different namespaces (Atom's ``<id>``
  and ``<g:id>``) are not one list. The first one with a prefix (an extension's element, Google's
  product data) keeps the bare name (``id``); the others are named with their prefix as the
  document writes it, ``:id`` for one without (the default namespace's). Records with and
  without the collision so give the same column the same meaning.

**Safe by construction.** A document that declares a DTD (``<!DOCTYPE``) is refused before the
parser sees it, and again by the parser's own account: no entity is declared, expanded or loaded,
nothing is read from disk or network (``resolve_entities``, ``load_dtd`` and network access are
off anyway). libxml2's limits stay on (no ``huge_tree``): a text node of more than 10,000,000
bytes and nesting deeper than 256 levels are refused by the parser; a record nested deeper than
``MAX_DEPTH`` levels is refused here.

**Broken feeds repaired on the byte stream.** Exports often write a raw ``&`` (``Tom & Jerry``)
and HTML's named characters (``&nbsp;``, ``&eacute;``), which XML does not have. Since a document
without a DTD can declare no entity, any ``&`` that does not start one of XML's five predefined
references or a character reference (``&#233;``, ``&#xE9;``) can only be text: an HTML name is
rewritten to its character reference (``&nbsp;`` -> ``&#160;``) and anything else to ``&amp;``,
so ``&foo;`` reads as the text ``&foo;``. CDATA sections are left alone (an ``&`` there is text
already). The filter works on bytes, so it needs an encoding in which ``&``, ``<`` and ``]`` are
their ASCII bytes and never part of another character: UTF-8, the ISO-8859 and Windows code pages,
Shift_JIS, GBK, Big5 and the like; UTF-16 and UTF-32 documents are transcoded to UTF-8 first.
Otherwise the encoding is the XML declaration's (or UTF-8), read by libxml2. Whitespace before
the XML declaration, which libxml2 refuses, is dropped.
"""

from __future__ import annotations

import codecs
import html.entities
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lxml import etree

from adapters.readers.base import Block, ReadOptions, open_stream, record_blocks
from config.errors import UnreadableFile

MAX_DEPTH = 64                 # levels below a record; deeper is no catalog record
READ_SIZE = 1 << 18            # bytes fed to the parser at a time: the tree never holds more
SAMPLE_BYTES = 1 << 20         # the start of the document that decides the record path
MAX_REFERENCE = 64             # bytes after an "&" that a reference can take (HTML names: 31)
MAX_PROLOG = 1 << 20           # bytes before the root element searched for a DOCTYPE
_WS = " \t\r\n"                # XML's whitespace: a no-break space is text
_CDATA_OPEN, _CDATA_CLOSE = b"<![CDATA[", b"]]>"
_DTD_REFUSED = ("the document declares a DTD (<!DOCTYPE>), which is refused: no entities or "
                "external resources are read")

# "&" not starting a predefined or a character reference, with the name that follows, if any
_LOOSE_AMPERSAND = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos|#[0-9]+|#[xX][0-9A-Fa-f]+);)(?:([A-Za-z][A-Za-z0-9]{0,31});)?")
# HTML's named characters as XML character references
_HTML_NAMES = {name[:-1].encode("ascii"): "".join(f"&#{ord(c)};" for c in chars).encode("ascii")
               for name, chars in html.entities.html5.items() if name.endswith(";")}


def _repair_reference(match: re.Match[bytes]) -> bytes:
    name = match.group(1)
    if name is None:
        return b"&amp;"
    return _HTML_NAMES.get(name) or b"&amp;" + name + b";"


def _repair(data: bytes) -> bytes:
    return _LOOSE_AMPERSAND.sub(_repair_reference, data) if b"&" in data else data


def _prolog_end(data: bytes) -> int | None:
    """Where the root element starts in ``data`` (the document's first bytes), or None when
    ``data`` ends before that is known. Refuses a DOCTYPE on the way."""
    pos = 3 if data.startswith(codecs.BOM_UTF8) else 0
    while True:
        while pos < len(data) and data[pos] in b" \t\r\n":
            pos += 1
        rest = data[pos:pos + 9]
        if rest.startswith(b"<?"):
            end = data.find(b"?>", pos + 2)
        elif rest.startswith(b"<!--"):
            end = data.find(b"-->", pos + 4)
        elif rest.startswith(b"<!DOCTYPE"):
            raise UnreadableFile(reason=_DTD_REFUSED, row=None)
        elif len(rest) < 9 and any(m.startswith(rest) for m in (b"<?", b"<!--", b"<!DOCTYPE")):
            return None
        else:
            return pos
        if end < 0:
            return None
        pos = end + 2


class _Cleaner:
    """The document's bytes on their way to the parser: a DTD refused in the prolog, loose
    ``&`` repaired outside CDATA sections. Whatever could be cut at a chunk's end (a reference,
    a CDATA marker, the prolog) waits for the next chunk."""

    def __init__(self) -> None:
        self._held = b""
        self._in_prolog = True
        self._in_cdata = False

    def feed(self, chunk: bytes, *, final: bool) -> bytes:
        data = self._held + chunk if self._held else chunk
        self._held = b""
        out: list[bytes] = []
        pos = 0
        if self._in_prolog:
            end = _prolog_end(data)
            if end is None and len(data) < MAX_PROLOG and not final:
                self._held = data
                return b""
            self._in_prolog = False
            out.append(data[:end or 0])
            pos = end or 0
        while pos < len(data):
            if self._in_cdata:
                end = data.find(_CDATA_CLOSE, pos)
                if end < 0:
                    cut = len(data) if final else max(pos, len(data) - 2)   # "]]" may end it
                    out.append(data[pos:cut])
                    self._held = data[cut:]
                    break
                out.append(data[pos:end + 3])
                self._in_cdata, pos = False, end + 3
                continue
            start = data.find(_CDATA_OPEN, pos)
            if start >= 0:
                out.append(_repair(data[pos:start]))
                out.append(_CDATA_OPEN)
                self._in_cdata, pos = True, start + len(_CDATA_OPEN)
                continue
            cut = len(data)
            if not final:
                amp = data.rfind(b"&", max(pos, cut - MAX_REFERENCE))
                if amp >= 0:
                    cut = amp
                lt = data.rfind(b"<", max(pos, cut - len(_CDATA_OPEN) + 1), cut)
                if lt >= 0 and _CDATA_OPEN.startswith(data[lt:cut]):
                    cut = lt
            out.append(_repair(data[pos:cut]))
            self._held = data[cut:]
            break
        return b"".join(out)


def _document(stream) -> tuple[Iterator[bytes], bool]:
    """The document in ``READ_SIZE`` chunks as the parser gets them, cleaned, and whether it was
    UTF-16 or UTF-32 and is now UTF-8 (the parser must then be told so)."""
    decoder = _wide_decoder(stream.peek(4)[:4])
    cleaner = _Cleaner()

    def chunks() -> Iterator[bytes]:
        started = False
        while True:
            raw = stream.read(READ_SIZE)
            final = not raw
            data = decoder.decode(raw, final).encode("utf-8") if decoder is not None else raw
            if not started:
                # whitespace before the XML declaration (a PHP script's stray newline ahead of
                # its feed) is no part of the document: libxml2 would refuse the declaration
                data = data.lstrip(b" \t\r\n")
                started = bool(data)
            cleaned = cleaner.feed(data, final=final)
            if cleaned:
                yield cleaned
            if final:
                return
    return chunks(), decoder is not None


_WIDE = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (b"<\x00\x00\x00", "utf-32-le"), (b"\x00\x00\x00<", "utf-32-be"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
         (b"<\x00?\x00", "utf-16-le"), (b"\x00<\x00?", "utf-16-be"))


def _wide_decoder(head: bytes):
    """A decoder for a UTF-16 or UTF-32 document (told by its BOM or its first ``<``), else None."""
    for start, encoding in _WIDE:
        if head.startswith(start):
            decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
            return _Bomless(decoder) if encoding in ("utf-16", "utf-32") else decoder
    return None


class _Bomless:
    """An incremental decoder whose output loses the BOM the codec keeps for some inputs."""

    def __init__(self, decoder) -> None:
        self._decoder, self._first = decoder, True

    def decode(self, data: bytes, final: bool = False) -> str:
        text = self._decoder.decode(data, final)
        if self._first and text:
            self._first = False
            text = text.lstrip("\ufeff")
        return text


def _parser(*, events: tuple[str, ...], tag: str | None = None, wide: bool) -> etree.XMLPullParser:
    return etree.XMLPullParser(
        events=events, tag=tag, encoding="utf-8" if wide else None,
        resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False,
        remove_comments=True, remove_pis=True, collect_ids=False)


def _syntax_error(exc: etree.XMLSyntaxError, row: int | None) -> UnreadableFile:
    """libxml2's error as a reason a partner can act on, with its line and column."""
    message = re.sub(r", line \d+, column \d+$", "", (exc.msg or str(exc)).strip()).strip()
    line, column = exc.position if exc.position else (0, 0)
    where = f"line {line}, column {column}: " if line else ""
    if exc.code == etree.ErrorTypes.ERR_RESOURCE_LIMIT and "depth" in message:
        reason = f"the XML document nests elements deeper than 256 levels ({where}{message})"
    elif exc.code == etree.ErrorTypes.ERR_RESOURCE_LIMIT and "Text node" in message:
        reason = f"an XML text node is longer than 10,000,000 bytes, the most one value may hold ({where}{message})"
    elif "CData section too big" in message:
        reason = f"an XML CDATA section is longer than 10,000,000 bytes, the most one value may hold ({where}{message})"
    elif exc.code == etree.ErrorTypes.ERR_RESOURCE_LIMIT:
        reason = f"the XML document exceeds a parser limit ({where}{message})"
    elif exc.code == etree.ErrorTypes.ERR_DOCUMENT_EMPTY or not line:
        reason = "the file is not an XML document (no root element)" if not line else f"malformed XML at {where}{message}"
    else:
        reason = f"malformed XML at {where}{message}"
    return UnreadableFile(reason=reason, row=row)


# -- the record path -----------------------------------------------------------------------------

_LOCAL: dict[Any, str] = {}          # a tag as lxml gives it -> its local name


def _local(tag: Any) -> str:
    """``{http://base.google.com/ns/1.0}price`` -> ``price`` (cached: a feed has few tags)."""
    name = _LOCAL.get(tag)
    if name is None:
        name = tag.rpartition("}")[2] if isinstance(tag, str) else ""
        if len(_LOCAL) < 10_000:
            _LOCAL[tag] = name
    return name


def _steps(path: str) -> tuple[str, ...]:
    return tuple(step for step in path.strip().strip("/").split("/") if step)


def _check_doctype(root) -> None:
    """The parser's own account of a DTD: the byte filter looks at the first MiB only."""
    if root.getroottree().docinfo.doctype:
        raise UnreadableFile(reason=_DTD_REFUSED, row=None)


def _choose_path(path: Path, *, compressed: bool, options: ReadOptions) -> tuple[str, ...] | None:
    """The record path to read: the first alternative seen in the first ``SAMPLE_BYTES``, else
    the first one met further on. None: the document has no records (and no other repeats)."""
    guessed = not options.record_path
    # a guess names an element under the root: the root itself is no record (``products`` is
    # where a JSON export keeps its list, and the root of many a feed that is no platform's)
    shortest = 2 if guessed else 1
    wanted = [s for s in map(_steps, options.record_path or options.guess_paths) if len(s) >= shortest]
    seen: set[tuple[str, ...]] = set()
    counts: dict[tuple[str, ...], int] = {}
    stack: list[str] = []
    fed, root, sampled = 0, "", False

    def decide() -> tuple[str, ...] | None:
        return next((steps for steps in wanted if steps in seen), None)

    with open_stream(path, compressed=compressed, options=ReadOptions(limits=options.limits)) as stream:
        chunks, wide = _document(stream)
        parser = _parser(events=("start", "end"), wide=wide)
        try:
            for chunk in chunks:
                parser.feed(chunk)
                fed += len(chunk)
                for event, elem in parser.read_events():
                    if event == "end":
                        stack.pop()
                        parent = elem.getparent()
                        elem.clear()
                        if parent is not None:
                            parent.remove(elem)
                        continue
                    if not stack:
                        _check_doctype(elem)
                        root = _local(elem.tag)
                    stack.append(_local(elem.tag))
                    key = tuple(stack)
                    if len(key) <= 1 + max(map(len, wanted), default=0):
                        seen.add(key)
                    if not sampled and len(key) > 1:
                        counts[key] = counts.get(key, 0) + 1
                if not sampled and fed >= SAMPLE_BYTES:
                    sampled = True
                    if not wanted:
                        break
                if sampled and (chosen := decide()) is not None:
                    return chosen
            else:
                if not fed:
                    raise UnreadableFile(reason="the file is empty", row=None)
                parser.close()
        except etree.XMLSyntaxError as exc:
            raise _syntax_error(exc, row=None) from exc
    if (chosen := decide()) is not None:
        return chosen
    repeated = [key for key, n in counts.items() if n > 1]
    if any(len(steps) > 1 and steps[:-1] in seen for steps in wanted):
        return None                      # the records' parent is there, with no records in it
    raise UnreadableFile(reason=_no_records(root, [] if guessed else wanted, repeated), row=None)


def _no_records(root: str, wanted: list[tuple[str, ...]], repeated: list[tuple[str, ...]]) -> str:
    """What the document holds, and the key to set: the shallowest repeated element."""
    if wanted:
        tried = " or ".join(f'"{"/".join(s)}"' for s in wanted)
        start = f"no records at record_path {tried}: "
    else:
        start = "record_path is not set: "
    if not repeated:
        return (f"{start}the XML document's root <{root}> holds no repeated element: set record_path "
                f'to the path of the record element from the root ("{root}/...")')
    best = min(repeated, key=len)        # dicts keep the order met: the first of the shallowest
    return (f"{start}the XML document's root <{root}> holds repeated <{best[-1]}> elements: "
            f'set record_path = "{"/".join(best)}"')


# -- records -------------------------------------------------------------------------------------

def _is_mixed(elem) -> bool:
    """Text between an element's children (``Hello <b>bold</b>``): its text, not a record."""
    text = elem.text
    if text and not text.isspace():
        return True
    return any(child.tail and not child.tail.isspace() for child in elem)


def _text_of(elem) -> str | None:
    return "".join(elem.itertext()).strip(_WS) or None


def _record(elem, depth: int) -> dict:
    """An element with children as a dict (see the module docstring for the naming rule). The
    usual record, no name twice, is made here in one pass; ``_grouped`` does the rest. This runs
    for every record: lxml's accessors are called once per child, the local names looked up."""
    if depth > MAX_DEPTH:
        raise _TooDeep()
    out: dict[str, Any] = {}
    attributes = elem.items()
    if attributes:
        for key, value in attributes:
            out["@" + (_LOCAL.get(key) or _local(key))] = value
    textless: list[str] | None = None
    for child in elem:
        tag = child.tag
        name = _LOCAL.get(tag) or _local(tag)
        if name in out:
            return _grouped(elem, depth)
        if len(child):
            if not _is_mixed(child):
                out[name] = _record(child, depth + 1)
                continue
            out[name] = _text_of(child)
        else:
            text = child.text
            out[name] = (text.strip(_WS) or None) if text else None
        attributes = child.items()
        if attributes:
            for key, value in attributes:
                out[f"{name}@{_LOCAL.get(key) or _local(key)}"] = value
            if out[name] is None:
                textless = [name] if textless is None else [*textless, name]
    if textless:
        for name in textless:
            del out[name]
    return out


def _grouped(elem, depth: int) -> dict:
    """``_record`` for an element with a name twice: lists, and prefixes across namespaces."""
    out: dict[str, Any] = {}
    for key, value in elem.attrib.items():
        out["@" + _local(key)] = value
    groups: dict[str, list] = {}
    for child in elem:
        groups.setdefault(_local(child.tag), []).append(child)
    for local, children in groups.items():
        first: dict[Any, Any] = {}               # each namespace's first element of the name
        for child in children:
            first.setdefault(child.tag, child)
        if len(first) == 1:
            _put(out, local, children, depth)
            continue
        # Atom's <id> beside <g:id>: one name per namespace, the bare one for the first
        # element with a prefix (an extension's, the product data), the others qualified
        winner = next((tag for tag, child in first.items() if child.prefix), next(iter(first)))
        for tag, child in first.items():
            same = [c for c in children if c.tag == tag]
            _put(out, local if tag == winner else f"{child.prefix or ''}:{local}", same, depth)
    return out


def _put(out: dict[str, Any], name: str, children: list, depth: int) -> None:
    """One element, or a list of them, named ``name`` in ``out``, attributes beside text values."""
    values: list[Any] = []
    texts: list = []                     # the children whose value is text: their attributes go beside
    for child in children:
        if len(child) and not _is_mixed(child):
            values.append(_record(child, depth + 1))
            continue
        values.append(_text_of(child) if len(child) else ((child.text or "").strip(_WS) or None))
        texts.append(child)
    single = len(children) == 1
    attributes: dict[str, list] = {}
    for i, child in enumerate(texts):
        for key, value in child.attrib.items():
            attributes.setdefault(f"{name}@{_local(key)}", [None] * len(texts))[i] = value
    if not (attributes and len(texts) == len(values) and all(v is None for v in values)):
        out[name] = values[0] if single else values
    for key, column in attributes.items():
        out[key] = column[0] if single else column


class _TooDeep(Exception):
    pass


def _records(path: Path, steps: tuple[str, ...], *, compressed: bool, options: ReadOptions,
             counter: list[int]) -> Iterator[dict]:
    """The record elements at ``steps`` as dicts, in document order; ``counter[0]`` is the
    number of records made so far (for the row an error names)."""
    ancestors = steps[-2::-1]            # the parent's local name first, the root's last
    with open_stream(path, compressed=compressed, options=options) as stream:
        chunks, wide = _document(stream)
        parser = _parser(events=("end",), tag="{*}" + steps[-1], wide=wide)
        try:
            for chunk in chunks:
                parser.feed(chunk)
                for _, elem in parser.read_events():
                    parent = up = elem.getparent()
                    for name in ancestors:
                        if up is None or _local(up.tag) != name:
                            break
                        up = up.getparent()
                    else:
                        if up is None:           # the path starts at the root
                            try:
                                record = _record(elem, 1)
                            except _TooDeep:
                                raise UnreadableFile(reason=f"an XML record nests elements deeper than "
                                                            f"{MAX_DEPTH} levels", row=counter[0] + 1) from None
                            counter[0] += 1
                            yield record
                            elem.clear()
                            while elem.getprevious() is not None:
                                del parent[0]
            parser.close()
        except etree.XMLSyntaxError as exc:
            raise _syntax_error(exc, row=counter[0] + 1) from exc


def read_xml(path: Path, *, name: str, compressed: bool, options: ReadOptions) -> Iterator[Block]:
    try:
        steps = _choose_path(path, compressed=compressed, options=options)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UnreadableFile(reason=f"cannot read the file: {exc}", row=None) from exc
    if steps is None:
        return
    counter = [0]
    try:
        yield from record_blocks(_records(path, steps, compressed=compressed, options=options,
                                          counter=counter), options)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UnreadableFile(reason=f"cannot read the file: {exc}", row=counter[0] + 1) from exc
