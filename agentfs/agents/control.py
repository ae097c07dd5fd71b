"""Control commands, one per line: the mount's `.agentfs/ctl` and each agent's `ctl`.

Mount level (`MOUNT/.agentfs/ctl`):

    fork SRC DST [EPOCH]        DST becomes a copy-on-write fork of directory SRC
    fork SRC DST at TURN        (SRC an agent: DST = agents/NEW, as after turn TURN)
    snapshot DIR NAME [EPOCH]   read-only snapshot, reachable as DIR/.snapshots/NAME
    unsnapshot DIR NAME         delete it
    detach DIR                  remove fork root DIR and all it holds, at once
    keep-events N [BYTES]       the event stream (.agentfs/events) keeps the newest N
                                events, at most BYTES bytes of them
    gc                          reclaim versions no view can see
    sync                        make everything committed durable
    import HOSTDIR DIR          copy host directory HOSTDIR (absolute) into DIR, in
                                large transactions, visible only once whole
                                (agentfs.posix.hostimport); the daemon runs it in
                                the background and its ctl shows the progress
    import-cancel ID            stop import ID; nothing of it is kept

Agent level (`agents/NAME/ctl`):

    fork NEW | fork NEW at TURN | snapshot NAME | status STATE | remove

One semantics, two doors: when SRC or DIR is an agent's directory, the mount
level does exactly what the agent's ctl does (a full agent fork, removal of
the agent), or refuses with a reason that names the right command. Paths are
relative to the mount root (a leading '/' is ignored). Every command is one
transaction: a failed command changes nothing (`import` is checked at once,
then runs as many transactions, of which nothing shows until the last).
Failures raise `FsError` with the errno the write gets and a readable reason
for `errstr`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shlex
from dataclasses import dataclass, field

from agentfs.agents import events
from agentfs.agents.model import AGENTS_DIR, ROOT_NAMES, STATUSES, Agent, Agents, Role
from agentfs.errors import FsError
from agentfs.posix.fs import ROOT_INO
from agentfs.posix.hostimport import HostImport
from agentfs.posix.ownmount import OwnMount

USAGE = {
    "fork": "fork SRC DST [EPOCH | at TURN]",
    "snapshot": "snapshot DIR NAME [EPOCH]",
    "unsnapshot": "unsnapshot DIR NAME",
    "detach": "detach DIR",
    "keep-events": "keep-events EVENTS [BYTES]",
    "gc": "gc",
    "sync": "sync",
    "import": "import HOSTDIR DIR",
    "import-cancel": "import-cancel ID",
}
AGENT_USAGE = ("commands: fork NEW | fork NEW at TURN | snapshot NAME | "
               f"status {'|'.join(STATUSES)} | remove")
TURN_SNAPSHOT_PREFIX = "turn-"


@dataclass
class Result:
    """What a command did: a line for the status file, the directory entries it
    changed behind the kernel's back (parent, name, removed inode or 0) so the
    daemon can invalidate the kernel's caches, whether gc has work, and the
    work a long command leaves to run in the background (checked, not begun)
    or the one it asks to stop."""

    message: str
    changed: list[tuple[int, bytes, int]] = field(default_factory=list)
    gc_wanted: bool = False
    job: HostImport | None = None
    cancel_job: int = 0


def _split_parent(path: str) -> tuple[str, bytes]:
    path = posixpath.normpath("/" + path)
    parent, name = posixpath.split(path)
    if not name:
        raise FsError(errno.EINVAL, "the mount root has no parent")
    return parent, os.fsencode(name)


def _number(arg: str, what: str) -> int:
    try:
        n = int(arg)
    except ValueError:
        raise FsError(errno.EINVAL, f"{what} must be a number, not {arg!r}")
    if n <= 0:
        raise FsError(errno.EINVAL, f"{what} must be positive, not {n}")
    return n


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as e:
        raise FsError(errno.EINVAL, f"cannot parse {line!r}: {e}")


def run_command(agents: Agents, line: str, own: OwnMount | None = None) -> Result:
    """Execute one line of the mount's control file (`own`: the daemon's own
    mount, which an import may not read from)."""
    fs = agents.fs
    words = _words(line)
    if not words:
        return Result("")
    cmd, args = words[0], words[1:]
    if cmd not in USAGE:
        raise FsError(errno.EINVAL, f"unknown command {cmd!r}; commands: "
                      + "; ".join(USAGE.values()))
    if cmd == "fork":
        return _fork(agents, args)
    nargs = len(USAGE[cmd].split()) - 1
    required = nargs - USAGE[cmd].count("[")
    if not required <= len(args) <= nargs:
        raise FsError(errno.EINVAL, f"usage: {USAGE[cmd]}")
    if cmd == "snapshot":
        epoch = _number(args[2], "epoch") if len(args) > 2 else None
        _check_snapshot_name(agents, fs.path_ino(args[0]), args[1])
        fs.snapshot(fs.path_ino(args[0]), os.fsencode(args[1]), epoch)
        return Result(f"snapshot {args[0]}/.snapshots/{args[1]}")
    if cmd == "unsnapshot":
        fs.delete_snapshot(fs.path_ino(args[0]), os.fsencode(args[1]))
        return Result(f"deleted snapshot {args[1]} of {args[0]}", gc_wanted=True)
    if cmd == "detach":
        parent, name = _split_parent(args[0])
        pino = fs.path_ino(parent)
        child = fs.lookup(pino, name).ino
        agent = agents.agent_root(child)
        if agent is not None:
            agents.remove(agent.name, event="detach")
            return Result(f"removed agent {agent.name}", [(pino, name, child)], gc_wanted=True)
        fs.detach(pino, name)
        return Result(f"detached {args[0]}", [(pino, name, child)], gc_wanted=True)
    if cmd == "keep-events":
        h = events.keep(fs, _number(args[0], "EVENTS"),
                        _number(args[1], "BYTES") if len(args) > 1 else None)
        return Result(f"events: keeping the newest {h.keep_events} events, at most "
                      f"{h.keep_bytes} bytes", gc_wanted=True)
    if cmd == "import":
        return _import(agents, args[0], args[1], own)
    if cmd == "import-cancel":
        return Result(f"cancelling import {args[0]}", cancel_job=_number(args[0], "ID"))
    if cmd == "gc":
        from agentfs.storage.gc import collect

        stats = collect(fs.store)
        return Result("gc " + " ".join(f"{k}={v}" for k, v in stats.items()))
    fs.sync()
    return Result("synced")


def _fork(agents: Agents, args: list[str]) -> Result:
    fs = agents.fs
    turn = None
    epoch = None
    if len(args) == 4 and args[2] == "at":
        if not args[3].isdigit():
            raise FsError(errno.EINVAL, f"usage: {USAGE['fork']} (TURN is a number)")
        turn = int(args[3])
    elif len(args) == 3:
        epoch = _number(args[2], "epoch")
    elif len(args) != 2:
        raise FsError(errno.EINVAL, f"usage: {USAGE['fork']}")
    src = fs.path_ino(args[0])
    parent, name = _split_parent(args[1])
    pino = fs.path_ino(parent)
    agent = agents.agent_root(src)
    if agent is None:
        if turn is not None:
            raise FsError(errno.EINVAL, f"{args[0]} is not an agent: 'at TURN' forks an "
                          "agent; fork a directory at a pinned EPOCH instead")
        root = fs.fork(src, pino, name, epoch)
        return Result(f"forked {args[0]} -> {args[1]} (inode {root.ino})", [(pino, name, 0)])
    if pino != agents.dir_ino():
        raise FsError(errno.EINVAL, f"{args[0]} is agent {agent.name}: a fork of it is an "
                      f"agent, so it goes in agents/ (fork {args[0]} agents/NEW, or "
                      f"echo 'fork NEW' > agents/{agent.name}/ctl); to copy only its files, "
                      f"fork agents/{agent.name}/workspace")
    if epoch is not None:
        raise FsError(errno.EINVAL, f"{args[0]} is agent {agent.name}: fork it at a turn "
                      f"(fork {args[0]} {args[1]} at TURN), not at an epoch")
    new = agents.fork(agent.name, name, turn)
    return Result(f"forked agent {agent.name} -> {new.name}" +
                  (f" at turn {turn}" if turn is not None else ""), [(pino, name, 0)])


def _import(agents: Agents, host: str, dest: str, own: OwnMount | None) -> Result:
    job = HostImport(agents.fs, host, dest, own, ROOT_NAMES)
    job.check()
    # Where an import may put entries: plain directories, not those with rules
    # of their own (mkdir in agents/ spawns, a file in an inbox is a message).
    try:
        agents_dir = agents.fs.lookup(ROOT_INO, AGENTS_DIR).ino
    except FsError:
        agents_dir = 0
    role = agents.role_of(job.dest_ino)
    if (job.dest_ino == agents_dir or job.dest.strip("/") == AGENTS_DIR.decode()
            or (role is not None and role[1] in (Role.ROOT, Role.INBOX))):
        raise FsError(errno.EINVAL, f"cannot import into {dest}: agents/, an agent's "
                      "directory and its inbox have rules of their own; import into an "
                      "agent's workspace/ or notes/, or outside agents/")
    return Result(f"import {host} -> {dest}: started", job=job)


def _check_snapshot_name(agents: Agents, dir_ino: int, name: str) -> None:
    if agents.agent_root(dir_ino) is not None and name.startswith(TURN_SNAPSHOT_PREFIX):
        raise FsError(errno.EINVAL, f"snapshot names starting with {TURN_SNAPSHOT_PREFIX} "
                      "are the agent's turn snapshots (.snapshots/turn-N); pick another name")


def run_agent_command(agents: Agents, a: Agent, line: str) -> Result:
    """Execute one line of `agents/NAME/ctl`."""
    words = _words(line)
    if not words:
        return Result("")
    cmd, args = words[0], words[1:]
    if cmd == "fork" and len(args) in (1, 3):
        turn = None
        if len(args) == 3:
            if args[1] != "at" or not args[2].isdigit():
                raise FsError(errno.EINVAL, "usage: fork NEW at TURN")
            turn = int(args[2])
        new = agents.fork(a.name, args[0].encode(), turn)
        return Result(f"forked agent {a.name} -> {new.name}",
                      [(agents.dir_ino(), args[0].encode(), 0)])
    if cmd == "snapshot" and len(args) == 1:
        _check_snapshot_name(agents, a.root_ino, args[0])
        agents.fs.snapshot(a.root_ino, os.fsencode(args[0]))
        return Result(f"snapshot agents/{a.name}/.snapshots/{args[0]}")
    if cmd == "status" and len(args) == 1:
        agents.set_status(a.name, args[0])
        return Result(f"{a.name} {args[0]}")
    if cmd == "remove" and not args:
        agents.remove(a.name)
        return Result(f"removed agent {a.name}",
                      [(agents.dir_ino(), a.name.encode(), a.root_ino)], gc_wanted=True)
    raise FsError(errno.EINVAL, f"unknown command or bad arguments {line.strip()!r}; "
                  f"{AGENT_USAGE}")

