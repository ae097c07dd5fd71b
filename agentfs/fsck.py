"""fsck: check every invariant of a store and say exactly what is wrong.

Used by `agentfs fsck` and, as an oracle, after every unit test. It reads one
consistent LMDB snapshot, so it may run while the daemon is serving.

Invariants checked:
- every key belongs to a prefix of the key table (storage/keys.py) and has
  the length its layout says; every per-view key names an existing view;
- metadata: format, epoch and next_view present and decodable (else nothing
  more can be read), nothing else, next_view above every view;
- no version is born after the current epoch, versions of one record in order;
- views: origin chains name existing views, each live fork/snapshot holds a
  pin on its origin at its fork epoch; a live view (other than the root) is
  listed as contained by its container (`C`), which is live;
- pins: in the past, held by a holder of a known kind (`v<view>`: an existing
  view; `t<view>`: a view with turn records or a history record);
- containment (`C`) and nested copies (`m`) of live views name existing views
  that say so (inner.container is the view); snapshot names (`S`) of live
  views lead to live snapshot views of that directory;
- the tree of every live view, walked from its root: entries lead to inodes
  of the type they claim, directories point back at their parent, directory
  link counts are 2 + subdirectories, file link counts match the entries
  (exactly in the root view; at least in forks, where a hard link may lead
  outside the forked subtree), symlinks have targets;
- file data: no block past the end of a file, none longer than the block
  size or the file, the stored-bytes counter (st_blocks) equals the blocks;
  log files (transcripts) hold contiguous, decodable appends from 0 to their
  size and nothing else;
- orphans of live views have nlink 0; in the root view every inode is
  reachable (from the root or from a staged import's directory) or an orphan;
- staged imports (`I`) of live views name directories, walked like the tree
  (an import fills them in batches before one entry makes them visible);
- entries that lead into another view lead to that view's root, and that view
  is alive and contained here;
- the agent layer's records (agents/check.py): agents, their views, turns,
  inbox counters, lineage;
- the event stream (agents/events.py, storage/eventlog.py): every event
  decodes and is one canonical line of a known kind, seqs are contiguous
  over the retained window, offsets follow on, the head agrees.

Keys of dead views (records, containment, agent records...) are garbage that
gc drops with the view; they need only name the view.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from agentfs.agents import events
from agentfs.agents.check import check_agents
from agentfs.posix import logdata
from agentfs.posix.fs import BLOCK_SIZE
from agentfs.storage import codec, keys
from agentfs.storage.codec import ROOT_VIEW, Attr, ViewDef, decode_dentry
from agentfs.storage.keys import (
    KIND_ATTR,
    attr_suffix,
    birth_of,
    block_dir_suffix,
    dentry_dir_suffix,
)
from agentfs.storage.kv import Engine
from agentfs.storage.views import Store, Tx


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    views: int = 0
    inodes: int = 0
    records: int = 0

    def summary(self) -> str:
        state = "clean" if not self.problems else f"{len(self.problems)} problem(s)"
        return (f"fsck: {state}: {self.views} views, {self.inodes} reachable inodes, "
                f"{self.records} records")


Progress = Callable[[int, int], None]
"""progress(done, total): keys checked out of the store's keys, then the trees'
inodes walked on top (the total grows by the inodes once the keys are done)."""

PROGRESS_EVERY = 4096  # keys or inodes between two calls of `progress`


def check_store(engine: Engine, progress: Progress | None = None) -> Report:
    r = Report()
    r.problems.extend(_meta_problems(engine))
    if r.problems:
        return r  # nothing else can be read without the epoch (and Store would format)
    store = Store(engine)
    with store.read() as tx:
        _check(tx, r, _Progress(progress, engine.entries() if progress else 0))
    return r


@dataclass
class _Progress:
    report: Progress | None
    total: int
    done: int = 0

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.report is not None and self.done % PROGRESS_EVERY < n:
            self.report(self.done, max(self.total, self.done))

    def more(self, n: int) -> None:
        self.total += n
        if self.report is not None:
            self.report(self.done, self.total)


def _meta_problems(engine: Engine) -> list[str]:
    problems = []
    with engine.begin() as txn:
        for name in keys.META_NAMES:
            raw = txn.get(keys.meta(name))
            if raw is None:
                problems.append(f"metadata {name!r} is missing")
                continue
            try:
                value = codec.unpack(raw)
            except Exception as e:  # noqa: BLE001 - report, don't crash
                problems.append(f"metadata {name!r}: undecodable ({e})")
                continue
            if not isinstance(value, int) or (name == "format" and value != codec.FORMAT):
                problems.append(f"metadata {name!r} is {value!r}")
    return problems


@dataclass
class _Seen:
    """What the pass over every key collected for the checks that follow it."""

    views: dict[int, ViewDef]
    now: int
    pins: dict[int, set[tuple[int, bytes]]] = field(default_factory=dict)
    orphans: dict[int, set[int]] = field(default_factory=dict)
    staged: dict[int, set[int]] = field(default_factory=dict)
    contained: set[tuple[int, int]] = field(default_factory=set)
    last_record: bytes = b""
    attrs: int = 0  # attribute records (versions): about what the tree walks will visit

    def live(self, vid: int) -> bool:
        v = self.views.get(vid)
        return v is not None and v.kind != "dead"


def _check(tx: Tx, r: Report, progress: _Progress) -> None:
    views = _load_views(tx, r)
    r.views = len(views)
    if ROOT_VIEW not in views:
        r.problems.append("root view is missing")
        return
    seen = _Seen(views, tx.store.epoch)
    for k, raw in tx.txn.scan(b""):
        _check_key(tx, r, seen, k, raw)
        progress.step()
    progress.more(seen.attrs)
    _check_views(tx, r, seen)
    _check_turn_holders(tx, r, seen)
    for vid, v in views.items():
        if v.kind == "dead":
            continue
        _check_orphans(tx, r, vid, seen.orphans.get(vid, set()))
        staged = _check_staged(tx, r, vid, seen.staged.get(vid, set()))
        root = tx.get(vid, attr_suffix(v.root))
        if root is not None and Attr.decode(root).nlink == 0 and vid != ROOT_VIEW:
            continue  # a removed fork root the kernel has not forgotten yet
        before = r.inodes
        _check_tree(tx, r, vid, v, views, seen.orphans.get(vid, set()), staged)
        progress.step(r.inodes - before)
    check_agents(tx, r.problems)
    r.problems.extend(events.check(tx.txn))
    if progress.report is not None:
        progress.report(progress.total, progress.total)


def _load_views(tx: Tx, r: Report) -> dict[int, ViewDef]:
    views: dict[int, ViewDef] = {}
    for k, raw in tx.txn.scan(*keys.VIEW.span()):
        if len(k) != keys.VIEW.min_len:
            continue  # _check_key names it
        vid = keys.parse_view_id(k)
        try:
            views[vid] = ViewDef.decode(vid, raw)
        except Exception as e:  # noqa: BLE001 - report, don't crash
            r.problems.append(f"view key {k.hex()}: undecodable ({e})")
    return views


# ---------------------------------------------------------------- one key at a time


def _check_key(tx: Tx, r: Report, seen: _Seen, k: bytes, raw: bytes) -> None:
    """The checks that need only this key (and the views): its kind, length,
    view, and what its kind's checker says."""
    p = keys.prefix_of(k)
    if p is None:
        r.problems.append(f"key {k.hex()}: unknown prefix {keys.tag_of(k)!r} "
                          "(not in the key table)")
        return
    if len(k) < p.min_len or (p.max_len is not None and len(k) > p.max_len):
        r.problems.append(f"{p.name} key {k.hex()}: {len(k)} bytes do not fit its layout "
                          f"{p.layout}")
        return
    if p.scope == "view" and keys.parse_view_id(k) not in seen.views:
        if p is not keys.VIEW:  # an undecodable definition is reported by _load_views
            r.problems.append(f"{p.name} key {k.hex()} in missing view "
                              f"{keys.parse_view_id(k)}")
        return
    checker = _KEY_CHECKS.get(p.tag)
    if checker is not None:
        checker(tx, r, seen, k, raw)


def _check_meta_key(tx: Tx, r: Report, seen: _Seen, k: bytes, raw: bytes) -> None:
    name = keys.parse_meta(k)
    if name not in keys.META_NAMES:
        r.problems.append(f"unknown metadata key {name!r}")
    elif name == "next_view" and tx.store.next_view <= max(seen.views):
        r.problems.append(f"metadata next_view {tx.store.next_view} is not above view "
                          f"{max(seen.views)}")


def _check_pin(tx: Tx, r: Report, seen: _Seen, k: bytes, raw: bytes) -> None:
    vid, epoch, holder = keys.parse_pin(k)
    seen.pins.setdefault(vid, set()).add((epoch, holder))
    if epoch >= seen.now:
        r.problems.append(f"pin on view {vid} at future epoch {epoch} (now {seen.now})")
    held = keys.parse_holder(holder)
    if held is None:
        r.problems.append(f"pin on view {vid} (epoch {epoch}) has a holder of no known "
                          f"kind: {holder!r}")
    elif held[0] == "view" and held[1] not in seen.views:
        r.problems.append(f"pin on view {vid} held by missing view {held[1]} ({holder!r})")


def _check_snapshot(tx: Tx, r: Report, seen: _Seen, k: bytes, raw: bytes) -> None:
    vid, dir_local, name = keys.parse_snapshot(k)
    if not seen.live(vid):
        return
    where = f"snapshot {name!r} of directory {dir_local} in view {vid}"
    sv = _view_named_by(r, seen, where, raw)
    if sv is not None and (sv.kind != "snapshot" or sv.container != vid
                           or sv.root != dir_local):
        r.problems.append(f"{where} names view {sv.id}, a {sv.kind} of directory {sv.root} "
                          f"contained by {sv.container}")


def _view_named_by(r: Report, seen: _Seen, where: str, raw: bytes) -> ViewDef | None:
    """The existing view a u32 value names; None (and the problem said) if none."""
    if len(raw) != 4:
        r.problems.append(f"{where}: value {raw.hex()} is not a view id")
        return None
    v = seen.views.get(keys.read_u32(raw))
    if v is None:
        r.problems.append(f"{where} names missing view {keys.read_u32(raw)}")
    return v


def _check_orphan_key(tx: Tx, r: Report, seen: _Seen, k: bytes, raw: bytes) -> None:
    vid, local = keys.parse_orphan(k)
    seen.orphans.setdefault(vid, set()).add(local)


def _check_staged_key(tx: Tx, r: Report, seen: _Seen, k: bytes, raw: bytes) -> None:
    vid, local = keys.parse_staged(k)
    seen.staged.setdefault(vid, set()).add(local)


def _check_record(tx: Tx, r: Report, seen: _Seen, k: bytes, raw: bytes) -> None:
    r.records += 1
    if keys.parse_record(k)[2] == KIND_ATTR:
        seen.attrs += 1
    b = birth_of(k)
    if b > seen.now:
        r.problems.append(f"record {k.hex()} born at {b}, after now ({seen.now})")
    last = seen.last_record
    if last and keys.version_base(k) == keys.version_base(last) and birth_of(last) <= b:
        r.problems.append(f"record {k.hex()}: versions out of order")
    seen.last_record = k


def _check_contained(tx: Tx, r: Report, seen: _Seen, k: bytes, raw: bytes) -> None:
    vid, inner = keys.parse_contained(k)
    seen.contained.add((vid, inner))
    if not seen.live(vid):
        return  # a dead view's containment goes with it
    iv = seen.views.get(inner)
    if iv is None:
        r.problems.append(f"view {vid} contains missing view {inner}")
    elif iv.container != vid:
        r.problems.append(f"view {vid} contains view {inner}, whose container is "
                          f"{iv.container}")
    elif iv.kind == "dead":
        r.problems.append(f"live view {vid} still contains dead view {inner}")


def _check_nested_copy(tx: Tx, r: Report, seen: _Seen, k: bytes, raw: bytes) -> None:
    vid, inner = keys.parse_nested_copy(k)
    where = f"view {vid}'s copy of nested view {inner}"
    if not seen.live(vid):
        # A dead view still pinned is read through as an origin, and reads
        # look its copies up: gc drops the key with the copy.
        if vid in seen.views:
            _view_named_by(r, seen, where, raw)
        return
    if inner not in seen.views:
        r.problems.append(f"{where}: view {inner} is missing")
    copy = _view_named_by(r, seen, where, raw)
    if copy is not None and copy.container != vid:
        r.problems.append(f"{where} is view {copy.id}, contained by {copy.container}")


_KEY_CHECKS = {
    keys.META.tag: _check_meta_key,
    keys.PIN.tag: _check_pin,
    keys.SNAPSHOT.tag: _check_snapshot,
    keys.ORPHAN.tag: _check_orphan_key,
    keys.STAGED.tag: _check_staged_key,
    keys.RECORD.tag: _check_record,
    keys.CONTAINED.tag: _check_contained,
    keys.NESTED_COPY.tag: _check_nested_copy,
}


# ---------------------------------------------------------------- across keys


def _check_views(tx: Tx, r: Report, seen: _Seen) -> None:
    views, now = seen.views, seen.now
    for vid, v in views.items():
        if v.kind == "dead" and not seen.pins.get(vid):
            # Garbage awaiting gc: nothing can reach it, and gc may already have
            # dropped the views it read through to (they went first once this
            # one let go of them; each drop is its own transaction). It must
            # be queued, or nothing would ever reclaim it.
            if tx.txn.get(keys.gc_queue(vid)) is None:
                r.problems.append(f"view {vid} is dead and unpinned but not queued for gc")
            continue
        for ovid, limit in v.chain:
            if ovid not in views:
                r.problems.append(f"view {vid}: origin view {ovid} is missing")
            elif limit >= now:
                r.problems.append(f"view {vid}: origin {ovid} limit {limit} not in the past")
        if v.kind == "dead":
            continue
        for origin, limit in v.chain:
            if (limit, keys.view_holder(vid)) not in seen.pins.get(origin, set()):
                r.problems.append(f"view {vid}: holds no pin on chain level {origin}@{limit}")
        if vid == ROOT_VIEW:
            continue
        if (v.container, vid) not in seen.contained:
            r.problems.append(f"view {vid}: its container {v.container} does not list it "
                              "as contained")
        if not seen.live(v.container):
            r.problems.append(f"live view {vid} is contained by dead or missing view "
                              f"{v.container}")


def _check_turn_holders(tx: Tx, r: Report, seen: _Seen) -> None:
    """A turn holder t<view> pins for the turns of the agent of `view`: that
    view must still have turn records, or the history that forks read them by."""
    holders = {h for pins in seen.pins.values() for _, h in pins}
    for holder in sorted(holders):
        held = keys.parse_holder(holder)
        if held is None or held[0] != "turns":
            continue
        vid = held[1]
        has_turns = tx.txn.first(*keys.span(keys.turn_prefix(vid))) is not None
        if not has_turns and tx.txn.get(keys.history(vid)) is None:
            r.problems.append(f"pins held for the turns of view {vid} ({holder!r}), which "
                              "has no turn records and no history")


def _check_orphans(tx: Tx, r: Report, vid: int, orphans: set[int]) -> None:
    for local in sorted(orphans):
        raw = tx.get(vid, attr_suffix(local))
        if raw is None:
            r.problems.append(f"view {vid}: orphan {local} has no attributes")
        elif Attr.decode(raw).nlink != 0:
            r.problems.append(f"view {vid}: orphan {local} still has nlink "
                              f"{Attr.decode(raw).nlink}")


def _check_staged(tx: Tx, r: Report, vid: int, staged: set[int]) -> list[int]:
    """The staged imports of a live view that name directories (the others said)."""
    roots = []
    for local in sorted(staged):
        raw = tx.get(vid, attr_suffix(local))
        if raw is None:
            r.problems.append(f"view {vid}: staged import {local} has no attributes")
        elif not Attr.decode(raw).is_dir:
            r.problems.append(f"view {vid}: staged import {local} is not a directory")
        else:
            roots.append(local)
    return roots


def _check_tree(tx: Tx, r: Report, vid: int, v: ViewDef, views: dict[int, ViewDef],
                orphans: set[int], staged: list[int]) -> None:
    links: dict[int, int] = {}
    seen: set[int] = set()
    # A staged import's directory is a tree of its own until it is linked in.
    stack: list[tuple[int, int | None]] = [(v.root, None), *((s, None) for s in staged)]
    while stack:
        local, parent = stack.pop()
        if local in seen:
            r.problems.append(f"view {vid}: directory {local} reached twice (a loop)")
            continue
        seen.add(local)
        raw = tx.get(vid, attr_suffix(local))
        if raw is None:
            r.problems.append(f"view {vid}: directory inode {local} has no attributes")
            continue
        d = Attr.decode(raw)
        r.inodes += 1
        if parent is not None and (d.parent_view or vid, d.parent_local) != (vid, parent):
            r.problems.append(f"view {vid}: directory {local} says its parent is "
                              f"{d.parent_view}/{d.parent_local}, but it is in {parent}")
        subdirs = 0
        for sub, draw in tx.scan(vid, dentry_dir_suffix(local)):
            h, name = keys.parse_dentry_tail(sub)
            if h != keys.name_hash(name):
                r.problems.append(f"view {vid}: entry {name!r} in {local} has a wrong hash")
            tview, tlocal, ttype = decode_dentry(draw)
            where = f"view {vid}: entry {name!r} in directory {local}"
            if tview:
                subdirs += 1
                _check_cross(tx, r, vid, tview, tlocal, where, views)
                continue
            traw = tx.get(vid, attr_suffix(tlocal))
            if traw is None:
                r.problems.append(f"{where} leads to missing inode {tlocal}")
                continue
            t = Attr.decode(traw)
            if stat.S_IFMT(t.mode) != ttype:
                r.problems.append(f"{where}: type {ttype:o} but inode is {stat.S_IFMT(t.mode):o}")
            if t.is_dir:
                subdirs += 1
                stack.append((tlocal, local))
                continue
            if tlocal not in links:
                r.inodes += 1
                _check_file(tx, r, vid, tlocal, t, where)
            links[tlocal] = links.get(tlocal, 0) + 1
        if d.nlink != 2 + subdirs:
            r.problems.append(f"view {vid}: directory {local} has nlink {d.nlink}, "
                              f"expected {2 + subdirs}")
    for tlocal, n in links.items():
        t = Attr.decode(tx.get(vid, attr_suffix(tlocal)))  # type: ignore[arg-type]
        exact = vid == ROOT_VIEW
        if (exact and t.nlink != n) or t.nlink < n:
            r.problems.append(f"view {vid}: inode {tlocal} has nlink {t.nlink}, "
                              f"but {n} entries lead to it")
    if vid == ROOT_VIEW:
        _check_unreachable(tx, r, vid, seen | set(links) | orphans)


def _check_cross(tx: Tx, r: Report, vid: int, tview: int, tlocal: int, where: str,
                 views: dict[int, ViewDef]) -> None:
    t = views.get(tview)
    if t is None:
        r.problems.append(f"{where} leads into missing view {tview}")
        return
    own = t.container == vid
    if own and t.kind == "dead":
        r.problems.append(f"{where} leads into dead view {tview}")
    if t.root != tlocal:
        r.problems.append(f"{where} leads to inode {tlocal}, not the root of view {tview}")
    copied = tx.txn.get(keys.nested_copy(vid, tview)) is not None
    if not own and not copied and not any(ovid == t.container for ovid, _ in views[vid].chain):
        # An entry inherited from an origin leads into a view that origin contains.
        r.problems.append(f"{where} leads into view {tview} contained by {t.container}")


def _check_file(tx: Tx, r: Report, vid: int, local: int, a: Attr, where: str) -> None:
    if a.is_link and a.target is None:
        r.problems.append(f"{where}: symlink without a target")
    has_log = next(tx.scan(vid, keys.log_dir_suffix(local)), None) is not None
    if a.flags & codec.FLAG_LOG:
        r.problems.extend(logdata.check(tx, vid, local, a, where))
        if next(tx.scan(vid, block_dir_suffix(local)), None) is not None:
            r.problems.append(f"{where}: a log file with data blocks")
        return
    if has_log:
        r.problems.append(f"{where}: log records in a file that is not a log")
    stored = 0
    for sub, raw in tx.scan(vid, block_dir_suffix(local)):
        bno = keys.parse_block_tail(sub)
        stored += len(raw)
        if bno * BLOCK_SIZE >= max(a.size, 1) and raw:
            r.problems.append(f"{where}: block {bno} lies past the end (size {a.size})")
        elif len(raw) > BLOCK_SIZE or bno * BLOCK_SIZE + len(raw) > a.size:
            r.problems.append(f"{where}: block {bno} holds {len(raw)} bytes, past size {a.size}")
    if stored != a.stored:
        r.problems.append(f"{where}: stored counter {a.stored} but blocks hold {stored} bytes")


def _check_unreachable(tx: Tx, r: Report, vid: int, accounted: set[int]) -> None:
    """Every inode of the view is reachable from its root or an orphan."""
    for sub, raw in tx.scan(vid, b""):
        local, kind = keys.parse_suffix(sub)
        if kind == KIND_ATTR and local not in accounted:
            r.problems.append(f"view {vid}: inode {local} is unreachable and not an orphan "
                              f"(nlink {Attr.decode(raw).nlink})")
