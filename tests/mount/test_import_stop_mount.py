"""import-cancel and unmount while an import is still walking the host tree:
neither waits for the walk (daemon/imports.py abandons its scan thread).

The host tree here is on a second agentfs mount whose daemon is stopped
(SIGSTOP) once the import is checked: the walk blocks in a readdir, as on a
hung network filesystem, until the daemon is continued."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # (only then: a unit test's conftest may be the one imported)
    from conftest import Mount

pytestmark = pytest.mark.agentfs_only

PROMPT = 10.0  # seconds: "at once" on a loaded machine (the walk would block for ever)


@pytest.fixture
def slow_host(mount: Mount, tmp_path: Path) -> Iterator[Mount]:
    """Another mount holding the host tree, at `.path / "tree"`."""
    other = type(mount)(tmp_path / "hostmnt", tmp_path / "hoststore")
    other.start()
    for i in range(20):
        (other.path / "tree" / f"d{i}").mkdir(parents=True)
        (other.path / "tree" / f"d{i}" / "f").write_text("x")
    try:
        yield other
    finally:
        assert other.proc is not None
        other.proc.send_signal(signal.SIGCONT)
        other.umount()


def status(mount: Mount) -> str:
    return (mount.path / ".agentfs" / "ctl").read_text()


def ctl(mount: Mount, line: str) -> None:
    subprocess.run(["sh", "-c", f'echo "{line}" > "$1"', "sh",
                    str(mount.path / ".agentfs" / "ctl")], check=True, timeout=PROMPT)


def start_blocked_import(mount: Mount, host: Mount, dest: str) -> None:
    assert host.proc is not None
    host.proc.send_signal(signal.SIGCONT)
    ctl(mount, f"import {host.path / 'tree'} {dest}")  # checked (that reads the host)
    host.proc.send_signal(signal.SIGSTOP)  # before the walk is done: it blocks


def wait_for(mount: Mount, text: str) -> None:
    deadline = time.monotonic() + PROMPT
    while text not in (now := status(mount)):
        assert time.monotonic() < deadline, now
        time.sleep(0.02)


def test_cancel_and_unmount_do_not_wait_for_the_walk(mount: Mount, slow_host: Mount) -> None:
    start_blocked_import(mount, slow_host, "dst")
    time.sleep(0.2)
    if "done:" in status(mount):
        pytest.skip("the walk finished before its host was stopped")
    ctl(mount, "import-cancel 1")
    wait_for(mount, "import 1 pid")
    wait_for(mount, "failed ECANCELED: cancelled by pid")
    assert not (mount.path / "dst").exists()
    start_blocked_import(mount, slow_host, "dst2")
    time.sleep(0.2)
    started = time.monotonic()
    mount.umount()
    assert time.monotonic() - started < PROMPT
    mount.fsck()
    mount.start()
    assert sorted(os.listdir(mount.path)) == ["AGENTS.md", "agents"]
