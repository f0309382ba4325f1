"""The CSV reader alone: how long ``read_blocks`` takes to turn a file into text blocks, on
its two paths.

- **clean**: the file as it is. A plain UTF-8 file without a NUL is read by pyarrow itself,
  as text (``adapters.readers.csvfile._clean_text`` decides, in one pass over the bytes).
- **checked**: the same file with one more row whose cell is Latin-1, not UTF-8, so the whole
  file takes the checked stream (the line guard, then each cell checked as text and the bad
  one named), as any file with one bad byte does.

Each path runs ``--runs`` times in this process, the two paths taking turns; the figures are
the medians and ranges of each pass's wall seconds and CPU seconds (``process_time``: pyarrow's
threads count), and rows per second. No catalog, no pipeline: only the reader.

    .venv/bin/python bench/reader.py FILE [--runs 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.readers import read_blocks  # noqa: E402
from adapters.readers.base import ReadOptions  # noqa: E402
from adapters.readers.csvfile import _clean_text, _line_limit  # noqa: E402
from config.model import Limits  # noqa: E402

OPTIONS = ReadOptions(limits=Limits())        # what a partner without settings gets


def one_pass(path: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, rows) of one read of ``path``."""
    wall, cpu = time.perf_counter(), time.process_time()
    rows = sum(b.batch.num_rows for b in read_blocks(path, name=path.name, fmt="csv", options=OPTIONS))
    return time.perf_counter() - wall, time.process_time() - cpu, rows


def _shown(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.3f} s ({min(seconds):.3f}–{max(seconds):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checked = Path(tmp) / "checked.csv"
        with open(args.file, "rb") as src, open(checked, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 22)
            out.write(b"\nBAD-1," + b"caf\xe9" + b"," * 11 + b"\n")     # Latin-1 in a UTF-8 file
        paths = {"clean": args.file, "checked": checked}
        passes: dict[str, list[tuple[float, float, int]]] = {label: [] for label in paths}
        for _ in range(args.runs):
            for label, path in paths.items():
                passes[label].append(one_pass(path))
        for label, path in paths.items():
            walls, cpus, rows = zip(*passes[label], strict=True)
            how = "pyarrow reads the file" if _clean_text(path, _line_limit(OPTIONS)) else "the checked stream"
            print(f"{label:8} {how:24} wall {_shown(list(walls))}, CPU {_shown(list(cpus))}, {rows[0]:,} rows, "
                  f"{rows[0] / statistics.median(walls):,.0f} rows/s", flush=True)


if __name__ == "__main__":
    main()
