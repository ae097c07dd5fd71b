"""`import HOSTDIR DIR`: a host directory tree copied into the store in large transactions.

`cp -a` through FUSE costs about ten kernel requests and several transactions
per file. An import runs inside the daemon instead, in three phases:

1. `HostImport.check()`: the arguments, at once (the command's errno).
2. `scan()`: a walk of the host tree, one lstat per entry, nothing read from
   the store (the daemon runs it in a worker thread). It knows every
   directory's link count and every hard link before a byte is written.
3. `steps()`: the tree written in batches of up to BATCH_INODES inodes or
   BATCH_BYTES of data (or BATCH_SECONDS of work), each one transaction, into
   a *staged* directory no entry leads to yet (Tree.stage). The last step
   makes all of it visible at once, in one transaction: the staged directory
   becomes DIR (DIR did not exist), or its entries move into DIR (DIR existed;
   a name already there is EEXIST and nothing moves).

A crash mid-import leaves nothing visible: the next mount frees the staged
tree (Tree.free_orphans). A failed import frees it in bounded steps
(`abandon()`). A file bigger than a batch spans several transactions, but only
ever inside the staged tree.

Kept: file types (regular, directory, symlink, fifo, socket; device nodes are
skipped and the result names them), permission bits with setuid, setgid and
sticky, owner and group when the daemon runs as root (else the daemon's own,
as `cp -a` does for a user), atime and mtime (ctime is the import's time, as
with `cp -a`), hard links (entries of one host inode, by (st_dev, st_ino)
inside the import, share one inode) and extended attributes of the user,
trusted and security namespaces.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from agentfs.errors import FsError
from agentfs.posix.forks import Tree
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.posix.inodes import BLOCK_SIZE, SNAPDIR, XATTR_NAMESPACES, check_name
from agentfs.posix.ownmount import OwnMount
from agentfs.storage.codec import Attr, fuse_ino, split_ino
from agentfs.storage.kv import NoSpace

BATCH_INODES = 4000
BATCH_BYTES = 16 << 20
BATCH_SECONDS = 0.02  # what a request waiting behind one batch may wait, about
FREE_BATCH = 5000  # inodes freed per transaction when an import is abandoned
CHUNK = 8 * BLOCK_SIZE  # bytes read from a host file at a time
DEVICES = stat.S_IFCHR, stat.S_IFBLK

T = TypeVar("T")


def describe(mode: int) -> str:
    return "character device" if stat.S_ISCHR(mode) else "block device"


# A host entry is a plain tuple, (parent, name, path, first, st): the index of
# its directory in Plan.entries (-1: the root), its name and host path, for a
# hard link the entry that carries the inode (-1: this one does), and the
# fields of its lstat below. The garbage collector stops tracking tuples of
# plain values, so that the plan of a million files costs the daemon's
# collections nothing (as objects, 100 ms per 100k files: a pause every
# request would wait out).
HostEntry = tuple[int, bytes, bytes, int, tuple[int, ...]]
MODE, UID, GID, SIZE, ATIME, MTIME, RDEV = range(7)


def host_entry(parent: int, name: bytes, path: bytes, st: os.stat_result,
               first: int = -1) -> HostEntry:
    return (parent, name, path, first, (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                        st.st_atime_ns, st.st_mtime_ns, st.st_rdev))


@dataclass
class Plan:
    """What `scan` found: entries in breadth-first order (a directory before
    what it holds), and the totals progress is measured against."""

    entries: list[HostEntry] = field(default_factory=list)
    files: int = 0  # entries besides the root
    bytes: int = 0  # of regular files, each host inode once
    skipped: list[str] = field(default_factory=list)  # device nodes, with what they are


@dataclass
class Progress:
    phase: str = "checking"  # checking | scanning | importing | linking | done
    scanned: int = 0
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


class HostImport:
    """One import of host directory `host` into path `dest` of the store
    (relative to its root). Nothing is written before `steps()`.

    `own`: the daemon's own mount, which HOSTDIR may not be in or lead into
    (agentfs.posix.ownmount). `root_reserved`: names the layers above keep at
    the store's root (name -> why), which the import may not create there.
    `stop`, once set, ends a scan in progress (cancel, unmount)."""

    def __init__(self, fs: FileSystem, host: str, dest: str, own: OwnMount | None = None,
                 root_reserved: Mapping[bytes, str] | None = None) -> None:
        self.fs = fs
        self.host = host
        self.root = os.fsencode(host)  # HOSTDIR with its symlinks resolved (check())
        self.own = own or OwnMount()
        self.root_reserved = dict(root_reserved or {})
        self.stop = threading.Event()
        self.dest = "/" + posixpath.normpath("/" + dest).lstrip("/")
        self.keep_owner = os.geteuid() == 0
        self.progress = Progress()
        self.plan = Plan()
        self.merge = False  # DIR exists: its new entries come from the staged root's
        self.dest_ino = 0  # DIR (merge), or the directory DIR is made in
        self.name = b""  # DIR's name in dest_ino (not merge)
        self.staged = 0  # inode of the staged root, once made
        self.inos: list[int] = []  # inode of each imported entry, by index
        self.next = 0  # the next entry to write
        # A file being copied: (host fd, its attributes, offset, expected size).
        self.partial: tuple[int, Attr, int, int] | None = None
        self.started = time.monotonic()
        self.opened: list[int] = []  # host files opened by the step in progress
        self.finished: list[int] = []  # ... and those it is done with

    # ------------------------------------------------------------ 1. arguments

    def check(self) -> None:
        """Refuse bad arguments with their errno, before anything is done."""
        if not os.path.isabs(self.host):
            raise FsError(errno.EINVAL, f"HOSTDIR must be an absolute path, not {self.host!r} "
                          "(the daemon does not share your working directory)")
        # Resolved here, component by component: an lstat inside this mount
        # would be a request to this very thread, blocked in the lstat.
        self.root = self.own.resolve(self.host)
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            raise FsError(errno.ENOENT, f"{self.host}: no such directory on the host")
        except OSError as e:
            raise FsError(e.errno or errno.EIO, f"{self.host}: {e.strerror}")
        if not stat.S_ISDIR(st.st_mode):
            raise FsError(errno.ENOTDIR, f"{self.host} is not a directory")
        if self.dest == "/":
            self.merge, self.dest_ino = True, self.fs.path_ino("/")
            self.fs.query(self._check_free_names)
        else:
            parent, name = posixpath.split(self.dest)
            self.fs.query(lambda t: self._resolve(t, parent, os.fsencode(name)))

    def _resolve(self, t: Tree, parent: str, name: bytes) -> None:
        pino = t.path_ino(parent)
        t.dir(pino)
        found = t.entry(pino, name)
        if found is None:
            check_name(name)
            t.check_reserved(pino, name)
            self._check_root_name(pino, name)
            self.dest_ino, self.name = pino, name
        else:
            if not t.attr(found).is_dir:
                raise FsError(errno.ENOTDIR, f"{self.dest} exists and is not a directory")
            self.merge, self.dest_ino = True, found
        t.check_rw(self.dest_ino)
        t.live_dir(self.dest_ino)
        if self.merge:
            self._check_free_names(t)

    def _check_free_names(self, t: Tree) -> None:
        """EEXIST now for a name of HOSTDIR that DIR already has (the last step
        looks again: one may be made meanwhile)."""
        try:
            names = os.listdir(self.root)
        except OSError as e:
            raise FsError(e.errno or errno.EIO, f"{self.host}: cannot read the directory "
                          f"({e.strerror})")
        for name in names:
            t.check_reserved(self.dest_ino, name)
            self._check_root_name(self.dest_ino, name)
            if t.entry(self.dest_ino, name) is not None:
                raise FsError(errno.EEXIST, f"{self._in_dest(name)} exists; nothing was "
                              "imported")

    def _check_root_name(self, dir_ino: int, name: bytes) -> None:
        """EINVAL for a name the layers above keep at the root (AGENTS.md, agents)."""
        if dir_ino == ROOT_INO and name in self.root_reserved:
            raise FsError(errno.EINVAL, f"cannot import /{os.fsdecode(name)}: "
                          f"{self.root_reserved[name]}; import into a directory below the "
                          "mount root")

    def _in_dest(self, name: bytes) -> str:
        return posixpath.join(self.dest, os.fsdecode(name))

    # ------------------------------------------------------------ 2. the host tree

    def scan(self) -> Plan:
        """Walk the host tree (no store access: safe in another thread, which
        may be abandoned: it ends with FsError(ECANCELED) once `stop` is set).
        Other filesystems mounted below HOSTDIR are walked, as `cp -a` does;
        this mount, seen through a bind mount there, is refused (the daemon's
        own reads of it, in the steps, would deadlock it)."""
        self.progress.phase = "scanning"
        plan = Plan()
        root = self.root
        st = os.stat(root)
        self._check_device(root, st)
        plan.entries.append(host_entry(-1, b"", root, st))
        links: dict[tuple[int, int], int] = {}  # host (dev, ino) -> entry carrying it
        i = 0
        while i < len(plan.entries):
            _, _, dpath, _, dst = plan.entries[i]
            if stat.S_ISDIR(dst[MODE]):
                self._check_stop()
                for name, path, st in self._listing(dpath):
                    self._check_stop()
                    self._check_device(path, st)
                    if stat.S_IFMT(st.st_mode) in DEVICES:
                        plan.skipped.append(f"{os.fsdecode(path)} ({describe(st.st_mode)})")
                        continue
                    self._check_name(name, path)
                    first = -1
                    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                        first = links.setdefault((st.st_dev, st.st_ino), len(plan.entries))
                        if first == len(plan.entries):
                            first = -1
                    if first < 0 and stat.S_ISREG(st.st_mode):
                        plan.bytes += st.st_size
                    plan.entries.append(host_entry(i, name, path, st, first))
                    self.progress.scanned = len(plan.entries) - 1
            i += 1
        plan.files = len(plan.entries) - 1
        self._check_stop()  # (an abandoned scan leaves nothing behind)
        self.plan = plan
        self.progress.files_total, self.progress.bytes_total = plan.files, plan.bytes
        return plan

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise FsError(errno.ECANCELED, "stopped during the scan of the host tree; "
                          "nothing of the import is kept")

    def _check_device(self, path: bytes, st: os.stat_result) -> None:
        if st.st_dev in self.own.devices:
            raise self.own.refuse(os.fsdecode(path), self.own.mountpoint)

    @staticmethod
    def _listing(path: bytes) -> list[tuple[bytes, bytes, os.stat_result]]:
        try:
            with os.scandir(path) as it:
                found = [(de.name, de.path, de.stat(follow_symlinks=False)) for de in it]
        except OSError as e:
            raise FsError(e.errno or errno.EIO, f"{os.fsdecode(path)}: cannot read the "
                          f"directory ({e.strerror})")
        return sorted(found)

    @staticmethod
    def _check_name(name: bytes, path: bytes) -> None:
        try:
            check_name(name)
            if name == SNAPDIR:
                raise FsError(errno.EEXIST, f"{SNAPDIR.decode()} is reserved by agentfs")
        except FsError as e:
            raise e.within(os.fsdecode(path))

    # ------------------------------------------------------------ 3. the store

    def steps(self) -> Iterator[Progress]:
        """Write the scanned tree; each step is one committed transaction."""
        self.progress.phase = "importing"
        self._in_transaction(self._begin)
        yield self.progress
        while self.next < len(self.plan.entries) or self.partial is not None:
            self._in_transaction(self._batch)
            yield self.progress
        self.progress.phase = "linking"
        self._in_transaction(self._finish)
        self.progress.phase = "done"
        yield self.progress

    def run(self, progress: Callable[[Progress], None] | None = None) -> str:
        """All three phases here and now (offline use, tests); the summary line."""
        self.check()
        self.scan()
        try:
            for p in self.steps():
                if progress is not None:
                    progress(p)
        except BaseException:
            for _ in self.abandon():
                pass
            raise
        return self.summary()

    def summary(self) -> str:
        p = self.progress
        line = (f"imported {p.files_done} files, {p.bytes_done / (1 << 20):.1f} MiB from "
                f"{self.host} into {self.dest.lstrip('/') or '/'} in "
                f"{time.monotonic() - self.started:.2f} s")
        if self.plan.skipped:
            line += (f"; skipped {len(self.plan.skipped)} device node(s), e.g. "
                     f"{self.plan.skipped[0]}")
        return line

    def abandon(self) -> Iterator[None]:
        """Free what a failed import staged, in bounded steps."""
        self._close_partial()
        if not self.staged:
            return
        view, local = split_ino(self.staged)
        while True:
            with self.fs.transaction() as t:
                gone = t.free_staged(view, local, FREE_BATCH)
            yield
            if gone:
                self.staged = 0
                return

    def _in_transaction(self, step: Callable[[Tree], None]) -> None:
        """Run `step` as one transaction; when the store's map is full, grow it
        and run the step again from the same place. Host files the step is
        done with are closed once it commits (a retry may read them again)."""
        while True:
            saved = (self.next, len(self.inos), self.partial, self.progress.files_done,
                     self.progress.bytes_done)
            size = (self.partial[1].size, self.partial[1].stored) if self.partial else (0, 0)
            self.opened, self.finished = [], []
            try:
                with self.fs.transaction() as t:
                    step(t)
            except BaseException as e:
                step_fds = {*self.opened, *self.finished}
                if isinstance(e, NoSpace) and saved[2] is not None:
                    step_fds.discard(saved[2][0])  # the retry goes on with that file
                for fd in step_fds:
                    os.close(fd)
                if not isinstance(e, NoSpace):
                    if self.partial is not None and self.partial[0] in step_fds:
                        self.partial = None
                    raise
                self.next, n, self.partial, self.progress.files_done, \
                    self.progress.bytes_done = saved
                del self.inos[n:]
                if self.partial is not None:
                    self.partial[1].size, self.partial[1].stored = size
                if not self.fs.engine.grow():
                    raise FsError(errno.ENOSPC, "the store is full (ENOSPC); nothing of the "
                                  "import is kept") from None
                continue
            for fd in self.finished:
                os.close(fd)
            return

    def _owner(self, st: tuple[int, ...]) -> tuple[int, int]:
        return (st[UID], st[GID]) if self.keep_owner else (os.geteuid(), os.getegid())

    def _begin(self, t: Tree) -> None:
        view, _ = split_ino(self.dest_ino)
        *_, root = self.plan.entries[0]  # (its lstat fields)
        now = t.clock()
        if self.merge:
            a = Attr(stat.S_IFDIR | 0o700, *self._owner(root), nlink=2, atime_ns=now,
                     mtime_ns=now, ctime_ns=now)
        else:
            a = self._attr(root, now)
        a.ino = fuse_ino(view, t.tx.alloc_ino(view))
        t.set_parent(a, self.dest_ino)
        t.stage(a)
        self.staged = a.ino
        self.inos.append(a.ino)
        self.next = 1

    def _attr(self, st: tuple[int, ...], now: int) -> Attr:
        mode = st[MODE]
        nlink = 2 if stat.S_ISDIR(mode) else 1  # one more for each subdirectory or
        # hard link as it is written: every step leaves a consistent tree
        return Attr(mode, *self._owner(st), nlink=nlink, atime_ns=st[ATIME],
                    mtime_ns=st[MTIME], ctime_ns=now,
                    rdev=0 if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else st[RDEV])

    def _batch(self, t: Tree) -> None:
        view, _ = split_ino(self.staged)
        entries = self.plan.entries
        budget = BATCH_BYTES
        if self.partial is not None:
            budget -= self._copy_data(t, budget)
        deadline = time.monotonic() + BATCH_SECONDS
        now = t.clock()
        n = 0
        while (self.partial is None and self.next < len(entries) and n < BATCH_INODES
               and budget > 0 and (n % 64 or time.monotonic() < deadline)):
            parent_index, name, path, first, st = entries[self.next]
            parent = self.inos[parent_index]
            if first >= 0:  # one more entry of a host inode already written
                a = t.attr(self.inos[first])
                a.nlink += 1
                t.put_attr(a)
                t.link_entry(parent, name, a, new=True)
                ino = a.ino
            else:
                a = self._attr(st, now)
                a.ino = ino = fuse_ino(view, t.tx.alloc_ino(view))
                if a.is_dir:
                    t.set_parent(a, parent)
                    d = t.attr(parent)
                    d.nlink += 1
                    t.put_attr(d)
                elif a.is_link:
                    a.target = self._host(os.readlink, path)
                    a.size = len(a.target)
                t.link_entry(parent, name, a, new=True)
                self._copy_xattrs(t, path, ino)
                if a.is_reg:
                    fd = self._host(os.open, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                    self.opened.append(fd)
                    self.partial = (fd, a, 0, st[SIZE])
                    budget -= self._copy_data(t, budget)
                else:
                    t.put_attr(a, new=True)
            self.inos.append(ino)
            self.next += 1
            self.progress.files_done += 1
            n += 1

    def _copy_data(self, t: Tree, budget: int) -> int:
        """Copy the file in progress, up to `budget` bytes (at least one chunk);
        its attributes are saved with the size written so far. Bytes copied."""
        assert self.partial is not None
        fd, a, off, expected = self.partial
        first_save = off == 0
        copied = 0
        done = False
        while copied < max(budget, 1):
            # Ask for one byte more than the file should have left: a short
            # read is its end, without a second read to see it.
            want = min(CHUNK, expected - off + 1) if off <= expected else CHUNK
            data = self._host(os.pread, fd, want, off)
            if data:
                t.write_blocks(a, off, data, new=True)
                off += len(data)
                a.size = off
                copied += len(data)
            if len(data) < want:
                done = True
                break
        t.put_attr(a, new=first_save)
        self.progress.bytes_done += copied
        if done:
            self.finished.append(fd)
            self.partial = None
        else:
            self.partial = (fd, a, off, expected)
        return copied

    def _close_partial(self) -> None:
        if self.partial is not None:
            os.close(self.partial[0])
            self.partial = None

    def _copy_xattrs(self, t: Tree, path: bytes, ino: int) -> None:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return  # the host filesystem has none (or none for this file type)
        for name in names:
            bname = os.fsencode(name)
            if bname.startswith(XATTR_NAMESPACES):
                t.put_xattr(ino, bname, self._host(os.getxattr, path, name,
                                                   follow_symlinks=False), new=True)

    @staticmethod
    def _host(fn: Callable[..., T], path_or_fd: bytes | int, *args: object, **kw: object) -> T:
        """A host call; its failure becomes the import's, naming the host file."""
        try:
            return fn(path_or_fd, *args, **kw)
        except OSError as e:
            where = os.fsdecode(path_or_fd) if isinstance(path_or_fd, bytes) else "a host file"
            raise FsError(e.errno or errno.EIO, f"{where}: {e.strerror}")

    def _finish(self, t: Tree) -> None:
        """Make the staged tree visible, in this one transaction."""
        view, staged_local = split_ino(self.staged)
        now = t.clock()
        d = t.live_dir(self.dest_ino)
        if not self.merge:
            t.check_reserved(self.dest_ino, self.name)
            if t.entry(self.dest_ino, self.name) is not None:
                raise FsError(errno.EEXIST, f"{self.dest} was created during the import")
            t.link_entry(self.dest_ino, self.name, t.attr(self.staged))
            d.nlink += 1
        else:
            moved = t.readdir(self.staged, 0, 1 << 62)
            for ent in moved:
                t.check_reserved(self.dest_ino, ent.name)
                self._check_root_name(self.dest_ino, ent.name)
                if t.entry(self.dest_ino, ent.name) is not None:
                    raise FsError(errno.EEXIST, f"{self._in_dest(ent.name)} exists (made "
                                  "during the import); nothing was imported")
            for ent in moved:
                t.link_entry(self.dest_ino, ent.name, ent.attr)
                if ent.attr.is_dir:
                    t.set_parent(ent.attr, self.dest_ino)
                    t.put_attr(ent.attr)
                    d.nlink += 1
            t.free(view, staged_local)  # the staged root, and its entries with it
        t.unstage(self.staged)
        self.staged = 0
        t.touch(d, now)
