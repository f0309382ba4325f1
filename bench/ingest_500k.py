"""Time ``inbox-daemon ingest`` on a generated 500,000-row partner catalog (~110 MB CSV).

The file is shaped like PERFORMANCE-NOTES.md's: 10% case-variant duplicate SKUs (later ones win),
quoted commas and embedded newlines in descriptions, GTINs, a few unmapped columns. Each run is
a fresh process in a fresh state directory, as a user would run it; figures are whole-process
wall time and the child's peak RSS. Usage:

    python bench/ingest_500k.py [--rows 500000] [--runs 3] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(path: Path, rows: int, seed: int = 42) -> None:
    rnd = random.Random(seed)
    words = ["cotton", "shirt", "blue", "organic", "steel", "mug", "lamp", "oak", "wool", "linen",
             "garden", "chair", "desk", "ceramic", "glass", "leather", "canvas", "travel", "kids"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sku", "name", "description", "price", "currency", "stock", "brand", "category",
                    "gtin", "url", "color", "material", "weight_g"])
        for i in range(rows):
            n = rnd.randrange(int(rows * 0.9)) if rnd.random() < 0.1 else i
            sku = f"SKU-{n:07d}"
            if rnd.random() < 0.5:
                sku = sku.lower()
            desc = " ".join(rnd.choice(words) for _ in range(rnd.randrange(8, 20)))
            if rnd.random() < 0.2:
                desc += ", with a comma"
            if rnd.random() < 0.05:
                desc += "\nand a second line"
            gtin12 = f"{rnd.randrange(10**11, 10**12)}"
            odd = sum(int(d) for d in gtin12[0::2]) + sum(int(d) for d in gtin12[1::2]) * 3   # EAN-13 weights 1,3,1,…
            w.writerow([sku, " ".join(rnd.choice(words) for _ in range(3)).title(), desc,
                        f"{rnd.randrange(100, 100000) / 100:.2f}", "USD", rnd.randrange(0, 500),
                        rnd.choice(["Acme", "Globex", "Initech", "Umbrella"]),
                        f"Home > {rnd.choice(words).title()}", gtin12 + str((10 - odd % 10) % 10),
                        f"https://shop.example/p/{n}", rnd.choice(["red", "blue", "green"]),
                        rnd.choice(words), rnd.randrange(50, 5000)])


def run_once(exe: str, feed: Path, workdir: Path) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run([exe, "ingest", str(feed)], cwd=workdir, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        sys.exit(f"ingest failed ({done.returncode}): {done.stdout}{done.stderr}")
    # ru_maxrss of children is the max over all children so far: report it only when it grew
    return elapsed, max(peak, before) / 1024, done.stdout.splitlines()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated file and state")
    args = ap.parse_args()
    exe = shutil.which("inbox-daemon") or str(Path(sys.executable).with_name("inbox-daemon"))
    root = Path(tempfile.mkdtemp(prefix="inbox-bench-"))
    feed = root / "catalog.csv"
    t0 = time.perf_counter()
    generate(feed, args.rows)
    print(f"generated {args.rows:,} rows, {feed.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s")

    fresh, peaks = [], []
    for i in range(args.runs):
        workdir = root / f"fresh{i}"
        workdir.mkdir()
        elapsed, peak, summary = run_once(exe, feed, workdir)
        fresh.append(elapsed)
        peaks.append(peak)
        print(f"  fresh import {i + 1}: {elapsed:.2f} s, {args.rows / elapsed:,.0f} rows/s, peak RSS ≤ {peak:.0f} MB")
    print(f"  {summary}")
    # re-import of changed content over the same catalog: every row compared, few written
    workdir = root / "fresh0"
    changed = root / "catalog-v2.csv"
    shutil.copyfile(feed, changed)
    with open(changed, "a", encoding="utf-8") as dst:
        dst.write('SKU-NEW-1,New product,,1.00,USD,1,Acme,Home,,,,,\n')
    elapsed, _, summary = run_once(exe, changed, workdir)
    print(f"  re-import (1 new row, rest unchanged): {elapsed:.2f} s, {args.rows / elapsed:,.0f} rows/s")
    print(f"  {summary}")
    med = statistics.median(fresh)
    print(f"RESULT fresh import median of {args.runs}: {med:.2f} s = {args.rows / med:,.0f} rows/s; "
          f"peak RSS {max(peaks):.0f} MB")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
