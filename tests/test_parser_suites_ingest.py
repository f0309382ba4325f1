"""Public parser test suites through ``inbox-daemon ingest``, the installed console script, one
process per file, as a partner's file would go: every file ends in a manifest (succeeded,
partial or rejected) within seconds; no crash (a signal or a ``failed`` job), no hang.

Each file gets a partner whose ``sku`` and ``name`` are the file's first two columns (as
Python's csv module reads the header), so rows go all the way through mapping, validation and
the merge rather than stopping at a missing column. csv-spectrum publishes the values it
expects: those must be exactly what lands in the catalog.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import CORPUS, products, run_cli

PER_FILE_TIMEOUT = 30          # seconds; a hang fails the suite, it does not stall it
OUTCOMES = {"succeeded", "partial", "rejected"}

SUITES = {
    # suite: (folder, glob, format forced for extension-less files)
    "csvkit": ("csvkit-examples/examples", "*", None),
    "messytables": ("messytables-horror/horror", "*", None),
    "arrow-testing": ("arrow-testing/data/csv", "*", None),
    "arrow-testing-fuzzing": ("arrow-testing/data/csv/fuzzing", "clusterfuzz-*", "csv"),
    "parquet-testing-bad-data": ("parquet-testing/bad_data", "*", None),
    "json-test-suite-n": ("json-test-suite/test_parsing", "n_*.json", None),
    "csv-spectrum": ("csv-spectrum/csvs", "*.csv", None),
}


def _first_two_columns(path: Path) -> tuple[str, str] | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            line = fh.readline()
        delimiter = max(",;\t|", key=lambda d: (line.count(d), d == ","))
        header = next(csv.reader([line], delimiter=delimiter))
    except (UnicodeDecodeError, StopIteration, csv.Error, OSError):
        return None
    names = [h.strip() for h in header]
    if len(names) < 2 or not names[0] or not names[1] or names[0] == names[1] or any("\x00" in n for n in names):
        return None
    return names[0], names[1]


def _config(folder: Path, path: Path) -> Path:
    lines = ['[[partners]]', 'id = "suite"', "max_reject_ratio = 1.0"]
    columns = _first_two_columns(path)
    if columns:
        lines.append(f"columns = {{ sku = {json.dumps(columns[0])}, name = {json.dumps(columns[1])} }}")
    config = folder / "suite.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def _ingest_one(work: Path, path: Path, fmt: str | None) -> dict:
    folder = work / path.name
    folder.mkdir()
    args = ["ingest", path, "--partner", "suite", "--config", _config(folder, path), "--json"]
    if fmt:
        args += ["--format", fmt]
    try:
        done = run_cli(*args, cwd=folder, timeout=PER_FILE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"file": path.name, "outcome": "hang"}
    outcome = {"file": path.name, "code": done.returncode, "stderr": done.stderr[-300:]}
    try:
        manifest = json.loads(done.stdout)
    except ValueError:
        return {**outcome, "outcome": "no manifest"}
    on_disk = folder / "var" / "results" / "suite" / f"{manifest['job_id']}.result.json"
    written = on_disk.is_file() and json.loads(on_disk.read_text()) == manifest
    return {**outcome, "outcome": manifest["status"] if written else "manifest not written",
            "message": manifest.get("message")}


def _run_suite(tmp_path: Path, suite: str) -> list[dict]:
    folder, pattern, fmt = SUITES[suite]
    files = sorted(p for p in (CORPUS / folder).glob(pattern) if p.is_file())
    assert files, f"no files in {folder}"
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(lambda p: _ingest_one(tmp_path, p, fmt), files))
    totals = {}
    for r in results:
        totals[r["outcome"]] = totals.get(r["outcome"], 0) + 1
    print(f"{suite}: {len(results)} files: {totals}")
    return results


@pytest.mark.parametrize("suite", sorted(set(SUITES) - {"json-test-suite-n"}))
def test_every_file_of_the_suite_ends_in_a_manifest_without_crash_or_hang(corpus, tmp_path, suite):
    results = _run_suite(tmp_path, suite)
    bad = [r for r in results if r["outcome"] not in OUTCOMES or r["code"] not in (0, 4)]
    assert not bad, bad


def test_json_the_suite_says_to_reject_is_rejected_by_ingest(corpus, tmp_path):
    known_leniency = {"n_structure_whitespace_formfeed.json"}   # yajl takes \f for whitespace: "[]"
    results = _run_suite(tmp_path, "json-test-suite-n")
    assert all(r["outcome"] in OUTCOMES for r in results), [r for r in results if r["outcome"] not in OUTCOMES]
    accepted = [r["file"] for r in results if r["outcome"] != "rejected" and r["file"] not in known_leniency]
    assert not accepted
    assert all(r["code"] == 4 for r in results if r["outcome"] == "rejected")


def _spectrum_files():
    folder = CORPUS / "csv-spectrum" / "csvs"
    names = sorted(p.name for p in folder.glob("*.csv")) if folder.is_dir() else []
    return [n for n in names if (CORPUS / "csv-spectrum" / "json" / n.replace(".csv", ".json")).exists()] \
        or ["corpus-missing"]


@pytest.mark.parametrize("name", _spectrum_files())
def test_csv_spectrum_values_land_exactly(corpus, workdir, cli, name):
    path = corpus / "csv-spectrum" / "csvs" / name
    records = json.loads((corpus / "csv-spectrum" / "json" / name.replace(".csv", ".json")).read_text("utf-8"))
    first, second = _first_two_columns(path)
    (workdir / "s.toml").write_text(
        f'[[partners]]\nid = "s"\nmax_reject_ratio = 1.0\n'
        f'columns = {{ sku = {json.dumps(first)}, name = {json.dumps(second)} }}\n')
    expected = {}
    for r in records:
        sku, nm = r[first].strip(), r[second].strip()
        if sku and nm:
            rest = {k: v for k, v in r.items() if k not in (first, second) and v != ""}
            expected[sku.lower()] = (sku, nm, rest or None)

    result = cli("ingest", path, "--partner", "s", "--config", workdir / "s.toml", "--json")

    assert result.code in (0, 4) and json.loads(result.out)["rows"]["read"] == len(records)
    landed = {k: (r["sku"], r["name"], json.loads(r["attributes"]) if r["attributes"] else None)
              for k, r in products(workdir, "s").items()}
    assert landed == expected
