"""setattr and extended attributes (with XATTR_CREATE / XATTR_REPLACE)."""

from __future__ import annotations

import errno
import stat

import pytest
from fsutil import inode_records, mkdir, mkfile, raises, symlink

from agentfs.posix.fs import (
    ROOT_INO,
    XATTR_CREATE,
    XATTR_NAME_MAX,
    XATTR_REPLACE,
    XATTR_SIZE_MAX,
    FileSystem,
    SetAttr,
)

# ----------------------------------------------------------------- setattr


def test_chmod_keeps_type(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    a = fs.setattr(f.ino, SetAttr(mode=0o4711))
    assert stat.S_ISREG(a.mode)
    assert stat.S_IMODE(a.mode) == 0o4711
    # A mode with a different type in it changes only the permission bits.
    a = fs.setattr(f.ino, SetAttr(mode=stat.S_IFDIR | 0o600))
    assert stat.S_ISREG(a.mode)
    assert stat.S_IMODE(a.mode) == 0o600
    d = mkdir(fs, ROOT_INO, b"d")
    a = fs.setattr(d.ino, SetAttr(mode=0o2700))
    assert stat.S_ISDIR(a.mode) and stat.S_IMODE(a.mode) == 0o2700
    assert fs.getattr(d.ino) == a


def test_chown(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", uid=1, gid=2)
    a = fs.setattr(f.ino, SetAttr(uid=1000))
    assert (a.uid, a.gid) == (1000, 2)
    a = fs.setattr(f.ino, SetAttr(gid=3000))
    assert (a.uid, a.gid) == (1000, 3000)
    a = fs.setattr(f.ino, SetAttr(uid=0, gid=0))
    assert (a.uid, a.gid) == (0, 0)


def test_set_times(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    a = fs.setattr(f.ino, SetAttr(atime_ns=123_456_789, mtime_ns=987_654_321))
    assert a.atime_ns == 123_456_789
    assert a.mtime_ns == 987_654_321
    assert a.ctime_ns > f.ctime_ns  # changing attributes is a change
    a2 = fs.setattr(f.ino, SetAttr(ctime_ns=5))
    assert a2.ctime_ns == 5
    assert fs.getattr(f.ino) == a2


def test_setattr_nothing_touches_ctime(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"abc")
    a = fs.setattr(f.ino, SetAttr())
    assert a.ctime_ns > f.ctime_ns
    assert (a.mode, a.uid, a.gid, a.size, a.mtime_ns) == (f.mode, f.uid, f.gid, 3, a.mtime_ns)


def test_setattr_symlink_and_dir(fs: FileSystem) -> None:
    s = symlink(fs, ROOT_INO, b"l", b"t")
    a = fs.setattr(s.ino, SetAttr(uid=7, mtime_ns=1))
    assert a.uid == 7 and a.mtime_ns == 1
    assert fs.readlink(s.ino) == b"t"
    a = fs.setattr(ROOT_INO, SetAttr(uid=5, gid=6))
    assert (a.uid, a.gid, a.nlink) == (5, 6, 2)


def test_setattr_missing(fs: FileSystem) -> None:
    with raises(errno.ENOENT):
        fs.setattr(ROOT_INO + 999, SetAttr(mode=0o600))


def test_attr_changes_persist(engines, make_fs) -> None:  # type: ignore[no-untyped-def]
    e = engines()
    fs = make_fs(e)
    f = mkfile(fs, ROOT_INO, b"f")
    fs.setattr(f.ino, SetAttr(mode=0o600, uid=11, gid=12, atime_ns=1, mtime_ns=2))
    e = engines.reopen(e)
    a = make_fs(e).getattr(f.ino)
    assert (stat.S_IMODE(a.mode), a.uid, a.gid, a.atime_ns, a.mtime_ns) == (0o600, 11, 12, 1, 2)


# ----------------------------------------------------------------- xattrs


def test_xattr_set_get_list_remove(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    assert fs.listxattr(f.ino) == []
    fs.setxattr(f.ino, b"user.b", b"2")
    fs.setxattr(f.ino, b"user.a", b"1")
    fs.setxattr(f.ino, b"trusted.z", b"\x00\xff binary")
    assert fs.getxattr(f.ino, b"user.a") == b"1"
    assert fs.getxattr(f.ino, b"trusted.z") == b"\x00\xff binary"
    assert sorted(fs.listxattr(f.ino)) == [b"trusted.z", b"user.a", b"user.b"]
    fs.setxattr(f.ino, b"user.a", b"one")  # replace without flags
    assert fs.getxattr(f.ino, b"user.a") == b"one"
    fs.removexattr(f.ino, b"user.a")
    with raises(errno.ENODATA):
        fs.getxattr(f.ino, b"user.a")
    assert sorted(fs.listxattr(f.ino)) == [b"trusted.z", b"user.b"]


def test_xattr_empty_value(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    fs.setxattr(f.ino, b"user.empty", b"")
    assert fs.getxattr(f.ino, b"user.empty") == b""
    assert fs.listxattr(f.ino) == [b"user.empty"]
    with raises(errno.EEXIST):
        fs.setxattr(f.ino, b"user.empty", b"x", XATTR_CREATE)
    fs.setxattr(f.ino, b"user.empty", b"x", XATTR_REPLACE)
    assert fs.getxattr(f.ino, b"user.empty") == b"x"


def test_xattr_create_flag(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    fs.setxattr(f.ino, b"user.k", b"v1", XATTR_CREATE)
    with raises(errno.EEXIST):
        fs.setxattr(f.ino, b"user.k", b"v2", XATTR_CREATE)
    assert fs.getxattr(f.ino, b"user.k") == b"v1"


def test_xattr_replace_flag(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.ENODATA):
        fs.setxattr(f.ino, b"user.k", b"v", XATTR_REPLACE)
    assert fs.listxattr(f.ino) == []
    fs.setxattr(f.ino, b"user.k", b"v1")
    fs.setxattr(f.ino, b"user.k", b"v2", XATTR_REPLACE)
    assert fs.getxattr(f.ino, b"user.k") == b"v2"
    fs.removexattr(f.ino, b"user.k")
    with raises(errno.ENODATA):
        fs.setxattr(f.ino, b"user.k", b"v3", XATTR_REPLACE)


def test_xattr_missing(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.ENODATA):
        fs.getxattr(f.ino, b"user.none")
    with raises(errno.ENODATA):
        fs.removexattr(f.ino, b"user.none")
    with raises(errno.ENOENT):
        fs.getxattr(ROOT_INO + 999, b"user.x")
    with raises(errno.ENOENT):
        fs.setxattr(ROOT_INO + 999, b"user.x", b"v")
    with raises(errno.ENOENT):
        fs.listxattr(ROOT_INO + 999)
    with raises(errno.ENOENT):
        fs.removexattr(ROOT_INO + 999, b"user.x")


def test_xattr_limits(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    assert XATTR_NAME_MAX == 255
    assert XATTR_SIZE_MAX == 64 * 1024
    long_ok = b"user." + b"n" * (XATTR_NAME_MAX - 5)
    fs.setxattr(f.ino, long_ok, b"v")
    assert fs.getxattr(f.ino, long_ok) == b"v"
    with raises(errno.ERANGE):
        fs.setxattr(f.ino, long_ok + b"n", b"v")
    with raises(errno.ERANGE):
        fs.setxattr(f.ino, b"", b"v")
    with raises(errno.ERANGE):
        fs.setxattr(f.ino, b"user.a\0b", b"v")
    big = bytes(range(256)) * (XATTR_SIZE_MAX // 256)
    fs.setxattr(f.ino, b"user.big", big)
    assert fs.getxattr(f.ino, b"user.big") == big
    with raises(errno.E2BIG):
        fs.setxattr(f.ino, b"user.big", big + b"x")
    assert fs.getxattr(f.ino, b"user.big") == big


def test_xattr_prefix_names_distinct(fs: FileSystem) -> None:
    """Names that are prefixes of each other are separate attributes."""
    f = mkfile(fs, ROOT_INO, b"f")
    for n in (b"user.a", b"user.ab", b"user.a.b", b"user.aa"):
        fs.setxattr(f.ino, n, n.upper())
    fs.removexattr(f.ino, b"user.a")
    assert sorted(fs.listxattr(f.ino)) == [b"user.a.b", b"user.aa", b"user.ab"]
    for n in (b"user.ab", b"user.a.b", b"user.aa"):
        assert fs.getxattr(f.ino, n) == n.upper()


def test_xattr_updates_ctime(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    fs.setxattr(f.ino, b"user.k", b"v")
    a = fs.getattr(f.ino)
    assert a.ctime_ns > f.ctime_ns
    assert a.mtime_ns == f.mtime_ns
    fs.removexattr(f.ino, b"user.k")
    assert fs.getattr(f.ino).ctime_ns > a.ctime_ns


@pytest.mark.parametrize("kind", ["dir", "symlink", "root"])
def test_xattr_on_other_types(fs: FileSystem, kind: str) -> None:
    if kind == "dir":
        ino = mkdir(fs, ROOT_INO, b"d").ino
    elif kind == "symlink":
        ino = symlink(fs, ROOT_INO, b"l", b"t").ino
    else:
        ino = ROOT_INO
    fs.setxattr(ino, b"user.k", b"v")
    assert fs.getxattr(ino, b"user.k") == b"v"
    assert fs.listxattr(ino) == [b"user.k"]


def test_xattrs_per_inode(fs: FileSystem) -> None:
    a = mkfile(fs, ROOT_INO, b"a")
    b = mkfile(fs, ROOT_INO, b"b")
    fs.setxattr(a.ino, b"user.k", b"A")
    fs.setxattr(b.ino, b"user.k", b"B")
    assert fs.getxattr(a.ino, b"user.k") == b"A"
    assert fs.getxattr(b.ino, b"user.k") == b"B"
    # Hard links share them.
    fs.link(a.ino, ROOT_INO, b"a2")
    assert fs.getxattr(fs.lookup(ROOT_INO, b"a2").ino, b"user.k") == b"A"


def test_many_xattrs(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    for i in range(300):
        fs.setxattr(f.ino, b"user.%03d" % i, b"%d" % i)
    assert fs.listxattr(f.ino) == [b"user.%03d" % i for i in range(300)]
    for i in range(0, 300, 3):
        fs.removexattr(f.ino, b"user.%03d" % i)
    assert len(fs.listxattr(f.ino)) == 200


def test_xattrs_freed_with_inode(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"data")
    for i in range(10):
        fs.setxattr(f.ino, b"user.%d" % i, b"v" * 100)
    assert inode_records(fs.engine, f.ino) > 10
    fs.unlink(ROOT_INO, b"f")
    assert fs.getxattr(f.ino, b"user.3") == b"v" * 100  # still open
    fs.forget(f.ino)
    assert inode_records(fs.engine, f.ino) == 0


@pytest.mark.parametrize("name", [b"system.posix_acl_access", b"os2.x", b"noprefix", b"user",
                                  b"User.x"])
def test_xattr_unsupported_namespace(fs: FileSystem, name: bytes) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.EOPNOTSUPP):
        fs.setxattr(f.ino, name, b"v")
    assert fs.listxattr(f.ino) == []


@pytest.mark.parametrize("name", [b"user.x", b"trusted.x", b"security.selinux"])
def test_xattr_supported_namespaces(fs: FileSystem, name: bytes) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    fs.setxattr(f.ino, name, b"v")
    assert fs.getxattr(f.ino, name) == b"v"


# ----------------------------------------------------------------- atime (relatime)


def test_read_updates_atime_relatime(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"data")
    a0 = fs.getattr(f.ino)
    assert a0.atime_ns <= a0.mtime_ns
    assert fs.read(f.ino, 0, 4) == b"data"
    a1 = fs.getattr(f.ino)
    assert a1.atime_ns > a1.mtime_ns  # atime was not newer than mtime: updated
    assert (a1.mtime_ns, a1.ctime_ns, a1.size) == (a0.mtime_ns, a0.ctime_ns, a0.size)
    fs.read(f.ino, 0, 4)
    assert fs.getattr(f.ino).atime_ns == a1.atime_ns  # now newer: left alone
    fs.write(f.ino, 0, b"D")
    fs.read(f.ino, 0, 4)
    a2 = fs.getattr(f.ino)
    assert a2.atime_ns > a2.mtime_ns  # modified since: updated again


def test_read_updates_atime_older_than_a_day(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"data")
    clock = fs.clock
    now = clock()
    # atime newer than mtime and ctime, but only just: no update.
    fs.setattr(f.ino, SetAttr(mtime_ns=now - 10, ctime_ns=now - 10, atime_ns=now))
    fs.read(f.ino, 0, 1)
    assert fs.getattr(f.ino).atime_ns == now
    clock.now += 2 * 86400 * 10**9  # type: ignore[attr-defined]
    fs.read(f.ino, 0, 1)
    assert fs.getattr(f.ino).atime_ns > now + 86400 * 10**9


def test_read_in_snapshot_does_not_write(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    mkfile(fs, d.ino, b"f", b"data")
    s = fs.snapshot(d.ino, b"s")
    sf = fs.lookup(s.ino, b"f")
    assert fs.read(sf.ino, 0, 4) == b"data"  # no EROFS from the atime update
    assert fs.getattr(sf.ino).atime_ns == sf.atime_ns
