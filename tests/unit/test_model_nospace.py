"""A full store: every operation that hits NoSpace leaves the store exactly as
it was (fsck clean, same tree), the model's caches follow the rollback, and
the filesystem works again once space is freed. Both engines: MemoryEngine
with a byte limit, LMDB with a 1 MiB map."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from fsutil import EngineFactory, cat, count_keys, mkdir, mkfile, names, tree

from agentfs.fsck import check_store
from agentfs.posix.fs import ROOT_INO, FileSystem, SetAttr
from agentfs.storage.codec import split_ino
from agentfs.storage.gc import collect
from agentfs.storage.kv import Engine, MemoryEngine, NoSpace


def small_engine(engines: EngineFactory) -> Engine:
    if engines.kind == "memory":
        return engines(limit=600_000)
    return engines(map_size=1 << 20)


def full_state(fs: FileSystem) -> tuple[object, ...]:
    roots = [ROOT_INO]
    snaps = [a.ino for _, a in fs.snapshots(ROOT_INO)]
    return (tree(fs, ROOT_INO), [tree(fs, s) for s in snaps], fs.epoch_now(),
            [fs.getattr(r) for r in roots])


def assert_clean(engine: Engine) -> None:
    report = check_store(engine)
    assert not report.problems, "\n".join(report.problems)


def test_write_until_full_then_recover(engines: EngineFactory,
                                       make_fs: Callable[..., FileSystem]) -> None:
    e = small_engine(engines)
    fs = make_fs(e)
    keep = mkfile(fs, ROOT_INO, b"keep", b"precious")
    f = mkfile(fs, ROOT_INO, b"big").ino
    chunk = random.Random(1).randbytes(50_000)
    written = 0
    with pytest.raises(NoSpace):
        for _ in range(1000):
            fs.write(f, written, chunk)
            written += len(chunk)
    assert written > 0
    a = fs.getattr(f)
    assert a.size == written
    assert fs.read(f, 0, written) == chunk * (written // len(chunk))
    assert cat(fs, keep.ino) == b"precious"
    assert_clean(e)
    # Free the space and use the filesystem again.
    fs.unlink(ROOT_INO, b"big")
    fs.forget(f)
    collect(fs.store)
    g = mkfile(fs, ROOT_INO, b"again", chunk)
    assert cat(fs, g.ino) == chunk


def test_every_operation_rolls_back_on_nospace(engines: EngineFactory,
                                               make_fs: Callable[..., FileSystem]) -> None:
    rng = random.Random(5)
    e = small_engine(engines)
    fs = make_fs(e)
    src = mkdir(fs, ROOT_INO, b"src").ino
    files: list[bytes] = []
    counter = 0

    def op_create() -> None:
        nonlocal counter
        counter += 1
        name = b"f%d" % counter
        mkfile(fs, src, name)
        files.append(name)

    def op_write() -> None:
        if files:
            ino = fs.lookup(src, rng.choice(files)).ino
            fs.write(ino, rng.randrange(200_000), rng.randbytes(30_000))

    def op_fork() -> None:
        nonlocal counter
        counter += 1
        fs.fork(src, ROOT_INO, b"fork%d" % counter)

    def op_snapshot() -> None:
        nonlocal counter
        counter += 1
        fs.snapshot(ROOT_INO, b"s%d" % counter)

    def op_mkdir() -> None:
        nonlocal counter
        counter += 1
        mkdir(fs, src, b"d%d" % counter)

    def op_xattr() -> None:
        if files:
            fs.setxattr(fs.lookup(src, rng.choice(files)).ino, b"user.x", rng.randbytes(20_000))

    def op_rename() -> None:
        nonlocal counter
        if files:
            counter += 1
            old = files.pop(rng.randrange(len(files)))
            new = b"r%d" % counter
            fs.rename(src, old, src, new)
            files.append(new)

    ops = [op_create, op_write, op_write, op_write, op_fork, op_snapshot, op_mkdir,
           op_xattr, op_rename]
    full = 0
    for _ in range(400):
        op = rng.choice(ops)
        before = full_state(fs)
        before_files = list(files)
        before_keys = count_keys(e, b"")
        try:
            op()
        except NoSpace:
            full += 1
            files[:] = before_files
            assert full_state(fs) == before, f"{op.__name__} changed the store"
            assert count_keys(e, b"") == before_keys
            assert_clean(e)
            # The model's caches must follow the rollback: new inodes and views
            # after a failure must not collide with anything.
            if full >= 8:
                break
    assert full >= 8, "the store never filled up"
    # Free space: remove every fork and snapshot, truncate the files.
    for n in names(fs, ROOT_INO):
        if n.startswith(b"fork"):
            fs.detach(ROOT_INO, n)
    for n, _ in fs.snapshots(ROOT_INO):
        fs.delete_snapshot(ROOT_INO, n)
    for n in files:
        ino = fs.lookup(src, n).ino
        fs.unlink(src, n)
        fs.forget(ino)
    collect(fs.store)
    assert_clean(e)
    # Everything works again, with fresh inode and view numbers.
    d = fs.fork(src, ROOT_INO, b"after").ino
    f = mkfile(fs, d, b"new", b"n" * 10_000)
    assert cat(fs, f.ino) == b"n" * 10_000
    assert split_ino(d)[0] not in {split_ino(a.ino)[0] for _, a in fs.snapshots(ROOT_INO)}


def test_nospace_in_fork_does_not_leak_view_numbers(engines: EngineFactory,
                                                    make_fs: Callable[..., FileSystem]) -> None:
    e = small_engine(engines)
    fs = make_fs(e)
    src = mkdir(fs, ROOT_INO, b"src").ino
    filler = mkfile(fs, ROOT_INO, b"filler").ino
    off = 0
    with pytest.raises(NoSpace):
        for _ in range(1000):
            fs.write(filler, off, b"z" * 20_000)
            off += 20_000
    # Now (nearly) full: try forks until one fails, then free space and fork.
    failed = 0
    for i in range(5000):
        try:
            fs.fork(src, ROOT_INO, b"f%d" % i)
        except NoSpace:
            failed += 1
            if failed >= 3:
                break
    assert failed >= 1
    assert_clean(e)
    made = [n for n in names(fs, ROOT_INO) if n.startswith(b"f") and n != b"filler"]
    used_views = {split_ino(fs.lookup(ROOT_INO, n).ino)[0] for n in made}
    # Free space: the forks pin the old data, so they go first. A store full
    # to the byte cannot write even the tombstone of a detach: the daemon
    # grows the map then (operations.fuse_errors); give the model that room.
    if isinstance(e, MemoryEngine):
        e.limit += 50_000
    else:
        assert e.grow()
    for n in made:
        fs.detach(ROOT_INO, n)
    fs.setattr(filler, SetAttr(size=0))
    collect(fs.store)
    new = fs.fork(src, ROOT_INO, b"fresh").ino
    assert split_ino(new)[0] not in used_views
    assert split_ino(new)[0] > max(used_views, default=1)
    mkfile(fs, new, b"x")
    assert names(fs, src) == []


def test_reads_work_on_a_full_store(engines: EngineFactory,
                                    make_fs: Callable[..., FileSystem]) -> None:
    """Reading may want to update atime; on a full store the data must still be
    returned (and the store stay consistent)."""
    e = small_engine(engines)
    fs = make_fs(e)
    inos = [mkfile(fs, ROOT_INO, b"r%d" % i, b"%d" % i * 50).ino for i in range(30)]
    filler = mkfile(fs, ROOT_INO, b"filler").ino
    off = 0
    for size in (20_000, 2_000, 200, 20, 1):
        try:
            while True:
                fs.write(filler, off, b"z" * size)
                off += size
        except NoSpace:
            pass
    for i, ino in enumerate(inos):
        assert fs.read(ino, 0, 1000) == b"%d" % i * 50
    assert_clean(e)
