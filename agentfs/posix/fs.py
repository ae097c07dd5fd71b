"""The filesystem model: one transaction per POSIX call.

`FileSystem` wraps each call in its own transaction over a `Tree` (forks.py,
inodes.py), which holds the logic and composes: `transaction()` hands out a
writable `Tree` for operations made of several steps (the agent layer's
spawn, fork, remove, message delivery), committed as one. Nothing here knows
about FUSE, trio or the kernel; the daemon translates, and the unit tests call
this directly on every engine.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from agentfs.posix.forks import Tree
from agentfs.posix.inodes import (
    BLOCK_SIZE,
    CTLDIR,
    MAX_FILE_SIZE,
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    SNAPDIR,
    XATTR_CREATE,
    XATTR_NAME_MAX,
    XATTR_NAMESPACES,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    DirEntry,
    NeedWrite,
    SetAttr,
    check_name,
    needs_atime_update,
)
from agentfs.storage.codec import ROOT_LOCAL, ROOT_VIEW, Attr, split_ino
from agentfs.storage.keys import attr_suffix
from agentfs.storage.kv import Engine
from agentfs.storage.views import Store

__all__ = [
    "BLOCK_SIZE", "CTLDIR", "MAX_FILE_SIZE", "NAME_MAX", "RENAME_EXCHANGE", "RENAME_NOREPLACE",
    "ROOT_INO", "SNAPDIR", "XATTR_CREATE", "XATTR_NAMESPACES", "XATTR_NAME_MAX", "XATTR_REPLACE",
    "XATTR_SIZE_MAX", "DirEntry", "FileSystem", "NeedWrite", "SetAttr", "Tree", "check_name",
    "needs_atime_update",
]

T = TypeVar("T")


class FileSystem:
    def __init__(self, engine: Engine, clock: Callable[[], int] = time.time_ns) -> None:
        self.engine = engine
        self.store = Store(engine)
        self.clock = clock
        with self.store.read() as tx:
            formatted = tx.get(ROOT_VIEW, attr_suffix(ROOT_LOCAL)) is not None
        if not formatted:
            with self.transaction() as t:
                t.format_root()

    # ------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self) -> Iterator[Tree]:
        """A writable Tree; everything done through it commits as one
        transaction when the block ends, or not at all if it raises."""
        with self.store.write() as tx:
            yield Tree(tx, self.clock)

    def query(self, fn: Callable[[Tree], T]) -> T:
        """Run `fn` in a read transaction (again in a write transaction if it
        finds it must materialise a nested view, see Inodes.nested_copy)."""
        try:
            with self.store.read() as tx:
                return fn(Tree(tx, self.clock))
        except NeedWrite:
            with self.transaction() as t:
                return fn(t)

    # ------------------------------------------------------------ queries

    def getattr(self, ino: int) -> Attr:
        return self.query(lambda t: t.attr(ino))

    def lookup(self, dir_ino: int, name: bytes) -> Attr:
        return self.query(lambda t: t.lookup(dir_ino, name))

    def readlink(self, ino: int) -> bytes:
        return self.query(lambda t: t.readlink(ino))

    def readdir(self, dir_ino: int, start: int = 0) -> Iterator[DirEntry]:
        """Entries after offset `start`, in name-hash order (stable under churn).

        Batches start small: the kernel's readdir buffer takes a few dozen
        entries per request, and each entry costs an attribute lookup.
        """
        batch_size = 32
        while True:
            batch = self.query(functools.partial(Tree.readdir, dir_ino=dir_ino, start=start,
                                                 limit=batch_size))
            yield from batch
            if len(batch) < batch_size:
                return
            start = batch[-1].offset
            batch_size = 256

    def read(self, ino: int, offset: int, size: int, touch_atime: bool = True) -> bytes:
        """Bytes of a file; the atime follows relatime unless `touch_atime` is
        False (the daemon's own reads, e.g. to render context.json, never write)."""
        data, stale_atime = self.query(lambda t: t.read(ino, offset, size))
        if stale_atime and touch_atime:
            with self.transaction() as t:
                t.touch_atime(ino)
        return data

    def listxattr(self, ino: int) -> list[bytes]:
        return self.query(lambda t: t.listxattr(ino))

    def getxattr(self, ino: int, name: bytes) -> bytes:
        return self.query(lambda t: t.getxattr(ino, name))

    def is_readonly(self, ino: int) -> bool:
        with self.store.read() as tx:
            return tx.view(split_ino(ino)[0]).readonly

    parent_of = staticmethod(Tree.parent_of)

    def snapshots(self, dir_ino: int) -> list[tuple[bytes, Attr]]:
        return self.query(lambda t: t.snapshots(dir_ino))

    def snapshot_root(self, dir_ino: int, name: bytes) -> Attr:
        return self.query(lambda t: t.snapshot_root(dir_ino, name))

    def path_ino(self, path: str) -> int:
        """Resolve a path relative to the root (no symlinks followed)."""
        return self.query(lambda t: t.path_ino(path))

    def usage(self) -> tuple[int, int]:
        """(bytes the store uses, bytes it may grow to)."""
        return self.engine.usage()

    def epoch_now(self) -> int:
        return self.store.epoch

    # ------------------------------------------------------------ changes

    def create(self, dir_ino: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0, target: bytes | None = None) -> Attr:
        """mknod/create/mkdir/symlink: `mode` carries the file type."""
        with self.transaction() as t:
            return t.create(dir_ino, name, mode, uid, gid, rdev, target)

    def link(self, ino: int, dir_ino: int, name: bytes) -> Attr:
        with self.transaction() as t:
            return t.link(ino, dir_ino, name)

    def unlink(self, dir_ino: int, name: bytes) -> Attr:
        with self.transaction() as t:
            return t.unlink(dir_ino, name)

    def rmdir(self, dir_ino: int, name: bytes) -> None:
        with self.transaction() as t:
            t.rmdir(dir_ino, name)

    def rename(self, src_dir: int, src_name: bytes, dst_dir: int, dst_name: bytes,
               flags: int = 0) -> None:
        with self.transaction() as t:
            t.rename(src_dir, src_name, dst_dir, dst_name, flags)

    def setattr(self, ino: int, ch: SetAttr) -> Attr:
        with self.transaction() as t:
            return t.setattr(ino, ch)

    def write(self, ino: int, offset: int, data: bytes) -> Attr:
        with self.transaction() as t:
            return t.write(ino, offset, data)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        with self.transaction() as t:
            t.setxattr(ino, name, value, flags)

    def removexattr(self, ino: int, name: bytes) -> None:
        with self.transaction() as t:
            t.removexattr(ino, name)

    # ------------------------------------------------------------ lifetime

    def forget(self, ino: int) -> None:
        """The kernel holds no more references: free the inode if it is unlinked."""
        with self.transaction() as t:
            t.forget(ino)

    def free_orphans(self) -> int:
        """At mount: nothing is open any more, so every orphan can go."""
        with self.transaction() as t:
            return t.free_orphans()

    def sync(self) -> None:
        self.engine.sync()

    # ------------------------------------------------------------ forks and snapshots

    def pin(self, dir_ino: int, holder: bytes) -> int:
        """Remember the tree under `dir_ino`'s view as it is now; returns the epoch."""
        with self.transaction() as t:
            return t.pin(dir_ino, holder)

    def unpin(self, dir_ino: int, holder: bytes) -> None:
        with self.transaction() as t:
            t.release(holder)

    def fork(self, src_dir: int, dst_dir: int, dst_name: bytes, epoch: int | None = None,
             uid: int = 0, gid: int = 0) -> Attr:
        """Make `dst_dir/dst_name` a copy-on-write copy of directory `src_dir`
        (as it is now, or as it was at a pinned `epoch`). Constant cost."""
        with self.transaction() as t:
            return t.fork(src_dir, dst_dir, dst_name, epoch, uid, gid)

    def snapshot(self, dir_ino: int, name: bytes, epoch: int | None = None,
                 source: int | None = None) -> Attr:
        """Create read-only snapshot `name` of directory `dir_ino` (reached as
        DIR/.snapshots/NAME); at a pinned `epoch` if given (of the tree of
        directory `source` if given, see Tree.snapshot)."""
        with self.transaction() as t:
            return t.snapshot(dir_ino, name, epoch, source)

    def delete_snapshot(self, dir_ino: int, name: bytes) -> None:
        with self.transaction() as t:
            t.delete_snapshot(dir_ino, name)

    def detach(self, dir_ino: int, name: bytes) -> None:
        """Remove fork root `dir_ino/name` and everything in it at once
        (`rm -rf` would write a tombstone per file)."""
        with self.transaction() as t:
            t.detach(dir_ino, name)
