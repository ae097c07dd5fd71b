"""Extended attributes in the user.* namespace."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from posix_util import getxattr_raw, opened, raises_errno, wait_clock_past, write_file


@pytest.fixture
def f(mnt: Path) -> Path:
    p = mnt / "f"
    write_file(p, b"data")
    return p


def test_set_get_roundtrip(f: Path) -> None:
    os.setxattr(f, "user.color", b"blue")
    assert os.getxattr(f, "user.color") == b"blue"


def test_new_file_has_no_user_xattrs(f: Path) -> None:
    assert [n for n in os.listxattr(f) if n.startswith("user.")] == []


def test_listxattr_exact_names(f: Path) -> None:
    for name in ("user.a", "user.bb", "user.with.dots"):
        os.setxattr(f, name, b"v")
    listed = [n for n in os.listxattr(f) if n.startswith("user.")]
    assert sorted(listed) == ["user.a", "user.bb", "user.with.dots"]


def test_overwrite_value(f: Path) -> None:
    os.setxattr(f, "user.k", b"a much longer first value")
    os.setxattr(f, "user.k", b"short")
    assert os.getxattr(f, "user.k") == b"short"


def test_empty_value(f: Path) -> None:
    os.setxattr(f, "user.empty", b"")
    assert os.getxattr(f, "user.empty") == b""
    assert "user.empty" in os.listxattr(f)


def test_binary_value_with_nuls(f: Path) -> None:
    value = bytes(range(256)) * 2
    os.setxattr(f, "user.bin", value)
    assert os.getxattr(f, "user.bin") == value


def test_4k_value(f: Path) -> None:
    value = os.urandom(4096)
    os.setxattr(f, "user.big", value)
    assert os.getxattr(f, "user.big") == value


def test_missing_attr_enodata(f: Path) -> None:
    with raises_errno(errno.ENODATA):
        os.getxattr(f, "user.nope")


def test_xattr_create_on_existing_eexist(f: Path) -> None:
    os.setxattr(f, "user.k", b"first")
    with raises_errno(errno.EEXIST):
        os.setxattr(f, "user.k", b"second", os.XATTR_CREATE)
    assert os.getxattr(f, "user.k") == b"first"


def test_xattr_create_on_new_succeeds(f: Path) -> None:
    os.setxattr(f, "user.k", b"v", os.XATTR_CREATE)
    assert os.getxattr(f, "user.k") == b"v"


def test_xattr_replace_on_missing_enodata(f: Path) -> None:
    with raises_errno(errno.ENODATA):
        os.setxattr(f, "user.k", b"v", os.XATTR_REPLACE)
    assert "user.k" not in os.listxattr(f)


def test_xattr_replace_on_existing_succeeds(f: Path) -> None:
    os.setxattr(f, "user.k", b"old")
    os.setxattr(f, "user.k", b"new", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.k") == b"new"


def test_removexattr(f: Path) -> None:
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.b", b"2")
    os.removexattr(f, "user.a")
    assert [n for n in os.listxattr(f) if n.startswith("user.")] == ["user.b"]
    with raises_errno(errno.ENODATA):
        os.getxattr(f, "user.a")


def test_removexattr_missing_enodata(f: Path) -> None:
    with raises_errno(errno.ENODATA):
        os.removexattr(f, "user.nope")


def test_size_query_and_erange(f: Path) -> None:
    os.setxattr(f, "user.k", b"0123456789")
    assert getxattr_raw(f, "user.k", 0) == (10, b"")
    assert getxattr_raw(f, "user.k", 10) == (10, b"0123456789")
    with raises_errno(errno.ERANGE):
        getxattr_raw(f, "user.k", 5)


def test_xattr_on_directory(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    os.setxattr(mnt / "d", "user.dir", b"yes")
    assert os.getxattr(mnt / "d", "user.dir") == b"yes"


def test_user_xattr_on_symlink_itself_eperm(mnt: Path) -> None:
    # user.* xattrs are only allowed on regular files and directories.
    os.symlink("nowhere", mnt / "l")
    with raises_errno(errno.EPERM):
        os.setxattr(mnt / "l", "user.k", b"v", follow_symlinks=False)


def test_xattr_through_symlink_hits_target(f: Path) -> None:
    os.symlink("f", f.parent / "l")
    os.setxattr(f.parent / "l", "user.k", b"via link")
    assert os.getxattr(f, "user.k") == b"via link"


def test_fd_xattr_calls(f: Path) -> None:
    with opened(f, os.O_RDONLY) as fd:
        os.setxattr(fd, "user.fd", b"1")
        assert os.getxattr(fd, "user.fd") == b"1"
        assert "user.fd" in os.listxattr(fd)
        os.removexattr(fd, "user.fd")


def test_xattr_shared_by_hard_links(f: Path) -> None:
    os.link(f, f.parent / "g")
    os.setxattr(f, "user.k", b"shared")
    assert os.getxattr(f.parent / "g", "user.k") == b"shared"


def test_xattr_survives_rename(f: Path) -> None:
    os.setxattr(f, "user.k", b"v")
    os.rename(f, f.parent / "renamed")
    assert os.getxattr(f.parent / "renamed", "user.k") == b"v"


def test_xattr_gone_with_unlinked_file(f: Path) -> None:
    os.setxattr(f, "user.k", b"v")
    os.unlink(f)
    write_file(f)
    with raises_errno(errno.ENODATA):
        os.getxattr(f, "user.k")


def test_xattrs_are_per_inode(mnt: Path) -> None:
    write_file(mnt / "a")
    write_file(mnt / "b")
    os.setxattr(mnt / "a", "user.k", b"a")
    with raises_errno(errno.ENODATA):
        os.getxattr(mnt / "b", "user.k")


def test_many_xattrs(f: Path) -> None:
    for i in range(50):
        os.setxattr(f, f"user.attr{i:03d}", str(i).encode())
    assert sorted(n for n in os.listxattr(f) if n.startswith("user.")) == [
        f"user.attr{i:03d}" for i in range(50)
    ]
    assert os.getxattr(f, "user.attr042") == b"42"


def test_setxattr_updates_ctime_not_mtime(f: Path) -> None:
    before = os.stat(f)
    wait_clock_past(before.st_ctime_ns)
    os.setxattr(f, "user.k", b"v")
    after = os.stat(f)
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_mtime_ns == before.st_mtime_ns


def test_unknown_namespace_eopnotsupp(f: Path) -> None:
    with raises_errno(errno.EOPNOTSUPP):
        os.setxattr(f, "bogus.k", b"v")


def test_missing_file_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.getxattr(mnt / "missing", "user.k")


def test_max_size_value(f: Path) -> None:
    value = os.urandom(65536)
    os.setxattr(f, "user.max", value)
    assert os.getxattr(f, "user.max") == value


def test_value_over_64k_e2big(f: Path) -> None:
    with raises_errno(errno.E2BIG):
        os.setxattr(f, "user.huge", bytes(65537))


def test_name_of_255_bytes(f: Path) -> None:
    name = "user." + "n" * 250
    os.setxattr(f, name, b"v")
    assert os.getxattr(f, name) == b"v"
    assert name in os.listxattr(f)


def test_name_over_255_bytes_erange(f: Path) -> None:
    with raises_errno(errno.ERANGE):
        os.setxattr(f, "user." + "n" * 251, b"v")
