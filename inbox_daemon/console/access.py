"""Who may use the console, and how they prove it.

On a loopback address the console needs no login (whoever reaches it is on this host, as the
CLI's users are). On any other address, or with ``require_login``, admins log in, and their
credentials come from the environment only, never from the configuration file:

- ``admins_env``: ``alice=<hash> bob=<hash>``, each hash as ``inbox-daemon console
  hash-password`` prints it (Werkzeug's salted scrypt). The name is the actor the audit trail
  records for what the admin does.
- ``token_env``: a bearer token for scripts (``Authorization: Bearer …``); its actor is ``token``.

Without usable credentials there the daemon does not start and ``config check`` fails: a console
open to the network without a login is never the result of a missing variable.
"""

from __future__ import annotations

import hmac
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from werkzeug.security import check_password_hash, generate_password_hash

from config import ConfigError
from config.model import ConsoleConfig

ADMIN_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
# checked against when the name is unknown, so a wrong name costs as long as a wrong password
_UNKNOWN = generate_password_hash("not an admin")
TOKEN_ACTOR = "token"


FAILED_LOGIN_PAUSE = 1.0     # seconds a wrong name or password waits before its answer
_hashing = threading.Lock()  # one password check at a time: logins never take every console thread's CPU
FAILED_LOGINS = 5            # wrong passwords for one name within FAILED_LOGIN_WINDOW: the name rests
FAILED_LOGIN_WINDOW = 300.0  # seconds


class LoginThrottled(Exception):
    """Too many wrong passwords for this name lately: not even checked until ``retry_after``."""

    def __init__(self, retry_after: float):
        super().__init__(f"too many failed logins for this name: try again in {retry_after:.0f} s")
        self.retry_after = retry_after


class _Failures:
    """Login attempts per name in the last ``FAILED_LOGIN_WINDOW`` that did not succeed (each is
    counted from its start). Parallel guesses each waited their pause on a thread of their own
    (48 in 9 s); past ``FAILED_LOGINS`` a name is refused at once, without a check, until its
    oldest attempt is out of the window: guessing one admin's
    password goes at five tries in five minutes, and the console's threads stay free. Names are
    kept as typed, bounded in number (an unknown name is refused like a known one)."""

    def __init__(self, clock=time.monotonic, most: int = 10_000):
        self._clock, self._most = clock, most
        self._lock = threading.Lock()
        self._times: dict[str, list[float]] = {}

    def attempt(self, name: str) -> None:
        """An attempt for ``name``, counted as a failure from its start (under the lock: guesses
        sent in parallel each count before any is checked) until it ``succeeded``."""
        now = self._clock()
        with self._lock:
            recent = [t for t in self._times.get(name, ()) if t > now - FAILED_LOGIN_WINDOW]
            if len(recent) >= FAILED_LOGINS:
                self._times[name] = recent
                raise LoginThrottled(recent[0] + FAILED_LOGIN_WINDOW - now)
            if len(self._times) >= self._most and name not in self._times:
                self._times.pop(next(iter(self._times)))
            self._times[name] = [*recent, now]

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._times.pop(name, None)


@dataclass(frozen=True)
class Credentials:
    admins: Mapping[str, str] = field(default_factory=dict)     # name -> password hash
    token: str | None = None
    failures: _Failures = field(default_factory=_Failures, compare=False)

    def check_password(self, name: str, password: str) -> bool:
        """Right or wrong, as long as each other (a salted scrypt, even for an unknown name);
        a wrong one then waits ``FAILED_LOGIN_PAUSE``, so guesses come slowly, and a name with
        too many wrong ones lately is not checked at all (``LoginThrottled``)."""
        self.failures.attempt(name)
        known = self.admins.get(name)
        with _hashing:
            ok = check_password_hash(known or _UNKNOWN, password) and known is not None
        if not ok:
            time.sleep(FAILED_LOGIN_PAUSE)
        else:
            self.failures.succeeded(name)
        return ok

    def check_token(self, presented: str) -> bool:
        return self.token is not None and hmac.compare_digest(presented.encode(), self.token.encode())


def _usable(hashed: str) -> bool:
    """A hash Werkzeug can check (a known method, its parameters): found at start, not at a login."""
    try:
        check_password_hash(hashed, "")
    except (ValueError, TypeError):
        return False
    return "$" in hashed


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def credentials(console: ConsoleConfig, environ: Mapping[str, str] = os.environ) -> Credentials:
    """The admins and token the environment gives; ``ConfigError`` when the console needs a login
    and nothing usable is there, or the admins variable cannot be read."""
    from inbox_daemon.logs import register_secret
    problems: list[str] = []
    admins: dict[str, str] = {}
    if console.admins_env and environ.get(console.admins_env, "").strip():
        for entry in environ[console.admins_env].split():
            name, sep, hashed = entry.partition("=")
            if not sep or not ADMIN_NAME.match(name) or not _usable(hashed):
                problems.append(f"console.admins_env: {console.admins_env} holds {entry.split('=')[0][:64]!r}, "
                                "not name=<hash> (inbox-daemon console hash-password prints a hash)")
                continue
            admins[name] = hashed
    token = environ.get(console.token_env, "").strip() if console.token_env else ""
    if token:
        register_secret(token)
        if len(token) < 16:
            problems.append(f"console.token_env: the token in {console.token_env} is shorter than 16 characters")
    if console.address and console.login and not admins and not token:
        named = " or ".join(n for n in (console.admins_env, console.token_env) if n)
        problems.append(f"console.address {console.address}: admins must log in there, but {named} "
                        "is not set in the environment")
    if problems:
        raise ConfigError(problems)
    return Credentials(admins=admins, token=token or None)
