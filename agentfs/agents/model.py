"""Agents as directories: spawn, append-only transcripts with per-turn epochs,
forks now or at any past turn, lineage.

Each agent is its own view (see views.py) rooted at `agents/NAME`, so pins
taken at every transcript turn only version what that agent changes, and a
fork of an agent is a fork of its view: constant cost, conversation and files
together. The skeleton's files have fixed local inode numbers, which forks
keep, so the daemon recognises `prompt`, `transcript`, ... in any agent by
inode alone (see `Role`).

Records (besides the views' own):

    A<name>                       the agent: view, spawner, origin, status, turns
    a<view:4>                     view -> agent name
    T<view:4><turn:4>             turn N of the agent owning `view`: [epoch, transcript bytes]

This module is synchronous and knows nothing about FUSE; the daemon routes
writes to the special files here.
"""

from __future__ import annotations

import enum
import errno
import re
import stat
import time
from dataclasses import dataclass

from agentfs.errors import FsError
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.storage import codec
from agentfs.storage.codec import Attr, attr_suffix, fuse_ino, split_ino, u32
from agentfs.storage.kv import prefix_end
from agentfs.storage.views import Tx

AGENTS_DIR = b"agents"
NAME_RE = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STATUSES = ("idle", "running", "waiting", "done", "failed")


def turn_holder(view: int) -> bytes:
    """Who holds an agent's per-turn pins (on its view and the forks nested in it)."""
    return b"t" + u32(view)


class Role(enum.IntEnum):
    """The skeleton of an agent: local inode numbers inside the agent's view."""

    ROOT = 1
    PROMPT = 2
    SYSTEM = 3
    TOOLS = 4
    TRANSCRIPT = 5
    NOTES = 6
    WORKSPACE = 7
    INBOX = 8
    CONFIG = 9


SKELETON: list[tuple[bytes, Role, int, bytes]] = [
    (b"prompt", Role.PROMPT, stat.S_IFREG | 0o644, b""),
    (b"system", Role.SYSTEM, stat.S_IFREG | 0o644, b""),
    (b"tools.json", Role.TOOLS, stat.S_IFREG | 0o644, b"[]\n"),
    (b"transcript", Role.TRANSCRIPT, stat.S_IFREG | 0o644, b""),
    (b"notes", Role.NOTES, stat.S_IFDIR | 0o755, b""),
    (b"workspace", Role.WORKSPACE, stat.S_IFDIR | 0o755, b""),
    (b"inbox", Role.INBOX, stat.S_IFDIR | 0o777 | stat.S_ISVTX, b""),
    (b"config", Role.CONFIG, stat.S_IFREG | 0o644, b""),
]
FIRST_FREE_LOCAL = max(r for _, r, _, _ in SKELETON) + 1
FROZEN_AT_FIRST_TURN = (Role.PROMPT, Role.SYSTEM, Role.TOOLS)


@dataclass
class Agent:
    name: str
    view: int
    parent: str  # the spawner ("" for none)
    created_ns: int
    kind: str  # "spawn" | "fork"
    origin: str  # the agent this one was forked from ("" if spawned)
    origin_turn: int  # turns inherited from the origin
    status: str
    turns: int

    def encode(self) -> bytes:
        return codec.pack([codec.FORMAT, self.view, self.parent, self.created_ns, self.kind,
                           self.origin, self.origin_turn, self.status, self.turns])

    @classmethod
    def decode(cls, name: str, raw: bytes) -> Agent:
        f = codec.unpack(raw)
        assert isinstance(f, list) and f[0] == codec.FORMAT, f"unknown agent record {f!r}"
        return cls(name, *f[1:9])

    @property
    def root_ino(self) -> int:
        return fuse_ino(self.view, Role.ROOT)

    def ino(self, role: Role) -> int:
        return fuse_ino(self.view, role)


def check_agent_name(name: bytes) -> str:
    if not NAME_RE.match(name):
        raise FsError(errno.EINVAL, f"agent name {name.decode(errors='replace')!r} must be "
                      "1-64 characters "
                      "[A-Za-z0-9._-], starting with a letter or digit")
    return name.decode()


class Agents:
    """The agent layer over one FileSystem."""

    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs

    # ------------------------------------------------------------ lookups

    def dir_ino(self) -> int:
        """The inode of /agents, created on first use."""
        try:
            return self.fs.lookup(ROOT_INO, AGENTS_DIR).ino
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
        return self.fs.create(ROOT_INO, AGENTS_DIR, stat.S_IFDIR | 0o777 | stat.S_ISVTX, 0, 0).ino

    def _get(self, tx: Tx, name: str) -> Agent:
        raw = tx.txn.get(b"A" + name.encode())
        if raw is None:
            raise FsError(errno.ENOENT, f"no agent named {name!r}")
        return Agent.decode(name, raw)

    def _put(self, tx: Tx, a: Agent) -> None:
        tx.txn.put(b"A" + a.name.encode(), a.encode())

    def get(self, name: str) -> Agent:
        with self.fs.store.read() as tx:
            return self._get(tx, name)

    def by_name(self, name: str) -> Agent | None:
        try:
            return self.get(name)
        except FsError:
            return None

    def by_view(self, view: int) -> Agent | None:
        """The agent whose view this is (None for any other view)."""
        with self.fs.store.read() as tx:
            raw = tx.txn.get(b"a" + u32(view))
            return None if raw is None else self._get(tx, raw.decode())

    def role_of(self, ino: int) -> tuple[Agent, Role] | None:
        """(agent, role) if `ino` is one of an agent's skeleton files."""
        view, local = split_ino(ino)
        if local >= FIRST_FREE_LOCAL:
            return None
        a = self.by_view(view)
        return None if a is None else (a, Role(local))

    def all(self) -> list[Agent]:
        with self.fs.store.read() as tx:
            return [Agent.decode(k[1:].decode(), raw) for k, raw in tx.txn.scan(b"A", b"B")]

    # ------------------------------------------------------------ spawn and remove

    def spawn(self, name: bytes, parent: str = "", uid: int = 0, gid: int = 0) -> Agent:
        """`mkdir agents/NAME`: a new agent (its own view) with its skeleton."""
        sname = check_agent_name(name)
        agents = self.dir_ino()
        now = time.time_ns()
        with self.fs.store.write() as tx:
            if tx.txn.get(b"A" + name) is not None:
                raise FsError(errno.EEXIST, f"agent {sname!r} exists")
            if self.fs._entry(tx, agents, name) is not None:
                raise FsError(errno.EEXIST, f"agents/{sname} exists")
            if parent and tx.txn.get(b"A" + parent.encode()) is None:
                raise FsError(errno.ENOENT, f"parent agent {parent!r} does not exist")
            aview, _ = split_ino(agents)
            v = tx.new_view([], Role.ROOT, False, aview, "agent", FIRST_FREE_LOCAL)
            tx.txn.put(b"C" + u32(aview) + u32(v.id), b"")
            root = Attr(stat.S_IFDIR | 0o755, uid, gid, nlink=2, atime_ns=now, mtime_ns=now,
                        ctime_ns=now, parent_view=aview, parent_local=split_ino(agents)[1],
                        ino=fuse_ino(v.id, Role.ROOT))
            self.fs._put_attr(tx, root)
            for fname, role, mode, content in SKELETON:
                a = Attr(mode, uid, gid, nlink=2 if stat.S_ISDIR(mode) else 1, atime_ns=now,
                         mtime_ns=now, ctime_ns=now, ino=fuse_ino(v.id, role),
                         flags=codec.FLAG_LOG if role is Role.TRANSCRIPT else 0)
                if stat.S_ISDIR(mode):
                    a.parent_view, a.parent_local = 0, Role.ROOT
                    root.nlink += 1
                self.fs._put_attr(tx, a)
                self.fs._link_entry(tx, root.ino, fname, a)
                if content:
                    self.fs._write(tx, a, 0, content)
            self.fs._put_attr(tx, root)
            d = self.fs._attr(tx, agents)
            self.fs._link_entry(tx, agents, name, root)
            d.nlink += 1
            self.fs._touch(tx, d, now)
            agent = Agent(sname, v.id, parent, now, "spawn", "", 0, "idle", 0)
            self._put(tx, agent)
            tx.txn.put(b"a" + u32(v.id), name)
            return agent

    def remove(self, name: str) -> None:
        """Remove an agent and everything it holds (its forks keep what they share)."""
        a = self.get(name)
        with self.fs.store.write() as tx:
            # Its turns go with it: nothing can fork at them once the agent is
            # gone (its forks keep, by their own pins, what they share).
            self.fs._release(tx, turn_holder(a.view))
            prefix = b"T" + u32(a.view)
            for k, _ in list(tx.txn.scan(prefix, prefix_end(prefix))):
                tx.txn.delete(k)
        self.fs.detach(self.dir_ino(), name.encode())
        with self.fs.store.write() as tx:
            tx.txn.delete(b"A" + name.encode())
            tx.txn.delete(b"a" + u32(a.view))

    # ------------------------------------------------------------ transcript

    def append(self, name: str, line: bytes) -> int:
        """Append one validated message line to the transcript; returns its turn
        number. The agent's whole tree is remembered as it is after the turn."""
        from agentfs.agents.render import validate_line  # the validator lives with the renderer

        if line.endswith(b"\n"):
            line = line[:-1]
        validate_line(line)
        with self.fs.store.write() as tx:
            a = self._get(tx, name)
            t = self.fs._attr(tx, a.ino(Role.TRANSCRIPT))
            self.fs._write(tx, t, t.size, line + b"\n")
            a.turns += 1
            # The whole tree as it is now, forks made inside the workspace too.
            epoch = self.fs._pin_tree(tx, a.view, turn_holder(a.view))
            tx.txn.put(b"T" + u32(a.view) + u32(a.turns), codec.pack([epoch, t.size]))
            self._put(tx, a)
            return a.turns

    def turn_epoch(self, name: str, turn: int) -> tuple[Agent, int]:
        """(the agent that owns turn `turn` of `name`'s history, its epoch)."""
        with self.fs.store.read() as tx:
            a = self._get(tx, name)
            if not 1 <= turn <= a.turns:
                raise FsError(errno.ENOENT, f"{name} has turns 1..{a.turns}, not {turn}")
            while turn <= a.origin_turn and a.origin:
                a = self._get(tx, a.origin)
            raw = tx.txn.get(b"T" + u32(a.view) + u32(turn))
            if raw is None:
                raise FsError(errno.ENOENT, f"turn {turn} of {a.name} was not recorded")
            rec = codec.unpack(raw)
            assert isinstance(rec, list)
            return a, int(rec[0])

    def frozen(self, a: Agent) -> bool:
        """Prompt, system prompt and tools are fixed from the first turn on."""
        return a.turns > 0

    # ------------------------------------------------------------ forks

    def fork(self, src: str, dst: bytes, at_turn: int | None = None, parent: str = "") -> Agent:
        """Fork `src` as agent `dst`: now, or as it was at the end of turn `at_turn`."""
        sname = check_agent_name(dst)
        s = self.get(src)
        agents = self.dir_ino()
        owner, epoch = (s, None) if at_turn is None else self.turn_epoch(src, at_turn)
        root = self.fs.fork(owner.root_ino, agents, dst, epoch)
        view = split_ino(root.ino)[0]
        turns = s.turns if at_turn is None else at_turn
        with self.fs.store.write() as tx:
            if tx.txn.get(b"A" + dst) is not None:
                raise FsError(errno.EEXIST, f"agent {sname!r} exists")
            a = Agent(sname, view, parent or s.name, time.time_ns(), "fork", owner.name,
                      turns, "idle", turns)
            self._put(tx, a)
            tx.txn.put(b"a" + u32(view), dst)
            return a

    def set_parent(self, name: str, parent: str) -> None:
        """Record the spawner after the fact (`echo P > agents/NAME/parent`), once."""
        with self.fs.store.write() as tx:
            a = self._get(tx, name)
            if a.parent:
                raise FsError(errno.EEXIST, f"{name}'s parent is already {a.parent}")
            if parent == name:
                raise FsError(errno.EINVAL, "an agent cannot be its own parent")
            self._get(tx, parent)
            a.parent = parent
            self._put(tx, a)

    def set_status(self, name: str, status: str) -> None:
        if status not in STATUSES:
            raise FsError(errno.EINVAL, f"status must be one of {', '.join(STATUSES)}")
        with self.fs.store.write() as tx:
            a = self._get(tx, name)
            a.status = status
            self._put(tx, a)

    # ------------------------------------------------------------ lineage

    def children(self, name: str) -> list[str]:
        return sorted(a.name for a in self.all() if name in (a.parent, a.origin))

    def export(self) -> list[dict[str, object]]:
        """The fork/spawn tree as records an RL trainer can read: each branch with
        the length of the prefix it shares with its origin."""
        return [{"name": a.name, "parent": a.parent or None, "origin": a.origin or None,
                 "kind": a.kind, "shared_prefix_turns": a.origin_turn, "turns": a.turns,
                 "status": a.status} for a in sorted(self.all(), key=lambda a: a.created_ns)]

    def transcript_ino(self, name: str) -> int:
        return self.get(name).ino(Role.TRANSCRIPT)

    def attr_of(self, a: Agent, role: Role) -> Attr:
        with self.fs.store.read() as tx:
            raw = tx.get(a.view, attr_suffix(role))
            if raw is None:
                raise FsError(errno.ENOENT, f"{a.name} has no {role.name.lower()}")
            return Attr.decode(raw, a.ino(role))


# ---------------------------------------------------------------- the agent's files

STAGED_PREFIX = b".in-"
MESSAGE_RE = re.compile(rb"^(\d{6,})-")


def refuse_change(a: Agent, role: Role, what: str) -> None:
    """EPERM (with the reason) for changes the agent's files do not allow."""
    if role in FROZEN_AT_FIRST_TURN and a.turns > 0:
        raise FsError(errno.EPERM, f"agents/{a.name}/{SKELETON_NAMES[role]} is frozen: "
                      f"the transcript has {a.turns} turn(s); fork the agent to change it")
    if role is Role.TRANSCRIPT and what != "append":
        raise FsError(errno.EPERM, f"agents/{a.name}/transcript is append-only "
                      f"({what} refused); append lines with >>")
    if role is Role.ROOT or (what in ("unlink", "rename") and role in SKELETON_NAMES):
        raise FsError(errno.EPERM, f"agents/{a.name}/{SKELETON_NAMES.get(role, '')} is part "
                      "of the agent's skeleton; remove the agent with its ctl: echo remove > ctl")


SKELETON_NAMES: dict[Role, str] = {r: n.decode() for n, r, _, _ in SKELETON}


def _inbox_seq(fs: FileSystem, tx: Tx, a: Agent) -> int:
    key = b"Q" + u32(a.view)
    raw = tx.txn.get(key)
    if raw is not None:
        return codec.read_u64(raw)
    # First message since this view began (a fork inherits its origin's messages):
    # continue after the highest number present.
    high = 0
    view, local = split_ino(a.ino(Role.INBOX))
    for sub, _ in tx.scan(view, codec.dentry_dir_suffix(local)):
        m = MESSAGE_RE.match(sub[8:-1])
        if m:
            high = max(high, int(m.group(1)))
    return high + 1


def stage_message(agents: Agents, a: Agent, name: bytes, nonce: int, uid: int,
                  gid: int) -> Attr:
    """A message being written: a hidden file in the inbox until its writer closes it."""
    from agentfs.posix.fs import check_name

    check_name(name)
    if name.startswith(STAGED_PREFIX):
        raise FsError(errno.EINVAL, "names starting with .in- are reserved for messages "
                      "being written")
    staged = STAGED_PREFIX + b"%d-" % nonce + name
    return agents.fs.create(a.ino(Role.INBOX), staged[:255], stat.S_IFREG | 0o644, uid, gid)


def deliver_message(agents: Agents, a: Agent, staged: bytes, sender: str) -> bytes:
    """Make a staged message visible, atomically, as SEQ-SENDER+NAME.

    Senders are reduced to [A-Za-z0-9._-], so the first '+' always ends the
    sender, whatever the message's own name holds."""
    fs = agents.fs
    inbox = a.ino(Role.INBOX)
    original = staged[len(STAGED_PREFIX):].split(b"-", 1)[1]
    safe_sender = re.sub(rb"[^A-Za-z0-9._-]", b"_", sender.encode())[:64] or b"unknown"
    with fs.store.write() as tx:
        seq = _inbox_seq(fs, tx, a)
        final = (b"%06d-%s+%s" % (seq, safe_sender, original))[:255]
        tx.txn.put(b"Q" + u32(a.view), codec.u64(seq + 1))
        fs._rename(tx, inbox, staged, inbox, final, 1)
    return final


def drop_staged(agents: Agents) -> int:
    """At mount: messages whose writer never closed them are not messages."""
    n = 0
    for a in agents.all():
        try:
            entries = list(agents.fs.readdir(a.ino(Role.INBOX)))
        except FsError:
            continue
        for e in entries:
            if e.name.startswith(STAGED_PREFIX):
                agents.fs.unlink(a.ino(Role.INBOX), e.name)
                agents.fs.forget(e.attr.ino)
                n += 1
    return n


def inbox_messages(agents: Agents, a: Agent) -> list[bytes]:
    """Delivered messages in arrival order."""
    names = [e.name for e in agents.fs.readdir(a.ino(Role.INBOX))
             if not e.name.startswith(STAGED_PREFIX)]
    return sorted(names)

