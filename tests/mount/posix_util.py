"""Helpers for the POSIX conformance tests in tests/mount/test_posix_*.py.

Everything here is plain syscalls (os, fcntl, ctypes into libc) so the same
tests run unchanged on tmpfs (AGENTFS_TEST_TARGET) and on an agentfs mount.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pickle
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
SYS_RENAMEAT2 = 316  # x86_64
SYS_GETDENTS64 = 217  # x86_64
CLOCK_REALTIME_COARSE = 5  # the clock the kernel stamps inodes with
NOBODY = 65534
BLOCK = 128 * 1024  # agentfs data block size: tests straddle it on purpose


# What every agentfs mount's root holds from the start (the agent layer's
# directory and its generated guide); tmpfs has neither.
MOUNT_OWN = {"AGENTS.md", "agents"}


def is_mount_root(path: str | os.PathLike[str]) -> bool:
    return os.path.exists(os.path.join(path, ".agentfs"))


def listdir(path: Any) -> list[Any]:
    """os.listdir (str or bytes), without the mount's own entries at an
    agentfs mount root: the names a test made, on agentfs as on tmpfs."""
    return without_own(os.listdir(path), path)


def without_own(names: list[Any], path: Any) -> list[Any]:
    """`names` listed in directory `path`, less the mount's own entries if
    `path` is an agentfs mount root."""
    if not is_mount_root(os.fsdecode(path)):
        return names
    return [n for n in names if os.fsdecode(n) not in MOUNT_OWN]


def own_subdirs(path: str | os.PathLike[str]) -> int:
    """Subdirectories the mount made itself at `path` (agents/ at the root):
    they count in its st_nlink."""
    return int(is_mount_root(path) and os.path.isdir(os.path.join(path, "agents")))


def errname(code: int | None) -> str:
    return errno.errorcode.get(code, str(code)) if code is not None else "None"


@contextlib.contextmanager
def raises_errno(*codes: int) -> Iterator[pytest.ExceptionInfo[OSError]]:
    """Expect the block to raise OSError with one of `codes`."""
    with pytest.raises(OSError) as info:
        yield info
    got = info.value.errno
    assert got in codes, (
        f"expected {'/'.join(errname(c) for c in codes)}, got {errname(got)}: {info.value}"
    )


@contextlib.contextmanager
def opened(path: os.PathLike[str] | str | bytes, flags: int, mode: int = 0o644,
           *, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(path, flags, mode, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(n)


def write_file(path: os.PathLike[str] | str, data: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(data)


def read_file(path: os.PathLike[str] | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """pread until `size` bytes or EOF (a single pread may legally be short)."""
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def wait_clock_past(ns: int) -> None:
    """Sleep until the kernel's coarse clock is past `ns`, so a timestamp taken
    afterwards is strictly greater than one equal to `ns`."""
    deadline = time.monotonic() + 2
    while time.clock_gettime_ns(CLOCK_REALTIME_COARSE) <= ns:
        assert time.monotonic() < deadline, "coarse clock did not advance"
        time.sleep(0.001)
    # the daemon may stamp with a fine clock; be past it as well
    while time.time_ns() <= ns:
        time.sleep(0.001)


def _check(ret: int) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: os.PathLike[str] | str, atime: tuple[int, int] | None,
              mtime: tuple[int, int] | None, *, follow_symlinks: bool = True) -> None:
    """utimensat(2). Each time is (sec, nsec); nsec may be UTIME_NOW or UTIME_OMIT.
    Passing None for both sends a NULL times pointer (both set to now)."""
    flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    if atime is None and mtime is None:
        times = None
    else:
        assert atime is not None and mtime is not None
        times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _check(libc.utimensat(AT_FDCWD, os.fsencode(path), times, flags))


def renameat2(old: os.PathLike[str] | str, new: os.PathLike[str] | str, flags: int) -> None:
    o, n = os.fsencode(old), os.fsencode(new)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        ret = fn(AT_FDCWD, o, AT_FDCWD, n, ctypes.c_uint(flags))
    else:
        ret = libc.syscall(ctypes.c_long(SYS_RENAMEAT2), ctypes.c_int(AT_FDCWD), o,
                           ctypes.c_int(AT_FDCWD), n, ctypes.c_uint(flags))
    _check(ret)


def getxattr_raw(path: os.PathLike[str] | str, name: str, size: int) -> tuple[int, bytes]:
    """getxattr(2) with an explicit buffer size: returns (length, data)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    libc.getxattr.restype = ctypes.c_ssize_t
    ret = libc.getxattr(os.fsencode(path), name.encode(), buf if size else None,
                        ctypes.c_size_t(size))
    _check(ret)
    return ret, buf.raw[:ret] if size else b""


def getdents(fd: int, bufsize: int) -> list[tuple[int, int, int, bytes]]:
    """One getdents64(2) call: [(d_ino, d_off, d_type, name), ...]; [] at the end."""
    buf = ctypes.create_string_buffer(bufsize)
    n = libc.syscall(ctypes.c_long(SYS_GETDENTS64), ctypes.c_int(fd), buf,
                     ctypes.c_uint(bufsize))
    _check(n)
    raw, out, pos = buf.raw, [], 0
    while pos < n:
        d_ino = int.from_bytes(raw[pos:pos + 8], "little")
        d_off = int.from_bytes(raw[pos + 8:pos + 16], "little", signed=True)
        reclen = int.from_bytes(raw[pos + 16:pos + 18], "little")
        d_type = raw[pos + 18]
        name = raw[pos + 19:pos + reclen].split(b"\0", 1)[0]
        out.append((d_ino, d_off, d_type, name))
        pos += reclen
    return out


def run_in_child(cwd: Path, fn: Callable[[], Any], *, as_nobody: bool = True) -> Any:
    """Run `fn` in a forked child with cwd `cwd` (entered while still root, so the
    private parent directories of the mount need not be searchable), optionally
    as uid/gid 65534 with no supplementary groups. Returns fn's (picklable)
    result; an OSError in the child is re-raised here with the same errno."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(r)
            try:
                os.chdir(cwd)
                if as_nobody:
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                res: tuple[Any, ...] = ("ok", fn())
            except OSError as e:
                res = ("oserror", e.errno, str(e))
            except BaseException as e:
                res = ("exc", repr(e))
            with os.fdopen(w, "wb") as f:
                f.write(pickle.dumps(res))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    res = pickle.loads(data)
    if res[0] == "oserror":
        raise OSError(res[1], res[2])
    if res[0] == "exc":
        raise AssertionError(f"child raised {res[1]}")
    return res[1]


def mount_options(path: os.PathLike[str] | str) -> set[str]:
    """Per-mount options (mountinfo field 6) of the mount holding `path`."""
    target = os.path.realpath(path)
    best, opts = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mp = fields[4]
            if (target == mp or target.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                best, opts = mp, fields[5]
    return set(opts.split(","))
