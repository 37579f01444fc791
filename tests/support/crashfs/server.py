"""The crashfs process: mounts the file system and answers cuts on a control socket.

    python -m tests.support.crashfs.server MOUNTPOINT CONTROL_SOCKET

A request is one JSON line; ``{"cut": DIR, "seed": N}`` writes the two images a power cut
at this instant could leave, ``DIR/durable`` (only what was synced) and ``DIR/random`` (the
synced state plus a seeded random part of the rest, see model.py), and answers with the
call counts so far. The images are taken under the volume lock: no system call is half
applied in them. The writer under test keeps running; it never sees the cut.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mfusepy import FUSE

from tests.support.crashfs.fs import CrashOps
from tests.support.crashfs.model import Volume


class CrashFUSE(FUSE):
    """mfusepy passes ftruncate on without its file handle; with ``nopath`` the path is None
    then, so the handle is passed on here."""

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(None if path is None else path.decode(), length, fh)  # type: ignore[no-any-return]


def write_image(files: dict[str, tuple[int, bytes | None]], dest: Path) -> None:
    dest.mkdir(parents=True)
    for rel, (mode, content) in sorted(files.items()):  # parents sort before their children
        path = dest / rel
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        os.chmod(path, mode)


def handle(ops: CrashOps, request: dict[str, object]) -> dict[str, object]:
    if "cut" in request:
        rnd = random.Random(int(str(request.get("seed", 0))))
        with ops.mutex:
            images = {mode: ops.volume.image(mode, rnd) for mode in ("durable", "random")}
            counts = dict(ops.counts)
        for mode, files in images.items():
            write_image(files, Path(str(request["cut"])) / mode)
        return {"ok": True, "counts": counts, "files": {m: len(f) for m, f in images.items()}}
    with ops.mutex:
        return {"ok": True, "counts": dict(ops.counts)}


def serve(ops: CrashOps, control: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(control)
    server.listen(4)
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                try:
                    reply = handle(ops, json.loads(line))
                except Exception as exc:  # reported to the test, which fails with it
                    reply = {"ok": False, "error": repr(exc)}
                stream.write(json.dumps(reply).encode() + b"\n")
                stream.flush()


def unmount_when_orphaned(mountpoint: str, parent: int) -> None:
    """A test killed outright leaves no one to unmount: the file system goes with it."""
    while os.getppid() == parent:
        time.sleep(1)
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False, capture_output=True)
    os._exit(1)


def main(mountpoint: str, control: str) -> None:
    # CRASHFS_LOG_LEVEL=10 logs every failing call (mfusepy logs them at DEBUG).
    logging.basicConfig(level=int(os.environ.get("CRASHFS_LOG_LEVEL", logging.WARNING)),
                        format="%(asctime)s %(levelname)s %(message)s")
    ops = CrashOps(Volume())
    threading.Thread(target=serve, args=(ops, control), name="crashfs-control", daemon=True).start()
    threading.Thread(target=unmount_when_orphaned, args=(mountpoint, os.getppid()), name="crashfs-orphan",
                     daemon=True).start()
    # One FUSE thread: the model is not built for concurrency, and a lock per call is enough.
    CrashFUSE(ops, mountpoint, foreground=True, nothreads=True, hard_remove=True, fsname="crashfs",
         default_permissions=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
