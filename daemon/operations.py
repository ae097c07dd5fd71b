"""pyfuse3 Operations: translate requests to the model, count lookups, map errors.

Kept thin on purpose: every decision about the filesystem lives in
`agentfs.posix.fs`. This module only knows about the kernel: entry/attr timeouts,
lookup counts, file handles, and the few virtual inodes that have no record
in the store (`DIR/.snapshots/`, `/.agentfs/` and its control files).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3

from agentfs.agents.control import Result, run_command
from agentfs.agents.model import Agent
from agentfs.agents.render import MAX_LINE
from agentfs.errors import FsError
from agentfs.posix.fs import CTLDIR, ROOT_INO, SNAPDIR, FileSystem, SetAttr
from agentfs.storage.codec import Attr, split_ino
from agentfs.storage.kv import NoSpace

from .agentfiles import AgentFiles
from .errstr import ErrorLog
from .lines import LineBuffer

CONTROL_LINE_MAX = 64 * 1024  # a control command longer than this is refused

log = logging.getLogger("agentfs.daemon")

ENTRY_TIMEOUT = 60.0  # the daemon is the only writer: let the kernel cache
VIRTUAL = 1 << 63
CTLDIR_INO = VIRTUAL | 1
CTL_INO = VIRTUAL | 2
ERRSTR_INO = VIRTUAL | 3
LINEAGE_INO = VIRTUAL | 4
CTL_FILES = {b"ctl": CTL_INO, b"errstr": ERRSTR_INO, b"lineage": LINEAGE_INO}

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


class Handle:
    __slots__ = ("ino", "lines", "content", "flags", "pid", "message", "transcript",
                 "listing")

    def __init__(self, ino: int, flags: int = 0, pid: int = 0) -> None:
        self.ino = ino
        self.flags = flags
        self.pid = pid  # who opened it: write() has no request context
        self.lines = LineBuffer(CONTROL_LINE_MAX)  # control lines being written
        self.content: bytes | None = None  # what reads return, fixed at open (virtual files)
        self.message: tuple[Agent, bytes, str] | None = None  # an inbox message being written
        self.transcript: Agent | None = None  # appending to an agent's transcript
        self.listing: list[tuple[bytes, Attr]] | None = None  # an inbox as it was at opendir


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
        self.errors = ErrorLog()
        self.snapdirs: dict[int, int] = {}  # virtual .snapshots inode -> its directory
        self.snapdir_of: dict[int, int] = {}
        # The daemon passes invalidate_kernel_cache; without a mounted session
        # (tests calling handlers directly) there is no kernel cache to clear.
        self.invalidate = invalidate or (lambda parent, name, removed: None)
        self.gc_wanted = False
        self.agentfiles = AgentFiles(fs, self.errors, mountpoint)

    # ----------------------------------------------------------- helpers

    def requester(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """The pid a request came from: its context, or its file handle's opener
        (read, write, flush and fsync carry no context)."""
        for a in (*args, *kwargs.values()):
            if hasattr(a, "pid") and hasattr(a, "uid"):
                return int(a.pid)
        fh = kwargs.get("fh", args[0] if args else None)
        h = self.handles.get(fh) if isinstance(fh, int) else None
        return h.pid if h is not None else 0

    def _entry(self, a: Attr, timeout: float = ENTRY_TIMEOUT,
               entry_timeout: float | None = None) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.entry_timeout = timeout if entry_timeout is None else entry_timeout
        e.attr_timeout = timeout
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size
        e.st_blksize = 128 * 1024
        e.st_blocks = (a.stored + 511) // 512
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    def _ctl_content(self, ino: int, pid: int) -> bytes | None:
        """What reading `.agentfs/errstr` or `.agentfs/lineage` returns (fixed at open)."""
        if ino == ERRSTR_INO:
            return self.errors.for_pid(pid).encode()
        if ino == LINEAGE_INO:
            # The fork/spawn tree as JSONL, each branch with its shared prefix.
            return b"".join(json.dumps(r, sort_keys=True).encode() + b"\n"
                            for r in self.agentfiles.agents.export())
        return None

    def _virtual_attr(self, ino: int, pid: int = 0) -> Attr:
        if AgentFiles.owns(ino):
            return self.agentfiles.virtual_attr(ino, pid)
        root = self.fs.getattr(ROOT_INO)
        if ino in (CTL_INO, ERRSTR_INO, LINEAGE_INO):
            mode = stat.S_IFREG | (0o666 if ino == CTL_INO else 0o444)
            size = len(self._status()) if ino == CTL_INO else len(self._ctl_content(ino, pid) or b"")
            return Attr(mode, 0, 0, nlink=1, size=size, atime_ns=root.ctime_ns,
                        mtime_ns=root.ctime_ns, ctime_ns=root.ctime_ns, ino=ino)
        if ino == CTLDIR_INO:
            return Attr(stat.S_IFDIR | 0o755, 0, 0, nlink=2, atime_ns=root.ctime_ns,
                        mtime_ns=root.ctime_ns, ctime_ns=root.ctime_ns, ino=ino)
        d = self.fs.getattr(self.snapdirs[ino])
        # Writable by whoever may write the directory: mkdir makes a snapshot.
        return Attr(stat.S_IFDIR | stat.S_IMODE(d.mode) & 0o777, d.uid, d.gid, nlink=2,
                    atime_ns=d.atime_ns, mtime_ns=d.mtime_ns, ctime_ns=d.ctime_ns, ino=ino)

    def _snapdir(self, dir_ino: int) -> int:
        v = self.snapdir_of.get(dir_ino)
        if v is None:
            v = VIRTUAL | (1 << 40) | len(self.snapdirs)
            self.snapdirs[v] = dir_ino
            self.snapdir_of[dir_ino] = v
        return v

    def _counted(self, a: Attr, timeout: float = ENTRY_TIMEOUT,
                 entry_timeout: float | None = None) -> pyfuse3.EntryAttributes:
        if not a.ino & VIRTUAL:
            self.lookups[a.ino] = self.lookups.get(a.ino, 0) + 1
        return self._entry(a, timeout, entry_timeout)

    @staticmethod
    def _entry_timeout(parent: int, child: int) -> float:
        """Entries that lead into another view (fork roots) are not cached:
        `detach` through the control file removes them, and an asynchronous
        invalidation would leave a window where the old fork is still reached."""
        return 0.0 if split_ino(parent)[0] != split_ino(child)[0] else ENTRY_TIMEOUT

    def _new_fh(self, ino: int, flags: int = 0, pid: int = 0) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(ino, flags, pid)
        return fh

    # ----------------------------------------------------------- lookups

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        if AgentFiles.owns(parent_inode):
            found = self.agentfiles.lookup(parent_inode, name, ctx.pid)
            if found is None:
                raise FsError(errno.ENOENT)
            return self._entry(found, 0)
        if parent_inode & VIRTUAL:
            if parent_inode == CTLDIR_INO:
                if name not in CTL_FILES:
                    raise FsError(errno.ENOENT)
                return self._entry(self._virtual_attr(CTL_FILES[name], ctx.pid), 0)
            if parent_inode not in self.snapdirs:
                raise FsError(errno.ENOENT)
            turn = self.agentfiles.turn_snapshot(self.snapdirs[parent_inode], name)
            if turn is not None:
                return self._counted(turn, timeout=0)
            # Not cached: `unsnapshot` through the control file removes these.
            a = self.fs.snapshot_root(self.snapdirs[parent_inode], name)
            return self._counted(a, timeout=0)
        special = self.agentfiles.lookup(parent_inode, name, ctx.pid)
        if special is not None:
            return self._entry(special, 0)
        if name == SNAPDIR:
            self.fs.getattr(parent_inode)
            return self._entry(self._virtual_attr(self._snapdir(parent_inode)), 0)
        if name == CTLDIR and parent_inode == ROOT_INO:
            return self._entry(self._virtual_attr(CTLDIR_INO), 0)
        a = self.fs.lookup(parent_inode, name)
        return self._counted(a, entry_timeout=self._entry_timeout(parent_inode, a.ino))

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
        if inode & VIRTUAL:
            return self._entry(self._virtual_attr(inode, ctx.pid), 0)
        return self._entry(self.fs.getattr(inode))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode & VIRTUAL:
            if inode == CTL_INO and fields.update_size:
                return self._entry(self._virtual_attr(inode), 0)  # `>` truncates: allow
            raise FsError(errno.EPERM, "agentfs control files cannot be changed")
        if fields.update_size:
            self.agentfiles.check(inode, "truncate", ctx.pid)
        ch = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        return self._entry(self.fs.setattr(inode, ch))

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.fs.readlink(inode)

    # ----------------------------------------------------------- namespace

    def _in_snapdir(self, parent_inode: int) -> int | None:
        if parent_inode & VIRTUAL:
            if parent_inode in self.snapdirs:
                return self.snapdirs[parent_inode]
            raise FsError(errno.EPERM, "the agentfs control directory is fixed")
        return None

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._in_snapdir(parent_inode) is not None:
            raise FsError(errno.EPERM, "only directories (snapshots) can be made in .snapshots")
        return self._counted(self.fs.create(parent_inode, name, mode, ctx.uid, ctx.gid, rdev))

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        snap_of = self._in_snapdir(parent_inode)
        if snap_of is not None:
            return self._counted(self.fs.snapshot(snap_of, name))
        spawned = self.agentfiles.mkdir(parent_inode, name, ctx.pid, ctx.uid, ctx.gid)
        if spawned is not None:
            return self._counted(spawned, entry_timeout=0)
        return self._counted(self.fs.create(parent_inode, name, stat.S_IFDIR | mode,
                                            ctx.uid, ctx.gid))

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._in_snapdir(parent_inode) is not None:
            raise FsError(errno.EPERM, "only directories (snapshots) can be made in .snapshots")
        return self._counted(self.fs.create(parent_inode, name, stat.S_IFLNK | 0o777,
                                            ctx.uid, ctx.gid, target=target))

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo,
                                                           pyfuse3.EntryAttributes]:
        if self._in_snapdir(parent_inode) is not None:
            raise FsError(errno.EPERM, "only directories (snapshots) can be made in .snapshots")
        staged = self.agentfiles.create(parent_inode, name, ctx.pid, ctx.uid, ctx.gid,
                                        nonce=self.next_fh)
        message = None
        if staged is not None:
            a, message = staged
        else:
            a = self.fs.create(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx.uid,
                               ctx.gid)
        fh = self._new_fh(a.ino, flags, ctx.pid)
        self.handles[fh].message = message
        fi = pyfuse3.FileInfo(fh=fh, keep_cache=message is None, direct_io=message is not None)
        # A message's name changes when it is delivered: the kernel must not
        # keep the name it was created under.
        return fi, self._counted(a, entry_timeout=0 if message else None)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self._in_snapdir(parent_inode) is not None:
            raise FsError(errno.EISDIR, "snapshots are removed with rmdir")
        self.agentfiles.check_removal(parent_inode, name, ctx.pid)
        self.agentfiles.check(self.fs.lookup(parent_inode, name).ino, "unlink", ctx.pid)
        self.fs.unlink(parent_inode, name)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        snap_of = self._in_snapdir(parent_inode)
        if snap_of is not None:
            if self.agentfiles.turn_of(snap_of, name) is not None:
                raise self.agentfiles.refuse(ctx.pid, errno.EPERM, f"{name.decode()}: an "
                                             "agent's turn snapshots are its history, which "
                                             "is append-only: they cannot be removed")
            self.fs.delete_snapshot(snap_of, name)
            self.gc_wanted = True
            return
        self.agentfiles.check_removal(parent_inode, name, ctx.pid)
        child = self.fs.lookup(parent_inode, name).ino
        removed = self.agentfiles.remove_agent_dir(parent_inode, child, ctx.pid)
        if removed is not None:
            self._done(removed)
            return
        self.agentfiles.check(child, "unlink", ctx.pid)
        self.fs.rmdir(parent_inode, name)

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if (parent_inode_old | parent_inode_new) & VIRTUAL:
            raise FsError(errno.EPERM, "snapshots and control files cannot be renamed")
        self.agentfiles.check(self.fs.lookup(parent_inode_old, name_old).ino, "rename", ctx.pid)
        try:
            self.agentfiles.check(self.fs.lookup(parent_inode_new, name_new).ino, "rename",
                                  ctx.pid)
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if (inode | new_parent_inode) & VIRTUAL:
            raise FsError(errno.EPERM, "cannot link control files or snapshots")
        return self._counted(self.fs.link(inode, new_parent_inode, new_name))

    # ----------------------------------------------------------- files

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC))
        if AgentFiles.owns(inode):
            if writing and not self.agentfiles.writable(inode):
                raise FsError(errno.EACCES, f"{self.agentfiles.describe(inode)} is generated "
                              "by agentfs: read-only")
            # Content first: a failure must leave no handle behind.
            content = None if AgentFiles.is_wait(inode) else \
                self.agentfiles.content(inode, ctx.pid)
            fh = self._new_fh(inode, flags, ctx.pid)
            self.handles[fh].content = content
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        if inode & VIRTUAL:
            if inode not in (CTL_INO, ERRSTR_INO, LINEAGE_INO):
                raise FsError(errno.EISDIR)
            if writing and inode != CTL_INO:
                name = "errstr" if inode == ERRSTR_INO else "lineage"
                raise FsError(errno.EACCES, f".agentfs/{name} is generated by agentfs: "
                              "read-only")
            fh = self._new_fh(inode, flags, ctx.pid)
            self.handles[fh].content = self._ctl_content(inode, ctx.pid)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC) and self.fs.is_readonly(inode):
            raise FsError(errno.EROFS, "snapshots are read-only")
        transcript = self.agentfiles.is_transcript(inode)
        if flags & os.O_TRUNC and self.fs.getattr(inode).size:
            self.agentfiles.check(inode, "truncate", ctx.pid)
        if flags & (os.O_WRONLY | os.O_RDWR) and transcript is None:
            self.agentfiles.check(inode, "write", ctx.pid)
        elif flags & (os.O_WRONLY | os.O_RDWR) and not flags & os.O_APPEND:
            # Every write appends: say so at open rather than ignore an offset.
            self.agentfiles.check(inode, "writing without O_APPEND", ctx.pid)
        if transcript is not None and flags & (os.O_WRONLY | os.O_RDWR):
            fh = self._new_fh(inode, flags, ctx.pid)
            self.handles[fh].transcript = transcript
            self.handles[fh].lines = LineBuffer(MAX_LINE + 1)
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        if flags & os.O_TRUNC:
            # libfuse negotiates atomic O_TRUNC: the kernel sends no separate setattr.
            a = self.fs.setattr(inode, SetAttr(size=0))
        else:
            a = self.fs.getattr(inode)
        if a.is_dir:
            raise FsError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=self._new_fh(inode, flags, ctx.pid), keep_cache=True)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles[fh]
        if AgentFiles.is_wait(h.ino):
            if h.content is None:
                h.content = await self.agentfiles.wait(h.ino, h.pid)
            return h.content[off:off + size]
        if h.content is not None:
            return h.content[off:off + size]
        if h.ino == CTL_INO:
            return self._status().encode()[off:off + size]
        return self.fs.read(h.ino, off, size)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if h.ino == CTL_INO:
            for line in self._lines(h, buf, ".agentfs/ctl"):
                self._control(h, line)
            return len(buf)
        if AgentFiles.owns(h.ino):
            for line in self._lines(h, buf, "control file"):
                self._done(self.agentfiles.control(h.ino, line, h.pid))
            return len(buf)
        if h.ino & VIRTUAL:
            raise FsError(errno.EBADF)
        if h.transcript is not None:
            try:
                lines = self._lines(h, buf, f"agents/{h.transcript.name}/transcript")
                self.agentfiles.append_lines(h.transcript, lines, h.pid)
            except FsError:
                h.lines.clear()  # the write failed: none of it stays pending
                raise
            return len(buf)
        self.agentfiles.write(h.ino, off, buf)
        return len(buf)

    def _lines(self, h: Handle, buf: bytes, what: str) -> list[bytes]:
        try:
            return h.lines.feed(buf)
        except FsError as e:
            raise e.within(what)

    def _control(self, h: Handle, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        try:
            result = run_command(self.agentfiles.agents, text)
        except FsError as e:
            raise e.within(text.strip())
        self._done(result)

    def _done(self, result: Result) -> None:
        """After a control command: its status line, kernel caches, gc."""
        self.last_result = result.message
        for parent, name, removed in result.changed:
            self.invalidate(parent, name, removed)
        if result.gc_wanted:
            self.gc_wanted = True

    last_result = ""

    def _status(self) -> str:
        return (f"agentfs pid={os.getpid()} epoch={self.fs.epoch_now()} open_handles={len(self.handles)} "
                f"last={self.last_result!r}\n")

    @fuse_errors
    async def flush(self, fh: int) -> None:
        h = self.handles.get(fh)
        if h is not None and h.ino == CTL_INO and h.lines:
            self._control(h, h.lines.take())
        elif (h is not None and (h.message is not None or h.transcript is not None)
              and not self.agentfiles.held_open(h.pid, h.ino)):
            # Only the last close counts: not a child's inherited copy.
            self._last_close(h)

    def _last_close(self, h: Handle) -> None:
        """Deliver a message; refuse a transcript line that never got its newline."""
        if h.message is not None:
            staged, h.message = h.message, None
            self.agentfiles.deliver(staged)
        elif h.transcript is not None and h.lines:
            rest = h.lines.take()
            raise FsError(errno.EINVAL, f"agents/{h.transcript.name}/transcript: incomplete "
                          f"line refused at close (no newline; nothing of it was appended): "
                          f"{rest[:80]!r}")
        elif h is not None and AgentFiles.owns(h.ino) and h.lines:
            self._done(self.agentfiles.control(h.ino, h.lines.take(), h.pid))

    async def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is not None and (h.message is not None or h.lines and h.transcript is not None):
            # The opener passed the descriptor on and closed before its heirs.
            try:
                self._last_close(h)
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
        if inode & VIRTUAL:
            if AgentFiles.owns(inode):
                if not stat.S_ISDIR(self.agentfiles.virtual_attr(inode).mode):
                    raise FsError(errno.ENOTDIR)
            elif inode != CTLDIR_INO and inode not in self.snapdirs:
                raise FsError(errno.ENOTDIR)
        else:
            a = self.fs.getattr(inode)
            if not a.is_dir:
                raise FsError(errno.ENOTDIR)
        fh = self._new_fh(inode)
        if self.agentfiles.is_inbox(inode):
            # One consistent listing per opendir, in arrival order: a message
            # delivered between two readdir pages must not show its successor
            # without it.
            self.handles[fh].listing = sorted(
                (e.name, e.attr) for e in self.fs.readdir(inode)
                if not self.agentfiles.hidden(inode, e.name))
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        ino = self.handles[fh].ino
        if AgentFiles.owns(ino):  # an agent's observations/
            for off, (name, a) in enumerate(self.agentfiles.extra_entries(ino), 1):
                if off > start_id and not pyfuse3.readdir_reply(token, name,
                                                                 self._entry(a, 0), off):
                    return
            return
        if ino == CTLDIR_INO:
            for i, (name, vino) in enumerate(sorted(CTL_FILES.items())):
                if i + 1 > start_id and not pyfuse3.readdir_reply(
                        token, name, self._entry(self._virtual_attr(vino), 0), i + 1):
                    return
            return
        if ino in self.snapdirs:
            d = self.snapdirs[ino]
            turns = self.agentfiles.turn_snapshots(d)
            named = [(n, a) for n, a in self.fs.snapshots(d)
                     if self.agentfiles.turn_of(d, n) is None]
            # An agent's turn snapshots first (made on first listing, as on lookup).
            entries: list[tuple[bytes, Attr | None]] = [(n, None) for n in turns]
            entries += named
            for i, (name, maybe) in enumerate(entries):
                if i + 1 <= start_id:
                    continue
                snap = maybe or self.agentfiles.turn_snapshot(d, name)
                assert snap is not None
                if not pyfuse3.readdir_reply(token, name, self._entry(snap), i + 1):
                    return
                self.lookups[snap.ino] = self.lookups.get(snap.ino, 0) + 1
            return
        if start_id < 2:
            # '.' and '..' (offsets 1, 2): the kernel takes no lookup reference for them.
            me = self.fs.getattr(ino)
            dots = [(b".", me), (b"..", self.fs.getattr(self.fs.parent_of(me)))]
            for off, (name, a) in enumerate(dots[start_id:], start_id + 1):
                if not pyfuse3.readdir_reply(token, name, self._entry(a), off):
                    return
            start_id = 2
        # Offsets 3-15 are for the agent files the daemon adds (virtual: not counted).
        for off, (name, a) in enumerate(self.agentfiles.extra_entries(ino), 3):
            if off > start_id:
                if not pyfuse3.readdir_reply(token, name, self._entry(a, 0), off):
                    return
                start_id = off
        listing = self.handles[fh].listing
        if listing is not None:
            for off, (name, a) in enumerate(listing, 16):
                if off > start_id:
                    if not pyfuse3.readdir_reply(token, name, self._entry(a), off):
                        return
                    self.lookups[a.ino] = self.lookups.get(a.ino, 0) + 1
            return
        for ent in self.fs.readdir(ino, start_id):
            if self.agentfiles.hidden(ino, ent.name):
                continue
            attrs = self._entry(ent.attr, entry_timeout=self._entry_timeout(ino, ent.attr.ino))
            if not pyfuse3.readdir_reply(token, ent.name, attrs, ent.offset):
                return
            self.lookups[ent.attr.ino] = self.lookups.get(ent.attr.ino, 0) + 1

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

    def _real(self, inode: int) -> int:
        if inode & VIRTUAL:
            raise FsError(errno.ENOTSUP, "control files have no extended attributes")
        return inode

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        self.fs.setxattr(self._real(inode), name, value)

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode & VIRTUAL:
            raise FsError(errno.ENODATA)
        return self.fs.getxattr(inode, name)

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if inode & VIRTUAL:
            return []
        return self.fs.listxattr(inode)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.fs.removexattr(self._real(inode), name)
