"""`MOUNT/.agentfs/`: the mount's control file, its errstr, the lineage and events.

    ctl       one command per line (agentfs.agents.control.run_command); reading
              it gives the daemon's status (pid, epoch, open handles, last result),
              then a line per import in progress or recently finished (imports.py)
    errstr    the last failure's reason, for the reading process (or its shell)
    lineage   the fork/spawn tree as JSONL, each branch with its shared prefix
    events    the event stream (agents/events.py): served from the store at
              every read, never cached (direct_io, no attribute cache), so its
              size is always current and `tail -f` sees each new line

`.agentfs` is looked up at the root but not listed by readdir.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
from collections.abc import Callable, Iterator

from agentfs.agents.control import run_command
from agentfs.agents.model import Agents
from agentfs.errors import FsError
from agentfs.posix.fs import CTLDIR, ROOT_INO, FileSystem, SetAttr
from agentfs.posix.ownmount import OwnMount
from agentfs.storage import eventlog
from agentfs.storage.codec import Attr

from . import inodes
from .errstr import ErrorLog
from .imports import Imports
from .inodes import Kind
from .namespace import (
    Commands,
    Content,
    Effects,
    Entry,
    Handle,
    Listing,
    Namespace,
    numbered,
    virtual,
)

CTLDIR_INO = inodes.CTLDIR_INO
CTL_INO = inodes.encode(Kind.CTL_FILE, 1)
ERRSTR_INO = inodes.encode(Kind.CTL_FILE, 2)
LINEAGE_INO = inodes.encode(Kind.CTL_FILE, 3)
EVENTS_INO = inodes.encode(Kind.CTL_FILE, 4)
CTL_FILES = {b"ctl": CTL_INO, b"errstr": ERRSTR_INO, b"lineage": LINEAGE_INO,
             b"events": EVENTS_INO}
NAMES = {v: k.decode() for k, v in CTL_FILES.items()}


class Events(Handle):
    """`.agentfs/events` open: each read is served from the store, in one read
    transaction, at any offset (bytes the window dropped: ENODATA, and why)."""

    def __init__(self, ino: int, pid: int, fs: FileSystem) -> None:
        super().__init__(ino, pid)
        self.fs = fs

    async def read(self, off: int, size: int) -> bytes:
        with self.fs.store.read() as tx:
            try:
                return eventlog.read(tx.txn, off, size)
            except eventlog.Gone as e:
                raise FsError(errno.ENODATA, f".agentfs/events: {e} (the stream keeps only "
                              f"the newest events); read from byte {e.first_offset}, e.g. "
                              f"tail -c +{e.first_offset + 1}, or agentfs events")


def events_size(fs: FileSystem) -> int:
    with fs.store.read() as tx:
        return eventlog.head(tx.txn).next_offset


class ControlDir(Namespace):
    def __init__(self, fs: FileSystem, agents: Agents, errors: ErrorLog, effects: Effects,
                 open_handles: Callable[[], int], served: Callable[[], int] = lambda: 0,
                 mountpoint: str = "") -> None:
        self.fs = fs
        self.mountpoint = mountpoint  # a real path, resolved before mounting
        self.agents = agents
        self.errors = errors
        self.effects = effects
        self.open_handles = open_handles
        self.imports = Imports(effects, errors, served)

    def describe(self, ino: int) -> str:
        return f".agentfs/{NAMES[ino]}" if ino in NAMES else ".agentfs"

    def fixed(self, ino: int) -> FsError:
        return FsError(errno.EPERM, "the agentfs control directory and its files are fixed")

    # -- content

    def status(self) -> bytes:
        return (f"agentfs pid={os.getpid()} epoch={self.fs.epoch_now()} "
                f"open_handles={self.open_handles()} last={self.effects.last_result!r}\n"
                + self.imports.status()).encode()

    def content(self, ino: int, pid: int) -> bytes:
        if ino == ERRSTR_INO:
            return self.errors.for_pid(pid).encode()
        if ino == LINEAGE_INO:
            return b"".join(json.dumps(r, sort_keys=True).encode() + b"\n"
                            for r in self.agents.export())
        return self.status()

    def run(self, line: bytes, pid: int = 0) -> None:
        text = line.decode("utf-8", "replace")
        try:
            # (The mount table is read per command: a bind mount may be new.)
            result = run_command(self.agents, text, OwnMount.find(self.mountpoint))
            if result.job is not None:
                job = self.imports.start(result.job, pid)
                result.message = f"import {job.id} started"
            if result.cancel_job:
                self.imports.cancel(result.cancel_job, pid)
        except FsError as e:
            raise e.within(text.strip())
        self.effects.done(result)

    # -- names

    def lookup_in(self, dir_ino: int, name: bytes, pid: int) -> Entry | None:
        if dir_ino == ROOT_INO and name == CTLDIR:
            return virtual(self._attr(CTLDIR_INO, pid))
        return None

    def lookup(self, parent: int, name: bytes, pid: int) -> Entry:
        if parent != CTLDIR_INO:
            raise FsError(errno.ENOTDIR)
        if name not in CTL_FILES:
            raise FsError(errno.ENOENT)
        return virtual(self._attr(CTL_FILES[name], pid))

    def _attr(self, ino: int, pid: int) -> Attr:
        t = self.fs.getattr(ROOT_INO).ctime_ns
        if ino == CTLDIR_INO:
            return Attr(stat.S_IFDIR | 0o755, 0, 0, nlink=2, atime_ns=t, mtime_ns=t,
                        ctime_ns=t, ino=ino)
        mode = stat.S_IFREG | (0o666 if ino == CTL_INO else 0o444)
        size = events_size(self.fs) if ino == EVENTS_INO else len(self.content(ino, pid))
        return Attr(mode, 0, 0, nlink=1, size=size, atime_ns=t, mtime_ns=t, ctime_ns=t,
                    ino=ino)

    def getattr(self, ino: int, pid: int) -> Entry:
        return virtual(self._attr(ino, pid))

    def setattr(self, ino: int, ch: SetAttr, pid: int) -> Entry:
        if ino == CTL_INO and ch.size is not None:
            return self.getattr(ino, pid)  # `>` truncates first: allow, and change nothing
        raise FsError(errno.EPERM, "agentfs control files cannot be changed")

    def open(self, ino: int, flags: int, pid: int) -> Handle:
        if ino == CTLDIR_INO:
            raise FsError(errno.EISDIR)
        if ino == CTL_INO:
            return Commands(ino, pid, functools.partial(self.run, pid=pid), self.status,
                            ".agentfs/ctl")
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            raise FsError(errno.EACCES, f"{self.describe(ino)} is generated by agentfs: "
                          "read-only")
        if ino == EVENTS_INO:
            return Events(ino, pid, self.fs)
        return Content(ino, pid, self.content(ino, pid))

    def opendir(self, ino: int, pid: int) -> Handle:
        if ino != CTLDIR_INO:
            raise FsError(errno.ENOTDIR)
        return Listing(ino, self._entries)

    def _entries(self, start: int) -> Iterator[tuple[bytes, Entry, int]]:
        files = [(n, virtual(self._attr(i, 0))) for n, i in sorted(CTL_FILES.items())]
        return numbered(files, 1, start)
