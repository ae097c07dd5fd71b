"""Where the daemon's own mount is visible, and host paths resolved without touching it.

The daemon serves its FUSE requests on one thread. A syscall it makes itself on
a path inside its own mount (an lstat while resolving an import's HOSTDIR)
becomes a request to that same thread, which is blocked in the syscall: every
process using the mount hangs. So a host path the daemon is given is resolved
here component by component, like os.path.realpath, and refused as soon as
the next path to lstat is lexically at or under a place the mount is visible:
its mount point and every bind mount of it (each entry of /proc/self/mountinfo
with the same device, read from procfs, never from the mount).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field

from agentfs.errors import FsError

MAX_SYMLINKS = 40  # as the kernel (ELOOP)
_ESCAPE = re.compile(rb"\\([0-7]{3})")  # mountinfo writes space, tab, newline, \ as \ooo


def _unescape(field_: bytes) -> bytes:
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field_)


@dataclass
class OwnMount:
    """The places the mount at `mountpoint` (a real path, resolved before
    mounting) is visible, and its device; empty: no mount to avoid."""

    mountpoint: bytes = b""
    places: list[bytes] = field(default_factory=list)
    devices: set[int] = field(default_factory=set)

    @classmethod
    def find(cls, mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> OwnMount:
        if not mountpoint:
            return cls()
        mp = os.fsencode(mountpoint)
        entries: list[tuple[int, bytes, bytes]] = []  # (device, mount point, fstype)
        try:
            with open(mountinfo, "rb") as f:
                for line in f:
                    fields = line.split()
                    sep = fields.index(b"-")
                    major, minor = fields[2].split(b":")
                    entries.append((os.makedev(int(major), int(minor)), _unescape(fields[4]),
                                    fields[sep + 1]))
        except (OSError, ValueError, IndexError):
            entries = []  # no mount table: the mount point alone is refused
        # Ours is the FUSE mount at our mount point (any other there: refused too).
        devices = {dev for dev, where, kind in entries
                   if where == mp and kind.startswith(b"fuse")}
        places = {mp} | {where for dev, where, _ in entries if dev in devices}
        return cls(mp, sorted(places), devices)

    def holds(self, path: bytes) -> bytes | None:
        """The place of the mount `path` is lexically at or under, if any."""
        for place in self.places:
            if path == place or path.startswith(place.rstrip(b"/") + b"/"):
                return place
        return None

    def refuse(self, shown: str, place: bytes) -> FsError:
        where = ("" if place == self.mountpoint
                 else f", visible at {os.fsdecode(place)}")
        return FsError(errno.EINVAL, f"HOSTDIR is inside this mount ({shown} is in "
                       f"{os.fsdecode(self.mountpoint)}{where}): the daemon cannot read "
                       "its own mount; copy from the host directory it came from, or "
                       "use cp -a")

    def resolve(self, path: str) -> bytes:
        """`path` (absolute) with every symlink resolved, as the host sees it;
        FsError(EINVAL) if it is, or leads, into this mount (before any
        syscall on a path inside it), else the lstat's own errors."""
        shown = path
        rest = os.fsencode(path).split(b"/")
        rest.reverse()  # a stack: the next component last
        resolved = b"/"
        links = 0
        while True:
            place = self.holds(resolved)
            if place is not None:
                raise self.refuse(shown, place)
            if not rest:
                return resolved
            name = rest.pop()
            if name in (b"", b"."):
                continue
            if name == b"..":
                resolved = posixpath.dirname(resolved)
                continue
            candidate = posixpath.join(resolved, name)
            place = self.holds(candidate)
            if place is not None:
                raise self.refuse(shown, place)
            try:
                st = os.lstat(candidate)
                if not stat.S_ISLNK(st.st_mode):
                    if rest and not stat.S_ISDIR(st.st_mode):
                        raise FsError(errno.ENOTDIR, f"{shown}: "
                                      f"{os.fsdecode(candidate)} is not a directory")
                    resolved = candidate
                    continue
                links += 1
                if links > MAX_SYMLINKS:
                    raise FsError(errno.ELOOP, f"{shown}: too many levels of symbolic links")
                target = os.readlink(candidate)
            except FileNotFoundError:
                raise FsError(errno.ENOENT, f"{shown}: no such directory on the host")
            except OSError as e:
                raise FsError(e.errno or errno.EIO, f"{shown}: {e.strerror}")
            if target.startswith(b"/"):
                resolved = b"/"
            parts = target.split(b"/")
            parts.reverse()
            rest.extend(parts)
