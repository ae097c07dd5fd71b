"""Agents through a mounted agentfs, with file operations only.

Everything here is what a shell script does with `mkdir`, `cat`, `echo >>`
and `rm` on the mount (see the generated AGENTS.md); the library only adds
types, error reasons and a few conveniences:

    m = Mount.find()                      # $AGENTFS_MOUNT or the mount around cwd
    a = m.spawn("planner", prompt="Plan the release.")
    a.append({"role": "user", "content": "Start."})
    b = a.fork("planner-2", at=1)         # conversation and files, at turn 1
    a.send("planner-2", "use the 2.0 branch")   # recorded as from "planner"
    msg = b.recv(timeout=10)              # Message(seq, sender, name, text, path)

Failures raise `AgentfsError` (an OSError): the errno the filesystem gave and
the daemon's reason from `errstr` when it wrote one, else a reason made here.

The daemon records who sent a message (and who spawned an agent) from the
*environment the writing process was started with* ($AGENTFS_AGENT), else its
working directory. To speak for another agent than this process does, the
write is made by a short-lived child process started with that environment.

No import of the daemon, FUSE or trio: this module works from any process
that can see the mount.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .events import Dropped, read_events

__all__ = ["AgentfsError", "Mount", "Agent", "Message", "LINEAGE_FILE", "tree_order",
           "dead_mount", "dead_mount_reason"]

AGENTS = "agents"
CTL = (".agentfs", "ctl")
ERRSTR = (".agentfs", "errstr")
EVENTS = (".agentfs", "events")
MAX_WAIT = 3600  # the longest inbox/.wait-SECONDS the daemon accepts
# A blocked read of inbox/.wait-N ignores signals this process handles (the
# daemon does not serve FUSE interrupts): wait in short rounds so that Ctrl-C
# takes effect within a round. A message still ends a round at once.
WAIT_ROUND = 2
MESSAGE_RE = re.compile(r"^(\d{6,})-([A-Za-z0-9._-]+)\+(.*)$")
STAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ")
NAME_RULE = "agent names are 1-64 characters [A-Za-z0-9._-], starting with a letter or digit"
# Where a daemon that exposes its lineage export (Agents.export(), one JSON
# object per line) would put it. Read when present; computed from the agents'
# files otherwise (see Mount.lineage).
LINEAGE_FILE = (".agentfs", "lineage")


class AgentfsError(OSError):
    """An operation on the mount failed: `errno` plus a readable `reason`."""

    def __init__(self, code: int, reason: str, filename: str | None = None) -> None:
        super().__init__(code, os.strerror(code))
        self.reason = reason
        if filename is not None:
            self.filename = filename

    def __str__(self) -> str:
        return f"{self.reason} ({errno.errorcode.get(self.errno or 0, self.errno)})"


def _not_connected(path: Path) -> bool:
    try:
        os.statvfs(path)  # never answered from the kernel's attribute cache
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def dead_mount(path: str | os.PathLike[str]) -> Path | None:
    """The root of the dead FUSE mount `path` lies in, or None. A daemon that
    died (SIGKILL, a crash) leaves its mount behind: the kernel answers every
    access in it with ENOTCONN until it is detached."""
    p = Path(os.path.abspath(path))
    if not _not_connected(p):
        return None
    while p.parent != p and _not_connected(p.parent):
        p = p.parent
    return p


def dead_mount_reason(root: str | os.PathLike[str]) -> str:
    """What to tell someone who met the dead mount `root`: what it is and the fix."""
    return (f"{root} is a dead agentfs mount: its daemon is gone ({os.strerror(errno.ENOTCONN)}); "
            f"clear it with `agentfs umount {root}` (or `fusermount3 -u -z {root}`), then "
            f"mount it again (`agentfs mount` clears it itself)")


def _dead_mount_error(path: Path) -> AgentfsError:
    root = dead_mount(path) or path
    return AgentfsError(errno.ENOTCONN, dead_mount_reason(root), str(root))


def _strip_stamp(line: str) -> str:
    return STAMP_RE.sub("", line.strip())


@dataclass(frozen=True)
class Message:
    """One delivered message: inbox/SEQ-SENDER+NAME."""

    seq: int
    sender: str
    name: str
    text: str
    path: Path


# ---------------------------------------------------------------- writes made as someone else

_CHILD = r"""
import os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "mkdir":
        os.mkdir(path)
    else:
        data = sys.stdin.buffer.read()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
except OSError as e:
    sys.stderr.write("%d\n" % e.errno)
    sys.exit(3)
"""


def _as_agent(agent: str, op: str, path: Path, data: bytes = b"") -> None:
    """`op` ("mkdir" or "write") on `path` from a child process started with
    AGENTFS_AGENT=agent: the daemon reads the writer's environment."""
    env = dict(os.environ, AGENTFS_AGENT=agent)
    res = subprocess.run([sys.executable, "-I", "-S", "-c", _CHILD, op, str(path)], input=data,
                         env=env, capture_output=True, cwd="/", timeout=600)
    if res.returncode == 0:
        return
    err = res.stderr.decode(errors="replace").strip()
    if res.returncode == 3 and err.isdigit():
        raise OSError(int(err), os.strerror(int(err)), str(path))
    raise OSError(errno.EIO, f"helper process failed ({res.returncode}): {err}", str(path))


def _exec_environ_agent() -> str | None:
    """$AGENTFS_AGENT as the daemon sees it: from the environment this process
    was started with (/proc/self/environ), not later changes to os.environ."""
    try:
        with open("/proc/self/environ", "rb") as f:
            for var in f.read().split(b"\0"):
                if var.startswith(b"AGENTFS_AGENT="):
                    return var.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        return os.environ.get("AGENTFS_AGENT")
    return None


# ---------------------------------------------------------------- the mount


class Mount:
    """A mounted agentfs, by its root path."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.abspath(path))
        try:
            has_ctl = self.path.joinpath(*CTL).exists()
        except OSError as e:
            if e.errno == errno.ENOTCONN:
                raise _dead_mount_error(self.path) from e
            raise
        if not has_ctl:
            raise AgentfsError(errno.ENOENT, f"{self.path} is not an agentfs mount "
                               "(no .agentfs/ctl)", str(self.path))

    def __repr__(self) -> str:
        return f"Mount({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mount) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def find(cls, path: str | os.PathLike[str] | None = None) -> Mount:
        """The mount `path` lies in (walking up to a directory with .agentfs/ctl).
        Without a path: $AGENTFS_MOUNT, else the mount around the current directory."""
        if path is None:
            env = os.environ.get("AGENTFS_MOUNT")
            if env:
                return cls(env)
            start = Path.cwd()
        else:
            start = Path(os.path.abspath(path))
        for cand in (start, *start.parents):
            try:
                if cand.joinpath(*CTL).exists():
                    return cls(cand)
            except OSError as e:
                if e.errno == errno.ENOTCONN:
                    raise _dead_mount_error(cand) from e
                continue
        if path is None:
            raise AgentfsError(errno.ENOENT, f"{start} is not inside an agentfs mount and "
                               "AGENTFS_MOUNT is not set")
        raise AgentfsError(errno.ENOENT, f"{path} is not inside an agentfs mount", str(path))

    # ------------------------------------------------------------ paths and errors

    @property
    def agents_dir(self) -> Path:
        return self.path / AGENTS

    def errstr(self) -> str:
        """The daemon's last error reason for this process (or, failing that, anyone's)."""
        try:
            return _strip_stamp(self.path.joinpath(*ERRSTR).read_text(errors="replace"))
        except OSError:
            return ""

    @contextmanager
    def _errors(self, fallback: Callable[[int], str], path: Path | None = None) -> Iterator[None]:
        """Turn an OSError into AgentfsError, with the daemon's reason if the
        failure made it write one (errstr changed), else `fallback(errno)`."""
        before = self.errstr()
        try:
            yield
        except AgentfsError:
            raise
        except OSError as e:
            code = e.errno or errno.EIO
            if code == errno.ENOTCONN:
                raise _dead_mount_error(self.path) from e
            after = self.errstr()
            reason = after if after and after != before else fallback(code)
            where = path or e.filename
            raise AgentfsError(code, reason, str(where) if where else None) from e

    def identity(self) -> str:
        """Who the daemon takes this process to be when it sends or spawns:
        $AGENTFS_AGENT, else the agent whose directory is the cwd, else pidN."""
        env = _exec_environ_agent()
        if env is not None:
            return env
        try:
            cwd = os.readlink("/proc/self/cwd")
        except OSError:
            cwd = os.getcwd()
        prefix = os.path.join(os.path.realpath(self.path), AGENTS) + "/"
        if cwd.startswith(prefix):
            return cwd[len(prefix):].split("/", 1)[0]
        return f"pid{os.getpid()}"

    # ------------------------------------------------------------ agents

    def agents(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.agents_dir) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def exists(self, name: str) -> bool:
        return bool(name) and "/" not in name and (self.agents_dir / name).is_dir()

    def agent(self, name: str) -> Agent:
        """The agent NAME (AgentfsError ENOENT if there is none)."""
        if not self.exists(name):
            raise AgentfsError(errno.ENOENT, f"no agent named {name!r}",
                               str(self.agents_dir / name))
        return Agent(self, name)

    def spawn(self, name: str, prompt: str | None = None, parent: str | None = None,
              system: str | None = None, tools: list[dict[str, Any]] | None = None) -> Agent:
        """`mkdir agents/NAME`, then its prompt, system prompt and tools.

        The parent is the daemon's guess (this process's $AGENTFS_AGENT or the
        agent directory it works in) unless `parent` names another agent; then
        the directory is made by a child process speaking for `parent`."""
        path = self.agents_dir / name
        try:
            self.agents_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise AgentfsError(e.errno or errno.EIO, f"cannot make {self.agents_dir}: "
                               f"{e.strerror}", str(self.agents_dir)) from e

        def reason(code: int) -> str:
            if code == errno.EEXIST:
                return f"agent {name!r} exists"
            if code == errno.EINVAL:
                return f"bad agent name {name!r}: {NAME_RULE}"
            return f"cannot spawn {name!r}: {os.strerror(code)}"

        if parent is not None and parent != self.identity():
            if not self.exists(parent):
                raise AgentfsError(errno.ENOENT, f"parent agent {parent!r} does not exist",
                                   str(self.agents_dir / parent))
            with self._errors(reason, path):
                _as_agent(parent, "mkdir", path)
        else:
            with self._errors(reason, path):
                path.mkdir()
        agent = Agent(self, name)
        for fname, value in (("prompt", prompt), ("system", system)):
            if value is not None:
                agent._write_file(fname, value.encode())
        if tools is not None:
            agent._write_file("tools.json", (json.dumps(tools, indent=2) + "\n").encode())
        return agent

    def send(self, to: str | Agent, text: str | bytes, sender: str | None = None,
             name: str = "msg") -> None:
        """Drop a message into `to`'s inbox; it is delivered, atomically, when
        written. `sender` defaults to whoever the daemon takes this process for."""
        target = to.name if isinstance(to, Agent) else to
        data = text.encode() if isinstance(text, str) else text
        path = self.agents_dir / target / "inbox" / name

        def reason(code: int) -> str:
            if code == errno.ENOENT and not self.exists(target):
                return f"no agent named {target!r}"
            if code == errno.EINVAL:
                return f"message name {name!r} refused (names starting with .in- are reserved)"
            return f"cannot send to {target!r}: {os.strerror(code)}"

        if "/" in name or not name or name in (".", ".."):
            raise AgentfsError(errno.EINVAL, f"message name {name!r} must be a plain file name")
        with self._errors(reason, path):
            if sender is None or sender == self.identity():
                with open(path, "wb") as f:
                    f.write(data)
            else:
                _as_agent(sender, "write", path, data)

    # ------------------------------------------------------------ events

    def events(self, after: int = 0, follow: bool = False, timeout: float | None = None
               ) -> Iterator[dict[str, Any]]:
        """The mount's events (`.agentfs/events`) with seq > `after`, in order,
        each once; with `follow`, waiting for new ones (polling the file's size,
        at most 4 times a second) until `timeout` seconds (None: for ever).
        `after=0` starts at the oldest event the stream's window retains; a
        cursor the window has moved past (events after it were dropped before
        this reader read them) raises AgentfsError(ENODATA)."""
        path = self.path.joinpath(*EVENTS)
        try:
            yield from read_events(path, after, follow, timeout)
        except Dropped:
            raise AgentfsError(errno.ENODATA, "events after seq "
                               f"{after} were dropped from the stream's window before "
                               "they were read", str(path))

    # ------------------------------------------------------------ lineage

    def lineage(self) -> list[dict[str, Any]]:
        """The spawn/fork tree, one record per agent (parents before children):
        name, parent, origin, kind, shared_prefix_turns, turns, status.

        If the mount exposes the model's export (LINEAGE_FILE) it is returned
        as is. Otherwise it is computed from each agent's parent, children,
        status and transcript files: `origin` is the agent that lists this one
        among its children without being its parent, else the parent when the
        two transcripts share a first line; `shared_prefix_turns` counts the
        leading transcript lines both have. These records carry
        "inferred": true (a fork made before its origin's first turn looks
        like a spawn)."""
        exposed = self.path.joinpath(*LINEAGE_FILE)
        try:
            text = exposed.read_text()
        except OSError:
            text = None
        if text is not None:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        names = self.agents()
        agents = {n: Agent(self, n) for n in names}
        info: dict[str, dict[str, Any]] = {}
        listed_by: dict[str, set[str]] = {n: set() for n in names}
        lines: dict[str, list[str]] = {}
        for n, a in agents.items():
            try:
                state, turns = a.status()
                parent = a.parent()
                kids = a.children()
            except AgentfsError:
                continue  # removed meanwhile
            info[n] = {"parent": parent, "status": state, "turns": turns}
            for k in kids:
                listed_by.setdefault(k, set()).add(n)

        def transcript_lines(n: str) -> list[str]:
            if n not in lines:
                try:
                    lines[n] = agents[n].path.joinpath("transcript").read_text().splitlines()
                except (OSError, KeyError):
                    lines[n] = []
            return lines[n]

        def shared(a: str, b: str) -> int:
            k = 0
            for x, y in zip(transcript_lines(a), transcript_lines(b), strict=False):
                if x != y:
                    break
                k += 1
            return k

        records: dict[str, dict[str, Any]] = {}
        for n, rec in info.items():
            parent = rec["parent"]
            others = sorted(listed_by.get(n, set()) - {parent})
            origin = others[0] if len(others) == 1 else None
            if origin is None and parent in info and shared(n, parent) > 0:
                origin = parent
            prefix = shared(n, origin) if origin is not None and origin in info else 0
            records[n] = {"name": n, "parent": parent, "origin": origin,
                          "kind": "fork" if origin else "spawn",
                          "shared_prefix_turns": prefix,
                          "turns": rec["turns"], "status": rec["status"], "inferred": True}
        return tree_order(records)


# ---------------------------------------------------------------- one agent


class Agent:
    """agents/NAME in a mount."""

    def __init__(self, mount: Mount, name: str) -> None:
        self.mount = mount
        self.name = name
        self.path = mount.agents_dir / name

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, mount={str(self.mount.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Agent) and (other.mount, other.name) == (self.mount, self.name)

    def __hash__(self) -> int:
        return hash((self.mount, self.name))

    # ------------------------------------------------------------ plumbing

    def _missing(self, what: str) -> Callable[[int], str]:
        def reason(code: int) -> str:
            if code == errno.ENOENT and not self.path.is_dir():
                return f"no agent named {self.name!r}"
            return f"agents/{self.name}: {what}: {os.strerror(code)}"
        return reason

    def _read(self, fname: str) -> str:
        with self.mount._errors(self._missing(f"reading {fname}"), self.path / fname):
            return (self.path / fname).read_text(errors="replace")

    def _write_file(self, fname: str, data: bytes) -> None:
        with self.mount._errors(self._missing(f"writing {fname}"), self.path / fname), \
                open(self.path / fname, "wb") as f:
            f.write(data)

    def ctl(self, command: str) -> None:
        """Write one command line to the agent's ctl file."""
        with self.mount._errors(self._missing(command), self.path / "ctl"), \
                open(self.path / "ctl", "w") as f:
            f.write(command + "\n")

    def errstr(self) -> str:
        return self.mount.errstr()

    # ------------------------------------------------------------ transcript and context

    def append(self, message: dict[str, Any]) -> None:
        """Append one message to the transcript: one JSON line, one write, O_APPEND."""
        try:
            line = json.dumps(message, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False)
        except (TypeError, ValueError) as e:
            raise AgentfsError(errno.EINVAL, f"message is not JSON: {e}")
        data = (line + "\n").encode()
        path = self.path / "transcript"
        with self.mount._errors(self._missing("append"), path):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def transcript(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._read("transcript").splitlines()
                if line.strip()]

    def context(self) -> dict[str, Any]:
        """The rendered, model-ready request (context.json)."""
        result: dict[str, Any] = json.loads(self._read("context.json"))
        return result

    def prompt(self) -> str:
        return self._read("prompt")

    # ------------------------------------------------------------ state

    def status(self) -> tuple[str, int]:
        """(state, turns), from `status`: "STATE turns=N"."""
        text = self._read("status").split()
        turns = 0
        for word in text[1:]:
            if word.startswith("turns="):
                turns = int(word[6:])
        return (text[0] if text else "", turns)

    def set_status(self, status: str) -> None:
        self.ctl(f"status {status}")

    def parent(self) -> str | None:
        return self._read("parent").strip() or None

    def children(self) -> list[str]:
        return [line for line in self._read("children").splitlines() if line]

    def fork(self, new: str, at: int | None = None) -> Agent:
        """Fork this agent as `new`: now, or as it was after turn `at`."""
        self.ctl(f"fork {_quote(new)}" + ("" if at is None else f" at {int(at)}"))
        return Agent(self.mount, new)

    def snapshot(self, name: str) -> Path:
        """A read-only snapshot of the agent: .snapshots/NAME."""
        self.ctl(f"snapshot {_quote(name)}")
        return self.path / ".snapshots" / name

    def remove(self) -> None:
        self.ctl("remove")

    # ------------------------------------------------------------ messages

    def send(self, to: str | Agent, text: str | bytes, sender: str | None = None,
             name: str = "msg") -> None:
        """Send `text` to agent `to`, as this agent (or as `sender`)."""
        self.mount.send(to, text, sender=sender or self.name, name=name)

    def _message(self, fname: str) -> Message:
        path = self.path / "inbox" / fname
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
        seq, sender, name = self._parse(fname)
        return Message(seq, sender, name, text, path)

    @staticmethod
    def _parse(fname: str) -> tuple[int, str, str]:
        """SEQ-SENDER+NAME (a sender never holds '+'); anything else is a
        message without a known sender."""
        m = MESSAGE_RE.match(fname)
        if not m:
            return 0, "", fname
        return int(m.group(1)), m.group(2), m.group(3)

    def messages(self) -> list[Message]:
        """Delivered messages, in arrival order (not consumed)."""
        out = []
        with self.mount._errors(self._missing("inbox"), self.path / "inbox"):
            names = sorted(n for n in os.listdir(self.path / "inbox") if not n.startswith("."))
        for n in names:
            try:
                out.append(self._message(n))
            except FileNotFoundError:
                continue  # consumed meanwhile
        return out

    def recv(self, timeout: float | None = None, consume: bool = True) -> Message | None:
        """The first message in the inbox, waiting up to `timeout` seconds (None:
        for ever) for one to arrive; None on timeout. `consume` removes it; when
        two readers race for one message, only the one whose rm succeeds gets it."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        inbox = self.path / "inbox"
        while True:
            if deadline is None:
                secs = WAIT_ROUND
            else:
                secs = min(WAIT_ROUND, max(0, math.ceil(deadline - time.monotonic())))
            with self.mount._errors(self._missing("recv"), inbox):
                first = (inbox / f".wait-{secs}").read_text().strip()
            if first:
                try:
                    msg = self._message(first)
                    if consume:
                        os.unlink(msg.path)
                    return msg
                except FileNotFoundError:
                    continue  # another reader took it
            elif deadline is not None and time.monotonic() >= deadline:
                return None


def tree_order(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Records depth first from the roots (no parent, or a parent that is gone),
    children by name; agents caught in a parent cycle come last."""
    kids: dict[str, list[str]] = {}
    roots = []
    for n in sorted(records):
        p = records[n].get("parent")
        if p in records and p != n:
            kids.setdefault(p, []).append(n)
        else:
            roots.append(n)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(n: str) -> None:
        stack = [n]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            out.append(records[cur])
            stack.extend(reversed(kids.get(cur, [])))

    for r in roots:
        visit(r)
    for n in sorted(records):
        visit(n)
    return out


def _quote(word: str) -> str:
    return shlex.quote(word)
