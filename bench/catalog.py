"""The benchmark catalog: a deterministic partner CSV of any size, a changed snapshot of it, and
the same rows as an XML feed (``cached_xml``).

Shaped like ``../shared/PERFORMANCE-NOTES.md``'s file: ~10% case-variant duplicate SKUs (later
ones win), quoted commas and embedded newlines in descriptions, valid GTINs, unmapped columns
that become attributes. The same ``rows`` and ``seed`` always give the same bytes, so a cached
file is reused across runs (``cached``).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from xml.sax.saxutils import escape

HEADER = ["sku", "name", "description", "price", "currency", "stock", "brand", "category",
          "gtin", "url", "color", "material", "weight_g"]
WORDS = ["cotton", "shirt", "blue", "organic", "steel", "mug", "lamp", "oak", "wool", "linen",
         "garden", "chair", "desk", "ceramic", "glass", "leather", "canvas", "travel", "kids"]
GENERATOR_VERSION = 1           # bump when the bytes generate() writes change
CHANGE_VERSION = 2              # bump when the bytes change() writes change
XML_VERSION = 1                 # bump when the bytes to_xml() writes change
XML_RECORD_PATH = "catalog/product"


def _gtin(rnd: random.Random) -> str:
    gtin12 = f"{rnd.randrange(10**11, 10**12)}"
    weighted = sum(int(d) for d in gtin12[0::2]) + sum(int(d) for d in gtin12[1::2]) * 3   # EAN-13: 1,3,1,…
    return gtin12 + str((10 - weighted % 10) % 10)


def generate(path: Path, rows: int, seed: int = 42, *, order: str = "sorted") -> None:
    """``order``: "sorted" writes the keys in order (sku-0000000, sku-0000001, …); "random"
    writes key number n as the n-th of a shuffled 0 … rows-1, as most exports come, with the
    same rows and duplicates otherwise."""
    number = list(range(rows))
    if order == "random":
        random.Random(seed + 1).shuffle(number)
    rnd = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for i in range(rows):
            n = rnd.randrange(int(rows * 0.9)) if rnd.random() < 0.1 else i
            sku = f"SKU-{number[n]:07d}"
            if rnd.random() < 0.5:
                sku = sku.lower()
            desc = " ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(8, 20)))
            if rnd.random() < 0.2:
                desc += ", with a comma"
            if rnd.random() < 0.05:
                desc += "\nand a second line"
            w.writerow([sku, " ".join(rnd.choice(WORDS) for _ in range(3)).title(), desc,
                        f"{rnd.randrange(100, 100000) / 100:.2f}", "USD", rnd.randrange(0, 500),
                        rnd.choice(["Acme", "Globex", "Initech", "Umbrella"]),
                        f"Home > {rnd.choice(WORDS).title()}", _gtin(rnd),
                        f"https://shop.example/p/{n}", rnd.choice(["red", "blue", "green"]),
                        rnd.choice(WORDS), rnd.randrange(50, 5000)])


def change(src: Path, dst: Path, fraction: float, seed: int = 7) -> int:
    """Copy ``src`` to ``dst`` with ``fraction`` of its rows changed (a new price and stock):
    the next day's snapshot of the same catalog. Returns how many rows were changed."""
    rnd = random.Random(seed)
    changed = 0
    with open(src, newline="", encoding="utf-8") as fin, open(dst, "w", newline="", encoding="utf-8") as fout:
        reader, writer = csv.reader(fin), csv.writer(fout)
        writer.writerow(next(reader))
        for record in reader:
            if rnd.random() < fraction:
                # a day's repricing: -20 % to +25 % (a random new price would be a price shock,
                # and the file held for approval)
                record[3] = f"{max(float(record[3]) * rnd.uniform(0.8, 1.25), 0.01):.2f}"
                record[5] = str(rnd.randrange(0, 500))
                changed += 1
            writer.writerow(record)
    return changed


def cached(folder: Path, rows: int, *, changed: float | None = None, seed: int = 42, order: str = "sorted") -> Path:
    """The generated file for ``rows`` (and its ``changed`` snapshot), made once per folder."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / f"catalog-{rows}-s{seed}-v{GENERATOR_VERSION}{'-random' if order == 'random' else ''}.csv"
    if not base.exists():
        tmp = base.with_suffix(".tmp")
        generate(tmp, rows, seed, order=order)
        tmp.rename(base)
    if changed is None:
        return base
    snapshot = base.with_name(f"{base.stem}-changed{changed:g}-c{CHANGE_VERSION}.csv")
    if not snapshot.exists():
        tmp = snapshot.with_suffix(".tmp")
        change(base, tmp, changed)
        tmp.rename(snapshot)
    return snapshot


def changed_records(folder: Path, rows: int, *, changed: float, seed: int = 42, order: str = "sorted") -> Path:
    """Only the records of ``cached`` 's ``changed`` snapshot that differ from its base file,
    under the same header, made once per folder: what a partner sending a delta would send,
    and all a delta of the snapshot against the file before could hand the daemon to apply."""
    base = cached(folder, rows, seed=seed, order=order)
    snapshot = cached(folder, rows, changed=changed, seed=seed, order=order)
    delta = snapshot.with_name(f"{snapshot.stem}-delta.csv")
    if not delta.exists():
        tmp = delta.with_suffix(".tmp")
        with open(base, newline="", encoding="utf-8") as old, open(snapshot, newline="", encoding="utf-8") as new, \
                open(tmp, "w", newline="", encoding="utf-8") as out:
            before, after, writer = csv.reader(old), csv.reader(new), csv.writer(out)
            next(before)
            writer.writerow(next(after))
            writer.writerows(record for was, record in zip(before, after, strict=True) if was != record)
        tmp.rename(delta)
    return delta


def to_xml(src: Path, dst: Path) -> None:
    """The CSV's rows as ``<catalog><product>`` elements named like its columns, ``sku`` an
    attribute (``@sku``) and ``price`` carrying its currency (``price@currency``), the way a
    partner's XML export is shaped; read with ``record_path = "catalog/product"``."""
    with open(src, newline="", encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as out:
        reader = csv.reader(fin)
        header = next(reader)
        sku, price, currency = header.index("sku"), header.index("price"), header.index("currency")
        rest = [(i, name) for i, name in enumerate(header) if i not in (sku, price, currency)]
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n<catalog>\n')
        for r in reader:
            fields = "".join(f"<{name}>{escape(r[i])}</{name}>" for i, name in rest)
            out.write(f'<product sku="{escape(r[sku])}"><price currency="{r[currency]}">{r[price]}</price>'
                      f"{fields}</product>\n")
        out.write("</catalog>\n")


def cached_xml(folder: Path, rows: int, *, seed: int = 42) -> Path:
    """``cached`` 's catalog as an XML feed (``to_xml``), made once per folder."""
    base = cached(folder, rows, seed=seed)
    xml = base.with_name(f"{base.stem}-x{XML_VERSION}.xml")
    if not xml.exists():
        tmp = xml.with_suffix(".tmp")
        to_xml(base, tmp)
        tmp.rename(xml)
    return xml
