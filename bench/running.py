"""A real ``inbox-daemon run`` process on a fresh directory, for the benchmarks that time it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

EXE = str(Path(sys.executable).with_name("inbox-daemon"))


class RunningDaemon:
    """``inbox-daemon run`` in ``root`` with the default partner's local inbox at
    ``root/inbox/default`` and results under ``root/var/results/default``."""

    def __init__(self, root: Path, extra_config: str = ""):
        self.root = root
        self.inbox = root / "inbox" / "default"
        self.results = root / "var" / "results" / "default"
        (root / "daemon.toml").write_text('[daemon]\nstate_dir = "var"\nhealth = ""\n' + extra_config)
        self._log_path = root / "daemon.log"

    def __enter__(self) -> RunningDaemon:
        self._log = open(self._log_path, "w")
        self.proc = subprocess.Popen([EXE, "run", "--config", "daemon.toml"], cwd=self.root,
                                     stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 60
        while "daemon.started" not in self._log_path.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("daemon did not start:\n" + self._log_path.read_text()[-3000:])
            time.sleep(0.01)
        self.inbox.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()

    def manifests(self) -> set[str]:
        try:
            return {n for n in os.listdir(self.results) if n.endswith(".result.json")}
        except FileNotFoundError:
            return set()

    def wait_for(self, count: int, *, since: set[str] = frozenset(), timeout: float = 600) -> float:
        """Block until ``count`` new manifests (not in ``since``) exist; the monotonic time then.
        One manifest is looked for every 0.5 ms (a latency); many every 10 ms: listing a folder
        of a thousand manifests every 0.5 ms took most of a core from the daemon it timed."""
        deadline = time.monotonic() + timeout
        pause = 0.0005 if count == 1 else 0.01
        while len(self.manifests() - since) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(self.manifests() - since)} of {count} results after {timeout} s")
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited:\n" + self._log_path.read_text()[-3000:])
            time.sleep(pause)
        return time.monotonic()


def small_feed(name: str, rows: int = 20) -> str:
    return "sku,name,price\n" + "".join(f"{name}-{j},item {j},{j}.99\n" for j in range(rows))
