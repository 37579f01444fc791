"""The test side of crashfs: mount it in a child process, cut power, unmount.

``make fault-tools`` installs Debian's fuse3 (libfuse3 and fusermount3); the test extra
installs mfusepy, the ctypes binding. A machine without them fails here with what to run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.paths import ROOT

MISSING = ("crashfs needs /dev/fuse, Debian's fuse3 and the mfusepy package: run `make fault-tools` "
           "and `make deps-test` (as root: the tests mount a FUSE file system)")


class CrashFS:
    """A mounted crashfs at ``mountpoint``; ``cut`` writes power-cut images of it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mountpoint = workdir / "mnt"
        self.control = workdir / "crashfs.sock"
        self.log = workdir / "crashfs.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._cuts = 0

    def __enter__(self) -> CrashFS:
        if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
            raise AssertionError(MISSING)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        # libfuse3 even where libfuse2 is installed too (mfusepy would take 2 first): crashfs
        # is written against the 3.x calls.
        env = dict(os.environ, PYTHONPATH=str(ROOT), FUSE_LIBRARY_NAME="fuse3")
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.crashfs.server", str(self.mountpoint),
                 str(self.control)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 15
        while not (os.path.ismount(self.mountpoint) and self.control.exists()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise AssertionError(f"crashfs did not mount: {self.log.read_text()[-2000:]}\n{MISSING}")
            time.sleep(0.05)
        return self

    def request(self, **payload: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(120)
            conn.connect(str(self.control))
            conn.sendall(json.dumps(payload).encode() + b"\n")
            with conn.makefile("rb") as stream:
                reply: dict[str, Any] = json.loads(stream.readline())
        if not reply.get("ok"):
            raise AssertionError(f"crashfs: {reply.get('error')}")
        return reply

    def cut(self, dest: Path, seed: int) -> dict[str, Any]:
        """Write ``dest/durable`` and ``dest/random``: what a power cut now could leave."""
        self._cuts += 1
        return self.request(cut=str(dest), seed=seed)

    def counts(self) -> dict[str, int]:
        """How many writes, fsyncs and directory fsyncs the file system has seen."""
        counts: dict[str, int] = self.request()["counts"]
        return counts

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        if os.path.ismount(self.mountpoint):
            # Lazy: a process the test failed to stop must not keep the mount (and pytest) hung.
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False,
                           capture_output=True)
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


def images(cut_dir: Path) -> list[Path]:
    """The images one cut wrote: the durable-only one and the random one."""
    return [cut_dir / "durable", cut_dir / "random"]
