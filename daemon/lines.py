"""Line-oriented writes: control files and transcripts take whole lines.

The kernel hands a write over in pieces of up to 128 KiB and a line may span
several of them (or one piece may hold many lines). `LineBuffer` joins the
pieces in a bytearray (no quadratic re-copying), looks for newlines only in
the new bytes, and refuses a line that grows past its limit without a newline
instead of buffering without bound.
"""

from __future__ import annotations

import errno

from agentfs.errors import FsError


class LineBuffer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._data = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add written bytes; return the lines they complete (without newlines)."""
        start = len(self._data)
        self._data += chunk
        lines = []
        pos = 0
        nl = self._data.find(b"\n", start)
        while nl >= 0:
            lines.append(bytes(self._data[pos:nl]))
            pos = nl + 1
            nl = self._data.find(b"\n", pos)
        del self._data[:pos]
        if len(self._data) > self.limit:
            self._data.clear()
            raise FsError(errno.EINVAL, f"a line longer than {self.limit} bytes without a "
                          "newline; nothing of it was kept")
        return lines

    def take(self) -> bytes:
        """The incomplete rest (at close), emptying the buffer."""
        rest = bytes(self._data)
        self._data.clear()
        return rest

    def clear(self) -> None:
        self._data.clear()

    def __bool__(self) -> bool:
        return bool(self._data)
