"""The pyfuse3 Operations layer, called directly (no kernel, no mount).

Each test drives the async handlers with trio.run on a FileSystem over the
in-memory engine: lookup counting and forget, errno mapping (FsError, NoSpace,
unexpected exceptions), the control file and errstr, and `.snapshots`.
readdir is exercised by replacing pyfuse3.readdir_reply (it needs a kernel
token) with a recorder. fsck runs on the store after every test.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
from agentfs.daemon.operations import CTL_INO, CTLDIR_INO, ERRSTR_INO, VIRTUAL, Operations
from opsutil import (
    CTX,
    OTHER_PID,
    PID,
    Token,
    create,
    ctl_open,
    errstr,
    fields,
    fuse_errno,
    listdir,
    mkdir,
    run,
)

from agentfs.fsck import check_store
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.storage.kv import MemoryEngine, NoSpace

# ----------------------------------------------------------------- lookup counts


def test_lookup_counts(ops: Operations, fs: FileSystem) -> None:
    ino, fh = create(ops, ROOT_INO, b"f", b"x")
    assert ops.lookups[ino] == 1
    e = run(ops.lookup, ROOT_INO, b"f", CTX)
    assert e.st_ino == ino
    assert ops.lookups[ino] == 2
    d = mkdir(ops, ROOT_INO, b"d")
    assert ops.lookups[d] == 1
    n = run(ops.mknod, ROOT_INO, b"fifo", stat.S_IFIFO | 0o600, 0, CTX).st_ino
    assert ops.lookups[n] == 1
    s = run(ops.symlink, ROOT_INO, b"l", b"f", CTX).st_ino
    assert ops.lookups[s] == 1
    assert run(ops.readlink, s, CTX) == b"f"
    e = run(ops.link, ino, d, b"g", CTX)
    assert e.st_ino == ino and e.st_nlink == 2
    assert ops.lookups[ino] == 3
    run(ops.lookup, d, b"g", CTX)
    assert ops.lookups[ino] == 4
    # A failed lookup takes no reference.
    assert fuse_errno(ops.lookup, ROOT_INO, b"missing", CTX) == errno.ENOENT
    assert set(ops.lookups) == {ino, d, n, s}
    assert ROOT_INO not in ops.lookups
    run(ops.release, fh)


def test_getattr_entryfields(ops: Operations) -> None:
    ino, fh = create(ops, ROOT_INO, b"f", b"x" * 1000)
    e = run(ops.getattr, ino, CTX)
    assert e.st_ino == ino
    assert stat.S_ISREG(e.st_mode) and stat.S_IMODE(e.st_mode) == 0o644
    assert (e.st_uid, e.st_gid, e.st_nlink, e.st_size) == (1000, 1000, 1, 1000)
    assert e.st_blocks == 2  # 1000 stored bytes in 512-byte units, rounded up
    assert e.entry_timeout > 0 and e.attr_timeout > 0
    r = run(ops.getattr, ROOT_INO, CTX)
    assert stat.S_ISDIR(r.st_mode)
    run(ops.release, fh)


def test_forget_frees_unlinked_only_at_zero(ops: Operations, fs: FileSystem) -> None:
    ino, fh = create(ops, ROOT_INO, b"f", b"data")
    run(ops.lookup, ROOT_INO, b"f", CTX)
    run(ops.lookup, ROOT_INO, b"f", CTX)
    assert ops.lookups[ino] == 3
    run(ops.unlink, ROOT_INO, b"f", CTX)
    run(ops.forget, [(ino, 1)])
    assert ops.lookups[ino] == 2
    assert fs.getattr(ino).nlink == 0  # still there: the kernel holds references
    assert run(ops.read, fh, 0, 10) == b"data"
    run(ops.forget, [(ino, 2)])
    assert ino not in ops.lookups
    with pytest.raises(Exception) as info:
        fs.getattr(ino)
    assert getattr(info.value, "errno", None) == errno.ENOENT
    run(ops.release, fh)


def test_forget_of_linked_inode_keeps_it(ops: Operations, fs: FileSystem) -> None:
    ino, fh = create(ops, ROOT_INO, b"f", b"data")
    run(ops.release, fh)
    run(ops.forget, [(ino, 1)])
    assert ino not in ops.lookups
    assert fs.getattr(ino).nlink == 1
    e = run(ops.lookup, ROOT_INO, b"f", CTX)
    assert e.st_ino == ino
    assert ops.lookups[ino] == 1


def test_forget_many_at_once(ops: Operations, fs: FileSystem) -> None:
    inos = [create(ops, ROOT_INO, b"f%d" % i)[0] for i in range(10)]
    for i in range(10):
        run(ops.unlink, ROOT_INO, b"f%d" % i, CTX)
    run(ops.forget, [(ino, 1) for ino in inos[:5]] + [(inos[5], 99)])
    for ino in inos[:6]:
        with pytest.raises(Exception):  # noqa: B017 - FsError(ENOENT)
            fs.getattr(ino)
    for ino in inos[6:]:
        assert fs.getattr(ino).nlink == 0
    run(ops.forget, [(ino, 1) for ino in inos[6:]])
    assert ops.lookups == {}


def test_forget_removed_dir(ops: Operations, fs: FileSystem) -> None:
    d = mkdir(ops, ROOT_INO, b"d")
    run(ops.rmdir, ROOT_INO, b"d", CTX)
    assert fs.getattr(d).nlink == 0
    run(ops.forget, [(d, 1)])
    assert fuse_errno(ops.getattr, d, CTX) == errno.ENOENT


def test_forget_survives_model_errors(ops: Operations, fs: FileSystem,
                                      monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    ino, _ = create(ops, ROOT_INO, b"f")

    def boom(ino: int) -> None:
        raise RuntimeError("forget exploded")

    monkeypatch.setattr(fs, "forget", boom)
    with caplog.at_level(logging.ERROR, logger="agentfs.daemon"):
        run(ops.forget, [(ino, 1)])  # must not raise: forget has no reply
    assert "forget exploded" in caplog.text


def test_readdir_counts_lookups_not_dots(ops: Operations, readdir_recorder: None) -> None:
    d = mkdir(ops, ROOT_INO, b"d")
    inos = {create(ops, d, b"f%d" % i)[0] for i in range(5)}
    sub = mkdir(ops, d, b"sub")
    before = dict(ops.lookups)
    tok = listdir(ops, d)
    names = [n for n, _, _ in tok.entries]
    assert names[:2] == [b".", b".."]
    assert sorted(names[2:]) == sorted([b"f%d" % i for i in range(5)] + [b"sub"])
    dot, dotdot = tok.entries[0][1], tok.entries[1][1]
    assert (dot, dotdot) == (d, ROOT_INO)
    for ino in inos | {sub}:
        assert ops.lookups[ino] == before[ino] + 1
    assert ops.lookups.get(d) == before[d]  # '.' takes no reference
    assert ROOT_INO not in ops.lookups


def test_readdir_resume_and_full_buffer(ops: Operations, readdir_recorder: None) -> None:
    d = mkdir(ops, ROOT_INO, b"d")
    for i in range(40):
        create(ops, d, b"e%02d" % i)
    base = dict(ops.lookups)
    fh = run(ops.opendir, d, CTX)
    seen: list[bytes] = []
    start = 0
    while True:
        tok = Token(room=7)
        run(ops.readdir, fh, start, tok)
        if not tok.entries:
            break
        seen += [n for n, _, _ in tok.entries]
        start = tok.entries[-1][2]
    run(ops.releasedir, fh)
    assert seen[:2] == [b".", b".."]
    assert sorted(seen[2:]) == sorted(b"e%02d" % i for i in range(40))
    # Every entry the kernel accepted got exactly one reference; refused ones none.
    assert ops.lookups[d] == base[d]
    for ino, n in ops.lookups.items():
        if ino != d:
            assert n == base[ino] + 1


def test_readdir_of_snapshots_and_ctl_dir(ops: Operations, readdir_recorder: None) -> None:
    d = mkdir(ops, ROOT_INO, b"d")
    sd = run(ops.lookup, d, b".snapshots", CTX).st_ino
    run(ops.mkdir, sd, b"s1", 0o755, CTX)
    run(ops.mkdir, sd, b"s2", 0o755, CTX)
    assert sorted(n for n, _, _ in listdir(ops, sd).entries) == [b"s1", b"s2"]
    assert [n for n, _, _ in listdir(ops, CTLDIR_INO).entries] == [b"ctl", b"errstr", b"events",
                                                                   b"lineage"]


def test_opendir_errors(ops: Operations) -> None:
    ino, _ = create(ops, ROOT_INO, b"f")
    assert fuse_errno(ops.opendir, ino, CTX) == errno.ENOTDIR
    assert fuse_errno(ops.opendir, CTL_INO, CTX) == errno.ENOTDIR
    assert fuse_errno(ops.opendir, ROOT_INO + 999, CTX) == errno.ENOENT


# ----------------------------------------------------------------- errno mapping


def test_errors_map_to_errnos(ops: Operations, fs: FileSystem) -> None:
    d = mkdir(ops, ROOT_INO, b"d")
    f, _ = create(ops, d, b"f", b"x")
    assert fuse_errno(ops.mkdir, ROOT_INO, b"d", 0o755, CTX) == errno.EEXIST
    assert fuse_errno(ops.rmdir, ROOT_INO, b"d", CTX) == errno.ENOTEMPTY
    assert fuse_errno(ops.unlink, ROOT_INO, b"d", CTX) == errno.EISDIR
    assert fuse_errno(ops.rmdir, d, b"f", CTX) == errno.ENOTDIR
    assert fuse_errno(ops.lookup, f, b"x", CTX) == errno.ENOTDIR
    assert fuse_errno(ops.lookup, ROOT_INO, b"n" * 256, CTX) == errno.ENAMETOOLONG
    assert fuse_errno(ops.create, ROOT_INO, b"n" * 256, 0o644, 0, CTX) == errno.ENAMETOOLONG
    assert fuse_errno(ops.rename, ROOT_INO, b"d", d, b"x", 0, CTX) == errno.EINVAL
    assert fuse_errno(ops.rename, ROOT_INO, b"nope", d, b"x", 0, CTX) == errno.ENOENT
    assert fuse_errno(ops.rename, d, b"f", ROOT_INO, b"d", 0, CTX) == errno.EISDIR
    assert fuse_errno(ops.link, d, ROOT_INO, b"dl", CTX) == errno.EPERM
    assert fuse_errno(ops.getxattr, f, b"user.none", CTX) == errno.ENODATA
    assert fuse_errno(ops.open, d, os.O_RDONLY, CTX) == errno.EISDIR
    assert fuse_errno(ops.readlink, f, CTX) == errno.EINVAL
    assert fuse_errno(ops.getattr, ROOT_INO + 999, CTX) == errno.ENOENT
    assert fuse_errno(ops.mkdir, ROOT_INO, b".agentfs", 0o755, CTX) == errno.EEXIST
    assert fuse_errno(ops.mkdir, d, b".snapshots", 0o755, CTX) == errno.EEXIST


def test_rename_flags_pass_through(ops: Operations, fs: FileSystem) -> None:
    a, _ = create(ops, ROOT_INO, b"a", b"A")
    b, _ = create(ops, ROOT_INO, b"b", b"B")
    assert fuse_errno(ops.rename, ROOT_INO, b"a", ROOT_INO, b"b", 1, CTX) == errno.EEXIST
    run(ops.rename, ROOT_INO, b"a", ROOT_INO, b"b", 2, CTX)
    assert run(ops.lookup, ROOT_INO, b"a", CTX).st_ino == b
    assert run(ops.lookup, ROOT_INO, b"b", CTX).st_ino == a
    assert fuse_errno(ops.rename, ROOT_INO, b"a", ROOT_INO, b"b", 3, CTX) == errno.EINVAL


def test_exdev_and_erofs(ops: Operations, fs: FileSystem) -> None:
    src = mkdir(ops, ROOT_INO, b"src")
    f, _ = create(ops, src, b"f", b"x")
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    assert fuse_errno(ops.link, f, fork, b"l", CTX) == errno.EXDEV
    assert fuse_errno(ops.rename, src, b"f", fork, b"g", 0, CTX) == errno.EXDEV
    snap = fs.snapshot(src, b"s").ino
    sf = run(ops.lookup, snap, b"f", CTX).st_ino
    fi = run(ops.open, sf, os.O_RDONLY, CTX)
    assert run(ops.read, fi.fh, 0, 10) == b"x"
    assert fuse_errno(ops.write, fi.fh, 0, b"y") == errno.EROFS
    assert fuse_errno(ops.create, snap, b"new", 0o644, 0, CTX) == errno.EROFS
    assert fuse_errno(ops.unlink, snap, b"f", CTX) == errno.EROFS
    assert fuse_errno(ops.setxattr, sf, b"user.x", b"v", CTX) == errno.EROFS


def test_unexpected_exception_becomes_eio_and_is_logged(
        ops: Operations, fs: FileSystem, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("the model broke")

    monkeypatch.setattr(fs, "getattr", broken)
    monkeypatch.setattr(fs, "create", broken)
    with caplog.at_level(logging.ERROR, logger="agentfs.daemon"):
        assert fuse_errno(ops.getattr, ROOT_INO, CTX) == errno.EIO
        assert fuse_errno(ops.mkdir, ROOT_INO, b"x", 0o755, CTX) == errno.EIO
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)
    assert "getattr" in errors[0].getMessage()
    assert "mkdir" in errors[1].getMessage()
    assert "the model broke" in caplog.text
    assert ops.lookups == {}


def test_assertion_error_in_model_becomes_eio(ops: Operations, fs: FileSystem,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object) -> None:
        raise AssertionError("invariant violated")

    monkeypatch.setattr(fs, "lookup", broken)
    with caplog.at_level(logging.ERROR, logger="agentfs.daemon"):
        assert fuse_errno(ops.lookup, ROOT_INO, b"x", CTX) == errno.EIO
    assert "invariant violated" in caplog.text


def test_nospace_becomes_enospc(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fs = FileSystem(MemoryEngine(limit=300_000))
    ops = Operations(fs, str(tmp_path))
    ino, fh = create(ops, ROOT_INO, b"f")
    off = 0
    with caplog.at_level(logging.WARNING, logger="agentfs.daemon"), \
            pytest.raises(pyfuse3.FUSEError) as info:
        for _ in range(1000):
            run(ops.write, fh, off, b"x" * 10_000)
            off += 10_000
    assert info.value.errno == errno.ENOSPC
    assert "ENOSPC" in caplog.text or "full" in caplog.text
    assert run(ops.getattr, ino, CTX).st_size == off  # the failed write left nothing
    # Freeing space makes writes work again.
    attr = pyfuse3.EntryAttributes()
    attr.st_size = 0
    run(ops.setattr, ino, attr, fields(update_size=True), fh, CTX)
    assert run(ops.write, fh, 0, b"again") == 5
    report = check_store(fs.engine)
    assert not report.problems


def test_nospace_from_model_call(ops: Operations, fs: FileSystem,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object) -> None:
        raise NoSpace()

    monkeypatch.setattr(fs, "create", full)
    assert fuse_errno(ops.mkdir, ROOT_INO, b"x", 0o755, CTX) == errno.ENOSPC
    assert fuse_errno(ops.create, ROOT_INO, b"x", 0o644, 0, CTX) == errno.ENOSPC
    assert ops.lookups == {}
    assert ops.handles == {}


def test_nospace_retried_after_grow(ops: Operations, fs: FileSystem,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """If the engine can grow, the request is redone instead of failing."""
    calls = {"create": 0, "grow": 0}
    real_create = fs.create

    def flaky(*args: Any, **kw: Any) -> Any:
        calls["create"] += 1
        if calls["create"] == 1:
            raise NoSpace()
        return real_create(*args, **kw)

    def grow() -> bool:
        calls["grow"] += 1
        return True

    monkeypatch.setattr(fs, "create", flaky)
    monkeypatch.setattr(fs.engine, "grow", grow, raising=False)
    e = run(ops.mkdir, ROOT_INO, b"d", 0o755, CTX)
    assert calls == {"create": 2, "grow": 1}
    assert ops.lookups[e.st_ino] == 1
    assert fs.lookup(ROOT_INO, b"d").ino == e.st_ino


def test_nospace_when_grow_gives_up(ops: Operations, fs: FileSystem,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    grows = []

    def always_full(*args: object) -> None:
        raise NoSpace()

    def grow() -> bool:
        grows.append(1)
        return len(grows) < 3

    monkeypatch.setattr(fs, "create", always_full)
    monkeypatch.setattr(fs.engine, "grow", grow, raising=False)
    assert fuse_errno(ops.mkdir, ROOT_INO, b"d", 0o755, CTX) == errno.ENOSPC
    assert len(grows) == 3


# ----------------------------------------------------------------- files and attributes


def test_read_write_through_handles(ops: Operations) -> None:
    ino, fh = create(ops, ROOT_INO, b"f")
    assert run(ops.write, fh, 0, b"hello ") == 6
    assert run(ops.write, fh, 6, b"world") == 5
    run(ops.flush, fh)
    run(ops.fsync, fh, False)
    run(ops.release, fh)
    assert fh not in ops.handles
    fi = run(ops.open, ino, os.O_RDONLY, CTX)
    assert run(ops.read, fi.fh, 0, 100) == b"hello world"
    assert run(ops.read, fi.fh, 6, 3) == b"wor"
    run(ops.release, fi.fh)
    fi = run(ops.open, ino, os.O_WRONLY | os.O_TRUNC, CTX)
    assert run(ops.getattr, ino, CTX).st_size == 0
    run(ops.release, fi.fh)
    assert ops.handles == {}


def test_setattr(ops: Operations) -> None:
    ino, fh = create(ops, ROOT_INO, b"f", b"0123456789")
    attr = pyfuse3.EntryAttributes()
    attr.st_size = 4
    attr.st_mode = stat.S_IFREG | 0o600
    attr.st_uid = 7
    attr.st_mtime_ns = 1_000_000_000
    e = run(ops.setattr, ino, attr,
            fields(update_size=True, update_mode=True, update_uid=True, update_mtime=True),
            fh, CTX)
    assert e.st_size == 4
    assert stat.S_IMODE(e.st_mode) == 0o600 and stat.S_ISREG(e.st_mode)
    assert e.st_uid == 7
    assert e.st_gid == 1000  # not asked to change
    assert e.st_mtime_ns == 1_000_000_000
    assert run(ops.read, fh, 0, 100) == b"0123"


def test_statfs(ops: Operations) -> None:
    s = run(ops.statfs, CTX)
    assert s.f_namemax == 255
    assert s.f_bsize > 0 and s.f_frsize > 0
    assert 0 <= s.f_bavail <= s.f_blocks
    assert s.f_bfree == s.f_bavail
    assert s.f_files > 0 and s.f_ffree > 0


def test_xattrs_through_ops(ops: Operations) -> None:
    ino, _ = create(ops, ROOT_INO, b"f")
    run(ops.setxattr, ino, b"user.k", b"v", CTX)
    assert run(ops.getxattr, ino, b"user.k", CTX) == b"v"
    assert run(ops.listxattr, ino, CTX) == [b"user.k"]
    run(ops.removexattr, ino, b"user.k", CTX)
    assert run(ops.listxattr, ino, CTX) == []
    assert fuse_errno(ops.removexattr, ino, b"user.k", CTX) == errno.ENODATA


def test_virtual_inodes_refuse_changes(ops: Operations) -> None:
    for ino in (CTL_INO, ERRSTR_INO, CTLDIR_INO):
        assert fuse_errno(ops.setxattr, ino, b"user.k", b"v", CTX) == errno.ENOTSUP
        assert fuse_errno(ops.getxattr, ino, b"user.k", CTX) == errno.ENODATA
        assert run(ops.listxattr, ino, CTX) == []
    attr = pyfuse3.EntryAttributes()
    assert fuse_errno(ops.setattr, ERRSTR_INO, attr, fields(update_mode=True), None,
                      CTX) == errno.EPERM
    assert fuse_errno(ops.setattr, CTLDIR_INO, attr, fields(update_size=True), None,
                      CTX) == errno.EPERM
    # `echo cmd > ctl` truncates first: allowed, and changes nothing.
    e = run(ops.setattr, CTL_INO, attr, fields(update_size=True), None, CTX)
    assert e.st_ino == CTL_INO
    assert fuse_errno(ops.mkdir, CTLDIR_INO, b"x", 0o755, CTX) == errno.EPERM
    assert fuse_errno(ops.create, CTLDIR_INO, b"x", 0o644, 0, CTX) == errno.EPERM
    assert fuse_errno(ops.unlink, CTLDIR_INO, b"ctl", CTX) == errno.EPERM
    assert fuse_errno(ops.rename, CTLDIR_INO, b"ctl", ROOT_INO, b"x", 0, CTX) == errno.EPERM
    assert fuse_errno(ops.link, CTL_INO, ROOT_INO, b"x", CTX) == errno.EPERM
    assert fuse_errno(ops.open, CTLDIR_INO, os.O_RDONLY, CTX) == errno.EISDIR
    assert fuse_errno(ops.lookup, CTLDIR_INO, b"nope", CTX) == errno.ENOENT


# ----------------------------------------------------------------- control file


def test_control_fork(ops: Operations, fs: FileSystem) -> None:
    a = mkdir(ops, ROOT_INO, b"a")
    create(ops, a, b"f", b"in a")
    fh = ctl_open(ops)
    line = b"fork /a /b\n"
    assert run(ops.write, fh, 0, line) == len(line)
    run(ops.flush, fh)
    run(ops.release, fh)
    b = run(ops.lookup, ROOT_INO, b"b", CTX).st_ino
    assert b != a
    f = run(ops.lookup, b, b"f", CTX).st_ino
    fi = run(ops.open, f, os.O_RDONLY, CTX)
    assert run(ops.read, fi.fh, 0, 100) == b"in a"
    # A fork: writes in /b stay out of /a.
    fi2 = run(ops.open, f, os.O_WRONLY, CTX)
    run(ops.write, fi2.fh, 0, b"IN B")
    assert fs.read(fs.path_ino("a/f"), 0, 100) == b"in a"
    # The status file tells what happened last.
    fi3 = run(ops.open, CTL_INO, os.O_RDONLY, CTX)
    status = run(ops.read, fi3.fh, 0, 4096)
    assert b"forked" in status
    for h in (fi.fh, fi2.fh, fi3.fh):
        run(ops.release, h)


def test_control_bad_command_sets_errstr(ops: Operations) -> None:
    fh = ctl_open(ops)
    assert fuse_errno(ops.write, fh, 0, b"frobnicate /a\n") == errno.EINVAL
    msg = errstr(ops)
    assert b"frobnicate" in msg
    assert b"unknown command" in msg
    run(ops.release, fh)


def test_control_failed_fork_reason(ops: Operations) -> None:
    fh = ctl_open(ops)
    assert fuse_errno(ops.write, fh, 0, b"fork /missing /b\n") == errno.ENOENT
    assert b"fork /missing /b" in errstr(ops)
    mkdir(ops, ROOT_INO, b"a")
    mkdir(ops, ROOT_INO, b"b")
    assert fuse_errno(ops.write, fh, 0, b"fork /a /b\n") == errno.EEXIST
    assert b"fork /a /b" in errstr(ops)
    assert fuse_errno(ops.write, fh, 0, b"fork /a\n") == errno.EINVAL
    assert b"usage" in errstr(ops)
    run(ops.release, fh)


def test_errstr_is_per_pid(ops: Operations) -> None:
    fh = ctl_open(ops, PID)
    fh2 = ctl_open(ops, OTHER_PID)
    assert fuse_errno(ops.write, fh, 0, b"bogus-one\n") == errno.EINVAL
    assert fuse_errno(ops.write, fh2, 0, b"bogus-two\n") == errno.EINVAL
    assert b"bogus-one" in errstr(ops, PID)
    assert b"bogus-two" not in errstr(ops, PID)
    assert b"bogus-two" in errstr(ops, OTHER_PID)
    run(ops.release, fh)
    run(ops.release, fh2)


def test_control_partial_lines_and_flush(ops: Operations, fs: FileSystem) -> None:
    mkdir(ops, ROOT_INO, b"a")
    fh = ctl_open(ops)
    run(ops.write, fh, 0, b"fork /a ")
    assert b"b" not in [e.name for e in fs.readdir(ROOT_INO)]
    run(ops.write, fh, 8, b"/b\nfork /a /c")
    assert fs.path_ino("b")
    run(ops.flush, fh)  # close without a trailing newline still runs the command
    assert fs.path_ino("c")
    run(ops.release, fh)


def test_control_snapshot_and_detach(ops: Operations, fs: FileSystem) -> None:
    a = mkdir(ops, ROOT_INO, b"a")
    create(ops, a, b"f", b"x")
    fh = ctl_open(ops)
    run(ops.write, fh, 0, b"snapshot /a s1\nfork /a /b\n")
    assert [n for n, _ in fs.snapshots(a)] == [b"s1"]
    assert not ops.gc_wanted
    run(ops.write, fh, 0, b"detach /b\n")
    assert ops.gc_wanted
    with pytest.raises(Exception):  # noqa: B017 - FsError(ENOENT)
        fs.path_ino("b")
    run(ops.write, fh, 0, b"unsnapshot /a s1\ngc\nsync\n")
    assert fs.snapshots(a) == []
    run(ops.release, fh)


# ----------------------------------------------------------------- .snapshots


def test_snapshots_dir(ops: Operations, fs: FileSystem) -> None:
    d = mkdir(ops, ROOT_INO, b"d")
    f, fh = create(ops, d, b"f", b"v1")
    e = run(ops.lookup, d, b".snapshots", CTX)
    sd = e.st_ino
    assert sd & VIRTUAL
    assert stat.S_ISDIR(e.st_mode)
    assert sd not in ops.lookups
    assert run(ops.lookup, d, b".snapshots", CTX).st_ino == sd  # stable
    assert run(ops.getattr, sd, CTX).st_ino == sd
    # mkdir makes a snapshot.
    s = run(ops.mkdir, sd, b"before", 0o755, CTX)
    assert ops.lookups[s.st_ino] == 1
    assert [n for n, _ in fs.snapshots(d)] == [b"before"]
    run(ops.write, fh, 0, b"v2")
    again = run(ops.lookup, sd, b"before", CTX)
    assert again.st_ino == s.st_ino
    assert ops.lookups[s.st_ino] == 2
    sf = run(ops.lookup, s.st_ino, b"f", CTX).st_ino
    fi = run(ops.open, sf, os.O_RDONLY, CTX)
    assert run(ops.read, fi.fh, 0, 10) == b"v1"
    run(ops.release, fi.fh)
    assert fuse_errno(ops.mkdir, sd, b"before", 0o755, CTX) == errno.EEXIST
    # Only directories (snapshots) live there.
    assert fuse_errno(ops.create, sd, b"x", 0o644, 0, CTX) == errno.EPERM
    assert fuse_errno(ops.mknod, sd, b"x", stat.S_IFIFO | 0o600, 0, CTX) == errno.EPERM
    assert fuse_errno(ops.symlink, sd, b"x", b"t", CTX) == errno.EPERM
    assert fuse_errno(ops.unlink, sd, b"before", CTX) == errno.EISDIR
    assert fuse_errno(ops.rename, sd, b"before", sd, b"after", 0, CTX) == errno.EPERM
    assert fuse_errno(ops.link, f, sd, b"x", CTX) == errno.EPERM
    # rmdir deletes the snapshot.
    run(ops.rmdir, sd, b"before", CTX)
    assert ops.gc_wanted
    assert fs.snapshots(d) == []
    assert fuse_errno(ops.lookup, sd, b"before", CTX) == errno.ENOENT
    assert fuse_errno(ops.rmdir, sd, b"before", CTX) == errno.ENOENT
    run(ops.forget, [(s.st_ino, 2), (sf, 1)])
    run(ops.release, fh)


def test_snapshots_dir_of_missing_dir(ops: Operations) -> None:
    assert fuse_errno(ops.lookup, ROOT_INO + 999, b".snapshots", CTX) == errno.ENOENT


def test_snapshot_inside_snapshot_is_erofs(ops: Operations) -> None:
    d = mkdir(ops, ROOT_INO, b"d")
    sd = run(ops.lookup, d, b".snapshots", CTX).st_ino
    s = run(ops.mkdir, sd, b"s", 0o755, CTX).st_ino
    ssd = run(ops.lookup, s, b".snapshots", CTX).st_ino
    assert fuse_errno(ops.mkdir, ssd, b"nested", 0o755, CTX) == errno.EROFS
    assert fuse_errno(ops.mkdir, s, b"x", 0o755, CTX) == errno.EROFS


def test_root_snapshots(ops: Operations, readdir_recorder: None) -> None:
    sd = run(ops.lookup, ROOT_INO, b".snapshots", CTX).st_ino
    create(ops, ROOT_INO, b"f", b"x")
    s = run(ops.mkdir, sd, b"whole", 0o755, CTX).st_ino
    names = sorted(n for n, _, _ in listdir(ops, s).entries)
    assert names == [b".", b"..", b"agents", b"f"]  # agents/: made at mount


def test_open_file_in_detached_fork(ops: Operations, fs: FileSystem) -> None:
    """A process may hold a file open in a fork that is detached and collected:
    its requests fail cleanly (ESTALE), never with EIO."""
    from agentfs.storage.gc import collect

    a = mkdir(ops, ROOT_INO, b"a")
    create(ops, a, b"f", b"data")
    fh = ctl_open(ops)
    run(ops.write, fh, 0, b"fork /a /b\n")
    b = run(ops.lookup, ROOT_INO, b"b", CTX).st_ino
    f = run(ops.lookup, b, b"f", CTX).st_ino
    fi = run(ops.open, f, os.O_RDWR, CTX)
    run(ops.write, fh, 0, b"detach /b\n")
    assert ops.gc_wanted
    assert fuse_errno(ops.lookup, ROOT_INO, b"b", CTX) == errno.ENOENT
    collect(fs.store)
    assert fuse_errno(ops.read, fi.fh, 0, 10) == errno.ESTALE
    assert fuse_errno(ops.getattr, f, CTX) == errno.ESTALE
    assert fuse_errno(ops.write, fi.fh, 0, b"x") == errno.ESTALE
    run(ops.forget, [(f, 1), (b, 1)])
    run(ops.release, fi.fh)
    run(ops.release, fh)


def test_write_to_errstr_is_ebadf(ops: Operations) -> None:
    fi = run(ops.open, ERRSTR_INO, os.O_RDONLY, CTX)
    assert fuse_errno(ops.write, fi.fh, 0, b"x") == errno.EBADF
    run(ops.release, fi.fh)


def test_line_buffer_joins_pieces_and_bounds_a_line() -> None:
    from agentfs.daemon.lines import LineBuffer

    from agentfs.errors import FsError

    b = LineBuffer(limit=10)
    assert b.feed(b"ab") == [] and b
    assert b.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert b.take() == b"f" and not b
    assert b.feed(b"x" * 10) == []
    with pytest.raises(FsError) as e:
        b.feed(b"y")
    assert e.value.errno == errno.EINVAL and "longer than 10 bytes" in e.value.message
    assert not b  # nothing of the refused line is kept
    assert b.feed(b"z" * 50 + b"\n") == [b"z" * 50]  # a whole line in one piece is the caller's
