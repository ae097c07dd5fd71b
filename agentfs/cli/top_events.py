"""A reader of the events stream, `MOUNT/.agentfs/events`, for `agentfs top`.

The stream is one JSON object per line (seq, time, event, agent, and fields
per event). Byte offsets are stable for the life of the store, so a reader's
cursor is just the offset it has read up to: each poll stats the file and,
only when it grew, reads the new bytes from there. Stats are rate-limited
(`min_interval`): on FUSE every stat is a request the daemon serves, and an
idle `top` must cost the daemon next to nothing.

Anything that breaks the cursor's assumptions is reported as `lost` instead
of being guessed around: a gap in `seq` (the stream dropped events older than
its window before we read them), a file that shrank (another store mounted
there) or vanished (unmounted, or a daemon without the stream). The caller
then re-reads everything once and goes on from the current end.

Plain stdlib, no daemon: the tests feed it lines written to an ordinary file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENTS_FILE = (".agentfs", "events")
MAX_READ = 1 << 20  # bytes per poll: a long backlog is read over a few polls, the UI keeps up
REQUIRED = {"seq": int, "event": str, "agent": str}


@dataclass
class Batch:
    """What one poll found: new events in order, and whether some were missed."""

    events: list[dict[str, Any]] = field(default_factory=list)
    lost: bool = False
    reason: str = ""


def parse_event(line: bytes) -> dict[str, Any] | None:
    """One line of the stream as a dict, or None when it breaks the contract."""
    try:
        obj = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        return None
    if not isinstance(obj, dict):
        return None
    for key, kind in REQUIRED.items():
        if not isinstance(obj.get(key), kind):
            return None
    return obj


class EventTail:
    """Follows an append-only JSONL file by byte offset."""

    def __init__(self, path: Path, offset: int = 0, last_seq: int | None = None,
                 min_interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.offset = offset
        self.last_seq = last_seq
        self.min_interval = min_interval
        self.clock = clock
        self.bad_lines = 0
        self._partial = b""
        self._next_stat = 0.0

    @classmethod
    def at_end(cls, path: Path, **kw: Any) -> EventTail | None:
        """A tail that reports only what comes after now; None if there is no stream."""
        try:
            size = os.stat(path).st_size
        except OSError:
            return None
        return cls(path, offset=size, **kw)

    def poll(self) -> Batch:
        """The events appended since the last poll (none if polled again too soon)."""
        now = self.clock()
        if now < self._next_stat:
            return Batch()
        self._next_stat = now + self.min_interval
        try:
            size = os.stat(self.path).st_size
        except OSError as e:
            return Batch(lost=True, reason=f"{self.path}: {e.strerror}")
        if size < self.offset:
            return Batch(lost=True, reason=f"{self.path} shrank from {self.offset} to {size} "
                                           "bytes")
        if size == self.offset:
            return Batch()
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(min(size - self.offset, MAX_READ))
        except OSError as e:
            return Batch(lost=True, reason=f"{self.path}: {e.strerror}")
        self.offset += len(data)
        return self._take(self._partial + data)

    def _take(self, data: bytes) -> Batch:
        """Complete lines of `data` as events; an unfinished last line waits."""
        *lines, self._partial = data.split(b"\n")
        batch = Batch()
        for line in lines:
            if not line.strip():
                continue
            ev = parse_event(line)
            if ev is None:
                self.bad_lines += 1
                continue
            seq = ev["seq"]
            if self.last_seq is not None and seq <= self.last_seq:
                continue  # already seen (a reader started from a seq, not an offset)
            if self.last_seq is not None and seq != self.last_seq + 1 and not batch.lost:
                batch.lost = True
                batch.reason = f"events {self.last_seq + 1}..{seq - 1} were dropped"
            self.last_seq = seq
            batch.events.append(ev)
        return batch
