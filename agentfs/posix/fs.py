"""The filesystem model: POSIX namespace and file data over versioned views.

Every public method is one transaction and speaks FUSE inode numbers (which
pack a view and a local inode, see codec.fuse_ino). Errors are `FsError`
with an errno. Nothing here knows about FUSE, trio or the kernel; the daemon
translates, and the unit tests call this directly on either engine.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agentfs.errors import FsError
from agentfs.posix import logdata
from agentfs.storage import codec
from agentfs.storage.codec import (
    ROOT_LOCAL,
    ROOT_VIEW,
    Attr,
    attr_suffix,
    block_dir_suffix,
    block_suffix,
    decode_dentry,
    dentry_dir_suffix,
    dentry_suffix,
    encode_dentry,
    fuse_ino,
    split_ino,
    u32,
    xattr_dir_suffix,
    xattr_suffix,
)
from agentfs.storage.kv import Engine, prefix_end
from agentfs.storage.views import Store, Tx

BLOCK_SIZE = 128 * 1024
NAME_MAX = 255
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 64 * 1024
MAX_FILE_SIZE = 1 << 46  # 64 TiB: far beyond any store, and within off_t
ROOT_INO = fuse_ino(ROOT_VIEW, ROOT_LOCAL)
SNAPDIR = b".snapshots"
CTLDIR = b".agentfs"

XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class NeedWrite(Exception):
    """A read path found it must write (lazily materialise a nested view)."""


@dataclass
class SetAttr:
    """Fields to change in setattr; None leaves a field alone."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None


@dataclass
class DirEntry:
    name: bytes
    attr: Attr
    offset: int  # pass back as `start` to continue after this entry


def needs_atime_update(a: Attr, now: int) -> bool:
    """relatime: update atime on read only if it is not newer than mtime/ctime,
    or is more than a day old (what Linux does for local filesystems)."""
    return (a.atime_ns <= a.mtime_ns or a.atime_ns <= a.ctime_ns
            or now - a.atime_ns > 86400 * 10**9)


def check_name(name: bytes) -> None:
    if not name or name in (b".", b".."):
        raise FsError(errno.EINVAL, f"invalid name {name!r}")
    if b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"a name may not contain '/' or NUL: {name!r}")
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, f"name is {len(name)} bytes; the limit is {NAME_MAX}")


class FileSystem:
    def __init__(self, engine: Engine, clock: Callable[[], int] = time.time_ns) -> None:
        self.engine = engine
        self.store = Store(engine)
        self.clock = clock
        with self.store.read() as tx:
            formatted = tx.get(ROOT_VIEW, attr_suffix(ROOT_LOCAL)) is not None
        if not formatted:
            with self.store.write() as tx:
                now = self.clock()
                root = Attr(stat.S_IFDIR | 0o755, 0, 0, nlink=2, atime_ns=now, mtime_ns=now,
                            ctime_ns=now, parent_view=ROOT_VIEW, parent_local=ROOT_LOCAL)
                tx.put(ROOT_VIEW, attr_suffix(ROOT_LOCAL), root.encode())

    # ------------------------------------------------------------ transactions

    def _read(self, fn: Callable[[Tx], object]) -> object:
        try:
            with self.store.read() as tx:
                return fn(tx)
        except NeedWrite:
            with self.store.write() as tx:
                return fn(tx)

    # ------------------------------------------------------------ inode records

    def _attr(self, tx: Tx, ino: int) -> Attr:
        view, local = split_ino(ino)
        if tx.view(view).kind == "dead":
            raise FsError(errno.ESTALE, "this fork or snapshot has been removed")
        raw = tx.get(view, attr_suffix(local))
        if raw is None:
            raise FsError(errno.ENOENT, f"inode {ino} does not exist")
        return Attr.decode(raw, ino)

    def _put_attr(self, tx: Tx, a: Attr) -> None:
        view, local = split_ino(a.ino)
        tx.put(view, attr_suffix(local), a.encode())

    def _dir(self, tx: Tx, ino: int) -> Attr:
        a = self._attr(tx, ino)
        if not a.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")
        return a

    def _live_dir(self, tx: Tx, ino: int) -> Attr:
        """A directory new entries may go into: not one already removed."""
        a = self._dir(tx, ino)
        if a.nlink == 0:
            raise FsError(errno.ENOENT, "the directory has been removed")
        return a

    def _entry(self, tx: Tx, dir_ino: int, name: bytes) -> int | None:
        """The inode number `name` leads to in directory `dir_ino`, or None."""
        view, local = split_ino(dir_ino)
        found = tx.get_level(view, dentry_suffix(local, name))
        if found is None:
            return None
        level, raw = found
        tview, tlocal, _ = decode_dentry(raw)
        return self._target(tx, view, level, tview, tlocal)

    def _target(self, tx: Tx, view: int, level: int, tview: int, tlocal: int) -> int:
        if tview == 0:
            return fuse_ino(view, tlocal)
        levels = tx.levels(view)
        level_view, level_limit = levels[level]
        if level_view == view:
            return fuse_ino(tview, tlocal)
        # An entry inherited from an origin leads into a view nested inside the
        # forked tree: this view gets its own copy of that nested view, made on
        # first use, from the nearest origin that already had its own copy (as
        # that origin was at our fork epoch), else from the nested view itself.
        source, limit = tview, level_limit
        for lv, llim in levels[:level]:
            if lv == view:
                continue
            raw = tx.txn.get(b"m" + u32(lv) + u32(tview))
            if raw is not None and tx.view(codec.read_u32(raw)).created <= llim:
                source, limit = codec.read_u32(raw), llim
                break
        return fuse_ino(self._nested(tx, view, tview, source, limit), tlocal)

    def _nested(self, tx: Tx, view: int, inner: int, source: int, limit: int) -> int:
        """This view's copy of nested view `inner`, made from `source` at `limit`."""
        key = b"m" + u32(view) + u32(inner)
        raw = tx.txn.get(key)
        if raw is not None:
            return codec.read_u32(raw)
        if not tx.writable:
            raise NeedWrite()
        w = tx.view(source)
        mine = tx.view(view)
        nv = tx.new_view([(source, limit), *w.chain], w.root, mine.readonly, view,
                         "snapshot" if mine.readonly else "fork", tx.peek_next_ino(source))
        tx.pin(source, b"v" + u32(nv.id), limit)
        tx.txn.put(key, u32(nv.id))
        tx.txn.put(b"C" + u32(view) + u32(nv.id), b"")
        if not mine.first_birth:
            # Forks of this view must not skip it: it holds the copy.
            mine.first_birth = tx.store.epoch
            tx.save_view(mine)
        # The copy's root points at its parent inside this view.
        raw_root = tx.get(nv.id, attr_suffix(w.root))
        if raw_root is not None:
            root = Attr.decode(raw_root)
            root.parent_view = view
            tx.txn.put(b"R" + u32(nv.id) + attr_suffix(w.root) + codec.inv(tx.store.epoch),
                       root.encode())
        return nv.id

    def _parent(self, a: Attr) -> int:
        view, _ = split_ino(a.ino)
        return fuse_ino(a.parent_view or view, a.parent_local)

    def parent_of(self, a: Attr) -> int:
        """The inode number of directory `a`'s parent (the root is its own)."""
        return ROOT_INO if a.ino == ROOT_INO else self._parent(a)

    def _link_entry(self, tx: Tx, dir_ino: int, name: bytes, child: Attr) -> None:
        dview, dlocal = split_ino(dir_ino)
        cview, clocal = split_ino(child.ino)
        tx.put(dview, dentry_suffix(dlocal, name),
               encode_dentry(0 if cview == dview else cview, clocal, child.mode))

    def _unlink_entry(self, tx: Tx, dir_ino: int, name: bytes) -> None:
        dview, dlocal = split_ino(dir_ino)
        tx.remove(dview, dentry_suffix(dlocal, name))

    def _touch(self, tx: Tx, a: Attr, now: int) -> None:
        a.mtime_ns = a.ctime_ns = now
        self._put_attr(tx, a)

    def _check_rw(self, tx: Tx, ino: int) -> None:
        """EROFS before any other check: nothing in a snapshot may change."""
        if tx.view(split_ino(ino)[0]).readonly:
            raise FsError(errno.EROFS, "snapshots are read-only")

    def is_readonly(self, ino: int) -> bool:
        with self.store.read() as tx:
            return tx.view(split_ino(ino)[0]).readonly

    def _check_reserved(self, dir_ino: int, name: bytes) -> None:
        if name == SNAPDIR or (dir_ino == ROOT_INO and name == CTLDIR):
            raise FsError(errno.EEXIST, f"{name.decode()} is reserved by agentfs")

    # ------------------------------------------------------------ queries

    def getattr(self, ino: int) -> Attr:
        return self._read(lambda tx: self._attr(tx, ino))  # type: ignore[return-value]

    def lookup(self, dir_ino: int, name: bytes) -> Attr:
        def op(tx: Tx) -> Attr:
            self._dir(tx, dir_ino)
            if len(name) > NAME_MAX:
                raise FsError(errno.ENAMETOOLONG, "name too long")
            child = self._entry(tx, dir_ino, name)
            if child is None:
                raise FsError(errno.ENOENT, "no such entry")
            return self._attr(tx, child)

        return self._read(op)  # type: ignore[return-value]

    def readlink(self, ino: int) -> bytes:
        a = self.getattr(ino)
        if not a.is_link or a.target is None:
            raise FsError(errno.EINVAL, "not a symbolic link")
        return a.target

    def readdir(self, dir_ino: int, start: int = 0) -> Iterator[DirEntry]:
        """Entries after offset `start`, in name-hash order (stable under churn).

        Batches start small: the kernel's readdir buffer takes a few dozen
        entries per request, and each entry costs an attribute lookup.
        """
        batch_size = 32

        def op(tx: Tx) -> list[DirEntry]:
            view, local = split_ino(dir_ino)
            self._dir(tx, dir_ino)
            out = []
            prefix = dentry_dir_suffix(local)
            for sub, raw in tx.scan(view, prefix, codec.u64(start + 1)):
                h = codec.read_u64(sub)
                name = sub[8:-1]
                tview, tlocal, _ = decode_dentry(raw)
                level = 0 if tview == 0 else self._level_of(tx, view, prefix + sub)
                child = self._target(tx, view, level, tview, tlocal)
                out.append(DirEntry(name, self._attr(tx, child), h))
                if len(out) >= batch_size:
                    break
            return out

        while True:
            batch: list[DirEntry] = self._read(op)  # type: ignore[assignment]
            yield from batch
            if len(batch) < batch_size:
                return
            start = batch[-1].offset
            batch_size = 256

    def _level_of(self, tx: Tx, view: int, suffix: bytes) -> int:
        found = tx.get_level(view, suffix)
        return 0 if found is None else found[0]

    def read(self, ino: int, offset: int, size: int) -> bytes:
        stale_atime = False

        def op(tx: Tx) -> bytes:
            nonlocal stale_atime
            a = self._attr(tx, ino)
            if a.is_dir:
                raise FsError(errno.EISDIR, "is a directory")
            stale_atime = needs_atime_update(a, self.clock())
            if a.flags & codec.FLAG_LOG:
                return logdata.read(tx, a, offset, size)
            end = min(offset + size, a.size)
            if offset >= end:
                return b""
            view, local = split_ino(ino)
            pieces = []
            pos = offset
            while pos < end:
                bno, boff = divmod(pos, BLOCK_SIZE)
                n = min(BLOCK_SIZE - boff, end - pos)
                raw = tx.get(view, block_suffix(local, bno)) or b""
                chunk = raw if boff == 0 and len(raw) == n else raw[boff:boff + n]
                pieces.append(chunk)
                if len(chunk) < n:
                    pieces.append(bytes(n - len(chunk)))  # a hole, or past the stored tail
                pos += n
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)

        data: bytes = self._read(op)  # type: ignore[assignment]
        if stale_atime and not self.is_readonly(ino):
            with self.store.write() as tx:
                a = self._attr(tx, ino)
                a.atime_ns = self.clock()
                self._put_attr(tx, a)
        return data


    def listxattr(self, ino: int) -> list[bytes]:
        def op(tx: Tx) -> list[bytes]:
            self._attr(tx, ino)
            view, local = split_ino(ino)
            return [sub[:-1] for sub, _ in tx.scan(view, xattr_dir_suffix(local))]

        return self._read(op)  # type: ignore[return-value]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        def op(tx: Tx) -> bytes:
            self._attr(tx, ino)
            view, local = split_ino(ino)
            raw = tx.get(view, xattr_suffix(local, name))
            if raw is None:
                raise FsError(errno.ENODATA, "no such attribute")
            return raw[1:]

        return self._read(op)  # type: ignore[return-value]

    def usage(self) -> tuple[int, int]:
        """(bytes the store uses, bytes it may grow to)."""
        return self.engine.usage()

    # ------------------------------------------------------------ namespace changes

    def create(self, dir_ino: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0, target: bytes | None = None) -> Attr:
        """mknod/create/mkdir/symlink: `mode` carries the file type."""
        check_name(name)
        with self.store.write() as tx:
            self._check_rw(tx, dir_ino)
            d = self._live_dir(tx, dir_ino)
            self._check_reserved(dir_ino, name)
            if self._entry(tx, dir_ino, name) is not None:
                raise FsError(errno.EEXIST, "entry exists")
            view, _ = split_ino(dir_ino)
            now = self.clock()
            if d.mode & stat.S_ISGID:
                gid = d.gid
                if stat.S_ISDIR(mode):
                    mode |= stat.S_ISGID
            is_dir = stat.S_ISDIR(mode)
            a = Attr(mode, uid, gid, nlink=2 if is_dir else 1, atime_ns=now, mtime_ns=now,
                     ctime_ns=now, rdev=rdev, target=target,
                     size=len(target) if target is not None else 0)
            local = tx.alloc_ino(view)
            a.ino = fuse_ino(view, local)
            if is_dir:
                a.parent_view, a.parent_local = 0, split_ino(dir_ino)[1]
            self._put_attr(tx, a)
            self._link_entry(tx, dir_ino, name, a)
            if is_dir:
                d.nlink += 1
            self._touch(tx, d, now)
            return a

    def link(self, ino: int, dir_ino: int, name: bytes) -> Attr:
        check_name(name)
        with self.store.write() as tx:
            self._check_rw(tx, dir_ino)
            a = self._attr(tx, ino)
            d = self._live_dir(tx, dir_ino)
            if a.is_dir:
                raise FsError(errno.EPERM, "hard links to directories are not allowed")
            if a.nlink == 0:
                raise FsError(errno.ENOENT, "the file has been removed")
            if split_ino(ino)[0] != split_ino(dir_ino)[0]:
                raise FsError(errno.EXDEV, "hard link across forks")
            self._check_reserved(dir_ino, name)
            if self._entry(tx, dir_ino, name) is not None:
                raise FsError(errno.EEXIST, "entry exists")
            now = self.clock()
            a.nlink += 1
            a.ctime_ns = now
            self._put_attr(tx, a)
            self._link_entry(tx, dir_ino, name, a)
            self._touch(tx, d, now)
            return a

    def unlink(self, dir_ino: int, name: bytes) -> Attr:
        with self.store.write() as tx:
            self._check_rw(tx, dir_ino)
            d = self._dir(tx, dir_ino)
            child = self._entry(tx, dir_ino, name)
            if child is None:
                raise FsError(errno.ENOENT, "no such entry")
            a = self._attr(tx, child)
            if a.is_dir:
                raise FsError(errno.EISDIR, "is a directory")
            now = self.clock()
            self._unlink_entry(tx, dir_ino, name)
            self._drop_link(tx, a, now)
            self._touch(tx, d, now)
            return a

    def _drop_link(self, tx: Tx, a: Attr, now: int) -> None:
        a.nlink -= 1
        a.ctime_ns = now
        self._put_attr(tx, a)
        if a.nlink == 0:
            # Freed when the kernel forgets it (it may still be open).
            tx.txn.put(codec.orphan_key(*split_ino(a.ino)), b"")

    def rmdir(self, dir_ino: int, name: bytes) -> None:
        with self.store.write() as tx:
            self._check_rw(tx, dir_ino)
            d = self._dir(tx, dir_ino)
            if name == b".":
                raise FsError(errno.EINVAL, "cannot remove '.'")
            if name == b"..":
                raise FsError(errno.ENOTEMPTY, "cannot remove '..'")
            child = self._entry(tx, dir_ino, name)
            if child is None:
                raise FsError(errno.ENOENT, "no such entry")
            a = self._attr(tx, child)
            if not a.is_dir:
                raise FsError(errno.ENOTDIR, "not a directory")
            self._check_empty(tx, a)
            now = self.clock()
            self._unlink_entry(tx, dir_ino, name)
            d.nlink -= 1
            self._touch(tx, d, now)
            a.nlink = 0
            a.ctime_ns = now
            self._put_attr(tx, a)
            tx.txn.put(codec.orphan_key(*split_ino(a.ino)), b"")

    def _check_empty(self, tx: Tx, a: Attr) -> None:
        view, local = split_ino(a.ino)
        for _ in tx.scan(view, dentry_dir_suffix(local)):
            raise FsError(errno.ENOTEMPTY, "directory not empty")

    def rename(self, src_dir: int, src_name: bytes, dst_dir: int, dst_name: bytes,
               flags: int = 0) -> None:
        check_name(dst_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
                RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, "unsupported rename flags")
        with self.store.write() as tx:
            self._rename(tx, src_dir, src_name, dst_dir, dst_name, flags)

    def _rename(self, tx: Tx, src_dir: int, src_name: bytes, dst_dir: int, dst_name: bytes,
                flags: int) -> None:
        self._check_rw(tx, src_dir)
        sd = self._dir(tx, src_dir)
        dd = sd if dst_dir == src_dir else self._live_dir(tx, dst_dir)
        if split_ino(src_dir)[0] != split_ino(dst_dir)[0]:
            raise FsError(errno.EXDEV, "rename across forks")
        src = self._entry(tx, src_dir, src_name)
        if src is None:
            raise FsError(errno.ENOENT, "no such entry")
        self._check_reserved(dst_dir, dst_name)
        sa = self._attr(tx, src)
        dst = self._entry(tx, dst_dir, dst_name)
        da = self._attr(tx, dst) if dst is not None else None
        now = self.clock()
        if flags & RENAME_EXCHANGE:
            if da is None:
                raise FsError(errno.ENOENT, "exchange target does not exist")
            self._exchange(tx, sd, src_name, sa, dd, dst_name, da, now)
            return
        if da is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST, "target exists")
        if da is not None and da.ino == sa.ino:
            return  # same inode: POSIX says do nothing
        if sa.is_dir:
            self._check_not_ancestor(tx, sa.ino, dd)
        if da is not None:
            if sa.is_dir and not da.is_dir:
                raise FsError(errno.ENOTDIR, "cannot replace a file with a directory")
            if not sa.is_dir and da.is_dir:
                raise FsError(errno.EISDIR, "cannot replace a directory with a file")
            if da.is_dir:
                self._check_empty(tx, da)
                da.nlink = 0
                da.ctime_ns = now
                self._put_attr(tx, da)
                tx.txn.put(codec.orphan_key(*split_ino(da.ino)), b"")
                dd.nlink -= 1
            else:
                self._drop_link(tx, da, now)
        self._unlink_entry(tx, src_dir, src_name)
        self._link_entry(tx, dst_dir, dst_name, sa)
        sa.ctime_ns = now
        if sa.is_dir and dst_dir != src_dir:
            self._set_parent(sa, dst_dir)
            sd.nlink -= 1
            dd.nlink += 1
        self._put_attr(tx, sa)
        sd.mtime_ns = sd.ctime_ns = now
        self._put_attr(tx, sd)
        if dd is not sd:
            self._touch(tx, dd, now)

    def _set_parent(self, a: Attr, dir_ino: int) -> None:
        pview, plocal = split_ino(dir_ino)
        a.parent_view = 0 if pview == split_ino(a.ino)[0] else pview
        a.parent_local = plocal

    def _exchange(self, tx: Tx, sd: Attr, sname: bytes, sa: Attr, dd: Attr, dname: bytes,
                  da: Attr, now: int) -> None:
        if sa.ino == da.ino:
            return
        if sd.ino != dd.ino:
            if sa.is_dir:
                self._check_not_ancestor(tx, sa.ino, dd)
            if da.is_dir:
                self._check_not_ancestor(tx, da.ino, sd)
        self._link_entry(tx, sd.ino, sname, da)
        self._link_entry(tx, dd.ino, dname, sa)
        if sd.ino != dd.ino:
            if sa.is_dir:
                self._set_parent(sa, dd.ino)
                sd.nlink -= 1
                dd.nlink += 1
            if da.is_dir:
                self._set_parent(da, sd.ino)
                dd.nlink -= 1
                sd.nlink += 1
        sa.ctime_ns = da.ctime_ns = now
        self._put_attr(tx, sa)
        self._put_attr(tx, da)
        self._touch(tx, sd, now)
        if dd.ino != sd.ino:
            self._touch(tx, dd, now)

    def _ancestors(self, tx: Tx, d: Attr) -> Iterator[Attr]:
        """Directory `d`, its parent, ... up to the root (across forks)."""
        cur = d
        for _ in range(100000):
            yield cur
            if cur.ino == ROOT_INO:
                return
            cur = self._attr(tx, self._parent(cur))
        raise FsError(errno.ELOOP, "directory tree too deep")

    def _check_not_ancestor(self, tx: Tx, ino: int, d: Attr) -> None:
        """EINVAL if directory `ino` is `d` or one of its ancestors."""
        if any(a.ino == ino for a in self._ancestors(tx, d)):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")

    # ------------------------------------------------------------ attributes and data

    def setattr(self, ino: int, ch: SetAttr) -> Attr:
        with self.store.write() as tx:
            self._check_rw(tx, ino)
            a = self._attr(tx, ino)
            now = self.clock()
            if ch.size is not None and ch.size != a.size:
                if a.is_dir:
                    raise FsError(errno.EISDIR, "is a directory")
                if not a.is_reg:
                    raise FsError(errno.EINVAL, "not a regular file")
                self._truncate(tx, a, ch.size)
                a.mtime_ns = now
            if ch.mode is not None:
                a.mode = stat.S_IFMT(a.mode) | stat.S_IMODE(ch.mode)
            if ch.uid is not None:
                a.uid = ch.uid
            if ch.gid is not None:
                a.gid = ch.gid
            if ch.atime_ns is not None:
                a.atime_ns = ch.atime_ns
            if ch.mtime_ns is not None:
                a.mtime_ns = ch.mtime_ns
            a.ctime_ns = ch.ctime_ns if ch.ctime_ns is not None else now
            self._put_attr(tx, a)
            return a

    def _truncate(self, tx: Tx, a: Attr, size: int) -> None:
        if size < 0 or size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG if size > 0 else errno.EINVAL, "bad file size")
        if a.flags & codec.FLAG_LOG and size != a.size:
            raise FsError(errno.EPERM, "append-only: a log file is never truncated")
        view, local = split_ino(a.ino)
        if size < a.size:
            first_gone = -(-size // BLOCK_SIZE)  # blocks wholly past the new end
            for sub, raw in list(tx.scan(view, block_dir_suffix(local), codec.u64(first_gone))):
                tx.remove(view, block_dir_suffix(local) + sub)
                a.stored -= len(raw)
            bno, boff = divmod(size, BLOCK_SIZE)
            if boff:
                tail = tx.get(view, block_suffix(local, bno))
                if tail is not None and len(tail) > boff:
                    tx.put(view, block_suffix(local, bno), tail[:boff])
                    a.stored -= len(tail) - boff
        a.size = size

    def write(self, ino: int, offset: int, data: bytes) -> Attr:
        with self.store.write() as tx:
            self._check_rw(tx, ino)
            a = self._attr(tx, ino)
            if not a.is_reg:
                raise FsError(errno.EISDIR if a.is_dir else errno.EINVAL, "not a regular file")
            self._write(tx, a, offset, data)
            return a

    def _write(self, tx: Tx, a: Attr, offset: int, data: bytes) -> None:
        """Write `data` at `offset` into file `a` and save its attributes."""
        if offset < 0:
            raise FsError(errno.EINVAL, "negative offset")
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, "file too large")
        if a.flags & codec.FLAG_LOG:
            logdata.append(tx, a, offset, data)
            end = a.size
        else:
            self._write_blocks(tx, a, offset, data)
            end = offset + len(data)
        now = self.clock()
        a.size = max(a.size, end)
        a.mtime_ns = a.ctime_ns = now
        self._put_attr(tx, a)

    def _write_blocks(self, tx: Tx, a: Attr, offset: int, data: bytes) -> None:
        view, local = split_ino(a.ino)
        pos, end = offset, offset + len(data)
        mv = memoryview(data)
        while pos < end:
            bno, boff = divmod(pos, BLOCK_SIZE)
            n = min(BLOCK_SIZE - boff, end - pos)
            piece = mv[pos - offset:pos - offset + n]
            key = block_suffix(local, bno)
            old = tx.get(view, key) if bno * BLOCK_SIZE < a.size else None
            if boff == 0 and (n == BLOCK_SIZE or pos + n >= a.size):
                new = bytes(piece)  # covers everything this block holds: no merge
            else:
                buf = bytearray(old or b"")
                if len(buf) < boff:
                    buf += bytes(boff - len(buf))
                buf[boff:boff + n] = piece
                new = bytes(buf)
            tx.put(view, key, new)
            a.stored += len(new) - (len(old) if old else 0)
            pos += n

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if not name or len(name) > XATTR_NAME_MAX or b"\0" in name:
            raise FsError(errno.ERANGE, "bad attribute name")
        if not name.startswith(XATTR_NAMESPACES):
            raise FsError(errno.EOPNOTSUPP, "supported namespaces: user, trusted, security")
        if len(value) > XATTR_SIZE_MAX:
            raise FsError(errno.E2BIG, "attribute value too large")
        with self.store.write() as tx:
            self._check_rw(tx, ino)
            a = self._attr(tx, ino)
            view, local = split_ino(ino)
            exists = tx.get(view, xattr_suffix(local, name)) is not None
            if flags & XATTR_CREATE and exists:
                raise FsError(errno.EEXIST, "attribute exists")
            if flags & XATTR_REPLACE and not exists:
                raise FsError(errno.ENODATA, "no such attribute")
            tx.put(view, xattr_suffix(local, name), b"\x01" + value)
            a.ctime_ns = self.clock()
            self._put_attr(tx, a)

    def removexattr(self, ino: int, name: bytes) -> None:
        with self.store.write() as tx:
            self._check_rw(tx, ino)
            a = self._attr(tx, ino)
            view, local = split_ino(ino)
            if tx.get(view, xattr_suffix(local, name)) is None:
                raise FsError(errno.ENODATA, "no such attribute")
            tx.remove(view, xattr_suffix(local, name))
            a.ctime_ns = self.clock()
            self._put_attr(tx, a)

    # ------------------------------------------------------------ lifetime

    def forget(self, ino: int) -> None:
        """The kernel holds no more references: free the inode if it is unlinked."""
        view, local = split_ino(ino)
        with self.store.write() as tx:
            if tx.txn.get(codec.orphan_key(view, local)) is None:
                return
            self._free(tx, view, local)

    def free_orphans(self) -> int:
        """At mount: nothing is open any more, so every orphan can go."""
        n = 0
        with self.store.write() as tx:
            for k, _ in list(tx.txn.scan(b"O", b"P")):
                self._free(tx, codec.read_u32(k, 1), codec.read_u64(k, 5))
                n += 1
        return n

    def _free(self, tx: Tx, view: int, local: int) -> None:
        tx.txn.delete(codec.orphan_key(view, local))
        if not tx.view_exists(view) or tx.view(view).kind == "dead":
            return
        a = tx.get(view, attr_suffix(local))
        if a is not None and Attr.decode(a).is_dir and self._drop_dir_view(tx, view, local):
            return
        for sub, _ in list(tx.scan(view, codec.ino_suffix(local))):
            tx.remove(view, codec.ino_suffix(local) + sub)
        tx.mark_dirty(view)

    def _drop_dir_view(self, tx: Tx, view: int, local: int) -> bool:
        """A removed directory takes its snapshots (and, if it was the root of a
        fork, the fork itself) with it. True if the whole view went."""
        for k, raw in list(tx.txn.scan(codec.snap_prefix(view, local),
                                       prefix_end(codec.snap_prefix(view, local)))):
            self._kill_view(tx, codec.read_u32(raw))
            tx.txn.delete(k)
        v = tx.view(view)
        if v.root == local and view != ROOT_VIEW:
            self._kill_view(tx, view)
            return True
        return False

    def sync(self) -> None:
        self.engine.sync()

    # ------------------------------------------------------------ forks and snapshots

    def _pin_tree(self, tx: Tx, view: int, holder: bytes, epoch: int | None = None,
                  top: int | None = None) -> int:
        """Pin `view` and every view nested in it (their state is part of the
        tree); only those mounted under directory `top` of the view if given
        (for "now" only: where a view sat at a past epoch is not tracked)."""
        e = tx.pin(view, holder, epoch)
        for k, _ in list(tx.txn.scan(b"C" + u32(view), prefix_end(b"C" + u32(view)))):
            inner = codec.read_u32(k, 5)
            if tx.view(inner).kind in ("dead", "snapshot"):
                continue
            if top is not None and epoch is None and not self._mounted_under(tx, view, top,
                                                                             inner):
                continue
            if epoch is None or tx.is_pinned(inner, e):
                tx.txn.put(codec.pin_key(inner, e, holder), b"")
                tx.store._maxpin[inner] = max(tx.maxpin(inner), e)
                self._pin_nested(tx, inner, holder, e)
        return e

    def _mounted_under(self, tx: Tx, view: int, top: int, inner: int) -> bool:
        """Is nested view `inner`'s root entry inside directory `top` of `view`?
        (Unsure answers say yes: pinning too much is only a cost.)"""
        want = fuse_ino(view, top)
        try:
            root = self._attr(tx, fuse_ino(inner, tx.view(inner).root))
            return any(a.ino == want for a in self._ancestors(tx, root))
        except FsError:
            return True

    def _pin_nested(self, tx: Tx, view: int, holder: bytes, e: int) -> None:
        for k, _ in list(tx.txn.scan(b"C" + u32(view), prefix_end(b"C" + u32(view)))):
            inner = codec.read_u32(k, 5)
            if tx.view(inner).kind in ("dead", "snapshot"):
                continue
            tx.txn.put(codec.pin_key(inner, e, holder), b"")
            tx.store._maxpin[inner] = max(tx.maxpin(inner), e)
            self._pin_nested(tx, inner, holder, e)

    def _release(self, tx: Tx, holder: bytes) -> None:
        """Release every pin `holder` has. A dead view left unpinned by that
        lets go of the views it read through to, and so on down."""
        todo = [holder]
        while todo:
            for v in tx.release_holder(todo.pop()):
                if tx.view_exists(v) and tx.view(v).kind == "dead" and not tx.pins(v):
                    todo.append(b"v" + u32(v))

    def pin(self, dir_ino: int, holder: bytes) -> int:
        """Remember the tree under `dir_ino`'s view as it is now; returns the epoch."""
        with self.store.write() as tx:
            self._dir(tx, dir_ino)
            view, local = split_ino(dir_ino)
            return self._pin_tree(tx, view, holder, top=local)

    def unpin(self, dir_ino: int, holder: bytes) -> None:
        with self.store.write() as tx:
            self._release(tx, holder)

    def fork(self, src_dir: int, dst_dir: int, dst_name: bytes, epoch: int | None = None,
             uid: int = 0, gid: int = 0) -> Attr:
        """Make `dst_dir/dst_name` a copy-on-write copy of directory `src_dir`
        (as it is now, or as it was at a pinned `epoch`). Constant cost."""
        check_name(dst_name)
        with self.store.write() as tx:
            self._dir(tx, src_dir)
            dd = self._live_dir(tx, dst_dir)
            self._check_reserved(dst_dir, dst_name)
            if self._entry(tx, dst_dir, dst_name) is not None:
                raise FsError(errno.EEXIST, "destination exists")
            if tx.view(split_ino(dst_dir)[0]).readonly:
                raise FsError(errno.EROFS, "snapshots are read-only")
            sview, slocal = split_ino(src_dir)
            sv = tx.view(sview)
            chain = tx.levels(sview)
            vid = tx.store.next_view
            holder = b"v" + u32(vid)
            if sv.readonly:
                # A fork of a snapshot: same frozen state, writable.
                if epoch is not None:
                    raise FsError(errno.EINVAL, "a snapshot has a single epoch")
                e = sv.chain[0][1]
                tx.pin(sv.chain[0][0], holder, e)
                new_chain = list(sv.chain)
            else:
                e = self._pin_tree(tx, sview, holder, epoch, top=slocal)
                new_chain = [(sview, e), *chain[1:]]
            nv = tx.new_view(new_chain, slocal, False, split_ino(dst_dir)[0], "fork",
                             tx.peek_next_ino(sview))
            assert nv.id == vid
            tx.txn.put(b"C" + u32(split_ino(dst_dir)[0]) + u32(vid), b"")
            root_ino = fuse_ino(vid, slocal)
            root = self._attr(tx, root_ino)  # as it was at the fork epoch
            now = self.clock()
            self._set_parent(root, dst_dir)
            root.ctime_ns = now
            self._put_attr(tx, root)
            self._link_entry(tx, dst_dir, dst_name, root)
            dd.nlink += 1
            self._touch(tx, dd, now)
            return root

    def snapshot(self, dir_ino: int, name: bytes, epoch: int | None = None) -> Attr:
        """Create read-only snapshot `name` of directory `dir_ino` (reached as
        DIR/.snapshots/NAME); at a pinned `epoch` if given."""
        check_name(name)
        with self.store.write() as tx:
            self._dir(tx, dir_ino)
            view, local = split_ino(dir_ino)
            v = tx.view(view)
            if v.readonly:
                raise FsError(errno.EROFS, "cannot snapshot inside a snapshot")
            key = codec.snap_prefix(view, local) + name
            if tx.txn.get(key) is not None:
                raise FsError(errno.EEXIST, "snapshot exists")
            vid = tx.store.next_view
            e = self._pin_tree(tx, view, b"v" + u32(vid), epoch, top=local)
            nv = tx.new_view([(view, e), *v.chain], local, True, view, "snapshot",
                             tx.peek_next_ino(view))
            tx.txn.put(b"C" + u32(view) + u32(nv.id), b"")
            tx.txn.put(key, u32(nv.id))
            return self._attr(tx, fuse_ino(nv.id, local))

    def snapshots(self, dir_ino: int) -> list[tuple[bytes, Attr]]:
        def op(tx: Tx) -> list[tuple[bytes, Attr]]:
            self._dir(tx, dir_ino)
            view, local = split_ino(dir_ino)
            p = codec.snap_prefix(view, local)
            out = []
            for k, raw in tx.txn.scan(p, prefix_end(p)):
                sv = tx.view(codec.read_u32(raw))
                out.append((k[len(p):], self._attr(tx, fuse_ino(sv.id, sv.root))))
            return out

        return self._read(op)  # type: ignore[return-value]

    def snapshot_root(self, dir_ino: int, name: bytes) -> Attr:
        def op(tx: Tx) -> Attr:
            view, local = split_ino(dir_ino)
            raw = tx.txn.get(codec.snap_prefix(view, local) + name)
            if raw is None:
                raise FsError(errno.ENOENT, "no such snapshot")
            sv = tx.view(codec.read_u32(raw))
            return self._attr(tx, fuse_ino(sv.id, sv.root))

        return self._read(op)  # type: ignore[return-value]

    def delete_snapshot(self, dir_ino: int, name: bytes) -> None:
        with self.store.write() as tx:
            view, local = split_ino(dir_ino)
            key = codec.snap_prefix(view, local) + name
            raw = tx.txn.get(key)
            if raw is None:
                raise FsError(errno.ENOENT, "no such snapshot")
            tx.txn.delete(key)
            self._kill_view(tx, codec.read_u32(raw))

    def _kill_view(self, tx: Tx, vid: int) -> None:
        """Mark a view (and the views nested in it) dead; gc reclaims what they held.

        A dead view keeps its own pins (on the views it reads through to) for
        as long as something still pins it: a snapshot taken earlier may see
        it, and so everything under it. The last unpin releases them."""
        v = tx.view(vid)
        if v.kind == "dead":
            return
        v.kind = "dead"  # (the cached definition: _release sees it)
        # Deletions first: on a full store, this is how space comes back.
        tx.txn.delete(b"C" + u32(v.container) + u32(vid))
        for k, _ in list(tx.txn.scan(b"C" + u32(vid), prefix_end(b"C" + u32(vid)))):
            self._kill_view(tx, codec.read_u32(k, 5))
        if not tx.pins(vid):
            self._release(tx, b"v" + u32(vid))
        tx.save_view(v)
        tx.mark_dirty(vid)

    def detach(self, dir_ino: int, name: bytes) -> None:
        """Remove fork root `dir_ino/name` and everything in it at once
        (`rm -rf` would write a tombstone per file)."""
        with self.store.write() as tx:
            d = self._dir(tx, dir_ino)
            child = self._entry(tx, dir_ino, name)
            if child is None:
                raise FsError(errno.ENOENT, "no such entry")
            cview, clocal = split_ino(child)
            if cview == split_ino(dir_ino)[0] or tx.view(cview).root != clocal:
                raise FsError(errno.EINVAL, "not the root of a fork")
            self._kill_view(tx, cview)  # first: it frees what it can
            self._unlink_entry(tx, dir_ino, name)
            d.nlink -= 1
            self._touch(tx, d, self.clock())

    def epoch_now(self) -> int:
        return self.store.epoch

    def path_ino(self, path: str) -> int:
        """Resolve a path relative to the root (no symlinks followed)."""
        ino = ROOT_INO
        parts = iter(path.strip("/").split("/"))
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                ino = self.parent_of(self.getattr(ino))
            elif part == SNAPDIR.decode():
                name = next(parts, "")
                if not name:
                    raise FsError(errno.EINVAL, "name a snapshot: DIR/.snapshots/NAME")
                ino = self.snapshot_root(ino, os.fsencode(name)).ino
            else:
                ino = self.lookup(ino, os.fsencode(part)).ino
        return ino
