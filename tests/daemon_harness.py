"""Run ``inbox-daemon run`` as a real subprocess and wait on what it writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

EXE = str(Path(sys.executable).with_name("inbox-daemon"))


def wait_for(condition, timeout: float = 20.0, interval: float = 0.02, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class DaemonProcess:
    def __init__(self, root: Path, config: str, *, once: bool = False, env: dict | None = None):
        self.root = root
        self.config_path = root / "daemon.toml"
        self.config_path.write_text(config)
        self.log_path = root / f"daemon-{time.monotonic_ns()}.log"
        args = [EXE, "run", "--config", str(self.config_path)] + (["--once"] if once else [])
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=root, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        if not once:
            try:
                self.wait_event("daemon.started")
            except BaseException:
                self.close()        # no test holds it yet: kill it and close its log here
                raise

    def events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "raw", "line": line})
        return out

    def wait_event(self, name: str, timeout: float = 20.0, **match) -> dict:
        def found():
            for e in self.events():
                if e.get("event") == name and all(e.get(k) == v for k, v in match.items()):
                    return e
            if self.proc.poll() is not None and name not in ("daemon.stopped",):
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log_path.read_text()}")
            return None
        return wait_for(found, timeout, what=f"log event {name} {match}")

    @property
    def health(self) -> str:
        return self.wait_event("daemon.started")["health"]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def wait(self, timeout: float = 60.0) -> int:
        """For ``--once`` runs: the exit code, once it drained and exited."""
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


def healthz(address: str) -> tuple[int, dict]:
    """``/healthz`` of a daemon: (HTTP status, its JSON), 503 included."""
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def manifests(root: Path, partner: str = "default") -> list[dict]:
    folder = root / "var" / "results" / partner
    if not folder.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.result.json"))]


def wait_manifests(root: Path, count: int, partner: str = "default", timeout: float = 20.0, **match) -> list[dict]:
    def enough():
        found = [m for m in manifests(root, partner) if all(m.get(k) == v for k, v in match.items())]
        return found if len(found) >= count else None
    return wait_for(enough, timeout, what=f"{count} manifest(s) {match} for {partner}")


def config(*, inboxes: str = "", partners: str = '[[partners]]\nid = "default"\n', daemon: str = "") -> str:
    return (f'[daemon]\nstate_dir = "var"\nworkers = 2\nhealth = "127.0.0.1:0"\nretry_base = "50ms"\n'
            f'stop_timeout = "1s"\n{daemon}\n{partners}\n'
            + (inboxes or '[[inboxes]]\npartner = "default"\nkind = "local"\npath = "inbox/default"\n'
                          'settle = "500ms"\n'))
