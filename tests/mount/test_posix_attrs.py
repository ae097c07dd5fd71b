"""stat fields and setattr: chmod, chown, utimensat, and which operations touch
atime/mtime/ctime."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest
from posix_util import (
    UTIME_NOW,
    UTIME_OMIT,
    mount_options,
    opened,
    raises_errno,
    read_file,
    utimensat,
    wait_clock_past,
    write_file,
)

T1 = 1_234_567_890_123_456_789  # ns, every digit significant
T2 = 1_500_000_000_987_654_321
OLD_NS = 1_000_000_000 * 10**9
SLACK_NS = 50_000_000  # coarse kernel clock vs time.time_ns()

# --- stat basics -------------------------------------------------------------


def test_distinct_files_have_distinct_inodes(mnt: Path) -> None:
    for i in range(100):
        write_file(mnt / f"f{i}")
    os.mkdir(mnt / "d")
    inos = {os.stat(mnt / f"f{i}").st_ino for i in range(100)} | {os.stat(mnt / "d").st_ino}
    assert len(inos) == 101
    assert os.stat(mnt).st_ino not in inos


def test_same_device_for_all_entries(mnt: Path) -> None:
    write_file(mnt / "f")
    os.mkdir(mnt / "d")
    devs = {os.lstat(p).st_dev for p in (mnt, mnt / "f", mnt / "d")}
    assert len(devs) == 1


def test_inode_stable_across_lookups(mnt: Path) -> None:
    write_file(mnt / "f")
    ino = os.stat(mnt / "f").st_ino
    os.listdir(mnt)
    assert os.stat(mnt / "f").st_ino == ino
    with opened(mnt / "f", os.O_RDONLY) as fd:
        assert os.fstat(fd).st_ino == ino


def test_new_file_times_are_now(mnt: Path) -> None:
    t0 = time.time_ns()
    write_file(mnt / "f")
    t1 = time.time_ns()
    st = os.stat(mnt / "f")
    for t in (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns):
        assert t0 - SLACK_NS <= t <= t1 + SLACK_NS


# --- chmod --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o000, 0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o7777])
def test_chmod_file_sets_exact_mode(mnt: Path, mode: int) -> None:
    write_file(mnt / "f")
    os.chmod(mnt / "f", mode)
    st = os.stat(mnt / "f")
    assert stat.S_IMODE(st.st_mode) == mode
    assert stat.S_ISREG(st.st_mode)


def test_chmod_directory(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    os.chmod(mnt / "d", 0o1710)
    st = os.stat(mnt / "d")
    assert stat.S_IMODE(st.st_mode) == 0o1710
    assert stat.S_ISDIR(st.st_mode)


def test_fchmod(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o600) as fd:
        os.fchmod(fd, 0o640)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o640


def test_chmod_through_symlink_changes_target(mnt: Path) -> None:
    write_file(mnt / "t")
    os.chmod(mnt / "t", 0o600)
    os.symlink("t", mnt / "l")
    os.chmod(mnt / "l", 0o444)
    assert stat.S_IMODE(os.stat(mnt / "t").st_mode) == 0o444
    assert stat.S_IMODE(os.lstat(mnt / "l").st_mode) == 0o777


def test_chmod_updates_ctime_not_mtime(mnt: Path) -> None:
    write_file(mnt / "f")
    before = os.stat(mnt / "f")
    wait_clock_past(before.st_ctime_ns)
    os.chmod(mnt / "f", 0o600)
    after = os.stat(mnt / "f")
    assert after.st_ctime_ns > before.st_ctime_ns
    assert after.st_mtime_ns == before.st_mtime_ns


def test_chmod_missing_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.chmod(mnt / "missing", 0o644)


# --- chown (we are root) ------------------------------------------------------------------


def test_chown_file(mnt: Path) -> None:
    write_file(mnt / "f")
    os.chown(mnt / "f", 1234, 5678)
    st = os.stat(mnt / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_chown_minus_one_leaves_field(mnt: Path) -> None:
    write_file(mnt / "f")
    os.chown(mnt / "f", 1000, 2000)
    os.chown(mnt / "f", -1, 3000)
    assert (os.stat(mnt / "f").st_uid, os.stat(mnt / "f").st_gid) == (1000, 3000)
    os.chown(mnt / "f", 4000, -1)
    assert (os.stat(mnt / "f").st_uid, os.stat(mnt / "f").st_gid) == (4000, 3000)


def test_chown_directory_and_fchown(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    os.chown(mnt / "d", 42, 43)
    assert (os.stat(mnt / "d").st_uid, os.stat(mnt / "d").st_gid) == (42, 43)
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY) as fd:
        os.fchown(fd, 7, 8)
        assert (os.fstat(fd).st_uid, os.fstat(fd).st_gid) == (7, 8)


def test_lchown_changes_symlink_not_target(mnt: Path) -> None:
    write_file(mnt / "t")
    os.symlink("t", mnt / "l")
    os.lchown(mnt / "l", 99, 98)
    assert (os.lstat(mnt / "l").st_uid, os.lstat(mnt / "l").st_gid) == (99, 98)
    assert os.stat(mnt / "t").st_uid == os.geteuid()


def test_chown_large_ids(mnt: Path) -> None:
    write_file(mnt / "f")
    os.chown(mnt / "f", 2**32 - 2, 2**31 + 5)
    st = os.stat(mnt / "f")
    assert (st.st_uid, st.st_gid) == (2**32 - 2, 2**31 + 5)


def test_chown_clears_setuid_on_regular_file(mnt: Path) -> None:
    # Since Linux 2.2.13 even root's chown drops S_ISUID (and S_ISGID with g+x).
    write_file(mnt / "f")
    os.chmod(mnt / "f", 0o6755)
    os.chown(mnt / "f", 1000, 1000)
    assert stat.S_IMODE(os.stat(mnt / "f").st_mode) == 0o755


def test_chown_updates_ctime(mnt: Path) -> None:
    write_file(mnt / "f")
    before = os.stat(mnt / "f")
    wait_clock_past(before.st_ctime_ns)
    os.chown(mnt / "f", 1, 1)
    assert os.stat(mnt / "f").st_ctime_ns > before.st_ctime_ns


# --- utimensat --------------------------------------------------------------------------------


def test_utime_explicit_nanoseconds_preserved(mnt: Path) -> None:
    write_file(mnt / "f")
    os.utime(mnt / "f", ns=(T1, T2))
    st = os.stat(mnt / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (T1, T2)


def test_utime_on_directory(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    os.utime(mnt / "d", ns=(T2, T1))
    st = os.stat(mnt / "d")
    assert (st.st_atime_ns, st.st_mtime_ns) == (T2, T1)


def test_utime_before_epoch(mnt: Path) -> None:
    write_file(mnt / "f")
    t = -1_500_000_001  # 1969-12-31T23:59:58.499999999
    os.utime(mnt / "f", ns=(t, t))
    assert os.stat(mnt / "f").st_mtime_ns == t


def test_utime_beyond_2038(mnt: Path) -> None:
    write_file(mnt / "f")
    t = 2**33 * 10**9 + 7  # year 2242
    os.utime(mnt / "f", ns=(t, t))
    assert os.stat(mnt / "f").st_mtime_ns == t


def test_utime_none_sets_now(mnt: Path) -> None:
    write_file(mnt / "f")
    os.utime(mnt / "f", ns=(T1, T1))
    t0 = time.time_ns()
    os.utime(mnt / "f")
    t1 = time.time_ns()
    st = os.stat(mnt / "f")
    for t in (st.st_atime_ns, st.st_mtime_ns):
        assert t0 - SLACK_NS <= t <= t1 + SLACK_NS


def test_utimensat_utime_now_on_mtime_only(mnt: Path) -> None:
    write_file(mnt / "f")
    os.utime(mnt / "f", ns=(T1, T1))
    t0 = time.time_ns()
    utimensat(mnt / "f", (0, UTIME_OMIT), (0, UTIME_NOW))
    t1 = time.time_ns()
    st = os.stat(mnt / "f")
    assert st.st_atime_ns == T1
    assert t0 - SLACK_NS <= st.st_mtime_ns <= t1 + SLACK_NS


def test_utimensat_omit_mtime_set_atime(mnt: Path) -> None:
    write_file(mnt / "f")
    os.utime(mnt / "f", ns=(T1, T1))
    utimensat(mnt / "f", divmod(T2, 10**9), (0, UTIME_OMIT))
    st = os.stat(mnt / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (T2, T1)


def test_utimensat_both_omit_changes_nothing(mnt: Path) -> None:
    write_file(mnt / "f")
    os.utime(mnt / "f", ns=(T1, T2))
    before = os.stat(mnt / "f")
    wait_clock_past(before.st_ctime_ns)
    utimensat(mnt / "f", (0, UTIME_OMIT), (0, UTIME_OMIT))
    after = os.stat(mnt / "f")
    assert (after.st_atime_ns, after.st_mtime_ns) == (T1, T2)
    assert after.st_ctime_ns == before.st_ctime_ns


def test_utimensat_null_times_sets_now(mnt: Path) -> None:
    write_file(mnt / "f")
    os.utime(mnt / "f", ns=(T1, T1))
    utimensat(mnt / "f", None, None)
    assert os.stat(mnt / "f").st_mtime_ns > T1


def test_utimensat_invalid_nsec_einval(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.EINVAL):
        utimensat(mnt / "f", (0, 10**9), (0, 0))


def test_utimensat_nofollow_sets_symlink_times(mnt: Path) -> None:
    write_file(mnt / "t")
    os.utime(mnt / "t", ns=(T1, T1))
    os.symlink("t", mnt / "l")
    utimensat(mnt / "l", divmod(T2, 10**9), divmod(T2, 10**9), follow_symlinks=False)
    assert os.lstat(mnt / "l").st_mtime_ns == T2
    assert os.stat(mnt / "t").st_mtime_ns == T1


def test_utime_updates_ctime(mnt: Path) -> None:
    write_file(mnt / "f")
    before = os.stat(mnt / "f")
    wait_clock_past(before.st_ctime_ns)
    os.utime(mnt / "f", ns=(T1, T1))
    assert os.stat(mnt / "f").st_ctime_ns > before.st_ctime_ns


def test_futimens_via_fd(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY) as fd:
        os.utime(fd, ns=(T1, T2))
        assert os.fstat(fd).st_mtime_ns == T2
    assert os.stat(mnt / "f").st_atime_ns == T1


def test_utime_missing_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.utime(mnt / "missing", ns=(T1, T1))


# --- which operations touch which times ---------------------------------------------------------


def test_write_updates_mtime_and_ctime(mnt: Path) -> None:
    write_file(mnt / "f", b"abc")
    os.utime(mnt / "f", ns=(OLD_NS, OLD_NS))
    before = os.stat(mnt / "f")
    wait_clock_past(before.st_ctime_ns)
    with opened(mnt / "f", os.O_WRONLY) as fd:
        os.pwrite(fd, b"X", 1)
    after = os.stat(mnt / "f")
    assert after.st_mtime_ns > OLD_NS
    assert after.st_ctime_ns > before.st_ctime_ns


def test_mtime_visible_while_file_still_open(mnt: Path) -> None:
    write_file(mnt / "f", b"abc")
    os.utime(mnt / "f", ns=(OLD_NS, OLD_NS))
    with opened(mnt / "f", os.O_WRONLY) as fd:
        os.write(fd, b"new")
        assert os.stat(mnt / "f").st_mtime_ns > OLD_NS


def test_utime_after_write_wins(mnt: Path) -> None:
    # `cp -p`/`tar x` pattern: write data, then set mtime; a lazy flush of the
    # written data must not bump mtime afterwards.
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY) as fd:
        os.write(fd, b"contents")
        os.utime(fd, ns=(T1, T2))
    assert os.stat(mnt / "f").st_mtime_ns == T2
    assert read_file(mnt / "f") == b"contents"
    assert os.stat(mnt / "f").st_mtime_ns == T2


def test_read_does_not_change_mtime_or_ctime(mnt: Path) -> None:
    write_file(mnt / "f", b"abc")
    os.utime(mnt / "f", ns=(OLD_NS, OLD_NS))
    before = os.stat(mnt / "f")
    wait_clock_past(before.st_ctime_ns)
    assert read_file(mnt / "f") == b"abc"
    after = os.stat(mnt / "f")
    assert after.st_mtime_ns == OLD_NS
    assert after.st_ctime_ns == before.st_ctime_ns


def test_empty_write_keeps_size(mnt: Path) -> None:
    write_file(mnt / "f", b"abc")
    with opened(mnt / "f", os.O_WRONLY) as fd:
        assert os.write(fd, b"") == 0
    assert os.stat(mnt / "f").st_size == 3


def test_read_updates_atime_older_than_mtime(mnt: Path) -> None:
    # Required by POSIX; relatime (the Linux default) keeps it when atime <= mtime.
    if mount_options(mnt) & {"noatime"}:
        pytest.skip("mounted noatime")
    write_file(mnt / "f", b"abc")
    os.utime(mnt / "f", ns=(OLD_NS, OLD_NS + 10**9))
    assert read_file(mnt / "f") == b"abc"
    assert os.stat(mnt / "f").st_atime_ns > OLD_NS + 10**9
