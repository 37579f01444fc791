"""The power-cut model of crashfs (tests/support/crashfs/model.py), and that the kernel really
passes every write, fsync, fdatasync and directory fsync on to it: a harness that kept more
than a disk keeps could not see a missing fsync, one that kept less would cry wolf."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

from tests.support.crashfs.harness import CrashFS
from tests.support.crashfs.model import SECTOR, Volume


def new_file(volume: Volume, name: str, data: bytes, *, sync_file: bool, sync_dir: bool) -> None:
    inode = volume.new_inode(stat.S_IFREG | 0o600)
    volume.add_entry(volume.root, name, inode)
    volume.write(inode, 0, data)
    if sync_file:
        volume.fsync(inode)
    if sync_dir:
        volume.fsync(volume.root)


def contents(volume: Volume, mode: str, seed: int = 0) -> dict[str, bytes | None]:
    return {path: data for path, (_, data) in volume.image(mode, random.Random(seed)).items()}


def test_a_new_file_needs_its_own_fsync_and_its_directorys() -> None:
    volume = Volume()
    new_file(volume, "synced-file", b"a" * 100, sync_file=True, sync_dir=False)
    assert contents(volume, "durable") == {}, "an fsynced file whose directory was not synced is lost"
    new_file(volume, "synced-dir", b"b" * 100, sync_file=False, sync_dir=True)
    # The directory fsync names both files; only the first one's data was synced.
    assert contents(volume, "durable") == {"synced-file": b"a" * 100, "synced-dir": b""}


def test_unsynced_writes_come_back_in_part_torn_at_sectors() -> None:
    volume = Volume()
    new_file(volume, "f", bytes(4 * SECTOR), sync_file=True, sync_dir=True)
    volume.write(volume.lookup("/f"), 0, b"\xff" * (4 * SECTOR))
    seen = set()
    for seed in range(200):
        data = contents(volume, "random", seed)["f"]
        assert data is not None and len(data) == 4 * SECTOR
        sectors = tuple(data[i * SECTOR:(i + 1) * SECTOR] == b"\xff" * SECTOR for i in range(4))
        # Each sector is all old or all new: a disk tears a write between sectors, not within.
        assert all(data[i * SECTOR:(i + 1) * SECTOR] in (bytes(SECTOR), b"\xff" * SECTOR) for i in range(4))
        seen.add(sectors)
    assert (False,) * 4 in seen and (True,) * 4 in seen, "lost entirely and written entirely both happen"
    assert len(seen) > 2, "and torn writes too"
    assert contents(volume, "durable")["f"] == bytes(4 * SECTOR), "the durable image: only what was synced"


def test_a_rename_is_atomic_and_the_shm_file_is_always_lost() -> None:
    volume = Volume()
    new_file(volume, "db-shm", b"index", sync_file=True, sync_dir=True)
    new_file(volume, "tmp", b"new", sync_file=True, sync_dir=True)
    volume.rename("/tmp", "/final")
    images = [set(contents(volume, "random", seed)) for seed in range(100)]
    assert {frozenset(i) for i in images} == {frozenset({"tmp"}), frozenset({"final"})}, \
        "before or after the rename, never neither nor both"
    assert set(contents(volume, "durable")) == {"tmp"}


def test_the_kernel_passes_every_sync_through(tmp_path: Path) -> None:
    with CrashFS(tmp_path) as fs:
        folder = fs.mountpoint / "d"
        folder.mkdir()
        fd = os.open(folder / "f", os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"x" * 10_000)
        os.fdatasync(fd)
        os.pwrite(fd, b"y" * 100, 20_000)  # past the end: a hole, then data
        os.close(fd)
        os.link(folder / "f", folder / "g")
        for directory in (fs.mountpoint, folder):
            dfd = os.open(directory, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
        counts = fs.counts()
        assert (counts["fsync"], counts["fsyncdir"]) == (1, 2), counts
        fs.cut(tmp_path / "cut", 1)
    durable = tmp_path / "cut" / "durable" / "d"
    assert (durable / "f").read_bytes() == b"x" * 10_000, "the write after the fdatasync is not durable"
    assert (durable / "g").read_bytes() == b"x" * 10_000, "a hard link shares its file's content"
    assert stat.S_IMODE((durable / "f").stat().st_mode) == 0o600
