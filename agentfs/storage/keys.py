"""The key schema: every key agentfs stores, its builder and its parser.

This module is the one owner of the keyspace. Nothing else writes a prefix
byte or reads a key at an offset: gc sweeps a dead view by iterating `TABLE`,
fsck checks that every stored key belongs to an entry of it, and a test fails
on any key literal outside this file.

All keys:

    M<name>                                  global metadata (msgpack): format, epoch, next_view
    V<view:4>                                a view's definition (codec.ViewDef)
    P<view:4><epoch:8><holder>               a pin: `holder` needs `view` as it was at `epoch`
    S<view:4><dir:8><name>                   snapshot NAME of directory `dir` -> u32 snapshot view
    O<view:4><ino:8>                         an orphan: nlink 0, still open
    I<view:4><ino:8>                         a staged import: directory `ino` is being filled
                                             by `import` and no entry leads to it yet
    R<view:4><ino:8><kind:1><sub><~epoch:8>  a versioned record of inode `ino`
    G<view:4>                                gc queue: versions of `view` may have become garbage
    C<view:4><inner:4>                       view `inner` is nested in (contained by) `view`
    m<view:4><inner:4>                       -> u32: `view`'s own copy of nested view `inner`
    A<name>                                  an agent (agents.model.Agent)
    a<view:4>                                -> name of the agent whose view this is
    T<view:4><turn:4>                        -> [epoch, transcript bytes]: turn N of `view`'s agent
    Q<view:4>                                -> u64: next inbox sequence number of `view`'s agent
    H<view:4>                                -> [FORMAT, origin_view, origin_turn]: lineage of an
                                             agent view, kept while forks still need its turns
    E<seq:8>                                 -> [FORMAT, offset, line]: event `seq` of the mount's
                                             stream (.agentfs/events), its byte offset and line
    N                                        -> [FORMAT, next_seq, next_offset, first_seq,
                                             retained_bytes, keep_events, keep_bytes]: the
                                             event stream's head, window and its limits

Record kinds (the <kind> of an R key):

    a                                        attributes (codec.Attr)
    d<hash:8><name>\\0                        directory entry (codec dentry)
    b<block:8>                               data block
    l<end:8>                                 log append, keyed by the offset where it ends
    x<name>\\0                                extended attribute

Versioned records end with the bitwise-inverted epoch in which they were
written (their birth), so for one record the newest version sorts first and a
seek to `base + ~limit` lands on the newest version born at or before `limit`.

Pin holders (the <holder> of a P key):

    v<view:4>                                view `view` reads through the pinned view
    t<view:4>                                the turns of the agent whose view is `view`

Keys scoped to a view (scope "view") carry the u32 view id right after the
tag: when gc drops a dead view, every key of every such prefix for it goes.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from agentfs.storage.kv import prefix_end

# ---------------------------------------------------------------- fixed-width integers

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
EPOCH_MAX = (1 << 64) - 1


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u32(b: bytes, off: int = 0) -> int:
    return int(_U32.unpack_from(b, off)[0])


def read_u64(b: bytes, off: int = 0) -> int:
    return int(_U64.unpack_from(b, off)[0])


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Prefix:
    """One kind of key: the byte it starts with and what follows."""

    tag: bytes
    name: str
    layout: str
    owner: str  # the module that writes these keys
    scope: str  # "global", or "view": the u32 view id follows the tag
    doc: str

    @property
    def min_len(self) -> int:
        """Bytes of the tag and of the fixed-width fields (`<view:4>`) of the layout."""
        return 1 + sum(int(n) for n in re.findall(r"<[^>:]+:(\d+)>", self.layout))

    @property
    def max_len(self) -> int | None:
        """None when the layout has a field of any length (`<name>`, `<holder>`)."""
        return None if re.search(r"<[^>:]+>", self.layout) else self.min_len

    def span(self) -> tuple[bytes, bytes]:
        """Scan range of every key of this kind."""
        return span(self.tag)

    def of_view(self, view: int) -> bytes:
        """Prefix of every key of this kind that belongs to `view`."""
        assert self.scope == "view", f"{self.name} keys are not per view"
        return self.tag + u32(view)


_VIEWS = "agentfs.storage.views"
_FS = "agentfs.posix.fs"
_AGENTS = "agentfs.agents.model"
_EVENTS = "agentfs.storage.eventlog"

META = Prefix(b"M", "meta", "M<name>", _VIEWS, "global",
              "store metadata (msgpack): format, epoch, next_view")
VIEW = Prefix(b"V", "view", "V<view:4>", _VIEWS, "view", "a view's definition (ViewDef)")
PIN = Prefix(b"P", "pin", "P<view:4><epoch:8><holder>", _VIEWS, "view",
             "`holder` needs `view` as it was at `epoch`")
SNAPSHOT = Prefix(b"S", "snapshot", "S<view:4><dir:8><name>", _FS, "view",
                  "snapshot NAME of directory `dir` -> u32 snapshot view")
ORPHAN = Prefix(b"O", "orphan", "O<view:4><ino:8>", _FS, "view",
                "an inode with nlink 0 that is still open")
STAGED = Prefix(b"I", "staged import", "I<view:4><ino:8>", _FS, "view",
                "directory `ino` is being filled by an import and no entry leads to it "
                "yet; freed with its tree at mount if the import never finished")
RECORD = Prefix(b"R", "record", "R<view:4><ino:8><kind:1><sub><~epoch:8>", _VIEWS, "view",
                "a versioned record of an inode")
GC_QUEUE = Prefix(b"G", "gc queue", "G<view:4>", "agentfs.storage.gc", "view",
                  "gc should look at `view`: versions may have become garbage")
CONTAINED = Prefix(b"C", "contained", "C<view:4><inner:4>", _FS, "view",
                   "view `inner` is nested in `view` (inner.container == view)")
NESTED_COPY = Prefix(b"m", "nested copy", "m<view:4><inner:4>", _FS, "view",
                     "-> u32: `view`'s lazily made copy of nested view `inner`")
AGENT = Prefix(b"A", "agent", "A<name>", _AGENTS, "global", "an agent record")
AGENT_OF_VIEW = Prefix(b"a", "agent of view", "a<view:4>", _AGENTS, "view",
                       "-> name of the agent whose view this is")
TURN = Prefix(b"T", "turn", "T<view:4><turn:4>", _AGENTS, "view",
              "-> [epoch, transcript bytes] of one turn of the agent of `view`")
INBOX_SEQ = Prefix(b"Q", "inbox sequence", "Q<view:4>", _AGENTS, "view",
                   "-> u64: the next inbox sequence number of the agent of `view`")
HISTORY = Prefix(b"H", "history", "H<view:4>", _AGENTS, "view",
                 "-> [FORMAT, origin_view, origin_turn]: lineage of an agent view")

EVENT = Prefix(b"E", "event", "E<seq:8>", _EVENTS, "global",
               "-> [FORMAT, offset, line]: one line of the mount's event stream")
EVENT_HEAD = Prefix(b"N", "event stream", "N", _EVENTS, "global",
                    "-> [FORMAT, next_seq, next_offset, first_seq, retained_bytes, keep_events, "
                    "keep_bytes]")

TABLE: tuple[Prefix, ...] = (META, VIEW, PIN, SNAPSHOT, ORPHAN, STAGED, RECORD, GC_QUEUE,
                             CONTAINED, NESTED_COPY, AGENT, AGENT_OF_VIEW, TURN, INBOX_SEQ, HISTORY,
                             EVENT, EVENT_HEAD)
VIEW_SCOPED: tuple[Prefix, ...] = tuple(p for p in TABLE if p.scope == "view")
_BY_TAG = {p.tag: p for p in TABLE}
META_NAMES = ("format", "epoch", "next_view")


def tag_of(key: bytes) -> bytes:
    return key[:1]


def prefix_of(key: bytes) -> Prefix | None:
    """The table entry `key` belongs to (None: a key of no known kind)."""
    return _BY_TAG.get(tag_of(key))


def span(prefix: bytes) -> tuple[bytes, bytes]:
    """(start, end) to scan every key that starts with `prefix`."""
    return prefix, prefix_end(prefix)


def parse_view_id(key: bytes) -> int:
    """The view a per-view key (any scope="view" prefix) belongs to."""
    return read_u32(key, 1)


# ---------------------------------------------------------------- metadata and views


def meta(name: str) -> bytes:
    return META.tag + name.encode()


def parse_meta(key: bytes) -> str:
    return key[1:].decode(errors="replace")


def view_def(view: int) -> bytes:
    return VIEW.of_view(view)


# ---------------------------------------------------------------- pins and holders

_VIEW_HOLDER = b"v"
_TURN_HOLDER = b"t"
HOLDER_KINDS = {_VIEW_HOLDER: "view", _TURN_HOLDER: "turns"}


def pin_prefix(view: int) -> bytes:
    return PIN.of_view(view)


def pin_at(view: int, epoch: int) -> bytes:
    """Prefix of every pin on `view` at `epoch`, whoever holds it."""
    return PIN.of_view(view) + u64(epoch)


def pin(view: int, epoch: int, holder: bytes) -> bytes:
    return PIN.of_view(view) + u64(epoch) + holder


def parse_pin(key: bytes) -> tuple[int, int, bytes]:
    """(view, epoch, holder) of a pin key."""
    return read_u32(key, 1), read_u64(key, 5), key[13:]


def view_holder(view: int) -> bytes:
    """The holder of the pins a view holds on the levels it reads through to."""
    return _VIEW_HOLDER + u32(view)


def turn_holder(view: int) -> bytes:
    """The holder of an agent's per-turn pins (on its view and the views nested in it)."""
    return _TURN_HOLDER + u32(view)


def parse_holder(holder: bytes) -> tuple[str, int] | None:
    """("view" | "turns", view id) of a holder, or None for a holder of no known kind."""
    kind = HOLDER_KINDS.get(holder[:1])
    if kind is None or len(holder) != 5:
        return None
    return kind, read_u32(holder, 1)


# ---------------------------------------------------------------- the POSIX model's keys


def snapshot_prefix(view: int, dir_local: int) -> bytes:
    return SNAPSHOT.of_view(view) + u64(dir_local)


def snapshot(view: int, dir_local: int, name: bytes) -> bytes:
    return snapshot_prefix(view, dir_local) + name


def parse_snapshot(key: bytes) -> tuple[int, int, bytes]:
    """(view, directory's local inode, snapshot name) of a snapshot key."""
    return read_u32(key, 1), read_u64(key, 5), key[13:]


def orphan(view: int, local: int) -> bytes:
    return ORPHAN.of_view(view) + u64(local)


def parse_orphan(key: bytes) -> tuple[int, int]:
    """(view, local inode) of an orphan key."""
    return read_u32(key, 1), read_u64(key, 5)


def staged(view: int, local: int) -> bytes:
    return STAGED.of_view(view) + u64(local)


def parse_staged(key: bytes) -> tuple[int, int]:
    """(view, local inode of the staged directory) of a staged-import key."""
    return read_u32(key, 1), read_u64(key, 5)


def gc_queue(view: int) -> bytes:
    return GC_QUEUE.of_view(view)


def contained_prefix(view: int) -> bytes:
    return CONTAINED.of_view(view)


def contained(view: int, inner: int) -> bytes:
    return CONTAINED.of_view(view) + u32(inner)


def parse_contained(key: bytes) -> tuple[int, int]:
    """(container view, inner view) of a C key."""
    return read_u32(key, 1), read_u32(key, 5)


def nested_copy_prefix(view: int) -> bytes:
    return NESTED_COPY.of_view(view)


def nested_copy(view: int, inner: int) -> bytes:
    return NESTED_COPY.of_view(view) + u32(inner)


def parse_nested_copy(key: bytes) -> tuple[int, int]:
    """(view, nested view it copied) of an m key (the value is the copy's u32 id)."""
    return read_u32(key, 1), read_u32(key, 5)


# ---------------------------------------------------------------- versioned records

KIND_ATTR = b"a"
KIND_DENTRY = b"d"
KIND_BLOCK = b"b"
KIND_XATTR = b"x"
KIND_LOG = b"l"
RECORD_KINDS = (KIND_ATTR, KIND_DENTRY, KIND_BLOCK, KIND_XATTR, KIND_LOG)
_INO = 8  # bytes of the local inode number at the start of a record suffix
_BIRTH = 8  # bytes of the inverted birth epoch at the end of a record key


def rec_prefix(view: int) -> bytes:
    return RECORD.of_view(view)


def record(view: int, suffix: bytes) -> bytes:
    """Every version of record `suffix` of `view` starts with this."""
    return RECORD.of_view(view) + suffix


def record_version(view: int, suffix: bytes, birth: int) -> bytes:
    """The version of a record born at epoch `birth`."""
    return record(view, suffix) + inv(birth)


def inv(epoch: int) -> bytes:
    return _U64.pack(EPOCH_MAX - epoch)


def birth_of(key: bytes) -> int:
    """The epoch a record version was born in (the end of its key)."""
    return EPOCH_MAX - read_u64(key, len(key) - _BIRTH)


def version_base(key: bytes) -> bytes:
    """A record version's key without its birth: the same for every version."""
    return key[:-_BIRTH]


def version_tail(key: bytes, base: bytes) -> bytes:
    """The part of a record version's key between `base` and the birth epoch."""
    return key[len(base):-_BIRTH]


def parse_record(key: bytes) -> tuple[int, int, bytes]:
    """(view, local inode, kind) of a record version's key."""
    return read_u32(key, 1), read_u64(key, 5), key[13:14]


def inode_prefix(key: bytes) -> bytes:
    """R<view><ino>: the prefix of every record of the inode `key` belongs to."""
    return key[:5 + _INO]


def parse_suffix(sub: bytes) -> tuple[int, bytes]:
    """(local inode, kind) of a record suffix (a record key after R<view>)."""
    return read_u64(sub), sub[_INO:_INO + 1]


def name_hash(name: bytes) -> int:
    """Stable 62-bit hash of a directory entry name; readdir offsets are these.

    Offsets below 16 are reserved (0 = start, 1-2 for '.' and '..', the rest
    for entries the daemon adds), so hashes start at 16.
    """
    h = int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big") >> 2
    return h if h >= 16 else h + 16


def ino_suffix(local: int) -> bytes:
    return u64(local)


def attr_suffix(local: int) -> bytes:
    return u64(local) + KIND_ATTR


def dentry_dir_suffix(local: int) -> bytes:
    return u64(local) + KIND_DENTRY


def dentry_suffix(local: int, name: bytes) -> bytes:
    return u64(local) + KIND_DENTRY + u64(name_hash(name)) + name + b"\0"


def parse_dentry_tail(sub: bytes) -> tuple[int, bytes]:
    """(name hash, name) of a directory entry, from its key after `dentry_dir_suffix`."""
    return read_u64(sub), sub[8:-1]


def block_dir_suffix(local: int) -> bytes:
    return u64(local) + KIND_BLOCK


def block_suffix(local: int, blockno: int) -> bytes:
    return u64(local) + KIND_BLOCK + u64(blockno)


def parse_block_tail(sub: bytes) -> int:
    """The block number, from a block's key after `block_dir_suffix`."""
    return read_u64(sub)


def log_dir_suffix(local: int) -> bytes:
    return u64(local) + KIND_LOG


def log_suffix(local: int, end: int) -> bytes:
    """One append of a log file, keyed by the offset where it ends."""
    return u64(local) + KIND_LOG + u64(end)


def parse_log_tail(sub: bytes) -> int:
    """The end offset of a log append, from its key after `log_dir_suffix`."""
    return read_u64(sub)


def xattr_dir_suffix(local: int) -> bytes:
    return u64(local) + KIND_XATTR


def xattr_suffix(local: int, name: bytes) -> bytes:
    return u64(local) + KIND_XATTR + name + b"\0"


def parse_xattr_tail(sub: bytes) -> bytes:
    """The attribute name, from an xattr's key after `xattr_dir_suffix`."""
    return sub[:-1]


# ---------------------------------------------------------------- the agent layer's keys


def agent(name: str | bytes) -> bytes:
    return AGENT.tag + (name.encode() if isinstance(name, str) else name)


def agent_span() -> tuple[bytes, bytes]:
    return AGENT.span()


def parse_agent(key: bytes) -> str:
    """The agent name of an A key."""
    return key[1:].decode()


def agent_of_view(view: int) -> bytes:
    return AGENT_OF_VIEW.of_view(view)


def turn_prefix(view: int) -> bytes:
    return TURN.of_view(view)


def turn(view: int, n: int) -> bytes:
    return TURN.of_view(view) + u32(n)


def parse_turn(key: bytes) -> tuple[int, int]:
    """(view, turn number) of a T key."""
    return read_u32(key, 1), read_u32(key, 5)


def inbox_seq(view: int) -> bytes:
    return INBOX_SEQ.of_view(view)


def history(view: int) -> bytes:
    return HISTORY.of_view(view)


# ---------------------------------------------------------------- the event stream's keys


def event(seq: int) -> bytes:
    return EVENT.tag + u64(seq)


def event_span() -> tuple[bytes, bytes]:
    return EVENT.span()


def parse_event(key: bytes) -> int:
    """The sequence number of an E key."""
    return read_u64(key, 1)


def event_head() -> bytes:
    return EVENT_HEAD.tag
