"""Hard links, symlinks and readlink."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from posix_util import (
    listdir,
    opened,
    own_subdirs,
    raises_errno,
    read_file,
    wait_clock_past,
    write_file,
)

# --- hard links ---------------------------------------------------------------------


def test_link_shares_inode_and_counts(mnt: Path) -> None:
    write_file(mnt / "a", b"shared")
    os.link(mnt / "a", mnt / "b")
    sa, sb = os.stat(mnt / "a"), os.stat(mnt / "b")
    assert sa.st_ino == sb.st_ino
    assert sa.st_nlink == sb.st_nlink == 2
    assert read_file(mnt / "b") == b"shared"


def test_link_many_links_count(mnt: Path) -> None:
    write_file(mnt / "f")
    for i in range(50):
        os.link(mnt / "f", mnt / f"l{i}")
    assert os.stat(mnt / "f").st_nlink == 51
    for i in range(0, 50, 2):
        os.unlink(mnt / f"l{i}")
    assert os.stat(mnt / "l1").st_nlink == 26


def test_link_across_directories(mnt: Path) -> None:
    os.mkdir(mnt / "x")
    os.mkdir(mnt / "y")
    write_file(mnt / "x" / "f", b"x")
    os.link(mnt / "x" / "f", mnt / "y" / "g")
    assert os.stat(mnt / "y" / "g").st_ino == os.stat(mnt / "x" / "f").st_ino


def test_write_through_one_link_visible_through_other(mnt: Path) -> None:
    write_file(mnt / "a", b"before")
    os.link(mnt / "a", mnt / "b")
    with opened(mnt / "b", os.O_WRONLY | os.O_APPEND) as fd:
        os.write(fd, b"+after")
    assert read_file(mnt / "a") == b"before+after"
    assert os.stat(mnt / "a").st_size == 12


def test_unlink_one_link_keeps_other(mnt: Path) -> None:
    write_file(mnt / "a", b"survivor")
    os.link(mnt / "a", mnt / "b")
    os.unlink(mnt / "a")
    assert listdir(mnt) == ["b"]
    assert read_file(mnt / "b") == b"survivor"
    assert os.stat(mnt / "b").st_nlink == 1


def test_link_updates_ctime(mnt: Path) -> None:
    write_file(mnt / "a")
    before = os.stat(mnt / "a")
    wait_clock_past(before.st_ctime_ns)
    os.link(mnt / "a", mnt / "b")
    after = os.stat(mnt / "a")
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_mtime_ns == before.st_mtime_ns


def test_unlink_updates_ctime_of_remaining_link(mnt: Path) -> None:
    write_file(mnt / "a")
    os.link(mnt / "a", mnt / "b")
    before = os.stat(mnt / "b")
    wait_clock_past(before.st_ctime_ns)
    os.unlink(mnt / "a")
    assert os.stat(mnt / "b").st_ctime_ns > before.st_ctime_ns


def test_link_to_directory_eperm(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    with raises_errno(errno.EPERM):
        os.link(mnt / "d", mnt / "d2")
    assert os.stat(mnt / "d").st_nlink == 2


def test_link_to_existing_name_eexist(mnt: Path) -> None:
    write_file(mnt / "a", b"a")
    write_file(mnt / "b", b"b")
    with raises_errno(errno.EEXIST):
        os.link(mnt / "a", mnt / "b")
    assert read_file(mnt / "b") == b"b"
    assert os.stat(mnt / "a").st_nlink == 1


def test_link_missing_source_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.link(mnt / "missing", mnt / "b")


def test_link_into_missing_dir_enoent(mnt: Path) -> None:
    write_file(mnt / "a")
    with raises_errno(errno.ENOENT):
        os.link(mnt / "a", mnt / "nodir" / "b")
    assert os.stat(mnt / "a").st_nlink == 1


def test_link_to_symlink_itself(mnt: Path) -> None:
    write_file(mnt / "t")
    os.symlink("t", mnt / "l")
    os.link(mnt / "l", mnt / "l2", follow_symlinks=False)
    assert os.path.islink(mnt / "l2")
    assert os.lstat(mnt / "l2").st_ino == os.lstat(mnt / "l").st_ino
    assert os.lstat(mnt / "l").st_nlink == 2
    assert os.stat(mnt / "t").st_nlink == 1


def test_link_following_symlink_links_target(mnt: Path) -> None:
    write_file(mnt / "t")
    os.symlink("t", mnt / "l")
    # src_dir_fd makes CPython call linkat(AT_SYMLINK_FOLLOW) rather than link(2)
    with opened(mnt, os.O_RDONLY | os.O_DIRECTORY) as dfd:
        os.link("l", "hard", src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=True)
    assert not os.path.islink(mnt / "hard")
    assert os.stat(mnt / "hard").st_ino == os.stat(mnt / "t").st_ino
    assert os.stat(mnt / "t").st_nlink == 2


# --- symlinks ---------------------------------------------------------------------------


def test_symlink_relative_target(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    write_file(mnt / "d" / "t", b"rel")
    os.symlink("d/t", mnt / "l")
    assert os.readlink(mnt / "l") == "d/t"
    assert read_file(mnt / "l") == b"rel"


def test_symlink_relative_to_link_directory(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    write_file(mnt / "t", b"up")
    os.symlink("../t", mnt / "d" / "l")
    assert read_file(mnt / "d" / "l") == b"up"


def test_symlink_absolute_target(mnt: Path) -> None:
    write_file(mnt / "t", b"abs")
    target = str(mnt / "t")
    os.symlink(target, mnt / "l")
    assert os.readlink(mnt / "l") == target
    assert read_file(mnt / "l") == b"abs"


def test_symlink_to_directory(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    write_file(mnt / "d" / "inside")
    os.symlink("d", mnt / "l")
    assert os.listdir(mnt / "l") == ["inside"]
    assert stat.S_ISDIR(os.stat(str(mnt / "l") + "/").st_mode)
    assert os.stat(mnt).st_nlink == 3 + own_subdirs(mnt)


def test_symlink_lstat_vs_stat(mnt: Path) -> None:
    write_file(mnt / "t", b"12345")
    os.symlink("t", mnt / "l")
    lst, st = os.lstat(mnt / "l"), os.stat(mnt / "l")
    assert stat.S_ISLNK(lst.st_mode)
    assert lst.st_size == len("t")
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 5
    assert st.st_ino == os.stat(mnt / "t").st_ino != lst.st_ino


def test_symlink_mode_is_0777(mnt: Path) -> None:
    os.symlink("x", mnt / "l")
    assert stat.S_IMODE(os.lstat(mnt / "l").st_mode) == 0o777


def test_dangling_symlink(mnt: Path) -> None:
    os.symlink("nowhere", mnt / "l")
    assert os.readlink(mnt / "l") == "nowhere"
    assert stat.S_ISLNK(os.lstat(mnt / "l").st_mode)
    with raises_errno(errno.ENOENT):
        os.stat(mnt / "l")
    with raises_errno(errno.ENOENT):
        os.open(mnt / "l", os.O_RDONLY)
    assert listdir(mnt) == ["l"]


def test_dangling_symlink_resolves_once_target_appears(mnt: Path) -> None:
    os.symlink("later", mnt / "l")
    write_file(mnt / "later", b"now")
    assert read_file(mnt / "l") == b"now"


def test_symlink_target_bytes_preserved(mnt: Path) -> None:
    target = b"a//b/../\xff\xfe weird \n name/."
    os.symlink(target, os.fsencode(mnt / "l"))
    assert os.readlink(os.fsencode(mnt / "l")) == target


def test_symlink_long_target(mnt: Path) -> None:
    target = "/".join(["x" * 200] * 21)[:4095]
    os.symlink(target, mnt / "l")
    assert os.readlink(mnt / "l") == target
    assert os.lstat(mnt / "l").st_size == 4095


def test_symlink_target_too_long_enametoolong(mnt: Path) -> None:
    with raises_errno(errno.ENAMETOOLONG):
        os.symlink("y" * 4096, mnt / "l")


def test_symlink_existing_name_eexist(mnt: Path) -> None:
    write_file(mnt / "f", b"keep")
    with raises_errno(errno.EEXIST):
        os.symlink("x", mnt / "f")
    assert read_file(mnt / "f") == b"keep"


def test_symlink_in_missing_dir_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.symlink("x", mnt / "nodir" / "l")


def test_readlink_regular_file_einval(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.EINVAL):
        os.readlink(mnt / "f")


def test_readlink_missing_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.readlink(mnt / "missing")


def test_o_nofollow_on_symlink_eloop(mnt: Path) -> None:
    write_file(mnt / "t")
    os.symlink("t", mnt / "l")
    with raises_errno(errno.ELOOP):
        os.open(mnt / "l", os.O_RDONLY | os.O_NOFOLLOW)


def test_o_nofollow_on_regular_file_opens(mnt: Path) -> None:
    write_file(mnt / "t", b"ok")
    with opened(mnt / "t", os.O_RDONLY | os.O_NOFOLLOW) as fd:
        assert os.read(fd, 10) == b"ok"


def test_o_path_nofollow_opens_symlink_itself(mnt: Path) -> None:
    os.symlink("nowhere", mnt / "l")
    with opened(mnt / "l", os.O_PATH | os.O_NOFOLLOW) as fd:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)


def test_symlink_loop_eloop(mnt: Path) -> None:
    os.symlink("b", mnt / "a")
    os.symlink("a", mnt / "b")
    with raises_errno(errno.ELOOP):
        os.stat(mnt / "a")
    with raises_errno(errno.ELOOP):
        os.open(mnt / "a", os.O_RDONLY)
    with raises_errno(errno.ELOOP):
        os.open(mnt / "a", os.O_CREAT | os.O_WRONLY)


def test_self_referencing_symlink_eloop(mnt: Path) -> None:
    os.symlink("self", mnt / "self")
    with raises_errno(errno.ELOOP):
        os.stat(mnt / "self")


def test_symlink_chain_within_limit_resolves(mnt: Path) -> None:
    write_file(mnt / "end", b"end")
    prev = "end"
    for i in range(20):
        os.symlink(prev, mnt / f"s{i}")
        prev = f"s{i}"
    assert read_file(mnt / prev) == b"end"


def test_symlink_chain_over_40_eloop(mnt: Path) -> None:
    write_file(mnt / "end")
    prev = "end"
    for i in range(41):
        os.symlink(prev, mnt / f"s{i}")
        prev = f"s{i}"
    with raises_errno(errno.ELOOP):
        os.stat(mnt / prev)


def test_symlink_as_intermediate_path_component(mnt: Path) -> None:
    os.makedirs(mnt / "real" / "sub")
    write_file(mnt / "real" / "sub" / "f", b"through")
    os.symlink("real", mnt / "alias")
    assert read_file(mnt / "alias" / "sub" / "f") == b"through"
    write_file(mnt / "alias" / "new", b"created")
    assert read_file(mnt / "real" / "new") == b"created"
