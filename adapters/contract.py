"""The contract a partner's rows must meet, as JSON Schema (``inbox-daemon contract``).

Property names are the partner's own column names (their ``columns`` or preset applied), and
every value is described as the text a CSV cell holds, since that is what partners send.
"""

from __future__ import annotations

import dataclasses

from adapters.mapping import candidates, preset_of
from adapters.prices import price_pattern
from config.canonical import AVAILABILITY, MAX_LENGTH
from config.model import PartnerConfig

# canonical column -> (its description, its JSON Schema constraints, an example cell)
_FIELDS: dict[str, tuple[str, dict[str, int | str], str]] = {
    "sku": ("The partner's product id. Unique per partner, case-insensitively; the last row wins.",
            {"minLength": 1, "maxLength": MAX_LENGTH["sku"]}, "ABC-123"),
    "name": ("Product name. Needed to create a product; a row without one updates an existing product "
             "and keeps its name.", {"maxLength": MAX_LENGTH["name"]}, "Ocean Blue Shirt"),
    "description": ("Free text, HTML allowed.", {"maxLength": MAX_LENGTH["description"]},
                     "Cotton shirt with a narrow collar."),
    "price": ("Non-negative amount: 9.99, \"9.99 USD\", \"$9.99\", \"1,299.00\", \"1 299,00 €\" (the "
              "partner's decimal separator), a currency symbol or ISO code before or after.",
              {}, "19.99"),
    "currency": ("ISO 4217 code; the partner's default when absent.", {"pattern": "^[A-Za-z]{3}$"}, "USD"),
    "stock": ("Whole number of units; a negative one (oversold) is stored as 0, with a warning.",
              {"pattern": "^-?[0-9]+$"}, "12"),
    "active": ("true/false, 1/0 or yes/no; an empty cell is true; without the column a new product is "
               "active and an existing one keeps its state.",
               {"pattern": "^(?i:true|false|1|0|yes|no|y|n|t|f|on|off)$"}, "true"),
    "brand": ("Brand name.", {"maxLength": MAX_LENGTH["brand"]}, "Acme"),
    "category": ("Category path.", {"maxLength": MAX_LENGTH["category"]}, "Apparel > Shirts"),
    "gtin": ("GTIN-8/12/13/14 with a correct check digit; a wrong one is dropped with a warning.",
             {"pattern": r"^[0-9\s-]{8,18}$"}, "4006381333931"),
    "url": ("Product page.", {"maxLength": MAX_LENGTH["url"]}, "https://shop.example/p/abc-123"),
    "image_url": ("Main image.", {"maxLength": MAX_LENGTH["image_url"]}, "https://shop.example/i/abc-123.jpg"),
    "availability": ("in stock, out of stock, preorder or backorder (not stored; out of stock without "
                     "a stock value means stock 0).",
                     {"pattern": "^(?i:" + "|".join(sorted(AVAILABILITY, key=len, reverse=True)).replace(" ", "[ _-]?")
                      + ")$"}, "in stock"),
}


def partner_column(partner: PartnerConfig, canonical: str) -> str:
    return candidates(partner, canonical)[0]


def effective_mapping(partner: PartnerConfig) -> dict:
    """What ``resolve_columns`` will try for this partner, preset and overrides composed."""
    preset = preset_of(partner)
    mapping: dict[str, object] = {
        "preset": partner.preset,
        "columns": {c: list(candidates(partner, c)) for c in _FIELDS},
        # as the partner wrote them: a column, or a list of columns to try
        "overrides": {k: v[0] if len(v) == 1 else list(v) for k, v in partner.columns.items()},
    }
    if preset is not None:
        mapping["description"] = " ".join(preset.description.split())
        mapping["values"] = {k: dict(v) for k, v in preset.values.items()}
        mapping["lists"] = dict(preset.lists)
        mapping["key_value_attributes"] = list(preset.key_value)
        mapping["rows"] = ({k: v for k, v in dataclasses.asdict(preset.rows).items() if v not in (None, ())}
                           if preset.rows else None)
        mapping["record_path"] = list(preset.record_path)
        mapping["expand"] = preset.expand
    mapping["delimiter"] = partner.delimiter or (preset.delimiter if preset else None)
    mapping["header_row"] = partner.header_row
    return mapping


def contract(partner: PartnerConfig) -> dict:
    properties, example = {}, {}
    for canonical, (text, constraints, sample) in _FIELDS.items():
        column = partner_column(partner, canonical)
        if canonical == "price":          # its shape follows the partner's decimal separator
            constraints = {"pattern": price_pattern(partner.decimal_separator)}
        properties[column] = {"type": ["string", "null"], "description": f"{canonical}: {text}",
                              **constraints}
        example[column] = sample
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Catalog row accepted from partner {partner.id}",
        "description": ("One row of a CSV/TSV/JSON/NDJSON/Parquet catalog file. Columns not listed here "
                        "are kept as the product's attributes. Default currency: "
                        f"{partner.currency}; decimal separator: {partner.decimal_separator!r}; "
                        f"a file with more than {partner.max_reject_ratio:.0%} rejected rows is "
                        "rejected as a whole. A file sets only the columns it has: a stock-only file "
                        f"({partner_column(partner, 'sku')}, {partner_column(partner, 'stock')}) changes "
                        "stock and nothing else; an empty cell clears that value (never the name). "
                        "Every row needs the sku column; a file that creates products needs the name "
                        "column too."),
        "type": "object",
        "required": [partner_column(partner, "sku")],
        "properties": properties,
        "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        "examples": [example],
        "x-mapping": effective_mapping(partner),
    }
