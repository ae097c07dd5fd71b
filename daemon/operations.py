"""pyfuse3 Operations: translate requests, count lookups, map errors.

Kept thin on purpose. Each inode number says its kind (inodes.py), each kind
belongs to one namespace (namespace.py), and every handler is the same three
steps: find the namespace of the inode the request is about, let it do the
work, turn what it returns into the kernel's reply (counting the lookup
references the kernel takes). Errors become errnos, and their reasons reach
`errstr`, in one place: `fuse_errors`.

    STORED                   tree.py        the store (agentfs.posix), with agent rules
    CTLDIR, CTL_FILE         ctldir.py      MOUNT/.agentfs/ and its files
    SNAPDIR                  snapshots.py   DIR/.snapshots/
    AGENT_FILE, WAIT,        agentfiles.py  an agent's generated files, observations/,
    OBSERVATION, GUIDE                      inbox/.wait, MOUNT/AGENTS.md
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3

from agentfs.agents.model import Agents
from agentfs.errors import FsError
from agentfs.posix.fs import FileSystem, SetAttr
from agentfs.storage.kv import NoSpace

from .agentfiles import AgentFiles, AgentRules
from .ctldir import CTL_INO, CTLDIR_INO, ERRSTR_INO, LINEAGE_INO, ControlDir
from .errstr import ErrorLog
from .inodes import VIRTUAL, Kind, kind_of
from .namespace import ENTRY_TIMEOUT, Effects, Entry, Handle, Namespace
from .snapshots import Snapshots
from .tree import StoredTree

__all__ = ["CTLDIR_INO", "CTL_INO", "ENTRY_TIMEOUT", "ERRSTR_INO", "LINEAGE_INO", "VIRTUAL",
           "Operations", "invalidate_kernel_cache"]

log = logging.getLogger("agentfs.daemon")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


# Queries that fail routinely (a shell looking up $PATH, a probe for an xattr):
# their "not found" is no news, and must not bury the reason a reader of
# errstr is after.
ROUTINE = {"lookup", "getattr", "getxattr", "listxattr", "readlink", "opendir", "readdir"}
ROUTINE_ERRNOS = {errno.ENOENT, errno.ENODATA}


def fuse_errors(fn: F) -> F:
    """The one place errors become errnos (pyfuse3 only survives FUSEError) and
    reasons reach `errstr`: the reason of every FsError is recorded for the
    requesting process (from the request context, or the file handle's opener)."""

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any, **kwargs: Any) -> Any:
        self.served += 1  # (a long import defers to requests that keep coming: imports.py)
        try:
            while True:
                try:
                    return await fn(self, *args, **kwargs)
                except NoSpace:
                    # The transaction was rolled back: grow the map and redo it.
                    if not self.fs.engine.grow():
                        raise
                    log.info("store map grown for %s", fn.__name__)
        except pyfuse3.FUSEError:
            raise
        except FsError as e:
            if not (fn.__name__ in ROUTINE and e.errno in ROUTINE_ERRNOS):
                self.errors.record(self.requester(args, kwargs), e.message)
            raise pyfuse3.FUSEError(e.errno)
        except NoSpace:
            log.warning("store full: %s refused with ENOSPC", fn.__name__)
            self.errors.record(self.requester(args, kwargs), f"{fn.__name__}: the store is "
                               "full (ENOSPC); nothing of the operation was kept")
            raise pyfuse3.FUSEError(errno.ENOSPC)
        except Exception:
            log.exception("unexpected error in %s%r", fn.__name__, args)
            raise pyfuse3.FUSEError(errno.EIO)

    return wrapper  # type: ignore[return-value]


def invalidate_kernel_cache(parent: int, name: bytes, removed: int) -> None:
    """Tell the kernel a directory entry changed without it asking.

    Runs inside a request handler, so only the non-blocking forms are used:
    attributes of the parent (its nlink and mtime changed) and, for a removed
    entry, the queued `invalidate_entry_async`.
    """
    try:
        pyfuse3.invalidate_inode(parent, attr_only=True)
    except OSError as e:
        if e.errno != errno.ENOENT:  # the kernel had nothing cached
            log.warning("invalidate_inode(%d) failed: %s", parent, e)
    if removed:
        pyfuse3.invalidate_entry_async(parent, name, deleted=removed, ignore_enoent=True)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: FileSystem, store_path: str, invalidate: Callable[[int, bytes, int], None]
                 | None = None, mountpoint: str = "") -> None:
        super().__init__()
        self.fs = fs
        self.store_path = store_path
        self.lookups: dict[int, int] = {}
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.served = 0  # requests handled so far
        self.errors = ErrorLog()
        # The daemon passes invalidate_kernel_cache; without a mounted session
        # (tests calling handlers directly) there is no kernel cache to clear.
        self.effects = Effects(invalidate or (lambda parent, name, removed: None))
        agents = Agents(fs)
        self.rules = AgentRules(fs, agents, mountpoint)
        self.agentfiles = AgentFiles(fs, agents, self.errors, self.effects, self.rules)
        self.snapshots = Snapshots(fs, agents, self.effects)
        self.ctldir = ControlDir(fs, agents, self.errors, self.effects,
                                 lambda: len(self.handles), lambda: self.served,
                                 self.rules.mountpoint)
        self.tree = StoredTree(fs, self.rules, self.agentfiles,
                               [self.agentfiles, self.snapshots, self.ctldir], self.effects)
        self.namespaces: dict[Kind, Namespace] = {
            Kind.STORED: self.tree,
            Kind.CTLDIR: self.ctldir,
            Kind.CTL_FILE: self.ctldir,
            Kind.SNAPDIR: self.snapshots,
            Kind.AGENT_FILE: self.agentfiles,
            Kind.WAIT: self.agentfiles,
            Kind.OBSERVATION: self.agentfiles,
            Kind.GUIDE: self.agentfiles,
        }
        assert set(self.namespaces) == set(Kind)

    @property
    def gc_wanted(self) -> bool:
        return self.effects.gc_wanted

    @gc_wanted.setter
    def gc_wanted(self, value: bool) -> None:
        self.effects.gc_wanted = value

    # ----------------------------------------------------------- helpers

    def ns(self, ino: int) -> Namespace:
        """The namespace inode `ino` belongs to."""
        try:
            return self.namespaces[kind_of(ino)]
        except (ValueError, OverflowError):
            raise FsError(errno.ENOENT, f"inode {ino:#x} is of no kind agentfs hands out")

    def _stored(self, *inos: int) -> None:
        """Rename and link work on stored inodes only."""
        for ino in inos:
            ns = self.ns(ino)
            if ns is not self.tree:
                raise ns.moved(ino)

    def requester(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """The pid a request came from: its context, or its file handle's opener
        (read, write, flush and fsync carry no context)."""
        for a in (*args, *kwargs.values()):
            if hasattr(a, "pid") and hasattr(a, "uid"):
                return int(a.pid)
        fh = kwargs.get("fh", args[0] if args else None)
        h = self.handles.get(fh) if isinstance(fh, int) else None
        return h.pid if h is not None else 0

    @staticmethod
    def _attrs(e: Entry) -> pyfuse3.EntryAttributes:
        a = e.attr
        out = pyfuse3.EntryAttributes()
        out.st_ino = a.ino
        out.generation = 0
        out.entry_timeout = e.timeout if e.entry_timeout is None else e.entry_timeout
        out.attr_timeout = e.timeout
        out.st_mode = a.mode
        out.st_nlink = a.nlink
        out.st_uid = a.uid
        out.st_gid = a.gid
        out.st_rdev = a.rdev
        out.st_size = a.size
        out.st_blksize = 128 * 1024
        out.st_blocks = (a.stored + 511) // 512
        out.st_atime_ns = a.atime_ns
        out.st_mtime_ns = a.mtime_ns
        out.st_ctime_ns = a.ctime_ns
        return out

    def _count(self, e: Entry) -> None:
        if e.counted:
            self.lookups[e.attr.ino] = self.lookups.get(e.attr.ino, 0) + 1

    def _reply(self, e: Entry) -> pyfuse3.EntryAttributes:
        """An entry the kernel will hold: counted (stored inodes)."""
        self._count(e)
        return self._attrs(e)

    def _open(self, h: Handle) -> pyfuse3.FileInfo:
        fh = self._add(h)
        return pyfuse3.FileInfo(fh=fh, direct_io=h.direct_io, keep_cache=h.keep_cache)

    def _add(self, h: Handle) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = h
        return fh

    # ----------------------------------------------------------- lookups

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        return self._reply(self.ns(parent_inode).lookup(parent_inode, name, ctx.pid))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            try:
                self.fs.forget(ino)
            except Exception:
                log.exception("forget(%d) failed", ino)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(self.ns(inode).getattr(inode, ctx.pid))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ch = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        return self._attrs(self.ns(inode).setattr(inode, ch, ctx.pid))

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.ns(inode).readlink(inode)

    # ----------------------------------------------------------- namespace

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._reply(self.ns(parent_inode).mknod(parent_inode, name, mode, rdev, ctx))

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._reply(self.ns(parent_inode).mkdir(parent_inode, name, mode, ctx))

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._reply(self.ns(parent_inode).symlink(parent_inode, name, target, ctx))

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        h, e = self.ns(parent_inode).create(parent_inode, name, mode, flags, ctx)
        return self._open(h), self._reply(e)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.ns(parent_inode).unlink(parent_inode, name, ctx.pid)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.ns(parent_inode).rmdir(parent_inode, name, ctx.pid)

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._stored(parent_inode_old, parent_inode_new)
        self.tree.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._stored(inode, new_parent_inode)
        return self._reply(self.tree.link(inode, new_parent_inode, new_name))

    # ----------------------------------------------------------- files

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return self._open(self.ns(inode).open(inode, flags, ctx.pid))

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return await self.handles[fh].read(off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.handles[fh].write(off, buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h is not None:
            h.flush()

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        try:
            h.release()
        except FsError as e:
            self.errors.record(h.pid, e.message)  # release cannot fail: errstr says it
        except Exception:
            log.exception("release(%d) failed", fh)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.fs.sync()

    # ----------------------------------------------------------- directories

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self._add(self.ns(inode).opendir(inode, ctx.pid))

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for name, e, off in self.handles[fh].entries(start_id):
            if not pyfuse3.readdir_reply(token, name, self._attrs(e), off):
                return
            self._count(e)

    async def releasedir(self, fh: int) -> None:
        self.handles.pop(fh, None)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.fs.sync()

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        used, limit = self.fs.usage()
        disk = os.statvfs(self.store_path)
        bsize = 4096
        free = disk.f_bavail * disk.f_frsize
        if limit:
            free = min(free, max(limit - used, 0))
        s = pyfuse3.StatvfsData()
        s.f_bsize = bsize
        s.f_frsize = bsize
        s.f_blocks = (used + free) // bsize
        s.f_bfree = free // bsize
        s.f_bavail = free // bsize
        s.f_files = max(disk.f_files, 1 << 20)
        s.f_ffree = max(disk.f_ffree, 1 << 20)
        s.f_favail = s.f_ffree
        s.f_namemax = 255
        return s

    # ----------------------------------------------------------- xattrs

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        self.ns(inode).setxattr(inode, name, value)

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return self.ns(inode).getxattr(inode, name)

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self.ns(inode).listxattr(inode)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.ns(inode).removexattr(inode, name)
