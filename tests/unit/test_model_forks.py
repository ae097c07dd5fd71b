"""The model's errors around views: EROFS for every write in a snapshot, EXDEV
between a fork and its parent tree, and the fork/snapshot/detach API errors."""

from __future__ import annotations

import errno
import stat

import pytest
from fsutil import build, cat, dead_views, mkdir, mkfile, names, raises, symlink, tree

from agentfs.errors import FsError
from agentfs.fsck import check_store
from agentfs.posix.fs import RENAME_EXCHANGE, ROOT_INO, XATTR_CREATE, FileSystem, SetAttr
from agentfs.storage.codec import split_ino
from agentfs.storage.gc import collect, collect_steps

SPEC: dict[str, object] = {
    "f": b"file data",
    "sub": {"g": b"deep", "empty": {}},
    "link": ("->", b"f"),
}


@pytest.fixture
def snap(fs: FileSystem) -> tuple[int, int]:
    """(source dir, snapshot root) of a snapshot of /src holding SPEC."""
    src = mkdir(fs, ROOT_INO, b"src").ino
    build(fs, src, SPEC)
    fs.setxattr(fs.lookup(src, b"f").ino, b"user.k", b"v")
    s = fs.snapshot(src, b"s1")
    return src, s.ino


def test_snapshot_reads(fs: FileSystem, snap: tuple[int, int]) -> None:
    src, root = snap
    assert tree(fs, root) == SPEC
    f = fs.lookup(root, b"f")
    assert fs.getxattr(f.ino, b"user.k") == b"v"
    assert fs.listxattr(f.ino) == [b"user.k"]
    assert fs.readlink(fs.lookup(root, b"link").ino) == b"f"
    assert fs.getattr(root).nlink == 3
    assert split_ino(root)[0] != split_ino(src)[0]
    assert [n for n, _ in fs.snapshots(src)] == [b"s1"]
    assert fs.snapshot_root(src, b"s1").ino == root


WRITES = {
    "create": lambda fs, d, f: mkfile(fs, d, b"new"),
    "mkdir": lambda fs, d, f: mkdir(fs, d, b"new"),
    "symlink": lambda fs, d, f: symlink(fs, d, b"new", b"t"),
    "mknod": lambda fs, d, f: fs.create(d, b"new", stat.S_IFIFO | 0o600, 0, 0),
    "unlink": lambda fs, d, f: fs.unlink(d, b"f"),
    "rmdir": lambda fs, d, f: fs.rmdir(fs.lookup(d, b"sub").ino, b"empty"),
    "rename": lambda fs, d, f: fs.rename(d, b"f", d, b"f2"),
    "rename_replace": lambda fs, d, f: fs.rename(d, b"link", d, b"f"),
    "rename_exchange": lambda fs, d, f: fs.rename(d, b"link", d, b"f", RENAME_EXCHANGE),
    "link": lambda fs, d, f: fs.link(f, d, b"f2"),
    "write": lambda fs, d, f: fs.write(f, 0, b"X"),
    "write_append": lambda fs, d, f: fs.write(f, 100, b"X"),
    "truncate": lambda fs, d, f: fs.setattr(f, SetAttr(size=0)),
    "chmod": lambda fs, d, f: fs.setattr(f, SetAttr(mode=0o600)),
    "chown": lambda fs, d, f: fs.setattr(f, SetAttr(uid=5)),
    "utimens": lambda fs, d, f: fs.setattr(f, SetAttr(mtime_ns=1)),
    "chmod_root": lambda fs, d, f: fs.setattr(d, SetAttr(mode=0o700)),
    "setxattr": lambda fs, d, f: fs.setxattr(f, b"user.new", b"v"),
    "setxattr_create": lambda fs, d, f: fs.setxattr(f, b"user.new", b"v", XATTR_CREATE),
    "replace_xattr": lambda fs, d, f: fs.setxattr(f, b"user.k", b"changed"),
    "removexattr": lambda fs, d, f: fs.removexattr(f, b"user.k"),
    "fork_into": lambda fs, d, f: fs.fork(ROOT_INO, d, b"forked"),
    "snapshot_of": lambda fs, d, f: fs.snapshot(d, b"nested"),
}


@pytest.mark.parametrize("op", sorted(WRITES))
def test_erofs_in_snapshot(fs: FileSystem, snap: tuple[int, int], op: str) -> None:
    src, root = snap
    f = fs.lookup(root, b"f").ino
    before = tree(fs, root)
    attrs = fs.getattr(f)
    with raises(errno.EROFS):
        WRITES[op](fs, root, f)
    assert tree(fs, root) == before
    assert fs.getattr(f) == attrs
    assert fs.getxattr(f, b"user.k") == b"v"
    # The source is untouched too.
    assert tree(fs, src) == SPEC


def test_erofs_deep_in_snapshot(fs: FileSystem, snap: tuple[int, int]) -> None:
    _, root = snap
    sub = fs.lookup(root, b"sub").ino
    g = fs.lookup(sub, b"g").ino
    with raises(errno.EROFS):
        mkfile(fs, sub, b"x")
    with raises(errno.EROFS):
        fs.write(g, 0, b"x")
    with raises(errno.EROFS):
        fs.unlink(sub, b"g")
    assert cat(fs, g) == b"deep"


def test_snapshot_unchanged_when_source_changes(fs: FileSystem, snap: tuple[int, int]) -> None:
    src, root = snap
    fs.write(fs.lookup(src, b"f").ino, 0, b"FILE")
    fs.unlink(fs.lookup(src, b"sub").ino, b"g")
    mkfile(fs, src, b"later", b"l")
    fs.removexattr(fs.lookup(src, b"f").ino, b"user.k")
    assert tree(fs, root) == SPEC
    assert fs.getxattr(fs.lookup(root, b"f").ino, b"user.k") == b"v"


def test_rename_and_link_into_snapshot_is_exdev_or_erofs(fs: FileSystem,
                                                        snap: tuple[int, int]) -> None:
    """Between a snapshot and its source both EXDEV (another tree) and EROFS
    (a read-only one) are right; what matters is that nothing changes."""
    src, root = snap
    ops = [
        lambda: fs.rename(src, b"f", root, b"in"),
        lambda: fs.rename(root, b"f", src, b"out"),
        lambda: fs.link(fs.lookup(src, b"f").ino, root, b"in"),
        lambda: fs.link(fs.lookup(root, b"f").ino, src, b"out"),
        lambda: fs.rename(root, b"sub", src, b"sub2"),
    ]
    for op in ops:
        with pytest.raises(FsError) as info:
            op()
        assert info.value.errno in (errno.EXDEV, errno.EROFS), info.value
    assert tree(fs, src) == SPEC
    assert tree(fs, root) == SPEC
    assert fs.getattr(fs.lookup(src, b"f").ino).nlink == 1


# ----------------------------------------------------------------- forks: EXDEV


@pytest.fixture
def forked(fs: FileSystem) -> tuple[int, int]:
    """(source dir /src, fork root /fork) holding SPEC."""
    src = mkdir(fs, ROOT_INO, b"src").ino
    build(fs, src, SPEC)
    return src, fs.fork(src, ROOT_INO, b"fork").ino


def test_exdev_link_between_fork_and_parent(fs: FileSystem, forked: tuple[int, int]) -> None:
    src, fork = forked
    with raises(errno.EXDEV):
        fs.link(fs.lookup(src, b"f").ino, fork, b"l")
    with raises(errno.EXDEV):
        fs.link(fs.lookup(fork, b"f").ino, src, b"l")
    with raises(errno.EXDEV):
        fs.link(fs.lookup(fork, b"f").ino, ROOT_INO, b"l")
    # Within the fork, links work.
    fs.link(fs.lookup(fork, b"f").ino, fs.lookup(fork, b"sub").ino, b"l")
    assert fs.getattr(fs.lookup(fork, b"f").ino).nlink == 2
    assert fs.getattr(fs.lookup(src, b"f").ino).nlink == 1


def test_exdev_rename_between_fork_and_parent(fs: FileSystem, forked: tuple[int, int]) -> None:
    src, fork = forked
    with raises(errno.EXDEV):
        fs.rename(src, b"f", fork, b"x")
    with raises(errno.EXDEV):
        fs.rename(fork, b"f", src, b"x")
    with raises(errno.EXDEV):
        fs.rename(fork, b"sub", ROOT_INO, b"x")
    with raises(errno.EXDEV):
        fs.rename(ROOT_INO, b"src", fork, b"x")
    with raises(errno.EXDEV):
        fs.rename(src, b"f", fork, b"f", RENAME_EXCHANGE)
    # Within the fork, renames work.
    fs.rename(fork, b"f", fs.lookup(fork, b"sub").ino, b"moved")
    assert tree(fs, src) == SPEC
    assert "moved" in tree(fs, fork)["sub"]  # type: ignore[operator]


def test_rename_fork_root_within_parent(fs: FileSystem, forked: tuple[int, int]) -> None:
    _, fork = forked
    d = mkdir(fs, ROOT_INO, b"d")
    fs.rename(ROOT_INO, b"fork", d.ino, b"fork2")
    assert fs.lookup(d.ino, b"fork2").ino == fork
    assert fs.path_ino("d/fork2/..") == d.ino
    assert tree(fs, fork) == SPEC
    assert fs.getattr(d.ino).nlink == 3


def test_fork_errors(fs: FileSystem, forked: tuple[int, int]) -> None:
    src, fork = forked
    f = fs.lookup(src, b"f").ino
    with raises(errno.EEXIST):
        fs.fork(src, ROOT_INO, b"fork")
    with raises(errno.EEXIST):
        fs.fork(src, ROOT_INO, b"src")
    with raises(errno.ENOTDIR):
        fs.fork(f, ROOT_INO, b"x")
    with raises(errno.ENOTDIR):
        fs.fork(src, f, b"x")
    with raises(errno.ENOENT):
        fs.fork(ROOT_INO + 999, ROOT_INO, b"x")
    with raises(errno.ENAMETOOLONG):
        fs.fork(src, ROOT_INO, b"x" * 256)
    with raises(errno.EINVAL):
        fs.fork(src, ROOT_INO, b"a/b")
    with raises(errno.EEXIST):
        fs.fork(src, ROOT_INO, b".agentfs")
    with raises(errno.ENOENT):
        fs.fork(src, ROOT_INO, b"x", epoch=fs.epoch_now() + 100)
    assert names(fs, ROOT_INO) == [b"fork", b"src"]
    assert fs.getattr(ROOT_INO).nlink == 4


def test_snapshot_api_errors(fs: FileSystem, snap: tuple[int, int]) -> None:
    src, root = snap
    f = fs.lookup(src, b"f").ino
    with raises(errno.EEXIST):
        fs.snapshot(src, b"s1")
    with raises(errno.ENOTDIR):
        fs.snapshot(f, b"s")
    with raises(errno.ENOENT):
        fs.snapshot_root(src, b"nope")
    with raises(errno.ENOENT):
        fs.delete_snapshot(src, b"nope")
    with raises(errno.ENAMETOOLONG):
        fs.snapshot(src, b"s" * 256)
    with raises(errno.EINVAL):
        fs.snapshot(src, b"..")
    with raises(errno.ENOENT):
        fs.snapshot(src, b"s2", epoch=fs.epoch_now() + 100)
    with raises(errno.EROFS):
        fs.snapshot(root, b"s2")
    assert [n for n, _ in fs.snapshots(src)] == [b"s1"]


def test_fork_of_snapshot_rejects_epoch(fs: FileSystem, snap: tuple[int, int]) -> None:
    _, root = snap
    with raises(errno.EINVAL):
        fs.fork(root, ROOT_INO, b"x", epoch=1)


def test_detach_errors(fs: FileSystem, forked: tuple[int, int]) -> None:
    src, fork = forked
    with raises(errno.ENOENT):
        fs.detach(ROOT_INO, b"nope")
    with raises(errno.EINVAL):
        fs.detach(ROOT_INO, b"src")  # an ordinary directory
    with raises(errno.EINVAL):
        fs.detach(fork, b"sub")  # inside the fork, not its root
    with raises(errno.EINVAL):
        fs.detach(fork, b"f")
    assert names(fs, ROOT_INO) == [b"fork", b"src"]


def test_fork_root_can_be_emptied_and_removed(fs: FileSystem, forked: tuple[int, int]) -> None:
    """rm -rf of a fork, as a shell would do it, then the kernel forgets."""
    _, fork = forked
    sub = fs.lookup(fork, b"sub").ino
    gone = []
    for n in (b"f", b"link"):
        gone.append(fs.lookup(fork, n).ino)
        fs.unlink(fork, n)
    gone.append(fs.lookup(sub, b"g").ino)
    fs.unlink(sub, b"g")
    gone.append(fs.lookup(sub, b"empty").ino)
    fs.rmdir(sub, b"empty")
    fs.rmdir(fork, b"sub")
    gone.append(sub)
    fs.rmdir(ROOT_INO, b"fork")
    assert names(fs, ROOT_INO) == [b"src"]
    assert fs.getattr(ROOT_INO).nlink == 3
    for ino in [*gone, fork]:
        fs.forget(ino)
    assert tree(fs, fs.lookup(ROOT_INO, b"src").ino) == SPEC


def test_rmdir_empty_fork_root_before_forget(fs: FileSystem) -> None:
    """Between rmdir and the kernel's forget the store must be consistent
    (fsck may run while the daemon serves)."""
    src = mkdir(fs, ROOT_INO, b"src").ino
    fork = fs.fork(src, ROOT_INO, b"fork").ino
    fs.rmdir(ROOT_INO, b"fork")
    assert names(fs, ROOT_INO) == [b"src"]
    assert fs.getattr(fork).nlink == 0
    # (no forget: fsck runs now)


def test_rmdir_nonempty_fork_root(fs: FileSystem, forked: tuple[int, int]) -> None:
    with raises(errno.ENOTEMPTY):
        fs.rmdir(ROOT_INO, b"fork")


def test_unlink_fork_root_is_eisdir(fs: FileSystem, forked: tuple[int, int]) -> None:
    with raises(errno.EISDIR):
        fs.unlink(ROOT_INO, b"fork")


def test_snapshot_keeps_nested_copies_whose_sources_are_deleted(fs: FileSystem) -> None:
    """Found by the mount's fork/snapshot state machine: t0 holds forks of
    itself nested three deep; a nested copy (n3/n2) reads through to the view
    it was copied from (n2). Deleting n2, snapshotting t0, then deleting n3
    must leave the snapshot whole after gc: a dead view that a snapshot still
    sees keeps its own sources pinned."""
    t0 = mkdir(fs, ROOT_INO, b"t0")
    mkfile(fs, t0.ino, b"f", b"root file")
    for n in (b"n1", b"n2", b"n3"):
        fs.fork(t0.ino, t0.ino, n)
        tree(fs, t0.ino)  # reading makes the lazy nested copies, as `find` would
    fs.detach(t0.ino, b"n2")
    collect(fs.store)
    want = tree(fs, t0.ino)
    assert "n3/n2/n1/f" in flatten(want)
    snap = fs.snapshot(t0.ino, b"s")
    fs.detach(t0.ino, b"n3")
    collect(fs.store)
    collect(fs.store, everything=True)
    assert tree(fs, snap.ino) == want
    fs.delete_snapshot(t0.ino, b"s")
    collect(fs.store)
    assert dead_views(fs) == []  # once the snapshot is gone, so is everything it kept


def _nested_forks_and_snapshot(fs: FileSystem, read_first: bool) -> tuple[int, int]:
    """/t0 with fork n2 of itself, and fork n2/n3 of t0 (holding its own copy
    n2/n3/n2 of n2), snapshot s4 of t0: (t0, the snapshot's root). With
    `read_first`, the live copies are made before the snapshot (as the mount's
    checks do), else after it."""
    t0 = mkdir(fs, ROOT_INO, b"t0").ino
    fs.fork(t0, ROOT_INO, b"t1")
    fs.fork(t0, t0, b"n2")
    fs.fork(t0, fs.lookup(t0, b"n2").ino, b"n3")
    if read_first:
        tree(fs, t0)
    snap = fs.snapshot(t0, b"s4").ino
    assert tree(fs, snap) == {"n2": {"n3": {"n2": {}}}}
    if not read_first:
        tree(fs, t0)
    return t0, snap


def _rm_rf_n2(fs: FileSystem, t0: int) -> None:
    """rm -rf t0/n2, as the kernel does it: rmdir deepest first, then forget."""
    chain = [(t0, b"n2")]  # (parent, name) from the top down
    for name in (b"n3", b"n2"):
        chain.append((fs.lookup(*chain[-1]).ino, name))
    removed = [fs.lookup(*where).ino for where in reversed(chain)]
    for where in reversed(chain):
        fs.rmdir(*where)
    for ino in removed:
        fs.forget(ino)


@pytest.mark.parametrize("read_first", [False, True], ids=["copied-after", "copied-before"])
def test_snapshot_survives_removing_a_nested_fork_and_gc(fs: FileSystem,
                                                         read_first: bool) -> None:
    """Found by the mount's fork/snapshot state machine. Copied after the
    snapshot, the live n2/n3/n2 is a nested copy the snapshot does not pin:
    gc drops it once n2 is removed, and the `m` key of its (dead, still
    pinned) container n2/n3 must go with it, or reading the snapshot through
    that container fails with ESTALE."""
    t0, snap = _nested_forks_and_snapshot(fs, read_first)
    _rm_rf_n2(fs, t0)
    collect(fs.store)
    assert tree(fs, snap) == {"n2": {"n3": {"n2": {}}}}
    assert check_store(fs.store.engine).problems == []


def test_dotdot_in_a_snapshots_nested_fork_stays_in_the_snapshot(fs: FileSystem) -> None:
    """Found by the mount's fork/snapshot state machine: `..` of a nested fork
    inside a snapshot led into the live tree (the read-only copy's own root
    attributes, pointing at its parent in the snapshot, were never read), so
    once the live fork was removed, readdir of t0/.snapshots/s4/n2/n3 (which
    lists `..`) failed with ESTALE."""
    t0, snap = _nested_forks_and_snapshot(fs, read_first=True)
    path = "t0/.snapshots/s4"
    for sub in ("n2", "n2/n3", "n2/n3/n2"):
        up = f"{path}/{sub}".rsplit("/", 1)[0]
        assert fs.path_ino(f"{path}/{sub}/..") == fs.path_ino(up), sub
    _rm_rf_n2(fs, t0)
    collect(fs.store)
    for sub in ("n2", "n2/n3", "n2/n3/n2"):
        fs.getattr(fs.parent_of(fs.getattr(fs.path_ino(f"{path}/{sub}"))))
    assert fs.path_ino(f"{path}/n2/..") == snap


def flatten(t: dict[str, object], prefix: str = "") -> set[str]:
    out = set()
    for k, v in t.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= flatten(v, prefix + k + "/")
    return out


def test_a_snapshot_pins_only_the_forks_inside_its_directory(fs: FileSystem) -> None:
    """Snapshotting /a must not keep alive a fork mounted at /b (outside /a),
    while a fork mounted inside /a stays readable through the snapshot."""
    a = mkdir(fs, ROOT_INO, b"a")
    mkfile(fs, a.ino, b"x", b"in a")
    src = mkdir(fs, ROOT_INO, b"src")
    mkfile(fs, src.ino, b"y", b"in src")
    outside = fs.fork(src.ino, ROOT_INO, b"b")
    inside = fs.fork(src.ino, a.ino, b"inner")
    snap = fs.snapshot(a.ino, b"s")
    fs.detach(ROOT_INO, b"b")
    fs.detach(a.ino, b"inner")
    collect(fs.store)
    with fs.store.read() as tx:
        gone = not tx.view_exists(split_ino(outside.ino)[0])
        kept = tx.view_exists(split_ino(inside.ino)[0])
    assert gone, "a fork outside the snapshot's directory was kept alive"
    assert kept, "a fork inside the snapshot's directory was dropped"
    assert tree(fs, snap.ino) == {"x": b"in a", "inner": {"y": b"in src"}}


def test_fsck_is_clean_between_any_two_gc_steps(fs: FileSystem) -> None:
    """Found by the agent crash test (SIGKILL mid-gc): a fork of a fork, both
    detached, is collected origin first (nothing pins it once the dead fork of
    it let go), so between two gc transactions the dead fork reads through to
    a view that is gone. That fork is garbage awaiting its turn in the queue,
    not damage: fsck must be clean after every step, and the end is empty."""
    a = mkdir(fs, ROOT_INO, b"a")
    mkfile(fs, a.ino, b"f", b"data")
    b = fs.fork(a.ino, ROOT_INO, b"b")
    fs.fork(b.ino, ROOT_INO, b"c")
    fs.detach(ROOT_INO, b"c")
    fs.detach(ROOT_INO, b"b")
    steps = 0
    for _ in collect_steps(fs.store):
        steps += 1
        report = check_store(fs.store.engine)
        assert not report.problems, f"after gc step {steps}: {report.problems}"
    assert steps >= 2
    assert dead_views(fs) == []
