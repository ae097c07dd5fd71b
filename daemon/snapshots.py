"""`DIR/.snapshots/`: every directory's read-only snapshots, as a directory.

`mkdir DIR/.snapshots/NAME` makes a snapshot, `rmdir` deletes it, `ls` lists
them; `.snapshots` itself is looked up but never listed (so ls, find, rsync,
cp -r and git do not see it). In an agent's directory it also holds the
agent's turn snapshots `turn-1` .. `turn-T`: the agent as it was after each
turn, listed first, made on first visit (under the agent's own directory, so
that it stays when the agent the turn was inherited from is removed), and
never removed: history is append-only.

A `.snapshots` has no record in the store: its inode number is an index into
`dirs`, handed out on first lookup (inodes.py, kind SNAPDIR).
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator

from agentfs.agents.control import TURN_SNAPSHOT_PREFIX
from agentfs.agents.model import Agents, Role
from agentfs.errors import FsError
from agentfs.posix.fs import SNAPDIR, FileSystem
from agentfs.storage.codec import Attr, fuse_ino

from . import inodes
from .inodes import Kind
from .namespace import Caller, Effects, Entry, Handle, Listing, Namespace, virtual

TURN_PREFIX = TURN_SNAPSHOT_PREFIX.encode()


class Snapshots(Namespace):
    def __init__(self, fs: FileSystem, agents: Agents, effects: Effects) -> None:
        self.fs = fs
        self.agents = agents
        self.effects = effects
        self.dirs: list[int] = []  # SNAPDIR index -> the directory it belongs to
        self.index_of: dict[int, int] = {}

    def describe(self, ino: int) -> str:
        return ".snapshots"

    def fixed(self, ino: int) -> FsError:
        return FsError(errno.EPERM, "only directories (snapshots) can be made in .snapshots")

    def dir_of(self, ino: int) -> int:
        (index,) = inodes.fields(ino, Kind.SNAPDIR)
        if index >= len(self.dirs):
            raise FsError(errno.ENOENT)
        return self.dirs[index]

    def _ino(self, dir_ino: int) -> int:
        index = self.index_of.get(dir_ino)
        if index is None:
            index = len(self.dirs)
            ino = inodes.encode(Kind.SNAPDIR, index)  # (raises before anything is kept)
            self.dirs.append(dir_ino)
            self.index_of[dir_ino] = index
            return ino
        return inodes.encode(Kind.SNAPDIR, index)

    # -- turn snapshots

    def turn_of(self, dir_ino: int, name: bytes) -> int | None:
        """N if `name` is `turn-N` in the .snapshots of an agent's directory."""
        if not name.startswith(TURN_PREFIX) or self.agents.agent_root(dir_ino) is None:
            return None
        digits = name[len(TURN_PREFIX):]
        if not digits.isdigit() or digits.startswith(b"0"):
            return None
        return int(digits)

    def _turn_snapshot(self, dir_ino: int, turn: int, name: bytes) -> Attr:
        a = self.agents.agent_root(dir_ino)
        assert a is not None
        try:
            return self.fs.snapshot_root(a.root_ino, name)
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
        owner, epoch = self.agents.turn_epoch(a.name, turn)
        return self.fs.snapshot(a.root_ino, name, epoch, source=fuse_ino(owner, Role.ROOT))

    def _turns(self, dir_ino: int) -> list[bytes]:
        a = self.agents.agent_root(dir_ino)
        return [] if a is None else [TURN_PREFIX + b"%d" % n for n in range(1, a.turns + 1)]

    # -- names

    def lookup_in(self, dir_ino: int, name: bytes, pid: int) -> Entry | None:
        if name != SNAPDIR:
            return None
        self.fs.getattr(dir_ino)  # ENOENT for a directory that is gone
        return virtual(self._attr(self._ino(dir_ino)))

    def lookup(self, parent: int, name: bytes, pid: int) -> Entry:
        d = self.dir_of(parent)
        turn = self.turn_of(d, name)
        if turn is not None:
            a = self._turn_snapshot(d, turn, name)
        else:
            a = self.fs.snapshot_root(d, name)
        # Not cached: `unsnapshot` through the control file removes these.
        return Entry(a, timeout=0.0)

    def _attr(self, ino: int) -> Attr:
        d = self.fs.getattr(self.dir_of(ino))
        # Writable by whoever may write the directory: mkdir makes a snapshot.
        return Attr(stat.S_IFDIR | stat.S_IMODE(d.mode) & 0o777, d.uid, d.gid, nlink=2,
                    atime_ns=d.atime_ns, mtime_ns=d.mtime_ns, ctime_ns=d.ctime_ns, ino=ino)

    def getattr(self, ino: int, pid: int) -> Entry:
        return virtual(self._attr(ino))

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Caller) -> Entry:
        d = self.dir_of(parent)
        if name.startswith(TURN_PREFIX) and self.agents.agent_root(d) is not None:
            raise FsError(errno.EINVAL, f"snapshot names starting with {TURN_SNAPSHOT_PREFIX} "
                          "are the agent's turn snapshots (.snapshots/turn-N); pick another "
                          "name")
        return Entry(self.fs.snapshot(d, name))

    def rmdir(self, parent: int, name: bytes, pid: int) -> None:
        d = self.dir_of(parent)
        if self.turn_of(d, name) is not None:
            raise FsError(errno.EPERM, f"{name.decode()}: an agent's turn snapshots are its "
                          "history, which is append-only: they cannot be removed")
        self.fs.delete_snapshot(d, name)
        self.effects.gc_wanted = True

    def unlink(self, parent: int, name: bytes, pid: int) -> None:
        raise FsError(errno.EISDIR, "snapshots are removed with rmdir")

    def opendir(self, ino: int, pid: int) -> Handle:
        self.dir_of(ino)
        return Listing(ino, lambda start: self._entries(ino, start))

    def _entries(self, ino: int, start: int) -> Iterator[tuple[bytes, Entry, int]]:
        d = self.dir_of(ino)
        turns = self._turns(d)
        named = [(n, a) for n, a in self.fs.snapshots(d) if self.turn_of(d, n) is None]
        # An agent's turn snapshots first (made on first listing, as on lookup).
        entries: list[tuple[bytes, Attr | None]] = [(n, None) for n in turns]
        entries += named
        for off, (name, maybe) in enumerate(entries, 1):
            if off > start:
                turn = self.turn_of(d, name)
                snap = maybe or self._turn_snapshot(d, turn or 0, name)
                yield name, Entry(snap), off
