"""File data: writes and reads across 128 KiB blocks, sparse files and holes,
truncation up and down, and the stored-bytes counter behind st_blocks."""

from __future__ import annotations

import errno
import random

import pytest
from fsutil import cat, inode_records, mkdir, mkfile, raises, symlink

from agentfs.posix.fs import BLOCK_SIZE, MAX_FILE_SIZE, ROOT_INO, FileSystem, SetAttr

BS = BLOCK_SIZE


def test_block_size() -> None:
    assert BS == 128 * 1024


class Shadow:
    """A file in the model plus the bytes it should hold."""

    def __init__(self, fs: FileSystem, name: bytes = b"f") -> None:
        self.fs = fs
        self.ino = mkfile(fs, ROOT_INO, name).ino
        self.data = bytearray()

    def write(self, off: int, data: bytes) -> None:
        a = self.fs.write(self.ino, off, data)
        if len(self.data) < off:
            self.data += bytes(off - len(self.data))
        self.data[off:off + len(data)] = data
        assert a.size == len(self.data)

    def truncate(self, size: int) -> None:
        a = self.fs.setattr(self.ino, SetAttr(size=size))
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data += bytes(size - len(self.data))
        assert a.size == size

    def check(self) -> None:
        a = self.fs.getattr(self.ino)
        assert a.size == len(self.data)
        got = self.fs.read(self.ino, 0, len(self.data) + 10)
        assert got == bytes(self.data)
        assert a.stored <= a.size  # fsck checks it equals what the blocks hold


# ----------------------------------------------------------------- basics


def test_write_read(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    a = fs.write(f.ino, 0, b"hello world")
    assert a.size == 11
    assert a.stored == 11
    assert a.mtime_ns > f.mtime_ns
    assert a.ctime_ns > f.ctime_ns
    assert fs.read(f.ino, 0, 100) == b"hello world"
    assert fs.read(f.ino, 6, 5) == b"world"
    assert fs.read(f.ino, 6, 1) == b"w"
    assert fs.read(f.ino, 11, 10) == b""
    assert fs.read(f.ino, 1000, 10) == b""
    assert fs.read(f.ino, 0, 0) == b""


def test_overwrite_middle(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"0123456789")
    a = fs.write(f.ino, 3, b"abc")
    assert a.size == 10
    assert a.stored == 10
    assert cat(fs, f.ino) == b"012abc6789"


def test_append(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    for i in range(100):
        fs.write(f.ino, i * 7, b"chunk%02d" % i)
    assert cat(fs, f.ino) == b"".join(b"chunk%02d" % i for i in range(100))


def test_write_empty(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"abc")
    a = fs.write(f.ino, 1, b"")
    assert a.size == 3
    assert cat(fs, f.ino) == b"abc"


def test_write_across_blocks(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    data = random.Random(1).randbytes(3 * BS + 1000)
    a = fs.write(f.ino, 0, data)
    assert a.size == len(data)
    assert a.stored == len(data)
    assert cat(fs, f.ino) == data
    # Reads that straddle block boundaries.
    for off, n in [(BS - 5, 10), (BS, BS), (2 * BS - 1, 2), (0, 3 * BS + 1000), (3 * BS, 5000)]:
        assert fs.read(f.ino, off, n) == data[off:off + n]
    # An overwrite straddling two blocks.
    patch = b"P" * 100
    fs.write(f.ino, 2 * BS - 50, patch)
    expect = data[:2 * BS - 50] + patch + data[2 * BS + 50:]
    assert cat(fs, f.ino) == expect
    assert fs.getattr(f.ino).stored == len(data)


def test_large_file_roundtrip(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    data = random.Random(2).randbytes(2 * 1024 * 1024 + 17)
    for off in range(0, len(data), 65536):
        fs.write(f.ino, off, data[off:off + 65536])
    assert cat(fs, f.ino) == data
    assert fs.getattr(f.ino).stored == len(data)


# ----------------------------------------------------------------- sparse files


def test_sparse_write_far_out(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    off = 8 * BS  # exactly at a block start
    a = fs.write(f.ino, off, b"tail")
    assert a.size == off + 4
    assert a.stored == 4  # the holes hold nothing
    assert fs.read(f.ino, 0, 10) == bytes(10)
    assert fs.read(f.ino, off - 3, 7) == b"\0\0\0tail"
    assert cat(fs, f.ino) == bytes(off) + b"tail"


def test_sparse_write_mid_block(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    off = BS + 5000  # inside block 1
    a = fs.write(f.ino, off, b"x" * 10)
    assert a.size == off + 10
    # Block 1 stores its leading zeros up to the data; block 0 is a hole.
    assert a.stored == 5000 + 10
    assert cat(fs, f.ino) == bytes(off) + b"x" * 10


def test_holes_between_data(fs: FileSystem) -> None:
    s = Shadow(fs)
    s.write(0, b"head")
    s.write(5 * BS + 100, b"middle")
    s.write(20 * BS, b"end")
    s.check()
    a = fs.getattr(s.ino)
    assert a.stored == 4 + 100 + 6 + 3
    # Filling a hole later.
    s.write(2 * BS, b"z" * BS)
    s.check()
    assert fs.getattr(s.ino).stored == 4 + 100 + 6 + 3 + BS


def test_huge_sparse_offset(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    off = 1 << 40
    a = fs.write(f.ino, off, b"far")
    assert a.size == off + 3
    assert a.stored == 3
    assert fs.read(f.ino, off - 2, 10) == b"\0\0far"
    assert fs.read(f.ino, 12345 * BS, 100) == bytes(100)


def test_sparse_then_truncate_into_hole(fs: FileSystem) -> None:
    s = Shadow(fs)
    s.write(10 * BS, b"data")
    s.truncate(3 * BS + 7)
    s.check()
    assert fs.getattr(s.ino).stored == 0


# ----------------------------------------------------------------- truncate


def test_truncate_down_across_blocks(fs: FileSystem) -> None:
    data = random.Random(3).randbytes(3 * BS + 500)
    f = mkfile(fs, ROOT_INO, b"f", data)
    new = BS + 12 * 1024
    a = fs.setattr(f.ino, SetAttr(size=new))
    assert a.size == new
    assert a.stored == new
    assert cat(fs, f.ino) == data[:new]
    # Extending again shows zeros, never the old bytes.
    a = fs.setattr(f.ino, SetAttr(size=4 * BS))
    assert a.size == 4 * BS
    assert a.stored == new  # truncating up stores nothing
    assert cat(fs, f.ino) == data[:new] + bytes(4 * BS - new)


def test_truncate_within_block_then_up(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"x" * 1000)
    fs.setattr(f.ino, SetAttr(size=10))
    assert fs.getattr(f.ino).stored == 10
    fs.setattr(f.ino, SetAttr(size=1000))
    assert cat(fs, f.ino) == b"x" * 10 + bytes(990)


def test_truncate_then_write_beyond_in_same_block(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"x" * 1000)
    fs.setattr(f.ino, SetAttr(size=10))
    fs.write(f.ino, 500, b"y")
    assert cat(fs, f.ino) == b"x" * 10 + bytes(490) + b"y"
    assert fs.getattr(f.ino).stored == 501


def test_truncate_up_then_write_at_block_start(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"a" * (2 * BS))
    fs.setattr(f.ino, SetAttr(size=BS + 10))
    fs.setattr(f.ino, SetAttr(size=3 * BS))
    fs.write(f.ino, BS, b"B" * 5)
    expect = b"a" * BS + b"B" * 5 + b"a" * 5 + bytes(3 * BS - BS - 10)
    assert cat(fs, f.ino) == expect


@pytest.mark.parametrize("size", [0, 1, BS - 1, BS, BS + 1, 2 * BS, 2 * BS + 77])
def test_truncate_to_boundaries(fs: FileSystem, size: int) -> None:
    data = random.Random(size).randbytes(3 * BS)
    f = mkfile(fs, ROOT_INO, b"f", data)
    a = fs.setattr(f.ino, SetAttr(size=size))
    assert a.size == size
    assert a.stored == size
    assert cat(fs, f.ino) == data[:size]
    fs.setattr(f.ino, SetAttr(size=3 * BS))
    assert cat(fs, f.ino) == data[:size] + bytes(3 * BS - size)


def test_truncate_to_zero_frees_blocks(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"z" * (5 * BS))
    records = inode_records(fs.engine, f.ino)
    fs.setattr(f.ino, SetAttr(size=0))
    a = fs.getattr(f.ino)
    assert (a.size, a.stored) == (0, 0)
    assert cat(fs, f.ino) == b""
    assert inode_records(fs.engine, f.ino) < records


def test_truncate_same_size_is_noop_for_data(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"abc")
    a = fs.setattr(f.ino, SetAttr(size=3))
    assert a.stored == 3
    assert cat(fs, f.ino) == b"abc"


def test_truncate_updates_times(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"abc")
    a = fs.setattr(f.ino, SetAttr(size=1))
    assert a.mtime_ns > f.mtime_ns
    assert a.ctime_ns > f.ctime_ns


def test_random_writes_and_truncates_match_shadow(fs: FileSystem) -> None:
    rng = random.Random(42)
    s = Shadow(fs)
    for step in range(150):
        r = rng.random()
        if r < 0.7:
            off = rng.choice([0, rng.randrange(4 * BS), rng.randrange(BS) + BS * rng.randrange(4),
                              len(s.data), max(len(s.data) - 3, 0)])
            n = rng.choice([1, 10, 4096, BS, BS + 1, rng.randrange(2 * BS)])
            s.write(off, bytes([step % 251 + 1]) * n)
        else:
            s.truncate(rng.choice([0, rng.randrange(5 * BS), len(s.data) // 2, len(s.data) + 99]))
        if step % 10 == 0:
            s.check()
    s.check()


# ----------------------------------------------------------------- stored counter


def test_stored_counter_tracks_blocks(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    assert fs.write(f.ino, 0, b"a" * 100).stored == 100
    assert fs.write(f.ino, 50, b"b" * 100).stored == 150
    # Block 0 keeps its 150 bytes; block 1 holds 1; the rest of block 0 is a hole.
    a = fs.write(f.ino, BS, b"c")
    assert (a.size, a.stored) == (BS + 1, 151)
    assert fs.read(f.ino, 140, 20) == b"b" * 10 + bytes(10)


def test_stored_counter_after_overwrites(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"q" * (2 * BS))
    for off in (0, 100, BS - 1, BS, 2 * BS - 10):
        fs.write(f.ino, off, b"r" * 10)
        assert fs.getattr(f.ino).stored == 2 * BS
    fs.write(f.ino, 2 * BS - 5, b"s" * 10)
    assert fs.getattr(f.ino).stored == 2 * BS + 5


# ----------------------------------------------------------------- errors


def test_read_write_directory(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    with raises(errno.EISDIR):
        fs.write(d.ino, 0, b"x")
    with raises(errno.EISDIR):
        fs.read(d.ino, 0, 10)
    with raises(errno.EISDIR):
        fs.setattr(d.ino, SetAttr(size=10))


def test_write_symlink(fs: FileSystem) -> None:
    s = symlink(fs, ROOT_INO, b"l", b"target")
    with raises(errno.EINVAL):
        fs.write(s.ino, 0, b"x")
    with raises(errno.EINVAL):
        fs.setattr(s.ino, SetAttr(size=1))
    assert fs.readlink(s.ino) == b"target"


def test_write_bad_offsets(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"abc")
    with raises(errno.EINVAL):
        fs.write(f.ino, -1, b"x")
    with raises(errno.EFBIG):
        fs.write(f.ino, MAX_FILE_SIZE, b"x")
    with raises(errno.EFBIG):
        fs.write(f.ino, MAX_FILE_SIZE - 1, b"xy")
    with raises(errno.EFBIG):
        fs.setattr(f.ino, SetAttr(size=MAX_FILE_SIZE + 1))
    with raises(errno.EINVAL):
        fs.setattr(f.ino, SetAttr(size=-1))
    a = fs.getattr(f.ino)
    assert (a.size, a.stored) == (3, 3)
    assert cat(fs, f.ino) == b"abc"


def test_write_at_max_size(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    a = fs.write(f.ino, MAX_FILE_SIZE - 1, b"x")
    assert a.size == MAX_FILE_SIZE
    assert fs.read(f.ino, MAX_FILE_SIZE - 1, 10) == b"x"
    fs.setattr(f.ino, SetAttr(size=0))


def test_write_missing_inode(fs: FileSystem) -> None:
    with raises(errno.ENOENT):
        fs.write(ROOT_INO + 999, 0, b"x")
    with raises(errno.ENOENT):
        fs.read(ROOT_INO + 999, 0, 1)


def test_data_persists_across_reopen(engines, make_fs) -> None:  # type: ignore[no-untyped-def]
    e = engines()
    fs = make_fs(e)
    data = random.Random(5).randbytes(BS + 999)
    f = mkfile(fs, ROOT_INO, b"f", data)
    fs.write(f.ino, 10 * BS, b"sparse")
    e = engines.reopen(e)
    fs2 = make_fs(e)
    a = fs2.getattr(f.ino)
    assert a.size == 10 * BS + 6
    assert a.stored == len(data) + 6
    assert fs2.read(f.ino, 0, len(data)) == data
    assert fs2.read(f.ino, 10 * BS - 1, 100) == b"\0sparse"
