"""Requests from the agent's user to the privileged updater, through a folder in the agent's
state folder (the one place the agent may write under ProtectSystem=strict).

The agent (or ``update apply`` run by an operator on the kiosk) leaves ``pending.bundle`` and
then ``pending.json``; kiosk-agent-updater.path sees pending.json and starts the updater,
which copies the bundle into its own root-owned folder before verifying it (the agent's user
could change its copy at any moment), and leaves ``result.json``. The folder is writable by
the agent's user, so the updater, running as root, opens nothing there through a symlink.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from agent.update.bundle import BundleError
from agent.update.layout import Tree, fsync_dir, write_durably

PENDING_BUNDLE, PENDING, RESULT = "pending.bundle", "pending.json", "result.json"
#: Where a remote ``update.apply`` downloads to before the hash is checked.
DOWNLOAD = ".download.bundle"


def spool_dir(state_dir: Path) -> Path:
    return state_dir / "updates"


def request(spool: Path, bundle: Path) -> None:
    spool.mkdir(mode=0o700, exist_ok=True)
    (spool / RESULT).unlink(missing_ok=True)
    tmp = spool / ".pending.bundle.tmp"
    shutil.copyfile(bundle, tmp)
    os.replace(tmp, spool / PENDING_BUNDLE)
    write_durably(spool / PENDING, json.dumps({"requested_at": time.time()}).encode())


def hand_over(spool: Path, downloaded: Path) -> bool:
    """Move a checked download (in ``spool``) into place for the updater; False when a
    request is already waiting (it is not replaced under the updater's feet)."""
    if (spool / PENDING).exists():
        return False
    (spool / RESULT).unlink(missing_ok=True)
    os.replace(downloaded, spool / PENDING_BUNDLE)
    write_durably(spool / PENDING, json.dumps({"requested_at": time.time(), "remote": True}).encode())
    return True


def take(spool: Path, tree: Tree, max_bytes: int) -> Path | None:
    """The pending bundle, copied to the updater's folder; None when nothing is pending."""
    if not (spool / PENDING).exists():
        return None
    dest = tree.work / "incoming.bundle"
    try:
        fd = os.open(spool / PENDING_BUNDLE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BundleError(f"the pending bundle cannot be opened: {exc.strerror}") from None
    finally:
        # Taken or refused, the request is gone: a PathExists= unit would otherwise start
        # the updater again and again for it.
        for name in (PENDING, PENDING_BUNDLE):
            (spool / name).unlink(missing_ok=True)
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(src.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            raise BundleError("the pending bundle is not a regular file of an acceptable size")
        with dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    return dest


def write_result(spool: Path, result: dict[str, Any]) -> None:
    """As root in a folder another user may write: never follow a link planted there."""
    tmp = spool / ".result.json.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(json.dumps(result).encode())
        os.fsync(f.fileno())
    os.replace(tmp, spool / RESULT)
    fsync_dir(spool)


def wait_result(spool: Path, timeout_s: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return json.loads((spool / RESULT).read_bytes())
        except (FileNotFoundError, ValueError):
            time.sleep(0.5)
    return None
