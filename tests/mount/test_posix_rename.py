"""rename(2) and renameat2(2) (RENAME_NOREPLACE, RENAME_EXCHANGE)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from posix_util import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    listdir,
    opened,
    own_subdirs,
    raises_errno,
    read_file,
    renameat2,
    wait_clock_past,
    write_file,
)

OLD_NS = 1_000_000_000 * 10**9


def names(p: Path) -> list[str]:
    return sorted(listdir(p))


# --- files ---------------------------------------------------------------------


def test_rename_file_same_dir(mnt: Path) -> None:
    write_file(mnt / "a", b"payload")
    ino = os.stat(mnt / "a").st_ino
    os.rename(mnt / "a", mnt / "b")
    assert names(mnt) == ["b"]
    assert read_file(mnt / "b") == b"payload"
    assert os.stat(mnt / "b").st_ino == ino


def test_rename_file_across_dirs(mnt: Path) -> None:
    os.mkdir(mnt / "x")
    os.mkdir(mnt / "y")
    write_file(mnt / "x" / "f", b"move me")
    os.rename(mnt / "x" / "f", mnt / "y" / "g")
    assert names(mnt / "x") == []
    assert names(mnt / "y") == ["g"]
    assert read_file(mnt / "y" / "g") == b"move me"


def test_rename_file_over_file_replaces(mnt: Path) -> None:
    write_file(mnt / "a", b"new")
    write_file(mnt / "b", b"old content")
    ino = os.stat(mnt / "a").st_ino
    os.rename(mnt / "a", mnt / "b")
    assert names(mnt) == ["b"]
    assert read_file(mnt / "b") == b"new"
    assert os.stat(mnt / "b").st_ino == ino


def test_rename_over_open_file_keeps_old_data_readable(mnt: Path) -> None:
    write_file(mnt / "a", b"new")
    write_file(mnt / "b", b"old")
    with opened(mnt / "b", os.O_RDONLY) as fd:
        os.rename(mnt / "a", mnt / "b")
        assert os.pread(fd, 10, 0) == b"old"
        assert os.fstat(fd).st_nlink == 0
    assert read_file(mnt / "b") == b"new"


def test_rename_over_hard_link_of_other_file_drops_its_nlink(mnt: Path) -> None:
    write_file(mnt / "victim", b"v")
    os.link(mnt / "victim", mnt / "b")
    write_file(mnt / "a", b"a")
    os.rename(mnt / "a", mnt / "b")
    assert os.stat(mnt / "victim").st_nlink == 1
    assert read_file(mnt / "victim") == b"v"


def test_rename_to_same_name_is_noop(mnt: Path) -> None:
    write_file(mnt / "a", b"same")
    os.rename(mnt / "a", mnt / "a")
    assert names(mnt) == ["a"]
    assert read_file(mnt / "a") == b"same"


def test_rename_between_hard_links_of_same_file_is_noop(mnt: Path) -> None:
    # POSIX: if old and new are links to the same file, rename does nothing.
    write_file(mnt / "a", b"x")
    os.link(mnt / "a", mnt / "b")
    os.rename(mnt / "a", mnt / "b")
    assert names(mnt) == ["a", "b"]
    assert os.stat(mnt / "a").st_nlink == 2


def test_rename_file_over_dir_eisdir(mnt: Path) -> None:
    write_file(mnt / "f")
    os.mkdir(mnt / "d")
    with raises_errno(errno.EISDIR):
        os.rename(mnt / "f", mnt / "d")
    assert os.path.isfile(mnt / "f") and os.path.isdir(mnt / "d")


def test_rename_missing_source_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.rename(mnt / "missing", mnt / "b")


def test_rename_into_missing_dir_enoent(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.ENOENT):
        os.rename(mnt / "f", mnt / "nodir" / "f")
    assert names(mnt) == ["f"]


def test_rename_below_file_enotdir(mnt: Path) -> None:
    write_file(mnt / "f")
    write_file(mnt / "g")
    with raises_errno(errno.ENOTDIR):
        os.rename(mnt / "f", mnt / "g" / "x")


def test_rename_symlink_renames_link_not_target(mnt: Path) -> None:
    write_file(mnt / "t", b"t")
    os.symlink("t", mnt / "l")
    os.rename(mnt / "l", mnt / "l2")
    assert names(mnt) == ["l2", "t"]
    assert os.readlink(mnt / "l2") == "t"


# --- directories ------------------------------------------------------------------


def test_rename_dir_keeps_contents(mnt: Path) -> None:
    os.makedirs(mnt / "a" / "sub")
    write_file(mnt / "a" / "sub" / "f", b"deep")
    os.rename(mnt / "a", mnt / "b")
    assert names(mnt) == ["b"]
    assert read_file(mnt / "b" / "sub" / "f") == b"deep"


def test_rename_dir_over_file_enotdir(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    write_file(mnt / "f")
    with raises_errno(errno.ENOTDIR):
        os.rename(mnt / "d", mnt / "f")
    assert os.path.isdir(mnt / "d") and os.path.isfile(mnt / "f")


def test_rename_dir_over_empty_dir(mnt: Path) -> None:
    os.mkdir(mnt / "src")
    write_file(mnt / "src" / "f", b"1")
    os.mkdir(mnt / "dst")
    ino = os.stat(mnt / "src").st_ino
    os.rename(mnt / "src", mnt / "dst")
    assert names(mnt) == ["dst"]
    assert os.stat(mnt / "dst").st_ino == ino
    assert names(mnt / "dst") == ["f"]
    assert os.stat(mnt).st_nlink == 3 + own_subdirs(mnt)


def test_rename_dir_over_nonempty_dir_enotempty(mnt: Path) -> None:
    os.mkdir(mnt / "src")
    os.mkdir(mnt / "dst")
    write_file(mnt / "dst" / "f")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        os.rename(mnt / "src", mnt / "dst")
    assert names(mnt) == ["dst", "src"]
    assert names(mnt / "dst") == ["f"]


def test_rename_dir_into_own_subdir_einval(mnt: Path) -> None:
    os.makedirs(mnt / "a" / "b" / "c")
    with raises_errno(errno.EINVAL):
        os.rename(mnt / "a", mnt / "a" / "b" / "c" / "a")
    with raises_errno(errno.EINVAL):
        os.rename(mnt / "a", mnt / "a" / "x")
    assert names(mnt) == ["a"]


def test_rename_dir_onto_own_ancestor_enotempty(mnt: Path) -> None:
    os.makedirs(mnt / "a" / "b")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST, errno.EINVAL):
        os.rename(mnt / "a" / "b", mnt / "a")


def test_rename_dir_between_parents_updates_nlink(mnt: Path) -> None:
    os.mkdir(mnt / "p1")
    os.mkdir(mnt / "p2")
    os.makedirs(mnt / "p1" / "child" / "grandchild")
    assert os.stat(mnt / "p1").st_nlink == 3
    assert os.stat(mnt / "p2").st_nlink == 2
    os.rename(mnt / "p1" / "child", mnt / "p2" / "child")
    assert os.stat(mnt / "p1").st_nlink == 2
    assert os.stat(mnt / "p2").st_nlink == 3
    assert os.stat(mnt / "p2" / "child").st_nlink == 3


def test_rename_dir_updates_dotdot(mnt: Path) -> None:
    os.mkdir(mnt / "p1")
    os.mkdir(mnt / "p2")
    os.mkdir(mnt / "p1" / "c")
    os.rename(mnt / "p1" / "c", mnt / "p2" / "c")
    assert os.stat(mnt / "p2" / "c" / "..").st_ino == os.stat(mnt / "p2").st_ino
    os.mkdir(mnt / "p2" / "c" / "new")
    assert names(mnt / "p2" / "c") == ["new"]


def test_rename_dir_over_empty_dir_in_other_parent_nlink(mnt: Path) -> None:
    os.mkdir(mnt / "p1")
    os.mkdir(mnt / "p2")
    os.mkdir(mnt / "p1" / "c")
    os.mkdir(mnt / "p2" / "c")
    os.rename(mnt / "p1" / "c", mnt / "p2" / "c")
    assert os.stat(mnt / "p1").st_nlink == 2
    assert os.stat(mnt / "p2").st_nlink == 3


# --- timestamps ------------------------------------------------------------------------


def test_rename_updates_both_parents_mtime(mnt: Path) -> None:
    os.mkdir(mnt / "x")
    os.mkdir(mnt / "y")
    write_file(mnt / "x" / "f")
    for d in ("x", "y"):
        os.utime(mnt / d, ns=(OLD_NS, OLD_NS))
    os.rename(mnt / "x" / "f", mnt / "y" / "f")
    assert os.stat(mnt / "x").st_mtime_ns > OLD_NS
    assert os.stat(mnt / "y").st_mtime_ns > OLD_NS


def test_rename_updates_ctime_of_moved_inode(mnt: Path) -> None:
    write_file(mnt / "a")
    before = os.stat(mnt / "a")
    wait_clock_past(before.st_ctime_ns)
    os.rename(mnt / "a", mnt / "b")
    after = os.stat(mnt / "b")
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_mtime_ns == before.st_mtime_ns


# --- renameat2 --------------------------------------------------------------------------


def test_noreplace_to_free_name_renames(mnt: Path) -> None:
    write_file(mnt / "a", b"a")
    renameat2(mnt / "a", mnt / "b", RENAME_NOREPLACE)
    assert names(mnt) == ["b"]


def test_noreplace_existing_target_eexist(mnt: Path) -> None:
    write_file(mnt / "a", b"a")
    write_file(mnt / "b", b"b")
    with raises_errno(errno.EEXIST):
        renameat2(mnt / "a", mnt / "b", RENAME_NOREPLACE)
    assert read_file(mnt / "a") == b"a"
    assert read_file(mnt / "b") == b"b"


def test_noreplace_existing_empty_dir_eexist(mnt: Path) -> None:
    os.mkdir(mnt / "a")
    os.mkdir(mnt / "b")
    with raises_errno(errno.EEXIST):
        renameat2(mnt / "a", mnt / "b", RENAME_NOREPLACE)


def test_exchange_two_files(mnt: Path) -> None:
    write_file(mnt / "a", b"AAA")
    write_file(mnt / "b", b"B")
    ia, ib = os.stat(mnt / "a").st_ino, os.stat(mnt / "b").st_ino
    renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE)
    assert read_file(mnt / "a") == b"B"
    assert read_file(mnt / "b") == b"AAA"
    assert (os.stat(mnt / "a").st_ino, os.stat(mnt / "b").st_ino) == (ib, ia)


def test_exchange_file_and_dir_across_parents(mnt: Path) -> None:
    os.mkdir(mnt / "p1")
    os.mkdir(mnt / "p2")
    write_file(mnt / "p1" / "f", b"file")
    os.mkdir(mnt / "p2" / "d")
    write_file(mnt / "p2" / "d" / "inner", b"inner")
    renameat2(mnt / "p1" / "f", mnt / "p2" / "d", RENAME_EXCHANGE)
    assert stat.S_ISDIR(os.lstat(mnt / "p1" / "f").st_mode)
    assert stat.S_ISREG(os.lstat(mnt / "p2" / "d").st_mode)
    assert read_file(mnt / "p1" / "f" / "inner") == b"inner"
    assert read_file(mnt / "p2" / "d") == b"file"
    assert os.stat(mnt / "p1").st_nlink == 3
    assert os.stat(mnt / "p2").st_nlink == 2
    assert os.stat(mnt / "p1" / "f" / "..").st_ino == os.stat(mnt / "p1").st_ino


def test_exchange_two_dirs_across_parents(mnt: Path) -> None:
    os.makedirs(mnt / "p1" / "a" / "sub")
    os.makedirs(mnt / "p2" / "b")
    renameat2(mnt / "p1" / "a", mnt / "p2" / "b", RENAME_EXCHANGE)
    assert names(mnt / "p1" / "a") == []
    assert names(mnt / "p2" / "b") == ["sub"]
    assert os.stat(mnt / "p1").st_nlink == 3
    assert os.stat(mnt / "p2").st_nlink == 3


def test_exchange_missing_target_enoent(mnt: Path) -> None:
    write_file(mnt / "a")
    with raises_errno(errno.ENOENT):
        renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE)
    assert names(mnt) == ["a"]


def test_exchange_with_noreplace_einval(mnt: Path) -> None:
    write_file(mnt / "a")
    write_file(mnt / "b")
    with raises_errno(errno.EINVAL):
        renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE | RENAME_NOREPLACE)
