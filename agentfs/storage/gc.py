"""Garbage collection: reclaim record versions that no view can see.

A version of a record, born at epoch b and superseded at epoch s (the birth of
the next newer version; "now" for the newest), is visible to readers at
epochs [b, s). It is needed while the view is live and it is the newest, or
while some pin epoch falls in [b, s). Everything else goes. A dead view (a
deleted fork or snapshot) that nothing pins any more goes entirely.

Views are queued for collection (`G<view>` keys) whenever a pin on them is
released or they die; `collect` works through the queue in bounded
transactions so the daemon can interleave it with requests. It also trims
the event stream to its retention limits (eventlog.py: appends trim only a
few lines each, so a window over lowered limits is cut down here).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from agentfs.storage import eventlog, keys
from agentfs.storage.codec import TOMBSTONE
from agentfs.storage.keys import EPOCH_MAX, KIND_ATTR, birth_of
from agentfs.storage.kv import prefix_end
from agentfs.storage.views import Store, Tx

BATCH = 2000  # records examined per transaction
MAX_PASSES = 64


Progress = Callable[[int, int], None]
"""progress(views done, views to do so far): a UI's hook (the total grows when
dropping a view queues those it read through to)."""


def collect(store: Store, everything: bool = False, progress: Progress | None = None
            ) -> dict[str, int]:
    """Run until the queue is empty (or, with `everything`, over every view)."""
    stats = {"views": 0, "versions": 0, "dropped_views": 0}
    for _ in collect_steps(store, everything, stats, progress):
        pass
    return stats


def queued(tx: Tx) -> bool:
    """Is any view waiting for collection?"""
    return tx.txn.first(*keys.GC_QUEUE.span()) is not None


def collect_steps(store: Store, everything: bool = False,
                  stats: dict[str, int] | None = None, progress: Progress | None = None
                  ) -> Iterator[None]:
    """Generator form: each step is one committed transaction."""
    stats = stats if stats is not None else {"views": 0, "versions": 0, "dropped_views": 0}
    yield from _trim_events(store)
    total = 0
    # Dropping a view releases its pins and queues the views it pinned, which
    # may then go too: go on until the queue stays empty (a chain of nested
    # copies is as deep as the forks were nested; MAX_PASSES bounds a surprise).
    for n in range(MAX_PASSES):
        with store.read() as tx:
            listed = keys.VIEW if everything and n == 0 else keys.GC_QUEUE
            queue = [keys.parse_view_id(k) for k, _ in tx.txn.scan(*listed.span())]
        if not queue:
            return
        total += len(queue)
        for vid in queue:
            stats["views"] += 1
            resume: bytes | None = b""
            while resume is not None:
                with store.write() as tx:
                    resume = _collect_view(tx, vid, resume, stats)
                    if resume is None:
                        tx.txn.delete(keys.gc_queue(vid))
                yield
            if progress is not None:
                progress(stats["views"], total)


def _trim_events(store: Store) -> Iterator[None]:
    """Cut the event stream down to its limits, BATCH lines per transaction."""
    while True:
        with store.read() as tx:
            if not eventlog.head(tx.txn).over_limits():
                return
        with store.write() as tx:
            eventlog.trim(tx.txn, budget=BATCH)
        yield


def _collect_view(tx: Tx, vid: int, start: bytes, stats: dict[str, int]) -> bytes | None:
    if not tx.view_exists(vid):
        return None
    v = tx.view(vid)
    dead = v.kind == "dead"
    pins = sorted({e for e, _ in tx.pins(vid)})
    if dead and not pins:
        _drop_view(tx, vid)
        stats["dropped_views"] += 1
        return None
    base = keys.rec_prefix(vid)
    end = prefix_end(base)
    seen = 0
    cursor = base + start
    while True:
        first = tx.txn.first(cursor, end)
        if first is None:
            return None
        ino_prefix = keys.inode_prefix(first[0])
        versions = list(tx.txn.scan(*keys.span(ino_prefix)))
        stats["versions"] += _collect_inode(tx, v.chain != [], dead, pins, versions)
        seen += len(versions)
        cursor = prefix_end(ino_prefix)
        if seen >= BATCH:
            return cursor[len(base):]


def _collect_inode(tx: Tx, has_lower: bool, dead: bool, pins: list[int],
                   versions: list[tuple[bytes, bytes]]) -> int:
    groups: dict[bytes, list[tuple[int, bytes, bytes]]] = {}
    for k, val in versions:
        groups.setdefault(keys.version_base(k), []).append((birth_of(k), k, val))
    # Once the inode itself is deleted (newest attr version a tombstone), none
    # of its other records is visible after that epoch.
    dead_after = EPOCH_MAX
    for rec, vs in groups.items():
        if _is_attr(rec) and vs[0][2] == TOMBSTONE:
            dead_after = vs[0][0]
    dropped = 0
    for rec, vs in groups.items():
        is_attr = _is_attr(rec)
        kept_older = False
        for i in range(len(vs) - 1, -1, -1):  # oldest first
            b, key, val = vs[i]
            until = vs[i - 1][0] if i > 0 else EPOCH_MAX
            if not is_attr:
                until = min(until, max(dead_after, b))
            current = until == EPOCH_MAX and not dead
            needed = current or _pinned_between(pins, b, until)
            if val == TOMBSTONE and not (kept_older or has_lower):
                needed = False
            if needed:
                kept_older = True
            else:
                tx.txn.delete(key)
                dropped += 1
    return dropped


def _is_attr(record: bytes) -> bool:
    return keys.parse_record(record)[2] == KIND_ATTR


def _pinned_between(pins: list[int], lo: int, hi: int) -> bool:
    i = bisect.bisect_left(pins, lo)
    return i < len(pins) and pins[i] < hi


def _drop_view(tx: Tx, vid: int) -> None:
    """Remove a dead, unpinned view: every key of every per-view prefix of the
    key table (its definition, records, queue entry, agent records...), and
    release the pins it held on the views it read through to (they are queued
    for collection in turn)."""
    # Its turn pins too: the turn records they serve go with the view.
    tx.release_holder(keys.view_holder(vid), keys.turn_holder(vid))
    _forget_as_copy(tx, vid)
    for prefix in keys.VIEW_SCOPED:
        for k, _ in list(tx.txn.scan(*keys.span(prefix.of_view(vid)))):
            tx.txn.delete(k)
    tx.store._views.pop(vid, None)


def _forget_as_copy(tx: Tx, vid: int) -> None:
    """If `vid` is its container's lazily made copy of a nested view, drop the
    container's `m` key naming it. The container may outlive it (a dead view
    still pinned by a snapshot), and reads through that container as an origin
    look the key up: a key naming a dropped view would fail them (ESTALE, an
    entry missing from the snapshot), where no key means "not copied yet"."""
    container = tx.view(vid).container
    for k, raw in list(tx.txn.scan(*keys.span(keys.nested_copy_prefix(container)))):
        if keys.read_u32(raw) == vid:
            tx.txn.delete(k)
