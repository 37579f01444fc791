"""The durability model of crashfs: what a file system holds in memory, and what of it a
power cut would leave on the disk.

Each inode keeps two states: ``data`` (what every reader sees: the page cache) and
``durable`` (what is on the disk), plus the writes and truncates issued since the last
fsync. Each directory keeps its current entries, its durable entries and the namespace
changes (create, link, unlink, rename) since its last fsync. Nothing becomes durable
without being synced, and nothing else does:

- ``fsync``/``fdatasync`` of a file makes its own pending writes and truncates durable, not
  its name: a new file survives only once its directory is fsynced as well (POSIX leaves
  it at that; ext4 is often kinder, other file systems are not);
- ``fsync`` of a directory makes its entries durable (the names, not the files' data);
- a rename within one directory is atomic (a journalled file system never loses both
  names); across directories each side is durable with its own directory's fsync.

A cut (``image``) keeps the durable state and, in the "random" mode, a random in-order
subset of each file's pending writes, each possibly torn at sector (512 B) granularity,
and a random prefix of each directory's pending changes (journalled metadata stays in
order). The "durable" mode keeps nothing that was not synced: the worst case, which makes
a missing fsync visible on every cut. Files whose names end in ``-shm`` (SQLite's
memory-mapped index, rebuilt from the WAL at open) are always lost, as SQLite expects.
"""

from __future__ import annotations

import errno
import random
import stat
import time
from dataclasses import dataclass, field

SECTOR = 512
LOST_SUFFIXES = ("-shm",)


@dataclass
class Write:
    offset: int
    data: bytes


@dataclass
class Truncate:
    size: int


@dataclass
class Inode:
    ino: int
    mode: int
    data: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    pending: list[Write | Truncate] = field(default_factory=list)
    #: Directories only: name -> inode number, now, on the disk, and the changes between.
    entries: dict[str, int] = field(default_factory=dict)
    durable_entries: dict[str, int] = field(default_factory=dict)
    dir_log: list[tuple[str, ...]] = field(default_factory=list)
    nlink: int = 1
    open_count: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def apply(target: bytearray, op: Write | Truncate, sectors: list[tuple[int, int]] | None = None) -> None:
    """Apply one write or truncate to ``target``; ``sectors`` limits a write to those
    (start, end) ranges of it (a torn write)."""
    if isinstance(op, Truncate):
        del target[op.size:]
        target.extend(bytes(op.size - len(target)))
        return
    ranges = sectors if sectors is not None else [(op.offset, op.offset + len(op.data))]
    for start, end in ranges:
        if len(target) < start:
            target.extend(bytes(start - len(target)))
        target[start:end] = op.data[start - op.offset:end - op.offset]


def sector_ranges(op: Write) -> list[tuple[int, int]]:
    """The write split at sector boundaries, as a disk may persist it."""
    cuts = list(range(op.offset - op.offset % SECTOR + SECTOR, op.offset + len(op.data), SECTOR))
    bounds = [op.offset, *cuts, op.offset + len(op.data)]
    return list(zip(bounds, bounds[1:], strict=False))


class Volume:
    """The whole file system: inodes by number, the root directory is inode 1. Not thread
    safe: the FUSE layer holds one lock around every call."""

    def __init__(self) -> None:
        self.inodes: dict[int, Inode] = {}
        #: Inodes whose last name went: freed once no directory on the disk names them either.
        self.unlinked: set[int] = set()
        self._next = 1
        self.root = self.new_inode(stat.S_IFDIR | 0o755)

    def new_inode(self, mode: int) -> Inode:
        inode = Inode(self._next, mode)
        self.inodes[inode.ino] = inode
        self._next += 1
        return inode

    # --- the namespace -----------------------------------------------------------------------

    def lookup(self, path: str) -> Inode:
        inode = self.root
        for part in _parts(path):
            if not inode.is_dir or part not in inode.entries:
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            inode = self.inodes[inode.entries[part]]
        return inode

    def parent_of(self, path: str) -> tuple[Inode, str]:
        parts = _parts(path)
        if not parts:
            raise PermissionError(errno.EPERM, "the root", path)
        parent = self.lookup("/" + "/".join(parts[:-1]))
        if not parent.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        return parent, parts[-1]

    def add_entry(self, directory: Inode, name: str, inode: Inode) -> None:
        directory.entries[name] = inode.ino
        directory.dir_log.append(("set", name, str(inode.ino)))
        directory.mtime_ns = time.time_ns()

    def remove_entry(self, directory: Inode, name: str) -> Inode:
        inode = self.inodes[directory.entries.pop(name)]
        directory.dir_log.append(("del", name))
        directory.mtime_ns = time.time_ns()
        inode.nlink -= 1
        if inode.nlink <= 0:
            self.unlinked.add(inode.ino)
        return inode

    def rename(self, old: str, new: str) -> None:
        src, old_name = self.parent_of(old)
        dst, new_name = self.parent_of(new)
        inode = self.inodes[src.entries[old_name]] if old_name in src.entries else None
        if inode is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", old)
        replaced = dst.entries.get(new_name)
        if replaced is not None:
            target = self.inodes[replaced]
            if target.is_dir and target.entries:
                raise OSError(errno.ENOTEMPTY, "directory not empty", new)
            target.nlink -= 1
            if target.nlink <= 0:
                self.unlinked.add(target.ino)
        if src is dst:
            del src.entries[old_name]
            src.entries[new_name] = inode.ino
            src.dir_log.append(("move", old_name, new_name, str(inode.ino)))
            src.mtime_ns = time.time_ns()
        else:
            del src.entries[old_name]
            src.dir_log.append(("del", old_name))
            dst.entries[new_name] = inode.ino
            dst.dir_log.append(("set", new_name, str(inode.ino)))

    # --- data ----------------------------------------------------------------------------------

    def write(self, inode: Inode, offset: int, data: bytes) -> None:
        op = Write(offset, bytes(data))
        apply(inode.data, op)
        inode.pending.append(op)
        inode.mtime_ns = time.time_ns()

    def truncate(self, inode: Inode, size: int) -> None:
        op = Truncate(size)
        apply(inode.data, op)
        inode.pending.append(op)
        inode.mtime_ns = time.time_ns()

    def fsync(self, inode: Inode) -> None:
        if inode.is_dir:
            inode.durable_entries = dict(inode.entries)
            inode.dir_log.clear()
            self._collect()
            return
        for op in inode.pending:
            apply(inode.durable, op)
        inode.pending.clear()

    def _collect(self) -> None:
        """Forget unlinked inodes no name on the disk (or pending) and no open file refers to."""
        if not self.unlinked:
            return
        used = set()
        for inode in self.inodes.values():
            if inode.is_dir:
                used.update(inode.entries.values())
                used.update(inode.durable_entries.values())
                used.update(int(e[-1]) for e in inode.dir_log if e[0] != "del")
        for ino in list(self.unlinked):
            inode = self.inodes.get(ino)
            if inode is None or inode.nlink > 0:
                self.unlinked.discard(ino)  # gone, or named again
            elif ino not in used and not inode.open_count:
                del self.inodes[ino]
                self.unlinked.discard(ino)

    # --- a power cut ---------------------------------------------------------------------------

    def image(self, mode: str, rnd: random.Random) -> dict[str, tuple[int, bytes | None]]:
        """What a power cut now would leave: relative path -> (permission bits, file bytes or
        None for a directory).
        ``mode`` is "durable" (only what was synced) or "random" (see the module doc)."""
        contents: dict[int, bytes] = {}
        out: dict[str, tuple[int, bytes | None]] = {}
        self._image_dir(self.root, "", mode, rnd, contents, out, set())
        return out

    def _entries_at_cut(self, directory: Inode, mode: str, rnd: random.Random) -> dict[str, int]:
        entries = dict(directory.durable_entries)
        if mode == "random" and directory.dir_log:
            for change in directory.dir_log[:rnd.randint(0, len(directory.dir_log))]:
                if change[0] == "set":
                    entries[change[1]] = int(change[2])
                elif change[0] == "del":
                    entries.pop(change[1], None)
                else:
                    entries.pop(change[1], None)
                    entries[change[2]] = int(change[3])
        return entries

    def _content_at_cut(self, inode: Inode, mode: str, rnd: random.Random) -> bytes:
        state = bytearray(inode.durable)
        if mode == "random":
            for op in inode.pending:
                if rnd.random() < 0.5:
                    continue  # not yet written back
                if isinstance(op, Write) and rnd.random() < 0.3:
                    ranges = sector_ranges(op)
                    apply(state, op, [r for r in ranges if rnd.random() < 0.5])  # torn
                else:
                    apply(state, op)
        return bytes(state)

    def _image_dir(self, directory: Inode, prefix: str, mode: str, rnd: random.Random,
                   contents: dict[int, bytes], out: dict[str, tuple[int, bytes | None]],
                   seen: set[int]) -> None:
        seen = seen | {directory.ino}
        for name, ino in sorted(self._entries_at_cut(directory, mode, rnd).items()):
            inode = self.inodes.get(ino)
            path = f"{prefix}{name}"
            if inode is None or name.endswith(LOST_SUFFIXES):
                continue
            if inode.is_dir:
                if ino in seen:
                    continue
                out[path] = (stat.S_IMODE(inode.mode), None)
                self._image_dir(inode, path + "/", mode, rnd, contents, out, seen)
                continue
            if ino not in contents:  # hard links share one content
                contents[ino] = self._content_at_cut(inode, mode, rnd)
            out[path] = (stat.S_IMODE(inode.mode), contents[ino])


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]
