"""Control commands: what `MOUNT/.agentfs/ctl` accepts, one per line.

    fork SRC DST [EPOCH]        DST becomes a copy-on-write fork of directory SRC
    snapshot DIR NAME [EPOCH]   read-only snapshot, reachable as DIR/.snapshots/NAME
    unsnapshot DIR NAME         delete it
    detach DIR                  remove fork root DIR and all it holds, at once
    gc                          reclaim versions no view can see
    sync                        make everything committed durable

Paths are relative to the mount root (a leading '/' is ignored). Failures raise
`FsError` with the errno the write gets and a readable reason for `errstr`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shlex
from dataclasses import dataclass, field

from agentfs.errors import FsError
from agentfs.posix.fs import FileSystem

USAGE = {
    "fork": "fork SRC DST [EPOCH]",
    "snapshot": "snapshot DIR NAME [EPOCH]",
    "unsnapshot": "unsnapshot DIR NAME",
    "detach": "detach DIR",
    "gc": "gc",
    "sync": "sync",
}


def _split_parent(path: str) -> tuple[str, bytes]:
    path = posixpath.normpath("/" + path)
    parent, name = posixpath.split(path)
    if not name:
        raise FsError(errno.EINVAL, "the mount root has no parent")
    return parent, os.fsencode(name)


def _epoch(arg: str) -> int:
    try:
        e = int(arg)
    except ValueError:
        raise FsError(errno.EINVAL, f"epoch must be a number, not {arg!r}")
    if e <= 0:
        raise FsError(errno.EINVAL, "epoch must be positive")
    return e


@dataclass
class Result:
    """What a command did: a line for the status file, and the directory
    entries it changed behind the kernel's back (parent, name, removed inode or
    0) so the daemon can invalidate the kernel's caches."""

    message: str
    changed: list[tuple[int, bytes, int]] = field(default_factory=list)


def run_command(fs: FileSystem, line: str) -> Result:
    """Execute one control line."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise FsError(errno.EINVAL, f"cannot parse {line!r}: {e}")
    if not words:
        return Result("")
    cmd, args = words[0], words[1:]
    if cmd not in USAGE:
        raise FsError(errno.EINVAL, f"unknown command {cmd!r}; commands: "
                      + "; ".join(USAGE.values()))
    nargs = len(USAGE[cmd].split()) - 1
    required = nargs - USAGE[cmd].count("[")
    if not required <= len(args) <= nargs:
        raise FsError(errno.EINVAL, f"usage: {USAGE[cmd]}")
    if cmd == "fork":
        src = fs.path_ino(args[0])
        parent, name = _split_parent(args[1])
        epoch = _epoch(args[2]) if len(args) > 2 else None
        pino = fs.path_ino(parent)
        root = fs.fork(src, pino, name, epoch)
        return Result(f"forked {args[0]} -> {args[1]} (inode {root.ino})", [(pino, name, 0)])
    if cmd == "snapshot":
        epoch = _epoch(args[2]) if len(args) > 2 else None
        fs.snapshot(fs.path_ino(args[0]), os.fsencode(args[1]), epoch)
        return Result(f"snapshot {args[0]}/.snapshots/{args[1]}")
    if cmd == "unsnapshot":
        fs.delete_snapshot(fs.path_ino(args[0]), os.fsencode(args[1]))
        return Result(f"deleted snapshot {args[1]} of {args[0]}")
    if cmd == "detach":
        parent, name = _split_parent(args[0])
        pino = fs.path_ino(parent)
        child = fs.lookup(pino, name).ino
        fs.detach(pino, name)
        return Result(f"detached {args[0]}", [(pino, name, child)])
    if cmd == "gc":
        from agentfs.storage.gc import collect

        stats = collect(fs.store)
        return Result("gc " + " ".join(f"{k}={v}" for k, v in stats.items()))
    fs.sync()
    return Result("synced")
