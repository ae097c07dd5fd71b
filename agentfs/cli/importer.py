"""`agentfs import HOSTDIR DIR`: seed a mount with a host tree, fast.

The copy is made inside the daemon (`import HOSTDIR DIR` on the mount's
`.agentfs/ctl`, see agentfs.posix.hostimport), in large transactions instead
of the ten-odd FUSE requests per file a `cp -a` costs. This command writes the
control line, then follows the import's status line in the control file until
it is done: a progress bar on a terminal, a plain line now and then
otherwise; exit status 1 and the daemon's reason on failure.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from agentfs.cli.progress import progress_bar

POLL = 0.1  # seconds between reads of the status
STATUS_LINE = re.compile(r"^import (\d+) pid=(\d+) (\S+)(.*)$")
COUNTS = re.compile(r"(\d+)/(\d+) files ([\d.]+)/([\d.]+) MiB")
DONE = re.compile(r"imported (\d+) files")


def job_line(status: str, pid: int, job: int | None) -> tuple[int, str, str] | None:
    """(job id, state, rest) of the newest import `pid` asked for (or of `job`)."""
    found = None
    for line in status.splitlines():
        m = STATUS_LINE.match(line)
        if m and int(m.group(2)) == pid and (job is None or int(m.group(1)) == job):
            found = int(m.group(1)), m.group(3), m.group(4)
    return found


def destination(directory: str, mount_opt: str | None) -> tuple[Path, str]:
    """(mount root, DIR relative to it): DIR is a path on this machine, or with
    --mount, a path inside that mount (relative to its root)."""
    from agentfs.cli.main import find_mount, rel

    if mount_opt is None:
        mount = find_mount(directory)
        return mount, rel(mount, directory)
    mount = find_mount(mount_opt)
    if os.path.isabs(directory) and Path(directory).is_relative_to(mount):
        return mount, rel(mount, directory)
    return mount, "/" + directory.lstrip("/")


@click.command(name="import")
@click.argument("hostdir", type=click.Path(exists=True, file_okay=False))
@click.argument("directory")
@click.option("--mount", "mount_opt", type=click.Path(file_okay=False), default=None,
              help="the mount DIRECTORY is in (then DIRECTORY may be relative to its root)")
def import_command(hostdir: str, directory: str, mount_opt: str | None) -> None:
    """Copy host directory HOSTDIR into DIRECTORY of a mount, inside the daemon.

    DIRECTORY must be a directory (HOSTDIR's entries go into it; a name already
    there fails the import) or not exist (it becomes a copy of HOSTDIR). Modes,
    owners (daemon running as root), times, symlinks, hard links, fifos and
    xattrs are kept; device nodes are skipped. Nothing shows in the mount until
    the whole tree is in.
    """
    mount, dest = destination(directory, mount_opt)
    host = os.path.abspath(hostdir)  # the daemon has its own working directory
    ctl = mount / ".agentfs" / "ctl"
    try:
        with open(ctl, "w") as f:
            f.write(f"import {shlex.quote(host)} {shlex.quote(dest)}\n")
    except OSError as e:  # refused at once: nothing was done
        fail(mount, errno.errorcode.get(e.errno or 0, str(e.errno)), e.strerror or "")
    pid = os.getpid()
    job = None
    try:
        with progress_bar("import", "files") as bar:
            while True:
                found = job_line(ctl.read_text(), pid, job)
                if found is None:
                    raise click.ClickException("the import is no longer listed by the "
                                               "daemon (was it restarted?)")
                job, state, rest = found
                counts = COUNTS.search(rest)
                if counts:
                    done, total = int(counts.group(1)), int(counts.group(2))
                    bar(done, total, f"{counts.group(3)}/{counts.group(4)} MiB")
                elif state == "scanning":
                    bar(0, 0, "scanning the host tree")
                if state == "done:":
                    n = int(m.group(1)) if (m := DONE.search(rest)) else 0
                    bar(n, n)
                if state in ("done:", "failed"):
                    break
                time.sleep(POLL)
    except KeyboardInterrupt:
        cancel(mount, pid, job)
        sys.exit(130)
    if state == "failed":
        fail(mount, rest.split(":", 1)[0].strip(), rest.strip())
    click.echo(rest.strip())


def cancel(mount: Path, pid: int, job: int | None) -> None:
    """^C: stop the import, and wait until the daemon has freed what it staged."""
    ctl = mount / ".agentfs" / "ctl"
    found = job_line(ctl.read_text(), pid, job)
    if found is None:
        return
    try:
        with open(ctl, "w") as f:
            f.write(f"import-cancel {found[0]}\n")
    except OSError:
        pass  # it ended meanwhile: its line says how
    job_id, state = found[0], found[1]
    while state not in ("done:", "failed", "gone"):
        time.sleep(POLL)
        now = job_line(ctl.read_text(), pid, job_id)
        state = now[1] if now is not None else "gone"
    what = {"failed": "cancelled; nothing was imported",
            "done:": "interrupted, but the import had finished"}.get(state, "interrupted")
    click.echo(f"agentfs import: {what}", err=True)


def fail(mount: Path, code: str, fallback: str) -> NoReturn:
    """Exit 1 with the errno's name and the daemon's reason (errstr)."""
    reason = (mount / ".agentfs" / "errstr").read_text().strip() or fallback
    click.echo(f"agentfs import failed ({code}): {reason}", err=True)
    sys.exit(1)
