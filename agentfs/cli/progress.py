"""Progress of the CLI's long commands, on stderr: a bar redrawn in place on a
terminal, a plain line now and then otherwise (logs, pipes, CI).

The core reports through a plain callback, `progress(done, total)` (gc, fsck,
import); this is the only place that turns it into something to look at.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

WIDTH = 30
TTY_EVERY = 0.1  # seconds between redraws on a terminal
PLAIN_EVERY = 5.0  # ... and between lines elsewhere


class Bar:
    def __init__(self, label: str, unit: str, stream: TextIO, tty: bool) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream
        self.tty = tty
        self.last = 0.0
        self.drawn = ""
        self.extra = ""

    def __call__(self, done: int, total: int, extra: str = "") -> None:
        now = time.monotonic()
        self.extra = extra
        if now - self.last < (TTY_EVERY if self.tty else PLAIN_EVERY) and done < total:
            return
        self.last = now
        self.draw(done, total)

    def text(self, done: int, total: int) -> str:
        share = done / total if total else 0.0
        counts = f"{done}/{total}{' ' + self.unit if self.unit else ''}"
        tail = f" {self.extra}" if self.extra else ""
        if not self.tty:
            return f"{self.label}: {counts} ({share:.0%}){tail}"
        filled = int(WIDTH * min(share, 1.0))
        return f"{self.label} [{'#' * filled}{'-' * (WIDTH - filled)}] {share:4.0%} {counts}{tail}"

    def draw(self, done: int, total: int) -> None:
        line = self.text(done, total)
        if line == self.drawn:
            return
        self.drawn = line
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def quiet(done: int, total: int, extra: str = "") -> None:
    """The callback when there is nothing to show progress on."""


@contextmanager
def progress_bar(label: str, unit: str = "", stream: TextIO | None = None,
                 plain: bool = True) -> Iterator[Callable[..., None]]:
    """A `progress(done, total, extra="")` callback for the block's work: a
    bar on a terminal; elsewhere plain lines, or (plain=False) nothing."""
    out = stream if stream is not None else sys.stderr
    if not out.isatty() and not plain:
        yield quiet
        return
    bar = Bar(label, unit, out, out.isatty())
    try:
        yield bar
    finally:
        bar.close()
