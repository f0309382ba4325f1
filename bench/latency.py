"""Drop-to-result latency of the running daemon for small files renamed into a local inbox.

Starts ``inbox-daemon run`` on a fresh directory, then, one file at a time, drops a small CSV
and measures the time until its result manifest exists, for the two ways uploaders finish a
file: renamed within the inbox (``.feed.csv.part`` → ``feed.csv``, seen as a move) and moved in
from another folder (seen as a bare create). Prints the median of each.
Usage: python bench/latency.py [--files 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="inbox-latency-"))
    (root / "daemon.toml").write_text('[daemon]\nstate_dir = "var"\nhealth = ""\n')
    exe = str(Path(sys.executable).with_name("inbox-daemon"))
    log = open(root / "daemon.log", "w")
    proc = subprocess.Popen([exe, "run", "--config", "daemon.toml"], cwd=root, stdout=log, stderr=log)
    inbox, results = root / "inbox" / "default", root / "var" / "results" / "default"
    try:
        deadline = time.monotonic() + 30
        while "daemon.started" not in (root / "daemon.log").read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit("daemon did not start:\n" + (root / "daemon.log").read_text())
            time.sleep(0.01)
        for how, staging in (("renamed within the inbox", inbox), ("moved in from another folder", root)):
            samples = []
            for i in range(args.files):
                name = f"{how.split()[0]}{i}.csv"
                staged = staging / f".{name}.part"
                staged.write_text("sku,name,price\n" + "".join(f"{name}-{j},item {j},{j}.99\n" for j in range(20)))
                before = set(os.listdir(results)) if results.exists() else set()
                t0 = time.perf_counter()
                os.rename(staged, inbox / name)
                while True:
                    now = set(os.listdir(results)) if results.exists() else set()
                    if any(n.endswith(".result.json") for n in now - before):
                        break
                    time.sleep(0.0005)
                samples.append((time.perf_counter() - t0) * 1000)
            print(f"  {how}: " + " ".join(f"{ms:.0f}" for ms in samples) + " ms")
            print(f"RESULT {how}: drop-to-result median of {len(samples)} = {statistics.median(samples):.1f} ms "
                  f"(min {min(samples):.1f}, max {max(samples):.1f})")
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
