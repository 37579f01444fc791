"""One process at a time on a state folder: the agent's queue, the receiver's store.

Two agents on one queue fight over its sequence numbers and over the broker's client id
(each connection throws the other off); two receivers on one store race on the same files.
So whoever writes there first takes an exclusive ``flock`` on ``<folder>/.lock`` and keeps the
file open until it exits. The kernel drops the lock when the process dies, however it dies
(SIGKILL, power cut): there is never a stale lock to clear by hand. The file holds the
holder's pid, so the one refused can say who is in the way.

Standard library only: ``kiosk-agent run`` takes the lock before its heavy imports.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from agent.errors import PermanentError
from agent.security.private_files import private_dir

LOCK_NAME = ".lock"


class StateLocked(PermanentError):
    """Another live process holds the folder; ``pid`` is 0 when it could not be read."""

    def __init__(self, folder: Path, pid: int, what: str) -> None:
        self.folder, self.pid = folder, pid
        who = f"another {what} (pid {pid})" if pid else f"another {what}"
        super().__init__(f"{who} is using {folder}; stop it first (or point this one at another "
                         "state folder)")


class StateLock:
    """An exclusive lock on a folder, held from ``acquire`` until ``release`` or exit."""

    def __init__(self, folder: Path, what: str = "kiosk-agent", name: str = LOCK_NAME) -> None:
        """``name``: the lock file's name, for folders several processes share by design,
        each under its own name (receivers of one share group; see receiver/cli.py)."""
        self.folder = folder
        self.path = folder / name
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock or raise StateLocked at once (never waits: a second copy should
        say so and exit, not queue up behind the first)."""
        # 0700, and its name synced into its parent: the queue made inside it must not vanish
        # with the folder at a power cut (tests/reliability/test_power_loss_agent.py).
        private_dir(self.folder)
        fd = _open_lock(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateLocked(self.folder, pid, self.what) from None
            raise
        # Ours now: the pid goes in for the message a second copy prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (no unlink race)
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(folder: Path, name: str = LOCK_NAME) -> int | None:
    """The pid holding ``folder``'s lock, or None when it is free (read-only commands use
    this to choose how to read)."""
    path = folder / name
    try:
        fd = _open_lock(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            # A shared probe: it fails only while someone holds the exclusive lock.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _read_pid(fd)
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _open_lock(path: Path, flags: int) -> int:
    """The lock file, refused unless a regular file: through a symlink planted there the pid
    write would truncate its target (the queue), and opening a FIFO waits for a writer."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise OSError(errno.ELOOP, f"{path} is a symbolic link, not a lock file; remove it") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file, not a lock file; remove it")
    return fd


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0
