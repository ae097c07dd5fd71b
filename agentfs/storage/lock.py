"""The store's lock: one daemon, or one offline tool, works on a store at a time.

`STORE/agentfs.lock` is held with flock(2) for as long as its holder runs, so
a crashed holder never leaves it taken; the holder writes who it is into the
file, and a refused caller names it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "agentfs.lock"


class StoreBusy(Exception):
    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder  # what the holder wrote, e.g. "pid 12 on /mnt"


def lock_store(store: Path) -> int:
    """Take the store's exclusive lock (a descriptor to keep open), or raise
    StoreBusy naming whoever holds it."""
    fd = os.open(store / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        raise StoreBusy(holder)
    return fd
