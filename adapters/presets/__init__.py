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
  first row of their group (Shopify) or from a parent row (WooCommerce), rows that are no
  product of their own (Magento's store-view rows).
- ``delimiter``: the platform's CSV delimiter when it always uses one.
- ``apostrophe_guard``: the platform writes an apostrophe before values a spreadsheet would turn
  into numbers or formulas (``'0123``, ``'-1``); it is removed before judging.

A partner's own ``columns`` always win over the preset; canonical names come last.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

from config.canonical import INPUT_FIELDS

ROW_MODELS = ("flat", "group", "parent")        # the shapers of ``adapters.rows.SHAPERS``


@dataclass(frozen=True)
class RowModel:
    """Every model: a row with a value in any ``skip_when_set`` column is skipped and counted
    (Magento's store-view rows, which carry only a store view's overrides).
    ``model = "flat"``: one row per product, nothing else to shape.
    ``model = "group"``: rows with the same ``group`` value in a row form one product; the
    first row carries the product's fields, the others inherit the ``inherit`` columns where
    they are empty; a later row with every ``variant`` column empty (an image row) is skipped;
    an empty ``key`` is derived from ``key_from`` (see ``adapters.rows``).
    ``model = "parent"``: a row naming a ``parent`` (one whose ``parent_type_column`` is one of
    ``child_types``, when given) inherits the ``inherit`` columns from the row whose ``key`` (or
    ``id:<id>``) is that parent, among rows whose ``parent_type_column`` is one of
    ``parent_types``, wherever that row is in the file; at most ``max_held`` rows wait for a
    parent that comes later (None: ``adapters.rows.MAX_HELD``; 0: none waits)."""
    model: str
    inherit: tuple[str, ...] = ()
    skip_when_set: tuple[str, ...] = ()
    group: str | tuple[str, ...] | None = None     # the group column; a tuple: the first one present
    variant: tuple[str, ...] = ()
    key: str | None = None
    key_from: tuple[str, ...] = ()
    key_default: str | None = None
    parent: str | None = None
    id: str | None = None
    parent_type_column: str | None = None
    parent_types: tuple[str, ...] = ()
    child_types: tuple[str, ...] = ()
    max_held: int | None = None

    @property
    def groups(self) -> tuple[str, ...]:
        """The group columns to try, in order (``group`` may name one or several)."""
        return (self.group,) if isinstance(self.group, str) else (self.group or ())


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
    apostrophe_guard: bool = False      # the platform writes '0123 and '-1 (a spreadsheet guard)

    def candidates(self, canonical: str, *, locale: str, channel: str, currency: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(
            c.format(locale=locale, channel=channel, currency=currency)
            for c in self.columns.get(canonical, ())))


def _load(name: str, text: str) -> Preset:
    data = tomllib.loads(text)
    unknown = set(data) - {"description", "columns", "values", "lists", "attributes", "rows", "delimiter",
                           "apostrophe_guard"}
    bad = unknown | (set(data.get("columns", {})) - set(INPUT_FIELDS))
    if bad:
        raise ValueError(f"preset {name}: unknown keys {sorted(bad)}")
    return Preset(
        name=name,
        description=data.get("description", ""),
        columns={k: tuple(v) for k, v in data.get("columns", {}).items()},
        values={k: {str(a).lower(): str(b) for a, b in v.items()} for k, v in data.get("values", {}).items()},
        lists=dict(data.get("lists", {})),
        key_value=tuple(data.get("attributes", {}).get("key_value", ())),
        rows=_row_model(name, data.get("rows") or {}),
        delimiter=data.get("delimiter"),
        apostrophe_guard=bool(data.get("apostrophe_guard", False)),
    )


def _row_model(name: str, table: dict[str, Any]) -> RowModel | None:
    """``[rows]`` with its arrays as tuples (a RowModel is frozen); the values as the file has them."""
    if not table:
        return None
    unknown = set(table) - {f.name for f in fields(RowModel)}
    if unknown:
        raise ValueError(f"preset {name}: [rows] unknown keys {sorted(unknown)}")
    if table.get("model") not in ROW_MODELS:
        raise ValueError(f"preset {name}: rows.model must be one of {list(ROW_MODELS)}, not {table.get('model')!r}")
    held = table.get("max_held")
    if held is not None and (not isinstance(held, int) or isinstance(held, bool) or held < 0):
        raise ValueError(f"preset {name}: rows.max_held must be a whole number >= 0, not {held!r}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    return RowModel(**values)


def _load_all() -> dict[str, Preset]:
    out = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            name = entry.name[:-len(".toml")]
            out[name] = _load(name, entry.read_text(encoding="utf-8"))
    return out


PRESETS: Mapping[str, Preset] = _load_all()
