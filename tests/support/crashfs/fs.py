"""The FUSE side of crashfs: every system call the kernel forwards becomes a call on the
durability model (model.py), under one lock (the control socket cuts from another thread).

Open files are tracked by handle, so a file unlinked while open (``hard_remove``) keeps
working as it does on a disk. The kernel's write-back cache is off (libfuse's default):
each write() reaches ``write`` here before the system call returns, and each fsync and
fdatasync reaches ``fsync``/``fsyncdir``.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mfusepy import FuseOSError, Operations

from tests.support.crashfs.model import Inode, Volume

T = TypeVar("T")


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """Run under the volume lock; Python's OSErrors become FUSE errors."""
    def call(self: CrashOps, *args: Any) -> T:
        with self.mutex:
            try:
                return method(self, *args)
            except FuseOSError:
                raise
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from exc
            except KeyError as exc:
                raise FuseOSError(errno.ENOENT) from exc
    call.__name__ = method.__name__
    return call


class CrashOps(Operations):
    use_ns = True
    flag_nullpath_ok = True
    flag_nopath = True

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self.mutex = threading.Lock()
        self.handles: dict[int, Inode] = {}
        self._next_fh = 1
        self.counts = {"write": 0, "fsync": 0, "fsyncdir": 0}

    def _inode(self, path: str | None, fh: int | None = None) -> Inode:
        if fh is not None and fh in self.handles:
            return self.handles[fh]
        if path is None:
            raise FuseOSError(errno.EBADF)
        return self.volume.lookup(path)

    def _open_handle(self, inode: Inode) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = inode
        inode.open_count += 1
        return fh

    # --- metadata ------------------------------------------------------------------------------

    @_guarded
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        inode = self._inode(path, fh)
        size = len(inode.data) if not inode.is_dir else 4096
        return {"st_mode": inode.mode, "st_ino": inode.ino, "st_nlink": max(inode.nlink, 1),
                "st_size": size, "st_blocks": -(-size // 512), "st_blksize": 4096,
                "st_uid": os.getuid(), "st_gid": os.getgid(), "st_mtime": inode.mtime_ns,
                "st_ctime": inode.mtime_ns, "st_atime": inode.mtime_ns}

    @_guarded
    def chmod(self, path: str | None, mode: int) -> int:
        inode = self._inode(path)
        inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
        return 0

    @_guarded
    def chown(self, path: str | None, uid: int, gid: int) -> int:
        self._inode(path)
        return 0

    @_guarded
    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        inode = self._inode(path)
        inode.mtime_ns = times[1] if times else time.time_ns()
        return 0

    @_guarded
    def statfs(self, path: str) -> dict[str, int]:
        used = sum(len(i.data) for i in self.volume.inodes.values()) // 4096
        total = 1 << 22  # 16 GiB of 4 KiB blocks: room for any test, and a quota check sees room
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": total, "f_bfree": total - used,
                "f_bavail": total - used, "f_files": 1 << 20, "f_ffree": 1 << 20, "f_namemax": 255}

    # --- the namespace -------------------------------------------------------------------------

    @_guarded
    def opendir(self, path: str) -> int:
        inode = self.volume.lookup(path)
        if not inode.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return self._open_handle(inode)

    def releasedir(self, path: str | None, fh: int) -> int:
        return self.release(path, fh)

    @_guarded
    def readdir(self, path: str | None, fh: int) -> list[str]:
        return [".", "..", *sorted(self._inode(path, fh).entries)]

    @_guarded
    def mkdir(self, path: str, mode: int) -> int:
        parent, name = self.volume.parent_of(path)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        self.volume.add_entry(parent, name, self.volume.new_inode(stat.S_IFDIR | stat.S_IMODE(mode)))
        return 0

    @_guarded
    def rmdir(self, path: str) -> int:
        parent, name = self.volume.parent_of(path)
        if self.volume.lookup(path).entries:
            raise FuseOSError(errno.ENOTEMPTY)
        self.volume.remove_entry(parent, name)
        return 0

    @_guarded
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        parent, name = self.volume.parent_of(path)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        inode = self.volume.new_inode(stat.S_IFREG | stat.S_IMODE(mode))
        self.volume.add_entry(parent, name, inode)
        return self._open_handle(inode)

    @_guarded
    def open(self, path: str, flags: int) -> int:
        inode = self.volume.lookup(path)
        if flags & os.O_TRUNC:
            self.volume.truncate(inode, 0)
        return self._open_handle(inode)

    @_guarded
    def release(self, path: str | None, fh: int) -> int:
        inode = self.handles.pop(fh, None)
        if inode is not None:
            inode.open_count -= 1
        return 0

    @_guarded
    def unlink(self, path: str) -> int:
        parent, name = self.volume.parent_of(path)
        self.volume.remove_entry(parent, name)
        return 0

    @_guarded
    def rename(self, old: str, new: str) -> int:
        self.volume.rename(old, new)
        return 0

    @_guarded
    def link(self, target: str, source: str) -> int:
        inode = self.volume.lookup(source)
        parent, name = self.volume.parent_of(target)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        inode.nlink += 1
        self.volume.add_entry(parent, name, inode)
        return 0

    # --- data ----------------------------------------------------------------------------------

    @_guarded
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return bytes(self._inode(path, fh).data[offset:offset + size])

    @_guarded
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        self.volume.write(self._inode(path, fh), offset, data)
        self.counts["write"] += 1
        return len(data)

    @_guarded
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self.volume.truncate(self._inode(path, fh), length)
        return 0

    @_guarded
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode:  # punching holes, collapsing ranges: nothing the code under test does
            raise FuseOSError(errno.EOPNOTSUPP)
        inode = self._inode(path, fh)
        if offset + size > len(inode.data):
            self.volume.truncate(inode, offset + size)
        return 0

    @_guarded
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self.volume.fsync(self._inode(path, fh))
        self.counts["fsync"] += 1
        return 0

    @_guarded
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        self.volume.fsync(self._inode(path, fh))
        self.counts["fsyncdir"] += 1
        return 0
