"""Partner columns → canonical columns, and the leftover columns → ``attributes`` JSON text.

Which partner column feeds which canonical column is decided once per distinct header (a
``ColumnMap``); applying it to a batch is column selection plus one vectorized JSON build for
the unmapped columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import pyarrow as pa
import pyarrow.compute as pc

from adapters.canonical import INPUT_FIELDS, REQUIRED_FIELDS
from adapters.presets import PRESETS
from config.model import PartnerConfig
from inbox_daemon.errors import DuplicateColumn, MissingColumn


@dataclass(frozen=True)
class ColumnMap:
    """``source[canonical]`` is the partner column read for it; ``unmapped`` go to attributes."""
    source: Mapping[str, str]
    unmapped: tuple[str, ...]

    def partner_column(self, canonical: str) -> str:
        return self.source.get(canonical, canonical)


def resolve_columns(names: list[str], partner: PartnerConfig, *, require: bool = True) -> ColumnMap:
    """Pick the partner column for each canonical column; raise ``MissingColumn`` for sku/name
    and ``DuplicateColumn`` when a name repeats (which of the two would be meant?)."""
    seen_names: set[str] = set()
    for n in names:
        if n in seen_names:
            raise DuplicateColumn(column=n)
        seen_names.add(n)
    present = {}
    for n in names:
        present.setdefault(n, n)
    by_lower: dict[str, str] = {}
    for n in names:
        by_lower.setdefault(n.lower(), n)
    preset = PRESETS.get(partner.preset or "", {})
    source: dict[str, str] = {}
    for field in INPUT_FIELDS:
        configured = partner.columns.get(field)
        if configured is not None:
            candidates: tuple[str, ...] = (configured,)
        else:
            candidates = preset.get(field, ()) + (field,)
        for candidate in candidates:
            hit = present.get(candidate) or by_lower.get(candidate.lower())
            if hit is not None and hit not in source.values():
                source[field] = hit
                break
        else:
            if require and field in REQUIRED_FIELDS:
                raise MissingColumn(column=field, expected=candidates[0], found=list(names))
    if "price_cents" in source and "price" in source:
        del source["price"]          # an exact integer beats a text to parse
    used = set(source.values())
    unmapped = tuple(dict.fromkeys(n for n in names if n not in used and n))
    return ColumnMap(source=source, unmapped=unmapped)


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


def attributes_json(batch: pa.RecordBatch, columns: tuple[str, ...]) -> pa.Array:
    """``{"col": "value", ...}`` per row for the non-empty unmapped values; null when none."""
    n = batch.num_rows
    if not columns:
        return pa.nulls(n, pa.string())
    pieces = []
    for name in columns:
        values = batch.column(name)
        if values.null_count == n:
            continue
        # an empty string is no value, whether the format had empty cells (CSV) or "" (JSON)
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        member = pc.binary_join_element_wise(_json_key(name) + ':"', _json_string(values), '",', "")
        pieces.append(pc.fill_null(member, ""))
    if not pieces:
        return pa.nulls(n, pa.string())
    # Not JoinOptions(null_handling="skip"): in pyarrow 26 it drops all-null rows from the
    # output, misaligning it with the batch. Empty members and one trailing-comma trim instead.
    body = pieces[0] if len(pieces) == 1 else pc.binary_join_element_wise(*pieces, "")
    body = pc.utf8_rtrim(body, characters=",")
    obj = pc.binary_join_element_wise("{", body, "}", "")
    return pc.if_else(pc.equal(body, ""), pa.scalar(None, pa.string()), obj)
