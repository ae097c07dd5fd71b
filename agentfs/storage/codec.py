"""Key layout and record encoding.

Keys are built so that LMDB's byte order is the order we need:

    M<name>                                  global metadata (msgpack)
    V<view:4>                                a view's definition
    P<view:4><epoch:8><holder>               a pin: `holder` needs `view` as it was at `epoch`
    S<view:4><dir:8><name>                   snapshot NAME of directory `dir` -> snapshot view
    O<view:4><ino:8>                         an orphan: nlink 0, still open
    R<view:4><ino:8><kind><sub><~epoch:8>    a versioned record of inode `ino`

where `kind` is a (attributes), d (directory entry: name hash + name),
b (data block: block number), l (log append: end offset) or x (xattr: name).

Versioned records end with the bitwise-inverted epoch in which they were
written (their birth), so for one record the newest version sorts first and a
seek to `base + ~limit` lands on the newest version born at or before `limit`.

Values are msgpack arrays in a fixed field order, first field a format
version; a tombstone (the record was deleted at that epoch) is the empty value.
"""

from __future__ import annotations

import hashlib
import stat
import struct
from dataclasses import dataclass, field

import msgpack

FORMAT = 1
EPOCH_MAX = (1 << 64) - 1

KIND_ATTR = b"a"
KIND_DENTRY = b"d"
KIND_BLOCK = b"b"
KIND_XATTR = b"x"
KIND_LOG = b"l"

FLAG_LOG = 1
"""Attr.flags: the file is an append-only log (see logdata.py), not blocks."""

TOMBSTONE = b""

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

# A FUSE inode number packs (view, local inode): local numbers are 40 bits.
LOCAL_BITS = 40
LOCAL_MASK = (1 << LOCAL_BITS) - 1
ROOT_VIEW = 1
ROOT_LOCAL = 1


def fuse_ino(view: int, local: int) -> int:
    return ((view - 1) << LOCAL_BITS) | local


def split_ino(ino: int) -> tuple[int, int]:
    return (ino >> LOCAL_BITS) + 1, ino & LOCAL_MASK


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u32(b: bytes, off: int = 0) -> int:
    return int(_U32.unpack_from(b, off)[0])


def read_u64(b: bytes, off: int = 0) -> int:
    return int(_U64.unpack_from(b, off)[0])


def inv(epoch: int) -> bytes:
    return _U64.pack(EPOCH_MAX - epoch)


def birth_of(key: bytes) -> int:
    return EPOCH_MAX - read_u64(key, len(key) - 8)


def name_hash(name: bytes) -> int:
    """Stable 62-bit hash of a directory entry name; readdir offsets are these.

    Offsets below 16 are reserved (0 = start, 1-2 for '.' and '..', the rest
    for entries the daemon adds), so hashes start at 16.
    """
    h = int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big") >> 2
    return h if h >= 16 else h + 16


def meta_key(name: str) -> bytes:
    return b"M" + name.encode()


def view_key(view: int) -> bytes:
    return b"V" + u32(view)


def pin_prefix(view: int) -> bytes:
    return b"P" + u32(view)


def pin_key(view: int, epoch: int, holder: bytes) -> bytes:
    return b"P" + u32(view) + u64(epoch) + holder


def snap_prefix(view: int, dir_local: int) -> bytes:
    return b"S" + u32(view) + u64(dir_local)


def orphan_key(view: int, local: int) -> bytes:
    return b"O" + u32(view) + u64(local)


def rec_prefix(view: int) -> bytes:
    return b"R" + u32(view)


def ino_suffix(local: int) -> bytes:
    return u64(local)


def attr_suffix(local: int) -> bytes:
    return u64(local) + KIND_ATTR


def dentry_dir_suffix(local: int) -> bytes:
    return u64(local) + KIND_DENTRY


def dentry_suffix(local: int, name: bytes) -> bytes:
    return u64(local) + KIND_DENTRY + u64(name_hash(name)) + name + b"\0"


def block_suffix(local: int, blockno: int) -> bytes:
    return u64(local) + KIND_BLOCK + u64(blockno)


def block_dir_suffix(local: int) -> bytes:
    return u64(local) + KIND_BLOCK


def log_suffix(local: int, end: int) -> bytes:
    """One append of a log file, keyed by the offset where it ends."""
    return u64(local) + KIND_LOG + u64(end)


def log_dir_suffix(local: int) -> bytes:
    return u64(local) + KIND_LOG


def xattr_suffix(local: int, name: bytes) -> bytes:
    return u64(local) + KIND_XATTR + name + b"\0"


def xattr_dir_suffix(local: int) -> bytes:
    return u64(local) + KIND_XATTR


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@dataclass
class Attr:
    """Inode attributes. `parent` is (view, local) of a directory's parent;
    view 0 means "the same view as this inode" so that records inherited by a
    fork keep pointing inside the fork."""

    mode: int
    uid: int
    gid: int
    nlink: int = 1
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    parent_view: int = 0
    parent_local: int = 0
    stored: int = 0  # bytes of block data stored (for st_blocks)
    target: bytes | None = None  # symlink target
    flags: int = 0  # FLAG_*; records written before the field existed read as 0
    ino: int = field(default=0, compare=False)  # the FUSE inode number (not stored)

    def encode(self) -> bytes:
        return pack([
            FORMAT, self.mode, self.uid, self.gid, self.nlink, self.size,
            self.atime_ns, self.mtime_ns, self.ctime_ns, self.rdev,
            self.parent_view, self.parent_local, self.stored, self.target, self.flags,
        ])

    @classmethod
    def decode(cls, data: bytes, ino: int = 0) -> Attr:
        f = unpack(data)
        assert isinstance(f, list) and f[0] == FORMAT, f"unknown attr record {f!r}"
        a = cls(*f[1:15])
        a.ino = ino
        return a

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)


def encode_dentry(view: int, local: int, mode: int) -> bytes:
    return pack([FORMAT, view, local, stat.S_IFMT(mode)])


def decode_dentry(data: bytes) -> tuple[int, int, int]:
    f = unpack(data)
    assert isinstance(f, list) and f[0] == FORMAT, f"unknown dentry record {f!r}"
    return f[1], f[2], f[3]


@dataclass
class ViewDef:
    """A view: a named, versioned layer over its origin chain.

    `chain` lists the layers reads fall through to, each (view, limit epoch),
    nearest first, not including the view itself. `root` is the local inode of
    the view's root directory; `container` is the view holding the directory
    entry that leads to it (0 for the root view).
    """

    id: int
    chain: list[tuple[int, int]]
    root: int
    readonly: bool
    container: int
    created: int
    next_ino: int
    kind: str = "fork"  # root | fork | snapshot | dead
    first_birth: int = 0  # epoch of the first record written in this layer (0: none yet)

    def encode(self) -> bytes:
        return pack([
            FORMAT, [list(c) for c in self.chain], self.root, self.readonly,
            self.container, self.created, self.next_ino, self.kind, self.first_birth,
        ])

    @classmethod
    def decode(cls, view: int, data: bytes) -> ViewDef:
        f = unpack(data)
        assert isinstance(f, list) and f[0] == FORMAT, f"unknown view record {f!r}"
        return cls(view, [(int(a), int(b)) for a, b in f[1]], *f[2:9])
