"""Random operation sequences against a shadow model of the expected tree.

The shadow knows POSIX namespace rules, file contents, hard links, forks
(copies that are isolated afterwards, EXDEV between views) and snapshots
(frozen trees). After every step the model must agree on the errno; at
checkpoints the whole tree, every fork and every snapshot must match, before
and after garbage collection. fsck runs at the end (conftest).
"""

from __future__ import annotations

import errno
import itertools
import random
from dataclasses import dataclass, field

import pytest
from fsutil import tree

from agentfs.errors import FsError
from agentfs.posix.fs import BLOCK_SIZE, ROOT_INO, FileSystem, SetAttr
from agentfs.storage.gc import collect

NAMES = [b"a", b"b", b"c", b"d", b"e"]
_views = itertools.count(100)


@dataclass(eq=False)
class F:
    ino: int
    data: bytearray = field(default_factory=bytearray)
    nlink: int = 1


@dataclass(eq=False)
class D:
    ino: int
    view: int
    entries: dict[bytes, F | D] = field(default_factory=dict)
    parent: D | None = None


def expected(d: D) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, x in d.entries.items():
        out[name.decode()] = expected(x) if isinstance(x, D) else bytes(x.data)
    return out


def walk(d: D) -> list[D]:
    out = [d]
    for x in d.entries.values():
        if isinstance(x, D):
            out += walk(x)
    return out


def files(d: D) -> list[tuple[D, bytes, F]]:
    return [(p, n, x) for p in walk(d) for n, x in p.entries.items() if isinstance(x, F)]


def is_ancestor(a: D, d: D | None) -> bool:
    while d is not None:
        if d is a:
            return True
        d = d.parent
    return False


class Runner:
    """`nested`: forks of any directory into any directory (forks inside forks,
    forks of trees holding forks, detach); otherwise only forks of fork-free
    directories of the root tree, made at the root."""

    def __init__(self, fs: FileSystem, seed: int, nested: bool = True) -> None:
        self.fs = fs
        self.nested = nested
        self.rng = random.Random(seed)
        self.root = D(ROOT_INO, 1)
        self.snaps: list[tuple[int, dict[str, object]]] = []
        self.forks: list[D] = []
        self.n = 0

    # ------------------------------------------------------------ helpers

    def expect(self, code: int | None, fn, *args):  # type: ignore[no-untyped-def]
        try:
            r = fn(*args)
        except FsError as e:
            assert code is not None, f"step {self.n}: {fn.__name__}{args} failed: {e}"
            assert e.errno == code, (f"step {self.n}: {fn.__name__}{args}: expected "
                                     f"{errno.errorcode[code]}, got {e}")
            return None
        assert code is None, (f"step {self.n}: {fn.__name__}{args} succeeded, expected "
                              f"{errno.errorcode[code]}")
        return r

    def any_dir(self) -> D:
        return self.rng.choice(walk(self.root))

    def writable_dirs(self) -> list[D]:
        return walk(self.root)

    # ------------------------------------------------------------ operations

    def op_create(self) -> None:
        d, name = self.any_dir(), self.rng.choice(NAMES)
        if name in d.entries:
            self.expect(errno.EEXIST, self.fs.create, d.ino, name, 0o100644, 0, 0)
            return
        a = self.expect(None, self.fs.create, d.ino, name, 0o100644, 0, 0)
        d.entries[name] = F(a.ino)

    def op_mkdir(self) -> None:
        d, name = self.any_dir(), self.rng.choice(NAMES)
        if name in d.entries:
            self.expect(errno.EEXIST, self.fs.create, d.ino, name, 0o040755, 0, 0)
            return
        a = self.expect(None, self.fs.create, d.ino, name, 0o040755, 0, 0)
        d.entries[name] = D(a.ino, d.view, parent=d)

    def op_write(self) -> None:
        fl = files(self.root)
        if not fl:
            return
        _, _, f = self.rng.choice(fl)
        off = self.rng.choice([0, len(f.data), self.rng.randrange(3 * BLOCK_SIZE),
                               BLOCK_SIZE - 3])
        data = bytes([self.rng.randrange(1, 256)]) * self.rng.choice([1, 100, 5000, BLOCK_SIZE])
        self.expect(None, self.fs.write, f.ino, off, data)
        if len(f.data) < off:
            f.data += bytes(off - len(f.data))
        f.data[off:off + len(data)] = data

    def op_truncate(self) -> None:
        fl = files(self.root)
        if not fl:
            return
        _, _, f = self.rng.choice(fl)
        size = self.rng.choice([0, len(f.data) // 2, len(f.data) + 1000,
                                self.rng.randrange(3 * BLOCK_SIZE)])
        self.expect(None, self.fs.setattr, f.ino, SetAttr(size=size))
        if size < len(f.data):
            del f.data[size:]
        else:
            f.data += bytes(size - len(f.data))

    def op_unlink(self) -> None:
        d, name = self.any_dir(), self.rng.choice(NAMES)
        x = d.entries.get(name)
        if x is None:
            self.expect(errno.ENOENT, self.fs.unlink, d.ino, name)
        elif isinstance(x, D):
            self.expect(errno.EISDIR, self.fs.unlink, d.ino, name)
        else:
            self.expect(None, self.fs.unlink, d.ino, name)
            del d.entries[name]
            x.nlink -= 1
            self.fs.forget(x.ino)

    def op_rmdir(self) -> None:
        d, name = self.any_dir(), self.rng.choice(NAMES)
        x = d.entries.get(name)
        if x is None:
            self.expect(errno.ENOENT, self.fs.rmdir, d.ino, name)
        elif isinstance(x, F):
            self.expect(errno.ENOTDIR, self.fs.rmdir, d.ino, name)
        elif x.entries:
            self.expect(errno.ENOTEMPTY, self.fs.rmdir, d.ino, name)
        else:
            self.expect(None, self.fs.rmdir, d.ino, name)
            del d.entries[name]
            if x in self.forks:
                self.forks.remove(x)
            self.fs.forget(x.ino)

    def op_link(self) -> None:
        fl = files(self.root)
        if not fl:
            return
        p, _, f = self.rng.choice(fl)
        d, name = self.any_dir(), self.rng.choice(NAMES)
        if p.view != d.view:
            self.expect(errno.EXDEV, self.fs.link, f.ino, d.ino, name)
        elif name in d.entries:
            self.expect(errno.EEXIST, self.fs.link, f.ino, d.ino, name)
        else:
            self.expect(None, self.fs.link, f.ino, d.ino, name)
            d.entries[name] = f
            f.nlink += 1

    def op_rename(self) -> None:
        sd, sname = self.any_dir(), self.rng.choice(NAMES)
        dd, dname = self.any_dir(), self.rng.choice(NAMES)
        x = sd.entries.get(sname)
        args = (sd.ino, sname, dd.ino, dname)
        if sd.view != dd.view:
            self.expect(errno.EXDEV, self.fs.rename, *args)
            return
        if x is None:
            self.expect(errno.ENOENT, self.fs.rename, *args)
            return
        y = dd.entries.get(dname)
        if y is x:
            self.expect(None, self.fs.rename, *args)
            return
        if isinstance(x, D) and is_ancestor(x, dd):
            self.expect(errno.EINVAL, self.fs.rename, *args)
            return
        if y is not None:
            if isinstance(x, D) and isinstance(y, F):
                self.expect(errno.ENOTDIR, self.fs.rename, *args)
                return
            if isinstance(x, F) and isinstance(y, D):
                self.expect(errno.EISDIR, self.fs.rename, *args)
                return
            if isinstance(y, D) and y.entries:
                self.expect(errno.ENOTEMPTY, self.fs.rename, *args)
                return
        self.expect(None, self.fs.rename, *args)
        del sd.entries[sname]
        dd.entries[dname] = x
        if isinstance(x, D):
            x.parent = dd
        if y is not None:
            if isinstance(y, F):
                y.nlink -= 1
            elif y in self.forks:
                self.forks.remove(y)
            self.fs.forget(y.ino)

    def op_fork(self) -> None:
        if self.nested:
            src, dst = self.any_dir(), self.any_dir()
        else:
            flat = [d for d in walk(self.root) if all(x.view == 1 for x in walk(d))]
            if not flat:
                return
            src, dst = self.rng.choice(flat), self.root
        name = self.rng.choice(NAMES) + b"-fork"
        if name in dst.entries:
            self.expect(errno.EEXIST, self.fs.fork, src.ino, dst.ino, name)
            return
        a = self.expect(None, self.fs.fork, src.ino, dst.ino, name)
        copy = self._copy(src, a.ino, dst)
        dst.entries[name] = copy
        self.forks.append(copy)

    def _copy(self, src: D, root_ino: int, parent: D) -> D:
        """The shadow of a fork: same shape, files copied (links within the copy
        shared), every view in the subtree renamed; inode numbers looked up."""
        views: dict[int, int] = {}
        memo: dict[int, F] = {}

        def cp(d: D, ino: int, par: D) -> D:
            nv = views.setdefault(d.view, next(_views))
            out = D(ino, nv, parent=par)
            for n, x in d.entries.items():
                child = self.fs.lookup(ino, n)
                if isinstance(x, D):
                    out.entries[n] = cp(x, child.ino, out)
                else:
                    if id(x) not in memo:
                        memo[id(x)] = F(child.ino, bytearray(x.data), x.nlink)
                    out.entries[n] = memo[id(x)]
            return out

        return cp(src, root_ino, parent)

    def op_snapshot(self) -> None:
        d = self.any_dir()
        name = b"s%d" % self.n
        s = self.expect(None, self.fs.snapshot, d.ino, name)
        self.snaps.append((s.ino, expected(d)))

    def op_detach(self) -> None:
        if not self.forks:
            return
        f = self.rng.choice(self.forks)
        parent = f.parent
        assert parent is not None
        name = next(n for n, x in parent.entries.items() if x is f)
        self.expect(None, self.fs.detach, parent.ino, name)
        del parent.entries[name]
        for g in list(self.forks):
            if is_ancestor(f, g):
                self.forks.remove(g)

    # ------------------------------------------------------------ checks

    def check(self) -> None:
        assert tree(self.fs, ROOT_INO) == expected(self.root), f"step {self.n}"
        for ino, want in self.snaps:
            if self._reachable(ino):
                assert tree(self.fs, ino) == want, f"snapshot at step {self.n}"

    def _reachable(self, snap_ino: int) -> bool:
        try:
            self.fs.getattr(snap_ino)
        except FsError:
            return False  # its directory (and so the snapshot) was removed
        return True

    def run(self, steps: int) -> None:
        ops = [self.op_create] * 4 + [self.op_mkdir] * 2 + [self.op_write] * 4 + [
            self.op_truncate, self.op_unlink, self.op_unlink, self.op_rmdir, self.op_link,
            self.op_rename, self.op_rename, self.op_rename, self.op_fork, self.op_snapshot,
            self.op_detach]
        if not self.nested:
            ops.remove(self.op_detach)
        for self.n in range(steps):
            self.rng.choice(ops)()
            if self.n % 25 == 0:
                self.check()
            if self.n % 60 == 59:
                self.check()
                collect(self.fs.store)
                self.check()
        self.check()
        collect(self.fs.store, everything=True)
        self.check()


@pytest.mark.parametrize("seed", range(10))
def test_random_operations_flat_forks(fs: FileSystem, seed: int) -> None:
    Runner(fs, seed, nested=False).run(300)


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_nested_forks(fs: FileSystem, seed: int) -> None:
    Runner(fs, seed, nested=True).run(300)
