"""The agent layer's files, as the kernel sees them.

Two sides, both translation (the rules live in `agentfs.agents`):

- `AgentFiles`, the namespace of the files agentfs generates (inodes.py kinds
  AGENT_FILE, WAIT, OBSERVATION, GUIDE): every agent's `ctl`, `errstr`,
  `status`, `parent`, `children`, `context.json` and `observations/`, its
  blocking `inbox/.wait[-SECONDS]`, and `MOUNT/AGENTS.md`. Each reports its
  real size (what a read would return now), so tar, rsync and cp copy it
  whole; the read-only ones refuse writes with EACCES.
- `AgentRules`, what the stored tree (tree.py) asks about stored inodes that
  belong to agents: spawning on `mkdir agents/NAME`, staging and atomic
  delivery of inbox messages, the skeleton's rules (frozen prompts, the
  append-only transcript, config validated on write), `rmdir agents/NAME`,
  and keeping an agent whole under `rm -r`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from importlib import resources

import trio

from agentfs.agents import inbox
from agentfs.agents.context import Contexts
from agentfs.agents.control import Result, run_agent_command
from agentfs.agents.model import (
    AGENTS_DIR,
    GUIDE_NAME,
    Agent,
    Agents,
    Role,
    refuse_change,
)
from agentfs.agents.render import Observation
from agentfs.errors import FsError
from agentfs.posix.fs import ROOT_INO, FileSystem, SetAttr
from agentfs.storage.codec import Attr, split_ino

from . import inodes
from .errstr import ErrorLog, proc_stat_field
from .inodes import GUIDE_INO, Kind
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

OBSERVATIONS = b"observations"
FILES = {b"ctl": 1, b"errstr": 2, b"status": 3, b"context.json": 4, b"parent": 5,
         b"children": 6, OBSERVATIONS: 7}  # AGENT_FILE's `file` field
FILE_NAMES = {v: k.decode() for k, v in FILES.items()}
OBS_DIR = FILES[OBSERVATIONS]
WRITABLE = (FILES[b"ctl"], FILES[b"parent"])
WAIT = b".wait"
DEFAULT_WAIT = 60
MAX_WAIT = 3600
MAX_OBS_PER_TURN = 256  # (OBSERVATION's `index` field)
SIGNAL_POLL = 0.2  # seconds between looks at a blocked reader's pending signals

GUIDE = (resources.files("agentfs") / "data" / "AGENTS.md").read_bytes()


def signal_pending(pid: int) -> bool:
    """Has process `pid` a signal pending that it neither blocks nor ignores?
    (A fatal one shows as SIGKILL pending; a killed process is gone.)"""
    masks: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn"):
                    masks[key] = int(value.strip(), 16)
    except (OSError, ValueError):
        return True
    pending = masks.get("SigPnd", 0) | masks.get("ShdPnd", 0)
    return bool(pending & ~masks.get("SigBlk", 0) & ~masks.get("SigIgn", 0))


def _start_time(pid: int) -> int:
    """When process `pid` started (tells a reused pid from the one we saw)."""
    return proc_stat_field(pid, 19)


def agent_file_ino(view: int, file: int) -> int:
    return inodes.encode(Kind.AGENT_FILE, view, file)


def wait_ino(view: int, seconds: int) -> int:
    return inodes.encode(Kind.WAIT, view, seconds)


def obs_ino(view: int, turn: int, index: int) -> int:
    return inodes.encode(Kind.OBSERVATION, view, turn, index)


def _wait_seconds(name: bytes) -> int | None:
    """N for `.wait-N` (DEFAULT_WAIT for `.wait`); None for any other name;
    ENOENT, with the reason, for a `.wait-` name that is not a wait."""
    if name == WAIT:
        return DEFAULT_WAIT
    if not name.startswith(WAIT + b"-"):
        return None
    digits = name[len(WAIT) + 1:]
    if not digits.isdigit():
        raise FsError(errno.ENOENT, "use inbox/.wait or inbox/.wait-SECONDS")
    secs = int(digits)
    if secs > MAX_WAIT:
        raise FsError(errno.ENOENT, f"wait at most {MAX_WAIT} seconds")
    return secs


class Wait(Handle):
    """inbox/.wait: the first read blocks until a message is there (or the
    timeout), and gives its name."""

    def __init__(self, ino: int, pid: int, files: AgentFiles) -> None:
        super().__init__(ino, pid)
        self.files = files
        self.content: bytes | None = None

    async def read(self, off: int, size: int) -> bytes:
        if self.content is None:
            self.content = await self.files.wait(self.ino, self.pid)
        return self.content[off:off + size]


class AgentFiles(Namespace):
    def __init__(self, fs: FileSystem, agents: Agents, errors: ErrorLog, effects: Effects,
                 rules: AgentRules) -> None:
        self.fs = fs
        self.agents = agents
        self.errors = errors
        self.effects = effects
        self.rules = rules
        self.contexts = Contexts(agents)
        self.arrivals: dict[int, trio.Event] = {}  # view -> set when a message lands

    # ------------------------------------------------------------ identification

    def _decode(self, ino: int) -> tuple[Kind, Agent | None, tuple[int, ...]]:
        """(kind, its agent (None for AGENTS.md), the other fields)."""
        kind, values = inodes.decode(ino)
        if kind is Kind.GUIDE:
            return kind, None, ()
        a = self.agents.by_view(values[0])
        if a is None:
            raise FsError(errno.ENOENT, "the agent is gone")
        return kind, a, values[1:]

    def _agent(self, ino: int) -> tuple[Kind, Agent, tuple[int, ...]]:
        kind, a, rest = self._decode(ino)
        assert a is not None
        return kind, a, rest

    def describe(self, ino: int) -> str:
        """The path of a generated file, for messages."""
        try:
            kind, a, rest = self._decode(ino)
        except FsError:
            return "this file"
        if a is None:
            return GUIDE_NAME.decode()
        if kind is Kind.OBSERVATION:
            return f"agents/{a.name}/observations/{self._observation(a, *rest).id}"
        if kind is Kind.WAIT:
            return f"agents/{a.name}/inbox/.wait"
        return f"agents/{a.name}/{FILE_NAMES[rest[0]]}"

    def fixed(self, ino: int) -> FsError:
        return FsError(errno.EACCES, f"{self.describe(ino)} is generated by agentfs: "
                       "read-only")

    @staticmethod
    def writable(ino: int) -> bool:
        """Only an agent's `ctl` and `parent` take writes among the generated files."""
        kind, values = inodes.decode(ino)
        return kind is Kind.AGENT_FILE and values[1] in WRITABLE

    # ------------------------------------------------------------ names in stored dirs

    def lookup_in(self, dir_ino: int, name: bytes, pid: int) -> Entry | None:
        if dir_ino == ROOT_INO:
            return virtual(self._attr(GUIDE_INO, pid)) if name == GUIDE_NAME else None
        r = self.rules.role(dir_ino)
        if r is None:
            return None
        a, role = r
        if role is Role.ROOT and name in FILES:
            return virtual(self._attr(agent_file_ino(a.view, FILES[name]), pid))
        if role is Role.INBOX:
            secs = _wait_seconds(name)
            if secs is not None:
                return virtual(self._attr(wait_ino(a.view, secs), pid))
        return None

    def names_in(self, dir_ino: int) -> list[tuple[bytes, Entry]]:
        """AGENTS.md at the root (while agents/ exists), an agent's generated files."""
        if dir_ino == ROOT_INO:
            return [(GUIDE_NAME, virtual(self._attr(GUIDE_INO, 0)))] \
                if self.rules.agents_dir() is not None else []
        r = self.rules.role(dir_ino)
        if r is None or r[1] is not Role.ROOT:
            return []
        return [(n, virtual(self._attr(agent_file_ino(r[0].view, f), 0)))
                for n, f in sorted(FILES.items())]

    def reserves(self, dir_ino: int, name: bytes) -> bool:
        if dir_ino == ROOT_INO:
            return name == GUIDE_NAME
        r = self.rules.role(dir_ino)
        if r is None:
            return False
        if r[1] is Role.ROOT:
            return name in FILES
        return r[1] is Role.INBOX and (name == WAIT or name.startswith(WAIT + b"-"))

    # ------------------------------------------------------------ its own inodes

    def lookup(self, parent: int, name: bytes, pid: int) -> Entry:
        kind, a, rest = self._decode(parent)
        if a is None or kind is not Kind.AGENT_FILE or rest[0] != OBS_DIR:
            raise FsError(errno.ENOTDIR)
        for obs, attr in self._obs_attrs(a):
            if obs.id.encode() == name:
                return virtual(attr)
        raise FsError(errno.ENOENT, f"no observation {name!r}")

    def getattr(self, ino: int, pid: int) -> Entry:
        return virtual(self._attr(ino, pid))

    def _attr(self, ino: int, pid: int) -> Attr:
        """Attributes of a generated file, with its real size (what a read by
        `pid` would return now), so that tar, rsync and cp copy it whole."""
        kind, a, rest = self._decode(ino)
        if a is None:
            root = self.fs.getattr(ROOT_INO)
            return Attr(stat.S_IFREG | 0o444, 0, 0, size=len(GUIDE), atime_ns=root.ctime_ns,
                        mtime_ns=root.ctime_ns, ctime_ns=root.ctime_ns, ino=ino)
        root = self.agents.attr_of(a, Role.ROOT)
        if kind is Kind.OBSERVATION:
            return _file_attr(root, ino, stat.S_IFREG | 0o444, self._observation(a, *rest).size)
        if kind is Kind.WAIT:
            return _file_attr(root, ino, stat.S_IFREG | 0o444)
        if rest[0] == OBS_DIR:
            return _file_attr(root, ino, stat.S_IFDIR | 0o555)
        mode = stat.S_IFREG | (0o666 if rest[0] in WRITABLE else 0o444)
        try:
            size = len(self.content(ino, pid))
        except FsError:
            size = 0  # (reading it says why)
        return _file_attr(root, ino, mode, size)

    def setattr(self, ino: int, ch: SetAttr, pid: int) -> Entry:
        if self.writable(ino) and ch.size is not None:
            return self.getattr(ino, pid)  # `>` truncates first: allow, and change nothing
        if ch.size is not None:
            raise self.fixed(ino)
        raise FsError(errno.EPERM, f"{self.describe(ino)} is generated by agentfs: its "
                      "attributes cannot be changed")

    def open(self, ino: int, flags: int, pid: int) -> Handle:
        kind, a, rest = self._decode(ino)
        if kind is Kind.AGENT_FILE and rest[0] == OBS_DIR:
            raise FsError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC) and not self.writable(ino):
            raise self.fixed(ino)
        if kind is Kind.WAIT:
            return Wait(ino, pid, self)
        # Content first: a failure must leave no handle behind.
        content = self.content(ino, pid)
        if self.writable(ino):
            return Commands(ino, pid, lambda line: self.control(ino, line, pid),
                            lambda: content, "control file")
        return Content(ino, pid, content)

    def opendir(self, ino: int, pid: int) -> Handle:
        kind, a, rest = self._decode(ino)
        if a is None or kind is not Kind.AGENT_FILE or rest[0] != OBS_DIR:
            raise FsError(errno.ENOTDIR)
        return Listing(ino, lambda start: self._obs_listing(ino, start))

    def _obs_listing(self, ino: int, start: int) -> Iterator[tuple[bytes, Entry, int]]:
        _, a, _ = self._agent(ino)
        files = [(o.id.encode(), virtual(attr)) for o, attr in self._obs_attrs(a)]
        return numbered(files, 1, start)

    def moved(self, ino: int) -> FsError:
        return FsError(errno.EPERM, f"{self.describe(ino)} is generated by agentfs: it "
                       "cannot be renamed or linked")

    # ------------------------------------------------------------ content

    def content(self, ino: int, pid: int) -> bytes:
        """What reading a generated file returns (fixed at open)."""
        kind, a, rest = self._decode(ino)
        if a is None:
            return GUIDE
        if kind is Kind.WAIT:
            return b""
        if kind is Kind.OBSERVATION:
            return self._observation(a, *rest).text
        name = FILE_NAMES[rest[0]]
        if name == "errstr":
            return self.errors.for_pid(pid).encode()
        if name in ("ctl", "status"):
            return f"{a.status} turns={a.turns}\n".encode()
        if name == "parent":
            return (a.parent + "\n").encode() if a.parent else b""
        if name == "children":
            return "".join(c + "\n" for c in self.agents.children(a.name)).encode()
        if name == "context.json":
            return self.contexts.render(a)
        raise FsError(errno.EISDIR)

    def observations(self, a: Agent) -> list[Observation]:
        """Bulky tool results in the transcript (read incrementally)."""
        return self.contexts.observations(a)

    def _observation(self, a: Agent, turn: int, index: int) -> Observation:
        found = [o for o in self.observations(a) if o.turn == turn]
        if index >= len(found):
            raise FsError(errno.ENOENT, "no such observation")
        return found[index]

    def _obs_attrs(self, a: Agent) -> list[tuple[Observation, Attr]]:
        """Every file of observations/ with its attributes, from one listing
        (at most MAX_OBS_PER_TURN a turn have a number)."""
        root = self.agents.attr_of(a, Role.ROOT)
        out, seen = [], {}  # type: ignore[var-annotated]
        for o in self.observations(a):
            k = seen.get(o.turn, 0)
            seen[o.turn] = k + 1
            if k < MAX_OBS_PER_TURN:
                out.append((o, _file_attr(root, obs_ino(a.view, o.turn, k),
                                          stat.S_IFREG | 0o444, o.size)))
        return out

    async def wait(self, ino: int, pid: int = 0) -> bytes:
        """inbox/.wait: block until a message is there (or the timeout); print its name.

        pyfuse3 does not pass FUSE_INTERRUPT on, and the kernel waits for the
        answer even for a killed reader: so look at the reader's pending
        signals now and then, and give up (EINTR) once it has one.
        """
        _, a, (secs,) = self._agent(ino)
        deadline = trio.current_time() + secs
        while True:
            names = inbox.inbox_messages(self.agents, self.agents.get(a.name))
            if names:
                return names[0] + b"\n"
            left = deadline - trio.current_time()
            if left <= 0:
                return b""
            ev = self.arrivals.setdefault(a.view, trio.Event())
            with trio.move_on_after(min(left, SIGNAL_POLL)):
                await ev.wait()
            if pid and signal_pending(pid):
                raise FsError(errno.EINTR, "interrupted while waiting for a message")

    def arrived(self, view: int) -> None:
        """A message landed in agent `view`'s inbox: wake its waiters."""
        ev = self.arrivals.pop(view, None)
        if ev is not None:
            ev.set()

    # ------------------------------------------------------------ control

    def control(self, ino: int, line: bytes, pid: int) -> None:
        """One line written to an agent's `ctl` or `parent`."""
        _, a, (file,) = self._agent(ino)
        text = line.decode("utf-8", "replace").strip()
        try:
            if FILE_NAMES[file] == "parent":
                self.agents.set_parent(a.name, text)  # (once: EEXIST after that)
                result = Result(f"{a.name}'s parent is {text}")
            else:
                result = run_agent_command(self.agents, a, text)
        except FsError as e:
            raise e.within(f"agents/{a.name}/{FILE_NAMES[file]}: {text}")
        self.effects.done(result)


def _file_attr(root: Attr, ino: int, mode: int, size: int = 0) -> Attr:
    """A generated file of an agent: owned like the agent, timed like its directory."""
    return Attr(mode, root.uid, root.gid, nlink=1, size=size, atime_ns=root.mtime_ns,
                mtime_ns=root.mtime_ns, ctime_ns=root.ctime_ns, ino=ino)


class AgentRules:
    """What agents change about stored inodes (asked by the stored tree)."""

    def __init__(self, fs: FileSystem, agents: Agents, mountpoint: str = "") -> None:
        self.fs = fs
        self.agents = agents
        self.mountpoint = os.path.realpath(mountpoint) if mountpoint else ""
        # pid -> (agent view, process start time): recursive removers refused there.
        self.removers: dict[int, tuple[int, int]] = {}
        # A mount shows `agents/` and `AGENTS.md` from the start (a store made
        # before this gets its `agents/` now), so that `ls` teaches the layout.
        self.agents.dir_ino()
        self.agents.adopt_old_records()
        self.dropped_at_start = inbox.drop_staged(self.agents)

    def role(self, ino: int) -> tuple[Agent, Role] | None:
        """(agent, role) if stored inode `ino` is one of an agent's skeleton files."""
        if inodes.kind_of(ino) is not Kind.STORED:
            return None
        return self.agents.role_of(ino)

    def agents_dir(self) -> int | None:
        """The inode of `MOUNT/agents` (made at mount; None after `rmdir agents`)."""
        try:
            return self.fs.lookup(ROOT_INO, AGENTS_DIR).ino
        except FsError:
            return None

    def sender(self, pid: int) -> str:
        """Who a process speaks for: $AGENTFS_AGENT, else the agent whose
        directory it works in, else its pid."""
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                for var in f.read().split(b"\0"):
                    if var.startswith(b"AGENTFS_AGENT="):
                        return var.split(b"=", 1)[1].decode(errors="replace")
        except OSError:
            pass
        if self.mountpoint:
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                cwd = ""
            prefix = os.path.join(self.mountpoint, "agents") + "/"
            if cwd.startswith(prefix):
                return cwd[len(prefix):].split("/", 1)[0]
        return f"pid{pid}"

    # ------------------------------------------------------------ spawn, messages

    def spawn(self, parent: int, name: bytes, pid: int, uid: int, gid: int) -> Attr | None:
        """`mkdir agents/NAME` spawns an agent (None: `parent` is not agents/)."""
        if parent != self.agents_dir():
            return None
        spawner = self.sender(pid)
        if self.agents.by_name(spawner) is None:
            spawner = ""
        try:
            a = self.agents.spawn(name, spawner, uid, gid)
        except FsError as e:
            raise e.within(f"mkdir agents/{name.decode(errors='replace')}")
        return self.fs.getattr(a.root_ino)

    def stage(self, parent: int, name: bytes, pid: int, uid: int, gid: int,
              nonce: int) -> tuple[Attr, tuple[Agent, bytes, str]] | None:
        """A file created in an inbox is a message, staged until its last close
        (None: `parent` is no inbox)."""
        r = self.role(parent)
        if r is None or r[1] is not Role.INBOX:
            return None
        a = r[0]
        try:
            attr = inbox.stage_message(self.agents, a, name, nonce, uid, gid)
        except FsError as e:
            raise e.within(f"agents/{a.name}/inbox/{name.decode(errors='replace')}")
        return attr, (a, inbox.staged_name(name, nonce), self.sender(pid))

    def deliver(self, staged: tuple[Agent, bytes, str]) -> int:
        """Deliver a staged message; returns the view of the inbox it landed in."""
        a, name, sender = staged
        inbox.deliver_message(self.agents, a, name, sender)
        return a.view

    def consume(self, parent: int, name: bytes,
                move_to: tuple[int, bytes, int] | None = None) -> bool:
        """`rm` of a delivered message, or a rename that takes it out of the
        inbox (`move_to`: directory, new name, flags): consumed, with its event,
        in one transaction (False: `parent/name` is no message, or stays in
        its inbox)."""
        r = self.role(parent)
        if r is None or r[1] is not Role.INBOX or not inbox.is_message(name):
            return False
        if move_to is not None and move_to[0] == parent:
            return False
        inbox.consume_message(self.agents, r[0], name, move_to)
        return True

    def is_inbox(self, dir_ino: int) -> bool:
        r = self.role(dir_ino)
        return r is not None and r[1] is Role.INBOX

    def hidden(self, dir_ino: int, name: bytes) -> bool:
        """Messages still being written are not listed."""
        return name.startswith(inbox.STAGED_PREFIX) and self.is_inbox(dir_ino)

    def held_open(self, pid: int, ino: int) -> bool:
        """Does process `pid` still have file `ino` of this mount open?

        flush() comes on every close of any copy of a descriptor (a child that
        inherited it, a command run inside a shell redirection); the closing
        descriptor is already gone from its table, so if the process that
        opened the file still holds it, this was not the last close. Reads
        /proc only (fdinfo and readlink), never a path inside the mount, which
        would need this very daemon to answer.
        """
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            return False
        want = f"ino:\t{ino}\n"
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    if want not in f.read():
                        continue
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if not self.mountpoint or target.startswith(self.mountpoint + "/"):
                return True
        return False

    # ------------------------------------------------------------ the skeleton's rules

    def check_removal(self, parent: int, name: bytes, pid: int) -> None:
        """Refuse to remove what agentfs generates, and keep an agent whole
        under `rm -r`: a recursive remover unlinks the generated files of the
        agent's directory first (they are listed first), so once a process
        has tried that, nothing inside that agent is removed by it."""
        if parent == ROOT_INO and name == GUIDE_NAME:
            raise FsError(errno.EPERM, "AGENTS.md is generated by agentfs; it cannot be "
                          "removed")
        # (Forks nested in the agent's workspace are other views: find the agent
        # whose tree holds them, or rm -r would empty those.)
        a = self.agents.owner_of_view(split_ino(parent)[0])
        if a is None:
            return
        if parent == a.root_ino and name in FILES:
            self.removers[pid] = (a.view, _start_time(pid))
            raise FsError(errno.EPERM, f"agents/{a.name}/{name.decode()} is generated by "
                          f"agentfs; to remove the agent, rmdir agents/{a.name} (rm -r would "
                          "empty it file by file: refused, nothing in it was removed)")
        guard = self.removers.get(pid)
        if guard is not None and guard == (a.view, _start_time(pid)):
            raise FsError(errno.EPERM, f"agents/{a.name}: a recursive removal of an agent "
                          f"is refused so that it stays whole; rmdir agents/{a.name} "
                          "removes it at once")

    def remove_agent_dir(self, parent: int, child: int) -> Result | None:
        """`rmdir agents/NAME` removes the agent, whole, though it holds files
        (the cgroupfs convention). None if `child` is not an agent's directory."""
        a = self.agents.agent_root(child)
        if a is None or parent != self.agents_dir():
            return None
        try:
            self.agents.remove(a.name)
        except FsError as e:
            raise e.within(f"rmdir agents/{a.name}")
        return Result(f"removed agent {a.name}", [(parent, a.name.encode(), child)],
                      gc_wanted=True)

    def check(self, ino: int, what: str) -> None:
        """EPERM (with the reason) for what an agent's skeleton file does not allow."""
        r = self.role(ino)
        if r is not None:
            refuse_change(r[0], r[1], what)

    def transcript(self, ino: int) -> Agent | None:
        r = self.role(ino)
        return r[0] if r is not None and r[1] is Role.TRANSCRIPT else None

    def append_lines(self, a: Agent, lines: list[bytes]) -> None:
        """Append the complete lines of one write(), each a turn, in one
        transaction: all of them, or (EINVAL, with the reason) none."""
        if lines:
            self.agents.append_lines(a.name, lines, view=a.view)

    def write(self, ino: int, offset: int, data: bytes, truncate: bool = False) -> None:
        """A write to a stored file: an agent's files keep their rules (config
        is validated), any other file is plain data."""
        r = self.role(ino)
        if r is None:
            self.fs.write(ino, offset, data)
        else:
            self.agents.write_file(r[0], r[1], offset, data, truncate)

    def defers_truncate(self, ino: int) -> bool:
        """Does O_TRUNC on `ino` wait for the first write (config: validated whole)?"""
        r = self.role(ino)
        return r is not None and self.agents.validated_on_write(r[1])
