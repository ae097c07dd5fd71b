"""The one error type the model raises: an errno plus a readable reason."""

from __future__ import annotations

import errno
import os


class FsError(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message or os.strerror(code))
        self.errno = code
        self.message = message or os.strerror(code)

    def __str__(self) -> str:
        return f"[{errno.errorcode.get(self.errno, self.errno)}] {self.message}"

    def within(self, where: str) -> FsError:
        """The same error, its reason prefixed with where it happened
        (`agents/a/ctl: fork b: agent 'b' exists`)."""
        return FsError(self.errno, f"{where}: {self.message}")
