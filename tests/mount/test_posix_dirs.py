"""mkdir, rmdir, unlink, directory link counts and parent timestamps."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from posix_util import listdir, raises_errno, umask, wait_clock_past, write_file

OLD_NS = 1_000_000_000 * 10**9

# --- mkdir -------------------------------------------------------------------


def test_mkdir_creates_empty_directory(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    st = os.stat(mnt / "d")
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_nlink == 2
    assert os.listdir(mnt / "d") == []
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


def test_mkdir_mode_masked_by_umask(mnt: Path) -> None:
    with umask(0o022):
        os.mkdir(mnt / "a", 0o777)
        os.mkdir(mnt / "b", 0o700)
    assert stat.S_IMODE(os.stat(mnt / "a").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(mnt / "b").st_mode) == 0o700


def test_mkdir_keeps_sticky_bit(mnt: Path) -> None:
    with umask(0):
        os.mkdir(mnt / "d", 0o1777)
    assert stat.S_IMODE(os.stat(mnt / "d").st_mode) == 0o1777


def test_mkdir_existing_dir_eexist(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    with raises_errno(errno.EEXIST):
        os.mkdir(mnt / "d")


def test_mkdir_existing_file_eexist(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.EEXIST):
        os.mkdir(mnt / "f")


def test_mkdir_over_dangling_symlink_eexist(mnt: Path) -> None:
    os.symlink("nowhere", mnt / "l")
    with raises_errno(errno.EEXIST):
        os.mkdir(mnt / "l")
    assert not (mnt / "nowhere").exists()


def test_mkdir_missing_parent_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.mkdir(mnt / "no" / "d")


def test_mkdir_below_file_enotdir(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.ENOTDIR):
        os.mkdir(mnt / "f" / "d")


def test_mkdir_with_trailing_slash(mnt: Path) -> None:
    os.mkdir(str(mnt / "d") + "/")
    assert os.path.isdir(mnt / "d")


def test_nested_mkdir_deep(mnt: Path) -> None:
    p = mnt
    for i in range(40):
        p = p / f"level{i}"
        os.mkdir(p)
    write_file(p / "leaf", b"deep")
    assert (p / "leaf").read_bytes() == b"deep"


# --- directory link counts -------------------------------------------------------


def test_dir_nlink_counts_subdirectories(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    for i in range(3):
        os.mkdir(mnt / "d" / f"sub{i}")
    write_file(mnt / "d" / "file")  # files do not count
    os.symlink("sub0", mnt / "d" / "link")  # nor do symlinks
    assert os.stat(mnt / "d").st_nlink == 2 + 3


def test_dir_nlink_drops_on_rmdir(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    os.mkdir(mnt / "d" / "a")
    os.mkdir(mnt / "d" / "b")
    os.rmdir(mnt / "d" / "a")
    assert os.stat(mnt / "d").st_nlink == 3


def test_mount_root_nlink_counts_subdirectories(mnt: Path) -> None:
    base = os.stat(mnt).st_nlink
    os.mkdir(mnt / "x")
    os.mkdir(mnt / "y")
    assert os.stat(mnt).st_nlink == base + 2
    os.rmdir(mnt / "x")
    os.rmdir(mnt / "y")
    assert os.stat(mnt).st_nlink == base
    subdirs = [e for e in os.scandir(mnt) if e.is_dir(follow_symlinks=False)]
    assert base == 2 + len(subdirs)


def test_dotdot_is_parent(mnt: Path) -> None:
    os.makedirs(mnt / "a" / "b")
    assert os.stat(mnt / "a" / "b" / "..").st_ino == os.stat(mnt / "a").st_ino
    assert os.stat(f"{mnt}/a/.").st_ino == os.stat(mnt / "a").st_ino


# --- rmdir -----------------------------------------------------------------------------


def test_rmdir_empty(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    os.rmdir(mnt / "d")
    assert listdir(mnt) == []
    with raises_errno(errno.ENOENT):
        os.stat(mnt / "d")


def test_rmdir_not_empty_enotempty(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    write_file(mnt / "d" / ".hidden")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        os.rmdir(mnt / "d")
    assert os.listdir(mnt / "d") == [".hidden"]


def test_rmdir_with_subdir_enotempty(mnt: Path) -> None:
    os.makedirs(mnt / "d" / "sub")
    with raises_errno(errno.ENOTEMPTY, errno.EEXIST):
        os.rmdir(mnt / "d")


def test_rmdir_after_emptying(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    for i in range(20):
        write_file(mnt / "d" / f"f{i}")
    for i in range(20):
        os.unlink(mnt / "d" / f"f{i}")
    os.rmdir(mnt / "d")
    assert listdir(mnt) == []


def test_rmdir_file_enotdir(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.ENOTDIR):
        os.rmdir(mnt / "f")
    assert (mnt / "f").exists()


def test_rmdir_symlink_to_dir_enotdir(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    os.symlink("d", mnt / "l")
    with raises_errno(errno.ENOTDIR):
        os.rmdir(mnt / "l")


def test_rmdir_missing_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.rmdir(mnt / "missing")


def test_rmdir_dot_einval(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    with raises_errno(errno.EINVAL):
        os.rmdir(f"{mnt}/d/.")


def test_rmdir_open_directory_then_fstat(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(mnt / "d")
        assert os.fstat(fd).st_nlink == 0
        with raises_errno(errno.ENOENT):
            os.open("newfile", os.O_CREAT | os.O_WRONLY, dir_fd=fd)
    finally:
        os.close(fd)
    assert listdir(mnt) == []


# --- unlink ----------------------------------------------------------------------------


def test_unlink_file(mnt: Path) -> None:
    write_file(mnt / "f", b"x")
    os.unlink(mnt / "f")
    assert listdir(mnt) == []


def test_unlink_directory_eisdir(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    with raises_errno(errno.EISDIR):
        os.unlink(mnt / "d")
    assert os.path.isdir(mnt / "d")


def test_unlink_missing_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.unlink(mnt / "missing")


def test_unlink_below_file_enotdir(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.ENOTDIR):
        os.unlink(mnt / "f" / "x")


def test_unlink_symlink_leaves_target(mnt: Path) -> None:
    write_file(mnt / "t", b"target")
    os.symlink("t", mnt / "l")
    os.unlink(mnt / "l")
    assert listdir(mnt) == ["t"]


# --- parent directory timestamps ---------------------------------------------------------


def _age(p: Path) -> None:
    os.utime(p, ns=(OLD_NS, OLD_NS))


@pytest.mark.parametrize("op", ["create", "mkdir", "symlink", "mknod", "link", "unlink",
                                "rmdir", "rename"])
def test_entry_change_updates_parent_mtime_and_ctime(mnt: Path, op: str) -> None:
    os.mkdir(mnt / "d")
    write_file(mnt / "d" / "victim")
    os.mkdir(mnt / "d" / "vdir")
    _age(mnt / "d")
    before = os.stat(mnt / "d")
    wait_clock_past(before.st_ctime_ns)
    if op == "create":
        write_file(mnt / "d" / "new")
    elif op == "mkdir":
        os.mkdir(mnt / "d" / "new")
    elif op == "symlink":
        os.symlink("x", mnt / "d" / "new")
    elif op == "mknod":
        os.mkfifo(mnt / "d" / "new")
    elif op == "link":
        os.link(mnt / "d" / "victim", mnt / "d" / "new")
    elif op == "unlink":
        os.unlink(mnt / "d" / "victim")
    elif op == "rename":
        os.rename(mnt / "d" / "victim", mnt / "d" / "new")
    else:
        os.rmdir(mnt / "d" / "vdir")
    after = os.stat(mnt / "d")
    assert after.st_mtime_ns > OLD_NS
    assert after.st_ctime_ns > before.st_ctime_ns


def test_failed_mkdir_leaves_parent_mtime(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    os.mkdir(mnt / "d" / "x")
    _age(mnt / "d")
    with raises_errno(errno.EEXIST):
        os.mkdir(mnt / "d" / "x")
    assert os.stat(mnt / "d").st_mtime_ns == OLD_NS
