"""statfs, name length limits, special files (FIFO, socket, device nodes),
file locks, mmap, fallocate and SEEK_DATA/SEEK_HOLE."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import socket
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
    run_in_child,
    write_file,
)

# --- statfs ------------------------------------------------------------------


def test_statvfs_fields(mnt: Path) -> None:
    sv = os.statvfs(mnt)
    assert sv.f_bsize > 0
    assert sv.f_frsize > 0
    assert sv.f_blocks > 0
    assert 0 <= sv.f_bavail <= sv.f_bfree <= sv.f_blocks
    assert sv.f_files > 0
    assert 0 <= sv.f_ffree <= sv.f_files
    assert sv.f_namemax == 255


def test_statvfs_on_file_and_fd(mnt: Path) -> None:
    write_file(mnt / "f")
    assert os.statvfs(mnt / "f").f_namemax == 255
    with opened(mnt / "f", os.O_RDONLY) as fd:
        assert os.fstatvfs(fd).f_blocks > 0


# --- name length ----------------------------------------------------------------


def test_name_of_255_bytes_ok(mnt: Path) -> None:
    name = "n" * 255
    write_file(mnt / name, b"ok")
    assert listdir(mnt) == [name]
    assert read_file(mnt / name) == b"ok"


def test_multibyte_name_of_255_bytes_ok(mnt: Path) -> None:
    name = "\u20ac" * 85  # 3 bytes each: the limit is in bytes, not characters
    os.mkdir(mnt / name)
    assert listdir(mnt) == [name]


@pytest.mark.parametrize("op", ["create", "mkdir", "symlink", "link", "rename", "mkfifo",
                                "stat"])
def test_name_of_256_bytes_enametoolong(mnt: Path, op: str) -> None:
    write_file(mnt / "src")
    long = mnt / ("n" * 256)
    with raises_errno(errno.ENAMETOOLONG):
        if op == "create":
            os.open(long, os.O_CREAT | os.O_WRONLY)
        elif op == "mkdir":
            os.mkdir(long)
        elif op == "symlink":
            os.symlink("src", long)
        elif op == "link":
            os.link(mnt / "src", long)
        elif op == "rename":
            os.rename(mnt / "src", long)
        elif op == "mkfifo":
            os.mkfifo(long)
        else:
            os.stat(long)
    assert listdir(mnt) == ["src"]


def test_multibyte_name_over_255_bytes_enametoolong(mnt: Path) -> None:
    with raises_errno(errno.ENAMETOOLONG):
        os.mkdir(mnt / ("\u20ac" * 86))  # 86 characters, 258 bytes


# --- FIFOs ---------------------------------------------------------------------------


def test_mkfifo_creates_fifo(mnt: Path) -> None:
    os.mkfifo(mnt / "p", 0o640)
    st = os.lstat(mnt / "p")
    assert stat.S_ISFIFO(st.st_mode)
    assert st.st_size == 0


@pytest.mark.timeout(60)
def test_fifo_passes_data_between_threads(mnt: Path) -> None:
    os.mkfifo(mnt / "p")
    payload = pattern(200_000)  # larger than a pipe buffer: the writer must block
    received: list[bytes] = []

    def reader() -> None:
        with open(mnt / "p", "rb") as f:
            received.append(f.read())

    t = threading.Thread(target=reader)
    t.start()
    with open(mnt / "p", "wb") as f:
        f.write(payload)
    t.join(timeout=30)
    assert not t.is_alive()
    assert received == [payload]


def test_mkfifo_existing_eexist(mnt: Path) -> None:
    write_file(mnt / "f")
    with raises_errno(errno.EEXIST):
        os.mkfifo(mnt / "f")


def test_fifo_nonblocking_open_for_write_without_reader_enxio(mnt: Path) -> None:
    os.mkfifo(mnt / "p")
    with raises_errno(errno.ENXIO):
        os.open(mnt / "p", os.O_WRONLY | os.O_NONBLOCK)


# --- sockets and device nodes -------------------------------------------------------


def test_unix_socket_bind_creates_socket_file(mnt: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(mnt / "sock"))
        assert stat.S_ISSOCK(os.lstat(mnt / "sock").st_mode)
        assert listdir(mnt) == ["sock"]


def test_unix_socket_connect_through_mount(mnt: Path) -> None:
    path = str(mnt / "sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_bind_on_existing_socket_path_eaddrinuse(mnt: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as a, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as b:
        a.bind(str(mnt / "sock"))
        with raises_errno(errno.EADDRINUSE):
            b.bind(str(mnt / "sock"))


def test_mknod_regular_file(mnt: Path) -> None:
    os.mknod(mnt / "r", 0o600 | stat.S_IFREG)
    st = os.lstat(mnt / "r")
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 0


def test_mknod_char_device_keeps_rdev(mnt: Path) -> None:
    dev = os.makedev(1, 3)
    os.mknod(mnt / "null", 0o666 | stat.S_IFCHR, dev)
    st = os.lstat(mnt / "null")
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)


def test_mknod_block_device_keeps_rdev(mnt: Path) -> None:
    os.mknod(mnt / "blk", 0o600 | stat.S_IFBLK, os.makedev(259, 70000))
    st = os.lstat(mnt / "blk")
    assert stat.S_ISBLK(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (259, 70000)


# --- locks -----------------------------------------------------------------------------------


def test_flock_conflicts_between_open_file_descriptions(mnt: Path) -> None:
    write_file(mnt / "f")
    with opened(mnt / "f", os.O_RDWR) as a, opened(mnt / "f", os.O_RDWR) as b:
        fcntl.flock(a, fcntl.LOCK_EX)
        with raises_errno(errno.EWOULDBLOCK):
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(a, fcntl.LOCK_UN)
        fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_flock_shared_locks_coexist(mnt: Path) -> None:
    write_file(mnt / "f")
    with opened(mnt / "f", os.O_RDONLY) as a, opened(mnt / "f", os.O_RDONLY) as b:
        fcntl.flock(a, fcntl.LOCK_SH)
        fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)


def test_posix_record_lock_conflicts_across_processes(mnt: Path) -> None:
    write_file(mnt / "f", b"x" * 100)
    with opened(mnt / "f", os.O_RDWR) as fd:
        fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)

        def try_locks() -> int | None:
            with opened("f", os.O_RDWR) as cfd:
                fcntl.lockf(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)  # disjoint: fine
                try:
                    fcntl.lockf(cfd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 5)
                except OSError as e:
                    return e.errno
                return None

        overlapping = run_in_child(mnt, try_locks, as_nobody=False)
    assert overlapping in (errno.EACCES, errno.EAGAIN)


# --- mmap -------------------------------------------------------------------------------------


def test_mmap_read(mnt: Path) -> None:
    data = pattern(2 * BLOCK + 123)
    write_file(mnt / "f", data)
    with open(mnt / "f", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == data
        assert m[BLOCK - 5:BLOCK + 5] == data[BLOCK - 5:BLOCK + 5]


def test_mmap_shared_write_reaches_file(mnt: Path) -> None:
    write_file(mnt / "f", bytes(3 * BLOCK))
    with open(mnt / "f", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[BLOCK - 2:BLOCK + 2] = b"MMAP"
        m.flush()
    data = read_file(mnt / "f")
    assert data[BLOCK - 2:BLOCK + 2] == b"MMAP"
    assert len(data) == 3 * BLOCK


def test_write_visible_in_existing_mapping(mnt: Path) -> None:
    write_file(mnt / "f", bytes(4096))
    with open(mnt / "f", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        os.pwrite(f.fileno(), b"fresh", 100)
        assert m[100:105] == b"fresh"


# --- fallocate / SEEK_DATA ------------------------------------------------------------


def test_posix_fallocate_extends_with_zeros(mnt: Path) -> None:
    write_file(mnt / "f", b"head")
    with opened(mnt / "f", os.O_RDWR) as fd:
        os.posix_fallocate(fd, 0, 2 * BLOCK)
        assert os.fstat(fd).st_size == 2 * BLOCK
        assert pread_all(fd, 2 * BLOCK, 0) == b"head" + bytes(2 * BLOCK - 4)


def test_posix_fallocate_inside_file_keeps_data(mnt: Path) -> None:
    data = pattern(BLOCK)
    write_file(mnt / "f", data)
    with opened(mnt / "f", os.O_RDWR) as fd:
        os.posix_fallocate(fd, 100, 1000)
    assert read_file(mnt / "f") == data


def test_seek_data_and_hole_are_consistent(mnt: Path) -> None:
    # Filesystems may report the whole file as data; only the bounds are fixed.
    size = 4 * BLOCK
    with opened(mnt / "f", os.O_CREAT | os.O_RDWR) as fd:
        os.pwrite(fd, b"d", size - 1)
        assert os.lseek(fd, 0, os.SEEK_DATA) <= size - 1
        assert os.lseek(fd, size - 1, os.SEEK_DATA) == size - 1
        assert 0 <= os.lseek(fd, 0, os.SEEK_HOLE) <= size
        assert os.lseek(fd, size - 1, os.SEEK_HOLE) == size
        with raises_errno(errno.ENXIO):
            os.lseek(fd, size, os.SEEK_DATA)


def test_lseek_end_reports_size(mnt: Path) -> None:
    write_file(mnt / "f", b"12345")
    with opened(mnt / "f", os.O_RDONLY) as fd:
        assert os.lseek(fd, 0, os.SEEK_END) == 5
        assert os.lseek(fd, -2, os.SEEK_END) == 3
        assert os.read(fd, 10) == b"45"
        with raises_errno(errno.EINVAL):
            os.lseek(fd, -10, os.SEEK_SET)
