"""Every kind of inode number the daemon hands the kernel, in one table.

An inode number is 64 bits. Bit 63 tells the two families apart:

    bit 63 = 0   STORED: a record in the store, numbered by the codec as
                 (view - 1) << 40 | local (storage/codec.py: `fuse_ino`), so
                 a view is at most 2**23 (24 bits) and a local number below 2**40.
    bit 63 = 1   virtual: no record; the daemon makes it up. Bits 56-62 hold
                 the kind, bits 0-55 its fields, packed from the high end in
                 the order `LAYOUT` lists them:

    kind         fields (bits)                        what
    CTLDIR       -                                    MOUNT/.agentfs
    CTL_FILE     file (8)                             .agentfs/ctl, errstr, lineage, events
    SNAPDIR      index (56)                           DIR/.snapshots (index: see snapshots.py)
    AGENT_FILE   view (24), file (8)                  agents/X/ctl, status, ..., observations/
    WAIT         view (24), seconds (16)              agents/X/inbox/.wait-SECONDS
    OBSERVATION  view (24), turn (24), index (8)      agents/X/observations/ID
    GUIDE        -                                    MOUNT/AGENTS.md

`encode` refuses (OverflowError) a field outside its range instead of letting
it spill into its neighbour, so two different things never share a number;
`decode` gives back the kind and the fields.
"""

from __future__ import annotations

import enum

from agentfs.storage.codec import LOCAL_BITS

VIRTUAL = 1 << 63
KIND_SHIFT = 56
KIND_BITS = 7
FIELD_BITS = KIND_SHIFT  # bits 0-55
MAX_VIEW = 1 << (63 - LOCAL_BITS)  # the largest view a stored inode number can name
VIEW_BITS = MAX_VIEW.bit_length()  # views 1 .. MAX_VIEW


class Kind(enum.IntEnum):
    STORED = 0
    CTLDIR = 1
    CTL_FILE = 2
    SNAPDIR = 3
    AGENT_FILE = 4
    WAIT = 5
    OBSERVATION = 6
    GUIDE = 7


LAYOUT: dict[Kind, tuple[tuple[str, int], ...]] = {
    Kind.CTLDIR: (),
    Kind.CTL_FILE: (("file", 8),),
    Kind.SNAPDIR: (("index", FIELD_BITS),),
    Kind.AGENT_FILE: (("view", VIEW_BITS), ("file", 8)),
    Kind.WAIT: (("view", VIEW_BITS), ("seconds", 16)),
    Kind.OBSERVATION: (("view", VIEW_BITS), ("turn", 24), ("index", 8)),
    Kind.GUIDE: (),
}
assert all(sum(b for _, b in f) <= FIELD_BITS for f in LAYOUT.values())
assert max(Kind) < 1 << KIND_BITS


def encode(kind: Kind, *values: int) -> int:
    """The inode number of a virtual `kind` with these fields (in LAYOUT order)."""
    layout = LAYOUT[kind]
    if len(values) != len(layout):
        raise TypeError(f"{kind.name} takes {len(layout)} fields, not {len(values)}")
    ino = 0
    for (name, bits), v in zip(layout, values, strict=True):
        if not 0 <= v < 1 << bits:
            raise OverflowError(f"{kind.name}.{name} = {v} does not fit in {bits} bits")
        ino = ino << bits | v
    ino <<= FIELD_BITS - sum(b for _, b in layout)
    return VIRTUAL | kind << KIND_SHIFT | ino


def kind_of(ino: int) -> Kind:
    if not 0 <= ino < 1 << 64:
        raise OverflowError(f"inode number {ino} is not 64 bits")
    if not ino & VIRTUAL:
        return Kind.STORED
    try:
        kind = Kind(ino >> KIND_SHIFT & ((1 << KIND_BITS) - 1))
    except ValueError:
        kind = Kind.STORED
    if kind is Kind.STORED:  # (virtual, yet of no virtual kind)
        raise ValueError(f"inode number {ino:#x} is of no kind")
    return kind


def decode(ino: int) -> tuple[Kind, tuple[int, ...]]:
    """(kind, fields) of any inode number; a stored one's field is itself."""
    kind = kind_of(ino)
    if kind is Kind.STORED:
        return kind, (ino,)
    layout = LAYOUT[kind]
    rest = ino & ((1 << FIELD_BITS) - 1)
    rest >>= FIELD_BITS - sum(b for _, b in layout)
    values = []
    for _, bits in reversed(layout):
        values.append(rest & ((1 << bits) - 1))
        rest >>= bits
    return kind, tuple(reversed(values))


def fields(ino: int, kind: Kind) -> tuple[int, ...]:
    """The fields of `ino`, which must be of `kind` (ValueError otherwise)."""
    k, values = decode(ino)
    if k is not kind:
        raise ValueError(f"inode number {ino:#x} is {k.name}, not {kind.name}")
    return values


CTLDIR_INO = encode(Kind.CTLDIR)
GUIDE_INO = encode(Kind.GUIDE)
