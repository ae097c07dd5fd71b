"""Progress of the long commands: the core's callbacks (fsck, gc) report
(done, total) up to done == total, and the CLI draws them (agentfs/cli/progress.py):
a bar redrawn in place on a terminal, plain lines or nothing elsewhere; the
import command finds its job in the control file's status."""

from __future__ import annotations

import io

from fsutil import mkdir, mkfile

from agentfs.cli import progress
from agentfs.cli.importer import job_line
from agentfs.cli.progress import progress_bar
from agentfs.fsck import check_store
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.storage.gc import collect


def many_files(fs: FileSystem, n: int) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    for i in range(n):
        mkfile(fs, d.ino, b"f%d" % i, b"x" * i)


def test_fsck_reports_up_to_the_end(fs: FileSystem, monkeypatch) -> None:
    monkeypatch.setattr("agentfs.fsck.PROGRESS_EVERY", 100)
    many_files(fs, 500)
    calls: list[tuple[int, int]] = []
    assert check_store(fs.engine, progress=lambda d, t: calls.append((d, t))).problems == []
    assert len(calls) > 10
    assert all(d <= t for d, t in calls)
    assert calls[-1][0] == calls[-1][1] >= fs.engine.entries()
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_gc_reports_every_view(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    for i in range(3):
        fs.fork(d.ino, ROOT_INO, b"fork%d" % i)
        fs.detach(ROOT_INO, b"fork%d" % i)
    calls: list[tuple[int, int]] = []
    stats = collect(fs.store, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1] == (stats["views"], stats["views"])


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal(monkeypatch) -> None:
    monkeypatch.setattr(progress, "TTY_EVERY", 0.0)
    out = Terminal()
    with progress_bar("import", "files", stream=out) as bar:
        bar(5, 10, "1.0/2.0 MiB")
        bar(10, 10)
    text = out.getvalue()
    assert "\r\033[K" in text and "[###############---------------]  50% 5/10 files" in text
    assert text.endswith("100% 10/10 files\n")


def test_plain_lines_or_nothing_elsewhere() -> None:
    out = io.StringIO()
    with progress_bar("import", "files", stream=out) as bar:
        bar(1, 10)
        bar(2, 10)  # (too soon after the last line: skipped)
        bar(10, 10)
    assert out.getvalue() == "import: 1/10 files (10%)\nimport: 10/10 files (100%)\n"
    quiet = io.StringIO()
    with progress_bar("fsck", stream=quiet, plain=False) as bar:
        bar(1, 2)
    assert quiet.getvalue() == ""


def test_the_import_finds_its_own_job() -> None:
    status = ("agentfs pid=1 epoch=3 open_handles=2 last='import 2 started'\n"
              "import 1 pid=40 done: imported 3 files\n"
              "import 2 pid=41 importing 5/9 files 0.1/0.2 MiB: /h -> d\n"
              "import 3 pid=40 failed EEXIST: /d/x exists; nothing was imported\n")
    assert job_line(status, 41, None) == (2, "importing", " 5/9 files 0.1/0.2 MiB: /h -> d")
    assert job_line(status, 40, None) == (3, "failed", " EEXIST: /d/x exists; nothing was "
                                          "imported")
    assert job_line(status, 40, 1) == (1, "done:", " imported 3 files")
    assert job_line(status, 99, None) is None
