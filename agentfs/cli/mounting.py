"""What `agentfs mount` and `agentfs umount` check and clear before the daemon
runs: `-o` options, dead mounts, a store still held by a daemon that is
finishing an unmount. The daemon (agentfs.daemon.main) keeps its own checks;
these come first so that the user gets the reason, and a fix, at once.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click

from agentfs.storage.lock import StoreBusy, lock_store

AGENTFS_FSTYPE = "fuse.agentfs"
UNMOUNT_WAIT = 60.0  # seconds a remount waits for the last daemon to let go of the store

# -o options. FUSE_OPTIONS go to the kernel / libfuse as they are (see fuse(8)
# and mount(8)); FSTAB_OPTIONS are mount(8), fstab and systemd bookkeeping
# that reach a mount helper and mean nothing to the daemon.
# (libfuse 3.14 refuses the other atime variants: diratime, strictatime, ...).
FUSE_OPTIONS = {"ro", "rw", "allow_other", "allow_root", "default_permissions",
                "auto_unmount", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
                "atime", "noatime", "sync", "async", "dirsync"}
ALWAYS_ON = {"relatime"}  # what every FUSE mount is anyway
FUSE_VALUE_OPTIONS = {"fsname"}
FSTAB_OPTIONS = {"defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users",
                 "owner", "group", "loud", "silent"}
FSTAB_PREFIXES = ("x-", "comment=")
OUR_OPTIONS = {"debug"}
OUR_VALUE_OPTIONS = {"store"}


@dataclass
class MountOptions:
    store: str | None = None
    debug: bool = False
    fuse: list[str] = field(default_factory=list)


def parse_options(specs: tuple[str, ...]) -> MountOptions:
    """`-o a,b=c` (given once or more) as MountOptions; unknown ones refused."""
    out = MountOptions()
    for spec in specs:
        for opt in filter(None, spec.split(",")):
            key, eq, value = opt.partition("=")
            if opt in FSTAB_OPTIONS or opt in ALWAYS_ON or opt.startswith(FSTAB_PREFIXES):
                continue
            if key in OUR_VALUE_OPTIONS and eq and value:
                out.store = value
            elif opt in OUR_OPTIONS:
                out.debug = True
            elif opt in FUSE_OPTIONS or (key in FUSE_VALUE_OPTIONS and eq and value):
                out.fuse.append(opt)
            else:
                known = sorted(OUR_OPTIONS | FUSE_OPTIONS
                               | {f"{k}=..." for k in OUR_VALUE_OPTIONS | FUSE_VALUE_OPTIONS})
                raise click.UsageError(f"unknown mount option {opt!r}; agentfs takes "
                                       f"{', '.join(known)} (and ignores fstab's "
                                       f"{', '.join(sorted(FSTAB_OPTIONS))}, x-*, comment=*)")
    if {"ro", "rw"} <= set(out.fuse):
        raise click.UsageError("mount options ro and rw contradict each other")
    if {"allow_other", "allow_root"} <= set(out.fuse):
        raise click.UsageError("mount options allow_other and allow_root exclude each other")
    return out


# ------------------------------------------------------------------ mounts


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\NNN (octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_at(path: str | Path, pid: int | str = "self") -> MountEntry | None:
    """The mount whose mountpoint is `path`, as process `pid` sees it (its
    mount namespace), or None. The last one wins when mounts are stacked."""
    target = os.path.realpath(path)
    found = None
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if _unescape(fields[4]) == target:
                    found = MountEntry(target, fields[sep + 1], _unescape(fields[sep + 2]))
    except OSError:
        return None
    return found


def is_dead(path: str | Path) -> bool:
    """Is `path` a mountpoint whose daemon is gone (ENOTCONN)?"""
    try:
        os.statvfs(path)  # never answered from the kernel's attribute cache
    except OSError as e:
        return e.errno == errno.ENOTCONN and mount_at(path) is not None
    return False


def detach(path: str | Path) -> None:
    """Lazily unmount the dead mount `path` (nothing in it can be reached anyway)."""
    res = subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise click.ClickException(f"cannot detach the dead mount {path}: "
                                   f"{res.stderr.strip() or 'fusermount3 failed'}")


def clear_dead_mount(mountpoint: str, say: Callable[[str], None]) -> None:
    """A dead agentfs mount on `mountpoint` (its daemon was killed) is detached,
    saying so: every committed write is in the store, nothing is lost. A dead
    mount of another filesystem is left alone, with the command that clears it."""
    if not is_dead(mountpoint):
        return
    entry = mount_at(mountpoint)
    reason = os.strerror(errno.ENOTCONN)
    if entry is None or entry.fstype != AGENTFS_FSTYPE:
        kind = entry.fstype if entry else "unknown"
        raise click.ClickException(f"{mountpoint} is a dead {kind} mount ({reason}), not "
                                   f"agentfs's: clear it with fusermount3 -u -z {mountpoint}")
    say(f"{mountpoint} is a dead agentfs mount ({reason}: its daemon is gone); "
        f"detaching it (fusermount3 -u -z {mountpoint})")
    detach(mountpoint)


# ------------------------------------------------------------------ the store lock


def _holder(text: str) -> tuple[int, str]:
    """(pid, mountpoint) from what a daemon writes into the lock: "pid N on M"."""
    m = re.match(r"pid (\d+) on (.*)$", text)
    return (int(m.group(1)), m.group(2)) if m else (0, "")


def wait_for_store(store: Path, say: Callable[[str], None],
                   timeout: float = UNMOUNT_WAIT) -> None:
    """Return once no daemon holds the store's lock. A daemon whose mount is
    gone (a plain `umount` or `fusermount3 -u`) still syncs and closes the
    store before it lets go: wait for it, up to `timeout`. A store that is
    really mounted is refused at once."""
    if not store.is_dir():
        return
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        try:
            os.close(lock_store(store))
            return
        except StoreBusy as e:
            holder = e.holder
        pid, where = _holder(holder)
        serving = mount_at(where, pid) if pid and where else None
        if serving is not None and serving.fstype == AGENTFS_FSTYPE:
            raise click.ClickException(f"store {store} is already mounted on {where} "
                                       f"(daemon pid {pid}); agentfs umount {where} first")
        if time.monotonic() > deadline:
            raise click.ClickException(f"store {store} is still in use after {timeout:g}s "
                                       f"({holder or 'by an offline agentfs command'})")
        if not waiting:
            who = f"pid {pid}" if pid and os.path.exists(f"/proc/{pid}") else holder or "?"
            say(f"waiting for the daemon of {store} to finish unmounting ({who})")
            waiting = True
        time.sleep(0.05)


class ExistingDir(click.Path):
    """An existing directory argument; one inside a dead mount is refused with
    the fix, not as "does not exist"."""

    def __init__(self) -> None:
        super().__init__(exists=True, file_okay=False)

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        refuse_dead(value)
        return super().convert(value, param, ctx)


def refuse_dead(path: str | os.PathLike[str]) -> None:
    """Fail with the dead mount's fix if `path` lies in one."""
    from agentfs.client import dead_mount, dead_mount_reason

    dead = dead_mount(path)
    if dead is not None:
        raise click.ClickException(dead_mount_reason(dead))
