"""Shared fixtures: a real agentfs mount through /dev/fuse.

`mount` yields a `Mount` with the mountpoint, the store directory and helpers
to unmount, remount, SIGKILL the daemon and run fsck on the store.

Setting AGENTFS_TEST_TARGET=/some/dir makes `mount` hand out a plain
directory below that path instead (no daemon): useful to check that a POSIX
test itself is right by running it on tmpfs. Tests that need agentfs-specific
features mark themselves with `agentfs_only`.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PLAIN_TARGET = os.environ.get("AGENTFS_TEST_TARGET")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "agentfs_only: needs a real agentfs mount")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """Collect garbage after each test body, so that a resource it leaked (an
    unclosed socket, file or client) fails that test's teardown, not whichever
    later test the collector happens to run in (a leaked SDK client once failed
    an unrelated unit test in CI this way)."""
    result = yield
    gc.collect()
    return result


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not PLAIN_TARGET:
        return
    skip = pytest.mark.skip(reason="AGENTFS_TEST_TARGET set: plain directory, no agentfs")
    for item in items:
        if "agentfs_only" in item.keywords:
            item.add_marker(skip)


def is_mountpoint(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


class Mount:
    """A running agentfs daemon serving `path` from `store`."""

    def __init__(self, path: Path, store: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.path = path
        self.store = store
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.parent / "daemon.log"

    def cli(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentfs.cli", *args],
            check=check, capture_output=True, text=True, **kw,
        )

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentfs.cli", "mount", str(self.path),
                 "--store", str(self.store), "--foreground", *self.extra_args],
                stdout=logf, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while not is_mountpoint(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount did not appear: {self.log.read_text()}")
            time.sleep(0.02)
        os.stat(self.path)  # wait for FUSE INIT to complete

    def umount(self) -> None:
        if self.proc is None:
            return
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False,
                       capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the daemon and clean up the dead mount."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False,
                       capture_output=True)

    def remount(self) -> None:
        self.umount()
        self.start()

    def fsck(self) -> str:
        """Run fsck on the store (daemon may be running); fail the test if unclean."""
        res = self.cli("fsck", "--store", str(self.store), check=False)
        assert res.returncode == 0, f"fsck failed:\n{res.stdout}\n{res.stderr}"
        return res.stdout


class PlainDir(Mount):
    """Stand-in for Mount over a plain directory (AGENTFS_TEST_TARGET)."""

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def umount(self) -> None:
        pass

    def kill(self) -> None:
        pass

    def fsck(self) -> str:
        return ""


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    if PLAIN_TARGET:
        base = Path(tempfile.mkdtemp(dir=PLAIN_TARGET))
        m: Mount = PlainDir(base / "mnt", base / "store")
        m.start()
        yield m
        shutil.rmtree(base, ignore_errors=True)
        return
    m = Mount(tmp_path / "mnt", tmp_path / "store")
    m.start()
    try:
        yield m
    finally:
        m.umount()
    m.fsck()


@pytest.fixture
def mnt(mount: Mount) -> Path:
    """Just the mounted path."""
    return mount.path
