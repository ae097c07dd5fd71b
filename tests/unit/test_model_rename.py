"""rename: plain moves, replacing, RENAME_NOREPLACE / RENAME_EXCHANGE, and errors."""

from __future__ import annotations

import errno

import pytest
from fsutil import cat, mkdir, mkfile, names, raises, symlink, tree

from agentfs.posix.fs import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, FileSystem


def test_flag_values() -> None:
    assert RENAME_NOREPLACE == 1
    assert RENAME_EXCHANGE == 2


def test_rename_file_same_dir(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"a", b"data")
    before = fs.getattr(ROOT_INO)
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
    assert names(fs, ROOT_INO) == [b"b"]
    b = fs.lookup(ROOT_INO, b"b")
    assert b.ino == f.ino
    assert cat(fs, b.ino) == b"data"
    assert b.ctime_ns > f.ctime_ns
    after = fs.getattr(ROOT_INO)
    assert after.mtime_ns > before.mtime_ns
    assert after.nlink == 2


def test_rename_file_across_dirs(fs: FileSystem) -> None:
    d1 = mkdir(fs, ROOT_INO, b"d1")
    d2 = mkdir(fs, ROOT_INO, b"d2")
    f = mkfile(fs, d1.ino, b"f", b"x")
    t1, t2 = fs.getattr(d1.ino).mtime_ns, fs.getattr(d2.ino).mtime_ns
    fs.rename(d1.ino, b"f", d2.ino, b"g")
    assert names(fs, d1.ino) == []
    assert fs.lookup(d2.ino, b"g").ino == f.ino
    assert fs.getattr(d1.ino).mtime_ns > t1
    assert fs.getattr(d2.ino).mtime_ns > t2
    assert fs.getattr(d1.ino).nlink == fs.getattr(d2.ino).nlink == 2


def test_rename_dir_across_dirs_updates_links_and_parent(fs: FileSystem) -> None:
    d1 = mkdir(fs, ROOT_INO, b"d1")
    d2 = mkdir(fs, ROOT_INO, b"d2")
    sub = mkdir(fs, d1.ino, b"sub")
    mkfile(fs, sub.ino, b"f", b"inside")
    assert fs.getattr(d1.ino).nlink == 3
    fs.rename(d1.ino, b"sub", d2.ino, b"moved")
    assert fs.getattr(d1.ino).nlink == 2
    assert fs.getattr(d2.ino).nlink == 3
    assert fs.path_ino("d2/moved/..") == d2.ino
    assert fs.path_ino("d2/moved") == sub.ino
    assert tree(fs, ROOT_INO) == {"d1": {}, "d2": {"moved": {"f": b"inside"}}}


def test_rename_replaces_file(fs: FileSystem) -> None:
    a = mkfile(fs, ROOT_INO, b"a", b"AAA")
    b = mkfile(fs, ROOT_INO, b"b", b"BBB")
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
    assert names(fs, ROOT_INO) == [b"b"]
    assert fs.lookup(ROOT_INO, b"b").ino == a.ino
    # The replaced file is unlinked but may still be open.
    old = fs.getattr(b.ino)
    assert old.nlink == 0
    assert cat(fs, b.ino) == b"BBB"
    fs.forget(b.ino)
    with raises(errno.ENOENT):
        fs.getattr(b.ino)


def test_rename_replaces_hard_linked_file(fs: FileSystem) -> None:
    a = mkfile(fs, ROOT_INO, b"a", b"A")
    b = mkfile(fs, ROOT_INO, b"b", b"B")
    fs.link(b.ino, ROOT_INO, b"b2")
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
    assert fs.getattr(b.ino).nlink == 1
    assert cat(fs, fs.lookup(ROOT_INO, b"b2").ino) == b"B"
    assert cat(fs, fs.lookup(ROOT_INO, b"b").ino) == b"A"
    assert fs.getattr(a.ino).nlink == 1


def test_rename_replaces_empty_dir(fs: FileSystem) -> None:
    d1 = mkdir(fs, ROOT_INO, b"d1")
    a = mkdir(fs, d1.ino, b"a")
    mkfile(fs, a.ino, b"f")
    d2 = mkdir(fs, ROOT_INO, b"d2")
    victim = mkdir(fs, d2.ino, b"b")
    assert fs.getattr(ROOT_INO).nlink == 4
    fs.rename(d1.ino, b"a", d2.ino, b"b")
    assert fs.lookup(d2.ino, b"b").ino == a.ino
    assert names(fs, d2.ino) == [b"b"]
    assert names(fs, d1.ino) == []
    assert fs.getattr(d1.ino).nlink == 2
    assert fs.getattr(d2.ino).nlink == 3
    assert fs.getattr(victim.ino).nlink == 0
    fs.forget(victim.ino)
    with raises(errno.ENOENT):
        fs.getattr(victim.ino)
    assert fs.path_ino("d2/b/..") == d2.ino


def test_rename_replaces_empty_dir_same_parent(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    b = mkdir(fs, ROOT_INO, b"b")
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
    assert fs.getattr(ROOT_INO).nlink == 3
    assert fs.lookup(ROOT_INO, b"b").ino == a.ino
    fs.forget(b.ino)


def test_rename_dir_over_nonempty_dir(fs: FileSystem) -> None:
    mkdir(fs, ROOT_INO, b"a")
    b = mkdir(fs, ROOT_INO, b"b")
    mkfile(fs, b.ino, b"f")
    with raises(errno.ENOTEMPTY):
        fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
    assert names(fs, ROOT_INO) == [b"a", b"b"]
    assert names(fs, b.ino) == [b"f"]


def test_rename_type_mismatch(fs: FileSystem) -> None:
    mkdir(fs, ROOT_INO, b"d")
    mkfile(fs, ROOT_INO, b"f")
    symlink(fs, ROOT_INO, b"l", b"d")
    with raises(errno.ENOTDIR):
        fs.rename(ROOT_INO, b"d", ROOT_INO, b"f")
    with raises(errno.ENOTDIR):
        fs.rename(ROOT_INO, b"d", ROOT_INO, b"l")
    with raises(errno.EISDIR):
        fs.rename(ROOT_INO, b"f", ROOT_INO, b"d")
    with raises(errno.EISDIR):
        fs.rename(ROOT_INO, b"l", ROOT_INO, b"d")
    assert names(fs, ROOT_INO) == [b"d", b"f", b"l"]
    assert fs.getattr(ROOT_INO).nlink == 3


def test_rename_onto_itself(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"x")
    fs.rename(ROOT_INO, b"f", ROOT_INO, b"f")
    assert fs.lookup(ROOT_INO, b"f").ino == f.ino
    assert fs.getattr(f.ino).nlink == 1
    d = mkdir(fs, ROOT_INO, b"d")
    fs.rename(ROOT_INO, b"d", ROOT_INO, b"d")
    assert fs.getattr(ROOT_INO).nlink == 3
    assert fs.getattr(d.ino).nlink == 2


def test_rename_onto_hard_link_of_itself(fs: FileSystem) -> None:
    """POSIX: if old and new are links to the same file, rename does nothing."""
    f = mkfile(fs, ROOT_INO, b"a", b"x")
    fs.link(f.ino, ROOT_INO, b"b")
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
    assert names(fs, ROOT_INO) == [b"a", b"b"]
    assert fs.getattr(f.ino).nlink == 2


def test_rename_dir_into_own_subdir(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    b = mkdir(fs, a.ino, b"b")
    c = mkdir(fs, b.ino, b"c")
    with raises(errno.EINVAL):
        fs.rename(ROOT_INO, b"a", c.ino, b"x")
    with raises(errno.EINVAL):
        fs.rename(ROOT_INO, b"a", b.ino, b"x")
    with raises(errno.EINVAL):
        fs.rename(ROOT_INO, b"a", a.ino, b"x")
    with raises(errno.EINVAL):
        fs.rename(a.ino, b"b", c.ino, b"x")
    assert tree(fs, ROOT_INO) == {"a": {"b": {"c": {}}}}


def test_rename_dir_up_and_sideways(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    b = mkdir(fs, a.ino, b"b")
    c = mkdir(fs, b.ino, b"c")
    # Moving a descendant up out of an ancestor is fine.
    fs.rename(b.ino, b"c", ROOT_INO, b"c")
    assert fs.path_ino("c/..") == ROOT_INO
    # And moving the former ancestor into it too.
    fs.rename(ROOT_INO, b"a", c.ino, b"a")
    assert tree(fs, ROOT_INO) == {"c": {"a": {"b": {}}}}
    assert fs.getattr(ROOT_INO).nlink == 3
    assert fs.getattr(c.ino).nlink == 3


def test_rename_errors(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.ENOENT):
        fs.rename(ROOT_INO, b"missing", ROOT_INO, b"x")
    with raises(errno.ENOTDIR):
        fs.rename(f.ino, b"x", ROOT_INO, b"y")
    with raises(errno.ENOTDIR):
        fs.rename(ROOT_INO, b"f", f.ino, b"y")
    with raises(errno.ENOENT):
        fs.rename(ROOT_INO, b"f", ROOT_INO + 999, b"y")
    with raises(errno.EINVAL):
        fs.rename(ROOT_INO, b"f", ROOT_INO, b"a/b")
    with raises(errno.EINVAL):
        fs.rename(ROOT_INO, b"f", ROOT_INO, b"..")
    with raises(errno.ENAMETOOLONG):
        fs.rename(ROOT_INO, b"f", ROOT_INO, b"x" * 256)
    assert names(fs, ROOT_INO) == [b"f"]


# ----------------------------------------------------------------- flags


def test_noreplace(fs: FileSystem) -> None:
    mkfile(fs, ROOT_INO, b"a", b"A")
    mkfile(fs, ROOT_INO, b"b", b"B")
    with raises(errno.EEXIST):
        fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE)
    assert cat(fs, fs.lookup(ROOT_INO, b"b").ino) == b"B"
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"c", RENAME_NOREPLACE)
    assert names(fs, ROOT_INO) == [b"b", b"c"]


def test_noreplace_dir(fs: FileSystem) -> None:
    mkdir(fs, ROOT_INO, b"a")
    mkdir(fs, ROOT_INO, b"b")
    with raises(errno.EEXIST):
        fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE)
    assert fs.getattr(ROOT_INO).nlink == 4


def test_exchange_files(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    a = mkfile(fs, ROOT_INO, b"a", b"A")
    b = mkfile(fs, d.ino, b"b", b"B")
    fs.rename(ROOT_INO, b"a", d.ino, b"b", RENAME_EXCHANGE)
    assert fs.lookup(ROOT_INO, b"a").ino == b.ino
    assert fs.lookup(d.ino, b"b").ino == a.ino
    assert cat(fs, fs.lookup(ROOT_INO, b"a").ino) == b"B"
    assert fs.getattr(a.ino).nlink == fs.getattr(b.ino).nlink == 1


def test_exchange_file_and_dir_across_dirs(fs: FileSystem) -> None:
    d1 = mkdir(fs, ROOT_INO, b"d1")
    d2 = mkdir(fs, ROOT_INO, b"d2")
    sub = mkdir(fs, d1.ino, b"x")
    mkfile(fs, sub.ino, b"inner", b"I")
    f = mkfile(fs, d2.ino, b"y", b"F")
    fs.rename(d1.ino, b"x", d2.ino, b"y", RENAME_EXCHANGE)
    assert fs.lookup(d1.ino, b"x").ino == f.ino
    assert fs.lookup(d2.ino, b"y").ino == sub.ino
    assert fs.getattr(d1.ino).nlink == 2
    assert fs.getattr(d2.ino).nlink == 3
    assert fs.path_ino("d2/y/..") == d2.ino
    assert tree(fs, ROOT_INO) == {"d1": {"x": b"F"}, "d2": {"y": {"inner": b"I"}}}


def test_exchange_dirs_across_dirs(fs: FileSystem) -> None:
    d1 = mkdir(fs, ROOT_INO, b"d1")
    d2 = mkdir(fs, ROOT_INO, b"d2")
    x = mkdir(fs, d1.ino, b"x")
    y = mkdir(fs, d2.ino, b"y")
    mkdir(fs, d2.ino, b"z")
    fs.rename(d1.ino, b"x", d2.ino, b"y", RENAME_EXCHANGE)
    assert fs.path_ino("d1/x") == y.ino
    assert fs.path_ino("d2/y") == x.ino
    assert fs.path_ino("d1/x/..") == d1.ino
    assert fs.path_ino("d2/y/..") == d2.ino
    assert fs.getattr(d1.ino).nlink == 3
    assert fs.getattr(d2.ino).nlink == 4


def test_exchange_same_dir(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    b = mkfile(fs, ROOT_INO, b"b", b"B")
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
    assert fs.lookup(ROOT_INO, b"a").ino == b.ino
    assert fs.lookup(ROOT_INO, b"b").ino == a.ino
    assert fs.getattr(ROOT_INO).nlink == 3


def test_exchange_with_itself_or_hard_link(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"a", b"A")
    fs.link(f.ino, ROOT_INO, b"b")
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"a", RENAME_EXCHANGE)
    assert names(fs, ROOT_INO) == [b"a", b"b"]
    assert fs.getattr(f.ino).nlink == 2


def test_exchange_missing_target(fs: FileSystem) -> None:
    mkfile(fs, ROOT_INO, b"a")
    with raises(errno.ENOENT):
        fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
    with raises(errno.ENOENT):
        fs.rename(ROOT_INO, b"missing", ROOT_INO, b"a", RENAME_EXCHANGE)
    assert names(fs, ROOT_INO) == [b"a"]


def test_exchange_into_own_subdir(fs: FileSystem) -> None:
    a = mkdir(fs, ROOT_INO, b"a")
    b = mkdir(fs, a.ino, b"b")
    mkfile(fs, b.ino, b"f")
    with raises(errno.EINVAL):
        fs.rename(ROOT_INO, b"a", b.ino, b"f", RENAME_EXCHANGE)
    with raises(errno.EINVAL):
        fs.rename(b.ino, b"f", ROOT_INO, b"a", RENAME_EXCHANGE)
    assert tree(fs, ROOT_INO) == {"a": {"b": {"f": b""}}}


@pytest.mark.parametrize("flags", [RENAME_NOREPLACE | RENAME_EXCHANGE, 4, 8, 1 << 20])
def test_bad_flags(fs: FileSystem, flags: int) -> None:
    mkfile(fs, ROOT_INO, b"a")
    mkfile(fs, ROOT_INO, b"b")
    with raises(errno.EINVAL):
        fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", flags)
    assert names(fs, ROOT_INO) == [b"a", b"b"]


def test_rename_chain_keeps_tree_consistent(fs: FileSystem) -> None:
    """Many renames back and forth; fsck checks the tree afterwards."""
    dirs = [mkdir(fs, ROOT_INO, b"d%d" % i).ino for i in range(5)]
    for i in range(20):
        mkfile(fs, dirs[i % 5], b"f%d" % i, b"%d" % i)
    for step in range(100):
        i = step % 20
        src = dirs[step % 5]
        dst = dirs[(step * 3 + 1) % 5]
        name = b"f%d" % i
        if name in names(fs, src):
            fs.rename(src, name, dst, name)
    total = sum(len(names(fs, d)) for d in dirs)
    assert total == 20
