"""The mount's event stream as stored: numbered lines at stable byte offsets,
in a bounded window. (What the lines say is agents/events.py's business.)

    E<seq:8>  -> [FORMAT, offset, line]    line `seq`, exactly as read, and the
                                           byte of the file where it starts
    N         -> [FORMAT, next_seq, next_offset, first_seq, retained_bytes,
                  keep_events, keep_bytes]

The file only grows at its end: line `seq` starts where line `seq - 1`
ended, forever, so a reader's cursor (a byte offset or the last seq it saw)
stays valid for the life of the store. Only the newest lines are kept: once
more than `keep_events` lines or `keep_bytes` bytes are retained, the oldest
go, a few per append (`TRIM_PER_APPEND`: an append adds one line, so the
window converges, and no transaction does unbounded work; gc trims the rest
after the limits were lowered). Bytes before the window are gone: a read
that starts there raises `Gone`, which names where the window starts.

Appends run inside the caller's write transaction (the operation the line
reports); reads take a read transaction and cost O(log window + bytes read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agentfs.storage import codec, keys
from agentfs.storage.kv import Txn

KEEP_EVENTS = 100_000
KEEP_BYTES = 64 * 1024 * 1024
TRIM_PER_APPEND = 2
READ_MAX = 1 << 20  # bytes one read returns at most (the kernel asks for 128 KiB)


class Gone(Exception):
    """The bytes asked for were dropped from the window."""

    def __init__(self, first_offset: int, first_seq: int) -> None:
        super().__init__(f"events before byte {first_offset} (seq {first_seq}) were dropped")
        self.first_offset = first_offset
        self.first_seq = first_seq


@dataclass
class Head:
    """The `N` record: where the next line goes, and what the window holds."""

    next_seq: int
    next_offset: int  # the file's size
    first_seq: int  # the oldest line retained (next_seq when none is)
    retained_bytes: int
    keep_events: int
    keep_bytes: int

    @classmethod
    def empty(cls) -> Head:
        return cls(1, 0, 1, 0, KEEP_EVENTS, KEEP_BYTES)

    def encode(self) -> bytes:
        return codec.pack([codec.FORMAT, self.next_seq, self.next_offset, self.first_seq,
                           self.retained_bytes, self.keep_events, self.keep_bytes])

    @classmethod
    def decode(cls, raw: bytes) -> Head:
        f = codec.unpack(raw)
        assert isinstance(f, list) and f[0] == codec.FORMAT and len(f) == 7, \
            f"unknown event stream head {f!r}"
        return cls(*(int(x) for x in f[1:7]))

    @property
    def retained(self) -> int:
        return self.next_seq - self.first_seq

    def over_limits(self) -> bool:
        return self.retained > self.keep_events or (
            self.retained > 1 and self.retained_bytes > self.keep_bytes)


@dataclass(frozen=True)
class Line:
    seq: int
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def encode_line(offset: int, data: bytes) -> bytes:
    return codec.pack([codec.FORMAT, offset, data])


def decode_line(seq: int, raw: bytes) -> Line:
    f = codec.unpack(raw)
    assert isinstance(f, list) and f[0] == codec.FORMAT and len(f) == 3 \
        and isinstance(f[2], bytes), f"unknown event record {seq}: {f!r}"
    return Line(seq, int(f[1]), f[2])


def head(txn: Txn) -> Head:
    raw = txn.get(keys.event_head())
    return Head.empty() if raw is None else Head.decode(raw)


def append(txn: Txn, *make_lines: Callable[[int], bytes]) -> list[Line]:
    """Add the next lines, each `make_line(seq)`, in the caller's transaction
    (the head read and written once); drop a few of the oldest for each if
    the window is over its limits."""
    h = head(txn)
    out = []
    for make_line in make_lines:
        line = Line(h.next_seq, h.next_offset, make_line(h.next_seq))
        txn.put(keys.event(line.seq), encode_line(line.offset, line.data))
        h.next_seq += 1
        h.next_offset = line.end
        h.retained_bytes += len(line.data)
        out.append(line)
    trim(txn, h, TRIM_PER_APPEND * len(make_lines))
    return out


def trim(txn: Txn, h: Head | None = None, budget: int = TRIM_PER_APPEND) -> int:
    """Drop up to `budget` of the oldest lines while over the limits (always
    keeping the newest); saves the head. Returns how many went."""
    if h is None:
        h = head(txn)
        if not h.over_limits():
            return 0  # nothing to do: nothing written
    n = 0
    while n < budget and h.over_limits():
        raw = txn.get(keys.event(h.first_seq))
        if raw is not None:
            h.retained_bytes -= len(decode_line(h.first_seq, raw).data)
            txn.delete(keys.event(h.first_seq))
        h.first_seq += 1
        n += 1
    txn.put(keys.event_head(), h.encode())
    return n


def set_limits(txn: Txn, keep_events: int | None = None, keep_bytes: int | None = None
               ) -> Head:
    """New retention limits, each left as it is if None (the window shrinks to
    them over the next appends and gc)."""
    h = head(txn)
    h.keep_events = h.keep_events if keep_events is None else keep_events
    h.keep_bytes = h.keep_bytes if keep_bytes is None else keep_bytes
    if h.keep_events < 1 or h.keep_bytes < 1:
        raise ValueError("event retention limits must be at least 1")
    txn.put(keys.event_head(), h.encode())
    return h


def get(txn: Txn, seq: int) -> Line | None:
    raw = txn.get(keys.event(seq))
    return None if raw is None else decode_line(seq, raw)


def first_offset(txn: Txn, h: Head) -> int:
    """Where the window starts in the file (its size when nothing is retained)."""
    first = get(txn, h.first_seq) if h.retained else None
    return h.next_offset if first is None else first.offset


def _line_at(txn: Txn, h: Head, offset: int) -> Line:
    """The retained line holding byte `offset` (first_offset <= offset < next_offset)."""
    lo, hi = h.first_seq, h.next_seq - 1  # the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        line = get(txn, mid)
        assert line is not None, f"event {mid} missing inside the window"
        if line.offset <= offset:
            lo = mid
        else:
            hi = mid - 1
    line = get(txn, lo)
    assert line is not None
    return line


def read(txn: Txn, offset: int, size: int) -> bytes:
    """Bytes [offset, offset + size) of the file (fewer at its end, at most READ_MAX)."""
    h = head(txn)
    size = min(size, READ_MAX, max(0, h.next_offset - offset))
    if size <= 0:
        return b""
    start = first_offset(txn, h)
    if offset < start:
        raise Gone(start, h.first_seq)
    first = _line_at(txn, h, offset)
    out = bytearray(first.data[offset - first.offset:])
    for k, raw in txn.scan(keys.event(first.seq + 1), keys.event_span()[1]):
        if len(out) >= size:
            break
        out += decode_line(keys.parse_event(k), raw).data
    return bytes(out[:size])


def lines_after(txn: Txn, after: int, limit: int = 1000) -> list[Line]:
    """Up to `limit` retained lines with seq > `after`, in order."""
    start = keys.event(max(after + 1, 0))
    out = []
    for k, raw in txn.scan(start, keys.event_span()[1]):
        out.append(decode_line(keys.parse_event(k), raw))
        if len(out) >= limit:
            break
    return out


def check(txn: Txn, check_line: Callable[[Line], str | None]) -> list[str]:
    """fsck of the stream: the head decodes; the retained lines are exactly
    first_seq .. next_seq - 1, each decodes, starts where the one before it
    ended, and the last ends at next_offset; retained_bytes is their sum;
    `check_line` says what is wrong with a line's content (None: nothing)."""
    problems: list[str] = []
    raw = txn.get(keys.event_head())
    try:
        h = Head.empty() if raw is None else Head.decode(raw)
    except Exception as e:  # noqa: BLE001 - report, don't crash
        return [f"event stream head: undecodable ({e})"]
    if h.first_seq < 1 or h.first_seq > h.next_seq or h.retained_bytes < 0:
        problems.append(f"event stream head: window seq {h.first_seq}..{h.next_seq - 1}, "
                        f"{h.retained_bytes} bytes")
    want, prev_end, total = h.first_seq, None, 0
    for k, value in txn.scan(*keys.event_span()):
        seq = keys.parse_event(k)
        try:
            line = decode_line(seq, value)
        except Exception as e:  # noqa: BLE001
            problems.append(f"event {seq}: undecodable ({e})")
            want, prev_end = seq + 1, None
            continue
        if seq != want:
            problems.append(f"event {seq} follows {want - 1}: events {want}..{seq - 1} are "
                            f"missing (the head's window starts at {h.first_seq})"
                            if seq > want else f"event {seq} lies before the window "
                            f"(starting at {h.first_seq})")
        elif prev_end is not None and line.offset != prev_end:
            problems.append(f"event {seq} starts at byte {line.offset}, not where event "
                            f"{seq - 1} ended ({prev_end})")
        why = check_line(line)
        if why:
            problems.append(f"event {seq}: {why}")
        want, prev_end, total = seq + 1, line.end, total + len(line.data)
    if want != h.next_seq:
        problems.append(f"event stream head says the next event is {h.next_seq}, but the "
                        f"last stored is {want - 1}")
    elif prev_end is not None and prev_end != h.next_offset:
        problems.append(f"event stream head says the file ends at byte {h.next_offset}, but "
                        f"its last event ends at {prev_end}")
    if total != h.retained_bytes:
        problems.append(f"event stream head counts {h.retained_bytes} retained bytes, the "
                        f"events hold {total}")
    return problems
