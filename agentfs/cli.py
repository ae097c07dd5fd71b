"""The `agentfs` command. Daemon code is imported lazily, only by `mount`."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click


def default_store() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "agentfs" / "default"


def is_mountpoint(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def find_mount(path: str) -> Path:
    """The agentfs mount root that `path` (existing or not) lies in."""
    p = Path(os.path.abspath(path))
    for cand in (p, *p.parents):
        if cand.exists() and is_mountpoint(str(cand)) and (cand / ".agentfs" / "ctl").exists():
            return cand
    raise click.ClickException(f"{path} is not inside an agentfs mount")


def control(mount: Path, *words: str) -> str:
    """Write one command to the mount's control file; raise with errstr on failure."""
    line = " ".join(shlex.quote(w) for w in words) + "\n"
    try:
        with open(mount / ".agentfs" / "ctl", "w") as f:
            f.write(line)
    except OSError as e:
        reason = (mount / ".agentfs" / "errstr").read_text().strip()
        raise click.ClickException(f"{words[0]} failed ({e.strerror}): {reason}")
    return (mount / ".agentfs" / "ctl").read_text().strip()


def rel(mount: Path, path: str) -> str:
    p = Path(os.path.abspath(path))
    try:
        return "/" + str(p.relative_to(mount))
    except ValueError:
        raise click.ClickException(f"{path} is not inside {mount}")


@click.group()
def main() -> None:
    """agentfs: a FUSE filesystem for multi-agent coordination."""


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="LMDB store directory (default $XDG_DATA_HOME/agentfs/default)")
@click.option("--foreground/--background", default=False,
              help="stay attached (systemd, tests) or return once mounted")
@click.option("--debug", is_flag=True, help="log every request")
def mount(mountpoint: str, store: Path | None, foreground: bool, debug: bool) -> None:
    """Mount the store on MOUNTPOINT."""
    import logging

    from agentfs.daemon.main import MountError, daemonize_and_mount, run_mount

    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store = store or default_store()
    if not foreground:
        sys.exit(daemonize_and_mount(mountpoint, store, debug))
    try:
        run_mount(mountpoint, store, debug=debug)
    except MountError as e:
        raise click.ClickException(str(e))


@main.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--timeout", default=60.0, help="seconds to wait for the daemon to finish")
def umount(mountpoint: str, timeout: float) -> None:
    """Flush and unmount MOUNTPOINT; waits until the daemon has exited."""
    mnt = Path(os.path.abspath(mountpoint))
    if not is_mountpoint(str(mnt)):
        raise click.ClickException(f"{mountpoint} is not mounted")
    pid = 0
    try:
        status = (mnt / ".agentfs" / "ctl").read_text()
        pid = int(status.split("pid=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    res = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        raise click.ClickException(res.stderr.strip() or "fusermount3 failed")
    deadline = time.monotonic() + timeout
    while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)


@main.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dst", type=click.Path())
@click.option("--at", "epoch", type=int, default=None, help="fork the state at a pinned epoch")
def fork(src: str, dst: str, epoch: int | None) -> None:
    """Make DST a copy-on-write fork of directory SRC (same mount)."""
    m = find_mount(src)
    args = [rel(m, src), rel(m, dst)] + ([str(epoch)] if epoch else [])
    control(m, "fork", *args)


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("name")
@click.option("--delete", is_flag=True, help="delete snapshot NAME instead")
@click.option("--at", "epoch", type=int, default=None, help="snapshot a pinned epoch")
def snapshot(directory: str, name: str, delete: bool, epoch: int | None) -> None:
    """Create (or --delete) read-only snapshot NAME of DIRECTORY: DIRECTORY/.snapshots/NAME."""
    m = find_mount(directory)
    if delete:
        control(m, "unsnapshot", rel(m, directory), name)
    else:
        control(m, "snapshot", rel(m, directory), name, *([str(epoch)] if epoch else []))


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def snapshots(directory: str) -> None:
    """List the snapshots of DIRECTORY."""
    for name in sorted(os.listdir(Path(directory) / ".snapshots")):
        click.echo(name)


@main.command()
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--mount", "mountpoint", type=click.Path(exists=True, file_okay=False), default=None,
              help="run gc inside the daemon serving this mount")
def gc(store: Path | None, mountpoint: str | None) -> None:
    """Reclaim versions and blocks no view can see."""
    if mountpoint:
        click.echo(control(find_mount(mountpoint), "gc"))
        return
    from agentfs.fs import FileSystem
    from agentfs.gc import collect
    from agentfs.kv import LmdbEngine

    path = (store or default_store()) / "lmdb"
    if not path.exists():
        raise click.ClickException(f"no store at {path.parent}")
    lock = _lock_unmounted(path.parent)
    fs = FileSystem(LmdbEngine(path))
    stats = collect(fs.store, everything=True)
    fs.engine.close()
    os.close(lock)
    click.echo(" ".join(f"{k}={v}" for k, v in stats.items()))


def _lock_unmounted(store: Path) -> int:
    """Hold the store's lock: refuse to work on a store a daemon is serving."""
    import fcntl

    fd = os.open(store / "agentfs.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        os.close(fd)
        raise click.ClickException(f"store {store} is mounted ({holder}); "
                                   "use agentfs gc --mount MOUNTPOINT")
    return fd


@main.command()
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=None)
def fsck(store: Path | None) -> None:
    """Check every invariant of the store; exit 0 only when clean."""
    from agentfs.fsck import check_store
    from agentfs.kv import LmdbEngine

    path = (store or default_store()) / "lmdb"
    if not path.exists():
        raise click.ClickException(f"no store at {path.parent}")
    engine = LmdbEngine(path)
    report = check_store(engine)
    engine.close()
    for line in report.problems:
        click.echo(f"PROBLEM {line}")
    click.echo(report.summary())
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
