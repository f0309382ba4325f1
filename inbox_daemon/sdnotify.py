"""systemd's notify protocol (sd_notify(3)): one datagram per message to ``$NOTIFY_SOCKET``.

The protocol is a documented one-liner; outside systemd (no ``NOTIFY_SOCKET``) every call is a
no-op. ``watchdog_interval`` is half of ``WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]           # abstract namespace
        self._address = address
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        enabled = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if enabled else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, **fields: str | int) -> None:
        if not self._address:
            return
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(message, self._address)
            except OSError:
                pass    # systemd gone (shutting down): nothing useful to do

    def ready(self, status: str) -> None:
        self.notify(ready=1, status=status)

    def status(self, status: str) -> None:
        self.notify(status=status)

    def watchdog(self) -> None:
        self.notify(watchdog=1)

    def reloading(self) -> None:
        import time
        self.notify(reloading=1, monotonic_usec=int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6))

    def stopping(self) -> None:
        self.notify(stopping=1)
