"""Helpers for driving the pyfuse3 Operations directly (no kernel, no mount).

Handlers run under trio.run; `Ctx` stands in for the request context; the
`readdir_recorder` fixture (conftest.py) replaces pyfuse3.readdir_reply, which
needs a kernel token, with a recorder that fills a `Token`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio
from agentfs.daemon.operations import CTL_INO, CTLDIR_INO, ERRSTR_INO, Operations

from agentfs.posix.fs import ROOT_INO

PID = 3_999_001  # beyond any real pid: errstr finds no ancestors in /proc
OTHER_PID = 3_999_002


@dataclass
class Ctx:
    """Stand-in for pyfuse3.RequestContext (whose attributes are read-only)."""

    uid: int = 1000
    gid: int = 1000
    pid: int = PID
    umask: int = 0o022


CTX = Ctx()


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return trio.run(fn, *args)


def fuse_errno(fn: Callable[..., Awaitable[Any]], *args: Any) -> int:
    """Run a handler that must fail; return the errno of its FUSEError."""
    with pytest.raises(pyfuse3.FUSEError) as info:
        run(fn, *args)
    return info.value.errno


def mkdir(ops: Operations, parent: int, name: bytes) -> int:
    return int(run(ops.mkdir, parent, name, 0o755, CTX).st_ino)


def create(ops: Operations, parent: int, name: bytes, data: bytes = b"") -> tuple[int, int]:
    """(inode, file handle) of a new regular file holding `data`."""
    fi, e = run(ops.create, parent, name, 0o644, os.O_WRONLY, CTX)
    if data:
        assert run(ops.write, fi.fh, 0, data) == len(data)
    return int(e.st_ino), int(fi.fh)


def fields(**kw: bool) -> SimpleNamespace:
    """Stand-in for pyfuse3.SetattrFields: the named fields set, the others not."""
    names = ("update_atime", "update_mtime", "update_ctime", "update_mode", "update_uid",
             "update_gid", "update_size")
    return SimpleNamespace(**{n: kw.get(n, False) for n in names})


# ----------------------------------------------------------------- readdir recorder


@dataclass
class Token:
    """Plays the kernel's readdir buffer: room for `room` entries."""

    room: int = 1000
    entries: list[tuple[bytes, int, int]] = field(default_factory=list)


def listdir(ops: Operations, ino: int, room: int = 1000, start: int = 0) -> Token:
    fh = run(ops.opendir, ino, CTX)
    tok = Token(room)
    run(ops.readdir, fh, start, tok)
    run(ops.releasedir, fh)
    return tok


# ----------------------------------------------------------------- control files


def ctl_open(ops: Operations, pid: int = PID) -> int:
    ctx = Ctx(pid=pid)
    e = run(ops.lookup, ROOT_INO, b".agentfs", ctx)
    assert e.st_ino == CTLDIR_INO and stat.S_ISDIR(e.st_mode)
    e = run(ops.lookup, CTLDIR_INO, b"ctl", ctx)
    assert e.st_ino == CTL_INO and stat.S_ISREG(e.st_mode)
    return int(run(ops.open, CTL_INO, os.O_WRONLY, ctx).fh)


def errstr(ops: Operations, pid: int = PID) -> bytes:
    ctx = Ctx(pid=pid)
    assert run(ops.lookup, CTLDIR_INO, b"errstr", ctx).st_ino == ERRSTR_INO
    fi = run(ops.open, ERRSTR_INO, os.O_RDONLY, ctx)
    try:
        return bytes(run(ops.read, fi.fh, 0, 65536))
    finally:
        run(ops.release, fi.fh)
