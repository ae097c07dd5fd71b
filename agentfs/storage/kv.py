"""The one storage seam: a transactional, ordered key-value store.

Everything agentfs persists goes through `Engine.begin()`. Two engines
implement it: `LmdbEngine` (the embedded default) and `MemoryEngine` (for fast
unit tests). The model never sees which one it runs on; the same conformance
suite runs against both.

Transactions are short and synchronous: the daemon never holds one across an
`await`, so a single writer at a time is all either engine needs.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

# writemap would save ~8 us per metadata operation, but page faults on fresh
# file pages cut sequential writes to a third (bench: 460 vs 1320 MiB/s).
WRITEMAP = bool(int(os.environ.get("AGENTFS_WRITEMAP", "0")))


class NoSpace(Exception):
    """The store is full; the transaction was rolled back, nothing was lost."""


class Txn(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...

    def scan(self, start: bytes, end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Yield (key, value) for start <= key < end, in key order."""
        ...

    def first(self, start: bytes, end: bytes | None = None) -> tuple[bytes, bytes] | None:
        """The first pair with start <= key < end, or None."""
        ...

    def last(self, start: bytes, end: bytes) -> tuple[bytes, bytes] | None:
        """The last pair with start <= key < end, or None."""
        ...


class Engine(Protocol):
    def begin(self, write: bool = False) -> TxnContext: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...
    def grow(self) -> bool:
        """Make room after NoSpace if possible (no transaction may be open)."""
        ...
    def usage(self) -> tuple[int, int]:
        """(bytes used by live pages, bytes the store may grow to; 0: the disk's free space)."""
        ...
    def entries(self) -> int:
        """How many keys the store holds (what a full scan will go through)."""
        ...


class TxnContext(Protocol):
    def __enter__(self) -> Txn: ...
    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix`."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\xff" * 64
    p[-1] += 1
    return bytes(p)


# --------------------------------------------------------------------------
# In-memory engine


class _MemTxn:
    def __init__(self, engine: MemoryEngine, write: bool) -> None:
        self._e = engine
        self._write = write
        self._undo: list[tuple[bytes, bytes | None]] = []

    def get(self, key: bytes) -> bytes | None:
        return self._e.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        assert self._write, "put in a read transaction"
        data = self._e.data
        old = data.get(key)
        if old is None:
            bisect.insort(self._e.keys, key)
        self._undo.append((key, old))
        data[key] = bytes(value)
        self._e.used += len(value) - len(old) if old is not None else len(key) + len(value)
        if self._e.limit and self._e.used > self._e.limit:
            raise NoSpace()

    def delete(self, key: bytes) -> None:
        assert self._write, "delete in a read transaction"
        data = self._e.data
        old = data.pop(key, None)
        if old is None:
            return
        keys = self._e.keys
        del keys[bisect.bisect_left(keys, key)]
        self._undo.append((key, old))
        self._e.used -= len(old) + len(key)

    def scan(self, start: bytes, end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        keys = self._e.keys
        i = bisect.bisect_left(keys, start)
        j = len(keys) if end is None else bisect.bisect_left(keys, end)
        # Copy the slice: callers may modify the store while iterating.
        for k in keys[i:j]:
            v = self._e.data.get(k)
            if v is not None:
                yield k, v

    def first(self, start: bytes, end: bytes | None = None) -> tuple[bytes, bytes] | None:
        keys = self._e.keys
        i = bisect.bisect_left(keys, start)
        if i == len(keys) or (end is not None and keys[i] >= end):
            return None
        return keys[i], self._e.data[keys[i]]

    def last(self, start: bytes, end: bytes) -> tuple[bytes, bytes] | None:
        keys = self._e.keys
        j = bisect.bisect_left(keys, end)
        if j == 0 or keys[j - 1] < start:
            return None
        return keys[j - 1], self._e.data[keys[j - 1]]

    def rollback(self) -> None:
        data, keys = self._e.data, self._e.keys
        for key, old in reversed(self._undo):
            cur = data.get(key)
            if old is None:
                if cur is not None:
                    del data[key]
                    del keys[bisect.bisect_left(keys, key)]
            else:
                if cur is None:
                    bisect.insort(keys, key)
                data[key] = old
        self._undo.clear()
        self._e.used = sum(len(k) + len(v) for k, v in data.items())


class _MemTxnContext:
    def __init__(self, engine: MemoryEngine, write: bool) -> None:
        self._txn = _MemTxn(engine, write)

    def __enter__(self) -> _MemTxn:
        return self._txn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._txn.rollback()


class MemoryEngine:
    """A dict plus a sorted key list; writes are undone on exception.

    `limit` (bytes) simulates a full disk so ENOSPC paths can be tested.
    """

    def __init__(self, limit: int = 0) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []
        self.limit = limit
        self.used = 0

    def begin(self, write: bool = False) -> _MemTxnContext:
        return _MemTxnContext(self, write)

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass

    def usage(self) -> tuple[int, int]:
        return self.used, self.limit or (1 << 40)

    def entries(self) -> int:
        return len(self.keys)

    def grow(self) -> bool:
        return False


# --------------------------------------------------------------------------
# LMDB engine


class _LmdbTxn:
    def __init__(self, txn, db) -> None:  # type: ignore[no-untyped-def]
        self._txn = txn
        self._db = db

    def get(self, key: bytes) -> bytes | None:
        v = self._txn.get(key, db=self._db)
        return None if v is None else bytes(v)

    def put(self, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._db)

    def delete(self, key: bytes) -> None:
        self._txn.delete(key, db=self._db)

    def scan(self, start: bytes, end: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        # Re-seek after each yield: the caller may write between steps, and an
        # LMDB cursor is not guaranteed to stay valid across our own writes.
        cur = self._txn.cursor(db=self._db)
        key = start
        if not cur.set_range(key):
            return
        while True:
            k = cur.key()
            if end is not None and k >= end:
                return
            yield k, cur.value()
            if not cur.set_range(k):
                return
            # If the caller deleted k, set_range already sits on its successor.
            if cur.key() == k and not cur.next():
                return

    def first(self, start: bytes, end: bytes | None = None) -> tuple[bytes, bytes] | None:
        cur = self._txn.cursor(db=self._db)
        if not cur.set_range(start):
            return None
        k = cur.key()
        if end is not None and k >= end:
            return None
        return k, cur.value()

    def last(self, start: bytes, end: bytes) -> tuple[bytes, bytes] | None:
        cur = self._txn.cursor(db=self._db)
        if cur.set_range(end):
            if not cur.prev():
                return None
        elif not cur.last():
            return None
        k = cur.key()
        if k < start or k >= end:
            return None
        return k, cur.value()


class _LmdbTxnContext:
    def __init__(self, engine: LmdbEngine, write: bool) -> None:
        self._engine = engine
        self._write = write

    def __enter__(self) -> _LmdbTxn:
        self._txn = self._engine.env.begin(write=self._write, buffers=False)
        return _LmdbTxn(self._txn, self._engine.db)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        import lmdb

        if exc_type is not None:
            self._txn.abort()
            if isinstance(exc, lmdb.MapFullError):
                raise NoSpace() from exc  # type: ignore[misc]
            return
        try:
            self._txn.commit()
        except lmdb.MapFullError as e:
            raise NoSpace() from e


class LmdbEngine:
    """An LMDB environment in `path` (a directory).

    Commits are not fsync'ed (sync=False): a committed transaction has been
    written to the OS page cache, so it survives a SIGKILL of the daemon;
    `sync()` (called on fsync) makes everything committed so far durable
    against power loss.

    The map starts at 1 GiB and `grow()` doubles it when a transaction finds
    it full, up to `max_map_size` (default: what the disk can hold).
    """

    MIN_MAP_SIZE = 1 << 30

    def __init__(self, path: str | os.PathLike[str], map_size: int | None = None,
                 max_map_size: int | None = None) -> None:
        import lmdb

        Path(path).mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        data = self.path / "data.mdb"
        used = data.stat().st_blocks * 512 if data.exists() else 0
        if map_size is None:
            map_size = max(self.MIN_MAP_SIZE, 2 * used,
                           data.stat().st_size if data.exists() else 0)
        self.map_size = map_size
        self.max_map_size = max_map_size
        self.env = lmdb.open(
            str(path), map_size=map_size, max_dbs=4, sync=False, metasync=False,
            readahead=False, meminit=False, max_readers=126, writemap=WRITEMAP,
        )
        self.db = self.env.open_db(b"agentfs")

    def begin(self, write: bool = False) -> _LmdbTxnContext:
        return _LmdbTxnContext(self, write)

    def grow(self) -> bool:
        """Double the map after NoSpace; False if the disk (or the cap) can't take it.
        Only call with no transaction open."""
        limit = self.max_map_size
        if limit is None:
            st = os.statvfs(self.path)
            limit = self.usage()[0] + st.f_bavail * st.f_frsize
        new = min(self.map_size * 2, limit)
        if new <= self.map_size:
            return False
        self.env.set_mapsize(new)
        self.map_size = new
        return True

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()

    def usage(self) -> tuple[int, int]:
        """(bytes of pages in use, bytes the store may grow to)."""
        info = self.env.info()
        stat = self.env.stat()
        used = (info["last_pgno"] + 1) * stat["psize"]
        return used, self.max_map_size or 0

    def entries(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self.db)["entries"])
