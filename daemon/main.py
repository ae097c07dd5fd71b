"""Mount lifecycle: checks, store lock, trio main loop, signals, sd_notify."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

import pyfuse3
import trio

from agentfs.posix.fs import FileSystem
from agentfs.storage import lock as storelock
from agentfs.storage.engines import NotAStore, StoreURL, check_store_directory, open_engine
from agentfs.storage.gc import collect_steps, queued

from .operations import Operations, invalidate_kernel_cache

log = logging.getLogger("agentfs.daemon")


class MountError(Exception):
    """A reason not to mount, for the user."""


def is_mountpoint(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def check_mountpoint(path: str) -> None:
    if not os.path.lexists(path):
        raise MountError(f"mountpoint {path} does not exist (mkdir -p {path})")
    if is_mountpoint(path):
        try:
            os.statvfs(path)  # never answered from the kernel's attribute cache
        except OSError as e:
            raise MountError(f"{path} is a dead mount ({e.strerror}); clear it with "
                             f"agentfs umount {path} (or fusermount3 -u -z {path})")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory")
    if is_mountpoint(path):
        raise MountError(f"{path} is already a mount point")
    if os.listdir(path):
        raise MountError(f"mountpoint {path} is not empty")


def lock_store(store: Path, mountpoint: str) -> int:
    """Hold an exclusive lock on the store for the daemon's life."""
    store.mkdir(parents=True, exist_ok=True)
    try:
        fd = storelock.lock_store(store)
    except storelock.StoreBusy as e:
        raise MountError(f"store {store} is already mounted ({e.holder})")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.path.realpath(mountpoint)}\n".encode(), 0)
    return fd


def sd_notify(state: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s, \
            contextlib.suppress(OSError):
        s.sendto(state.encode(), addr)


def mount_options(fsname: str, extra: Iterable[str] = (), debug: bool = False) -> set[str]:
    """The FUSE options of a mount: ours, then the user's `extra` ones (checked
    by the CLI: ro, nosuid, fsname=..., allow_root, ...)."""
    opts = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    opts |= {"subtype=agentfs"}
    extra = set(extra)
    if not any(o.startswith("fsname=") for o in extra):
        opts.add(f"fsname={fsname}")
    if "allow_root" not in extra and (os.getuid() == 0 or _user_allow_other()):
        opts.add("allow_other")
    if debug:
        opts.add("debug")  # libfuse logs every request
    return opts | extra


def _user_allow_other() -> bool:
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


async def _run(ops: Operations, ready: callable | None) -> None:  # type: ignore[valid-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, nursery.cancel_scope)
        nursery.start_soon(_collect_garbage, ops)
        sd_notify("READY=1")
        if ready is not None:
            ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _watch_signals(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        async for sig in sigs:
            log.info("signal %d: unmounting", sig)
            sd_notify("STOPPING=1")
            pyfuse3.terminate()
            return


async def _collect_garbage(ops: Operations) -> None:
    """Reclaim dead versions in small steps between requests."""
    while True:
        await trio.sleep(2)
        if not ops.gc_wanted:
            continue
        ops.gc_wanted = False
        try:
            for _ in collect_steps(ops.fs.store):
                await trio.sleep(0)
        except Exception:
            log.exception("background gc failed; will retry")
            ops.gc_wanted = True


def run_mount(mountpoint: str, store: Path, ready: callable | None = None,  # type: ignore[valid-type]
              debug: bool = False, fuse_options: Iterable[str] = ()) -> None:
    """Mount and serve until unmounted or signalled. Raises MountError."""
    check_mountpoint(mountpoint)
    try:
        check_store_directory(StoreURL("lmdb", str(store)))
    except NotAStore as e:
        raise MountError(str(e))
    lock_fd = lock_store(store, mountpoint)
    engine = open_engine(f"lmdb:{store}")
    try:
        fs = FileSystem(engine)
        freed = fs.free_orphans()
        if freed:
            log.info("freed %d inodes unlinked while open before the last shutdown", freed)
        ops = Operations(fs, str(store), invalidate_kernel_cache, mountpoint)
        with fs.store.read() as tx:
            ops.gc_wanted = queued(tx)
        try:
            pyfuse3.init(ops, mountpoint, mount_options(f"agentfs:{store}", fuse_options, debug))
        except RuntimeError as e:
            raise MountError(f"cannot mount {mountpoint}: {e}")
        ok = False
        try:
            trio.run(_run, ops, ready)
            ok = True
        finally:
            pyfuse3.close(unmount=True)
            if not ok:
                log.error("main loop failed; store left consistent (last committed state)")
    finally:
        engine.close()
        os.close(lock_fd)


def daemonize_and_mount(mountpoint: str, store: Path, debug: bool = False,
                        fuse_options: Iterable[str] = ()) -> int:
    """Fork, mount in the child, and return once the mount is live (or failed)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            msg = r.read().decode()
        if msg.startswith("ok"):
            return 0
        sys.stderr.write(msg or "agentfs: daemon exited before mounting\n")
        return 1
    os.close(rfd)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    logdir = store
    logdir.mkdir(parents=True, exist_ok=True)
    logfd = os.open(logdir / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)

    def ready() -> None:
        os.write(wfd, b"ok\n")
        os.close(wfd)

    code = 0
    try:
        run_mount(mountpoint, store, ready, debug, fuse_options)
    except MountError as e:
        with contextlib.suppress(OSError):
            os.write(wfd, f"agentfs: {e}\n".encode())
        code = 1
    except BaseException as e:  # noqa: BLE001 - report anything to the waiting parent
        with contextlib.suppress(OSError):
            os.write(wfd, f"agentfs: daemon failed: {e!r}\n".encode())
        log.exception("daemon failed")
        code = 1
    os._exit(code)


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))
