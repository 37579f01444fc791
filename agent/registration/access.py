"""Who may call the local API: the registration app, and nothing else on the kiosk.

Loopback is not a boundary. Every web page the kiosk's browser shows can send requests to
127.0.0.1 (a cross-origin POST needs no CORS approval to be delivered), and a page whose
host name the attacker re-points at 127.0.0.1 (DNS rebinding) can read the answers too.
So every request, on every endpoint, must pass all of these (docs/security.md, "The local
API"):

* ``Host`` is a loopback name and the port the API listens on: a rebound name is refused.
* No ``Origin`` header at all (the app is not a browser; even ``null`` comes from sandboxed
  or file:// pages) and ``Sec-Fetch-Site`` absent, ``none`` or ``same-origin``: a browser
  marks what a page sends, and the API serves no page of its own.
* The app's credential: a bearer token over TCP, compared in constant time; over a Unix
  socket the peer's uid or gid (SO_PEERCRED) or the same token.

Nothing answers with CORS headers, so no browser lets a page read an answer either way.
"""

from __future__ import annotations

import hmac
import os
import socket
import stat
import struct
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from agent.errors import PermanentError
from agent.registration.http import ApiError

#: Fewer characters than this cannot be a token `make install` made (43: 32 random bytes).
MIN_TOKEN_CHARS = 32
#: Fetch metadata values a page cannot use to reach us: no page, or our own origin.
SAFE_FETCH_SITES = frozenset({"none", "same-origin"})


class TokenFileError(PermanentError):
    """The token file is missing, unreadable, too open or too short; the API stays off."""


def read_token(path: Path) -> bytes:
    """The token in ``path``, refusing a file that others than the app's group could read."""
    fix = (
        f"create it with `sudo make install` (or: a random token of {MIN_TOKEN_CHARS}+ characters, "
        "`chmod 0640`, group of the registration app), then restart the agent"
    )
    try:
        # One open file for the checks and the read: the file checked is the file read.
        # O_NONBLOCK: a FIFO put in its place must not hang the agent's start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TokenFileError(f"local_api.token_file {path} does not exist: {fix}") from None
    except OSError as exc:
        raise TokenFileError(f"local_api.token_file {path} cannot be read: {exc.strerror}; it must be "
                             "readable by the agent's user (owner kiosk, mode 0640)") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenFileError(f"local_api.token_file {path} is not a regular file: {fix}")
        mode = stat.S_IMODE(info.st_mode)
        # Group read is the point (the app's group); anything more hands the token to others.
        if mode & 0o037:
            raise TokenFileError(
                f"local_api.token_file {path} is too open (mode {mode:04o}): other local users could "
                f"take the token; run `chmod 0640 {path}` (readable by the agent and the app's group "
                "only) and restart the agent"
            )
        token = file.read(4096).strip()
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or any(c <= 32 for c in token):
        raise TokenFileError(
            f"local_api.token_file {path} does not hold a token (one line of {MIN_TOKEN_CHARS} or "
            f"more printable characters): {fix}"
        )
    return token


def peer_ids(sock: socket.socket) -> tuple[int, int] | None:
    """(uid, gid) of the process at the other end of a Unix socket, as the kernel saw it connect."""
    if sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", raw)
    return uid, gid


class Access:
    """The checks every request passes before any endpoint runs (``check``)."""

    def __init__(self, token: bytes | None, allowed_uids: list[int], allowed_gids: list[int]) -> None:
        self._token = token
        self._uids, self._gids = frozenset(allowed_uids), frozenset(allowed_gids)
        self._hosts: frozenset[str] | None = None  # None: a Unix socket, no Host to check

    def listening_on(self, names: Iterable[str], port: int) -> None:
        """The Host values that name this API: ``names`` and localhost, with the port it listens on."""
        bare = {n.lower() for n in ("localhost", *names)}
        bare = {f"[{n}]" if ":" in n else n for n in bare}  # an IPv6 literal in a Host header
        hosts = {f"{n}:{port}" for n in bare}
        if port == 80:  # the port a client may leave out
            hosts |= bare
        self._hosts = frozenset(hosts)

    def check(self, handler: BaseHTTPRequestHandler) -> None:
        self._check_host(handler)
        self._check_browser(handler)
        self._check_credentials(handler)

    def _check_host(self, handler: BaseHTTPRequestHandler) -> None:
        if self._hosts is None:
            return
        values = handler.headers.get_all("Host") or []
        if len(values) != 1 or values[0].strip().lower() not in self._hosts:
            shown = ", ".join(repr(v) for v in values) or "none"
            raise ApiError(
                403, "forbidden",
                f"Host {shown} does not name this API ({', '.join(sorted(self._hosts))}); "
                "requests through other names are refused (DNS rebinding)",
            )

    def _check_browser(self, handler: BaseHTTPRequestHandler) -> None:
        # A page in the kiosk's browser is exactly who must not get in: refuse whatever a
        # browser marks as sent by a page, whatever the origin says (null included).
        origin = handler.headers.get_all("Origin")
        if origin:
            raise ApiError(
                403, "forbidden",
                f"requests from web pages are refused (Origin {origin[0]!r}); the local API serves "
                "the registration app only, which sends no Origin header",
            )
        site = [v.strip().lower() for v in handler.headers.get_all("Sec-Fetch-Site") or []]
        if any(v not in SAFE_FETCH_SITES for v in site):
            raise ApiError(
                403, "forbidden",
                f"requests from web pages are refused (Sec-Fetch-Site {site[0]!r}); the local API "
                "serves the registration app only",
            )

    def _check_credentials(self, handler: BaseHTTPRequestHandler) -> None:
        peer = peer_ids(handler.connection)
        if peer is not None and (peer[0] in self._uids or peer[1] in self._gids):
            return
        if self._token is not None:
            if self._bearer_matches(handler):
                return
            raise ApiError(
                401, "unauthorized",
                "missing or wrong token: send Authorization: Bearer <the token in local_api.token_file>",
                headers={"WWW-Authenticate": 'Bearer realm="kiosk-agent"'},
            )
        raise ApiError(
            403, "forbidden",
            f"user {peer[0] if peer else '?'} (group {peer[1] if peer else '?'}) is not in "
            "local_api.allowed_uids or allowed_gids",
        )

    def _bearer_matches(self, handler: BaseHTTPRequestHandler) -> bool:
        assert self._token is not None
        values = handler.headers.get_all("Authorization") or []
        if len(values) != 1:
            return False
        scheme, _, given = values[0].strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant time: the comparison must not tell a caller how much of its guess is right.
        return hmac.compare_digest(given.strip().encode("latin-1"), self._token)
