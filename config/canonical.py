"""The canonical catalog row: its columns, limits and the Arrow schema batches take.

Everything a partner sends is mapped onto these names; everything the store writes comes from
batches with exactly ``CANONICAL_SCHEMA``.
"""

from __future__ import annotations

import pyarrow as pa

# Columns a partner may send (after renaming through the partner's ``columns``/preset).
INPUT_FIELDS = (
    "sku", "name", "description", "price", "price_cents", "currency", "stock", "active",
    "brand", "category", "gtin", "url", "image_url", "availability",
)
# Every row needs a sku. A file sets only the columns it carries (``carried_columns``); ``name``
# is needed only for products the catalog does not hold yet, which the merge decides.
REQUIRED_FIELDS = ("sku",)
NAMED_ON_CREATE = "name"
# ``availability`` is not stored: it only says "stock 0" when a feed has no quantity.
AVAILABILITY = {"in stock": "in stock", "instock": "in stock", "out of stock": "out of stock",
                "outofstock": "out of stock", "preorder": "preorder", "pre order": "preorder",
                "backorder": "backorder", "back order": "backorder"}
TEXT_FIELDS = ("description", "brand", "category", "url", "image_url")

# The stored columns of a product that files set (the store's merge writes these; ``carried
# columns`` of a file are a subset)
MERGED_COLUMNS = ("sku", "name", "description", "price_cents", "currency", "stock", "active", "brand",
                  "category", "gtin", "url", "image_url", "attributes")

# Longest accepted value per column, in characters.
MAX_LENGTH = {
    "sku": 255, "name": 1000, "description": 65535, "brand": 255, "category": 1000,
    "url": 2048, "image_url": 2048, "attributes": 65535,
}

# The batch the store stages: ``row`` is the partner's row number (header = 1 for CSV).
CANONICAL_SCHEMA = pa.schema([
    ("row", pa.int64()),
    ("sku", pa.string()),
    ("sku_key", pa.string()),
    ("name", pa.string()),
    ("description", pa.string()),
    ("price_cents", pa.int64()),
    ("currency", pa.string()),
    ("stock", pa.int64()),
    ("active", pa.int64()),       # 0/1: SQLite has no boolean, and ADBC ingests int64 directly
    ("brand", pa.string()),
    ("category", pa.string()),
    ("gtin", pa.string()),
    ("url", pa.string()),
    ("image_url", pa.string()),
    ("attributes", pa.string()),
])

# Active ISO 4217 codes (SIX list, 2024), plus the precious-metal and fund codes partners never
# use left out on purpose.
ISO_4217 = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP
BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB
EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR
MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB
RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD
TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG ZWL
""".split())
