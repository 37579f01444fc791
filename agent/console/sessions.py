"""Signed-in console sessions, kept in memory only (a restart signs everyone out).

The cookie holds a random 256-bit token and nothing else; the server keeps who it is, their
role, their CSRF token and when they last did something. A session ends after
``idle_timeout_s`` without a page opened or a form sent, when its user's password changes or
the user is removed, or on sign-out. At most ``MAX_SESSIONS`` live at once; the least recently
used goes first.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SESSIONS = 64


@dataclass
class Session:
    token: str
    user: str
    role: str
    stamp: str
    csrf: str
    language: str
    last_seen: float
    data: dict[str, str] = field(default_factory=dict)


class Sessions:
    def __init__(self, idle_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, user: str, role: str, stamp: str, language: str) -> Session:
        session = Session(secrets.token_urlsafe(32), user, role, stamp, secrets.token_urlsafe(32),
                          language, self.clock())
        with self._lock:
            self._sessions[session.token] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def get(self, token: str | None, touch: bool = True) -> Session | None:
        """The live session of ``token``; ``touch``: it counts as activity (a page, a form),
        else it does not (the dashboard's live figures)."""
        if not token:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.last_seen > self.idle_timeout_s:
                del self._sessions[token]
                return None
            if touch:
                session.last_seen = now
                self._sessions.move_to_end(token)
            return session

    def end(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)

    def end_user(self, user: str) -> None:
        with self._lock:
            for token in [t for t, s in self._sessions.items() if s.user == user]:
                del self._sessions[token]
