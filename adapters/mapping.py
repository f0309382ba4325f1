"""Partner columns → canonical columns, and the leftover columns → ``attributes`` JSON text.

Which partner column feeds which canonical column is decided once per distinct header (a
``ColumnMap``); applying it to a batch is column selection plus one vectorized JSON build for
the unmapped columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adapters.presets import Preset, partner_preset
from config.canonical import INPUT_FIELDS, REQUIRED_FIELDS
from config.errors import DuplicateColumn, MissingColumn
from config.model import PartnerConfig


@dataclass(frozen=True)
class ColumnMap:
    """``source[canonical]`` is the partner column read for it; ``unmapped`` go to attributes;
    ``values``/``lists``/``key_value`` are the preset's value rules (see ``adapters.presets``)."""
    source: Mapping[str, str]
    unmapped: tuple[str, ...]
    values: Mapping[str, tuple[pa.Array, pa.Array]] = field(default_factory=dict)
    lists: Mapping[str, str] = field(default_factory=dict)
    key_value: tuple[str, ...] = ()

    def partner_column(self, canonical: str) -> str:
        return self.source.get(canonical, canonical)

    def apply_rules(self, canonical: str, values: pa.Array) -> pa.Array:
        """The platform's value conventions, whole column at a time: first item of a list,
        then its words for a value (``draft`` → ``false``; a word meant as ``""`` empties the
        cell, as a supplier's "price on request" does)."""
        separator = self.lists.get(canonical)
        if separator is not None:
            values = pc.utf8_trim_whitespace(
                pc.list_element(pc.split_pattern(pc.coalesce(values, ""), separator, max_splits=1), 0))
            values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        rule = self.values.get(canonical)
        if rule is not None:
            words, meant = rule
            mapped = pc.take(meant, pc.index_in(pc.utf8_lower(values), value_set=words))
            values = pc.coalesce(mapped, values)
            # a word meant as "" is no value ("price on request": the cell is empty)
            values = pc.if_else(pc.fill_null(pc.equal(values, ""), False), pa.scalar(None, pa.string()), values)
        return values


def preset_of(partner: PartnerConfig) -> Preset | None:
    """The preset the partner's files are read with (its own keys laid over its preset's)."""
    return partner_preset(partner)


def candidates(partner: PartnerConfig, canonical: str) -> tuple[str, ...]:
    """The partner columns tried for ``canonical``, in order: the partner's own mapping alone if
    it has one, else the preset's names (formatted for the partner), then the canonical name."""
    configured = partner.columns.get(canonical)
    if configured is not None:
        return configured
    preset = preset_of(partner)
    named = preset.candidates(canonical, locale=partner.locale, channel=partner.channel,
                              currency=partner.currency) if preset else ()
    return tuple(dict.fromkeys(named + (canonical,)))


def _unquoted(name: str) -> str:
    """``' "sku" '`` -> ``sku``: a name as its quotes meant it."""
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('""', '"').strip()
    return name


def requested_paths(partner: PartnerConfig) -> tuple[str, ...]:
    """Candidates that are paths into nested records (``brands[0]``): readers extract them."""
    return tuple(dict.fromkeys(c for f in INPUT_FIELDS for c in candidates(partner, f) if "[" in c))


def resolve_columns(names: list[str], partner: PartnerConfig, *, require: bool = True) -> ColumnMap:
    """Pick the partner column for each canonical column; raise ``MissingColumn`` for sku/name
    and ``DuplicateColumn`` when a name repeats (which of the two would be meant?)."""
    seen_names: set[str] = set()
    for n in names:
        if n in seen_names:
            raise DuplicateColumn(column=n)
        seen_names.add(n)
    present = set(names)
    by_lower: dict[str, str] = {}
    for n in names:
        by_lower.setdefault(n.lower(), n)
    for n in names:                  # ` "sku"`: a header cell whose quotes a reader kept as text
        by_lower.setdefault(_unquoted(n).lower(), n)

    def find(candidate: str) -> str | None:
        return candidate if candidate in present else by_lower.get(candidate.lower())

    source: dict[str, str] = {}
    taken: dict[str, str] = {}           # partner column -> the canonical column it feeds
    for canonical in INPUT_FIELDS:
        tried = candidates(partner, canonical)
        for candidate in tried:
            hit = find(candidate)
            # a column feeds one canonical column, unless the partner's own mapping names it
            # for two (``sku = "Name"``: a supplier without SKUs keys its products by name)
            if hit is not None and (hit not in taken or canonical in partner.columns
                                    or taken[hit] in partner.columns):
                source[canonical] = hit
                taken.setdefault(hit, canonical)
                break
        else:
            if require and canonical in REQUIRED_FIELDS:
                raise MissingColumn(column=canonical, expected=tried[0], found=list(names))
    if "price_cents" in source and "price" in source:
        del source["price"]          # an exact integer beats a text to parse
    preset = preset_of(partner)
    key_value = tuple(dict.fromkeys(hit for hit in map(find, preset.key_value if preset else ()) if hit))
    used = set(source.values()) | set(key_value)
    # paths extracted from nested records duplicate their parent column: not attributes again
    unmapped = tuple(dict.fromkeys(n for n in names if n not in used and n and "[" not in n))
    values = {}
    for canonical, rule in (preset.values.items() if preset else ()):
        values[canonical] = (pa.array(list(rule), pa.string()), pa.array(list(rule.values()), pa.string()))
    lists = {k: v for k, v in (preset.lists.items() if preset else ())}
    return ColumnMap(source=source, unmapped=unmapped, values=values, lists=lists, key_value=key_value)


_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))
_OTHER_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"


@lru_cache(maxsize=4096)
def _json_key(name: str) -> str:
    import json
    return json.dumps(name, ensure_ascii=False)


def _json_string(values: pa.Array) -> pa.Array:
    """Values as JSON string literals (without the quotes), whole column at a time."""
    if not pc.any(pc.match_substring_regex(values, r'["\\\x00-\x1f]')).as_py():
        return values                    # most attribute columns have nothing to escape
    if pc.any(pc.match_substring_regex(values, _OTHER_CONTROL)).as_py():
        # Rare: control characters other than \n \r \t need \u escapes, which no Arrow kernel
        # produces; this column is escaped by the json module instead.
        import json
        return pa.array([None if v is None else json.dumps(v, ensure_ascii=False)[1:-1]
                         for v in values.to_pylist()], pa.string())
    for raw, escaped in _ESCAPES:
        values = pc.replace_substring(values, raw, escaped)
    return values


def _member(key: pa.Array, value: pa.Array) -> pa.Array:
    """``"key":"value",`` per row (the trailing comma is trimmed once the object is joined)."""
    return pc.binary_join_element_wise('"', _json_string(key), '":"', _json_string(value), '",', "")


# Where a pair starts: at the cell's start or at a comma, ``key=``, and when the value opens with
# a quote, the whole quoted run, so that the commas and ``=`` inside it start nothing. The run is
# Magento's "Fields Enclosure" form: ``""`` is a quote, ``"|"`` separates multiselect options.
# (No capture groups: RE2 finds whole matches much faster than it fills groups.)
_PAIR_START = r'(?:^|,)[^=,]*=(?:[ \t]*"(?:[^"]|""|"\|")*")?'
_QUOTED_VALUE = r'^"(?:[^"]|""|"\|")*"$'
_ENCLOSURE_ESCAPES = r'"(")|"(\|)"'          # "" -> "   and   "|" -> |
# pair starts are marked with this character, then split on; a column that holds it has it
# escaped first (MARK -> MARK + _KEPT) and is split on MARK + _SPLIT instead
_MARK, _KEPT, _SPLIT = "\x1f", "\x1e", "\x1d"
_SEEN_BITMAP = 1 << 26            # (rows x distinct keys) up to which repeated keys are found with a bitmap


def key_value_pairs(values: pa.Array) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """``k=v,k=v`` cells as one (row, key, value) per pair, vectorized, in order; a key given
    twice in a cell keeps its last value (as Magento's importer does).

    Unquoted values run to the next comma that starts a pair, so a piece without ``=`` continues
    the previous value (``material=Wool,Cotton`` keeps ``Wool,Cotton``). A value written
    ``"..."`` (Magento's Fields Enclosure) may hold ``,`` and ``=``; its quotes are removed and
    ``""`` read as ``"``."""
    mark = _MARK
    escaped = bool(pc.any(pc.fill_null(pc.match_substring(values, _MARK), False)).as_py())
    if escaped:
        values, mark = pc.replace_substring(values, _MARK, _MARK + _KEPT), _MARK + _SPLIT
    split = pc.split_pattern(pc.replace_substring_regex(values, _PAIR_START, mark + r"\0"), mark)
    pieces = pc.list_flatten(split)
    rows = pc.list_parent_indices(split).to_numpy()
    # each cell's first piece is the text before its first pair, usually empty; every other
    # piece is a pair, starting with its comma (but the cell's first pair)
    offsets = split.offsets.to_numpy()
    first = pa.array(np.arange(len(pieces)) == offsets[rows] - offsets[0])
    if pc.any(pc.and_(first, pc.not_equal(pieces, ""))).as_py():
        # rare: text before the first pair is kept whole as a key without a value, as a piece
        # without "=" always was (an "=" is added so that every piece has one)
        pieces = pc.if_else(first, pc.binary_join_element_wise(pieces, "=", ""), pc.utf8_ltrim(pieces, characters=","))
    else:
        keep = pc.invert(first)
        rows, pieces = rows[keep.to_numpy(zero_copy_only=False)], pc.utf8_ltrim(pieces.filter(keep), characters=",")
    # key and value around the first "="
    halves = pc.split_pattern(pieces, "=", max_splits=1)
    key = pc.utf8_trim_whitespace(pc.list_element(halves, 0))
    value = pc.utf8_trim_whitespace(pc.list_element(halves, 1))
    if pc.any(pc.match_substring(values, '"')).as_py():
        quoted = pc.fill_null(pc.match_substring_regex(value, _QUOTED_VALUE), False)
        inner = pc.replace_substring_regex(pc.utf8_slice_codeunits(value, 1, -1), _ENCLOSURE_ESCAPES, r"\1\2")
        value = pc.if_else(quoted, inner, value)
    if escaped:
        key, value = (pc.replace_substring(a, _MARK + _KEPT, _MARK) for a in (key, value))
    keep = pc.not_equal(key, "")
    rows, key, value = rows[keep.to_numpy(zero_copy_only=False)], key.filter(keep), value.filter(keep)
    last = _last_of_each_key(rows, key, len(values))
    if last is not None:
        rows, key, value = rows[last], key.filter(last), value.filter(last)
    return rows, key, value


def _last_of_each_key(rows: np.ndarray, key: pa.Array, n: int) -> np.ndarray | None:
    """Mask of the last pair of each (row, key) among ``n`` rows, or None when no row repeats a key."""
    if len(key) == 0:
        return None
    codes = pc.dictionary_encode(key)
    width = len(codes.dictionary)
    pairs = rows.astype(np.int64) * width + codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    if n * width <= _SEEN_BITMAP:
        seen = np.zeros(n * width, dtype=bool)       # one flag per (row, key): the usual quick answer
        seen[pairs] = True
        if np.count_nonzero(seen) == len(pairs):
            return None
    # the first of each in reverse order is the last in order
    _, first_from_end = np.unique(pairs[::-1], return_index=True)
    if len(first_from_end) == len(pairs):
        return None
    last = np.zeros(len(pairs), dtype=bool)
    last[len(pairs) - 1 - first_from_end] = True
    return last


def key_value_members(values: pa.Array) -> pa.Array:
    """``k=v,k=v`` cells as ``"k":"v",…`` JSON members per row (see ``key_value_pairs``)."""
    n = len(values)
    rows, key, value = key_value_pairs(values)
    if len(key) == 0:
        return pa.array([""] * n, pa.string())
    counts = np.bincount(rows, minlength=n)
    per_row = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32()),
                                       _member(key, value))
    return pc.binary_join(per_row, "")


def attributes_json(batch: pa.RecordBatch, columns: tuple[str, ...],
                    key_value: tuple[str, ...] = ()) -> pa.Array:
    """``{"col": "value", ...}`` per row for the non-empty unmapped values, plus the pairs of
    ``key_value`` columns; null when there is nothing."""
    n = batch.num_rows
    pieces = []
    for name in columns:
        values = batch.column(name)
        if values.null_count == n:
            continue
        # an empty string is no value, whether the format had empty cells (CSV) or "" (JSON)
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        member = pc.binary_join_element_wise(_json_key(name) + ':"', _json_string(values), '",', "")
        pieces.append(pc.fill_null(member, ""))
    for name in key_value:
        values = batch.column(name)
        if values.null_count < n:
            pieces.append(pc.fill_null(key_value_members(values), ""))
    if not pieces:
        return pa.nulls(n, pa.string())
    # Not JoinOptions(null_handling="skip"): in pyarrow 26 it drops all-null rows from the
    # output, misaligning it with the batch. Empty members and one trailing-comma trim instead.
    body = pieces[0] if len(pieces) == 1 else pc.binary_join_element_wise(*pieces, "")
    body = pc.utf8_rtrim(body, characters=",")
    obj = pc.binary_join_element_wise("{", body, "}", "")
    return pc.if_else(pc.equal(body, ""), pa.scalar(None, pa.string()), obj)
