"""The POSIX namespace inside one transaction: inodes, entries, data, xattrs.

`Inodes` is bound to one `Tx` and never opens or commits a transaction
itself, so several operations compose into one: `FileSystem` (fs.py) wraps
each POSIX call in its own transaction, and the agent layer builds spawn,
fork, remove and message delivery out of the same pieces, each as exactly one
transaction. Views, pins, forks and snapshots are added on top by
`forks.Tree`, which is what callers get.

Everything speaks FUSE inode numbers (a view and a local inode, see
codec.fuse_ino). Errors are `FsError` with an errno.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from agentfs.errors import FsError
from agentfs.posix import logdata
from agentfs.storage import codec, keys
from agentfs.storage.codec import (
    ROOT_LOCAL,
    ROOT_VIEW,
    Attr,
    decode_dentry,
    encode_dentry,
    fuse_ino,
    split_ino,
)
from agentfs.storage.keys import (
    attr_suffix,
    block_dir_suffix,
    block_suffix,
    dentry_dir_suffix,
    dentry_suffix,
    xattr_dir_suffix,
    xattr_suffix,
)
from agentfs.storage.views import Tx

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


class Inodes:
    """Inode, entry, data and xattr operations inside transaction `tx`."""

    def __init__(self, tx: Tx, clock: Callable[[], int]) -> None:
        self.tx = tx
        self.clock = clock

    def format_root(self) -> None:
        """Write the root directory of a new store."""
        now = self.clock()
        root = Attr(stat.S_IFDIR | 0o755, 0, 0, nlink=2, atime_ns=now, mtime_ns=now,
                    ctime_ns=now, parent_view=ROOT_VIEW, parent_local=ROOT_LOCAL)
        self.tx.put(ROOT_VIEW, attr_suffix(ROOT_LOCAL), root.encode())

    def attr(self, ino: int) -> Attr:
        view, local = split_ino(ino)
        v = self.tx.view(view)
        if v.kind == "dead":
            raise FsError(errno.ESTALE, "this fork or snapshot has been removed")
        raw = self.copy_root_attr(view) if v.readonly and local == v.root else None
        if raw is None:
            raw = self.tx.get(view, attr_suffix(local))
        if raw is None:
            raise FsError(errno.ENOENT, f"inode {ino} does not exist")
        return Attr.decode(raw, ino)

    def put_attr(self, a: Attr, new: bool = False) -> None:
        """Save `a` (`new`: the inode's first save, see Tx.put_new)."""
        view, local = split_ino(a.ino)
        (self.tx.put_new if new else self.tx.put)(view, attr_suffix(local), a.encode())

    def dir(self, ino: int) -> Attr:
        a = self.attr(ino)
        if not a.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")
        return a

    def live_dir(self, ino: int) -> Attr:
        """A directory new entries may go into: not one already removed."""
        a = self.dir(ino)
        if a.nlink == 0:
            raise FsError(errno.ENOENT, "the directory has been removed")
        return a

    def entry(self, dir_ino: int, name: bytes) -> int | None:
        """The inode number `name` leads to in directory `dir_ino`, or None."""
        view, local = split_ino(dir_ino)
        found = self.tx.get_level(view, dentry_suffix(local, name))
        if found is None:
            return None
        level, raw = found
        tview, tlocal, _ = decode_dentry(raw)
        return self.target(view, level, tview, tlocal)

    def target(self, view: int, level: int, tview: int, tlocal: int) -> int:
        if tview == 0:
            return fuse_ino(view, tlocal)
        levels = self.tx.levels(view)
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
            raw = self.tx.txn.get(keys.nested_copy(lv, tview))
            if raw is not None and self.tx.view(keys.read_u32(raw)).created <= llim:
                source, limit = keys.read_u32(raw), llim
                break
        return fuse_ino(self.nested_copy(view, tview, source, limit), tlocal)

    def nested_copy(self, view: int, inner: int, source: int, limit: int) -> int:
        """This view's copy of nested view `inner`, made from `source` at `limit`."""
        key = keys.nested_copy(view, inner)
        raw = self.tx.txn.get(key)
        if raw is not None:
            return keys.read_u32(raw)
        if not self.tx.writable:
            raise NeedWrite()
        w = self.tx.view(source)
        mine = self.tx.view(view)
        nv = self.tx.new_view([(source, limit), *w.chain], w.root, mine.readonly, view,
                         "snapshot" if mine.readonly else "fork", self.tx.peek_next_ino(source))
        self.tx.pin(source, keys.view_holder(nv.id), limit)
        self.tx.txn.put(key, keys.u32(nv.id))
        self.tx.txn.put(keys.contained(view, nv.id), b"")
        if not mine.first_birth:
            # Forks of this view must not skip it: it holds the copy.
            mine.first_birth = self.tx.store.epoch
            self.tx.save_view(mine)
        # The copy's root points at its parent inside this view.
        raw_root = self.tx.get(nv.id, attr_suffix(w.root))
        if raw_root is not None:
            root = Attr.decode(raw_root)
            root.parent_view = view
            self.tx.txn.put(keys.record_version(nv.id, attr_suffix(w.root), self.tx.store.epoch),
                            root.encode())
        return nv.id

    def copy_root_attr(self, view: int) -> bytes | None:
        """The root attributes a read-only nested copy keeps in its own layer
        (nested_copy points them at the parent inside the copying view), or
        None. Reads of a read-only view skip its own layer, which holds nothing
        else: without this, `..` of a snapshot's nested fork would lead into the
        live tree, and fail once that tree is removed."""
        v = self.tx.view(view)
        return next((val for _, val in self.tx.own_versions(view, attr_suffix(v.root))), None)

    @staticmethod
    def parent_ino(a: Attr) -> int:
        """The inode number of directory `a`'s parent (as recorded: the root's is itself)."""
        view, _ = split_ino(a.ino)
        return fuse_ino(a.parent_view or view, a.parent_local)

    @staticmethod
    def parent_of(a: Attr) -> int:
        """The inode number of directory `a`'s parent (the root is its own)."""
        return ROOT_INO if a.ino == ROOT_INO else Inodes.parent_ino(a)

    def link_entry(self, dir_ino: int, name: bytes, child: Attr, new: bool = False) -> None:
        """Entry `name` in `dir_ino` leads to `child` (`new`: a directory made in
        this transaction, or one only it filled, never had it: see Tx.put_new)."""
        dview, dlocal = split_ino(dir_ino)
        cview, clocal = split_ino(child.ino)
        (self.tx.put_new if new else self.tx.put)(
            dview, dentry_suffix(dlocal, name),
            encode_dentry(0 if cview == dview else cview, clocal, child.mode))

    def unlink_entry(self, dir_ino: int, name: bytes) -> None:
        dview, dlocal = split_ino(dir_ino)
        self.tx.remove(dview, dentry_suffix(dlocal, name))

    def touch(self, a: Attr, now: int) -> None:
        a.mtime_ns = a.ctime_ns = now
        self.put_attr(a)

    def check_rw(self, ino: int) -> None:
        """EROFS before any other check: nothing in a snapshot may change."""
        if self.tx.view(split_ino(ino)[0]).readonly:
            raise FsError(errno.EROFS, "snapshots are read-only")

    def check_reserved(self, dir_ino: int, name: bytes) -> None:
        if name == SNAPDIR or (dir_ino == ROOT_INO and name == CTLDIR):
            raise FsError(errno.EEXIST, f"{name.decode()} is reserved by agentfs")

    def lookup(self, dir_ino: int, name: bytes) -> Attr:
        self.dir(dir_ino)
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, "name too long")
        child = self.entry(dir_ino, name)
        if child is None:
            raise FsError(errno.ENOENT, "no such entry")
        return self.attr(child)

    def readlink(self, ino: int) -> bytes:
        a = self.attr(ino)
        if not a.is_link or a.target is None:
            raise FsError(errno.EINVAL, "not a symbolic link")
        return a.target

    def readdir(self, dir_ino: int, start: int, limit: int) -> list[DirEntry]:
        """Up to `limit` entries after offset `start`, in name-hash order
        (stable under churn)."""
        view, local = split_ino(dir_ino)
        self.dir(dir_ino)
        out = []
        prefix = dentry_dir_suffix(local)
        for sub, raw in self.tx.scan(view, prefix, keys.u64(start + 1)):
            h, name = keys.parse_dentry_tail(sub)
            tview, tlocal, _ = decode_dentry(raw)
            level = 0 if tview == 0 else self.level_of(view, prefix + sub)
            child = self.target(view, level, tview, tlocal)
            out.append(DirEntry(name, self.attr(child), h))
            if len(out) >= limit:
                break
        return out

    def level_of(self, view: int, suffix: bytes) -> int:
        found = self.tx.get_level(view, suffix)
        return 0 if found is None else found[0]

    def read(self, ino: int, offset: int, size: int) -> tuple[bytes, bool]:
        """(the bytes, whether relatime wants the atime updated)."""
        a = self.attr(ino)
        if a.is_dir:
            raise FsError(errno.EISDIR, "is a directory")
        stale_atime = needs_atime_update(a, self.clock()) and not self.tx.view(
            split_ino(ino)[0]).readonly
        if a.flags & codec.FLAG_LOG:
            return logdata.read(self.tx, a, offset, size), stale_atime
        end = min(offset + size, a.size)
        if offset >= end:
            return b"", stale_atime
        view, local = split_ino(ino)
        pieces = []
        pos = offset
        while pos < end:
            bno, boff = divmod(pos, BLOCK_SIZE)
            n = min(BLOCK_SIZE - boff, end - pos)
            raw = self.tx.get(view, block_suffix(local, bno)) or b""
            chunk = raw if boff == 0 and len(raw) == n else raw[boff:boff + n]
            pieces.append(chunk)
            if len(chunk) < n:
                pieces.append(bytes(n - len(chunk)))  # a hole, or past the stored tail
            pos += n
        return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), stale_atime

    def touch_atime(self, ino: int) -> None:
        a = self.attr(ino)
        a.atime_ns = self.clock()
        self.put_attr(a)

    def listxattr(self, ino: int) -> list[bytes]:
        self.attr(ino)
        view, local = split_ino(ino)
        return [keys.parse_xattr_tail(sub) for sub, _ in self.tx.scan(view, xattr_dir_suffix(local))]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.attr(ino)
        view, local = split_ino(ino)
        raw = self.tx.get(view, xattr_suffix(local, name))
        if raw is None:
            raise FsError(errno.ENODATA, "no such attribute")
        return raw[1:]

    def create(self, dir_ino: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0, target: bytes | None = None) -> Attr:
        """mknod/create/mkdir/symlink: `mode` carries the file type."""
        check_name(name)
        self.check_rw(dir_ino)
        d = self.live_dir(dir_ino)
        self.check_reserved(dir_ino, name)
        if self.entry(dir_ino, name) is not None:
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
        local = self.tx.alloc_ino(view)
        a.ino = fuse_ino(view, local)
        if is_dir:
            a.parent_view, a.parent_local = 0, split_ino(dir_ino)[1]
        self.put_attr(a)
        self.link_entry(dir_ino, name, a)
        if is_dir:
            d.nlink += 1
        self.touch(d, now)
        return a

    def link(self, ino: int, dir_ino: int, name: bytes) -> Attr:
        check_name(name)
        self.check_rw(dir_ino)
        a = self.attr(ino)
        d = self.live_dir(dir_ino)
        if a.is_dir:
            raise FsError(errno.EPERM, "hard links to directories are not allowed")
        if a.nlink == 0:
            raise FsError(errno.ENOENT, "the file has been removed")
        if split_ino(ino)[0] != split_ino(dir_ino)[0]:
            raise FsError(errno.EXDEV, "hard link across forks")
        self.check_reserved(dir_ino, name)
        if self.entry(dir_ino, name) is not None:
            raise FsError(errno.EEXIST, "entry exists")
        now = self.clock()
        a.nlink += 1
        a.ctime_ns = now
        self.put_attr(a)
        self.link_entry(dir_ino, name, a)
        self.touch(d, now)
        return a

    def unlink(self, dir_ino: int, name: bytes) -> Attr:
        self.check_rw(dir_ino)
        d = self.dir(dir_ino)
        child = self.entry(dir_ino, name)
        if child is None:
            raise FsError(errno.ENOENT, "no such entry")
        a = self.attr(child)
        if a.is_dir:
            raise FsError(errno.EISDIR, "is a directory")
        now = self.clock()
        self.unlink_entry(dir_ino, name)
        self.drop_link(a, now)
        self.touch(d, now)
        return a

    def drop_link(self, a: Attr, now: int) -> None:
        a.nlink -= 1
        a.ctime_ns = now
        self.put_attr(a)
        if a.nlink == 0:
            # Freed when the kernel forgets it (it may still be open).
            self.tx.txn.put(keys.orphan(*split_ino(a.ino)), b"")

    def rmdir(self, dir_ino: int, name: bytes) -> None:
        self.check_rw(dir_ino)
        d = self.dir(dir_ino)
        if name == b".":
            raise FsError(errno.EINVAL, "cannot remove '.'")
        if name == b"..":
            raise FsError(errno.ENOTEMPTY, "cannot remove '..'")
        child = self.entry(dir_ino, name)
        if child is None:
            raise FsError(errno.ENOENT, "no such entry")
        a = self.attr(child)
        if not a.is_dir:
            raise FsError(errno.ENOTDIR, "not a directory")
        self.check_empty(a)
        now = self.clock()
        self.unlink_entry(dir_ino, name)
        d.nlink -= 1
        self.touch(d, now)
        a.nlink = 0
        a.ctime_ns = now
        self.put_attr(a)
        self.tx.txn.put(keys.orphan(*split_ino(a.ino)), b"")

    def check_empty(self, a: Attr) -> None:
        view, local = split_ino(a.ino)
        for _ in self.tx.scan(view, dentry_dir_suffix(local)):
            raise FsError(errno.ENOTEMPTY, "directory not empty")

    def rename(self, src_dir: int, src_name: bytes, dst_dir: int, dst_name: bytes,
               flags: int = 0) -> None:
        check_name(dst_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
                RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, "unsupported rename flags")
        self.move(src_dir, src_name, dst_dir, dst_name, flags)

    def move(self, src_dir: int, src_name: bytes, dst_dir: int, dst_name: bytes,
                flags: int) -> None:
        self.check_rw(src_dir)
        sd = self.dir(src_dir)
        dd = sd if dst_dir == src_dir else self.live_dir(dst_dir)
        if split_ino(src_dir)[0] != split_ino(dst_dir)[0]:
            raise FsError(errno.EXDEV, "rename across forks")
        src = self.entry(src_dir, src_name)
        if src is None:
            raise FsError(errno.ENOENT, "no such entry")
        self.check_reserved(dst_dir, dst_name)
        sa = self.attr(src)
        dst = self.entry(dst_dir, dst_name)
        da = self.attr(dst) if dst is not None else None
        now = self.clock()
        if flags & RENAME_EXCHANGE:
            if da is None:
                raise FsError(errno.ENOENT, "exchange target does not exist")
            self.exchange(sd, src_name, sa, dd, dst_name, da, now)
            return
        if da is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST, "target exists")
        if da is not None and da.ino == sa.ino:
            return  # same inode: POSIX says do nothing
        if sa.is_dir:
            self.check_not_ancestor(sa.ino, dd)
        if da is not None:
            if sa.is_dir and not da.is_dir:
                raise FsError(errno.ENOTDIR, "cannot replace a file with a directory")
            if not sa.is_dir and da.is_dir:
                raise FsError(errno.EISDIR, "cannot replace a directory with a file")
            if da.is_dir:
                self.check_empty(da)
                da.nlink = 0
                da.ctime_ns = now
                self.put_attr(da)
                self.tx.txn.put(keys.orphan(*split_ino(da.ino)), b"")
                dd.nlink -= 1
            else:
                self.drop_link(da, now)
        self.unlink_entry(src_dir, src_name)
        self.link_entry(dst_dir, dst_name, sa)
        sa.ctime_ns = now
        if sa.is_dir and dst_dir != src_dir:
            self.set_parent(sa, dst_dir)
            sd.nlink -= 1
            dd.nlink += 1
        self.put_attr(sa)
        sd.mtime_ns = sd.ctime_ns = now
        self.put_attr(sd)
        if dd is not sd:
            self.touch(dd, now)

    def set_parent(self, a: Attr, dir_ino: int) -> None:
        pview, plocal = split_ino(dir_ino)
        a.parent_view = 0 if pview == split_ino(a.ino)[0] else pview
        a.parent_local = plocal

    def exchange(self, sd: Attr, sname: bytes, sa: Attr, dd: Attr, dname: bytes,
                  da: Attr, now: int) -> None:
        if sa.ino == da.ino:
            return
        if sd.ino != dd.ino:
            if sa.is_dir:
                self.check_not_ancestor(sa.ino, dd)
            if da.is_dir:
                self.check_not_ancestor(da.ino, sd)
        self.link_entry(sd.ino, sname, da)
        self.link_entry(dd.ino, dname, sa)
        if sd.ino != dd.ino:
            if sa.is_dir:
                self.set_parent(sa, dd.ino)
                sd.nlink -= 1
                dd.nlink += 1
            if da.is_dir:
                self.set_parent(da, sd.ino)
                dd.nlink -= 1
                sd.nlink += 1
        sa.ctime_ns = da.ctime_ns = now
        self.put_attr(sa)
        self.put_attr(da)
        self.touch(sd, now)
        if dd.ino != sd.ino:
            self.touch(dd, now)

    def ancestors(self, d: Attr) -> Iterator[Attr]:
        """Directory `d`, its parent, ... up to the root (across forks)."""
        cur = d
        for _ in range(100000):
            yield cur
            if cur.ino == ROOT_INO:
                return
            cur = self.attr(self.parent_ino(cur))
        raise FsError(errno.ELOOP, "directory tree too deep")

    def check_not_ancestor(self, ino: int, d: Attr) -> None:
        """EINVAL if directory `ino` is `d` or one of its ancestors."""
        if any(a.ino == ino for a in self.ancestors(d)):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")

    def setattr(self, ino: int, ch: SetAttr) -> Attr:
        self.check_rw(ino)
        a = self.attr(ino)
        now = self.clock()
        if ch.size is not None and ch.size != a.size:
            if a.is_dir:
                raise FsError(errno.EISDIR, "is a directory")
            if not a.is_reg:
                raise FsError(errno.EINVAL, "not a regular file")
            self.truncate(a, ch.size)
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
        self.put_attr(a)
        return a

    def truncate(self, a: Attr, size: int) -> None:
        if size < 0 or size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG if size > 0 else errno.EINVAL, "bad file size")
        if a.flags & codec.FLAG_LOG and size != a.size:
            raise FsError(errno.EPERM, "append-only: a log file is never truncated")
        view, local = split_ino(a.ino)
        if size < a.size:
            first_gone = -(-size // BLOCK_SIZE)  # blocks wholly past the new end
            for sub, raw in list(self.tx.scan(view, block_dir_suffix(local), keys.u64(first_gone))):
                self.tx.remove(view, block_dir_suffix(local) + sub)
                a.stored -= len(raw)
            bno, boff = divmod(size, BLOCK_SIZE)
            if boff:
                tail = self.tx.get(view, block_suffix(local, bno))
                if tail is not None and len(tail) > boff:
                    self.tx.put(view, block_suffix(local, bno), tail[:boff])
                    a.stored -= len(tail) - boff
        a.size = size

    def write(self, ino: int, offset: int, data: bytes) -> Attr:
        self.check_rw(ino)
        a = self.attr(ino)
        if not a.is_reg:
            raise FsError(errno.EISDIR if a.is_dir else errno.EINVAL, "not a regular file")
        self.write_data(a, offset, data)
        return a

    def write_data(self, a: Attr, offset: int, data: bytes) -> None:
        """Write `data` at `offset` into file `a` and save its attributes."""
        if offset < 0:
            raise FsError(errno.EINVAL, "negative offset")
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, "file too large")
        if a.flags & codec.FLAG_LOG:
            logdata.append(self.tx, a, offset, data)
            end = a.size
        else:
            self.write_blocks(a, offset, data)
            end = offset + len(data)
        now = self.clock()
        a.size = max(a.size, end)
        a.mtime_ns = a.ctime_ns = now
        self.put_attr(a)

    def write_blocks(self, a: Attr, offset: int, data: bytes, new: bool = False) -> None:
        """Write `data` at `offset` into the blocks of file `a` (`new`: blocks only
        this transaction, or none, wrote before, see Tx.put_new)."""
        view, local = split_ino(a.ino)
        put = self.tx.put_new if new else self.tx.put
        pos, end = offset, offset + len(data)
        mv = memoryview(data)
        while pos < end:
            bno, boff = divmod(pos, BLOCK_SIZE)
            n = min(BLOCK_SIZE - boff, end - pos)
            piece = mv[pos - offset:pos - offset + n]
            key = block_suffix(local, bno)
            old = self.tx.get(view, key) if bno * BLOCK_SIZE < a.size else None
            if boff == 0 and (n == BLOCK_SIZE or pos + n >= a.size):
                block = bytes(piece)  # covers everything this block holds: no merge
            else:
                buf = bytearray(old or b"")
                if len(buf) < boff:
                    buf += bytes(boff - len(buf))
                buf[boff:boff + n] = piece
                block = bytes(buf)
            put(view, key, block)
            a.stored += len(block) - (len(old) if old else 0)
            pos += n

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if not name or len(name) > XATTR_NAME_MAX or b"\0" in name:
            raise FsError(errno.ERANGE, "bad attribute name")
        if not name.startswith(XATTR_NAMESPACES):
            raise FsError(errno.EOPNOTSUPP, "supported namespaces: user, trusted, security")
        if len(value) > XATTR_SIZE_MAX:
            raise FsError(errno.E2BIG, "attribute value too large")
        self.check_rw(ino)
        a = self.attr(ino)
        view, local = split_ino(ino)
        exists = self.tx.get(view, xattr_suffix(local, name)) is not None
        if flags & XATTR_CREATE and exists:
            raise FsError(errno.EEXIST, "attribute exists")
        if flags & XATTR_REPLACE and not exists:
            raise FsError(errno.ENODATA, "no such attribute")
        self.put_xattr(ino, name, value)
        a.ctime_ns = self.clock()
        self.put_attr(a)

    def put_xattr(self, ino: int, name: bytes, value: bytes, new: bool = False) -> None:
        """Store attribute `name` of `ino` (checked by the caller; attributes
        untouched; `new`: a new inode's, see Tx.put_new)."""
        view, local = split_ino(ino)
        (self.tx.put_new if new else self.tx.put)(view, xattr_suffix(local, name),
                                                  b"\x01" + value)

    def removexattr(self, ino: int, name: bytes) -> None:
        self.check_rw(ino)
        a = self.attr(ino)
        view, local = split_ino(ino)
        if self.tx.get(view, xattr_suffix(local, name)) is None:
            raise FsError(errno.ENODATA, "no such attribute")
        self.tx.remove(view, xattr_suffix(local, name))
        a.ctime_ns = self.clock()
        self.put_attr(a)
