"""Versioned views over the key-value seam: the storage model behind O(1) forks.

A *view* is a layer of records plus an origin chain: reads that find nothing
in the view's own layer fall through to its origin as it was at the fork
epoch, then to the origin's origin, and so on. Creating a fork or a snapshot
therefore writes a constant number of keys, whatever the size of the tree.

Every record carries the epoch in which it was written. A write overwrites the
record in place unless some *pin* (a snapshot, a fork, a remembered turn) may
still need the old version: then a new version is added beside it. Pins bump
the global epoch, so the state "as it was at epoch E" is exactly the newest
version of each record born at or before E. Versions that no pin and no live
view can see are garbage; `gc.py` reclaims them.
"""

from __future__ import annotations

import errno
import heapq
from collections.abc import Iterator
from contextlib import contextmanager

from agentfs.errors import FsError
from agentfs.storage import codec, keys
from agentfs.storage.codec import TOMBSTONE, ViewDef
from agentfs.storage.keys import EPOCH_MAX, birth_of, inv
from agentfs.storage.kv import Engine, Txn, prefix_end

INO_BATCH = 1024  # local inode numbers reserved per persisted counter update


class Store:
    """In-memory caches over one engine. Use `write()` / `read()` to get a `Tx`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._views: dict[int, ViewDef] = {}
        self._maxpin: dict[int, int] = {}
        self._ino_next: dict[int, int] = {}
        self._ino_limit: dict[int, int] = {}
        with engine.begin() as txn:
            raw = txn.get(keys.meta("format"))
        if raw is None:
            with engine.begin(write=True) as txn:
                self._format(txn)
        elif codec.unpack(raw) != codec.FORMAT:
            raise RuntimeError(f"store format {codec.unpack(raw)!r} is not {codec.FORMAT}")
        self._load_counters()

    def _format(self, txn: Txn) -> None:
        txn.put(keys.meta("format"), codec.pack(codec.FORMAT))
        txn.put(keys.meta("epoch"), codec.pack(1))
        txn.put(keys.meta("next_view"), codec.pack(codec.ROOT_VIEW + 1))
        root = ViewDef(codec.ROOT_VIEW, [], codec.ROOT_LOCAL, False, 0, 1,
                       codec.ROOT_LOCAL + 1, "root")
        txn.put(keys.view_def(root.id), root.encode())

    def forget_caches(self) -> None:
        """Drop everything cached from the store (after an aborted write)."""
        self._views.clear()
        self._maxpin.clear()
        self._ino_next.clear()
        self._ino_limit.clear()
        self._load_counters()

    def _load_counters(self) -> None:
        with self.engine.begin() as txn:
            self.epoch = _int(txn.get(keys.meta("epoch")))
            self.next_view = _int(txn.get(keys.meta("next_view")))

    @contextmanager
    def write(self) -> Iterator[Tx]:
        try:
            with self.engine.begin(write=True) as txn:
                yield Tx(self, txn, True)
        except BaseException:
            self.forget_caches()
            raise

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self.engine.begin(write=False) as txn:
            yield Tx(self, txn, False)


def _int(raw: bytes | None) -> int:
    assert raw is not None, "store metadata missing"
    v = codec.unpack(raw)
    assert isinstance(v, int)
    return v


class Tx:
    """One transaction's view of the versioned records."""

    def __init__(self, store: Store, txn: Txn, writable: bool) -> None:
        self.store = store
        self.txn = txn
        self.writable = writable

    # ---------------------------------------------------------------- views

    def view(self, vid: int) -> ViewDef:
        v = self.store._views.get(vid)
        if v is None:
            raw = self.txn.get(keys.view_def(vid))
            if raw is None:
                raise FsError(errno.ESTALE, f"view {vid} does not exist")
            v = ViewDef.decode(vid, raw)
            self.store._views[vid] = v
        return v

    def view_exists(self, vid: int) -> bool:
        try:
            self.view(vid)
        except FsError:
            return False
        return True

    def save_view(self, v: ViewDef) -> None:
        self.txn.put(keys.view_def(v.id), v.encode())
        self.store._views[v.id] = v

    def levels(self, vid: int) -> list[tuple[int, int]]:
        """(view, limit epoch) for the view itself and each origin, nearest first."""
        v = self.view(vid)
        if v.readonly:
            return v.chain
        return [(vid, EPOCH_MAX), *v.chain]

    def useful_levels(self, chain: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Drop levels below the immediate origin that held no record at their
        limit epoch (a fork's own root attributes don't count: every fork writes
        its own). Reads would only fall through them, so a fork of an unmodified
        fork of a fork reads as fast as the first."""
        out = chain[:1]
        for lvid, limit in chain[1:]:
            fb = self.view(lvid).first_birth
            if fb and fb <= limit:
                out.append((lvid, limit))
        return out

    def new_view(self, chain: list[tuple[int, int]], root: int, readonly: bool,
                 container: int, kind: str, next_ino: int) -> ViewDef:
        chain = self.useful_levels(chain)
        vid = self.store.next_view
        if vid > codec.MAX_VIEW:
            raise FsError(errno.ENOSPC, f"the store has used all {codec.MAX_VIEW} view ids "
                          "(forks and snapshots)")
        self.store.next_view += 1
        self.txn.put(keys.meta("next_view"), codec.pack(self.store.next_view))
        v = ViewDef(vid, chain, root, readonly, container, self.store.epoch, next_ino, kind)
        self.save_view(v)
        # A view reads through every level of its chain, so it holds each one:
        # no level may be collected while this view lives.
        for lvid, limit in chain:
            self.txn.put(keys.pin(lvid, limit, keys.view_holder(vid)), b"")
            self.store._maxpin[lvid] = max(self.maxpin(lvid), limit)
        return v

    def alloc_ino(self, vid: int) -> int:
        nxt = self.store._ino_next.get(vid)
        limit = self.store._ino_limit.get(vid, 0)
        if nxt is None or nxt >= limit:
            v = self.view(vid)
            nxt = max(nxt or 0, v.next_ino)
            if nxt + INO_BATCH > codec.LOCAL_MASK:
                raise FsError(errno.ENOSPC, "this tree has used all its inode numbers")
            v.next_ino = nxt + INO_BATCH
            self.save_view(v)
            self.store._ino_limit[vid] = v.next_ino
        self.store._ino_next[vid] = nxt + 1
        return nxt

    def peek_next_ino(self, vid: int) -> int:
        """An inode number above every one allocated so far in `vid`."""
        return max(self.store._ino_next.get(vid, 0), self.view(vid).next_ino)

    # ---------------------------------------------------------------- pins

    def maxpin(self, vid: int) -> int:
        m = self.store._maxpin.get(vid)
        if m is None:
            last = self.txn.last(*keys.span(keys.pin_prefix(vid)))
            m = keys.parse_pin(last[0])[1] if last else 0
            self.store._maxpin[vid] = m
        return m

    def pin(self, vid: int, holder: bytes, epoch: int | None = None) -> int:
        """Remember `vid` as it is now (or at an already pinned `epoch`) for `holder`."""
        if epoch is None:
            epoch = self.store.epoch
            self.store.epoch += 1
            self.txn.put(keys.meta("epoch"), codec.pack(self.store.epoch))
        elif not self.is_pinned(vid, epoch):
            raise FsError(errno.ENOENT, f"epoch {epoch} was not recorded for this tree")
        self.txn.put(keys.pin(vid, epoch, holder), b"")
        self.store._maxpin[vid] = max(self.maxpin(vid), epoch)
        return epoch

    def is_pinned(self, vid: int, epoch: int) -> bool:
        return self.txn.first(*keys.span(keys.pin_at(vid, epoch))) is not None

    def unpin(self, vid: int, epoch: int, holder: bytes) -> None:
        self.txn.delete(keys.pin(vid, epoch, holder))
        self.store._maxpin.pop(vid, None)
        self.mark_dirty(vid)

    def release_holder(self, *holders: bytes) -> set[int]:
        """Release every pin any of `holders` has, on any view; returns those views."""
        released = set()
        for k, _ in list(self.txn.scan(*keys.PIN.span())):
            vid, epoch, holder = keys.parse_pin(k)
            if holder in holders:
                self.unpin(vid, epoch, holder)
                released.add(vid)
        return released

    def pins(self, vid: int) -> list[tuple[int, bytes]]:
        return [keys.parse_pin(k)[1:] for k, _ in self.txn.scan(*keys.span(keys.pin_prefix(vid)))]

    def mark_dirty(self, vid: int) -> None:
        """Ask gc to look at `vid`: versions may have become unreachable."""
        self.txn.put(keys.gc_queue(vid), b"")

    # ---------------------------------------------------------------- records

    def get(self, vid: int, suffix: bytes) -> bytes | None:
        found = self.get_level(vid, suffix)
        return None if found is None else found[1]

    def get_level(self, vid: int, suffix: bytes) -> tuple[int, bytes] | None:
        """(index of the level it came from, value) of the visible version, or None."""
        for i, (lvid, limit) in enumerate(self.levels(vid)):
            base = keys.record(lvid, suffix)
            hit = self.txn.first(base + inv(limit), prefix_end(base))
            if hit is not None:
                return None if hit[1] == TOMBSTONE else (i, hit[1])
        return None

    def _lower_visible(self, vid: int, suffix: bytes) -> bool:
        for lvid, limit in self.view(vid).chain:
            base = keys.record(lvid, suffix)
            hit = self.txn.first(base + inv(limit), prefix_end(base))
            if hit is not None:
                return hit[1] != TOMBSTONE
        return False

    def _check_writable(self, vid: int) -> None:
        assert self.writable
        if self.view(vid).readonly:
            raise FsError(errno.EROFS, "snapshots are read-only")

    def _note_write(self, vid: int, suffix: bytes) -> None:
        v = self.view(vid)
        if not v.first_birth and suffix != keys.attr_suffix(v.root):
            v.first_birth = self.store.epoch
            self.save_view(v)

    def put(self, vid: int, suffix: bytes, value: bytes) -> None:
        self._check_writable(vid)
        self._note_write(vid, suffix)
        base = keys.record(vid, suffix)
        newest = self.txn.first(base, prefix_end(base))
        now = self.store.epoch
        if newest is not None:
            b = birth_of(newest[0])
            if b == now:
                self.txn.put(newest[0], value)
                return
            if b > self.maxpin(vid):
                self.txn.delete(newest[0])
        self.txn.put(base + inv(now), value)

    def put_new(self, vid: int, suffix: bytes, value: bytes) -> None:
        """`put` for a record with no version anywhere yet (a record of an inode
        allocated in this transaction, or of one only this transaction wrote):
        no older version to look for. A bulk import's shortcut."""
        self._check_writable(vid)
        self._note_write(vid, suffix)
        self.txn.put(keys.record_version(vid, suffix, self.store.epoch), value)

    def remove(self, vid: int, suffix: bytes) -> None:
        """Delete a record as seen from `vid` (a tombstone where something older shows)."""
        self._check_writable(vid)
        base = keys.record(vid, suffix)
        end = prefix_end(base)
        newest = self.txn.first(base, end)
        if newest is not None and birth_of(newest[0]) > self.maxpin(vid):
            self.txn.delete(newest[0])
            newest = self.txn.first(base, end)
        hides_something = newest is not None or self._lower_visible(vid, suffix)
        if hides_something and (newest is None or newest[1] != TOMBSTONE):
            self._note_write(vid, suffix)
            self.txn.put(base + inv(self.store.epoch), TOMBSTONE)

    def scan(self, vid: int, prefix: bytes, start: bytes = b"", stop: bytes = b""
             ) -> Iterator[tuple[bytes, bytes]]:
        """Visible (sub, value) pairs of records `prefix + sub` in sub order, merged
        over all levels (the nearest level wins; tombstones hide), for
        start <= sub < stop (no upper bound if `stop` is empty)."""
        streams = []
        for i, (lvid, limit) in enumerate(self.levels(vid)):
            streams.append(self._scan_level(lvid, limit, prefix, start, i, stop))
        last = None
        for sub, _level, value in heapq.merge(*streams):
            if sub == last:
                continue
            last = sub
            if value != TOMBSTONE:
                yield sub, value

    def _scan_level(self, lvid: int, limit: int, prefix: bytes, start: bytes,
                    level: int, stop: bytes = b"") -> Iterator[tuple[bytes, int, bytes]]:
        base = keys.record(lvid, prefix)
        last = None
        # A bound matters when a level holds many versions too new for `limit`:
        # they are skipped one by one, so stop before them where possible.
        for k, v in self.txn.scan(base + start, base + stop if stop else prefix_end(base)):
            sub = keys.version_tail(k, base)
            if sub == last or birth_of(k) > limit:
                continue
            last = sub
            yield sub, level, v

    def own_versions(self, vid: int, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every stored version in `vid`'s own layer under `prefix` (raw keys)."""
        base = keys.record(vid, prefix)
        yield from self.txn.scan(base, prefix_end(base))
