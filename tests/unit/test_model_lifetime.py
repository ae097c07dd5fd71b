"""Inode lifetime: unlinked while open (nlink 0, still readable and writable),
freed by forget, and orphans freed at the next mount (free_orphans)."""

from __future__ import annotations

import errno

from fsutil import cat, count_keys, inode_records, mkdir, mkfile, names, raises

from agentfs.posix.fs import BLOCK_SIZE, ROOT_INO, FileSystem, SetAttr


def test_unlinked_while_open(fs: FileSystem) -> None:
    data = b"still here" * 30_000  # several blocks
    f = mkfile(fs, ROOT_INO, b"f", data)
    fs.setxattr(f.ino, b"user.k", b"v")
    fs.unlink(ROOT_INO, b"f")
    assert names(fs, ROOT_INO) == []
    a = fs.getattr(f.ino)
    assert a.nlink == 0
    assert a.size == len(data)
    # An open file descriptor keeps working.
    assert cat(fs, f.ino) == data
    fs.write(f.ino, 0, b"STILL")
    assert fs.read(f.ino, 0, 10) == b"STILL here"
    fs.setattr(f.ino, SetAttr(size=5))
    assert cat(fs, f.ino) == b"STILL"
    assert fs.getxattr(f.ino, b"user.k") == b"v"
    assert count_keys(fs.engine, b"O") == 1
    fs.forget(f.ino)
    with raises(errno.ENOENT):
        fs.getattr(f.ino)
    with raises(errno.ENOENT):
        fs.read(f.ino, 0, 1)
    assert inode_records(fs.engine, f.ino) == 0
    assert count_keys(fs.engine, b"O") == 0


def test_forget_of_linked_inode_frees_nothing(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"data")
    d = mkdir(fs, ROOT_INO, b"d")
    fs.forget(f.ino)
    fs.forget(d.ino)
    fs.forget(ROOT_INO)
    assert cat(fs, fs.lookup(ROOT_INO, b"f").ino) == b"data"
    assert fs.getattr(d.ino).nlink == 2


def test_forget_twice_and_unknown(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"x")
    fs.unlink(ROOT_INO, b"f")
    fs.forget(f.ino)
    fs.forget(f.ino)
    fs.forget(ROOT_INO + 123456)


def test_last_link_of_hard_linked_file(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"a", b"data")
    fs.link(f.ino, ROOT_INO, b"b")
    fs.unlink(ROOT_INO, b"a")
    assert count_keys(fs.engine, b"O") == 0
    fs.forget(f.ino)
    assert cat(fs, f.ino) == b"data"
    fs.unlink(ROOT_INO, b"b")
    assert count_keys(fs.engine, b"O") == 1
    assert cat(fs, f.ino) == b"data"
    fs.forget(f.ino)
    with raises(errno.ENOENT):
        fs.getattr(f.ino)


def test_link_of_unlinked_open_file_is_enoent(fs: FileSystem) -> None:
    """linkat(fd, "", AT_EMPTY_PATH) of a file whose last link is gone: Linux
    says ENOENT. Linking it back must not leave it an orphan that forget frees
    under a live entry."""
    f = mkfile(fs, ROOT_INO, b"f", b"x")
    fs.unlink(ROOT_INO, b"f")
    with raises(errno.ENOENT):
        fs.link(f.ino, ROOT_INO, b"back")
    assert names(fs, ROOT_INO) == []
    fs.forget(f.ino)


def test_removed_dir_while_open(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    fs.setxattr(d.ino, b"user.k", b"v")
    fs.rmdir(ROOT_INO, b"d")
    a = fs.getattr(d.ino)
    assert a.nlink == 0
    assert list(fs.readdir(d.ino)) == []
    # No new entries in a removed directory (Linux: ENOENT).
    with raises(errno.ENOENT):
        mkfile(fs, d.ino, b"f")
    with raises(errno.ENOENT):
        mkdir(fs, d.ino, b"sub")
    fs.forget(d.ino)
    with raises(errno.ENOENT):
        fs.getattr(d.ino)
    assert inode_records(fs.engine, d.ino) == 0


def test_many_open_unlinked_then_forgotten(fs: FileSystem) -> None:
    inos = [mkfile(fs, ROOT_INO, b"f%d" % i, b"x" * (i * 1000)).ino for i in range(50)]
    for i in range(50):
        fs.unlink(ROOT_INO, b"f%d" % i)
    assert count_keys(fs.engine, b"O") == 50
    for ino in inos[::2]:
        fs.forget(ino)
    assert count_keys(fs.engine, b"O") == 25
    for ino in inos[1::2]:
        assert fs.getattr(ino).nlink == 0
        fs.forget(ino)
    assert count_keys(fs.engine, b"O") == 0
    assert count_keys(fs.engine, b"R") == inode_records(fs.engine, ROOT_INO)


def test_free_orphans_at_mount(engines, make_fs) -> None:  # type: ignore[no-untyped-def]
    e = engines()
    fs = make_fs(e)
    keep = mkfile(fs, ROOT_INO, b"keep", b"k")
    gone = [mkfile(fs, ROOT_INO, b"g%d" % i, b"y" * BLOCK_SIZE).ino for i in range(5)]
    d = mkdir(fs, ROOT_INO, b"d")
    for i in range(5):
        fs.unlink(ROOT_INO, b"g%d" % i)
    fs.rmdir(ROOT_INO, b"d")
    # The daemon dies with all of them still open; the next mount frees them.
    e = engines.reopen(e)
    fs2 = make_fs(e)
    assert fs2.free_orphans() == 6
    for ino in [*gone, d.ino]:
        with raises(errno.ENOENT):
            fs2.getattr(ino)
        assert inode_records(e, ino) == 0
    assert cat(fs2, keep.ino) == b"k"
    assert fs2.free_orphans() == 0
    assert count_keys(e, b"O") == 0


def test_rename_victim_freed_on_forget(fs: FileSystem) -> None:
    mkfile(fs, ROOT_INO, b"a", b"new")
    old = mkfile(fs, ROOT_INO, b"b", b"old" * 50_000)
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b")
    assert cat(fs, old.ino) == b"old" * 50_000
    fs.forget(old.ino)
    assert inode_records(fs.engine, old.ino) == 0


def test_inode_number_of_freed_file_not_reused_for_open_lookup(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"x")
    fs.unlink(ROOT_INO, b"f")
    g = mkfile(fs, ROOT_INO, b"g", b"y")
    assert g.ino != f.ino  # the unlinked file is still open
    assert cat(fs, f.ino) == b"x"
    fs.forget(f.ino)
