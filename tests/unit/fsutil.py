"""Helpers shared by the unit tests (imported by conftest and the test modules)."""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agentfs.errors import FsError
from agentfs.posix.fs import FileSystem, SetAttr
from agentfs.storage.codec import Attr, ViewDef, split_ino
from agentfs.storage.keys import read_u32, u32, u64
from agentfs.storage.kv import Engine, LmdbEngine, MemoryEngine, prefix_end

ENGINES = ["memory", "lmdb"]


class EngineFactory:
    """Opens engines of one kind; remembers them so they can be checked and closed."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.opened: list[Engine] = []
        self.checked: list[Engine] = []  # stores fsck looks at after the test
        self.paths: dict[int, Path] = {}
        self._n = 0

    def __call__(self, **kw: int) -> Engine:
        if self.kind == "memory":
            e: Engine = MemoryEngine(**kw)
        else:
            self._n += 1
            path = self.tmp_path / f"store{self._n}"
            e = LmdbEngine(path, **kw)
            self.paths[id(e)] = path
        self.opened.append(e)
        return e

    def reopen(self, e: Engine) -> Engine:
        """Close `e` and open its store again (the memory engine is just kept)."""
        if self.kind == "memory":
            return e
        path = self.paths[id(e)]
        e.close()
        self.opened.remove(e)
        new = LmdbEngine(path)
        self.paths[id(new)] = path
        self.opened.append(new)
        self.checked = [new if c is e else c for c in self.checked]
        return new

    def close_all(self) -> None:
        for e in self.opened:
            if isinstance(e, LmdbEngine):
                e.close()
        self.opened.clear()


# --------------------------------------------------------------------------
# Model helpers

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


class Clock:
    """A clock that moves 1 µs per reading, so every change has a distinct time."""

    def __init__(self, start: int = 1_700_000_000_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1000
        return self.now


@contextmanager
def raises(code: int) -> Iterator[pytest.ExceptionInfo[FsError]]:
    """Expect an FsError with errno `code`."""
    with pytest.raises(FsError) as info:
        yield info
    assert info.value.errno == code, (
        f"expected {errno.errorcode[code]}, got {errno.errorcode.get(info.value.errno)}: "
        f"{info.value}")


def mkfile(fs: FileSystem, parent: int, name: bytes, data: bytes = b"", mode: int = 0o644,
           uid: int = 0, gid: int = 0) -> Attr:
    a = fs.create(parent, name, stat.S_IFREG | mode, uid, gid)
    if data:
        a = fs.write(a.ino, 0, data)
    return a


def put_file(fs: FileSystem, parent: int, name: bytes, data: bytes) -> None:
    """Write `parent/name` whole, as `echo > name` does: create or truncate."""
    try:
        ino = fs.lookup(parent, name).ino
    except FsError:
        ino = fs.create(parent, name, stat.S_IFREG | 0o644, 0, 0).ino
    fs.setattr(ino, SetAttr(size=0))
    fs.write(ino, 0, data)


def dead_views(fs: FileSystem) -> list[int]:
    """Views deleted but not yet dropped by gc."""
    with fs.store.read() as tx:
        return [vid for k, raw in tx.txn.scan(b"V", b"W")
                if ViewDef.decode(vid := read_u32(k, 1), raw).kind == "dead"]


def mkdir(fs: FileSystem, parent: int, name: bytes, mode: int = 0o755, uid: int = 0,
          gid: int = 0) -> Attr:
    return fs.create(parent, name, stat.S_IFDIR | mode, uid, gid)


def symlink(fs: FileSystem, parent: int, name: bytes, target: bytes) -> Attr:
    return fs.create(parent, name, stat.S_IFLNK | 0o777, 0, 0, target=target)


def names(fs: FileSystem, dir_ino: int) -> list[bytes]:
    return sorted(e.name for e in fs.readdir(dir_ino))


def cat(fs: FileSystem, ino: int) -> bytes:
    return fs.read(ino, 0, fs.getattr(ino).size + 1)


def tree(fs: FileSystem, ino: int) -> dict[str, object]:
    """The tree under directory `ino`: a dict of name -> bytes (file contents),
    dict (directory) or ("->", target) (symlink)."""
    out: dict[str, object] = {}
    for e in fs.readdir(ino):
        a = e.attr
        if a.is_dir:
            out[e.name.decode()] = tree(fs, a.ino)
        elif a.is_link:
            out[e.name.decode()] = ("->", a.target)
        else:
            out[e.name.decode()] = fs.read(a.ino, 0, a.size)
    return out


def build(fs: FileSystem, parent: int, spec: dict[str, object]) -> None:
    """Create the tree `spec` (the shape `tree` returns) under `parent`."""
    for name, what in spec.items():
        n = name.encode()
        if isinstance(what, dict):
            build(fs, mkdir(fs, parent, n).ino, what)
        elif isinstance(what, tuple):
            symlink(fs, parent, n, what[1])
        else:
            assert isinstance(what, bytes)
            mkfile(fs, parent, n, what)


def count_keys(engine: Engine, prefix: bytes = b"R") -> int:
    with engine.begin() as t:
        return sum(1 for _ in t.scan(prefix, prefix_end(prefix)))


def inode_records(engine: Engine, ino: int) -> int:
    """How many stored record versions belong to FUSE inode `ino`."""
    view, local = split_ino(ino)
    p = b"R" + u32(view) + u64(local)
    return count_keys(engine, p)


class CountingEngine:
    """Wraps an engine and counts the keys written (put) by write transactions."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.puts = 0

    def begin(self, write: bool = False) -> _CountingCtx:
        return _CountingCtx(self, self.inner.begin(write))

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class _CountingCtx:
    def __init__(self, owner: CountingEngine, ctx: object) -> None:
        self.owner = owner
        self.ctx = ctx

    def __enter__(self) -> object:
        txn = self.ctx.__enter__()  # type: ignore[attr-defined]
        owner = self.owner
        put = txn.put

        def counted_put(key: bytes, value: bytes) -> None:
            owner.puts += 1
            put(key, value)

        txn.put = counted_put
        return txn

    def __exit__(self, *exc: object) -> object:
        return self.ctx.__exit__(*exc)  # type: ignore[attr-defined]
