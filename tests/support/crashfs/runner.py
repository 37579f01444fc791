"""Cut power under a running writer (writers.py) many times, keeping what it had reported.

For each cut the writer's lines are read just before it (``before``: every call reported
there returned, so its fsyncs happened, before the cut) and just after it (``after``: a
delete reported as started there may have begun before the cut). A test then demands of
each image what ``before`` promises, forgiving what ``after`` shows was in flight.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.support.crashfs.harness import CrashFS, images
from tests.support.paths import ROOT


@dataclass
class Ledger:
    """What the writer reported so far: verb -> key -> value (the last one reported)."""

    seen: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, line: str) -> None:
        verb, key, *value = line.split()
        self.seen.setdefault(verb, {})[key] = value[0] if value else ""

    def get(self, verb: str) -> dict[str, str]:
        return dict(self.seen.get(verb, {}))

    def copy(self) -> Ledger:
        return Ledger({verb: dict(keys) for verb, keys in self.seen.items()})


@dataclass
class Cut:
    number: int
    images: list[Path]
    before: Ledger
    after: Ledger


class Writer:
    """A writer process whose report lines are read without blocking it."""

    def __init__(self, kind: str, directory: Path, keys: Path, mutation: str, log: Path) -> None:
        self.log = log
        self.ledger = Ledger()
        self._partial = b""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.crashfs.writers", kind, str(directory), str(keys),
                 mutation], stdout=subprocess.PIPE, stderr=err, env=env)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)

    def poll(self) -> Ledger:
        assert self.proc.stdout is not None
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            *lines, self._partial = (self._partial + chunk).split(b"\n")
            for line in lines:
                self.ledger.add(line.decode())
        if self.proc.poll() is not None:
            raise AssertionError(f"the writer stopped ({self.proc.returncode}): "
                                 f"{self.log.read_text()[-3000:]}")
        return self.ledger

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def scratch_dir(workdir: Path) -> Path:
    """Where images are written and checked: a tmpfs when there is one (an image is
    thousands of small files, written in milliseconds there, and removed once checked)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="crashfs-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="scratch-", dir=workdir))


class Reporter(Protocol):
    """A running process whose reports (``poll``) say what it has made durable."""

    ledger: Ledger

    def poll(self) -> Ledger: ...

    def stop(self) -> None: ...


def cut_while_writing(workdir: Path, kind: str, keys: Path, cuts: int, rnd: random.Random,
                      check: Callable[[Cut], list[str]], mutation: str = "",
                      ) -> tuple[dict[int, list[str]], Ledger, dict[str, int]]:
    """``cut_while_running`` with one of the writers (writers.py) as the process."""
    return cut_while_running(
        workdir, lambda mount: Writer(kind, mount, keys, mutation, workdir / f"writer-{kind}.log"),
        cuts, rnd, check)


def cut_while_running(workdir: Path, start: Callable[[Path], Reporter], cuts: int, rnd: random.Random,
                      check: Callable[[Cut], list[str]], pause: tuple[float, float] = (0.02, 0.25),
                      ) -> tuple[dict[int, list[str]], Ledger, dict[str, int]]:
    """Mount a fresh crashfs, ``start`` the process on it, cut ``cuts`` times at random
    moments and ``check`` each cut's images at once (the process keeps writing meanwhile).
    Returns the problems found per cut, everything the process reported, and the file
    system's call counts. Images with problems are kept under ``workdir`` for a post-mortem."""
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = scratch_dir(workdir)
    problems: dict[int, list[str]] = {}
    try:
        with CrashFS(workdir) as fs:
            process = start(fs.mountpoint)
            try:
                deadline = time.monotonic() + 60
                while not process.poll().seen:  # the first report: it is running
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{process} reported nothing in 60 s")
                    time.sleep(0.05)
                for number in range(cuts):
                    time.sleep(rnd.uniform(*pause))
                    before = process.poll().copy()
                    where = scratch / f"cut-{number}"
                    fs.cut(where, rnd.randrange(1 << 30))
                    problems[number] = check(Cut(number, images(where), before, process.poll().copy()))
                    if problems[number]:
                        shutil.move(where, workdir / where.name)  # as the check left it
                    else:
                        shutil.rmtree(where)
                counts = fs.counts()
            finally:
                process.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return problems, process.ledger, counts
