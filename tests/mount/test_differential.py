"""Differential tests: random file operations on the mount and on tmpfs side by side.

`test_differential_posix` runs a hypothesis state machine that applies the same
random operation to a fresh directory inside the mount and to a fresh directory
on tmpfs, and compares every outcome (return value or errno); at teardown it
compares the two final trees (names, types, modes, sizes, contents, nlink,
symlink targets and which paths are hard links of each other).  Run it with
AGENTFS_TEST_TARGET=/dev/shm/... to check the harness itself (tmpfs vs tmpfs).

`test_fork_snapshot_isolation` (agentfs only) interleaves forks and snapshots
with writes and checks every live tree and every snapshot against a model.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from hypothesis.strategies import DataObject

EXAMPLES = int(os.environ.get("AGENTFS_DIFF_EXAMPLES", "40"))
STEPS = int(os.environ.get("AGENTFS_DIFF_STEPS", "40"))

SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------ strategies

NAMES = ["a", "b", "c", "d"]
# Small alphabet, depth <= 3: 84 possible paths, so operations collide a lot.
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
# Relative targets without "..": whatever they resolve to stays inside the root.
link_targets = st.one_of(paths, st.sampled_from([".", "zz", "a/zz"]))
modes = st.sampled_from([0o644, 0o600, 0o755, 0o700, 0o444, 0o640, 0o4755, 0o1777, 0o000])
offsets = st.one_of(st.integers(0, 200), st.integers(0, 400_000))
lengths = st.one_of(st.integers(0, 200), st.integers(0, 400_000))


class Blob:
    """Deterministic pseudo-random content with a short repr for failure reports."""

    def __init__(self, seed: int, size: int) -> None:
        self.seed, self.size = seed, size
        self.data = random.Random(seed).randbytes(size)

    def __repr__(self) -> str:
        return f"Blob(seed={self.seed}, size={self.size})"


blobs = st.builds(
    Blob,
    st.integers(0, 2**16),
    st.one_of(st.integers(0, 64), st.integers(0, 64), st.integers(1, 300_000)),
)


# -------------------------------------------------------------------- helpers

def outcome(fn, *args):
    """('ok', value) or ('err', errno name) of fn(*args)."""
    try:
        return ("ok", fn(*args))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, e.errno))


def norm_stat(st_: os.stat_result) -> tuple:
    kind = stat.S_IFMT(st_.st_mode)
    size = None if stat.S_ISDIR(st_.st_mode) else st_.st_size  # dir sizes are fs-specific
    return (kind, oct(stat.S_IMODE(st_.st_mode)), size, st_.st_nlink)


def snapshot_tree(root: str) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """Everything comparable about a tree, plus the sets of hard-linked paths."""
    entries: dict[str, tuple] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st_ = os.lstat(p)
            if stat.S_ISLNK(st_.st_mode):
                extra: object = os.readlink(p)
            elif stat.S_ISREG(st_.st_mode):
                with open(p, "rb") as f:
                    extra = f.read()
            else:
                extra = None
            entries[rel] = (*norm_stat(st_), extra)
            if not stat.S_ISDIR(st_.st_mode):
                inodes.setdefault(st_.st_ino, set()).add(rel)
    links = {frozenset(v) for v in inodes.values() if len(v) > 1}
    return entries, links


def write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    total = 0
    while total < len(data):
        n = os.write(fd, view[total:])
        assert n > 0
        total += n
    return total


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------ the POSIX machine

class FsDiff(RuleBasedStateMachine):
    """Same operations on root A (the mount) and root B (tmpfs)."""

    def __init__(self, base_a: Path) -> None:
        super().__init__()
        self.a = tempfile.mkdtemp(dir=base_a, prefix="diff-")
        self.b = tempfile.mkdtemp(dir="/dev/shm", prefix="agentfs-diff-")
        self.failed = False

    def pick(self, data, existing: int = 14) -> str:
        """A path: `existing` times in 20 one that exists (in the tmpfs tree),
        otherwise any path from the small alphabet, or once in 20 times "."."""
        if not isinstance(data, DataObject):
            return data
        known, dirs = [], ["."]
        for d, dirnames, filenames in os.walk(self.b):
            rel = os.path.relpath(d, self.b)
            dirs.extend(os.path.normpath(os.path.join(rel, n)) for n in dirnames)
            known.extend(os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames)
        r = data.draw(st.integers(0, 19))
        if r == 0:
            return "."
        if r <= existing and known:
            return data.draw(st.sampled_from(sorted(known)))
        if r == 19:
            return data.draw(paths)
        # A name (likely new) in a directory that exists.
        parent = data.draw(st.sampled_from(sorted(dirs)))
        return os.path.normpath(os.path.join(parent, data.draw(st.sampled_from(NAMES))))

    def both(self, op: str, fn, *rel_and_args, normalize=None):
        """Run fn(root, ...) on both roots and compare the outcomes.

        Path arguments may be hypothesis `st.data()` objects: see `pick`.
        """
        rel_and_args = tuple(self.pick(x) for x in rel_and_args)
        ra = outcome(fn, self.a, *rel_and_args)
        rb = outcome(fn, self.b, *rel_and_args)
        if normalize:
            ra, rb = normalize(ra), normalize(rb)
        if ra != rb:
            self.failed = True
            raise AssertionError(
                f"{op}{rel_and_args!r}: mount -> {short(ra)}  tmpfs -> {short(rb)}")
        return ra

    @initialize(blobs=st.lists(blobs, min_size=4, max_size=4))
    def populate(self, blobs):
        """Start from a small tree so that most operations hit existing names."""
        def op(root):
            for d in ("a", "a/b", "c", "c/a"):
                os.mkdir(os.path.join(root, d))
            for f, blob in zip(("b", "a/a", "a/b/c", "c/a/b"), blobs, strict=True):
                with open(os.path.join(root, f), "wb") as fh:
                    fh.write(blob.data)
            os.symlink("a/b", os.path.join(root, "c/b"))
            os.link(os.path.join(root, "b"), os.path.join(root, "a/c"))
        self.both("populate", op)

    # Operations.  Each takes the root first and returns something comparable.

    @rule(p=st.data(), blob=blobs, excl=st.booleans())
    def create(self, p, blob, excl):
        def op(root, p):
            flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if excl else os.O_TRUNC)
            fd = os.open(os.path.join(root, p), flags, 0o644)
            try:
                return write_all(fd, blob.data), os.fstat(fd).st_size
            finally:
                os.close(fd)
        p = self.pick(p, existing=7)
        self.both("create", op, p)

    @rule(p=st.data(), off=offsets, blob=blobs)
    def write_at(self, p, off, blob):
        def op(root, p):
            fd = os.open(os.path.join(root, p), os.O_WRONLY)
            try:
                n = os.pwrite(fd, blob.data, off)
                return n, os.fstat(fd).st_size
            finally:
                os.close(fd)
        self.both("write_at", op, p)

    @rule(p=st.data(), blob=blobs)
    def append(self, p, blob):
        def op(root, p):
            fd = os.open(os.path.join(root, p), os.O_WRONLY | os.O_APPEND)
            try:
                os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND must ignore the offset
                n = write_all(fd, blob.data)
                return n, os.lseek(fd, 0, os.SEEK_CUR), os.fstat(fd).st_size
            finally:
                os.close(fd)
        self.both("append", op, p)

    @rule(p=st.data(), length=lengths)
    def truncate(self, p, length):
        self.both("truncate", lambda root, p: os.truncate(os.path.join(root, p), length), p)

    @rule(p=st.data(), length=lengths, blob=blobs)
    def ftruncate_then_write(self, p, length, blob):
        def op(root, p):
            fd = os.open(os.path.join(root, p), os.O_RDWR)
            try:
                os.ftruncate(fd, length)
                os.pwrite(fd, blob.data, max(0, length - len(blob.data) // 2))
                os.fsync(fd)
                return os.pread(fd, length + len(blob.data) + 10, 0)
            finally:
                os.close(fd)
        self.both("ftruncate_then_write", op, p)

    @rule(p=st.data())
    def read(self, p):
        def op(root, p):
            fd = os.open(os.path.join(root, p), os.O_RDONLY)
            try:
                return read_all(fd)
            finally:
                os.close(fd)
        self.both("read", op, p)

    @rule(p=st.data(), off=offsets, size=st.integers(0, 200_000))
    def pread(self, p, off, size):
        def op(root, p):
            fd = os.open(os.path.join(root, p), os.O_RDONLY)
            try:
                return os.pread(fd, size, off)
            finally:
                os.close(fd)
        self.both("pread", op, p)

    @rule(p=st.data(), blob=blobs)
    def unlink_while_open(self, p, blob):
        """Write and read back through an fd whose name is already gone."""
        def op(root, p):
            path = os.path.join(root, p)
            fd = os.open(path, os.O_RDWR)
            try:
                os.unlink(path)
                os.pwrite(fd, blob.data, 3)
                return os.pread(fd, len(blob.data) + 10, 0), os.fstat(fd).st_nlink
            finally:
                os.close(fd)
        self.both("unlink_while_open", op, p)

    @rule(p=st.data(), mode=st.sampled_from([0o755, 0o700, 0o750]))
    def mkdir(self, p, mode):
        p = self.pick(p, existing=7)
        self.both("mkdir", lambda root, p: os.mkdir(os.path.join(root, p), mode), p)

    @rule(p=st.data())
    def rmdir(self, p):
        self.both("rmdir", lambda root, p: os.rmdir(os.path.join(root, p)), p,
                  normalize=not_empty)

    @rule(p=st.data())
    def unlink(self, p):
        self.both("unlink", lambda root, p: os.unlink(os.path.join(root, p)), p)

    @rule(p=st.data(), q=st.data())
    def rename(self, p, q):
        p, q = self.pick(p), self.pick(q, existing=7)
        self.both("rename", lambda root, p, q: os.rename(os.path.join(root, p),
                                                        os.path.join(root, q)),
                  p, q, normalize=not_empty)

    @rule(p=st.data(), q=st.data())
    def link(self, p, q):
        p, q = self.pick(p), self.pick(q, existing=5)
        def op(root, p, q):
            os.link(os.path.join(root, p), os.path.join(root, q), follow_symlinks=False)
            return os.lstat(os.path.join(root, q)).st_nlink
        self.both("link", op, p, q)

    @rule(dest=link_targets, p=st.data())
    def symlink(self, dest, p):
        def op(root, p):
            os.symlink(dest, os.path.join(root, p))
            return os.readlink(os.path.join(root, p))
        p = self.pick(p, existing=7)
        self.both("symlink", op, p)

    @rule(p=st.data())
    def readlink(self, p):
        self.both("readlink", lambda root, p: os.readlink(os.path.join(root, p)), p)

    @rule(p=st.data(), mode=modes)
    def chmod(self, p, mode):
        def op(root, p):
            os.chmod(os.path.join(root, p), mode)
            return oct(stat.S_IMODE(os.stat(os.path.join(root, p)).st_mode))
        self.both("chmod", op, p)

    @rule(p=st.data(), atime=st.integers(0, 2**33 * 10**9), mtime=st.integers(0, 2**33 * 10**9))
    def utime(self, p, atime, mtime):
        def op(root, p):
            os.utime(os.path.join(root, p), ns=(atime, mtime))
            st_ = os.stat(os.path.join(root, p))
            return st_.st_atime_ns, st_.st_mtime_ns
        self.both("utime", op, p)

    @rule(p=st.data())
    def listdir(self, p):
        self.both("listdir", lambda root, p: sorted(os.listdir(os.path.join(root, p))), p)

    @rule(p=st.data(), follow=st.booleans())
    def stat(self, p, follow):
        self.both("stat", lambda root, p: norm_stat(
            os.stat(os.path.join(root, p), follow_symlinks=follow)), p)

    @rule(p=st.data())
    def fsync(self, p):
        def op(root, p):
            fd = os.open(os.path.join(root, p), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.both("fsync", op, p)

    def teardown(self):
        try:
            if not self.failed and sys.exc_info()[0] is None:  # no step failed
                ta, tb = snapshot_tree(self.a), snapshot_tree(self.b)
                if ta != tb:
                    raise AssertionError("final trees differ:\n" + tree_diff(ta, tb))
        finally:
            for root in (self.a, self.b):
                # chmod 000 dirs do not stop root, but make rmtree work for others.
                for dirpath, _, _ in os.walk(root):
                    try:
                        os.chmod(dirpath, 0o700)
                    except OSError:
                        pass
                shutil.rmtree(root)


def not_empty(res):
    """POSIX allows either ENOTEMPTY or EEXIST for a non-empty directory."""
    return ("err", "ENOTEMPTY") if res == ("err", "EEXIST") else res


def short(res) -> str:
    text = repr(res)
    return text if len(text) < 300 else text[:300] + f"... ({len(text)} chars)"


def tree_diff(ta, tb) -> str:
    (ea, la), (eb, lb) = ta, tb
    lines = []
    for k in sorted(set(ea) | set(eb)):
        if ea.get(k) != eb.get(k):
            lines.append(f"  {k}: mount={short(ea.get(k))} tmpfs={short(eb.get(k))}")
    if la != lb:
        lines.append(f"  hard links: mount={sorted(map(sorted, la))} tmpfs={sorted(map(sorted, lb))}")
    return "\n".join(lines)


def test_differential_posix(mount) -> None:
    run_state_machine_as_test(lambda: FsDiff(mount.path), settings=SETTINGS)


# ------------------------------------------------- fork/snapshot model (agentfs)
#
# Every live directory tree (the source t0 and every fork) has a model: its own
# files and directories plus the forks nested in it.  Snapshots freeze the
# flattened model of their tree.  The agentfs operations go through the small
# functions below, so the model logic itself can be exercised without agentfs
# by patching them (e.g. fork = shutil.copytree).

def do_fork(mount, src: Path, dst: Path, via_ctl: bool) -> None:
    if via_ctl:
        # Exactly what `echo "fork SRC DST" > MOUNT/.agentfs/ctl` does.
        line = f"fork {src.relative_to(mount.path)} {dst.relative_to(mount.path)}\n"
        fd = os.open(mount.path / ".agentfs" / "ctl", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            write_all(fd, line.encode())
        finally:
            os.close(fd)
    else:
        mount.cli("fork", str(src), str(dst))


def fork_must_fail(mount, src: Path, dst: Path) -> None:
    res = mount.cli("fork", str(src), str(dst), check=False)
    assert res.returncode != 0, f"fork onto existing {dst} succeeded: {res.stdout}"


def snapshot_path(tree: Path, name: str) -> Path:
    return tree / ".snapshots" / name


def do_snapshot(mount, tree: Path, name: str, via_cli: bool) -> None:
    if via_cli:
        mount.cli("snapshot", str(tree), name)
    else:
        os.mkdir(snapshot_path(tree, name))


def delete_snapshot(snap: Path) -> None:
    os.rmdir(snap)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path)


def check_snapshot_gone(snap: Path) -> None:
    """The snapshots of a removed directory go with it."""
    assert not os.path.lexists(snap), f"{snap} outlived its directory"


CHECK_EROFS = True
FILES = ["f", "g", "d/f", "d/g", "e/d/f"]
# Every tree and snapshot is read back often: keep files small.
small_blobs = st.builds(Blob, st.integers(0, 2**16),
                        st.one_of(st.integers(0, 64), st.integers(0, 20_000)))


def read_tree(root: Path) -> tuple[dict[str, bytes], set[str]]:
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            dirs.add(os.path.relpath(os.path.join(dirpath, name), root))
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                files[os.path.relpath(p, root)] = f.read()
    return files, dirs


class Tree:
    """Model of a writable tree: own files/dirs, plus forks nested at its top level."""

    def __init__(self, path: Path, files: dict[str, bytes], dirs: set[str]) -> None:
        self.path, self.files, self.dirs = path, dict(files), set(dirs)
        self.children: dict[str, Tree] = {}
        self.parent: Tree | None = None

    def expected(self) -> tuple[dict[str, bytes], set[str]]:
        files, dirs = dict(self.files), set(self.dirs)
        for name, child in self.children.items():
            cf, cd = child.expected()
            dirs.add(name)
            dirs.update(f"{name}/{d}" for d in cd)
            files.update({f"{name}/{p}": c for p, c in cf.items()})
        return files, dirs

    def subtree(self) -> list[Tree]:
        return [self, *(t for c in self.children.values() for t in c.subtree())]

    def __repr__(self) -> str:
        return f"Tree({self.path.name})"


class Snap:
    def __init__(self, tree: Tree, name: str) -> None:
        self.tree, self.name = tree, name
        self.files, self.dirs = tree.expected()

    @property
    def path(self) -> Path:
        return snapshot_path(self.tree.path, self.name)


class ForkSnapshotModel(RuleBasedStateMachine):
    MAX_TREES = 7
    MAX_SNAPS = 8

    def __init__(self, mount) -> None:
        super().__init__()
        self.mount = mount
        self.base = Path(tempfile.mkdtemp(dir=mount.path, prefix="fork-"))
        (self.base / "t0").mkdir()
        self.trees = [Tree(self.base / "t0", {}, set())]
        self.snaps: list[Snap] = []
        self.n = 0
        self.steps = 0
        self.tried_bad_fork = False

    def tree(self, i: int) -> Tree:
        return self.trees[i % len(self.trees)]

    # ---------------------------------------------------- writes in live trees

    @rule(i=st.integers(0, 100), p=st.sampled_from(FILES), blob=small_blobs,
          how=st.sampled_from(["trunc", "append", "pwrite"]), off=st.integers(0, 5000))
    def write(self, i, p, blob, how, off):
        t = self.tree(i)
        path = t.path / p
        path.parent.mkdir(parents=True, exist_ok=True)
        parts = p.split("/")[:-1]
        t.dirs.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
        old = t.files.get(p, b"")
        data = blob.data
        if how == "trunc":
            path.write_bytes(data)
            new = data
        elif how == "append":
            with open(path, "ab") as f:
                f.write(data)
            new = old + data
        else:
            with open(path, "r+b" if p in t.files else "wb") as f:
                f.seek(off)
                f.write(data)
            base = old.ljust(off, b"\0") if data else old  # writing nothing extends nothing
            new = base[:off] + data + base[off + len(data):]
        t.files[p] = new

    @rule(i=st.integers(0, 100), p=st.sampled_from(FILES))
    def unlink(self, i, p):
        t = self.tree(i)
        if p in t.files:
            os.unlink(t.path / p)
            del t.files[p]
        else:
            with pytest.raises(FileNotFoundError):
                os.unlink(t.path / p)

    @rule(i=st.integers(0, 100), p=st.sampled_from(FILES), q=st.sampled_from(FILES))
    def rename(self, i, p, q):
        t = self.tree(i)
        if p not in t.files or p == q:  # (no name in FILES is ever a directory)
            return
        (t.path / q).parent.mkdir(parents=True, exist_ok=True)
        parts = q.split("/")[:-1]
        t.dirs.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
        os.rename(t.path / p, t.path / q)
        t.files[q] = t.files.pop(p)

    # ------------------------------------------------------------------ forks

    def _copy(self, src: Tree, dst: Path) -> Tree:
        """Model of a fork of `src` at `dst`: nested forks are copied too."""
        new = Tree(dst, src.files, src.dirs)
        self.trees.append(new)
        for name, child in src.children.items():
            c = self._copy(child, dst / name)
            c.parent = new
            new.children[name] = c
        return new

    def _destination(self, j: int | None) -> tuple[Path, Tree | None]:
        self.n += 1
        if j is None:
            return self.base / f"t{self.n}", None
        parent = self.tree(j)
        return parent.path / f"n{self.n}", parent

    def _attach(self, new: Tree, parent: Tree | None) -> None:
        if parent is not None:
            new.parent = parent
            parent.children[new.path.name] = new

    @precondition(lambda self: len(self.trees) < self.MAX_TREES)
    @rule(i=st.integers(0, 100), j=st.none() | st.integers(0, 100), via_ctl=st.booleans())
    def fork(self, i, j, via_ctl):
        """Fork tree i to the top level, or nested inside tree j (maybe i itself)."""
        src = self.tree(i)
        dst, parent = self._destination(j)
        do_fork(self.mount, src.path, dst, via_ctl)
        new = self._copy(src, dst)
        self._attach(new, parent)
        self.check_tree(src)
        self.check_tree(new)

    @precondition(lambda self: self.snaps and len(self.trees) < self.MAX_TREES)
    @rule(k=st.integers(0, 100), j=st.none() | st.integers(0, 100), via_ctl=st.booleans())
    def fork_of_snapshot(self, k, j, via_ctl):
        """A fork of a snapshot: the frozen state, writable again."""
        snap = self.snaps[k % len(self.snaps)]
        dst, parent = self._destination(j)
        do_fork(self.mount, snap.path, dst, via_ctl)
        new = Tree(dst, snap.files, snap.dirs)  # nested forks come flattened
        self.trees.append(new)
        self._attach(new, parent)
        self.check_tree(new)
        self.check_snap(snap)

    @precondition(lambda self: not self.tried_bad_fork)  # spawns a CLI: once is enough
    @rule(i=st.integers(0, 100), j=st.integers(0, 100))
    def fork_onto_existing_fails(self, i, j):
        self.tried_bad_fork = True
        fork_must_fail(self.mount, self.tree(i).path, self.tree(j).path)

    @precondition(lambda self: len(self.trees) > 1)
    @rule(i=st.integers(1, 100))
    def remove_fork(self, i):
        """rm -rf a fork (with everything nested in it and all their snapshots)."""
        t = self.trees[1 + i % (len(self.trees) - 1)]
        gone = t.subtree()
        remove_tree(t.path)
        assert not os.path.lexists(t.path)
        if t.parent is not None:
            del t.parent.children[t.path.name]
        self.trees = [x for x in self.trees if x not in gone]
        for s in [s for s in self.snaps if s.tree in gone]:
            check_snapshot_gone(s.path)
            self.snaps.remove(s)

    @precondition(lambda self: len(self.trees) > 1)
    @rule(i=st.integers(1, 100))
    def rename_fork(self, i):
        """Rename a fork root within its parent: its snapshots move along."""
        t = self.trees[1 + i % (len(self.trees) - 1)]
        self.n += 1
        old = t.path
        new = old.parent / f"{old.name[0]}{self.n}"
        os.rename(old, new)
        if t.parent is not None:
            t.parent.children[new.name] = t.parent.children.pop(old.name)
        for x in t.subtree():
            x.path = new / x.path.relative_to(old)

    # -------------------------------------------------------------- snapshots

    @precondition(lambda self: len(self.snaps) < self.MAX_SNAPS)
    @rule(i=st.integers(0, 100), via_cli=st.booleans())
    def snapshot(self, i, via_cli):
        t = self.tree(i)
        self.n += 1
        snap = Snap(t, f"s{self.n}")
        do_snapshot(self.mount, t.path, snap.name, via_cli)
        self.snaps.append(snap)
        self.check_snap(snap)

    @precondition(lambda self: self.snaps)
    @rule(k=st.integers(0, 100))
    def remove_snapshot(self, k):
        snap = self.snaps.pop(k % len(self.snaps))
        delete_snapshot(snap.path)
        assert not os.path.lexists(snap.path)

    @precondition(lambda self: self.snaps and CHECK_EROFS)
    @rule(k=st.integers(0, 100), p=st.sampled_from(FILES),
          what=st.sampled_from(["open_w", "create", "trunc", "unlink", "rename", "chmod",
                                "mkdir", "rmdir", "symlink", "link", "utime", "append"]))
    def write_in_snapshot_is_erofs(self, k, p, what):
        snap = self.snaps[k % len(self.snaps)]
        root = snap.path
        existing = sorted(snap.files)
        target = root / (p if p in snap.files else existing[0]) if existing else None
        subdirs = sorted(snap.dirs)
        new = root / "brand-new"

        def attempt():
            if what == "create" or target is None:
                return os.open(new, os.O_WRONLY | os.O_CREAT, 0o644)
            if what == "open_w":
                return os.open(target, os.O_WRONLY)
            if what == "append":
                return os.open(target, os.O_WRONLY | os.O_APPEND)
            if what == "trunc":
                return os.truncate(target, 0)
            if what == "unlink":
                return os.unlink(target)
            if what == "rename":
                return os.rename(target, new)
            if what == "chmod":
                return os.chmod(target, 0o600)
            if what == "mkdir":
                return os.mkdir(new)
            if what == "rmdir":
                return os.rmdir(root / subdirs[0]) if subdirs else os.mkdir(new)
            if what == "symlink":
                return os.symlink("f", new)
            if what == "link":
                return os.link(target, new)
            if what == "utime":
                return os.utime(target, (1, 1))
            raise AssertionError(what)

        try:
            res = attempt()
        except OSError as e:
            assert e.errno == errno.EROFS, f"{what} in snapshot {root}: {e!r}, expected EROFS"
        else:
            if isinstance(res, int):
                os.close(res)
            raise AssertionError(f"{what} in snapshot {root} ({target}) succeeded")

    # -------------------------------------------------------------- checking

    def check_tree(self, t: Tree) -> None:
        assert ".snapshots" not in os.listdir(t.path), f"{t.path}: .snapshots is listed"
        got, want = read_tree(t.path), t.expected()
        assert got == want, f"{t.path} differs from its model:\n{model_diff(got, want)}"

    def check_snap(self, s: Snap) -> None:
        got = read_tree(s.path)
        assert got == (s.files, s.dirs), (
            f"snapshot {s.path} differs from the state it froze:\n"
            f"{model_diff(got, (s.files, s.dirs))}")

    def check_all(self) -> None:
        for t in self.trees:
            self.check_tree(t)
        for s in self.snaps:
            self.check_snap(s)

    @rule(i=st.integers(0, 100))
    def check_one(self, i):
        everything = [*self.trees, *self.snaps]
        x = everything[i % len(everything)]
        if isinstance(x, Tree):
            self.check_tree(x)
        else:
            self.check_snap(x)

    @invariant()
    def check_everything_now_and_then(self):
        # Reading every tree after every step would be slow through FUSE.
        self.steps += 1
        if self.steps % 6 == 0:
            self.check_all()

    def teardown(self):
        try:
            if sys.exc_info()[0] is None:  # the run did not fail already
                self.check_all()
        finally:
            for s in self.snaps:
                try:
                    delete_snapshot(s.path)
                except OSError:
                    pass
            shutil.rmtree(self.base, ignore_errors=True)


def model_diff(got, want) -> str:
    (gf, gd), (wf, wd) = got, want
    lines = [f"  dirs: extra {sorted(gd - wd)} missing {sorted(wd - gd)}"] if gd != wd else []
    for p in sorted(set(gf) | set(wf)):
        if gf.get(p) != wf.get(p):
            g, w = gf.get(p), wf.get(p)
            lines.append(f"  {p}: found {short(g if g is None else len(g))} bytes, "
                         f"model {short(w if w is None else len(w))} bytes"
                         + (" (same size, other content)" if g and w and len(g) == len(w) else ""))
    return "\n".join(lines)


@pytest.mark.agentfs_only
def test_fork_snapshot_isolation(mount) -> None:
    run_state_machine_as_test(
        lambda: ForkSnapshotModel(mount),
        settings=settings(SETTINGS, max_examples=max(10, EXAMPLES // 2)),
    )


@pytest.mark.agentfs_only
def test_snapshot_of_nested_forks_survives_their_removal(mount) -> None:
    """Found by test_fork_snapshot_isolation: t0 holds fork n2 of itself and
    fork n2/n3 of itself (so n2/n3/n2 too); snapshot s4 of t0, then rm -rf
    t0/n2. Reading s4 must still show n2/n3/n2: `..` of s4/n2/n3 led into the
    removed live n2 (readdir failed with ESTALE, and os.walk skipped it)."""
    m = ForkSnapshotModel(mount)
    m.fork(i=0, j=None, via_ctl=False)  # t1, top level
    m.fork(i=0, j=0, via_ctl=False)  # t0/n2
    m.fork(i=0, j=8, via_ctl=False)  # t0/n2/n3 (tree 8 % 3 == 2 is n2)
    m.snapshot(i=0, via_cli=False)  # t0/.snapshots/s4
    m.check_all()
    m.remove_fork(i=1)  # rm -rf t0/n2
    for s in m.snaps:
        m.check_snap(s)
    m.check_all()
    m.teardown()
