"""Forks and snapshots: isolation, pinned epochs, O(1) creation, garbage
collection of versions and dead views, nested views, detach."""

from __future__ import annotations

import copy
import errno
import random

import pytest
from fsutil import (
    CountingEngine,
    build,
    cat,
    count_keys,
    inode_records,
    mkdir,
    mkfile,
    names,
    raises,
    symlink,
    tree,
)

from agentfs.posix.fs import BLOCK_SIZE, ROOT_INO, FileSystem, SetAttr
from agentfs.storage.codec import split_ino
from agentfs.storage.gc import collect
from agentfs.storage.kv import Engine

SPEC: dict[str, object] = {
    "a.txt": b"alpha",
    "b.bin": bytes(range(256)) * 1200,  # > 2 blocks
    "dir": {"c.txt": b"gamma", "deeper": {"d.txt": b"delta"}, "empty": {}},
    "ln": ("->", b"a.txt"),
}


def p(fs: FileSystem, path: str) -> int:
    return fs.path_ino(path)


def setup_src(fs: FileSystem, name: bytes = b"src", spec: dict[str, object] = SPEC) -> int:
    d = mkdir(fs, ROOT_INO, name).ino
    build(fs, d, spec)
    return d


def mutate(fs: FileSystem, d: int, tag: bytes) -> None:
    """A mix of every kind of change under directory `d`."""
    fs.write(fs.lookup(d, b"a.txt").ino, 0, tag)
    b = fs.lookup(d, b"b.bin").ino
    fs.write(b, BLOCK_SIZE + 5, tag * 10)
    fs.setattr(b, SetAttr(size=BLOCK_SIZE * 2 + 7))
    sub = fs.lookup(d, b"dir").ino
    c = fs.lookup(sub, b"c.txt").ino
    fs.unlink(sub, b"c.txt")
    fs.forget(c)
    fs.rename(sub, b"deeper", d, b"moved-" + tag)
    mkfile(fs, sub, b"new-" + tag, tag)
    fs.setxattr(fs.lookup(d, b"a.txt").ino, b"user.tag", tag)
    e = fs.lookup(sub, b"empty").ino
    fs.rmdir(sub, b"empty")
    fs.forget(e)
    mkdir(fs, d, b"made-" + tag)
    fs.setattr(d, SetAttr(mode=0o700))


def expected_after_mutate(tag: bytes, spec: dict[str, object] = SPEC) -> dict[str, object]:
    t = copy.deepcopy(spec)
    t["a.txt"] = tag + b"alpha"[len(tag):]
    b = bytearray(t["b.bin"])  # type: ignore[arg-type]
    b[BLOCK_SIZE + 5:BLOCK_SIZE + 5 + len(tag) * 10] = tag * 10
    t["b.bin"] = bytes(b[:BLOCK_SIZE * 2 + 7])
    sub = t["dir"]
    assert isinstance(sub, dict)
    del sub["c.txt"]
    t["moved-" + tag.decode()] = sub.pop("deeper")
    sub["new-" + tag.decode()] = tag
    del sub["empty"]
    t["made-" + tag.decode()] = {}
    return t


# ----------------------------------------------------------------- isolation


def test_fork_sees_source(fs: FileSystem) -> None:
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork")
    assert tree(fs, fork.ino) == SPEC
    assert fs.getattr(ROOT_INO).nlink == 4
    assert fork.nlink == fs.getattr(src).nlink
    assert fs.path_ino("fork/..") == ROOT_INO
    assert split_ino(fork.ino)[0] != split_ino(src)[0]


def test_fork_isolated_from_source_changes(fs: FileSystem) -> None:
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    mutate(fs, src, b"SRC")
    assert tree(fs, src) == expected_after_mutate(b"SRC")
    assert tree(fs, fork) == SPEC
    assert fs.listxattr(fs.lookup(fork, b"a.txt").ino) == []


def test_source_isolated_from_fork_changes(fs: FileSystem) -> None:
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    mutate(fs, fork, b"FRK")
    assert tree(fs, fork) == expected_after_mutate(b"FRK")
    assert tree(fs, src) == SPEC
    assert fs.listxattr(fs.lookup(src, b"a.txt").ino) == []
    assert fs.getattr(src).mode & 0o777 == 0o755


def test_isolation_both_ways_interleaved(fs: FileSystem) -> None:
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    mutate(fs, src, b"S1")
    mutate(fs, fork, b"F1")
    assert tree(fs, src) == expected_after_mutate(b"S1")
    assert tree(fs, fork) == expected_after_mutate(b"F1")
    # And again on top.
    fs.write(fs.lookup(src, b"a.txt").ino, 0, b"Z")
    fs.write(fs.lookup(fork, b"a.txt").ino, 1, b"Y")
    assert cat(fs, fs.lookup(src, b"a.txt").ino) == b"Z1pha"
    assert cat(fs, fs.lookup(fork, b"a.txt").ino) == b"FYpha"


def test_fork_inherited_hard_links(fs: FileSystem) -> None:
    src = mkdir(fs, ROOT_INO, b"src").ino
    f = mkfile(fs, src, b"f", b"x")
    fs.link(f.ino, src, b"g")
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    ff = fs.lookup(fork, b"f").ino
    assert fs.lookup(fork, b"g").ino == ff
    assert fs.getattr(ff).nlink == 2
    fs.unlink(fork, b"f")
    assert fs.getattr(ff).nlink == 1
    assert fs.getattr(f.ino).nlink == 2
    fs.write(ff, 0, b"y")
    assert cat(fs, f.ino) == b"x"


def test_fork_unlinked_inherited_file_freed_on_forget(fs: FileSystem) -> None:
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    b = fs.lookup(fork, b"b.bin").ino
    fs.unlink(fork, b"b.bin")
    assert fs.getattr(b).nlink == 0
    assert cat(fs, b) == SPEC["b.bin"]
    fs.forget(b)
    with raises(errno.ENOENT):
        fs.getattr(b)
    assert cat(fs, fs.lookup(src, b"b.bin").ino) == SPEC["b.bin"]


def test_fork_new_inodes_do_not_collide(fs: FileSystem) -> None:
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    new_src = {mkfile(fs, src, b"s%d" % i).ino for i in range(20)}
    new_fork = {mkfile(fs, fork, b"s%d" % i).ino for i in range(20)}
    assert not new_src & new_fork
    fork_locals = {split_ino(i)[1] for i in new_fork}
    inherited = {split_ino(e.attr.ino)[1] for e in fs.readdir(fork) if e.name.startswith(b"s")}
    assert inherited == fork_locals
    for e in fs.readdir(fork):
        assert split_ino(e.attr.ino)[0] == split_ino(fork)[0]


def test_fork_of_root_into_root(fs: FileSystem) -> None:
    build(fs, ROOT_INO, {"x": b"1", "d": {"y": b"2"}})
    fork = fs.fork(ROOT_INO, ROOT_INO, b"copy").ino
    # The copy is the root as it was just before: it does not contain itself.
    assert tree(fs, fork) == {"x": b"1", "d": {"y": b"2"}}
    mkfile(fs, fork, b"only-in-copy")
    assert names(fs, ROOT_INO) == [b"copy", b"d", b"x"]


def test_fork_into_own_subdirectory(fs: FileSystem) -> None:
    src = setup_src(fs)
    sub = fs.lookup(src, b"dir").ino
    fork = fs.fork(src, sub, b"inner").ino
    assert tree(fs, fork) == SPEC  # without "inner" itself
    assert "inner" in tree(fs, src)["dir"]  # type: ignore[operator]


def test_snapshot_immutable_while_source_changes(fs: FileSystem) -> None:
    src = setup_src(fs)
    s1 = fs.snapshot(src, b"s1").ino
    mutate(fs, src, b"ONE")
    s2 = fs.snapshot(src, b"s2").ino
    fs.write(fs.lookup(src, b"a.txt").ino, 0, b"TWO")
    for i in range(10):
        mkfile(fs, src, b"n%d" % i, b"%d" % i)
    assert tree(fs, s1) == SPEC
    assert tree(fs, s2) == expected_after_mutate(b"ONE")
    assert [n for n, _ in fs.snapshots(src)] == [b"s1", b"s2"]
    assert fs.snapshot_root(src, b"s1").ino == s1


def test_snapshots_of_different_dirs(fs: FileSystem) -> None:
    src = setup_src(fs)
    sub = fs.lookup(src, b"dir").ino
    fs.snapshot(src, b"s")
    fs.snapshot(sub, b"s")
    assert tree(fs, fs.snapshot_root(sub, b"s").ino) == SPEC["dir"]
    assert tree(fs, fs.snapshot_root(src, b"s").ino) == SPEC
    assert fs.snapshots(ROOT_INO) == []


def test_fork_of_snapshot_is_writable_copy(fs: FileSystem) -> None:
    src = setup_src(fs)
    snap = fs.snapshot(src, b"s").ino
    mutate(fs, src, b"LATER")
    fork = fs.fork(snap, ROOT_INO, b"from-snap").ino
    assert tree(fs, fork) == SPEC
    mutate(fs, fork, b"FS")
    assert tree(fs, fork) == expected_after_mutate(b"FS")
    assert tree(fs, snap) == SPEC
    assert tree(fs, src) == expected_after_mutate(b"LATER")


def test_fork_chain_depth_5(fs: FileSystem) -> None:
    """fork of a fork of a fork...: every level sees its own state only."""
    levels = [setup_src(fs, b"l0")]
    for i in range(1, 6):
        levels.append(fs.fork(levels[-1], ROOT_INO, b"l%d" % i).ino)
        # Each level changes something after forking the next.
        mkfile(fs, levels[-2], b"after-fork-%d" % i, b"%d" % i)
        fs.write(fs.lookup(levels[-1], b"a.txt").ino, 0, b"L%d" % i)
    for i, d in enumerate(levels):
        t = tree(fs, d)
        expect = copy.deepcopy(SPEC)
        if i > 0:
            expect["a.txt"] = b"L%d" % i + b"alpha"[2:]
        if i < 5:
            expect[f"after-fork-{i + 1}"] = b"%d" % (i + 1)
        assert t == expect, f"level {i}"
    # Deep changes stay at their level.
    fs.unlink(fs.lookup(levels[5], b"dir").ino, b"c.txt")
    mkfile(fs, levels[0], b"top-only")
    assert "c.txt" in tree(fs, levels[4])["dir"]  # type: ignore[operator]
    assert "c.txt" not in tree(fs, levels[5])["dir"]  # type: ignore[operator]
    for d in levels[1:]:
        assert b"top-only" not in names(fs, d)


def test_fork_chain_depth_5_with_gc(fs: FileSystem) -> None:
    levels = [setup_src(fs, b"l0")]
    for i in range(1, 6):
        levels.append(fs.fork(levels[-1], ROOT_INO, b"l%d" % i).ino)
        mutate(fs, levels[-2], b"M%d" % i)
    before = [tree(fs, d) for d in levels]
    collect(fs.store, everything=True)
    assert [tree(fs, d) for d in levels] == before
    for i in range(5):
        assert before[i] == expected_after_mutate(b"M%d" % (i + 1))
    assert before[5] == SPEC


# ----------------------------------------------------------------- pinned epochs


def test_fork_at_pinned_epoch(fs: FileSystem) -> None:
    src = setup_src(fs)
    e = fs.pin(src, b"turn-1")
    assert e < fs.epoch_now()
    mutate(fs, src, b"AFTER")
    mkfile(fs, src, b"created-after", b"c")
    fs.rename(src, b"ln", src, b"ln-renamed")
    past = fs.fork(src, ROOT_INO, b"past", epoch=e).ino
    now = fs.fork(src, ROOT_INO, b"now").ino
    assert tree(fs, past) == SPEC
    assert fs.listxattr(fs.lookup(past, b"a.txt").ino) == []
    assert fs.getattr(past).mode & 0o777 == 0o755
    expect_now = expected_after_mutate(b"AFTER")
    expect_now["created-after"] = b"c"
    expect_now["ln-renamed"] = expect_now.pop("ln")
    assert tree(fs, now) == expect_now
    assert tree(fs, src) == expect_now
    # The past fork is writable and isolated like any other.
    mutate(fs, past, b"P")
    assert tree(fs, past) == expected_after_mutate(b"P")
    assert tree(fs, src) == expect_now
    fs.unpin(src, b"turn-1")  # fsck refuses pins nothing in the store would release


def test_fork_at_pinned_epoch_survives_gc_and_unpin(fs: FileSystem) -> None:
    src = setup_src(fs)
    e = fs.pin(src, b"h")
    mutate(fs, src, b"X")
    collect(fs.store, everything=True)  # pinned: the old versions stay
    past = fs.fork(src, ROOT_INO, b"past", epoch=e).ino
    fs.unpin(src, b"h")
    collect(fs.store, everything=True)  # the fork holds its own pin
    assert tree(fs, past) == SPEC
    with raises(errno.ENOENT):
        fs.fork(src, ROOT_INO, b"again", epoch=e - 1 if e > 1 else e + 10_000)


def test_several_pins_pick_the_right_epoch(fs: FileSystem) -> None:
    src = mkdir(fs, ROOT_INO, b"src").ino
    f = mkfile(fs, src, b"f", b"v0").ino
    epochs = []
    for i in range(1, 6):
        epochs.append(fs.pin(src, b"h%d" % i))
        fs.write(f, 0, b"v%d" % i)
        mkfile(fs, src, b"after%d" % i)
    for i, e in enumerate(epochs):
        d = fs.fork(src, ROOT_INO, b"at%d" % i, epoch=e).ino
        assert cat(fs, fs.lookup(d, b"f").ino) == b"v%d" % i
        assert names(fs, d) == sorted([b"f", *(b"after%d" % j for j in range(1, i + 1))])
    for i in range(1, 6):
        fs.unpin(src, b"h%d" % i)


def test_fork_at_epoch_before_dir_existed(fs: FileSystem) -> None:
    e = fs.pin(ROOT_INO, b"h")
    d = mkdir(fs, ROOT_INO, b"later").ino
    with raises(errno.ENOENT):
        fs.fork(d, ROOT_INO, b"x", epoch=e)
    assert names(fs, ROOT_INO) == [b"later"]
    fs.unpin(ROOT_INO, b"h")


def test_pinned_deleted_file_visible_at_epoch(fs: FileSystem) -> None:
    src = setup_src(fs)
    e = fs.pin(src, b"h")
    b = fs.lookup(src, b"b.bin").ino
    fs.unlink(src, b"b.bin")
    fs.forget(b)
    collect(fs.store, everything=True)
    past = fs.fork(src, ROOT_INO, b"past", epoch=e).ino
    assert cat(fs, fs.lookup(past, b"b.bin").ino) == SPEC["b.bin"]
    fs.unpin(src, b"h")


def test_snapshot_at_pinned_epoch(fs: FileSystem) -> None:
    src = setup_src(fs)
    e = fs.pin(src, b"h")
    mutate(fs, src, b"Q")
    s = fs.snapshot(src, b"then", epoch=e).ino
    assert tree(fs, s) == SPEC
    fs.unpin(src, b"h")
    collect(fs.store, everything=True)
    assert tree(fs, s) == SPEC
    with raises(errno.EROFS):
        mkfile(fs, s, b"x")


def test_pin_of_non_directory(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.ENOTDIR):
        fs.pin(f.ino, b"h")


# ----------------------------------------------------------------- O(1)


def _tree_of(n: int) -> dict[str, object]:
    """n files, spread over a few directories."""
    spec: dict[str, object] = {"d0": {}, "d1": {}, "d2": {"inner": {}}}
    for i in range(n):
        where = spec if i % 4 == 0 else spec[f"d{i % 3}"]
        assert isinstance(where, dict)
        where[f"f{i}"] = b"x" * (i % 7)
    return spec


@pytest.mark.parametrize("op", ["fork", "snapshot", "fork_at_epoch", "snapshot_at_epoch",
                                "fork_of_snapshot"])
def test_fork_and_snapshot_write_constant_keys(engines, make_fs, op: str) -> None:  # type: ignore[no-untyped-def]
    counts = []
    for n in (10, 100, 1000):
        ce = CountingEngine(engines())
        fs = make_fs(ce)
        src = setup_src(fs, b"src", _tree_of(n))
        pinned = src
        epoch = fs.pin(pinned, b"h") if op.endswith("at_epoch") else None
        if op == "fork_of_snapshot":
            src = fs.snapshot(src, b"s").ino
        if epoch is not None:
            mkfile(fs, src, b"after")
        ce.puts = 0
        if op.startswith("fork"):
            r = fs.fork(src, ROOT_INO, b"copy", epoch=epoch)
            assert len(names(fs, r.ino)) == len(names(fs, src)) - (epoch is not None)
        else:
            fs.snapshot(src, b"snap", epoch=epoch)
        counts.append(ce.puts)
        if epoch is not None:
            fs.unpin(pinned, b"h")
    assert counts[0] == counts[1] == counts[2], counts
    assert counts[0] <= 20


def test_detach_writes_constant_keys(engines, make_fs) -> None:  # type: ignore[no-untyped-def]
    counts = []
    for n in (10, 100, 1000):
        ce = CountingEngine(engines())
        fs = make_fs(ce)
        src = setup_src(fs, b"src", _tree_of(n))
        fork = fs.fork(src, ROOT_INO, b"copy").ino
        mutate_small = fs.lookup(fork, b"d0").ino
        mkfile(fs, mutate_small, b"x")
        ce.puts = 0
        fs.detach(ROOT_INO, b"copy")
        counts.append(ce.puts)
    assert counts[0] == counts[1] == counts[2], counts


# ----------------------------------------------------------------- gc


def keyspace(engine: Engine) -> dict[str, int]:
    return {k: count_keys(engine, k.encode()) for k in "RVPSOGCm"}


def test_gc_after_deleting_views_returns_to_live_tree(engines, make_fs) -> None:  # type: ignore[no-untyped-def]
    """Snapshots and forks, changes everywhere, then delete every view and
    collect: what remains is exactly what the same live tree needs alone."""

    def workload(fs: FileSystem, with_views: bool) -> None:
        src = setup_src(fs)
        other = setup_src(fs, b"other")
        if with_views:
            fs.snapshot(src, b"s1")
            fork = fs.fork(src, ROOT_INO, b"fork").ino
            mutate(fs, fork, b"F")
            fs.snapshot(fork, b"fs")
            fork2 = fs.fork(fork, ROOT_INO, b"fork2").ino
            mkfile(fs, fork2, b"x" * 10, b"y" * BLOCK_SIZE * 3)
            e = fs.pin(other, b"turn")
            fs.fork(other, fork2, b"nested-fork", epoch=e)
        mutate(fs, src, b"S")
        fs.write(fs.lookup(other, b"a.txt").ino, 0, b"other!")
        if with_views:
            fs.snapshot(src, b"s2")
            fs.unpin(other, b"turn")
            fs.delete_snapshot(src, b"s1")
            fs.delete_snapshot(src, b"s2")
            fs.delete_snapshot(fs.lookup(ROOT_INO, b"fork").ino, b"fs")
            fs.detach(ROOT_INO, b"fork2")
            fs.detach(ROOT_INO, b"fork")
        collect(fs.store)

    with_views = make_fs()
    workload(with_views, True)
    alone = make_fs()
    workload(alone, False)
    assert tree(with_views, ROOT_INO) == tree(alone, ROOT_INO)
    got, want = keyspace(with_views.engine), keyspace(alone.engine)
    assert got == want
    assert got["V"] == 1 and got["P"] == 0 and got["S"] == 0 and got["G"] == 0
    assert got["C"] == 0 and got["m"] == 0


def test_gc_delete_snapshot_frees_versions(fs: FileSystem) -> None:
    src = setup_src(fs)
    collect(fs.store, everything=True)
    base = count_keys(fs.engine, b"R")
    fs.snapshot(src, b"s")
    assert count_keys(fs.engine, b"R") == base  # a snapshot copies nothing
    for i in range(5):
        fs.write(fs.lookup(src, b"b.bin").ino, i * 1000, b"changed")
    a = fs.lookup(src, b"a.txt").ino
    fs.unlink(src, b"a.txt")
    fs.forget(a)
    with_versions = count_keys(fs.engine, b"R")
    assert with_versions > base  # old versions kept for the snapshot
    snap = fs.snapshot_root(src, b"s").ino
    collect(fs.store)  # may drop redundant tombstones, never what the snapshot shows
    assert tree(fs, snap) == SPEC
    still = count_keys(fs.engine, b"R")
    assert still > base
    fs.delete_snapshot(src, b"s")
    collect(fs.store)
    after = count_keys(fs.engine, b"R")
    assert after < still
    assert keyspace(fs.engine)["V"] == 1
    # The live tree is intact.
    expect = copy.deepcopy(SPEC)
    del expect["a.txt"]
    b = bytearray(expect["b.bin"])  # type: ignore[arg-type]
    for i in range(5):
        b[i * 1000:i * 1000 + 7] = b"changed"
    expect["b.bin"] = bytes(b)
    assert tree(fs, src) == expect


def test_versions_kept_while_pinned_reclaimed_after_unpin(fs: FileSystem) -> None:
    src = setup_src(fs)
    b = fs.lookup(src, b"b.bin").ino
    collect(fs.store, everything=True)
    base = count_keys(fs.engine, b"R")
    e = fs.pin(src, b"holder")
    for i in range(3):
        fs.write(b, 0, b"%d" % i * 1000)
    assert count_keys(fs.engine, b"R") > base
    pinned = count_keys(fs.engine, b"R")
    collect(fs.store, everything=True)
    assert count_keys(fs.engine, b"R") == pinned  # nothing reclaimable yet
    # The pinned state is really there.
    past = fs.snapshot(src, b"check", epoch=e).ino
    assert tree(fs, past) == SPEC
    fs.delete_snapshot(src, b"check")
    fs.unpin(src, b"holder")
    collect(fs.store)
    assert count_keys(fs.engine, b"R") == base
    assert count_keys(fs.engine, b"P") == 0
    assert cat(fs, b)[:1000] == b"2" * 1000


def test_unpin_only_releases_that_holder(fs: FileSystem) -> None:
    src = setup_src(fs)
    e1 = fs.pin(src, b"one")
    fs.write(fs.lookup(src, b"a.txt").ino, 0, b"ONE")
    fs.pin(src, b"two")
    fs.write(fs.lookup(src, b"a.txt").ino, 0, b"TWO")
    fs.unpin(src, b"two")
    collect(fs.store, everything=True)
    s = fs.snapshot(src, b"s", epoch=e1).ino
    assert cat(fs, fs.lookup(s, b"a.txt").ino) == b"alpha"
    fs.unpin(src, b"one")


def test_gc_keeps_every_view_readable(fs: FileSystem) -> None:
    """Random changes across source, forks and snapshots; collect must not
    change what any view shows."""
    rng = random.Random(9)
    src = setup_src(fs)
    views = {"src": src}
    for step in range(12):
        kind = rng.choice(["fork", "snap", "write", "unlink", "mkfile"])
        target_name = rng.choice(sorted(k for k in views if not k.startswith("snap")))
        target = views[target_name]
        if kind == "fork":
            views[f"fork{step}"] = fs.fork(target, ROOT_INO, b"fork%d" % step).ino
        elif kind == "snap":
            views[f"snap{step}"] = fs.snapshot(target, b"snap%d" % step).ino
        elif kind == "write":
            fs.write(fs.lookup(target, b"b.bin").ino, rng.randrange(3 * BLOCK_SIZE), b"W" * 99)
        elif kind == "unlink" and b"a.txt" in names(fs, target):
            ino = fs.lookup(target, b"a.txt").ino
            fs.unlink(target, b"a.txt")
            fs.forget(ino)
        else:
            mkfile(fs, target, b"m%d" % step, b"%d" % step)
        before = {k: tree(fs, v) for k, v in views.items()}
        collect(fs.store, everything=True)
        assert {k: tree(fs, v) for k, v in views.items()} == before


def test_collect_is_idempotent(fs: FileSystem) -> None:
    src = setup_src(fs)
    fs.snapshot(src, b"s")
    mutate(fs, src, b"I")
    collect(fs.store, everything=True)
    keys = keyspace(fs.engine)
    stats = collect(fs.store, everything=True)
    assert stats["versions"] == 0
    assert keyspace(fs.engine) == keys


def test_removed_dir_takes_its_snapshots(fs: FileSystem) -> None:
    src = setup_src(fs)
    d = fs.lookup(src, b"dir").ino
    fs.snapshot(d, b"s")
    mutate(fs, src, b"R")  # removes c.txt and empty, moves deeper out
    new = fs.lookup(d, b"new-R").ino
    fs.unlink(d, b"new-R")
    fs.forget(new)
    fs.rmdir(src, b"dir")
    fs.forget(d)
    collect(fs.store)
    assert keyspace(fs.engine)["V"] == 1
    assert keyspace(fs.engine)["S"] == 0


# ----------------------------------------------------------------- nested views


def test_fork_of_dir_containing_fork_is_isolated(fs: FileSystem) -> None:
    x = setup_src(fs, b"x")
    a = mkdir(fs, ROOT_INO, b"a").ino
    mkfile(fs, a, b"top", b"t")
    inner = fs.fork(x, a, b"inner").ino  # /a/inner: a fork of /x
    mkfile(fs, inner, b"inner-before", b"ib")
    b = fs.fork(a, ROOT_INO, b"b").ino  # /b: a fork of /a, containing a copy of inner
    b_inner = fs.lookup(b, b"inner").ino
    assert b_inner != inner
    expect = copy.deepcopy(SPEC)
    expect["inner-before"] = b"ib"
    assert tree(fs, b_inner) == expect
    # Changes to the original nested fork do not reach the copy...
    mutate(fs, inner, b"ORIG")
    assert tree(fs, b_inner) == expect
    # ...and changes to the copy do not reach the original.
    mutate(fs, b_inner, b"COPY")
    orig = expected_after_mutate(b"ORIG")
    orig["inner-before"] = b"ib"
    cp = expected_after_mutate(b"COPY")
    cp["inner-before"] = b"ib"
    assert tree(fs, inner) == orig
    assert tree(fs, b_inner) == cp
    assert tree(fs, x) == SPEC
    assert fs.path_ino("b/inner/..") == b
    assert fs.path_ino("a/inner/..") == a
    collect(fs.store, everything=True)
    assert tree(fs, inner) == orig
    assert tree(fs, b_inner) == cp


def test_nested_copy_made_by_readdir_then_isolated(fs: FileSystem) -> None:
    """The copy of a nested fork is made on first use; reaching it through
    readdir first (rather than lookup) must give the same isolated copy."""
    x = setup_src(fs, b"x")
    a = mkdir(fs, ROOT_INO, b"a").ino
    inner = fs.fork(x, a, b"inner").ino
    b = fs.fork(a, ROOT_INO, b"b").ino
    mkfile(fs, inner, b"late", b"l")  # after b was forked
    via_readdir = {e.name: e.attr.ino for e in fs.readdir(b)}[b"inner"]
    assert via_readdir == fs.lookup(b, b"inner").ino
    assert tree(fs, via_readdir) == SPEC
    mkfile(fs, via_readdir, b"copy-only")
    assert b"copy-only" not in names(fs, inner)


def test_snapshot_of_dir_containing_fork(fs: FileSystem) -> None:
    x = setup_src(fs, b"x")
    a = mkdir(fs, ROOT_INO, b"a").ino
    inner = fs.fork(x, a, b"inner").ino
    s = fs.snapshot(a, b"s").ino
    mutate(fs, inner, b"LATE")
    assert tree(fs, s) == {"inner": SPEC}
    s_inner = fs.lookup(s, b"inner").ino
    with raises(errno.EROFS):
        mkfile(fs, s_inner, b"x")
    with raises(errno.EROFS):
        fs.write(fs.lookup(s_inner, b"a.txt").ino, 0, b"x")
    assert tree(fs, inner) == expected_after_mutate(b"LATE")


def test_nested_forks_three_deep(fs: FileSystem) -> None:
    """/a/b/c where b is a fork and c a fork inside b; fork /a twice."""
    x = setup_src(fs, b"x")
    a = mkdir(fs, ROOT_INO, b"a").ino
    b = fs.fork(x, a, b"b").ino
    c = fs.fork(x, b, b"c").ino
    a1 = fs.fork(a, ROOT_INO, b"a1").ino
    a2 = fs.fork(a, ROOT_INO, b"a2").ino
    c1 = fs.path_ino("a1/b/c")
    c2 = fs.path_ino("a2/b/c")
    assert len({c, c1, c2}) == 3
    mkfile(fs, c1, b"one")
    mkfile(fs, c2, b"two")
    mkfile(fs, c, b"orig")
    assert b"one" in names(fs, c1) and b"two" not in names(fs, c1)
    assert b"two" in names(fs, c2) and b"orig" not in names(fs, c2)
    assert b"orig" in names(fs, c) and b"one" not in names(fs, c)
    assert tree(fs, fs.path_ino("a1/b"))["a.txt"] == b"alpha"
    del a1, a2


# ----------------------------------------------------------------- detach


def test_detach_fork_root(fs: FileSystem) -> None:
    src = setup_src(fs)
    collect(fs.store, everything=True)
    base = keyspace(fs.engine)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    mutate(fs, fork, b"D")
    fs.snapshot(fork, b"fsnap")
    fs.detach(ROOT_INO, b"fork")
    assert names(fs, ROOT_INO) == [b"src"]
    assert fs.getattr(ROOT_INO).nlink == 3
    with raises(errno.ENOENT):
        fs.lookup(ROOT_INO, b"fork")
    collect(fs.store)
    assert keyspace(fs.engine) == base
    assert tree(fs, src) == SPEC
    # The name can be reused.
    fs.fork(src, ROOT_INO, b"fork")
    assert tree(fs, fs.lookup(ROOT_INO, b"fork").ino) == SPEC


def test_detach_nested_fork_inside_fork(fs: FileSystem) -> None:
    src = setup_src(fs)
    outer = fs.fork(src, ROOT_INO, b"outer").ino
    inner = fs.fork(src, outer, b"inner").ino
    mkfile(fs, inner, b"i")
    fs.detach(outer, b"inner")
    assert names(fs, outer) == sorted(n.encode() for n in SPEC)
    assert fs.getattr(outer).nlink == fs.getattr(src).nlink
    collect(fs.store)
    fs.detach(ROOT_INO, b"outer")
    collect(fs.store)
    assert keyspace(fs.engine)["V"] == 1


def test_detach_outer_takes_nested(fs: FileSystem) -> None:
    src = setup_src(fs)
    outer = fs.fork(src, ROOT_INO, b"outer").ino
    inner = fs.fork(src, outer, b"inner").ino
    fs.snapshot(inner, b"s")
    fs.detach(ROOT_INO, b"outer")
    collect(fs.store)
    k = keyspace(fs.engine)
    assert k["V"] == 1 and k["P"] == 0 and k["C"] == 0 and k["S"] == 0


def test_detach_fork_of_dir_with_nested_copy(fs: FileSystem) -> None:
    x = setup_src(fs, b"x")
    a = mkdir(fs, ROOT_INO, b"a").ino
    inner = fs.fork(x, a, b"inner").ino
    b = fs.fork(a, ROOT_INO, b"b").ino
    mkfile(fs, fs.lookup(b, b"inner").ino, b"copy")  # materialise the copy
    fs.detach(ROOT_INO, b"b")
    collect(fs.store)
    assert tree(fs, inner) == SPEC
    fs.detach(a, b"inner")
    collect(fs.store)
    assert keyspace(fs.engine)["V"] == 1


# ----------------------------------------------------------------- persistence


def test_views_survive_reopen(engines, make_fs) -> None:  # type: ignore[no-untyped-def]
    e = engines()
    fs = make_fs(e)
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    snap = fs.snapshot(src, b"s").ino
    mutate(fs, src, b"P")
    mutate(fs, fork, b"F")
    epoch = fs.epoch_now()
    e = engines.reopen(e)
    fs2 = make_fs(e)
    assert fs2.epoch_now() == epoch
    assert tree(fs2, snap) == SPEC
    assert tree(fs2, fork) == expected_after_mutate(b"F")
    assert tree(fs2, src) == expected_after_mutate(b"P")
    mkfile(fs2, fork, b"after-reopen")
    new_fork = fs2.fork(src, ROOT_INO, b"fork2").ino
    assert split_ino(new_fork)[0] > split_ino(snap)[0]
    assert b"after-reopen" not in names(fs2, src)


def test_symlink_in_fork(fs: FileSystem) -> None:
    src = mkdir(fs, ROOT_INO, b"src").ino
    symlink(fs, src, b"l", b"target")
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    ln = fs.lookup(fork, b"l").ino
    assert fs.readlink(ln) == b"target"
    fs.unlink(fork, b"l")
    fs.forget(ln)
    symlink(fs, fork, b"l", b"other")
    assert fs.readlink(fs.lookup(src, b"l").ino) == b"target"
    assert fs.readlink(fs.lookup(fork, b"l").ino) == b"other"


def test_inode_records_of_fork_write_go_to_fork(fs: FileSystem) -> None:
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    f = fs.lookup(fork, b"b.bin").ino
    assert inode_records(fs.engine, f) == 0  # inherited, nothing of its own
    fs.write(f, 0, b"z")
    assert inode_records(fs.engine, f) == 2  # its attr and the one block written



# ----------------------------------------------------------------- more fork edges


def test_fork_survives_removal_of_source_dir(fs: FileSystem) -> None:
    src = setup_src(fs, b"src", {"f": b"data", "d": {"g": b"deep"}})
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    d = fs.lookup(src, b"d").ino
    g = fs.lookup(d, b"g").ino
    f = fs.lookup(src, b"f").ino
    fs.unlink(d, b"g")
    fs.rmdir(src, b"d")
    fs.unlink(src, b"f")
    fs.rmdir(ROOT_INO, b"src")
    for ino in (g, d, f, src):
        fs.forget(ino)
    collect(fs.store, everything=True)
    assert tree(fs, fork) == {"f": b"data", "d": {"g": b"deep"}}
    mkfile(fs, fork, b"still-writable")


def test_nested_fork_detached_in_original_after_outer_fork(fs: FileSystem) -> None:
    """/b forks /a while /a/inner is a fork; then /a/inner is detached. /b/inner
    is part of /b's state and must keep its contents."""
    x = setup_src(fs, b"x")
    a = mkdir(fs, ROOT_INO, b"a").ino
    inner = fs.fork(x, a, b"inner").ino
    mkfile(fs, inner, b"mine", b"m")
    b = fs.fork(a, ROOT_INO, b"b").ino
    fs.detach(a, b"inner")
    collect(fs.store)
    expect = copy.deepcopy(SPEC)
    expect["mine"] = b"m"
    assert tree(fs, b) == {"inner": expect}
    b_inner = fs.lookup(b, b"inner").ino
    mkfile(fs, b_inner, b"more")
    collect(fs.store, everything=True)
    assert "more" in tree(fs, b_inner)
    assert names(fs, a) == []
    del inner


def test_snapshot_keeps_nested_fork_after_detach(fs: FileSystem) -> None:
    x = setup_src(fs, b"x")
    a = mkdir(fs, ROOT_INO, b"a").ino
    fs.fork(x, a, b"inner")
    s = fs.snapshot(a, b"s").ino
    fs.detach(a, b"inner")
    collect(fs.store)
    assert tree(fs, s) == {"inner": SPEC}


def test_fork_truncate_inherited_file(fs: FileSystem) -> None:
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    fb = fs.lookup(fork, b"b.bin").ino
    data = SPEC["b.bin"]
    assert isinstance(data, bytes)
    fs.setattr(fb, SetAttr(size=BLOCK_SIZE + 10))
    fs.setattr(fb, SetAttr(size=3 * BLOCK_SIZE))
    assert cat(fs, fb) == data[:BLOCK_SIZE + 10] + bytes(2 * BLOCK_SIZE - 10)
    assert fs.getattr(fb).stored == BLOCK_SIZE + 10
    fs.write(fb, 2 * BLOCK_SIZE, b"end")
    assert fs.read(fb, 2 * BLOCK_SIZE - 2, 5) == b"\0\0end"
    assert cat(fs, fs.lookup(src, b"b.bin").ino) == data
    fs.setattr(fb, SetAttr(size=0))
    assert cat(fs, fb) == b""
    assert cat(fs, fs.lookup(src, b"b.bin").ino) == data


def test_fork_removexattr_inherited(fs: FileSystem) -> None:
    src = mkdir(fs, ROOT_INO, b"src").ino
    f = mkfile(fs, src, b"f").ino
    fs.setxattr(f, b"user.a", b"1")
    fs.setxattr(f, b"user.b", b"2")
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    ff = fs.lookup(fork, b"f").ino
    fs.removexattr(ff, b"user.a")
    fs.setxattr(ff, b"user.b", b"22")
    with raises(errno.ENODATA):
        fs.getxattr(ff, b"user.a")
    with raises(errno.ENODATA):
        fs.setxattr(ff, b"user.a", b"x", 2)  # XATTR_REPLACE
    assert fs.listxattr(ff) == [b"user.b"]
    assert sorted(fs.listxattr(f)) == [b"user.a", b"user.b"]
    assert fs.getxattr(f, b"user.b") == b"2"
    fs.setxattr(ff, b"user.a", b"back", 1)  # XATTR_CREATE
    assert fs.getxattr(ff, b"user.a") == b"back"
    assert fs.getxattr(f, b"user.a") == b"1"


def test_fork_rename_dir_into_own_subdir(fs: FileSystem) -> None:
    src = setup_src(fs)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    sub = fs.lookup(fork, b"dir").ino
    deeper = fs.lookup(sub, b"deeper").ino
    with raises(errno.EINVAL):
        fs.rename(fork, b"dir", deeper, b"x")
    fs.rename(sub, b"deeper", fork, b"up")
    assert fs.path_ino("fork/up/..") == fork
    fs.rename(fork, b"dir", fs.lookup(fork, b"up").ino, b"down")
    assert fs.path_ino("fork/up/down/..") == fs.path_ino("fork/up")
    assert tree(fs, src) == SPEC


def test_fork_readdir_merged_with_churn(fs: FileSystem) -> None:
    src = mkdir(fs, ROOT_INO, b"src").ino
    for i in range(600):
        mkfile(fs, src, b"inh%03d" % i)
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    for i in range(0, 600, 2):
        fs.unlink(fork, b"inh%03d" % i)
    for i in range(300):
        mkfile(fs, fork, b"own%03d" % i)
    mkfile(fs, src, b"src-only")
    want = {b"inh%03d" % i for i in range(1, 600, 2)} | {b"own%03d" % i for i in range(300)}
    ents = list(fs.readdir(fork))
    assert len(ents) == 600
    assert {e.name for e in ents} == want
    assert [e.offset for e in ents] == sorted(e.offset for e in ents)
    seen: list[bytes] = []
    start = 0
    while True:
        b = [(e.name, e.offset) for _, e in zip(range(50), fs.readdir(fork, start), strict=False)]
        if not b:
            break
        seen += [n for n, _ in b]
        start = b[-1][1]
        # Remove one inherited and one own entry not yet seen, add one.
        for n in sorted(want - set(seen))[:2]:
            fs.unlink(fork, n)
            want.discard(n)
        new = b"late%03d" % len(seen)
        mkfile(fs, fork, new)
    assert len(seen) == len(set(seen))
    assert want - {n for n in want if n.startswith(b"late")} <= set(seen)
    assert fs.getattr(fork).nlink == 2


def test_fork_of_fork_sees_its_modified_nested_copy(fs: FileSystem) -> None:
    """/a holds a nested fork /a/y; /b forks /a and changes /b/y (its own copy
    of y). A fork or snapshot of /b must show /b/y as changed, not y as it was
    in /a."""
    x = mkdir(fs, ROOT_INO, b"x").ino
    mkfile(fs, x, b"f", b"orig")
    a = mkdir(fs, ROOT_INO, b"a").ino
    fs.fork(x, a, b"y")
    b = fs.fork(a, ROOT_INO, b"b").ino
    fs.write(fs.path_ino("b/y/f"), 0, b"BMOD")
    mkfile(fs, fs.path_ino("b/y"), b"new-in-b", b"n")
    assert tree(fs, b) == {"y": {"f": b"BMOD", "new-in-b": b"n"}}
    c = fs.fork(b, ROOT_INO, b"c").ino
    assert tree(fs, c) == {"y": {"f": b"BMOD", "new-in-b": b"n"}}
    s = fs.snapshot(b, b"s").ino
    assert tree(fs, s) == {"y": {"f": b"BMOD", "new-in-b": b"n"}}
    assert tree(fs, a) == {"y": {"f": b"orig"}}
