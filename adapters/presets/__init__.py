"""Presets: how the exports of well-known commerce platforms map onto the canonical row.

A preset is data, one TOML file per platform in this folder (``shopify.toml`` …), so that
onboarding a partner on such a platform is one line of config (``preset = "shopify"``):

- ``[columns]``: per canonical column, the export's column names to try, in order. Names may
  use ``{locale}``, ``{channel}`` and ``{currency}`` (the partner's), and may be a path into a
  nested record (``priceInfo.price``, ``brands[0]``, ``images[0].uri``).
- ``[values.<canonical>]``: the platform's words for a value (Shopify's ``Status = draft`` is
  ``active = false``), matched case-insensitively.
- ``[lists]``: canonical columns the platform fills with a list; the first item is used.
- ``[attributes] key_value``: columns holding ``k=v,k=v`` pairs that become attributes.
- ``[rows]``: the platform's row model (see ``adapters.rows``): variants that inherit from the
  first row of their group (Shopify) or from a parent row (WooCommerce).
- ``delimiter``: the platform's CSV delimiter when it always uses one.

A partner's own ``columns`` always win over the preset; canonical names come last.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from config.canonical import INPUT_FIELDS


@dataclass(frozen=True)
class RowModel:
    """``model = "group"``: rows with the same ``group`` value in a row form one product; the
    first row carries the product's fields, the others inherit the ``inherit`` columns where
    they are empty; a later row with every ``variant`` column empty (an image row) is skipped;
    an empty ``key`` is derived from ``key_from`` (see ``adapters.rows``).
    ``model = "parent"``: a row naming a ``parent`` inherits the ``inherit`` columns from the
    row whose ``key`` (or ``id:<id>``) is that parent, among rows whose ``parent_type_column``
    is one of ``parent_types``."""
    model: str
    inherit: tuple[str, ...] = ()
    group: str | None = None
    variant: tuple[str, ...] = ()
    key: str | None = None
    key_from: tuple[str, ...] = ()
    key_default: str | None = None
    parent: str | None = None
    id: str | None = None
    parent_type_column: str | None = None
    parent_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    columns: Mapping[str, tuple[str, ...]]
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    lists: Mapping[str, str] = field(default_factory=dict)
    key_value: tuple[str, ...] = ()
    rows: RowModel | None = None
    delimiter: str | None = None

    def candidates(self, canonical: str, *, locale: str, channel: str, currency: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(
            c.format(locale=locale, channel=channel, currency=currency)
            for c in self.columns.get(canonical, ())))


def _load(name: str, text: str) -> Preset:
    data = tomllib.loads(text)
    unknown = set(data) - {"description", "columns", "values", "lists", "attributes", "rows", "delimiter"}
    bad = unknown | (set(data.get("columns", {})) - set(INPUT_FIELDS))
    if bad:
        raise ValueError(f"preset {name}: unknown keys {sorted(bad)}")
    # [rows] with its arrays as tuples (a RowModel is frozen); the values as the file has them
    rows: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in (data.get("rows") or {}).items()}
    return Preset(
        name=name,
        description=data.get("description", ""),
        columns={k: tuple(v) for k, v in data.get("columns", {}).items()},
        values={k: {str(a).lower(): str(b) for a, b in v.items()} for k, v in data.get("values", {}).items()},
        lists=dict(data.get("lists", {})),
        key_value=tuple(data.get("attributes", {}).get("key_value", ())),
        rows=RowModel(**rows) if rows else None,
        delimiter=data.get("delimiter"),
    )


def _load_all() -> dict[str, Preset]:
    out = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            name = entry.name[:-len(".toml")]
            out[name] = _load(name, entry.read_text(encoding="utf-8"))
    return out


PRESETS: Mapping[str, Preset] = _load_all()
