"""Imports (`import HOSTDIR DIR` on `.agentfs/ctl`) running in the daemon.

The control write returns once the command is checked; the import goes on as
a trio task, so that the control file stays free for other commands while it
runs. Other requests keep flowing: the host walk (`HostImport.scan`, which
touches no store state) runs in a worker thread, and each store step is one
bounded transaction (agentfs.posix.hostimport: a few thousand inodes, 16 MiB
or 20 ms of work), never held across an await, so a request waits at most for
the step in progress. Between steps the import defers to requests that keep
coming (an `ls -l` is a train of requests, each sent once the last is
answered): it goes on once none came for DEFER_GAP, or after as long again as
its last step took, so under load it still gets about half of the loop.

Each job has a status line in the control file's status:

    import 3 pid=1234 importing 41000/100000 files 130.2/512.0 MiB: /src -> work/x
    import 3 pid=1234 done: imported 100000 files, 512.0 MiB from /src into work/x in 9.81 s
    import 4 pid=1240 failed ENOSPC: the store is full (ENOSPC); nothing of the import is kept

and a failure's reason also goes to `errstr`, for the process that wrote the
command. Only root or the daemon's own user may import: the daemon reads the
host as itself.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from agentfs.agents.control import Result
from agentfs.errors import FsError
from agentfs.posix.hostimport import HostImport

from .errstr import ErrorLog
from .namespace import Effects

log = logging.getLogger("agentfs.daemon")

KEEP_FINISHED = 16  # finished jobs still shown in the status
DEFER_GAP = 0.0005  # seconds without a request after which an import goes on


@dataclass
class Job:
    id: int
    pid: int
    work: HostImport
    state: str = "running"  # running | done | failed
    outcome: str = ""
    cancelled_by: int = 0  # the pid that asked to stop it
    # Around the host scan: import-cancel cancels it, and the scan's thread is
    # abandoned (it stops at its next entry, never touching the store).
    scan_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def line(self) -> str:
        w = self.work
        head = f"import {self.id} pid={self.pid}"
        if self.state == "done":
            return f"{head} done: {self.outcome}"
        if self.state == "failed":
            return f"{head} failed {self.outcome}"
        p = w.progress
        if p.phase in ("checking", "scanning"):
            return f"{head} scanning {p.scanned} entries: {w.host} -> {w.dest.lstrip('/')}"
        return (f"{head} {p.phase} {p.files_done}/{p.files_total} files "
                f"{p.bytes_done / (1 << 20):.1f}/{p.bytes_total / (1 << 20):.1f} MiB: "
                f"{w.host} -> {w.dest.lstrip('/') or '/'}")


class Imports:
    def __init__(self, effects: Effects, errors: ErrorLog, served: Callable[[], int]) -> None:
        self.effects = effects
        self.errors = errors
        self.served = served  # requests the daemon has handled so far
        self.jobs: list[Job] = []
        self.ids = itertools.count(1)

    @staticmethod
    def check_user(pid: int) -> None:
        """EPERM unless process `pid` runs as root or as the daemon's user."""
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            uid = -1
        if uid not in (0, os.geteuid()):
            raise FsError(errno.EPERM, "import reads the host as the daemon's user: only "
                          "root or that user may ask for one, or stop one")

    def cancel(self, job_id: int, pid: int) -> None:
        """Stop import `job_id` after its step in progress (at once if it is
        still scanning the host); it frees what it staged."""
        self.check_user(pid)
        for job in self.jobs:
            if job.id == job_id and job.state == "running":
                job.cancelled_by = pid
                job.work.stop.set()
                job.scan_scope.cancel()
                return
        raise FsError(errno.ENOENT, f"no import {job_id} is running")

    def start(self, work: HostImport, pid: int) -> Job:
        """Start a checked import for process `pid` (EPERM unless it runs as root
        or as the daemon's user)."""
        self.check_user(pid)
        job = Job(next(self.ids), pid, work)
        self.jobs.append(job)
        finished = [j for j in self.jobs if j.state != "running"]
        for old in finished[:-KEEP_FINISHED]:
            self.jobs.remove(old)
        trio.lowlevel.spawn_system_task(self.run, job, name=f"import {job.id}")
        return job

    async def run(self, job: Job) -> None:
        w = job.work
        try:
            # Abandoned when cancelled (import-cancel, unmount): the walk of a
            # big host tree must not hold up either; `stop` ends the thread.
            try:
                with job.scan_scope:
                    await trio.to_thread.run_sync(w.scan, abandon_on_cancel=True)
            finally:
                w.stop.set()  # (done, or abandoned: no more host walking)
            if job.cancelled_by:
                raise self.cancelled(job)
            start = trio.current_time()
            for p in w.steps():
                await self.defer(trio.current_time() - start)
                start = trio.current_time()
                if job.cancelled_by and p.phase != "done":
                    raise self.cancelled(job)
        except Exception as e:  # noqa: BLE001 - a system task must not raise
            await self.failed(job, e)
            return
        job.state, job.outcome = "done", w.summary()
        if w.merge:
            changed = [(w.dest_ino, b"", 0)]
        else:
            changed = [(w.dest_ino, w.name, 0)]
        self.effects.done(Result(f"import {job.id} done", changed))
        log.info("import %d: %s", job.id, job.outcome)

    @staticmethod
    def cancelled(job: Job) -> FsError:
        return FsError(errno.ECANCELED, f"cancelled by pid {job.cancelled_by}; nothing of "
                       "the import is kept")

    async def defer(self, step: float) -> None:
        """Let the requests waiting behind a step in, and those that follow
        them, for at most `step` seconds."""
        deadline = trio.current_time() + step
        seen = self.served()
        await trio.sleep(0)
        while self.served() != seen and trio.current_time() < deadline:
            seen = self.served()
            await trio.sleep(DEFER_GAP)

    async def failed(self, job: Job, e: Exception) -> None:
        if isinstance(e, FsError):
            reason = e.message
            code = errno.errorcode.get(e.errno, str(e.errno))
        else:
            log.error("import %d failed", job.id, exc_info=e)
            reason, code = f"unexpected error: {e!r}", "EIO"
        job.state, job.outcome = "failed", f"{code}: {reason}"
        self.errors.record(job.pid, f"import {job.work.host} {job.work.dest.lstrip('/')}: "
                           f"{reason}")
        try:
            for _ in job.work.abandon():
                await trio.sleep(0)
        except Exception:  # noqa: BLE001 - the next mount frees what is left
            log.exception("import %d: freeing its staged tree failed", job.id)

    def status(self) -> str:
        return "".join(j.line() + "\n" for j in self.jobs)
