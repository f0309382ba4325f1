"""Which platform's export a file is, told from its header by the presets' own column names.

A partner on a platform who was set up without its preset gets files that "succeed" with every
price (WooCommerce's ``Regular price``) or every stock value (Magento's ``qty``) missing, since
those columns are not the canonical names. The presets already know each platform's column
names; those that are not canonical names (``Variant SKU``, ``Regular price``, ``qty``,
``store_view_code``…) are the platform's signature. A header with at least ``MIN_MATCHES`` names
of one signature, and more than of any other, is that platform's export.

The pipeline then says so in the manifest and the log (``preset = "..."`` to set), or, for a
partner with ``preset = "auto"``, applies that preset to the file and records which.
"""

from __future__ import annotations

from functools import lru_cache

from adapters.presets import PRESETS, Preset
from config.canonical import INPUT_FIELDS
from config.model import PartnerConfig

AUTO = "auto"               # preset = "auto": chosen per file from its header
# where the presets' JSON and XML exports hold their records: a file of a partner with
# preset = "auto" is looked into there, to find the records whose names tell its platform
RECORD_PATHS: tuple[str, ...] = tuple(dict.fromkeys(path for preset in PRESETS.values() for path in preset.record_path))
MIN_MATCHES = 3             # names of a platform's signature a header must have
_NOT_COLUMNS = frozenset({"model", "key_default", "parent_types"})


@lru_cache(maxsize=256)
def _signature(name: str, locale: str, channel: str, currency: str) -> frozenset[str]:
    """The preset's column names that are not canonical ones, lower-cased."""
    preset: Preset = PRESETS[name]
    names = {column for canonical in preset.columns
             for column in preset.candidates(canonical, locale=locale, channel=channel, currency=currency)}
    model = preset.rows
    if model is not None:       # its column names, not its settings (model, key_default, parent_types)
        for field, value in vars(model).items():
            if field in _NOT_COLUMNS:
                continue
            if isinstance(value, str):
                names.add(value)
            elif isinstance(value, tuple):
                names.update(v for v in value if isinstance(v, str))
    names.update(preset.key_value)
    canonical = {f.lower() for f in INPUT_FIELDS}
    return frozenset(n.lower() for n in names if n and n.lower() not in canonical)


def detect_preset(header: list[str], partner: PartnerConfig) -> str | None:
    """The preset whose export ``header`` clearly is, or None."""
    present = {h.strip().lower() for h in header}
    scores = sorted(((len(present & _signature(name, partner.locale, partner.channel, partner.currency)), name)
                     for name in PRESETS), reverse=True)
    (best, name), (second, _) = scores[0], scores[1]
    return name if best >= MIN_MATCHES and best > second else None
