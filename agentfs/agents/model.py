"""Agents as directories: spawn, append-only transcripts with per-turn epochs,
forks now or at any past turn, removal, lineage.

Each agent is its own view (see storage/views.py) rooted at `agents/NAME`, so
pins taken at every transcript turn only version what that agent changes, and
a fork of an agent is a fork of its view: constant cost, conversation and
files together. The skeleton's files have fixed local inode numbers, which
forks keep, so the daemon recognises `prompt`, `transcript`, ... in any agent
by inode alone (see `Role`).

Every operation here — spawn, fork (now or at turn N), remove, one write of
transcript lines, status, parent — is exactly one transaction, built from the
POSIX model's composable pieces (`FileSystem.transaction()`, a `Tree`).

Records (besides the views' own, and history.py's `H` and `T`):

    A<name>                       the agent: view, spawner, origin, status, turns
    a<view:4>                     view -> agent name (only while the agent lives)
"""

from __future__ import annotations

import enum
import errno
import json
import re
import stat
import time
from dataclasses import dataclass
from typing import Any

from agentfs.agents import events, history
from agentfs.agents.render import (
    InvalidConfig,
    InvalidLine,
    Policy,
    validate_config,
    validate_line,
    validate_next,
)
from agentfs.agents.renderers import Fed, Renderers
from agentfs.errors import FsError
from agentfs.posix import logdata
from agentfs.posix.fs import ROOT_INO, FileSystem, SetAttr, Tree
from agentfs.storage import codec, keys
from agentfs.storage.codec import Attr, fuse_ino, split_ino
from agentfs.storage.keys import attr_suffix

AGENTS_DIR = b"agents"
GUIDE_NAME = b"AGENTS.md"  # the guide for agents, served at the root while agents/ exists
# Names at the mount root that are the agent layer's (why, for a refusal):
ROOT_NAMES = {
    AGENTS_DIR: "agents/ at the mount root is agentfs's (a directory made there spawns "
                "an agent)",
    GUIDE_NAME: "agentfs serves /AGENTS.md itself (the guide for agents)",
}
NAME_RE = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
STATUSES = ("idle", "running", "waiting", "done", "failed")


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
    # Every key with its default and a comment: `cat config` shows the policy in force.
    (b"config", Role.CONFIG, stat.S_IFREG | 0o644, Policy().render().encode()),
]
FIRST_FREE_LOCAL = max(r for _, r, _, _ in SKELETON) + 1
FROZEN_AT_FIRST_TURN = (Role.PROMPT, Role.SYSTEM, Role.TOOLS)
SKELETON_NAMES: dict[Role, str] = {r: n.decode() for n, r, _, _ in SKELETON}


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


def _last_line(t: Tree, transcript: Attr) -> dict[str, object] | None:
    """The transcript's last line, parsed (each append is one whole line)."""
    if not transcript.size:
        return None
    view, local = split_ino(transcript.ino)
    raw = t.tx.get(view, keys.log_suffix(local, transcript.size))
    if raw is None:  # not the end of one append: read the tail instead
        tail, _ = t.read(transcript.ino, max(0, transcript.size - (1 << 20)), 1 << 20)
        line = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    else:
        line = logdata.decode(raw).rstrip(b"\n")
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


class Agents:
    """The agent layer over one FileSystem."""

    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs
        self.renderers = Renderers()  # context.json's and the compaction events'

    # ------------------------------------------------------------ records

    def _get(self, t: Tree, name: str) -> Agent:
        raw = t.tx.txn.get(keys.agent(name))
        if raw is None:
            raise FsError(errno.ENOENT, f"no agent named {name!r}")
        return Agent.decode(name, raw)

    def _put(self, t: Tree, a: Agent) -> None:
        t.tx.txn.put(keys.agent(a.name), a.encode())

    def live(self, t: Tree, name: str, view: int) -> Agent:
        """Agent `name`, still the one living in `view` (ENOENT once removed)."""
        a = self._get(t, name)
        if a.view != view:
            raise FsError(errno.ENOENT, f"agent {name!r} was removed")
        return a

    def get(self, name: str) -> Agent:
        return self.fs.query(lambda t: self._get(t, name))

    def by_name(self, name: str) -> Agent | None:
        try:
            return self.get(name)
        except FsError:
            return None

    def _by_view(self, t: Tree, view: int) -> Agent | None:
        raw = t.tx.txn.get(keys.agent_of_view(view))
        return None if raw is None else self._get(t, raw.decode())

    def by_view(self, view: int) -> Agent | None:
        """The agent whose view this is (None for any other view)."""
        return self.fs.query(lambda t: self._by_view(t, view))

    def owner_of_view(self, view: int) -> Agent | None:
        """The agent whose tree holds `view`: its own view, or a fork or
        snapshot nested in it (e.g. a directory forked into its workspace)."""
        def op(t: Tree) -> Agent | None:
            vid = view
            for _ in range(1000):
                a = self._by_view(t, vid)
                if a is not None or not t.tx.view_exists(vid):
                    return a
                container = t.tx.view(vid).container
                if not container or container == vid:
                    return None
                vid = container
            return None

        return self.fs.query(op)

    def role_of(self, ino: int) -> tuple[Agent, Role] | None:
        """(agent, role) if `ino` is one of an agent's skeleton files."""
        view, local = split_ino(ino)
        if local >= FIRST_FREE_LOCAL:
            return None
        a = self.by_view(view)
        return None if a is None else (a, Role(local))

    def agent_root(self, ino: int) -> Agent | None:
        """The agent whose directory `ino` is (agents/NAME itself), or None."""
        r = self.role_of(ino)
        return r[0] if r is not None and r[1] is Role.ROOT else None

    def all(self) -> list[Agent]:
        with self.fs.store.read() as tx:
            return [Agent.decode(keys.parse_agent(k), raw)
                    for k, raw in tx.txn.scan(*keys.agent_span())]

    def adopt_old_records(self) -> int:
        """Give agents from a store made before lineage records (H) theirs,
        from the origin named in their agent record. Returns how many."""
        with self.fs.transaction() as t:
            n = 0
            for k, raw in list(t.tx.txn.scan(*keys.agent_span())):
                a = Agent.decode(keys.parse_agent(k), raw)
                if history.lineage(t, a.view) is not None:
                    continue
                origin = t.tx.txn.get(keys.agent(a.origin)) if a.origin else None
                origin_view = Agent.decode(a.origin, origin).view if origin else 0
                history.begin(t, a.view, origin_view, a.origin_turn)
                n += 1
            return n

    def _agents_dir(self, t: Tree) -> int:
        """The inode of /agents, made inside this transaction if it is missing."""
        found = t.entry(ROOT_INO, AGENTS_DIR)
        if found is not None:
            return found
        return t.create(ROOT_INO, AGENTS_DIR, stat.S_IFDIR | 0o777 | stat.S_ISVTX, 0, 0).ino

    def dir_ino(self) -> int:
        """The inode of /agents, created on first use."""
        try:
            return self.fs.lookup(ROOT_INO, AGENTS_DIR).ino
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
        with self.fs.transaction() as t:
            return self._agents_dir(t)

    def _check_free(self, t: Tree, agents: int, name: bytes) -> str:
        sname = check_agent_name(name)
        if t.tx.txn.get(keys.agent(sname)) is not None:
            raise FsError(errno.EEXIST, f"agent {sname!r} exists")
        if t.entry(agents, name) is not None:
            raise FsError(errno.EEXIST, f"agents/{sname} exists")
        return sname

    # ------------------------------------------------------------ spawn and remove

    def spawn(self, name: bytes, parent: str = "", uid: int = 0, gid: int = 0) -> Agent:
        """`mkdir agents/NAME`: a new agent (its own view) with its skeleton."""
        now = time.time_ns()
        with self.fs.transaction() as t:
            agents = self._agents_dir(t)
            sname = self._check_free(t, agents, name)
            if parent and t.tx.txn.get(keys.agent(parent)) is None:
                raise FsError(errno.ENOENT, f"parent agent {parent!r} does not exist")
            aview, alocal = split_ino(agents)
            v = t.tx.new_view([], Role.ROOT, False, aview, "agent", FIRST_FREE_LOCAL)
            t.tx.txn.put(keys.contained(aview, v.id), b"")
            root = Attr(stat.S_IFDIR | 0o755, uid, gid, nlink=2, atime_ns=now, mtime_ns=now,
                        ctime_ns=now, parent_view=aview, parent_local=alocal,
                        ino=fuse_ino(v.id, Role.ROOT))
            t.put_attr(root)
            for fname, role, mode, content in SKELETON:
                a = Attr(mode, uid, gid, nlink=2 if stat.S_ISDIR(mode) else 1, atime_ns=now,
                         mtime_ns=now, ctime_ns=now, ino=fuse_ino(v.id, role),
                         flags=codec.FLAG_LOG if role is Role.TRANSCRIPT else 0)
                if stat.S_ISDIR(mode):
                    a.parent_view, a.parent_local = 0, Role.ROOT
                    root.nlink += 1
                t.put_attr(a)
                t.link_entry(root.ino, fname, a)
                if content:
                    t.write_data(a, 0, content)
            t.put_attr(root)
            d = t.attr(agents)
            t.link_entry(agents, name, root)
            d.nlink += 1
            t.touch(d, now)
            agent = Agent(sname, v.id, parent, now, "spawn", "", 0, "idle", 0)
            self._put(t, agent)
            t.tx.txn.put(keys.agent_of_view(v.id), name)
            history.begin(t, v.id)
            events.record(t, "spawn", sname, parent=parent or None)
            return agent

    def remove(self, name: str, event: str = "remove") -> None:
        """Remove an agent and everything it holds, in one transaction. Its forks
        keep their history: the turns they inherited stay recorded and pinned.
        `event` says which door it came through ("remove", or "detach" from
        the mount's ctl)."""
        with self.fs.transaction() as t:
            a = self._get(t, name)
            agents = self._agents_dir(t)
            t.tx.txn.delete(keys.agent(name))
            t.tx.txn.delete(keys.agent_of_view(a.view))
            t.tx.txn.delete(keys.inbox_seq(a.view))
            if t.entry(agents, name.encode()) == a.root_ino:
                t.detach(agents, name.encode())
            else:  # its directory was moved or is gone: the view goes all the same
                t.kill_view(a.view)
            history.release(t, a.view, is_live=False)
            events.record(t, event, name)

    # ------------------------------------------------------------ transcript

    def append(self, name: str, line: bytes) -> int:
        """Append one message line (its newline optional); returns its turn number."""
        return self.append_lines(name, [line[:-1] if line.endswith(b"\n") else line])

    def append_lines(self, name: str, lines: list[bytes], view: int | None = None) -> int:
        """Append validated message lines (without newlines), each a turn, all in
        one transaction: every line is appended, or (ValueError/FsError) none.
        The agent's whole tree is remembered as it is after each turn. Returns
        the number of the last turn."""
        try:
            parsed = [validate_line(line) for line in lines]
            with self.fs.transaction() as t:
                a = self._get(t, name) if view is None else self.live(t, name, view)
                tr = t.attr(a.ino(Role.TRANSCRIPT))
                size_before = tr.size
                prev = _last_line(t, tr)
                for line, obj in zip(lines, parsed, strict=True):
                    validate_next(prev, obj)
                    t.write_data(tr, tr.size, line + b"\n")
                    a.turns += 1
                    history.record_turn(t, a.view, a.turns, tr.size)
                    prev = obj
                points, fed = self._compaction_points(t, a, tr.ino, size_before, lines, parsed)
                first = a.turns - len(lines) + 1
                evs: list[events.Event] = []
                for turn, line, obj in zip(range(first, a.turns + 1), lines, parsed, strict=True):
                    usage = obj.get("usage")  # (validate_line admits none today)
                    evs.append(("turn", name, {"turn": turn, "role": obj["role"],
                                               "bytes": len(line) + 1,
                                               **({"usage": usage} if isinstance(usage, dict)
                                                  else {})}))
                    if turn in points:
                        evs.append(("compaction", name, {"turn": turn}))
                events.record_all(t, evs)
                self._put(t, a)
            if fed is not None:  # committed: the renderer is in step with the store
                self.renderers.keep(a.view, fed)
            return a.turns
        except InvalidLine as e:
            more = (f" (none of the {len(lines)} lines of this write was appended)"
                    if len(lines) > 1 else "")
            raise FsError(errno.EINVAL, f"agents/{name}/transcript: line refused: {e}{more}")

    def _compaction_points(self, t: Tree, a: Agent, transcript: int, size_before: int,
                           lines: list[bytes], parsed: list[dict[str, Any]]
                           ) -> tuple[list[int], Fed | None]:
        """The turns of these appended lines that became compaction points, and
        the renderer fed with them (to cache once the append has committed)."""
        def read(ino: int, size: int | None = None) -> bytes:
            return t.read(ino, 0, t.attr(ino).size if size is None else size)[0]

        return self.renderers.new_points(
            a.view,
            lambda: (read(a.ino(Role.SYSTEM)), read(a.ino(Role.TOOLS)),
                     read(a.ino(Role.PROMPT)), read(a.ino(Role.CONFIG))),
            lambda: read(a.ino(Role.CONFIG)), size_before > 0,
            lambda n: read(transcript, n), size_before,
            [(obj, len(line) + 1) for line, obj in zip(lines, parsed, strict=True)])

    def write_file(self, a: Agent, role: Role, offset: int, data: bytes,
                   truncate: bool = False) -> Attr:
        """A write to one of the agent's files (after truncating it, if asked:
        `>` on config truncates with its first write), in one transaction.
        `config` must still parse afterwards (EINVAL naming the key and its
        allowed values, and nothing written): a typo would otherwise break
        context.json."""
        with self.fs.transaction() as t:
            if truncate:
                t.setattr(a.ino(role), SetAttr(size=0))
            attr = t.write(a.ino(role), offset, data)
            if role is Role.CONFIG:
                content, _ = t.read(attr.ino, 0, attr.size)
                try:
                    validate_config(content)
                except InvalidConfig as e:
                    raise FsError(errno.EINVAL, f"agents/{a.name}/{e.reason} (the write was "
                                  "refused; the file is as it was)")
            return attr

    @staticmethod
    def validated_on_write(role: Role) -> bool:
        """Files whose every write is checked whole: a truncation must wait for
        the write that follows it, so that a refused write leaves them as they were."""
        return role is Role.CONFIG

    def turn_epoch(self, name: str, turn: int) -> tuple[int, int]:
        """(the view that owns turn `turn` of `name`'s history, its epoch)."""
        def op(t: Tree) -> tuple[int, int]:
            a = self._get(t, name)
            check_turn(a, turn)
            return history.turn_epoch(t, a.view, turn)

        return self.fs.query(op)

    def frozen(self, a: Agent) -> bool:
        """Prompt, system prompt and tools are fixed from the first turn on."""
        return a.turns > 0

    # ------------------------------------------------------------ forks

    def fork(self, src: str, dst: bytes, at_turn: int | None = None, parent: str = "") -> Agent:
        """Fork `src` as agent `dst`, now or as it was at the end of turn `at_turn`:
        conversation and files together, in one transaction, at constant cost."""
        with self.fs.transaction() as t:
            agents = self._agents_dir(t)
            sname = self._check_free(t, agents, dst)
            s = self._get(t, src)
            size = t.attr(s.ino(Role.TRANSCRIPT)).size
            if at_turn is None:
                owner, epoch, turns = s.view, None, s.turns
            else:
                check_turn(s, at_turn)
                owner, e = history.turn_epoch(t, s.view, at_turn)
                epoch, turns = e, at_turn
            root = t.fork(fuse_ino(owner, Role.ROOT), agents, dst, epoch)
            view = split_ino(root.ino)[0]
            a = Agent(sname, view, parent or s.name, time.time_ns(), "fork", s.name,
                      turns, "idle", turns)
            self._put(t, a)
            t.tx.txn.put(keys.agent_of_view(view), dst)
            history.begin(t, view, s.view, turns)
            events.record(t, "fork", sname, origin=s.name, turn=turns, parent=a.parent)
        if at_turn is None:
            self.renderers.forked(s.view, a.view, size)
        return a

    def set_parent(self, name: str, parent: str) -> None:
        """Record the spawner after the fact (`echo P > agents/NAME/parent`), once."""
        with self.fs.transaction() as t:
            a = self._get(t, name)
            if a.parent:
                raise FsError(errno.EEXIST, f"{name}'s parent is already {a.parent}")
            if parent == name:
                raise FsError(errno.EINVAL, "an agent cannot be its own parent")
            self._get(t, parent)
            a.parent = parent
            self._put(t, a)

    def set_status(self, name: str, status: str) -> None:
        if status not in STATUSES:
            raise FsError(errno.EINVAL, f"status must be one of {', '.join(STATUSES)}")
        with self.fs.transaction() as t:
            a = self._get(t, name)
            if a.status != status:
                events.record(t, "status", name, status=status, old=a.status)
            a.status = status
            self._put(t, a)

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


def check_turn(a: Agent, turn: int) -> None:
    if not 1 <= turn <= a.turns:
        span = f"turns 1..{a.turns}" if a.turns else "no turns yet"
        raise FsError(errno.ENOENT, f"{a.name} has {span}, not {turn}")


# ---------------------------------------------------------------- the agent's files


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
                      "of the agent's skeleton; remove the agent with rmdir agents/"
                      f"{a.name} or echo remove > agents/{a.name}/ctl")
