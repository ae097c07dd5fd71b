"""Record encoding: the values agentfs stores (the keys are in keys.py).

Values are msgpack arrays in a fixed field order, first field a format
version; a tombstone (the record was deleted at that epoch) is the empty value.
Fixed-width integers (u32 view ids, u64 counters) are big-endian, as in keys.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

import msgpack

FORMAT = 1

FLAG_LOG = 1
"""Attr.flags: the file is an append-only log (see logdata.py), not blocks."""

TOMBSTONE = b""

# A FUSE inode number packs (view, local inode): local numbers are 40 bits.
LOCAL_BITS = 40
LOCAL_MASK = (1 << LOCAL_BITS) - 1
ROOT_VIEW = 1
ROOT_LOCAL = 1


# The view part takes the bits up to 62: bit 63 marks the daemon's virtual
# inodes (daemon/inodes.py), so a stored inode number must never reach it.
MAX_VIEW = 1 << (63 - LOCAL_BITS)  # view ids are 1 .. MAX_VIEW


def fuse_ino(view: int, local: int) -> int:
    if not (1 <= view <= MAX_VIEW and 0 <= local <= LOCAL_MASK):
        raise OverflowError(f"inode ({view}, {local}) does not fit an inode number")
    return ((view - 1) << LOCAL_BITS) | local


def split_ino(ino: int) -> tuple[int, int]:
    return (ino >> LOCAL_BITS) + 1, ino & LOCAL_MASK


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
