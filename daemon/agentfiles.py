"""The agent layer's files, as the kernel sees them.

Routes requests on `agents/NAME/...` to `agentfs.agents.model`: spawning on mkdir,
append-only transcripts, frozen prompts, atomic inbox delivery, blocking
`inbox/.wait`, and the virtual files every agent has (`ctl`, `errstr`,
`status`, `parent`, `children`, `context.json`). Everything here is
translation; the rules live in the core.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from importlib import resources

import trio

from agentfs.agents import inbox
from agentfs.agents.context import Contexts
from agentfs.agents.control import Result, run_agent_command
from agentfs.agents.model import AGENTS_DIR, Agent, Agents, Role, refuse_change
from agentfs.agents.render import Observation
from agentfs.errors import FsError
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.storage.codec import Attr, fuse_ino, split_ino

from .errstr import ErrorLog

AGENT_FILE = 1 << 62  # virtual inode space for agent files: | view << 16 | kind
WAIT_FILE = 1 << 61  # inbox/.wait-SECONDS: | view << 16 | seconds
OBS_FILE = 1 << 60  # observations/ID: | view << 32 | turn << 8 | index
GUIDE_INO = (1 << 63) | (1 << 59)  # MOUNT/AGENTS.md
OBS_DIR_KIND = 7
VIEW_MASK = (1 << 40) - 1
FILES = {b"ctl": 1, b"errstr": 2, b"status": 3, b"context.json": 4, b"parent": 5,
         b"children": 6}
KIND_NAMES = {v: k for k, v in FILES.items()}
DEFAULT_WAIT = 60
MAX_WAIT = 3600
SIGNAL_POLL = 0.2  # seconds between looks at a blocked reader's pending signals


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
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else 0


def agent_file_ino(view: int, kind: int) -> int:
    return (1 << 63) | AGENT_FILE | (view << 16) | kind


def wait_ino(view: int, seconds: int) -> int:
    return (1 << 63) | WAIT_FILE | (view << 16) | seconds


def obs_ino(view: int, turn: int, index: int) -> int:
    return (1 << 63) | OBS_FILE | (view << 32) | (turn << 8) | index


GUIDE = (resources.files("agentfs") / "data" / "AGENTS.md").read_bytes()


class AgentFiles:
    def __init__(self, fs: FileSystem, errors: ErrorLog, mountpoint: str = "") -> None:
        self.fs = fs
        self.agents = Agents(fs)
        self.errors = errors
        self.mountpoint = os.path.realpath(mountpoint) if mountpoint else ""
        self.arrivals: dict[int, trio.Event] = {}  # view -> set when a message lands
        self.contexts = Contexts(self.agents)
        # pid -> (agent view, process start time): recursive removers refused there.
        self.removers: dict[int, tuple[int, int]] = {}
        self.agents.adopt_old_records()
        dropped = inbox.drop_staged(self.agents)
        self.dropped_at_start = dropped

    # ------------------------------------------------------------ identification

    @staticmethod
    def owns(ino: int) -> bool:
        return bool(ino >> 63) and bool(ino & (AGENT_FILE | WAIT_FILE | OBS_FILE)
                                        or ino == GUIDE_INO)

    @staticmethod
    def is_wait(ino: int) -> bool:
        return bool(ino >> 63) and bool(ino & WAIT_FILE)

    def _decode(self, ino: int) -> tuple[Agent, int]:
        if ino & OBS_FILE:
            view = (ino >> 32) & 0x7FFFFFF
            a = self.agents.by_view(view)
            if a is None:
                raise FsError(errno.ENOENT, "the agent is gone")
            return a, ino & 0xFFFFFFFF
        view = (ino >> 16) & VIEW_MASK
        a = self.agents.by_view(view)
        if a is None:
            raise FsError(errno.ENOENT, "the agent is gone")
        return a, ino & 0xFFFF

    def role(self, ino: int) -> tuple[Agent, Role] | None:
        if ino >> 63:
            return None
        return self.agents.role_of(ino)

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

    # ------------------------------------------------------------ namespace

    def lookup(self, parent: int, name: bytes, pid: int = 0) -> Attr | None:
        if parent == ROOT_INO and name == b"AGENTS.md":
            return self.virtual_attr(GUIDE_INO)
        if parent & AGENT_FILE and parent >> 63 and parent & 0xFFFF == OBS_DIR_KIND:
            a, _ = self._decode(parent)
            for obs, attr in self._obs_attrs(a):
                if obs.id.encode() == name:
                    return attr
            raise FsError(errno.ENOENT, f"no observation {name!r}")
        r = self.role(parent)
        if r is None:
            return None
        a, role = r
        if role is Role.ROOT and name == b"observations":
            return self.virtual_attr(agent_file_ino(a.view, OBS_DIR_KIND))
        if role is Role.ROOT and name in FILES:
            return self.virtual_attr(agent_file_ino(a.view, FILES[name]), pid)
        if role is Role.INBOX and (name == b".wait" or name.startswith(b".wait-")):
            secs = DEFAULT_WAIT
            if name != b".wait":
                try:
                    secs = int(name[6:])
                except ValueError:
                    raise FsError(errno.ENOENT, "use inbox/.wait or inbox/.wait-SECONDS")
                if not 0 <= secs <= MAX_WAIT:
                    raise FsError(errno.ENOENT, f"wait at most {MAX_WAIT} seconds")
            return self.virtual_attr(wait_ino(a.view, secs))
        return None

    def virtual_attr(self, ino: int, pid: int = 0) -> Attr:
        """Attributes of a virtual file, with its real size (what a read by
        `pid` would return now), so that tar, rsync and cp copy it whole."""
        if ino == GUIDE_INO:
            root = self.fs.getattr(ROOT_INO)
            return Attr(stat.S_IFREG | 0o444, 0, 0, size=len(GUIDE), atime_ns=root.ctime_ns,
                        mtime_ns=root.ctime_ns, ctime_ns=root.ctime_ns, ino=ino)
        a, kind = self._decode(ino)
        root = self.agents.attr_of(a, Role.ROOT)
        if ino & OBS_FILE:
            return self._file_attr(root, ino, stat.S_IFREG | 0o444,
                                   self._observation(a, kind).size)
        if ino & AGENT_FILE and kind == OBS_DIR_KIND:
            return self._file_attr(root, ino, stat.S_IFDIR | 0o555)
        mode = stat.S_IFREG | (0o666 if self.writable(ino) else 0o444)
        size = 0
        if ino & AGENT_FILE:
            try:
                size = len(self.content(ino, pid))
            except FsError:
                pass  # (reading it says why)
        return self._file_attr(root, ino, mode, size)

    @staticmethod
    def writable(ino: int) -> bool:
        """Only an agent's `ctl` and `parent` take writes among the generated files."""
        return bool(ino & AGENT_FILE) and not ino & (WAIT_FILE | OBS_FILE) \
            and ino & 0xFFFF in (FILES[b"ctl"], FILES[b"parent"])

    def describe(self, ino: int) -> str:
        """The path of a virtual file, for messages."""
        if ino == GUIDE_INO:
            return "AGENTS.md"
        try:
            a, kind = self._decode(ino)
        except FsError:
            return "this file"
        if ino & OBS_FILE:
            return f"agents/{a.name}/observations/{self._observation(a, kind).id}"
        if ino & WAIT_FILE:
            return f"agents/{a.name}/inbox/.wait"
        if kind == OBS_DIR_KIND:
            return f"agents/{a.name}/observations"
        return f"agents/{a.name}/{KIND_NAMES[kind].decode()}"

    @staticmethod
    def _file_attr(root: Attr, ino: int, mode: int, size: int = 0) -> Attr:
        """An agent's virtual file: owned like the agent, timed like its directory."""
        return Attr(mode, root.uid, root.gid, nlink=1, size=size, atime_ns=root.mtime_ns,
                    mtime_ns=root.mtime_ns, ctime_ns=root.ctime_ns, ino=ino)

    def _obs_attrs(self, a: Agent) -> list[tuple[Observation, Attr]]:
        """Every file of observations/ with its attributes, from one listing."""
        root = self.agents.attr_of(a, Role.ROOT)
        return [(o, self._file_attr(root, ino, stat.S_IFREG | 0o444, o.size))
                for o, ino in self._obs_entries(a)]

    def observations(self, a: Agent) -> list[Observation]:
        """Bulky tool results in the transcript (read incrementally)."""
        return self.contexts.observations(a)

    def _observation(self, a: Agent, key: int) -> Observation:
        turn, k = key >> 8, key & 0xFF
        found = [o for o in self.observations(a) if o.turn == turn]
        if k >= len(found):
            raise FsError(errno.ENOENT, "no such observation")
        return found[k]

    def _obs_entries(self, a: Agent) -> list[tuple[Observation, int]]:
        """Each observation with its inode (turn and index within the turn)."""
        out, seen = [], {}  # type: ignore[var-annotated]
        for o in self.observations(a):
            k = seen.get(o.turn, 0)
            seen[o.turn] = k + 1
            if k < 256:
                out.append((o, obs_ino(a.view, o.turn, k)))
        return out

    def extra_entries(self, dir_ino: int) -> list[tuple[bytes, Attr]]:
        """Entries readdir adds: AGENTS.md at the root (once agents/ exists),
        an agent's virtual files, the files of its observations/."""
        if dir_ino == ROOT_INO:
            return [(b"AGENTS.md", self.virtual_attr(GUIDE_INO))] \
                if self.agents_dir_exists() else []
        if dir_ino >> 63 and dir_ino & AGENT_FILE and dir_ino & 0xFFFF == OBS_DIR_KIND:
            a, _ = self._decode(dir_ino)
            return [(o.id.encode(), attr) for o, attr in self._obs_attrs(a)]
        r = self.role(dir_ino)
        if r is None or r[1] is not Role.ROOT:
            return []
        kinds = sorted([*FILES.items(), (b"observations", OBS_DIR_KIND)])
        return [(n, self.virtual_attr(agent_file_ino(r[0].view, k))) for n, k in kinds]

    def agents_dir_exists(self) -> bool:
        try:
            self.fs.lookup(ROOT_INO, AGENTS_DIR)
        except FsError:
            return False
        return True

    def is_inbox(self, dir_ino: int) -> bool:
        r = self.role(dir_ino)
        return r is not None and r[1] is Role.INBOX

    def hidden(self, dir_ino: int, name: bytes) -> bool:
        """Messages still being written are not listed."""
        return name.startswith(inbox.STAGED_PREFIX) and (r := self.role(dir_ino)) is not None \
            and r[1] is Role.INBOX

    def _is_agents_dir(self, ino: int) -> bool:
        """`MOUNT/agents` (made by the first `mkdir MOUNT/agents` or spawn)."""
        try:
            return self.fs.lookup(ROOT_INO, AGENTS_DIR).ino == ino
        except FsError:
            return False

    def mkdir(self, parent: int, name: bytes, pid: int, uid: int, gid: int) -> Attr | None:
        if not self._is_agents_dir(parent):
            return None
        spawner = self.sender(pid)
        if self.agents.by_name(spawner) is None:
            spawner = ""
        try:
            a = self.agents.spawn(name, spawner, uid, gid)
        except FsError as e:
            raise e.within(f"mkdir agents/{name.decode(errors='replace')}")
        return self.fs.getattr(a.root_ino)

    def create(self, parent: int, name: bytes, pid: int, uid: int, gid: int,
               nonce: int) -> tuple[Attr, tuple[Agent, bytes, str]] | None:
        r = self.role(parent)
        if r is None or r[1] is not Role.INBOX:
            return None
        a = r[0]
        try:
            attr = inbox.stage_message(self.agents, a, name, nonce, uid, gid)
        except FsError as e:
            raise e.within(f"agents/{a.name}/inbox/{name.decode(errors='replace')}")
        return attr, (a, inbox.staged_name(name, nonce), self.sender(pid))

    def deliver(self, staged: tuple[Agent, bytes, str]) -> None:
        a, name, sender = staged
        inbox.deliver_message(self.agents, a, name, sender)
        ev = self.arrivals.pop(a.view, None)
        if ev is not None:
            ev.set()

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

    @staticmethod
    def refuse(pid: int, code: int, message: str) -> FsError:
        """The error to raise (the daemon records its reason for `errstr`)."""
        return FsError(code, message)

    def check_removal(self, parent: int, name: bytes, pid: int) -> None:
        """Refuse to remove what agentfs generates, and keep an agent whole
        under `rm -r`: a recursive remover unlinks the generated files of the
        agent's directory first (they are listed first), so once a process
        has tried that, nothing inside that agent is removed by it."""
        if parent == ROOT_INO and name == b"AGENTS.md":
            raise self.refuse(pid, errno.EPERM, "AGENTS.md is generated by agentfs; it "
                              "cannot be removed")
        a = self.agents.by_view(split_ino(parent)[0])
        if a is None:
            return
        if parent == a.root_ino and (name in FILES or name == b"observations"):
            self.removers[pid] = (a.view, _start_time(pid))
            raise self.refuse(pid, errno.EPERM, f"agents/{a.name}/{name.decode()} is "
                              f"generated by agentfs; to remove the agent, rmdir agents/"
                              f"{a.name} (rm -r would empty it file by file: refused, "
                              "nothing in it was removed)")
        guard = self.removers.get(pid)
        if guard is not None and guard == (a.view, _start_time(pid)):
            raise self.refuse(pid, errno.EPERM, f"agents/{a.name}: a recursive removal of "
                              f"an agent is refused so that it stays whole; rmdir agents/"
                              f"{a.name} removes it at once")

    def remove_agent_dir(self, parent: int, child: int, pid: int) -> Result | None:
        """`rmdir agents/NAME` removes the agent, whole, though it holds files
        (the cgroupfs convention). None if `child` is not an agent's directory."""
        a = self.agents.agent_root(child)
        if a is None or not self._is_agents_dir(parent):
            return None
        try:
            self.agents.remove(a.name)
        except FsError as e:
            raise self.refuse(pid, e.errno, f"rmdir agents/{a.name}: {e.message}")
        return Result(f"removed agent {a.name}", [(parent, a.name.encode(), child)],
                      gc_wanted=True)

    def check(self, ino: int, what: str, pid: int) -> None:
        """EPERM (reason in errstr) for what an agent's skeleton file does not allow."""
        r = self.role(ino)
        if r is None:
            return
        refuse_change(r[0], r[1], what)

    # ------------------------------------------------------------ content

    def is_transcript(self, ino: int) -> Agent | None:
        r = self.role(ino)
        return r[0] if r is not None and r[1] is Role.TRANSCRIPT else None

    def append_lines(self, a: Agent, lines: list[bytes], pid: int) -> None:
        """Append the complete lines of one write(), each a turn, in one
        transaction: all of them, or (EINVAL, with the reason) none."""
        if lines:
            self.agents.append_lines(a.name, lines, view=a.view)

    def write(self, ino: int, offset: int, data: bytes) -> None:
        """A write to a stored file: an agent's files keep their rules (config
        is validated), any other file is plain data."""
        r = self.role(ino)
        if r is None:
            self.fs.write(ino, offset, data)
        else:
            self.agents.write_file(r[0], r[1], offset, data)

    def content(self, ino: int, pid: int) -> bytes:
        """What reading a virtual agent file returns (fixed at open)."""
        if ino == GUIDE_INO:
            return GUIDE
        if ino & WAIT_FILE:
            return b""
        a, kind = self._decode(ino)
        if ino & OBS_FILE:
            return self._observation(a, kind).text
        name = KIND_NAMES[kind]
        if name == b"errstr":
            return self.errors.for_pid(pid).encode()
        if name in (b"ctl", b"status"):
            return f"{a.status} turns={a.turns}\n".encode()
        if name == b"parent":
            return (a.parent + "\n").encode() if a.parent else b""
        if name == b"children":
            return "".join(c + "\n" for c in self.agents.children(a.name)).encode()
        return self.render_context(a)

    def render_context(self, a: Agent) -> bytes:
        return self.contexts.render(a)

    async def wait(self, ino: int, pid: int = 0) -> bytes:
        """inbox/.wait: block until a message is there (or the timeout); print its name.

        pyfuse3 does not pass FUSE_INTERRUPT on, and the kernel waits for the
        answer even for a killed reader: so look at the reader's pending
        signals now and then, and give up (EINTR) once it has one.
        """
        a, secs = self._decode(ino)
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

    # ------------------------------------------------------------ control

    def control(self, ino: int, line: bytes, pid: int) -> Result:
        """One line written to an agent's `ctl` or `parent`."""
        a, kind = self._decode(ino)
        text = line.decode("utf-8", "replace").strip()
        try:
            if KIND_NAMES[kind] == b"parent":
                if a.parent:
                    raise FsError(errno.EEXIST, f"parent is already {a.parent}")
                self.agents.set_parent(a.name, text)
                return Result(f"{a.name}'s parent is {text}")
            return run_agent_command(self.agents, a, text)
        except FsError as e:
            raise e.within(f"agents/{a.name}/{KIND_NAMES[kind].decode()}: {text}")

    def turn_snapshot(self, dir_ino: int, name: bytes) -> Attr | None:
        """`.snapshots/turn-N` of an agent: the agent as it was after turn N
        (made on first visit, kept under the agent's own directory, so that it
        stays when the agent the turn was inherited from is removed)."""
        turn = self.turn_of(dir_ino, name)
        if turn is None:
            return None
        a = self.agents.agent_root(dir_ino)
        assert a is not None
        try:
            return self.fs.snapshot_root(a.root_ino, name)
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
        owner, epoch = self.agents.turn_epoch(a.name, turn)
        return self.fs.snapshot(a.root_ino, name, epoch, source=fuse_ino(owner, Role.ROOT))

    def turn_of(self, dir_ino: int, name: bytes) -> int | None:
        """N if `name` is `turn-N` in the .snapshots of an agent's directory."""
        if not name.startswith(b"turn-") or self.agents.agent_root(dir_ino) is None:
            return None
        digits = name[5:]
        if not digits.isdigit() or digits.startswith(b"0"):
            return None
        return int(digits)

    def turn_snapshots(self, dir_ino: int) -> list[bytes]:
        """The turn snapshots an agent's .snapshots lists (turn-1 .. turn-T)."""
        a = self.agents.agent_root(dir_ino)
        return [] if a is None else [b"turn-%d" % n for n in range(1, a.turns + 1)]

    def now(self) -> float:
        return time.monotonic()

    def view_of(self, ino: int) -> int:
        return split_ino(ino)[0]
