"""fsck: check every invariant of a store and say exactly what is wrong.

Used by `agentfs fsck` and, as an oracle, after every unit test. It reads one
consistent LMDB snapshot, so it may run while the daemon is serving.

Invariants checked:
- metadata present; every record, pin, view and queue key decodes;
- no version is born after the current epoch;
- views: origin chains name existing views, each live fork/snapshot holds a
  pin on its origin at its fork epoch, pins are held by existing views;
- the tree of every live view, walked from its root: entries lead to inodes
  of the type they claim, directories point back at their parent, directory
  link counts are 2 + subdirectories, file link counts match the entries
  (exactly in the root view; at least in forks, where a hard link may lead
  outside the forked subtree), symlinks have targets;
- file data: no block past the end of a file, none longer than the block
  size or the file, the stored-bytes counter (st_blocks) equals the blocks;
  log files (transcripts) hold contiguous, decodable appends from 0 to their
  size and nothing else;
- root view: every inode is reachable or an orphan; orphans have nlink 0;
- entries that lead into another view lead to that view's root, and that view
  is alive and contained here.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from agentfs.posix import logdata
from agentfs.posix.fs import BLOCK_SIZE
from agentfs.storage import codec
from agentfs.storage.codec import (
    KIND_ATTR,
    ROOT_VIEW,
    Attr,
    ViewDef,
    attr_suffix,
    birth_of,
    block_dir_suffix,
    decode_dentry,
    dentry_dir_suffix,
    u32,
)
from agentfs.storage.kv import Engine, prefix_end
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


def check_store(engine: Engine) -> Report:
    store = Store(engine)
    r = Report()
    with store.read() as tx:
        _check(tx, r)
    return r


def _check(tx: Tx, r: Report) -> None:
    txn = tx.txn
    now = tx.store.epoch
    views: dict[int, ViewDef] = {}
    for k, raw in txn.scan(b"V", b"W"):
        try:
            views[codec.read_u32(k, 1)] = ViewDef.decode(codec.read_u32(k, 1), raw)
        except Exception as e:  # noqa: BLE001 - report, don't crash
            r.problems.append(f"view key {k.hex()}: undecodable ({e})")
    r.views = len(views)
    if ROOT_VIEW not in views:
        r.problems.append("root view is missing")
        return
    pins: dict[int, set[tuple[int, bytes]]] = {}
    for k, _ in txn.scan(b"P", b"Q"):
        vid, epoch, holder = codec.read_u32(k, 1), codec.read_u64(k, 5), k[13:]
        pins.setdefault(vid, set()).add((epoch, holder))
        if vid not in views:
            r.problems.append(f"pin on missing view {vid} (epoch {epoch}, holder {holder!r})")
        if epoch >= now:
            r.problems.append(f"pin on view {vid} at future epoch {epoch} (now {now})")
        if holder[:1] == b"v" and codec.read_u32(holder, 1) not in views:
            r.problems.append(f"pin on view {vid} held by missing view {holder!r}")
    for vid, v in views.items():
        for ovid, limit in v.chain:
            if ovid not in views:
                r.problems.append(f"view {vid}: origin view {ovid} is missing")
            elif limit >= now:
                r.problems.append(f"view {vid}: origin {ovid} limit {limit} not in the past")
        if v.kind != "dead":
            for origin, limit in v.chain:
                if (limit, b"v" + u32(vid)) not in pins.get(origin, set()):
                    r.problems.append(f"view {vid}: holds no pin on chain level {origin}@{limit}")
    for k, _ in txn.scan(b"G", b"H"):
        if codec.read_u32(k, 1) not in views:
            r.problems.append(f"gc queue names missing view {codec.read_u32(k, 1)}")
    # Raw records: decodable key, existing view, born in the past.
    last = b""
    for k, _ in txn.scan(b"R", b"S"):
        r.records += 1
        vid = codec.read_u32(k, 1)
        if vid not in views:
            r.problems.append(f"record {k.hex()} in missing view {vid}")
        b = birth_of(k)
        if b > now:
            r.problems.append(f"record {k.hex()} born at {b}, after now ({now})")
        if k[:-8] == last[:-8] and birth_of(last) <= b:
            r.problems.append(f"record {k.hex()}: versions out of order")
        last = k
    for vid, v in views.items():
        if v.kind == "dead":
            continue
        root = tx.get(vid, attr_suffix(v.root))
        if root is not None and Attr.decode(root).nlink == 0 and vid != ROOT_VIEW:
            continue  # a removed fork root the kernel has not forgotten yet
        _check_tree(tx, r, vid, v, views)


def _check_tree(tx: Tx, r: Report, vid: int, v: ViewDef,
                views: dict[int, ViewDef]) -> None:
    links: dict[int, int] = {}
    seen: set[int] = set()
    stack: list[tuple[int, int | None]] = [(v.root, None)]
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
            name = sub[8:-1]
            if codec.read_u64(sub) != codec.name_hash(name):
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
        _check_unreachable(tx, r, vid, seen | set(links))


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
    copied = tx.txn.get(b"m" + u32(vid) + u32(tview)) is not None
    if not own and not copied and not any(ovid == t.container for ovid, _ in views[vid].chain):
        # An entry inherited from an origin leads into a view that origin contains.
        r.problems.append(f"{where} leads into view {tview} contained by {t.container}")


def _check_file(tx: Tx, r: Report, vid: int, local: int, a: Attr, where: str) -> None:
    if a.is_link and a.target is None:
        r.problems.append(f"{where}: symlink without a target")
    has_log = next(tx.scan(vid, codec.log_dir_suffix(local)), None) is not None
    if a.flags & codec.FLAG_LOG:
        r.problems.extend(logdata.check(tx, vid, local, a, where))
        if next(tx.scan(vid, block_dir_suffix(local)), None) is not None:
            r.problems.append(f"{where}: a log file with data blocks")
        return
    if has_log:
        r.problems.append(f"{where}: log records in a file that is not a log")
    stored = 0
    for sub, raw in tx.scan(vid, block_dir_suffix(local)):
        bno = codec.read_u64(sub)
        stored += len(raw)
        if bno * BLOCK_SIZE >= max(a.size, 1) and raw:
            r.problems.append(f"{where}: block {bno} lies past the end (size {a.size})")
        elif len(raw) > BLOCK_SIZE or bno * BLOCK_SIZE + len(raw) > a.size:
            r.problems.append(f"{where}: block {bno} holds {len(raw)} bytes, past size {a.size}")
    if stored != a.stored:
        r.problems.append(f"{where}: stored counter {a.stored} but blocks hold {stored} bytes")


def _check_unreachable(tx: Tx, r: Report, vid: int, reachable: set[int]) -> None:
    orphans = {codec.read_u64(k, 5) for k, _ in tx.txn.scan(b"O" + u32(vid),
                                                             prefix_end(b"O" + u32(vid)))}
    for local in orphans:
        raw = tx.get(vid, attr_suffix(local))
        if raw is not None and Attr.decode(raw).nlink != 0:
            r.problems.append(f"orphan {local} still has nlink {Attr.decode(raw).nlink}")
    for sub, raw in tx.scan(vid, b""):
        if sub[8:9] != KIND_ATTR:
            continue
        local = codec.read_u64(sub)
        if local not in reachable and local not in orphans:
            r.problems.append(f"view {vid}: inode {local} is unreachable and not an orphan "
                              f"(nlink {Attr.decode(raw).nlink})")
