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

from adapters.presets import PRESETS, Preset
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
        then its words for a value (``draft`` → ``false``)."""
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
        return values


def preset_of(partner: PartnerConfig) -> Preset | None:
    return PRESETS.get(partner.preset) if partner.preset else None


def candidates(partner: PartnerConfig, canonical: str) -> tuple[str, ...]:
    """The partner columns tried for ``canonical``, in order: the partner's own mapping alone if
    it has one, else the preset's names (formatted for the partner), then the canonical name."""
    configured = partner.columns.get(canonical)
    if configured is not None:
        return (configured,)
    preset = preset_of(partner)
    named = preset.candidates(canonical, locale=partner.locale, channel=partner.channel,
                              currency=partner.currency) if preset else ()
    return tuple(dict.fromkeys(named + (canonical,)))


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
    source: dict[str, str] = {}
    for canonical in INPUT_FIELDS:
        tried = candidates(partner, canonical)
        for candidate in tried:
            hit = candidate if candidate in present else by_lower.get(candidate.lower())
            if hit is not None and hit not in source.values():
                source[canonical] = hit
                break
        else:
            if require and canonical in REQUIRED_FIELDS:
                raise MissingColumn(column=canonical, expected=tried[0], found=list(names))
    if "price_cents" in source and "price" in source:
        del source["price"]          # an exact integer beats a text to parse
    preset = preset_of(partner)
    key_value = tuple(c for c in (preset.key_value if preset else ()) if c in present)
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


def key_value_members(values: pa.Array) -> pa.Array:
    """``k=v,k=v`` cells as ``"k":"v",…`` JSON members, vectorized. A piece without ``=``
    continues the previous value (``material=Wool,Cotton`` keeps ``Wool,Cotton``)."""
    n = len(values)
    split = pc.split_pattern(values, ",")
    flat = pc.list_flatten(split)
    if len(flat) == 0:
        return pa.array([""] * n, pa.string())
    parent = pc.list_parent_indices(split).to_numpy()
    offsets = split.offsets.to_numpy()
    position = np.arange(len(flat)) - offsets[parent]
    starts = np.flatnonzero(pc.fill_null(pc.match_substring(flat, "="), False).to_numpy(zero_copy_only=False)
                            | (position == 0))
    pairs = pa.ListArray.from_arrays(pa.array(np.append(starts, len(flat)), pa.int32()), flat)
    joined = pc.binary_join(pairs, ",")
    kv = pc.extract_regex(joined, r"^(?P<k>[^=]*)=?(?P<v>.*)$")
    key = pc.utf8_trim_whitespace(pc.struct_field(kv, [0]))
    value = pc.utf8_trim_whitespace(pc.struct_field(kv, [1]))
    keep = pc.fill_null(pc.not_equal(key, ""), False)
    members = _member(key, value).filter(keep)
    rows = parent[starts][keep.to_numpy(zero_copy_only=False)]
    counts = np.bincount(rows, minlength=n)
    per_row = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32()), members)
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
