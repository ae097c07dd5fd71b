"""The one interface of the daemon's namespaces.

Operations (operations.py) answers the kernel by inode kind (inodes.py): each
kind belongs to one `Namespace`, which does the work. A namespace has two
sides:

- its own inodes: `lookup` in its directories, `getattr`, `setattr`, `open`,
  `opendir`, the calls that make or remove names in its directories, and the
  extended attributes. The base class refuses everything a namespace does not
  define, each refusal with its reason (recorded for `errstr` in the one place
  Operations maps errors).
- the names it adds to stored directories (`.snapshots` in every directory,
  `.agentfs` and `AGENTS.md` at the root, an agent's generated files):
  `lookup_in` answers such a name, `names_in` lists the ones readdir shows,
  and `reserves` says which names a stored entry may not take.

An open file or directory is a `Handle`, which knows how to read, write,
flush, release and list itself. Namespaces return `Entry`s (an Attr and how
the kernel may cache it); Operations turns them into replies and counts the
kernel's lookup references.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from agentfs.agents.control import Result
from agentfs.errors import FsError
from agentfs.posix.fs import SetAttr
from agentfs.storage.codec import Attr

from .lines import LineBuffer

ENTRY_TIMEOUT = 60.0  # the daemon is the only writer: let the kernel cache
CONTROL_LINE_MAX = 64 * 1024  # a control command longer than this is refused


class Caller(Protocol):
    """Who a request comes from (pyfuse3.RequestContext, or a test's stand-in)."""

    @property
    def pid(self) -> int: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...


@dataclass
class Entry:
    """A name's inode as the kernel gets it: `counted` entries take a lookup
    reference (stored inodes, released by forget); virtual ones are not
    cached (their content changes behind the kernel's back)."""

    attr: Attr
    counted: bool = True
    timeout: float = ENTRY_TIMEOUT
    entry_timeout: float | None = None


def virtual(attr: Attr) -> Entry:
    return Entry(attr, counted=False, timeout=0.0)


class Effects:
    """What a command did besides its reply: the status line of `.agentfs/ctl`,
    the kernel's caches of entries it changed, and whether gc has work."""

    def __init__(self, invalidate: Callable[[int, bytes, int], None]) -> None:
        self.invalidate = invalidate
        self.gc_wanted = False
        self.last_result = ""

    def done(self, result: Result) -> None:
        self.last_result = result.message
        for parent, name, removed in result.changed:
            self.invalidate(parent, name, removed)
        if result.gc_wanted:
            self.gc_wanted = True


# ----------------------------------------------------------------- handles


class Handle:
    """An open file or directory. The base reads and writes nothing."""

    keep_cache = False
    direct_io = True

    def __init__(self, ino: int, pid: int = 0) -> None:
        self.ino = ino
        self.pid = pid  # who opened it: read, write and flush carry no context

    async def read(self, off: int, size: int) -> bytes:
        raise FsError(errno.EBADF, "this file is not open for reading")

    def write(self, off: int, buf: bytes) -> int:
        raise FsError(errno.EBADF)

    def flush(self) -> None:
        """On every close of a copy of the descriptor; may fail (close() says it)."""

    def release(self) -> None:
        """On the last close; cannot fail (Operations records a reason in errstr)."""

    def entries(self, start: int) -> Iterator[tuple[bytes, Entry, int]]:
        """A directory's (name, entry, offset) after offset `start`."""
        raise FsError(errno.ENOTDIR)


class Content(Handle):
    """A generated file: what reads return is fixed at open."""

    def __init__(self, ino: int, pid: int, content: bytes) -> None:
        super().__init__(ino, pid)
        self.content = content

    async def read(self, off: int, size: int) -> bytes:
        return self.content[off:off + size]


class Commands(Handle):
    """A control file: each written line is a command; a last line without
    its newline runs at close. Reads give `status()`."""

    def __init__(self, ino: int, pid: int, run: Callable[[bytes], None],
                 status: Callable[[], bytes], what: str) -> None:
        super().__init__(ino, pid)
        self.lines = LineBuffer(CONTROL_LINE_MAX)
        self.run = run
        self.status = status
        self.what = what

    async def read(self, off: int, size: int) -> bytes:
        return self.status()[off:off + size]

    def write(self, off: int, buf: bytes) -> int:
        try:
            lines = self.lines.feed(buf)
        except FsError as e:
            raise e.within(self.what)
        for line in lines:
            self.run(line)
        return len(buf)

    def flush(self) -> None:
        if self.lines:
            self.run(self.lines.take())


class Listing(Handle):
    """A directory whose entries come from `list_from(start)`."""

    def __init__(self, ino: int, list_from: Callable[[int], Iterator[tuple[bytes, Entry, int]]]
                 ) -> None:
        super().__init__(ino)
        self.list_from = list_from

    def entries(self, start: int) -> Iterator[tuple[bytes, Entry, int]]:
        return self.list_from(start)


def numbered(items: list[tuple[bytes, Entry]], first: int, start: int
             ) -> Iterator[tuple[bytes, Entry, int]]:
    """`items` at offsets first, first + 1, ..., those after `start`."""
    for off, (name, e) in enumerate(items, first):
        if off > start:
            yield name, e, off


# ----------------------------------------------------------------- namespaces


class Namespace:
    """One kind (or a few) of inode. Every call not defined is refused."""

    def describe(self, ino: int) -> str:
        """The path of one of its inodes, for messages."""
        return "this file"

    def fixed(self, ino: int) -> FsError:
        """The refusal for changing what this namespace generates."""
        return FsError(errno.EPERM, f"{self.describe(ino)} is generated by agentfs and "
                       "cannot be changed")

    # -- names added to stored directories

    def lookup_in(self, dir_ino: int, name: bytes, pid: int) -> Entry | None:
        return None

    def names_in(self, dir_ino: int) -> list[tuple[bytes, Entry]]:
        return []

    def reserves(self, dir_ino: int, name: bytes) -> bool:
        return False

    # -- its own inodes

    def lookup(self, parent: int, name: bytes, pid: int) -> Entry:
        raise FsError(errno.ENOTDIR)

    def getattr(self, ino: int, pid: int) -> Entry:
        raise FsError(errno.ENOENT)

    def setattr(self, ino: int, ch: SetAttr, pid: int) -> Entry:
        raise self.fixed(ino)

    def readlink(self, ino: int) -> bytes:
        raise FsError(errno.EINVAL, f"{self.describe(ino)} is not a symbolic link")

    def open(self, ino: int, flags: int, pid: int) -> Handle:
        raise FsError(errno.EISDIR)

    def opendir(self, ino: int, pid: int) -> Handle:
        raise FsError(errno.ENOTDIR)

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Caller) -> Entry:
        raise self.fixed(parent)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Caller) -> Entry:
        raise self.fixed(parent)

    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Caller) -> Entry:
        raise self.fixed(parent)

    def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Caller
               ) -> tuple[Handle, Entry]:
        raise self.fixed(parent)

    def unlink(self, parent: int, name: bytes, pid: int) -> None:
        raise self.fixed(parent)

    def rmdir(self, parent: int, name: bytes, pid: int) -> None:
        raise self.fixed(parent)

    def moved(self, ino: int) -> FsError:
        """The refusal for rename and link involving one of its inodes."""
        return FsError(errno.EPERM, f"{self.describe(ino)}: snapshots and control files "
                       "cannot be renamed or linked")

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        raise FsError(errno.ENOTSUP, "control files have no extended attributes")

    def getxattr(self, ino: int, name: bytes) -> bytes:
        raise FsError(errno.ENODATA)

    def listxattr(self, ino: int) -> list[bytes]:
        return []

    def removexattr(self, ino: int, name: bytes) -> None:
        raise FsError(errno.ENOTSUP, "control files have no extended attributes")
