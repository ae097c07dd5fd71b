"""`import HOSTDIR DIR` in the POSIX layer (agentfs/posix/hostimport.py), on both
engines: what is kept, batches, the staged tree (invisible until the last
step, freed after a crash or a failure), and refusals with their errno.
(tests/mount/test_import_mount.py runs it through the daemon and the CLI.)
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from fsutil import EngineFactory, mkdir, mkfile, names, raises
from hosttree import ENTRIES, host_tree

from agentfs.fsck import check_store
from agentfs.posix import hostimport
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.posix.hostimport import HostImport
from agentfs.storage import keys
from agentfs.storage.kv import Engine


def host_listing(src: Path) -> dict[str, tuple[object, ...]]:
    """What must survive an import, per relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(src):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            is_dir = stat.S_ISDIR(st.st_mode)  # (a directory's size is the filesystem's own)
            out[str(p.relative_to(src))] = (st.st_mode, st.st_mtime_ns,
                                            None if is_dir else st.st_size,
                                            None if is_dir else st.st_nlink)
    return out


def store_listing(fs: FileSystem, top: int) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}

    def walk(ino: int, prefix: str) -> None:
        for e in fs.readdir(ino):
            rel = prefix + os.fsdecode(e.name)
            a = e.attr
            out[rel] = (a.mode, a.mtime_ns, None if a.is_dir else a.size,
                        None if a.is_dir else a.nlink)
            if a.is_dir:
                walk(a.ino, rel + "/")

    walk(top, "")
    return out


def content(fs: FileSystem, ino: int) -> bytes:
    return fs.read(ino, 0, fs.getattr(ino).size, touch_atime=False)


def run(fs: FileSystem, host: Path | str, dest: str) -> str:
    return HostImport(fs, str(host), dest).run()


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of a few inodes or 1 MiB: every test crosses many transactions."""
    monkeypatch.setattr(hostimport, "BATCH_INODES", 3)
    monkeypatch.setattr(hostimport, "BATCH_BYTES", 1 << 20)
    monkeypatch.setattr(hostimport, "FREE_BATCH", 2)


def test_import_keeps_the_tree(fs: FileSystem, tmp_path: Path, small_batches: None) -> None:
    src = host_tree(tmp_path)
    summary = run(fs, src, "/dst")
    assert f"imported {ENTRIES} files" in summary, summary
    top = fs.lookup(ROOT_INO, b"dst")
    assert store_listing(fs, top.ino) == host_listing(src)
    assert top.mode == os.stat(src).st_mode and top.mtime_ns == os.stat(src).st_mtime_ns
    for rel in ("a/f.txt", "big.bin", "a/b/c/deep", "empty", "none"):
        ino = fs.path_ino(f"dst/{rel}")
        want = (src / rel).read_bytes()
        assert hashlib.sha256(content(fs, ino)).digest() == hashlib.sha256(want).digest(), rel
    hard = {fs.path_ino(p) for p in ("dst/a/f.txt", "dst/hard", "dst/a/b/hard2")}
    assert len(hard) == 1 and fs.getattr(hard.pop()).nlink == 3
    assert fs.readlink(fs.path_ino("dst/rel-link")) == b"a/f.txt"
    assert fs.readlink(fs.path_ino("dst/dangling-abs")) == b"/nowhere/at/all"
    f = fs.getattr(fs.path_ino("dst/a/f.txt"))
    assert f.atime_ns == 1_600_000_000_123_456_789
    assert (f.uid, f.gid) == ((1234, 5678) if os.geteuid() == 0 else (os.geteuid(),
                                                                      os.getegid()))
    empty = fs.path_ino("dst/empty")
    for name in os.listxattr(src / "empty"):
        assert fs.getxattr(empty, os.fsencode(name)) == os.getxattr(src / "empty", name)
    assert stat.S_ISFIFO(fs.getattr(fs.path_ino("dst/fifo")).mode)
    assert fs.getattr(fs.path_ino("dst/a")).nlink == 3  # '.', the entry, b/
    assert check_store(fs.engine).problems == []


def test_nothing_is_visible_before_the_last_step(fs: FileSystem, tmp_path: Path,
                                                 small_batches: None) -> None:
    src = host_tree(tmp_path)
    imp = HostImport(fs, str(src), "dst")
    imp.check()
    imp.scan()
    steps = imp.steps()
    for _ in range(5):
        next(steps)
        assert b"dst" not in names(fs, ROOT_INO)
        assert check_store(fs.engine).problems == []  # the staged tree is a tree
    for _ in steps:
        pass
    assert b"dst" in names(fs, ROOT_INO)


def test_a_crash_mid_import_leaves_nothing(engines: EngineFactory,
                                           make_fs: Callable[..., FileSystem], tmp_path: Path,
                                           small_batches: None) -> None:
    e = engines()
    fs = make_fs(e)
    before = count_records(e)
    imp = HostImport(fs, str(host_tree(tmp_path)), "dst")
    imp.check()
    imp.scan()
    steps = imp.steps()
    for _ in range(6):
        next(steps)
    imp._close_partial()  # (the daemon died: its descriptors went with it)
    e = engines.reopen(e)
    fs = make_fs(e)
    assert fs.free_orphans() == 1  # what the daemon does at mount
    assert b"dst" not in names(fs, ROOT_INO)
    assert count_staged(e) == 0
    assert count_records(e) <= before + 2  # the root's attributes, at most re-versioned


def count_records(e: Engine) -> int:
    with e.begin() as txn:
        return sum(1 for _ in txn.scan(*keys.RECORD.span()))


def count_staged(e: Engine) -> int:
    with e.begin() as txn:
        return sum(1 for _ in txn.scan(*keys.STAGED.span()))


def test_merge_into_an_existing_directory(fs: FileSystem, tmp_path: Path,
                                          small_batches: None) -> None:
    src = host_tree(tmp_path)
    work = mkdir(fs, ROOT_INO, b"work")
    mkfile(fs, work.ino, b"mine", b"kept")
    run(fs, src, "work")
    assert set(names(fs, work.ino)) == {b"mine", *(os.fsencode(n) for n in os.listdir(src))}
    assert fs.getattr(fs.path_ino("work/a/b")).nlink == 3
    assert fs.getattr(work.ino).nlink == 2 + 2  # a/ and empty-dir/
    assert content(fs, fs.path_ino("work/mine")) == b"kept"


def test_a_name_taken_in_the_directory_imports_nothing(fs: FileSystem, tmp_path: Path,
                                                       small_batches: None) -> None:
    src = host_tree(tmp_path)
    work = mkdir(fs, ROOT_INO, b"work")
    mkfile(fs, work.ino, b"empty", b"mine")
    with raises(errno.EEXIST) as info:
        HostImport(fs, str(src), "work").check()  # at once, before anything is done
    assert info.value.message == "/work/empty exists; nothing was imported"
    fs.unlink(work.ino, b"empty")
    imp = HostImport(fs, str(src), "//work/")
    imp.check()
    imp.scan()
    steps = imp.steps()
    next(steps)
    mkfile(fs, work.ino, b"empty", b"mine")  # made during the import
    with raises(errno.EEXIST) as info:
        for _ in steps:
            pass
    for _ in imp.abandon():
        pass
    assert info.value.message == ("/work/empty exists (made during the import); nothing "
                                  "was imported")
    assert names(fs, work.ino) == [b"empty"]
    assert count_staged(fs.engine) == 0


@pytest.mark.parametrize("host, dest, code, reason", [
    ("relative/dir", "dst", errno.EINVAL, "absolute path"),
    ("/no/such/host/dir", "dst", errno.ENOENT, "no such directory on the host"),
    ("FILE", "dst", errno.ENOTDIR, "is not a directory"),
    ("SRC", "file/dst", errno.ENOTDIR, "not a directory"),
    ("SRC", "file", errno.ENOTDIR, "exists and is not a directory"),
    ("SRC", "x" * 256, errno.ENAMETOOLONG, "limit is 255"),
    ("SRC", "missing/dst", errno.ENOENT, "no such entry"),
    ("SRC", ".agentfs", errno.EEXIST, "reserved"),
])
def test_refusals(fs: FileSystem, tmp_path: Path, host: str, dest: str, code: int,
                  reason: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    host = {"SRC": str(src), "FILE": str(src / "f")}.get(host, host)
    mkfile(fs, ROOT_INO, b"file", b"data")
    with raises(code) as info:
        run(fs, host, dest)
    assert reason in info.value.message
    assert names(fs, ROOT_INO) == [b"file"]


def test_a_reserved_name_in_the_host_tree(fs: FileSystem, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / ".snapshots").mkdir(parents=True)
    with raises(errno.EEXIST) as info:
        run(fs, src, "dst")
    assert "sub/.snapshots" in info.value.message
    assert names(fs, ROOT_INO) == []


def test_full_store_is_enospc_and_keeps_nothing(engines: EngineFactory,
                                               make_fs: Callable[..., FileSystem],
                                               tmp_path: Path, small_batches: None) -> None:
    e = engines(limit=2_000_000) if engines.kind == "memory" else engines(map_size=1 << 21,
                                                                        max_map_size=1 << 21)
    fs = make_fs(e)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))
    with raises(errno.ENOSPC) as info:
        run(fs, src, "dst")
    assert "store is full" in info.value.message
    assert names(fs, ROOT_INO) == []
    assert count_staged(e) == 0
    mkfile(fs, ROOT_INO, b"after", b"still works")


def test_devices_are_skipped_with_a_reason(fs: FileSystem, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (src / "f").write_text("x")
    summary = run(fs, src, "dst")
    assert "skipped 1 device node(s)" in summary and "character device" in summary
    assert names(fs, fs.path_ino("dst")) == [b"f"]


def test_a_file_that_changed_after_the_scan(fs: FileSystem, tmp_path: Path,
                                            small_batches: None) -> None:
    """What is read is what is imported, whole (the scan's size is only a hint)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "grows").write_bytes(b"a" * 1000)
    (src / "shrinks").write_bytes(b"b" * 300_000)
    imp = HostImport(fs, str(src), "dst")
    imp.check()
    imp.scan()
    grown = os.urandom(200_001)
    (src / "grows").write_bytes(grown)
    (src / "shrinks").write_bytes(b"c" * 10)
    for _ in imp.steps():
        pass
    assert content(fs, fs.path_ino("dst/grows")) == grown
    assert content(fs, fs.path_ino("dst/shrinks")) == b"c" * 10


def test_names_the_layers_above_keep_at_the_root(fs: FileSystem, tmp_path: Path) -> None:
    """`root_reserved` (AGENTS.md, agents: agentfs.agents.model.ROOT_NAMES):
    neither merged into the root nor DIR's name there; fine elsewhere."""
    reserved = {b"AGENTS.md": "the guide is agentfs's"}
    src = tmp_path / "src"
    src.mkdir()
    (src / "AGENTS.md").write_text("mine")
    for dest in ("/", "AGENTS.md"):
        with raises(errno.EINVAL) as info:
            HostImport(fs, str(src), dest, root_reserved=reserved).run()
        assert "cannot import /AGENTS.md: the guide is agentfs's" in info.value.message
    assert names(fs, ROOT_INO) == []
    HostImport(fs, str(src), "sub", root_reserved=reserved).run()
    assert names(fs, fs.path_ino("/sub")) == [b"AGENTS.md"]


def test_a_stopped_scan_ends_and_keeps_nothing(fs: FileSystem, tmp_path: Path) -> None:
    src = host_tree(tmp_path, files=10)
    job = HostImport(fs, str(src), "dst")
    job.check()
    job.stop.set()
    with raises(errno.ECANCELED):
        job.scan()
    assert job.plan.entries == []
    assert names(fs, ROOT_INO) == []
