"""readdir/getdents: exact listings, d_type/d_ino, large directories, offsets
(rewind/seek) and stability while the directory changes underneath a reader."""

from __future__ import annotations

import collections
import os
import queue
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from posix_util import getdents, listdir, opened, without_own, write_file

DT_FIFO, DT_DIR, DT_REG, DT_LNK, DT_SOCK = 1, 4, 8, 10, 12


def touch(p: Path | bytes) -> None:
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))


def read_all_dents(fd: int, bufsize: int) -> list[tuple[int, int, int, bytes]]:
    out = []
    while batch := getdents(fd, bufsize):
        out.extend(batch)
    return out


def without_dots(names: list[bytes]) -> list[bytes]:
    return [n for n in names if n not in (b".", b"..")]


def test_empty_directory_lists_nothing(mnt: Path) -> None:
    os.mkdir(mnt / "d")
    assert os.listdir(mnt / "d") == []
    with opened(mnt / "d", os.O_RDONLY | os.O_DIRECTORY) as fd:
        assert without_dots([d[3] for d in read_all_dents(fd, 4096)]) == []


def test_listing_exact_names(mnt: Path) -> None:
    write_file(mnt / "file")
    os.mkdir(mnt / "dir")
    os.symlink("file", mnt / "link")
    os.mkfifo(mnt / "fifo")
    write_file(mnt / ".hidden")
    write_file(mnt / "UPPER")
    write_file(mnt / "upper")  # names are case sensitive
    assert sorted(listdir(mnt)) == sorted(
        ["file", "dir", "link", "fifo", ".hidden", "UPPER", "upper"]
    )


def test_listing_reflects_unlink_and_rename(mnt: Path) -> None:
    for n in ("a", "b", "c"):
        write_file(mnt / n)
    os.unlink(mnt / "b")
    os.rename(mnt / "c", mnt / "z")
    assert sorted(listdir(mnt)) == ["a", "z"]


def test_scandir_types_and_inodes(mnt: Path) -> None:
    write_file(mnt / "file")
    os.mkdir(mnt / "dir")
    os.symlink("dir", mnt / "link")
    os.mkfifo(mnt / "fifo")
    entries = {e.name: e for e in os.scandir(mnt)}
    assert entries["file"].is_file(follow_symlinks=False)
    assert entries["dir"].is_dir(follow_symlinks=False)
    assert entries["link"].is_symlink()
    assert not entries["link"].is_dir(follow_symlinks=False)
    assert entries["link"].is_dir()
    assert not entries["fifo"].is_file() and not entries["fifo"].is_dir()
    for name, e in entries.items():
        assert e.inode() == os.lstat(mnt / name).st_ino


def test_getdents_d_type_and_d_ino(mnt: Path) -> None:
    write_file(mnt / "file")
    os.mkdir(mnt / "dir")
    os.symlink("file", mnt / "link")
    os.mkfifo(mnt / "fifo")
    with opened(mnt, os.O_RDONLY | os.O_DIRECTORY) as fd:
        dents = {name: (ino, typ) for ino, _, typ, name in read_all_dents(fd, 4096)}
    expect = {b"file": DT_REG, b"dir": DT_DIR, b"link": DT_LNK, b"fifo": DT_FIFO}
    for name, typ in expect.items():
        assert dents[name] == (os.lstat(mnt / os.fsdecode(name)).st_ino, typ)


def test_unusual_names_roundtrip(mnt: Path) -> None:
    names = [
        b"with space", b"new\nline", b"tab\there", b"-leading-dash", b"trailing.",
        b"\xff\xfe not utf-8", "unicode-\u00e9\u4e2d\U0001f600".encode(),
        b"x" * 255, b"...", b"a:b*c?d\"e<f>g|h\\i",
    ]
    root = os.fsencode(mnt)
    for n in names:
        touch(root + b"/" + n)
    assert sorted(listdir(root)) == sorted(names)
    for n in names:
        assert stat.S_ISREG(os.stat(root + b"/" + n).st_mode)


def test_5000_entries_each_listed_once(mnt: Path) -> None:
    d = mnt / "big"
    os.mkdir(d)
    expected = {f"entry-{i:05d}" for i in range(5000)}
    for n in expected:
        touch(d / n)
    listed = os.listdir(d)
    assert len(listed) == 5000
    assert set(listed) == expected


def test_5000_entries_small_getdents_buffer(mnt: Path) -> None:
    d = mnt / "big"
    os.mkdir(d)
    for i in range(5000):
        touch(d / f"e{i}")
    with opened(d, os.O_RDONLY | os.O_DIRECTORY) as fd:
        names = without_dots([dent[3] for dent in read_all_dents(fd, 256)])
    counts = collections.Counter(names)
    assert [n for n, c in counts.items() if c > 1] == []
    assert set(counts) == {f"e{i}".encode() for i in range(5000)}


def test_rewind_lists_everything_again(mnt: Path) -> None:
    for i in range(300):
        touch(mnt / f"f{i}")
    with opened(mnt, os.O_RDONLY | os.O_DIRECTORY) as fd:
        first = getdents(fd, 1024)
        assert first
        os.lseek(fd, 0, os.SEEK_SET)
        names = without_dots([d[3] for d in read_all_dents(fd, 1024)])
    assert sorted(without_own(names, mnt)) == sorted(f"f{i}".encode() for i in range(300))


def test_seek_to_returned_offset_resumes_after_that_entry(mnt: Path) -> None:
    for i in range(200):
        touch(mnt / f"f{i}")
    with opened(mnt, os.O_RDONLY | os.O_DIRECTORY) as fd:
        full = read_all_dents(fd, 8192)
        k = len(full) // 3
        os.lseek(fd, full[k][1], os.SEEK_SET)  # telldir()/seekdir() to after entry k
        rest = read_all_dents(fd, 512)
    assert [d[3] for d in rest] == [d[3] for d in full[k + 1:]]


def test_deleting_read_entries_while_iterating_skips_none(mnt: Path) -> None:
    # The `rm -r` pattern: read a batch, unlink it, read on from the same fd.
    d = mnt / "d"
    os.mkdir(d)
    expected = {f"victim-{i:04d}".encode() for i in range(1500)}
    for n in expected:
        touch(os.fsencode(d) + b"/" + n)
    seen: list[bytes] = []
    with opened(d, os.O_RDONLY | os.O_DIRECTORY) as fd:
        while batch := getdents(fd, 1024):
            names = without_dots([x[3] for x in batch])
            seen.extend(names)
            for n in names:
                os.unlink(os.fsencode(d) + b"/" + n)
    assert len(seen) == len(set(seen))
    assert set(seen) == expected
    assert os.listdir(d) == []


class Churner:
    """A thread that, on each request, creates and removes a few entries whose
    names are never reused."""

    def __init__(self, d: Path, prefill: int, per_step: int) -> None:
        self.d, self.per_step = d, per_step
        self.live: collections.deque[str] = collections.deque()
        self.made = 0
        self.requests: queue.Queue[bool] = queue.Queue()
        self.done: queue.Queue[BaseException | None] = queue.Queue()
        for _ in range(prefill):
            self._create()
        self.thread = threading.Thread(target=self._run)

    def _create(self) -> None:
        name = f"churn-{self.made:06d}"
        self.made += 1
        touch(self.d / name)
        self.live.append(name)

    def _run(self) -> None:
        while self.requests.get():
            try:
                for _ in range(self.per_step):
                    self._create()
                    os.unlink(self.d / self.live.popleft())
                self.done.put(None)
            except BaseException as e:  # hand the failure to the test thread
                self.done.put(e)

    def step(self) -> None:
        self.requests.put(True)
        err = self.done.get(timeout=60)
        if err is not None:
            raise err

    def __enter__(self) -> Churner:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.requests.put(False)
        self.thread.join()

    def all_names(self) -> set[str]:
        return {f"churn-{i:06d}" for i in range(self.made)}


def check_listing(seen: list[str], stay: set[str], churn: Churner) -> None:
    counts = collections.Counter(seen)
    assert [n for n, c in counts.items() if c > 1] == [], "entries returned twice"
    assert stay - set(seen) == set(), "entries present throughout were skipped"
    assert set(seen) - stay - churn.all_names() == set(), "names that never existed"


@pytest.fixture
def stay_dir(mnt: Path) -> Iterator[tuple[Path, set[str]]]:
    d = mnt / "d"
    os.mkdir(d)
    stay = {f"stay-entry-with-a-longer-name-{i:05d}" for i in range(2000)}
    for n in stay:
        touch(d / n)
    yield d, stay


@pytest.mark.timeout(120)
def test_scandir_under_concurrent_churn(stay_dir: tuple[Path, set[str]]) -> None:
    d, stay = stay_dir
    with Churner(d, prefill=300, per_step=10) as churn:
        seen: list[str] = []
        with os.scandir(d) as it:
            for i, entry in enumerate(it):
                seen.append(entry.name)
                if i % 7 == 0:
                    churn.step()
    check_listing(seen, stay, churn)


@pytest.mark.timeout(120)
def test_small_getdents_under_concurrent_churn(stay_dir: tuple[Path, set[str]]) -> None:
    d, stay = stay_dir
    with Churner(d, prefill=300, per_step=5) as churn, \
            opened(d, os.O_RDONLY | os.O_DIRECTORY) as fd:
        seen: list[str] = []
        while batch := getdents(fd, 600):
            seen.extend(os.fsdecode(x[3]) for x in batch if x[3] not in (b".", b".."))
            churn.step()
    check_listing(seen, stay, churn)


@pytest.mark.timeout(120)
def test_getdents_while_churn_runs_freely(stay_dir: tuple[Path, set[str]]) -> None:
    d, stay = stay_dir
    stop = threading.Event()
    made: list[str] = []
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            i = 0
            while not stop.is_set() and i < 20000:
                name = f"free-{i:06d}"
                touch(d / name)
                made.append(name)
                if i >= 50:
                    os.unlink(d / made[i - 50])
                i += 1
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    try:
        seen: list[str] = []
        with opened(d, os.O_RDONLY | os.O_DIRECTORY) as fd:
            while batch := getdents(fd, 400):
                seen.extend(os.fsdecode(x[3]) for x in batch if x[3] not in (b".", b".."))
    finally:
        stop.set()
        t.join()
    assert errors == []
    counts = collections.Counter(seen)
    assert [n for n, c in counts.items() if c > 1] == []
    assert stay - set(seen) == set()
    assert set(seen) - stay - set(made) == set()
