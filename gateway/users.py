"""The dashboard's operators: user names with scrypt password hashes, in one file.

    users = Users(path)                # the file beside the API token (`users_path(config)`)
    users.add("ana", "a long passphrase")           # or replace ana's password
    users.verify("ana", "a long passphrase") -> the hash's fingerprint, or None
    users.current("ana") -> the fingerprint now (None: removed), users.remove("ana"), users.names()

`meterlink gateway user add|remove|list` edits the file; the running gateway reads it again
when it changes (its size and modification time), so no restart is needed, and a session
ends when its user is removed or given a new password (the fingerprint of the hash the
session was opened with no longer matches).

The file is JSON, mode 0600, replaced atomically:

    {"users": {"ana": {"hash": "scrypt$32768$8$1$<salt>$<key>", "created": 1764915000.0}}}

scrypt (RFC 7914) is the standard library's `hashlib.scrypt`: a memory-hard KDF, no extra
dependency. N = 2^15, r = 8, p = 1 take 32 MiB and about 0.1 s on the gateway box per
login; the parameters are stored with each hash, so raising them later leaves old hashes
valid. A login for an unknown user computes a hash all the same, so the answer's timing does
not tell which user names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Optional

from meterlink_common import write_atomic

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1
SCRYPT_MAXMEM = 64 << 20
KEY_BYTES = 32
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")
RESERVED = {"api-token"}  # the name a token login is shown under
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


class UsersError(ValueError):
    """A user name, password or users file that cannot be used; the message says why."""


def users_path(config) -> Path:
    """`dashboard-users` beside the API token file."""
    from gateway.api import token_path

    return token_path(config).with_name("dashboard-users")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM,
                         dklen=KEY_BYTES)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def check_password(password: str, stored: str) -> bool:
    """True when `password` gives `stored` (a `hash_password` result); False for a hash in
    a form this gateway does not know."""
    try:
        kind, n, r, p, salt, key = stored.split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(key, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True),
                             n=int(n), r=int(r), p=int(p), maxmem=SCRYPT_MAXMEM,
                             dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def name_problem(name: str) -> Optional[str]:
    if not NAME.match(name):
        return (f"user name {name[:40]!r}: 1-32 characters a-z 0-9 . _ -, starting with a "
                f"letter or digit")
    if name in RESERVED:
        return f"user name {name!r} is reserved (API token logins are shown under it)"
    return None


def password_problem(password: str) -> Optional[str]:
    if len(password) < MIN_PASSWORD:
        return f"password: at least {MIN_PASSWORD} characters (got {len(password)})"
    if len(password) > MAX_PASSWORD:
        return f"password: at most {MAX_PASSWORD} characters"
    return None


def _fingerprint(stored: str) -> str:
    return hashlib.sha256(stored.encode()).hexdigest()[:16]


class Users:
    """The users file at `path` (it need not exist: no users)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: Optional[tuple[int, int]] = None
        self._users: dict[str, dict[str, Any]] = {}
        # a stand-in hash for unknown names: the same work as a real check
        self._dummy = hash_password(secrets.token_urlsafe(12))

    def __repr__(self) -> str:
        return f"Users({str(self.path)!r})"

    def _load(self) -> dict[str, dict[str, Any]]:
        """The users as the file holds them now (read again only when it changed)."""
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._seen, self._users = None, {}
                return self._users
            mark = (st.st_mtime_ns, st.st_size)
            if mark != self._seen:
                self._users = self._parse(self.path.read_text(encoding="utf-8"))
                self._seen = mark
            return self._users

    def _parse(self, text: str) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UsersError(f"{self.path}: not JSON: {exc}") from None
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, dict):
            raise UsersError(f"{self.path}: no \"users\" object")
        for name, entry in users.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
                raise UsersError(f"{self.path}: users.{name}: no \"hash\" string")
        return users

    def names(self) -> list[str]:
        return sorted(self._load())

    def info(self) -> dict[str, dict[str, Any]]:
        """name -> {"created": epoch s} (no hashes)."""
        return {n: {"created": u.get("created")} for n, u in sorted(self._load().items())}

    def verify(self, name: str, password: str) -> Optional[str]:
        """The fingerprint of `name`'s hash when `password` is right, else None."""
        users = self._load()
        entry = users.get(name)
        stored = entry["hash"] if entry else self._dummy
        ok = check_password(password[:MAX_PASSWORD], stored)
        return _fingerprint(stored) if ok and entry else None

    def current(self, name: str) -> Optional[str]:
        """The fingerprint of `name`'s hash now; None when there is no such user."""
        entry = self._load().get(name)
        return _fingerprint(entry["hash"]) if entry else None

    def add(self, name: str, password: str) -> bool:
        """Adds `name`, or gives it a new password; True when it is new."""
        problem = name_problem(name) or password_problem(password)
        if problem:
            raise UsersError(problem)
        users = dict(self._load())
        new = name not in users
        users[name] = {"hash": hash_password(password),
                       "created": users.get(name, {}).get("created") or round(time.time(), 3)}
        self._write(users)
        return new

    def remove(self, name: str) -> None:
        users = dict(self._load())
        if name not in users:
            raise UsersError(f"no user {name!r}" + (f" (users: {', '.join(sorted(users))})"
                                                    if users else " (there are none)"))
        del users[name]
        self._write(users)

    def _write(self, users: dict[str, dict[str, Any]]) -> None:
        """Replaces the file atomically, mode 0600 from its creation, flushed to the disk."""
        text = json.dumps({"users": users}, indent=1, sort_keys=True) + "\n"
        write_atomic(self.path, text.encode("utf-8"), mode=0o600, durable=True)
        with self._lock:
            self._seen = None
