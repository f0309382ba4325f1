"""The files a job leaves for people: the result manifest and the diagnostics CSV.

Both are written atomically (temporary file, fsync, rename), so a reader never sees half a file.
Diagnostics stream: they are appended batch by batch while the file is read, then renamed into
place before the job's outcome commits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from adapters.validation import DIAGNOSTICS_SCHEMA
from inbox_daemon import tempfiles
from inbox_daemon.jsontext import json_text

# Spreadsheets run cells that start with these as formulas (OWASP "CSV injection").
_FORMULA_START = r"^[=+\-@\t\r]"


def manifest_path(results_dir: Path, partner: str, job_id: str) -> Path:
    return results_dir / partner / f"{job_id}.result.json"


def diagnostics_name(job_id: str) -> str:
    return f"{job_id}.diagnostics.csv"


def diagnostics_path(results_dir: Path, partner: str, job_id: str) -> Path:
    return results_dir / partner / diagnostics_name(job_id)


def manifest_bytes(manifest: dict) -> bytes:
    return (json_text(manifest, indent=2) + "\n").encode()


def write_manifest(results_dir: Path, manifest: dict) -> Path:
    """The manifest, atomically; a job's attempt without diagnostics (a requeued job that now
    went through) leaves no diagnostics file of an earlier attempt beside it."""
    path = manifest_path(results_dir, manifest["partner"], manifest["job_id"])
    tempfiles.write_atomic(path, manifest_bytes(manifest))
    if not manifest.get("diagnostics"):
        (path.parent / diagnostics_name(manifest["job_id"])).unlink(missing_ok=True)
    return path


def spreadsheet_safe(values: pa.Array) -> pa.Array:
    """Prefix cells a spreadsheet would evaluate with an apostrophe, so they stay text."""
    risky = pc.fill_null(pc.match_substring_regex(values, _FORMULA_START), False)
    return pc.if_else(risky, pc.binary_join_element_wise("'", values, ""), values)


@dataclass(frozen=True)
class _Open:
    """The temporary file diagnostics go to, from the first line on: made together, closed together."""
    tmp: Path
    fh: BinaryIO
    writer: pacsv.CSVWriter


class DiagnosticsWriter:
    """Streams diagnostics lines to ``<job_id>.diagnostics.csv``; no file at all when none came."""

    def __init__(self, folder: Path, job_id: str):
        self.path = folder / diagnostics_name(job_id)
        self._folder = folder
        self._open: _Open | None = None
        self.lines = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._open is None:
            self._folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfiles.create(self._folder, f".{self.path.name}.")
            fh = os.fdopen(fd, "wb")
            writer = pacsv.CSVWriter(fh, DIAGNOSTICS_SCHEMA, write_options=pacsv.WriteOptions(quoting_style="needed"))
            self._open = _Open(Path(tmp), fh, writer)
        safe = table.set_column(1, "sku", spreadsheet_safe(table.column("sku").combine_chunks()))
        safe = safe.set_column(3, "column", spreadsheet_safe(safe.column("column").combine_chunks()))
        safe = safe.set_column(6, "value", spreadsheet_safe(safe.column("value").combine_chunks()))
        self._open.writer.write_table(safe)
        self.lines += table.num_rows

    def finish(self) -> str | None:
        """Make the file durable under its final name; its name, or None when nothing was written."""
        if self._open is None:
            return None
        self._open.writer.close()
        self._open.fh.flush()
        os.fsync(self._open.fh.fileno())
        self._open.fh.close()
        os.replace(self._open.tmp, self.path)
        tempfiles.fsync_dir(self._folder)
        self._open = None
        return self.path.name

    def discard(self) -> None:
        if self._open is not None:
            self._open.writer.close()
            self._open.fh.close()
            os.unlink(self._open.tmp)
            self._open = None
