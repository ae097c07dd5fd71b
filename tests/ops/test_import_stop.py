"""A running import's host scan (daemon/imports.py) neither holds up
import-cancel nor the daemon's shutdown: the worker thread walking the host
is abandoned and stops at its next directory, touching nothing after.
The walk is made slow here (each directory listing sleeps), as a big host
tree or a slow host filesystem would make it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio
from agentfs.daemon.operations import CTL_INO, CTLDIR_INO, Operations
from opsutil import Ctx

from agentfs.posix.fs import ROOT_INO
from agentfs.posix.hostimport import HostImport

DIRS = 400
PAUSE = 0.05  # per directory: a scan of DIRS directories takes 20 s
PROMPT = 3.0  # what "at once" may take on a loaded machine


@pytest.fixture
def slow_listing(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make each host directory listing slow; the times they started."""
    calls: list[float] = []
    real = HostImport._listing

    def listing(path: bytes) -> list[tuple[bytes, bytes, os.stat_result]]:
        calls.append(time.monotonic())
        time.sleep(PAUSE)
        return real(path)

    monkeypatch.setattr(HostImport, "_listing", staticmethod(listing))
    return calls


@pytest.fixture
def src(tmp_path: Path) -> Path:
    top = tmp_path / "src"
    for i in range(DIRS):
        (top / f"d{i}").mkdir(parents=True)
    return top


async def write_ctl(ops: Operations, line: str) -> None:
    ctx = Ctx(pid=os.getpid())  # (an import needs root or the daemon's user)
    await ops.lookup(ROOT_INO, b".agentfs", ctx)
    await ops.lookup(CTLDIR_INO, b"ctl", ctx)
    fi = await ops.open(CTL_INO, os.O_WRONLY, ctx)
    try:
        await ops.write(fi.fh, 0, line.encode())
    finally:
        await ops.release(fi.fh)


async def start_and_wait_for_the_scan(ops: Operations, src: Path, calls: list[float]) -> None:
    await write_ctl(ops, f"import {src} dst\n")
    with trio.fail_after(PROMPT):
        while len(calls) < 3:
            await trio.sleep(0.01)


def assert_the_walk_stopped(calls: list[float]) -> None:
    time.sleep(2 * PAUSE)
    seen = len(calls)
    time.sleep(4 * PAUSE)
    assert len(calls) == seen < DIRS / 2, "the abandoned scan thread goes on walking"


def test_cancel_during_the_scan_ends_it_at_once(ops: Operations, src: Path,
                                                slow_listing: list[float]) -> None:
    async def main() -> None:
        await start_and_wait_for_the_scan(ops, src, slow_listing)
        job = ops.ctldir.imports.jobs[0]
        assert job.work.progress.phase == "scanning"
        await write_ctl(ops, f"import-cancel {job.id}\n")
        with trio.fail_after(PROMPT):
            while job.state == "running":
                await trio.sleep(0.01)
        assert job.state == "failed" and job.outcome.startswith("ECANCELED: cancelled by pid")

    trio.run(main)
    assert_the_walk_stopped(slow_listing)
    assert b"dst" not in {e.name for e in ops.fs.readdir(ROOT_INO)}


def test_shutdown_during_the_scan_does_not_wait_for_it(ops: Operations, src: Path,
                                                       slow_listing: list[float]) -> None:
    async def main() -> None:
        await start_and_wait_for_the_scan(ops, src, slow_listing)
        # Returning ends trio.run, as unmount or SIGTERM does: system tasks
        # (the import's) are cancelled, and trio.run waits for them.

    started = time.monotonic()
    trio.run(main)
    assert time.monotonic() - started < PROMPT
    assert_the_walk_stopped(slow_listing)
    assert b"dst" not in {e.name for e in ops.fs.readdir(ROOT_INO)}
