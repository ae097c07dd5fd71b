"""Per-process error strings for control files (Plan 9's errstr).

A shell that runs `echo cmd > ctl || cat errstr` writes from the shell
process and reads from a child, so a reader also sees the errors of its
ancestors; failing that, the most recent error of anyone.
"""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_PIDS = 1024
ANCESTORS = 6
MAX_MESSAGE = 1000  # longer messages (a huge bad command echoed back) keep both ends


def shorten(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    cut = len(message) - 800
    return f"{message[:500]} …({cut} characters cut)… {message[-300:]}"


def proc_stat_field(pid: int, index: int) -> int:
    """Field `index` (0 = state) after the command name in /proc/PID/stat, or 0."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[index]) if len(fields) > index else 0


def parent_pid(pid: int) -> int:
    return proc_stat_field(pid, 1)


class ErrorLog:
    def __init__(self) -> None:
        self.by_pid: OrderedDict[int, str] = OrderedDict()
        self.last = ""

    def record(self, pid: int, message: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        line = f"{stamp} {shorten(message)}"
        self.last = line
        self.by_pid[pid] = line
        self.by_pid.move_to_end(pid)
        while len(self.by_pid) > MAX_PIDS:
            self.by_pid.popitem(last=False)

    def for_pid(self, pid: int) -> str:
        p = pid
        for _ in range(ANCESTORS):
            if p <= 1:
                break
            if p in self.by_pid:
                return self.by_pid[p] + "\n"
            p = parent_pid(p)
        return self.last + "\n" if self.last else ""
