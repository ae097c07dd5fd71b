"""The model's namespace: create/mknod/mkdir/symlink/lookup/unlink/rmdir/link,
their errors, link counts and setgid inheritance. Both engines; fsck after each."""

from __future__ import annotations

import errno
import stat

import pytest
from fsutil import cat, mkdir, mkfile, names, raises, symlink

from agentfs.posix.fs import NAME_MAX, ROOT_INO, FileSystem

# ----------------------------------------------------------------- root


def test_fresh_root(fs: FileSystem) -> None:
    root = fs.getattr(ROOT_INO)
    assert root.ino == ROOT_INO
    assert stat.S_ISDIR(root.mode)
    assert root.nlink == 2
    assert names(fs, ROOT_INO) == []


def test_root_persists_and_is_not_reformatted(engines, make_fs) -> None:  # type: ignore[no-untyped-def]
    e = engines()
    fs = make_fs(e)
    f = mkfile(fs, ROOT_INO, b"f", b"data")
    root_ctime = fs.getattr(ROOT_INO).ctime_ns
    e = engines.reopen(e)
    fs2 = make_fs(e)
    assert names(fs2, ROOT_INO) == [b"f"]
    assert cat(fs2, f.ino) == b"data"
    assert fs2.getattr(ROOT_INO).ctime_ns == root_ctime


def test_inode_numbers_not_reused_after_reopen(engines, make_fs) -> None:  # type: ignore[no-untyped-def]
    e = engines()
    fs = make_fs(e)
    first = {mkfile(fs, ROOT_INO, b"f%d" % i).ino for i in range(5)}
    e = engines.reopen(e)
    fs2 = make_fs(e)
    later = {mkfile(fs2, ROOT_INO, b"g%d" % i).ino for i in range(5)}
    assert not first & later
    assert len(later) == 5


# ----------------------------------------------------------------- create / lookup


def test_create_file(fs: FileSystem) -> None:
    a = fs.create(ROOT_INO, b"f", stat.S_IFREG | 0o640, 1000, 100)
    assert stat.S_ISREG(a.mode) and stat.S_IMODE(a.mode) == 0o640
    assert (a.uid, a.gid, a.nlink, a.size, a.stored) == (1000, 100, 1, 0, 0)
    assert a.ino != ROOT_INO
    assert fs.lookup(ROOT_INO, b"f") == a
    assert fs.lookup(ROOT_INO, b"f").ino == a.ino
    assert fs.getattr(a.ino) == a
    assert a.atime_ns == a.mtime_ns == a.ctime_ns > 0


def test_create_updates_parent_times(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    before = fs.getattr(d.ino)
    mkfile(fs, d.ino, b"f")
    after = fs.getattr(d.ino)
    assert after.mtime_ns > before.mtime_ns
    assert after.ctime_ns > before.ctime_ns
    assert after.nlink == 2  # a file does not add a link to its directory


def test_inode_numbers_unique(fs: FileSystem) -> None:
    inos = {mkfile(fs, ROOT_INO, b"f%d" % i).ino for i in range(2100)}
    assert len(inos) == 2100
    assert ROOT_INO not in inos


def test_lookup_missing(fs: FileSystem) -> None:
    with raises(errno.ENOENT):
        fs.lookup(ROOT_INO, b"nope")


def test_lookup_in_file_is_enotdir(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.ENOTDIR):
        fs.lookup(f.ino, b"x")


def test_getattr_missing_inode(fs: FileSystem) -> None:
    with raises(errno.ENOENT):
        fs.getattr(ROOT_INO + 12345)


def test_create_in_missing_dir(fs: FileSystem) -> None:
    with raises(errno.ENOENT):
        mkfile(fs, ROOT_INO + 999, b"f")


def test_create_in_file_is_enotdir(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.ENOTDIR):
        mkfile(fs, f.ino, b"g")
    with raises(errno.ENOTDIR):
        mkdir(fs, f.ino, b"g")


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_create_existing_is_eexist(fs: FileSystem, kind: str) -> None:
    mkfile(fs, ROOT_INO, b"x", b"keep")
    with raises(errno.EEXIST):
        if kind == "file":
            mkfile(fs, ROOT_INO, b"x")
        elif kind == "dir":
            mkdir(fs, ROOT_INO, b"x")
        else:
            symlink(fs, ROOT_INO, b"x", b"t")
    assert cat(fs, fs.lookup(ROOT_INO, b"x").ino) == b"keep"
    assert fs.getattr(ROOT_INO).nlink == 2


def test_name_length_limit(fs: FileSystem) -> None:
    ok = b"n" * NAME_MAX
    assert NAME_MAX == 255
    a = mkfile(fs, ROOT_INO, ok)
    assert fs.lookup(ROOT_INO, ok).ino == a.ino
    long = b"n" * 256
    with raises(errno.ENAMETOOLONG):
        mkfile(fs, ROOT_INO, long)
    with raises(errno.ENAMETOOLONG):
        mkdir(fs, ROOT_INO, long)
    with raises(errno.ENAMETOOLONG):
        fs.lookup(ROOT_INO, long)
    with raises(errno.ENAMETOOLONG):
        fs.link(a.ino, ROOT_INO, long)
    with raises(errno.ENAMETOOLONG):
        fs.rename(ROOT_INO, ok, ROOT_INO, long)
    assert names(fs, ROOT_INO) == [ok]


def test_name_length_counts_bytes(fs: FileSystem) -> None:
    name = "é".encode() * 128  # 128 characters, 256 bytes
    with raises(errno.ENAMETOOLONG):
        mkfile(fs, ROOT_INO, name)
    mkfile(fs, ROOT_INO, name[:254])


@pytest.mark.parametrize("bad", [b"", b".", b"..", b"a/b", b"a\0b", b"/"])
def test_invalid_names(fs: FileSystem, bad: bytes) -> None:
    with raises(errno.EINVAL):
        mkfile(fs, ROOT_INO, bad)
    assert names(fs, ROOT_INO) == []


def test_odd_but_valid_names(fs: FileSystem) -> None:
    odd = [b"...", b" ", b"-", b"\xff\xfe", b"a\nb", b"\x01", b".hidden", "ü".encode()]
    for n in odd:
        mkfile(fs, ROOT_INO, n, n)
    assert names(fs, ROOT_INO) == sorted(odd)
    for n in odd:
        assert cat(fs, fs.lookup(ROOT_INO, n).ino) == n


def test_reserved_names(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    for parent in (ROOT_INO, d.ino):
        with raises(errno.EEXIST):
            mkfile(fs, parent, b".snapshots")
        with raises(errno.EEXIST):
            mkdir(fs, parent, b".snapshots")
    with raises(errno.EEXIST):
        mkdir(fs, ROOT_INO, b".agentfs")
    # .agentfs is reserved only at the root.
    mkdir(fs, d.ino, b".agentfs")
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.EEXIST):
        fs.link(f.ino, ROOT_INO, b".agentfs")
    with raises(errno.EEXIST):
        fs.rename(ROOT_INO, b"f", d.ino, b".snapshots")
    assert names(fs, ROOT_INO) == [b"d", b"f"]


# ----------------------------------------------------------------- other types


def test_symlink(fs: FileSystem) -> None:
    s = symlink(fs, ROOT_INO, b"l", b"../some/where")
    assert stat.S_ISLNK(s.mode)
    assert s.size == len(b"../some/where")
    assert fs.readlink(s.ino) == b"../some/where"
    assert fs.lookup(ROOT_INO, b"l").target == b"../some/where"


def test_readlink_of_non_symlink(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.EINVAL):
        fs.readlink(f.ino)
    with raises(errno.EINVAL):
        fs.readlink(ROOT_INO)


@pytest.mark.parametrize("mode,rdev", [
    (stat.S_IFIFO | 0o600, 0),
    (stat.S_IFCHR | 0o600, (1 << 8) | 3),
    (stat.S_IFBLK | 0o600, (8 << 8) | 1),
    (stat.S_IFSOCK | 0o600, 0),
])
def test_mknod(fs: FileSystem, mode: int, rdev: int) -> None:
    a = fs.create(ROOT_INO, b"node", mode, 5, 6, rdev=rdev)
    got = fs.lookup(ROOT_INO, b"node")
    assert got.mode == mode
    assert got.rdev == rdev
    assert (got.uid, got.gid, got.nlink) == (5, 6, 1)
    fs.unlink(ROOT_INO, b"node")
    fs.forget(a.ino)


# ----------------------------------------------------------------- directories


def test_mkdir_link_counts(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    assert a.nlink == 2
    assert fs.getattr(ROOT_INO).nlink == 3
    mkdir(fs, a.ino, b"b")
    mkdir(fs, a.ino, b"c")
    mkfile(fs, a.ino, b"f")
    assert fs.getattr(a.ino).nlink == 4
    assert fs.getattr(ROOT_INO).nlink == 3


def test_rmdir(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    b = mkdir(fs, a.ino, b"b")
    before = fs.getattr(a.ino)
    fs.rmdir(a.ino, b"b")
    after = fs.getattr(a.ino)
    assert after.nlink == 2
    assert after.mtime_ns > before.mtime_ns
    with raises(errno.ENOENT):
        fs.lookup(a.ino, b"b")
    fs.forget(b.ino)
    with raises(errno.ENOENT):
        fs.getattr(b.ino)
    fs.rmdir(ROOT_INO, b"a")
    fs.forget(a.ino)
    assert fs.getattr(ROOT_INO).nlink == 2
    assert names(fs, ROOT_INO) == []


def test_rmdir_errors(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    mkfile(fs, a.ino, b"f")
    with raises(errno.ENOTEMPTY):
        fs.rmdir(ROOT_INO, b"a")
    with raises(errno.ENOENT):
        fs.rmdir(ROOT_INO, b"missing")
    with raises(errno.ENOTDIR):
        fs.rmdir(a.ino, b"f")
    f = fs.lookup(a.ino, b"f")
    with raises(errno.ENOTDIR):
        fs.rmdir(f.ino, b"x")
    with raises(errno.EINVAL):
        fs.rmdir(a.ino, b".")
    with raises(errno.ENOTEMPTY):
        fs.rmdir(a.ino, b"..")
    assert names(fs, a.ino) == [b"f"]
    assert fs.getattr(ROOT_INO).nlink == 3


def test_rmdir_with_only_subdir_is_enotempty(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    mkdir(fs, a.ino, b"sub")
    with raises(errno.ENOTEMPTY):
        fs.rmdir(ROOT_INO, b"a")


def test_rmdir_after_emptying(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    inos = [mkfile(fs, a.ino, b"f%d" % i).ino for i in range(20)]
    for i, ino in enumerate(inos):
        fs.unlink(a.ino, b"f%d" % i)
        fs.forget(ino)
    fs.rmdir(ROOT_INO, b"a")
    fs.forget(a.ino)
    assert names(fs, ROOT_INO) == []


def test_deep_tree_and_path_ino(fs: FileSystem) -> None:
    ino = ROOT_INO
    for i in range(50):
        ino = mkdir(fs, ino, b"d%d" % i).ino
    path = "/".join(f"d{i}" for i in range(50))
    assert fs.path_ino(path) == ino
    assert fs.path_ino(path + "/..") == fs.path_ino("/".join(f"d{i}" for i in range(49)))
    assert fs.path_ino("/") == ROOT_INO
    assert fs.path_ino("d0/./d1/../d1") == fs.path_ino("d0/d1")
    with raises(errno.ENOENT):
        fs.path_ino("d0/nope")


# ----------------------------------------------------------------- unlink


def test_unlink(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"x")
    before = fs.getattr(ROOT_INO)
    gone = fs.unlink(ROOT_INO, b"f")
    assert gone.nlink == 0
    assert names(fs, ROOT_INO) == []
    assert fs.getattr(ROOT_INO).mtime_ns > before.mtime_ns
    with raises(errno.ENOENT):
        fs.lookup(ROOT_INO, b"f")
    fs.forget(f.ino)
    with raises(errno.ENOENT):
        fs.getattr(f.ino)


def test_unlink_errors(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.ENOENT):
        fs.unlink(ROOT_INO, b"missing")
    with raises(errno.EISDIR):
        fs.unlink(ROOT_INO, b"d")
    with raises(errno.ENOTDIR):
        fs.unlink(f.ino, b"x")
    with raises(errno.ENOENT):
        fs.unlink(ROOT_INO + 999, b"x")
    assert names(fs, ROOT_INO) == [b"d", b"f"]
    assert fs.getattr(d.ino).nlink == 2


def test_unlink_symlink_and_recreate(fs: FileSystem) -> None:
    s = symlink(fs, ROOT_INO, b"l", b"t")
    fs.unlink(ROOT_INO, b"l")
    fs.forget(s.ino)
    s2 = symlink(fs, ROOT_INO, b"l", b"other")
    assert s2.ino != s.ino
    assert fs.readlink(s2.ino) == b"other"


# ----------------------------------------------------------------- hard links


def test_hard_links(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    f = mkfile(fs, ROOT_INO, b"f", b"shared")
    ctime = f.ctime_ns
    a = fs.link(f.ino, d.ino, b"g")
    assert a.ino == f.ino
    assert a.nlink == 2
    assert a.ctime_ns > ctime
    fs.link(f.ino, ROOT_INO, b"h")
    assert fs.getattr(f.ino).nlink == 3
    assert fs.lookup(d.ino, b"g").ino == f.ino
    fs.write(f.ino, 0, b"SHARED")
    assert cat(fs, fs.lookup(ROOT_INO, b"h").ino) == b"SHARED"
    assert fs.getattr(d.ino).nlink == 2  # links to files do not count for dirs
    fs.unlink(ROOT_INO, b"f")
    assert fs.getattr(f.ino).nlink == 2
    fs.forget(f.ino)  # still linked: forget frees nothing
    assert cat(fs, f.ino) == b"SHARED"
    fs.unlink(d.ino, b"g")
    assert fs.getattr(f.ino).nlink == 1
    assert cat(fs, fs.lookup(ROOT_INO, b"h").ino) == b"SHARED"
    fs.unlink(ROOT_INO, b"h")
    fs.forget(f.ino)
    with raises(errno.ENOENT):
        fs.getattr(f.ino)


def test_link_errors(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.EPERM):
        fs.link(d.ino, ROOT_INO, b"dlink")
    with raises(errno.EEXIST):
        fs.link(f.ino, ROOT_INO, b"d")
    with raises(errno.ENOTDIR):
        fs.link(f.ino, f.ino, b"x")
    with raises(errno.ENOENT):
        fs.link(ROOT_INO + 999, ROOT_INO, b"x")
    with raises(errno.ENOENT):
        fs.link(f.ino, ROOT_INO + 999, b"x")
    with raises(errno.EINVAL):
        fs.link(f.ino, ROOT_INO, b"a/b")
    assert fs.getattr(f.ino).nlink == 1
    assert names(fs, ROOT_INO) == [b"d", b"f"]


def test_link_symlink(fs: FileSystem) -> None:
    s = symlink(fs, ROOT_INO, b"l", b"t")
    fs.link(s.ino, ROOT_INO, b"l2")
    assert fs.getattr(s.ino).nlink == 2
    assert fs.readlink(fs.lookup(ROOT_INO, b"l2").ino) == b"t"


def test_many_hard_links(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"x")
    d = mkdir(fs, ROOT_INO, b"d")
    for i in range(300):
        fs.link(f.ino, d.ino, b"l%d" % i)
    assert fs.getattr(f.ino).nlink == 301
    for i in range(0, 300, 2):
        fs.unlink(d.ino, b"l%d" % i)
    assert fs.getattr(f.ino).nlink == 151
    assert len(names(fs, d.ino)) == 150


# ----------------------------------------------------------------- setgid


def test_setgid_directory_inheritance(fs: FileSystem) -> None:
    d = fs.create(ROOT_INO, b"shared", stat.S_IFDIR | stat.S_ISGID | 0o2775, 1000, 42)
    assert d.mode & stat.S_ISGID
    f = fs.create(d.ino, b"f", stat.S_IFREG | 0o644, 1001, 7)
    assert f.gid == 42  # the directory's group, not the creator's
    assert f.uid == 1001
    assert not f.mode & stat.S_ISGID  # files do not get setgid
    sub = fs.create(d.ino, b"sub", stat.S_IFDIR | 0o755, 1001, 7)
    assert sub.gid == 42
    assert sub.mode & stat.S_ISGID  # subdirectories inherit the bit
    # ... and pass it on.
    deeper = fs.create(sub.ino, b"deeper", stat.S_IFREG | 0o600, 1002, 9)
    assert deeper.gid == 42
    s = fs.create(d.ino, b"l", stat.S_IFLNK | 0o777, 1001, 7, target=b"f")
    assert s.gid == 42
    node = fs.create(d.ino, b"p", stat.S_IFIFO | 0o600, 1001, 7)
    assert node.gid == 42


def test_no_setgid_no_inheritance(fs: FileSystem) -> None:
    d = fs.create(ROOT_INO, b"plain", stat.S_IFDIR | 0o775, 1000, 42)
    f = fs.create(d.ino, b"f", stat.S_IFREG | 0o644, 1001, 7)
    sub = fs.create(d.ino, b"sub", stat.S_IFDIR | 0o755, 1001, 7)
    assert f.gid == 7
    assert sub.gid == 7
    assert not sub.mode & stat.S_ISGID


def test_setgid_file_mode_kept(fs: FileSystem) -> None:
    # A file created with setgid in its mode keeps what it was given.
    f = fs.create(ROOT_INO, b"f", stat.S_IFREG | stat.S_ISGID | 0o755, 1, 1)
    assert f.mode & stat.S_ISGID
