"""Where `agentfs top` gets its news: the events stream, or re-reading.

With `MOUNT/.agentfs/events` present, the board is read once and then only
the events change it (a stat of the stream twice a second when idle). A
mount without the stream (a daemon older than it) is re-read whole every
POLL_SECONDS instead, and looked at for the stream each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .top_board import Board
from .top_events import EVENTS_FILE, EventTail

POLL_SECONDS = 2.0  # re-read period without the events stream
STAT_INTERVAL = 0.5  # seconds between two stats of the stream


class Source:
    """Keeps `board` current for `mount` (an agentfs.client.Mount)."""

    def __init__(self, mount: Any, board: Board | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.mount = mount
        self.board = board or Board()
        self.clock = clock
        self.tail: EventTail | None = None
        self.next_reload = 0.0
        self.note = ""  # the last thing worth telling the user (a lost stream, ...)

    @property
    def mode(self) -> str:
        return "events" if self.tail is not None else f"re-read every {POLL_SECONDS:g}s"

    def reload(self, fresh: bool = False) -> None:
        """Read everything now (`fresh`: from scratch, trusting no stat); follow
        the stream from here if there is one."""
        # The stream's end first, then the read: an event in between is seen
        # twice rather than never (turns are counted once anyway, by number).
        self.tail = EventTail.at_end(self.mount.path.joinpath(*EVENTS_FILE),
                                     min_interval=STAT_INTERVAL, clock=self.clock)
        self.board.load(self.mount, fresh)
        self.next_reload = self.clock() + POLL_SECONDS

    def tick(self) -> bool:
        """Take the news, if any; True when the board changed."""
        if self.tail is None:
            if self.clock() < self.next_reload:
                return False
            self.reload()
            return True
        batch = self.tail.poll()
        if batch.lost:
            self.note = f"events: {batch.reason}; re-read everything"
            self.reload()
            return True
        for ev in batch.events:
            self.board.apply(ev)
        if batch.events:
            self.board.catch_up(self.mount)
        return bool(batch.events)
