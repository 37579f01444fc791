"""Officer and supervisor accounts, kept on the kiosk in one small JSON file (mode 0600).

Passwords are hashed with scrypt (``hashlib.scrypt``, RFC 7914), a memory-hard KDF in the
standard library: N=2^15, r=8, p=1 is 32 MiB and about a tenth of a second per guess on a
Raspberry Pi 4, so a stolen file costs an attacker real memory per guess, and the agent needs
no compiled dependency on 32-bit ARM. (Argon2id would be as good, not clearly better, for a
file of a dozen accounts; its parameters are stored per account, so they can be raised later
without anyone's password changing.) Hashing runs one at a time: a burst of sign-ins cannot
take more than one KDF's memory on a kiosk with 1 GiB.

Lockout: ``max_failures`` wrong passwords in a row lock the account for ``lockout_s``; the
count is in the file, so a restart does not reset it. The file is rewritten whole (a
temporary file, fsync, rename) under an flock, so the agent and `kiosk-agent users` can both
change it. Passwords are never logged, stored or passed on the command line.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.errors import AgentError
from agent.security.private_files import FILE_MODE, create_private, fsync_dir, private_dir

Role = Literal["officer", "supervisor"]
ROLES: tuple[Role, ...] = ("officer", "supervisor")
NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,31}"
MIN_PASSWORD = 10
MAX_PASSWORD = 256
#: scrypt's cost: 2^15 * 8 * 128 bytes = 32 MiB of memory per hash.
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_KDF_LOCK = threading.Semaphore(1)


class AccountError(AgentError):
    """A request about accounts that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    #: Changes with every password change: sessions signed in before it end.
    stamp: str
    failures: int
    locked_until: float


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in: ``account`` when it succeeded, else ``locked_for`` seconds
    (0: a wrong name or password, the account not locked)."""

    account: Account | None
    locked_for: float = 0.0


def check_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise AccountError("a user name is 1-32 lower-case letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"a password has at most {MAX_PASSWORD} characters")
    return password


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    with _KDF_LOCK:
        return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024,
                              dklen=32)


def _new_secret(password: str) -> dict[str, Any]:
    salt = secrets.token_bytes(16)
    return {"kdf": "scrypt", **SCRYPT, "salt": base64.b64encode(salt).decode(),
            "hash": base64.b64encode(_hash(password, salt, **SCRYPT)).decode(),
            "stamp": secrets.token_hex(8)}


#: Names without an account whose failures are remembered (the oldest forgotten first).
UNKNOWN_NAMES_KEPT = 1024
#: Checked for unknown names, so a wrong name takes as long as a wrong password.
_DUMMY = {"kdf": "scrypt", **SCRYPT, "salt": base64.b64encode(b"\0" * 16).decode(), "hash": ""}


def _matches(entry: dict[str, Any], password: str) -> bool:
    try:
        expected = base64.b64decode(entry["hash"])
        got = _hash(password, base64.b64decode(entry["salt"]), int(entry["n"]), int(entry["r"]),
                    int(entry["p"]))
    except (KeyError, ValueError, TypeError):
        return False
    return bool(expected) and hmac.compare_digest(got, expected)


class Accounts:
    def __init__(self, path: Path, *, max_failures: int = 5, lockout_s: float = 300.0,
                 clock: Callable[[], float] = time.time, service_user: str | None = None) -> None:
        self.path = path
        #: Run as root (`sudo kiosk-agent users add`), the files go to this user: the agent
        #: runs as it and must read them.
        self.service_user = service_user
        self.max_failures = max_failures
        self.lockout_s = lockout_s
        self.clock = clock
        #: Names with no account, failed and locked like real ones (in memory, bounded), so
        #: "locked" does not tell a guesser which names exist.
        self._unknown: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # --- the file ---------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        private_dir(self.path.parent)
        lock_path = Path(f"{self.path}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        self._give(lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the lock

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data.get("users"), dict):
            raise AccountError(f"{self.path} is not a console accounts file (version 1)")
        return data["users"]

    def _write(self, users: dict[str, dict[str, Any]]) -> None:
        tmp = Path(f"{self.path}.tmp")
        tmp.unlink(missing_ok=True)  # left by a crash
        with os.fdopen(create_private(tmp), "w") as fh:
            json.dump({"v": 1, "users": users}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        self._give(tmp)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def _give(self, path: Path) -> None:
        if self.service_user is None or os.geteuid() != 0:
            return
        import pwd

        try:
            entry = pwd.getpwnam(self.service_user)
        except KeyError:
            return  # no service user on this machine (development)
        os.chown(path, entry.pw_uid, entry.pw_gid)

    # --- what `kiosk-agent users` does ----------------------------------------------------------

    def add(self, name: str, role: Role, password: str) -> None:
        check_name(name)
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        secret = _new_secret(check_password(password))
        with self._locked():
            users = self._read()
            if name in users:
                raise AccountError(f"user {name} exists; use `kiosk-agent users passwd {name}`")
            users[name] = {"role": role, **secret, "failures": 0, "locked_until": 0.0,
                           "created_at": self.clock()}
            self._write(users)

    def passwd(self, name: str, password: str) -> None:
        """A new password; it also unlocks the account and ends its signed-in sessions."""
        secret = _new_secret(check_password(password))
        with self._locked():
            users = self._read()
            if name not in users:
                raise AccountError(f"no user {name}")
            users[name].update(secret, failures=0, locked_until=0.0)
            self._write(users)

    def remove(self, name: str) -> None:
        with self._locked():
            users = self._read()
            if users.pop(name, None) is None:
                raise AccountError(f"no user {name}")
            self._write(users)

    def list(self) -> list[dict[str, Any]]:
        now = self.clock()
        with self._locked():
            users = self._read()
        return [{"name": n, "role": u["role"], "locked": u.get("locked_until", 0) > now,
                 "failures": u.get("failures", 0)} for n, u in sorted(users.items())]

    # --- what the console does --------------------------------------------------------------

    def get(self, name: str) -> Account | None:
        """The account as it is now (a console session checks it on every request)."""
        try:
            entry = self._read().get(name)
        except (AccountError, ValueError, OSError):
            return None
        return _account(name, entry) if entry else None

    def sign_in(self, name: str, password: str) -> SignIn:
        if not re.fullmatch(NAME_PATTERN, name) or len(password) > MAX_PASSWORD:
            _matches(_DUMMY, password[:MAX_PASSWORD])
            return SignIn(None)
        with self._locked():
            users = self._read()
            entry = users.get(name)
            now = self.clock()
            if entry is None:
                return self._unknown_name(name, password, now)
            if entry.get("locked_until", 0) > now:
                # Not even checked: a locked account cannot be guessed at, right or wrong.
                return SignIn(None, entry["locked_until"] - now)
            if _matches(entry, password):
                if entry.get("failures"):
                    entry["failures"], entry["locked_until"] = 0, 0.0
                    self._write(users)
                return SignIn(_account(name, entry))
            entry["failures"] = entry.get("failures", 0) + 1
            if entry["failures"] >= self.max_failures:
                entry["failures"], entry["locked_until"] = 0, now + self.lockout_s
            self._write(users)
            locked = entry["locked_until"] - now if entry["locked_until"] > now else 0.0
            return SignIn(None, locked)

    def _unknown_name(self, name: str, password: str, now: float) -> SignIn:
        """A wrong name answered exactly as a wrong password for a real account: the same
        hashing time, and locked after the same number of failures for the same time."""
        entry = self._unknown.pop(name, None) or {"failures": 0, "locked_until": 0.0}
        self._unknown[name] = entry  # most recently tried last
        while len(self._unknown) > UNKNOWN_NAMES_KEPT:
            self._unknown.popitem(last=False)
        if entry["locked_until"] > now:
            return SignIn(None, entry["locked_until"] - now)
        _matches(_DUMMY, password)
        entry["failures"] += 1
        if entry["failures"] >= self.max_failures:
            entry["failures"], entry["locked_until"] = 0, now + self.lockout_s
            return SignIn(None, self.lockout_s)
        return SignIn(None)


def _account(name: str, entry: dict[str, Any]) -> Account:
    return Account(name, entry["role"], entry.get("stamp", ""), entry.get("failures", 0),
                   entry.get("locked_until", 0.0))
