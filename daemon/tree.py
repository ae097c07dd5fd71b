"""The stored tree: every inode with a record in the store (inodes.py kind STORED).

The POSIX calls go to `agentfs.posix.fs.FileSystem`. Two things are added:

- the names other namespaces put in stored directories (`.snapshots`,
  `.agentfs`, `AGENTS.md`, an agent's generated files): looked up and listed
  through their `lookup_in` / `names_in`, and never taken by a stored entry
  (EEXIST: it would hide behind the generated name and be listed twice);
- the agent rules on stored inodes (daemon/agentfiles.py `AgentRules`):
  spawn, inbox messages, the transcript's append-only lines, the skeleton.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterator

from agentfs.agents.model import Agent
from agentfs.agents.render import MAX_LINE
from agentfs.errors import FsError
from agentfs.posix.fs import FileSystem, SetAttr
from agentfs.storage.codec import Attr, split_ino

from .agentfiles import AgentFiles, AgentRules
from .lines import LineBuffer
from .namespace import ENTRY_TIMEOUT, Caller, Effects, Entry, Handle, Listing, Namespace, numbered

FIRST_EXTRA, FIRST_LISTED = 3, 16  # readdir offsets: 1-2 dots, 3-15 added names, then entries


def entry_timeout(parent: int, child: int) -> float:
    """Entries that lead into another view (fork roots) are not cached:
    `detach` through the control file removes them, and an asynchronous
    invalidation would leave a window where the old fork is still reached."""
    return 0.0 if split_ino(parent)[0] != split_ino(child)[0] else ENTRY_TIMEOUT


class StoredFile(Handle):
    keep_cache = True
    direct_io = False

    def __init__(self, ino: int, pid: int, tree: StoredTree) -> None:
        super().__init__(ino, pid)
        self.tree = tree

    async def read(self, off: int, size: int) -> bytes:
        return self.tree.fs.read(self.ino, off, size)

    def write(self, off: int, buf: bytes) -> int:
        self.tree.rules.write(self.ino, off, buf)
        return len(buf)

    def last_close(self, pid: int) -> bool:
        """Is this flush the last close? (Not a child's inherited copy.)"""
        return not self.tree.rules.held_open(pid, self.ino)


class ValidatedFile(StoredFile):
    """An agent file checked whole on every write (config). Its O_TRUNC waits
    for the first write, in the same transaction, so that a refused write
    leaves the file as it was; reads go to the daemon (the kernel believed
    the truncation)."""

    keep_cache = False
    direct_io = True

    def __init__(self, ino: int, pid: int, tree: StoredTree, truncate: bool) -> None:
        super().__init__(ino, pid, tree)
        self.truncate = truncate

    def write(self, off: int, buf: bytes) -> int:
        truncate, self.truncate = self.truncate, False
        try:
            self.tree.rules.write(self.ino, off, buf, truncate)
        finally:
            if truncate:  # the kernel set the size to 0 at open: tell it what is true
                self.tree.effects.invalidate(self.ino, b"", 0)
        return len(buf)

    def flush(self) -> None:
        if self.truncate and self.last_close(self.pid):  # `: > config`: truncated, no write
            self.truncate = False
            self.tree.fs.setattr(self.ino, SetAttr(size=0))


class Message(StoredFile):
    """A file being written in an inbox: delivered, under its final name, at
    the last close."""

    keep_cache = False
    direct_io = True

    def __init__(self, ino: int, pid: int, tree: StoredTree,
                 staged: tuple[Agent, bytes, str]) -> None:
        super().__init__(ino, pid, tree)
        self.staged: tuple[Agent, bytes, str] | None = staged

    def _deliver(self) -> None:
        staged, self.staged = self.staged, None
        if staged is not None:
            self.tree.files.arrived(self.tree.rules.deliver(staged))

    def flush(self) -> None:
        if self.staged is not None and self.last_close(self.pid):
            self._deliver()

    def release(self) -> None:
        self._deliver()  # the opener passed the descriptor on and closed before its heirs


class Transcript(StoredFile):
    """`agents/X/transcript` open for appending: each write() appends its
    complete lines, all or (EINVAL) none; a partial last line waits for the
    next write, and is refused loudly at close."""

    keep_cache = False
    direct_io = True

    def __init__(self, ino: int, pid: int, tree: StoredTree, agent: Agent) -> None:
        super().__init__(ino, pid, tree)
        self.agent = agent
        self.lines = LineBuffer(MAX_LINE + 1)

    def write(self, off: int, buf: bytes) -> int:
        try:
            try:
                lines = self.lines.feed(buf)
            except FsError as e:
                raise e.within(f"agents/{self.agent.name}/transcript")
            self.tree.rules.append_lines(self.agent, lines)
        except FsError:
            self.lines.clear()  # the write failed: none of it stays pending
            raise
        return len(buf)

    def _refuse_partial(self) -> None:
        if self.lines:
            rest = self.lines.take()
            raise FsError(errno.EINVAL, f"agents/{self.agent.name}/transcript: incomplete "
                          "line refused at close (no newline; nothing of it was appended): "
                          f"{rest[:80]!r}")

    def flush(self) -> None:
        if self.lines and self.last_close(self.pid):
            self._refuse_partial()

    def release(self) -> None:
        self._refuse_partial()


class StoredTree(Namespace):
    def __init__(self, fs: FileSystem, rules: AgentRules, files: AgentFiles,
                 overlays: list[Namespace], effects: Effects) -> None:
        self.fs = fs
        self.rules = rules
        self.files = files
        self.overlays = overlays  # asked in this order for the names they add
        self.effects = effects
        self.nonces = itertools.count(1)  # tells apart messages staged under one name

    def describe(self, ino: int) -> str:
        return f"inode {ino}"

    def _name_free(self, parent: int, name: bytes) -> None:
        if self._generated(parent, name):
            raise FsError(errno.EEXIST, f"{name.decode(errors='replace')} is generated by "
                          "agentfs here; pick another name")

    def _generated(self, parent: int, name: bytes) -> bool:
        return any(ns.reserves(parent, name) for ns in self.overlays)

    # -- lookups and attributes

    def lookup(self, parent: int, name: bytes, pid: int) -> Entry:
        for ns in self.overlays:
            found = ns.lookup_in(parent, name, pid)
            if found is not None:
                return found
        a = self.fs.lookup(parent, name)
        return Entry(a, entry_timeout=entry_timeout(parent, a.ino))

    def getattr(self, ino: int, pid: int) -> Entry:
        return Entry(self.fs.getattr(ino), counted=False)

    def setattr(self, ino: int, ch: SetAttr, pid: int) -> Entry:
        if ch.size is not None:
            self.rules.check(ino, "truncate")
        return Entry(self.fs.setattr(ino, ch), counted=False)

    def readlink(self, ino: int) -> bytes:
        return self.fs.readlink(ino)

    # -- names

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Caller) -> Entry:
        self._name_free(parent, name)
        if self.rules.is_inbox(parent):
            raise FsError(errno.EPERM, "an inbox holds messages: create them as regular files "
                          "(open with O_CREAT, write, close)")
        return Entry(self.fs.create(parent, name, mode, ctx.uid, ctx.gid, rdev))

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Caller) -> Entry:
        self._name_free(parent, name)
        spawned = self.rules.spawn(parent, name, ctx.pid, ctx.uid, ctx.gid)
        if spawned is not None:
            return Entry(spawned, entry_timeout=0)
        return Entry(self.fs.create(parent, name, stat.S_IFDIR | mode, ctx.uid, ctx.gid))

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Caller) -> Entry:
        self._name_free(parent, name)
        return Entry(self.fs.create(parent, name, stat.S_IFLNK | 0o777, ctx.uid, ctx.gid,
                                    target=target))

    def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Caller
               ) -> tuple[Handle, Entry]:
        self._name_free(parent, name)
        staged = self.rules.stage(parent, name, ctx.pid, ctx.uid, ctx.gid, next(self.nonces))
        if staged is not None:
            attr, message = staged
            # A message's name changes when it is delivered: the kernel must not
            # keep the name it was created under.
            return Message(attr.ino, ctx.pid, self, message), Entry(attr, entry_timeout=0)
        attr = self.fs.create(parent, name, stat.S_IFREG | stat.S_IMODE(mode), ctx.uid, ctx.gid)
        return StoredFile(attr.ino, ctx.pid, self), Entry(attr)

    def unlink(self, parent: int, name: bytes, pid: int) -> None:
        self.rules.check_removal(parent, name, pid)
        self.rules.check(self.fs.lookup(parent, name).ino, "unlink")
        if not self.rules.consume(parent, name):
            self.fs.unlink(parent, name)

    def rmdir(self, parent: int, name: bytes, pid: int) -> None:
        self.rules.check_removal(parent, name, pid)
        child = self.fs.lookup(parent, name).ino
        removed = self.rules.remove_agent_dir(parent, child)
        if removed is not None:
            self.effects.done(removed)
            return
        self.rules.check(child, "unlink")
        self.fs.rmdir(parent, name)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int) -> None:
        if self._generated(old_parent, old_name):
            raise FsError(errno.EPERM, f"{old_name.decode(errors='replace')} is generated by "
                          "agentfs: it cannot be renamed")
        self._name_free(new_parent, new_name)
        self.rules.check(self.fs.lookup(old_parent, old_name).ino, "rename")
        try:
            self.rules.check(self.fs.lookup(new_parent, new_name).ino, "rename")
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
        if not self.rules.consume(old_parent, old_name, (new_parent, new_name, flags)):
            self.fs.rename(old_parent, old_name, new_parent, new_name, flags)

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Entry:
        self._name_free(new_parent, new_name)
        return Entry(self.fs.link(ino, new_parent, new_name))

    # -- files and directories

    def open(self, ino: int, flags: int, pid: int) -> Handle:
        writes = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if (writes or flags & os.O_TRUNC) and self.fs.is_readonly(ino):
            raise FsError(errno.EROFS, "snapshots are read-only")
        transcript = self.rules.transcript(ino)
        if flags & os.O_TRUNC and self.fs.getattr(ino).size:
            self.rules.check(ino, "truncate")
        if writes and transcript is None:
            self.rules.check(ino, "write")
        elif writes and not flags & os.O_APPEND:
            # Every write appends: say so at open rather than ignore an offset.
            self.rules.check(ino, "writing without O_APPEND")
        if transcript is not None and writes:
            return Transcript(ino, pid, self, transcript)
        if writes and self.rules.defers_truncate(ino):
            return ValidatedFile(ino, pid, self, bool(flags & os.O_TRUNC))
        if flags & os.O_TRUNC:
            # libfuse negotiates atomic O_TRUNC: the kernel sends no separate setattr.
            a = self.fs.setattr(ino, SetAttr(size=0))
        else:
            a = self.fs.getattr(ino)
        if a.is_dir:
            raise FsError(errno.EISDIR)
        return StoredFile(ino, pid, self)

    def opendir(self, ino: int, pid: int) -> Handle:
        if not self.fs.getattr(ino).is_dir:
            raise FsError(errno.ENOTDIR)
        listing: list[tuple[bytes, Attr]] | None = None
        if self.rules.is_inbox(ino):
            # One consistent listing per opendir, in arrival order: a message
            # delivered between two readdir pages must not show its successor
            # without it.
            listing = sorted((e.name, e.attr) for e in self.fs.readdir(ino)
                             if not self.rules.hidden(ino, e.name))
        return Listing(ino, lambda start: self._entries(ino, listing, start))

    def _entries(self, ino: int, listing: list[tuple[bytes, Attr]] | None, start: int
                 ) -> Iterator[tuple[bytes, Entry, int]]:
        if start < 2:
            # '.' and '..' (offsets 1, 2): the kernel takes no lookup reference for them.
            me = self.fs.getattr(ino)
            dots = [(b".", me), (b"..", self.fs.getattr(self.fs.parent_of(me)))]
            for off, (name, a) in enumerate(dots[start:], start + 1):
                yield name, Entry(a, counted=False), off
            start = 2
        added = [x for ns in self.overlays for x in ns.names_in(ino)]
        assert len(added) < FIRST_LISTED - FIRST_EXTRA, "readdir offsets 3-15 overflow"
        yield from numbered(added, FIRST_EXTRA, start)
        if listing is not None:
            yield from numbered([(n, Entry(a)) for n, a in listing], FIRST_LISTED, start)
            return
        for ent in self.fs.readdir(ino, start):
            if not self.rules.hidden(ino, ent.name):
                yield ent.name, Entry(ent.attr, entry_timeout=entry_timeout(
                    ino, ent.attr.ino)), ent.offset

    # -- extended attributes

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.fs.setxattr(ino, name, value)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        return self.fs.getxattr(ino, name)

    def listxattr(self, ino: int) -> list[bytes]:
        return self.fs.listxattr(ino)

    def removexattr(self, ino: int, name: bytes) -> None:
        self.fs.removexattr(ino, name)
