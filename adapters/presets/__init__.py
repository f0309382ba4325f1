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

import functools
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from config.canonical import INPUT_FIELDS
from config.model import PartnerConfig

ROW_MODELS = ("flat", "group", "parent")        # the shapers of ``adapters.rows.SHAPERS``


@dataclass(frozen=True)
class RowModel:
    """Every model: a row with a value in any ``skip_when_set`` column is skipped and counted
    (Magento's store-view rows, which carry only a store view's overrides), and so is a row with
    every ``skip_when_empty`` column empty (the section and total rows of a price list).
    ``model = "flat"``: one row per product, nothing else to shape.
    ``model = "group"``: rows with the same ``group`` value in a row form one product; the
    first row carries the product's fields, the others inherit the ``inherit`` columns where
    they are empty; a later row with every ``variant`` column empty (an image row) is skipped;
    an empty ``key`` is derived from ``key_from`` (see ``adapters.rows``). With
    ``group_continues``, a row whose group cell is empty belongs to the group above (Vendure
    names a product on its first row only).
    ``model = "parent"``: a row naming a ``parent`` (one whose ``parent_type_column`` is one of
    ``child_types``, when given) inherits the ``inherit`` columns from the row whose ``key`` (or
    ``id:<id>``) is that parent, among rows whose ``parent_type_column`` is one of
    ``parent_types``, wherever that row is in the file; at most ``max_held`` rows wait for a
    parent that comes later (None: ``adapters.rows.MAX_HELD``; 0: none waits). A row whose
    ``key`` is empty is keyed ``id:<id>``."""
    model: str
    inherit: tuple[str, ...] = ()
    skip_when_set: tuple[str, ...] = ()
    skip_when_empty: tuple[str, ...] = ()   # a row with all of these empty is no product (a price list's section rows)
    group: str | tuple[str, ...] | None = None     # the group column; a tuple: the first one present
    group_continues: bool = False       # an empty group cell continues the group above (Vendure)
    variant: tuple[str, ...] = ()
    key: str | tuple[str, ...] | None = None       # the key column; a tuple: the first one present
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

    @property
    def keys(self) -> tuple[str, ...]:
        """The key columns to try, in order (``key`` may name one or several: CSV's and JSON's)."""
        return (self.key,) if isinstance(self.key, str) else (self.key or ())


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
    record_path: tuple[str, ...] = ()   # JSON/XML: where the records are, alternatives in order
    expand: str | None = None           # JSON/XML: the nested list whose elements are rows

    def candidates(self, canonical: str, *, locale: str, channel: str, currency: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(
            c.format(locale=locale, channel=channel, currency=currency)
            for c in self.columns.get(canonical, ())))


def _load(name: str, text: str) -> Preset:
    data = tomllib.loads(text)
    unknown = set(data) - {"description", "columns", "values", "lists", "attributes", "rows", "delimiter",
                           "apostrophe_guard", "record_path", "expand"}
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
        record_path=_strings(data.get("record_path", ())),
        expand=data.get("expand"),
    )


def _strings(value: str | list[str]) -> tuple[str, ...]:
    """A key that takes one name or a list of alternatives, as a tuple."""
    return (value,) if isinstance(value, str) else tuple(value)


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


def partner_preset(partner: PartnerConfig) -> Preset | None:
    """The preset a partner's files are read with: its ``preset`` (or ``preset_file``) with the
    partner's own keys laid over it (``[values]`` word by word, ``[lists]`` column by column;
    ``[rows]``, ``key_value``, ``record_path`` and ``expand`` whole); None when it has none of
    them. Raises ValueError for a preset file or a row model that cannot be used (the
    configuration is checked with it at load: ``inbox_daemon.settings``)."""
    own = {"values": partner.values, "lists": partner.lists, "key_value": partner.key_value,
           "rows": partner.rows, "record_path": partner.record_path, "expand": partner.expand}
    if partner.preset_file is None and partner.preset not in PRESETS and not any(own.values()):
        return None
    return _composed(partner.preset, partner.preset_file, json.dumps(own, sort_keys=True), partner.id)


@functools.lru_cache(maxsize=256)
def _composed(preset: str | None, preset_file: str | None, own_json: str, partner_id: str) -> Preset:
    """``partner_preset`` for hashable arguments: composed once per partner configuration."""
    own = json.loads(own_json)
    if preset_file is not None:
        path = Path(preset_file)
        try:
            base = _load(path.stem, path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"preset_file {preset_file}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"preset_file {preset_file}: not a valid TOML file: {exc}") from None
    else:
        base = PRESETS.get(preset or "") or Preset(name=f"partner {partner_id}", description="", columns={})
    values = {k: dict(v) for k, v in base.values.items()}
    for canonical, words in own["values"].items():
        values[canonical] = {**values.get(canonical, {}), **words}
    return replace(
        base, values=values, lists={**base.lists, **own["lists"]},
        key_value=tuple(own["key_value"]) or base.key_value,
        rows=_row_model(f"of partner {partner_id}", own["rows"]) if own["rows"] else base.rows,
        record_path=tuple(own["record_path"]) or base.record_path,
        expand=own["expand"] or base.expand)


def _load_all() -> dict[str, Preset]:
    out = {}
    for entry in sorted(resources.files(__package__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            name = entry.name[:-len(".toml")]
            out[name] = _load(name, entry.read_text(encoding="utf-8"))
    return out


PRESETS: Mapping[str, Preset] = _load_all()
