"""Files that hold personal or biometric data are the kiosk user's alone: mode 0600 from the
first byte, folders 0700, whatever umask the agent was started with.

systemd starts the service with ``UMask=0077``, but an administrator who runs
``kiosk-agent run`` by hand, or a unit someone edited, may not: a umask of 022 would leave
every database the agent creates readable by any local user (a rogue operator logged in
at the kiosk). So the mode is set at creation, not left to the umask.

SQLite creates a database file with 0644 less the umask, but it gives the ``-wal`` and
``-shm`` files it creates beside a database the database file's own mode (and fchmods them
to it past the umask). Creating the (empty) database file 0600 before SQLite opens it
therefore makes all three 0600.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
#: The files SQLite keeps beside a database in WAL (and rollback) mode.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700; an existing folder is left as it is
    (it may be a state directory the installer made, with an owner and mode of its own)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another thread or process made it meanwhile
        os.chmod(folder, DIR_MODE)  # mkdir's mode is reduced by the umask; this is not
        # The new folder is named in its parent, and that entry survives a power cut only once
        # the parent is synced: else a cut could take the folder, and every capture committed in
        # it, away (tests/reliability/test_power_loss.py found it).
        fsync_dir(folder.parent)


def private_sqlite(path: Path) -> None:
    """Make ``path`` a 0600 file before SQLite opens it, so the database and its -wal and
    -shm files are 0600; a database an older version created wider is tightened."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        _tighten(path, lambda: os.fchmod(fd, FILE_MODE), os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    for suffix in SQLITE_SIDE_FILES:
        side = Path(f"{path}{suffix}")
        try:
            mode = side.stat().st_mode
        except FileNotFoundError:
            continue
        _tighten(side, lambda side=side: os.chmod(side, FILE_MODE), mode)


def create_private(path: Path) -> int:
    """Open a new file ``path`` for writing, mode 0600 from the first byte; fails if it exists."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # exact, whatever the umask removed
    return fd


def fsync_dir(directory: Path) -> None:
    """Make a create, rename or delete in ``directory`` durable: the directory's own entry
    survives a power cut only once the directory is fsynced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tighten(path: Path, chmod: Callable[[], None], mode: int) -> None:
    if mode & 0o777 == FILE_MODE:
        return
    try:
        chmod()
    except PermissionError:
        # Someone else's file (a root-owned database): SQLite decides whether we may use it.
        log.warning("%s is mode %o and not ours to change; make it 0600, owned by the agent's user",
                    path, mode & 0o777)
