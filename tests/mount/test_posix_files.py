"""Regular files: open flags, read/write, sparse files, truncate, unlink-while-open,
fsync, O_TMPFILE."""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from pathlib import Path

import pytest
from posix_util import (
    BLOCK,
    listdir,
    opened,
    pattern,
    pread_all,
    raises_errno,
    read_file,
    umask,
    write_file,
)

OLD_NS = 1_000_000_000 * 10**9  # 2001-09-09: any real modification is later

# --- open / create ---------------------------------------------------------


def test_create_excl_new_file(mnt: Path) -> None:
    p = mnt / "f"
    with opened(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY) as fd:
        st = os.fstat(fd)
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 0
    assert listdir(mnt) == ["f"]


def test_create_excl_existing_file_eexist(mnt: Path) -> None:
    write_file(mnt / "f", b"keep")
    with raises_errno(errno.EEXIST):
        os.open(mnt / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert read_file(mnt / "f") == b"keep"


def test_create_excl_existing_dir_eexist(mnt: Path) -> None:
    (mnt / "d").mkdir()
    with raises_errno(errno.EEXIST):
        os.open(mnt / "d", os.O_CREAT | os.O_EXCL | os.O_WRONLY)


def test_create_excl_on_dangling_symlink_eexist(mnt: Path) -> None:
    os.symlink("target", mnt / "link")
    with raises_errno(errno.EEXIST):
        os.open(mnt / "link", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert not (mnt / "target").exists()


def test_create_through_dangling_symlink_creates_target(mnt: Path) -> None:
    os.symlink("target", mnt / "link")
    with opened(mnt / "link", os.O_CREAT | os.O_WRONLY) as fd:
        os.write(fd, b"via link")
    assert read_file(mnt / "target") == b"via link"
    assert os.path.islink(mnt / "link")


def test_create_without_excl_opens_existing_untruncated(mnt: Path) -> None:
    write_file(mnt / "f", b"content")
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        assert os.read(fd, 100) == b"content"


def test_create_mode_masked_by_umask(mnt: Path) -> None:
    with umask(0o027):
        with opened(mnt / "a", os.O_CREAT | os.O_WRONLY, 0o777):
            pass
        with opened(mnt / "b", os.O_CREAT | os.O_WRONLY, 0o604):
            pass
    assert stat.S_IMODE(os.stat(mnt / "a").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(mnt / "b").st_mode) == 0o600


def test_create_owned_by_caller(mnt: Path) -> None:
    write_file(mnt / "f")
    st = os.stat(mnt / "f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


def test_new_file_has_zero_size_and_blocks(mnt: Path) -> None:
    write_file(mnt / "f")
    st = os.stat(mnt / "f")
    assert st.st_size == 0
    assert st.st_blocks == 0
    assert st.st_nlink == 1


def test_o_trunc_empties_file(mnt: Path) -> None:
    write_file(mnt / "f", pattern(3 * BLOCK))
    with opened(mnt / "f", os.O_WRONLY | os.O_TRUNC) as fd:
        assert os.fstat(fd).st_size == 0
    assert read_file(mnt / "f") == b""
    assert os.stat(mnt / "f").st_blocks == 0


def test_o_trunc_updates_mtime(mnt: Path) -> None:
    write_file(mnt / "f", b"data")
    os.utime(mnt / "f", ns=(OLD_NS, OLD_NS))
    with opened(mnt / "f", os.O_WRONLY | os.O_TRUNC):
        pass
    assert os.stat(mnt / "f").st_mtime_ns > OLD_NS


def test_o_trunc_then_write_has_no_stale_tail(mnt: Path) -> None:
    write_file(mnt / "f", b"x" * (BLOCK + 100))
    with opened(mnt / "f", os.O_WRONLY | os.O_TRUNC) as fd:
        os.write(fd, b"short")
    with opened(mnt / "f", os.O_RDWR) as fd:
        os.ftruncate(fd, BLOCK + 100)
        assert pread_all(fd, BLOCK + 100, 0) == b"short" + bytes(BLOCK + 95)


def test_o_directory_on_file_enotdir(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.ENOTDIR):
        os.open(mnt / "f", os.O_RDONLY | os.O_DIRECTORY)


def test_o_directory_on_dir_succeeds(mnt: Path) -> None:
    (mnt / "d").mkdir()
    with opened(mnt / "d", os.O_RDONLY | os.O_DIRECTORY) as fd:
        assert stat.S_ISDIR(os.fstat(fd).st_mode)


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_CREAT],
                         ids=["wronly", "rdwr", "creat"])
def test_open_dir_for_writing_eisdir(mnt: Path, flags: int) -> None:
    (mnt / "d").mkdir()
    with raises_errno(errno.EISDIR):
        os.open(mnt / "d", flags)


def test_open_missing_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.open(mnt / "missing", os.O_RDONLY)


def test_create_in_missing_parent_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.open(mnt / "nodir" / "f", os.O_CREAT | os.O_WRONLY)
    assert listdir(mnt) == []


def test_open_below_file_enotdir(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.ENOTDIR):
        os.open(mnt / "f" / "x", os.O_RDONLY)


def test_create_below_file_enotdir(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.ENOTDIR):
        os.open(mnt / "f" / "x", os.O_CREAT | os.O_WRONLY)


def test_trailing_slash_on_file_enotdir(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.ENOTDIR):
        os.open(str(mnt / "f") + "/", os.O_RDONLY)


def test_create_with_trailing_slash_eisdir(mnt: Path) -> None:
    with raises_errno(errno.EISDIR):
        os.open(str(mnt / "new") + "/", os.O_CREAT | os.O_WRONLY)
    assert listdir(mnt) == []


def test_read_on_write_only_fd_ebadf(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY) as fd, raises_errno(errno.EBADF):
        os.read(fd, 1)


def test_write_on_read_only_fd_ebadf(mnt: Path) -> None:
    write_file(mnt / "f")
    with opened(mnt / "f", os.O_RDONLY) as fd, raises_errno(errno.EBADF):
        os.write(fd, b"x")


def test_read_on_directory_fd_eisdir(mnt: Path) -> None:
    with opened(mnt, os.O_RDONLY | os.O_DIRECTORY) as fd, raises_errno(errno.EISDIR):
        os.read(fd, 10)


# --- O_APPEND ----------------------------------------------------------------


def test_append_lands_at_end_after_lseek(mnt: Path) -> None:
    write_file(mnt / "f", b"hello")
    with opened(mnt / "f", os.O_WRONLY | os.O_APPEND) as fd:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b" world")
        assert os.lseek(fd, 0, os.SEEK_CUR) == 11
    assert read_file(mnt / "f") == b"hello world"


def test_append_sees_growth_through_other_fd(mnt: Path) -> None:
    write_file(mnt / "f")
    with opened(mnt / "f", os.O_WRONLY | os.O_APPEND) as a, \
            opened(mnt / "f", os.O_WRONLY | os.O_APPEND) as b:
        os.write(a, b"1")
        os.write(b, b"22")
        os.write(a, b"333")
    assert read_file(mnt / "f") == b"122333"


def test_append_after_plain_write_through_other_fd(mnt: Path) -> None:
    write_file(mnt / "f", b"ab")
    with opened(mnt / "f", os.O_WRONLY | os.O_APPEND) as a, \
            opened(mnt / "f", os.O_WRONLY) as b:
        os.pwrite(b, b"XYZW", 1)
        os.write(a, b"!")
    assert read_file(mnt / "f") == b"aXYZW!"


def test_pwrite_with_o_append_appends(mnt: Path) -> None:
    # Linux ignores the pwrite offset when O_APPEND is set (see pwrite(2), BUGS).
    write_file(mnt / "f", b"abc")
    with opened(mnt / "f", os.O_WRONLY | os.O_APPEND) as fd:
        os.pwrite(fd, b"Z", 0)
    assert read_file(mnt / "f") == b"abcZ"


def test_concurrent_appends_do_not_interleave(mnt: Path) -> None:
    n, size = 300, 1000
    write_file(mnt / "log")

    def writer(tag: bytes) -> None:
        with opened(mnt / "log", os.O_WRONLY | os.O_APPEND) as fd:
            for _ in range(n):
                assert os.write(fd, tag * (size - 1) + b"\n") == size

    threads = [threading.Thread(target=writer, args=(t,)) for t in (b"a", b"b", b"c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = read_file(mnt / "log")
    assert len(data) == 3 * n * size
    records = [data[i:i + size] for i in range(0, len(data), size)]
    for rec in records:
        assert rec[:-1] == rec[:1] * (size - 1) and rec[-1:] == b"\n"
    assert sorted(r[:1] for r in records) == [b"a"] * n + [b"b"] * n + [b"c"] * n


# --- read / write --------------------------------------------------------------


def test_write_then_read_back(mnt: Path) -> None:
    write_file(mnt / "f", b"hello\0world\n")
    assert read_file(mnt / "f") == b"hello\0world\n"
    assert os.stat(mnt / "f").st_size == 12


def test_read_past_eof_returns_empty(mnt: Path) -> None:
    write_file(mnt / "f", b"12345")
    with opened(mnt / "f", os.O_RDONLY) as fd:
        assert os.pread(fd, 10, 5) == b""
        assert os.pread(fd, 10, 1 << 30) == b""
        os.lseek(fd, 100, os.SEEK_SET)
        assert os.read(fd, 10) == b""


def test_read_straddling_eof_is_short(mnt: Path) -> None:
    write_file(mnt / "f", b"0123456789")
    with opened(mnt / "f", os.O_RDONLY) as fd:
        assert os.pread(fd, 100, 7) == b"789"


def test_pwrite_pread_at_offsets_leave_file_offset_alone(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        os.write(fd, b"0123456789")
        os.pwrite(fd, b"AB", 3)
        os.pwrite(fd, b"Z", 9)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 10
        assert os.pread(fd, 4, 2) == b"2AB5"
        assert os.lseek(fd, 0, os.SEEK_CUR) == 10
        assert pread_all(fd, 10, 0) == b"012AB5678Z"


def test_overwrite_across_block_boundary(mnt: Path) -> None:
    orig = bytearray(pattern(3 * BLOCK, seed=1))
    write_file(mnt / "f", bytes(orig))
    patch = pattern(5000, seed=2)
    off = BLOCK - 1234
    with opened(mnt / "f", os.O_RDWR) as fd:
        assert os.pwrite(fd, patch, off) == len(patch)
    orig[off:off + len(patch)] = patch
    assert read_file(mnt / "f") == bytes(orig)
    assert os.stat(mnt / "f").st_size == 3 * BLOCK


def test_overwrite_spanning_three_blocks(mnt: Path) -> None:
    orig = bytearray(pattern(4 * BLOCK, seed=3))
    write_file(mnt / "f", bytes(orig))
    patch = pattern(BLOCK + 10, seed=4)
    off = BLOCK - 5
    with opened(mnt / "f", os.O_RDWR) as fd:
        os.pwrite(fd, patch, off)
    orig[off:off + len(patch)] = patch
    assert read_file(mnt / "f") == bytes(orig)


def test_single_byte_writes_at_block_edges(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        for off in (BLOCK - 1, BLOCK, 2 * BLOCK - 1, 2 * BLOCK):
            os.pwrite(fd, b"x", off)
        data = pread_all(fd, 2 * BLOCK + 1, 0)
    expected = bytearray(2 * BLOCK + 1)
    for off in (BLOCK - 1, BLOCK, 2 * BLOCK - 1, 2 * BLOCK):
        expected[off] = ord("x")
    assert data == bytes(expected)


def test_large_write_reads_back_exactly(mnt: Path) -> None:
    data = pattern(6 * 1024 * 1024 + 12345, seed=5)
    write_file(mnt / "big", data)
    assert os.stat(mnt / "big").st_size == len(data)
    assert read_file(mnt / "big") == data


def test_large_file_written_in_odd_chunks(mnt: Path) -> None:
    data = pattern(3 * 1024 * 1024 + 7, seed=6)
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY) as fd:
        steps = itertools.cycle((1, 4095, 65537, 131071, 131073, 300000))
        pos = 0
        while pos < len(data):
            pos += os.write(fd, data[pos:pos + next(steps)])
    assert pos == len(data)
    with opened(mnt / "f", os.O_RDONLY) as fd:
        for off, ln in ((0, 10), (BLOCK - 3, 7), (1_000_000, 200_000), (len(data) - 5, 100)):
            assert pread_all(fd, ln, off) == data[off:off + ln]


def test_write_visible_to_other_fd_before_close(mnt: Path) -> None:
    write_file(mnt / "f", b"aaaa")
    with opened(mnt / "f", os.O_RDWR) as w, opened(mnt / "f", os.O_RDONLY) as r:
        os.pwrite(w, b"bb", 1)
        os.pwrite(w, b"tail", 4)
        assert os.pread(r, 100, 0) == b"abbatail"
        assert os.stat(mnt / "f").st_size == 8


# --- sparse files ----------------------------------------------------------------


def test_write_past_eof_leaves_zero_hole(mnt: Path) -> None:
    off = 10 * 1024 * 1024 + 3
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        os.write(fd, b"head")
        os.pwrite(fd, b"tail", off)
        assert os.fstat(fd).st_size == off + 4
        assert pread_all(fd, 4, 0) == b"head"
        assert pread_all(fd, BLOCK * 3, BLOCK - 7) == bytes(BLOCK * 3)
        assert pread_all(fd, 100, off - 96) == bytes(96) + b"tail"


def test_big_hole_uses_few_blocks(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY) as fd:
        os.pwrite(fd, b"x", 64 * 1024 * 1024)
    st = os.stat(mnt / "f")
    assert st.st_size == 64 * 1024 * 1024 + 1
    assert st.st_blocks * 512 < 1024 * 1024


def test_lseek_past_eof_then_write(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        os.lseek(fd, 3 * BLOCK + 1, os.SEEK_SET)
        os.write(fd, b"z")
    data = read_file(mnt / "f")
    assert data == bytes(3 * BLOCK + 1) + b"z"


def test_write_into_middle_of_hole(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        os.pwrite(fd, b"E", 4 * BLOCK)
        os.pwrite(fd, b"mid", 2 * BLOCK + 10)
        data = pread_all(fd, 4 * BLOCK + 1, 0)
    expected = bytearray(4 * BLOCK + 1)
    expected[2 * BLOCK + 10:2 * BLOCK + 13] = b"mid"
    expected[-1:] = b"E"
    assert data == bytes(expected)


def test_write_at_one_tebibyte(mnt: Path) -> None:
    off = 1 << 40
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        os.pwrite(fd, b"far", off)
        assert os.fstat(fd).st_size == off + 3
        assert pread_all(fd, 10, off - 7) == bytes(7) + b"far"
        assert os.fstat(fd).st_blocks * 512 < 1024 * 1024
        os.ftruncate(fd, 0)
        assert os.fstat(fd).st_size == 0


def test_overwrite_does_not_grow_st_blocks(mnt: Path) -> None:
    n = 1024 * 1024
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        for i in range(8):
            os.pwrite(fd, pattern(n, seed=i), 0)
    assert os.stat(mnt / "f").st_blocks * 512 <= 2 * n


def test_truncate_down_shrinks_st_blocks(mnt: Path) -> None:
    write_file(mnt / "f", pattern(8 * BLOCK))
    os.truncate(mnt / "f", BLOCK)
    assert os.stat(mnt / "f").st_blocks * 512 <= 2 * BLOCK


def test_copy_file_range_between_files(mnt: Path) -> None:
    data = pattern(3 * BLOCK + 17)
    write_file(mnt / "src", data)
    with opened(mnt / "src", os.O_RDONLY) as src, \
            opened(mnt / "dst", os.O_CREAT | os.O_RDWR) as dst:
        os.pwrite(dst, b"prefix", 0)
        copied, want = 0, len(data) - 100
        while copied < want:
            n = os.copy_file_range(src, dst, want - copied, 100 + copied, 6 + copied)
            assert n > 0
            copied += n
    assert read_file(mnt / "dst") == b"prefix" + data[100:]


def test_dense_file_st_blocks_cover_data(mnt: Path) -> None:
    n = 1024 * 1024 + 100
    write_file(mnt / "f", pattern(n))
    st = os.stat(mnt / "f")
    assert st.st_blocks * 512 >= n
    assert st.st_blksize > 0


# --- truncate ----------------------------------------------------------------------


def test_ftruncate_down(mnt: Path) -> None:
    data = pattern(2 * BLOCK + 50)
    write_file(mnt / "f", data)
    with opened(mnt / "f", os.O_RDWR) as fd:
        os.ftruncate(fd, BLOCK + 3)
        assert os.fstat(fd).st_size == BLOCK + 3
    assert read_file(mnt / "f") == data[:BLOCK + 3]


def test_truncate_path_up_reads_zeros(mnt: Path) -> None:
    write_file(mnt / "f", b"abc")
    os.truncate(mnt / "f", 2 * BLOCK)
    assert read_file(mnt / "f") == b"abc" + bytes(2 * BLOCK - 3)


def test_truncate_down_then_up_zeros_gap(mnt: Path) -> None:
    write_file(mnt / "f", b"\xaa" * (3 * BLOCK))
    cut = BLOCK + 7  # mid-block: the rest of that block must not resurface
    os.truncate(mnt / "f", cut)
    os.truncate(mnt / "f", 3 * BLOCK)
    assert read_file(mnt / "f") == b"\xaa" * cut + bytes(3 * BLOCK - cut)


def test_ftruncate_down_then_write_past_eof_zeros_gap(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        os.write(fd, b"\xbb" * (2 * BLOCK))
        os.ftruncate(fd, 100)
        os.pwrite(fd, b"end", 2 * BLOCK)
        data = pread_all(fd, 2 * BLOCK + 3, 0)
    assert data == b"\xbb" * 100 + bytes(2 * BLOCK - 100) + b"end"


def test_truncate_to_zero_releases_blocks(mnt: Path) -> None:
    write_file(mnt / "f", pattern(BLOCK * 4))
    os.truncate(mnt / "f", 0)
    st = os.stat(mnt / "f")
    assert (st.st_size, st.st_blocks) == (0, 0)


def test_truncate_up_is_sparse(mnt: Path) -> None:
    write_file(mnt / "f")
    os.truncate(mnt / "f", 64 * 1024 * 1024)
    st = os.stat(mnt / "f")
    assert st.st_size == 64 * 1024 * 1024
    assert st.st_blocks * 512 < 1024 * 1024


def test_truncate_updates_mtime_and_ctime(mnt: Path) -> None:
    write_file(mnt / "f", b"0123456789")
    os.utime(mnt / "f", ns=(OLD_NS, OLD_NS))
    before = os.stat(mnt / "f")
    os.truncate(mnt / "f", 5)
    after = os.stat(mnt / "f")
    assert after.st_mtime_ns > OLD_NS
    assert after.st_ctime_ns >= before.st_ctime_ns


def test_truncate_directory_eisdir(mnt: Path) -> None:
    (mnt / "d").mkdir()
    with raises_errno(errno.EISDIR):
        os.truncate(mnt / "d", 0)


def test_truncate_missing_enoent(mnt: Path) -> None:
    with raises_errno(errno.ENOENT):
        os.truncate(mnt / "missing", 0)


def test_truncate_negative_einval(mnt: Path) -> None:
    write_file(mnt / "f", b"x")
    with raises_errno(errno.EINVAL):
        os.truncate(mnt / "f", -1)


def test_ftruncate_read_only_fd_einval(mnt: Path) -> None:
    write_file(mnt / "f", b"x")
    with opened(mnt / "f", os.O_RDONLY) as fd, raises_errno(errno.EINVAL, errno.EBADF):
        os.ftruncate(fd, 0)
    assert read_file(mnt / "f") == b"x"


# --- unlinked while open ------------------------------------------------------------


def test_unlinked_open_file_still_readable_and_writable(mnt: Path) -> None:
    data = pattern(BLOCK + 10)
    write_file(mnt / "f", data)
    with opened(mnt / "f", os.O_RDWR) as fd:
        os.unlink(mnt / "f")
        assert pread_all(fd, len(data), 0) == data
        os.pwrite(fd, b"more", len(data))
        assert pread_all(fd, 4, len(data)) == b"more"
        assert os.fstat(fd).st_size == len(data) + 4


def test_unlinked_open_file_fstat_nlink_zero(mnt: Path) -> None:
    write_file(mnt / "f", b"x")
    with opened(mnt / "f", os.O_RDONLY) as fd:
        ino = os.fstat(fd).st_ino
        os.unlink(mnt / "f")
        st = os.fstat(fd)
        assert st.st_nlink == 0
        assert st.st_ino == ino


def test_unlinked_open_file_gone_from_directory(mnt: Path) -> None:
    write_file(mnt / "f", b"old")
    with opened(mnt / "f", os.O_RDONLY) as fd:
        os.unlink(mnt / "f")
        assert listdir(mnt) == []
        with raises_errno(errno.ENOENT):
            os.stat(mnt / "f")
        write_file(mnt / "f", b"new")  # the name is free for an unrelated file
        assert os.pread(fd, 10, 0) == b"old"
    assert read_file(mnt / "f") == b"new"
    assert listdir(mnt) == ["f"]


def test_unlinked_open_file_survives_many_writes_after_close_of_other_fd(mnt: Path) -> None:
    write_file(mnt / "f", b"")
    with opened(mnt / "f", os.O_RDWR) as keep:
        with opened(mnt / "f", os.O_RDONLY):
            os.unlink(mnt / "f")
        data = pattern(2 * BLOCK, seed=9)
        os.pwrite(keep, data, 0)
        assert pread_all(keep, len(data), 0) == data
    assert listdir(mnt) == []


# --- fsync ------------------------------------------------------------------------------


def test_fsync_file(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY) as fd:
        os.write(fd, b"data")
        os.fsync(fd)
    assert read_file(mnt / "f") == b"data"


def test_fdatasync_file(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY) as fd:
        os.write(fd, b"data")
        os.fdatasync(fd)


def test_fsync_read_only_fd(mnt: Path) -> None:
    write_file(mnt / "f", b"data")
    with opened(mnt / "f", os.O_RDONLY) as fd:
        os.fsync(fd)


def test_fsync_directory_fd(mnt: Path) -> None:
    (mnt / "d").mkdir()
    write_file(mnt / "d" / "f", b"x")
    with opened(mnt / "d", os.O_RDONLY | os.O_DIRECTORY) as fd:
        os.fsync(fd)
        os.fdatasync(fd)


def test_sync_whole_system(mnt: Path) -> None:
    write_file(mnt / "f", b"x")
    os.sync()
    assert read_file(mnt / "f") == b"x"


def test_o_sync_write(mnt: Path) -> None:
    with opened(mnt / "f", os.O_CREAT | os.O_WRONLY | os.O_SYNC) as fd:
        os.write(fd, b"synced")
    assert read_file(mnt / "f") == b"synced"


# --- O_TMPFILE (optional feature) -------------------------------------------------------


def test_o_tmpfile_anonymous_then_linked(mnt: Path) -> None:
    try:
        fd = os.open(mnt, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR):
            pytest.xfail(f"O_TMPFILE unsupported ({errno.errorcode[e.errno]})")
        raise
    try:
        os.write(fd, b"anon")
        assert os.fstat(fd).st_nlink == 0
        assert listdir(mnt) == []
        # dst_dir_fd makes CPython use linkat(AT_SYMLINK_FOLLOW) instead of link(2)
        with opened(mnt, os.O_RDONLY | os.O_DIRECTORY) as dfd:
            os.link(f"/proc/self/fd/{fd}", "named", dst_dir_fd=dfd)
        assert os.fstat(fd).st_nlink == 1
    finally:
        os.close(fd)
    assert read_file(mnt / "named") == b"anon"
