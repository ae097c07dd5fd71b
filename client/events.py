"""Reading `MOUNT/.agentfs/events` with file operations only (Mount.events).

The stream is one JSON object per line; its byte offsets never change, and
only a window of the newest events is kept (reading bytes before it fails
with ENODATA). A reader that knows the last seq it saw finds where to go on
by a binary search over byte offsets (each probe one small read: ~26 at
64 MiB), then reads forward. Following, it polls the file's size (one fstat
per POLL seconds, the daemon serves it from one store read) and reads only
when the size grew.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from typing import Any

POLL = 0.25  # seconds between size checks when following: at most 4 stats/s
PROBE = 4096  # bytes read per probe of the binary search (events are short lines)
CHUNK = 1 << 20


class Dropped(Exception):
    """The bytes asked for are before the stream's window."""


def _pread(fd: int, size: int, offset: int) -> bytes:
    try:
        return os.pread(fd, size, offset)
    except OSError as e:
        if e.errno == errno.ENODATA:
            raise Dropped() from e
        raise


def _through_newline(fd: int, offset: int) -> bytes:
    """The bytes from `offset` up to and with the first newline (or to the end)."""
    data = b""
    while True:
        more = _pread(fd, PROBE, offset + len(data))
        if not more:
            return data
        data += more
        end = data.find(b"\n")
        if end >= 0:
            return data[:end + 1]


def _line_start_at_or_after(fd: int, p: int) -> tuple[int, int] | None:
    """(offset, seq) of the first line starting at or after byte `p`; None if
    none does; Dropped if `p` is before the window."""
    start = p
    if p > 0:
        try:
            rest = _through_newline(fd, p - 1)
        except Dropped:
            pass  # p may be the window's first byte, which starts a line (else: Dropped below)
        else:
            if not rest.endswith(b"\n"):
                return None
            start = p - 1 + len(rest)
    line = _through_newline(fd, start)
    if not line.endswith(b"\n"):
        return None
    return start, int(json.loads(line)["seq"])


def offset_after(fd: int, after: int) -> int:
    """The byte offset of the first retained event with seq > `after` (the
    file's size if there is none yet)."""
    size = os.fstat(fd).st_size
    if after <= 0:
        try:  # the common case: the window still starts at the beginning
            return 0 if _line_start_at_or_after(fd, 0) is not None else size
        except Dropped:
            pass

    def later(p: int) -> bool:  # monotone in p: the first line at or after p is past `after`
        try:
            found = _line_start_at_or_after(fd, p)
        except Dropped:
            return False
        return found is None or found[1] > after

    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi) // 2
        if later(mid):
            hi = mid
        else:
            lo = mid + 1
    found = _line_start_at_or_after(fd, lo) if lo < size else None
    return size if found is None else found[0]


def read_events(path: str | os.PathLike[str], after: int = 0, follow: bool = False,
                timeout: float | None = None) -> Iterator[dict[str, Any]]:
    """Events with seq > `after`, in order, each once; with `follow`, wait for
    more until `timeout` seconds (None: for ever). `after=0` starts at the
    oldest event retained; otherwise Dropped if the window no longer holds
    seq after + 1 (or moves past events this reader had not read yet)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = offset_after(fd, after)
        pending = b""
        last = after
        while True:
            chunk = _pread(fd, CHUNK, offset)
            if chunk:
                offset += len(chunk)
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    event = json.loads(raw)
                    if 0 < last < event["seq"] - 1:
                        raise Dropped()  # events last+1 .. seq-1 are gone: say so, not skip
                    if event["seq"] > last:  # (never twice, whatever a probe found)
                        last = event["seq"]
                        yield event
                continue
            if not follow:
                return
            while os.fstat(fd).st_size <= offset:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                time.sleep(POLL if left is None else min(POLL, left))
    finally:
        os.close(fd)
