"""The rough edges a new user hits with `agentfs mount`, `umount` and `fork`:

- a fresh mount shows `agents/` and `AGENTS.md` (an old store gets them on mount);
- a dead mount (daemon SIGKILLed, ENOTCONN) is named, with its fix, by every
  command that meets it; `agentfs mount` detaches it and mounts, `agentfs
  umount` detaches it;
- `mount` says what it mounted where; `fork` prints the new path;
- a remount right after a plain `umount` waits for the old daemon to let go of
  the store, but a store that is really mounted is refused at once;
- `-o` options, `mount -t fuse.agentfs` and an fstab line;
- `--store` refuses a non-empty directory that is not a store.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_systemd_and_cli import (
    cli,
    daemon_pid,
    force_unmount,
    is_mountpoint,
    process_gone,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AGENTFS_TEST_TARGET")), reason="needs real agentfs mounts")

HELPER = Path("/sbin/mount.fuse.agentfs")
CLI = [sys.executable, "-m", "agentfs.cli"]


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mountpoints registered here are unmounted, their daemons ended, at teardown."""
    registered: list[Path] = []
    yield registered
    for m in registered:
        if is_mountpoint(m):
            force_unmount(m)


def ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def mount_bg(mnt: Path, store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("mount", mnt, "--store", store, *args)


def fsck_clean(store: Path) -> None:
    ok(cli("fsck", "--store", store))


def kill_daemon(mnt: Path) -> None:
    """SIGKILL the daemon: its mount stays behind, dead (ENOTCONN)."""
    pid = daemon_pid(mnt)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: process_gone(pid), what="the daemon to die")
    with pytest.raises(OSError) as e:
        os.statvfs(mnt)
    assert e.value.errno == errno.ENOTCONN


def mount_options_of(mnt: Path) -> tuple[str, str, str]:
    """(per-mount options, fs type, source) of `mnt` in mountinfo."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == os.path.realpath(mnt):
                sep = fields.index("-")
                return fields[5], fields[sep + 1], fields[sep + 2]
    raise AssertionError(f"{mnt} is not mounted")


def umount_and_wait(mnt: Path) -> None:
    pid = daemon_pid(mnt)
    ok(cli("umount", mnt))
    assert process_gone(pid)


# ------------------------------------------------------------------ 1. agents/ at mount


def test_a_fresh_mount_shows_agents_and_its_guide(tmp_path: Path, mounts: list[Path]) -> None:
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    mounts.append(mnt)
    ok(mount_bg(mnt, store))
    assert sorted(os.listdir(mnt)) == ["AGENTS.md", "agents"]
    assert (mnt / "agents").is_dir() and os.listdir(mnt / "agents") == []
    assert (mnt / "AGENTS.md").read_text().startswith("#")
    # A store without agents/ (made before, or after `rmdir agents`) gets it back on mount.
    os.rmdir(mnt / "agents")
    assert os.listdir(mnt) == []
    umount_and_wait(mnt)
    fsck_clean(store)
    ok(mount_bg(mnt, store))
    assert sorted(os.listdir(mnt)) == ["AGENTS.md", "agents"]
    umount_and_wait(mnt)
    fsck_clean(store)


# ------------------------------------------------------------------ 3. dead mounts


def test_dead_mount_is_named_with_its_fix_then_cleared(tmp_path: Path,
                                                       mounts: list[Path]) -> None:
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    mounts.append(mnt)
    ok(mount_bg(mnt, store))
    (mnt / "kept").write_text("committed\n")
    os.mkdir(mnt / "d")
    kill_daemon(mnt)

    fix = f"agentfs umount {mnt}"
    for args in (("ls", "--mount", str(mnt)), ("spawn", "x", "--mount", str(mnt)),
                 ("snapshots", str(mnt / "d")), ("snapshot", str(mnt / "d"), "s"),
                 ("fork", str(mnt / "d"), str(mnt / "e")), ("gc", "--mount", str(mnt))):
        res = cli(*args)
        assert res.returncode != 0, args
        assert f"{mnt} is a dead agentfs mount" in res.stderr and fix in res.stderr, (
            args, res.stderr)
        assert "Traceback" not in res.stderr
    res = cli("ls", env={**os.environ, "AGENTFS_MOUNT": str(mnt)})
    assert res.returncode != 0 and f"{mnt} is a dead agentfs mount" in res.stderr, res.stderr

    # `agentfs mount` says what it found and detaches it, then mounts.
    res = ok(mount_bg(mnt, store))
    assert f"{mnt} is a dead agentfs mount" in res.stderr and "detaching it" in res.stderr
    assert (mnt / "kept").read_text() == "committed\n"

    # `agentfs umount` on a dead mount detaches it.
    kill_daemon(mnt)
    res = ok(cli("umount", mnt))
    assert "dead mount" in res.stdout
    assert not is_mountpoint(mnt) and os.listdir(mnt) == []
    fsck_clean(store)


# ------------------------------------------------------------------ 4. what mount and fork say


def test_mount_and_fork_say_what_they_made(tmp_path: Path, mounts: list[Path]) -> None:
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    mounts.append(mnt)
    res = ok(mount_bg(mnt, store))
    assert res.stdout == f"mounted lmdb:{store} at {mnt}\n"
    ok(cli("spawn", "alice", "--mount", mnt))
    res = ok(cli("fork", "alice", "alice-2", "--mount", mnt))
    assert res.stdout == f"{mnt / 'agents' / 'alice-2'}\n"
    os.mkdir(mnt / "src")
    res = ok(cli("fork", mnt / "src", mnt / "dst"))
    assert res.stdout == f"{mnt / 'dst'}\n"
    assert (mnt / "dst").is_dir()
    umount_and_wait(mnt)
    fsck_clean(store)


# ------------------------------------------------------------------ 5. remount at once


def test_remount_right_after_a_plain_umount(tmp_path: Path, mounts: list[Path]) -> None:
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    mounts.append(mnt)
    waited = 0
    for i in range(4):
        ok(mount_bg(mnt, store))
        # Something for the daemon to sync after the kernel lets go of the mount.
        with open(mnt / f"f{i}", "wb") as f:
            f.write(os.urandom(4 << 20))
        for j in range(i + 1):
            assert (mnt / f"f{j}").stat().st_size == 4 << 20
        subprocess.run(["umount", str(mnt)], check=True)
        res = ok(mount_bg(mnt, store))
        waited += "waiting for the daemon of" in res.stderr
        assert len(list(mnt.glob("f*"))) == i + 1
        subprocess.run(["umount", str(mnt)], check=True)
    wait_until(lambda: not (store / "agentfs.lock").exists() or _lock_free(store),
               what="the last daemon to exit")
    fsck_clean(store)


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + "/agentfs.lock", os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, ("pid %d on %s\\n" % (os.getpid(), sys.argv[2])).encode())
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def test_remount_waits_for_the_old_daemon_to_let_go(tmp_path: Path,
                                                    mounts: list[Path]) -> None:
    """The store's lock held as a daemon holds it between the end of its mount
    and its exit (its mountpoint no longer mounted): the new mount waits, says
    so once, and mounts when the lock is free."""
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    mounts.append(mnt)
    ok(mount_bg(mnt, store))
    (mnt / "f").write_bytes(b"x" * (1 << 20))
    umount_and_wait(mnt)
    with subprocess.Popen([sys.executable, "-c", HOLDER, str(store), str(mnt), "2"],
                          stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        start = time.monotonic()
        res = ok(mount_bg(mnt, store))
        took = time.monotonic() - start
        holder.wait(timeout=30)
    assert took >= 1.0, f"mount did not wait for the lock ({took:.2f}s)"
    assert res.stderr.count("waiting for the daemon of") == 1, res.stderr
    assert (f"waiting for the daemon of {store} to finish unmounting (pid {holder.pid})"
            in res.stderr), res.stderr
    assert (mnt / "f").stat().st_size == 1 << 20
    umount_and_wait(mnt)
    fsck_clean(store)


def _lock_free(store: Path) -> bool:
    from agentfs.storage.lock import StoreBusy, lock_store

    try:
        os.close(lock_store(store))
    except StoreBusy:
        return False
    return True


def test_a_store_mounted_elsewhere_is_refused_at_once(tmp_path: Path,
                                                      mounts: list[Path]) -> None:
    a, b, store = tmp_path / "a", tmp_path / "b", tmp_path / "store"
    a.mkdir()
    b.mkdir()
    mounts += [a, b]
    ok(mount_bg(a, store))
    start = time.monotonic()
    res = mount_bg(b, store)
    assert res.returncode == 1
    assert time.monotonic() - start < 10
    assert f"store {store} is already mounted on {a} (daemon pid {daemon_pid(a)})" in res.stderr
    assert not is_mountpoint(b)
    umount_and_wait(a)


# ------------------------------------------------------------------ 6. -o options, mount(8), fstab


def test_mount_options(tmp_path: Path, mounts: list[Path]) -> None:
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    mounts.append(mnt)
    ok(mount_bg(mnt, store))
    (mnt / "f").write_text("x\n")
    umount_and_wait(mnt)
    res = ok(cli("mount", mnt, "-o", f"store={store},ro,noatime,nosuid,nodev,fsname=team",
                 "-o", "noauto,nofail,_netdev,x-systemd.requires=a.mount"))
    assert res.stdout == f"mounted lmdb:{store} at {mnt}\n"
    opts, fstype, source = mount_options_of(mnt)
    assert fstype == "fuse.agentfs" and source == "team"
    assert {"ro", "noatime", "nosuid", "nodev"} <= set(opts.split(",")), opts
    assert (mnt / "f").read_text() == "x\n"
    with pytest.raises(OSError) as e:
        (mnt / "g").write_text("y")
    assert e.value.errno == errno.EROFS
    umount_and_wait(mnt)

    for bad, says in ((["-o", "ro,frobnicate"], "unknown mount option 'frobnicate'"),
                      (["-o", "ro,rw"], "ro and rw contradict"),
                      (["--store", str(store), "-o", f"store={tmp_path}/other"], "disagree")):
        res = cli("mount", mnt, *bad)
        assert res.returncode == 2 and says in res.stderr, (bad, res.stderr)
        assert not is_mountpoint(mnt)
    fsck_clean(store)


@pytest.fixture
def mount_helper() -> Path:
    """/sbin/mount.fuse.agentfs, as scripts/install links it, to this checkout's helper."""
    mine = Path(sys.executable).parent / "mount.fuse.agentfs"
    assert HELPER.is_symlink() and Path(os.readlink(HELPER)) == mine, (
        f"{HELPER} must link to {mine}: run scripts/install")
    return HELPER


def test_mount_t_fuse_agentfs(tmp_path: Path, mounts: list[Path], mount_helper: Path) -> None:
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    mounts.append(mnt)
    res = subprocess.run(["mount", "-t", "fuse.agentfs", str(store), str(mnt), "-o",
                          "nosuid,noatime"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    opts, fstype, source = mount_options_of(mnt)
    assert fstype == "fuse.agentfs" and source == f"agentfs:{store}"
    assert {"nosuid", "noatime"} <= set(opts.split(","))
    (mnt / "f").write_text("via mount(8)\n")
    pid = daemon_pid(mnt)
    subprocess.run(["umount", str(mnt)], check=True)
    wait_until(lambda: process_gone(pid), what="the daemon to exit")
    fsck_clean(store)


def test_fstab_line(tmp_path: Path, mounts: list[Path], mount_helper: Path) -> None:
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    mounts.append(mnt)
    fstab = tmp_path / "fstab"
    fstab.write_text("# a line as /etc/fstab would hold it\n"
                     f"{store}  {mnt}  fuse.agentfs  defaults,noauto,nofail,_netdev,"
                     "x-systemd.automount,noatime  0  0\n")
    res = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    _, fstype, _ = mount_options_of(mnt)
    assert fstype == "fuse.agentfs"
    assert sorted(os.listdir(mnt)) == ["AGENTS.md", "agents"]
    pid = daemon_pid(mnt)
    subprocess.run(["umount", str(mnt)], check=True)
    wait_until(lambda: process_gone(pid), what="the daemon to exit")
    # The same line through the store placeholder: SPEC "none", store= in the options.
    fstab.write_text(f"none {mnt} fuse.agentfs store={store},noauto 0 0\n")
    res = subprocess.run(["mount", "-T", str(fstab), str(mnt)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert mount_options_of(mnt)[2] == f"agentfs:{store}"
    umount_and_wait(mnt)
    fsck_clean(store)


# ------------------------------------------------------------------ 7. --store checks


def test_store_must_be_a_store_or_empty(tmp_path: Path, mounts: list[Path]) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounts.append(mnt)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    (foreign / "dog.jpg").write_bytes(b"\xff\xd8")
    res = mount_bg(mnt, foreign)
    assert res.returncode == 1
    assert (f"{foreign} is not an agentfs store and is not empty (it holds cat.jpg, dog.jpg)"
            in res.stderr), res.stderr
    assert sorted(os.listdir(foreign)) == ["cat.jpg", "dog.jpg"]  # nothing scattered in it
    assert not is_mountpoint(mnt)

    empty, missing = tmp_path / "empty", tmp_path / "new" / "store"
    empty.mkdir()
    for store in (empty, missing):
        ok(mount_bg(mnt, store))
        (mnt / "f").write_text("x\n")
        umount_and_wait(mnt)
        ok(mount_bg(mnt, store))  # an existing store
        assert (mnt / "f").read_text() == "x\n"
        umount_and_wait(mnt)
        fsck_clean(store)
