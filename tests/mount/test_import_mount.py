"""`agentfs import HOSTDIR DIR` through a real mount: the daemon copies a host
tree (agentfs/posix/hostimport.py, daemon/imports.py), the CLI follows its
progress. What the kernel then shows must match the host tree (lstat fields,
content hashes, hard links as one inode, symlinks, a fifo, xattrs); refusals
give an errno and a reason in errstr and leave nothing; a SIGKILL in the
middle leaves nothing either, and a clean fsck after the remount.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hosttree import ENTRIES, host_tree

if TYPE_CHECKING:  # (only then: a unit test's conftest may be the one imported)
    from conftest import Mount

pytestmark = pytest.mark.agentfs_only


def listing(top: Path) -> dict[str, tuple[object, ...]]:
    """Per relative path: what an import keeps (directory sizes are each
    filesystem's own; ctime is the import's)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            is_dir = stat.S_ISDIR(st.st_mode)
            data = None
            if stat.S_ISREG(st.st_mode):
                data = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            out[str(p.relative_to(top))] = (
                stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
                None if is_dir else st.st_size, st.st_nlink, data,
                os.listxattr(p, follow_symlinks=False))
    return out


def atimes(top: Path) -> dict[str, int]:
    """Access times, by lstat alone (reading a file may move its atime)."""
    return {str(p.relative_to(top)): os.lstat(p).st_atime_ns for p in top.rglob("*")}


def ctl(mount: Mount, line: str) -> None:
    with open(mount.path / ".agentfs" / "ctl", "w") as f:
        f.write(line + "\n")


def status(mount: Mount) -> str:
    return (mount.path / ".agentfs" / "ctl").read_text()


def refused(mount: Mount, line: str, code: int, reason: str) -> None:
    with pytest.raises(OSError) as info:
        ctl(mount, line)
    assert info.value.errno == code, info.value
    assert reason in (mount.path / ".agentfs" / "errstr").read_text()


def test_import_matches_the_host_tree(mount: Mount, tmp_path: Path) -> None:
    src = host_tree(tmp_path, files=300)
    before = listing(src)
    host_atimes = atimes(src)  # after the reads above (relatime: no further change)
    (mount.path / "work").mkdir()
    res = mount.cli("import", str(src), str(mount.path / "work" / "dst"))
    assert f"imported {ENTRIES + 1 + 37 + 300} files" in res.stdout, res.stdout
    assert "import: " in res.stderr  # progress, as plain lines: not a terminal
    dst = mount.path / "work" / "dst"
    assert atimes(dst) == host_atimes
    assert listing(dst) == before
    assert os.stat(dst).st_mode == os.stat(src).st_mode
    hard = {os.lstat(dst / p).st_ino for p in ("a/f.txt", "hard", "a/b/hard2")}
    assert len(hard) == 1 and os.lstat(dst / "hard").st_nlink == 3
    assert os.listxattr(dst / "empty") == os.listxattr(src / "empty")
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)
    assert "done: imported" in status(mount)
    mount.remount()
    assert listing(dst) == before


def test_import_into_an_existing_directory(mount: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("new")
    ws = mount.path / "ws"
    ws.mkdir()
    (ws / "mine").write_text("kept")
    mount.cli("import", str(src), "ws", "--mount", str(mount.path))
    assert sorted(os.listdir(ws)) == ["mine", "sub"]
    assert (ws / "sub" / "f").read_text() == "new"
    assert os.stat(ws).st_nlink == 3
    # A second time: sub exists, so nothing moves; the CLI says why.
    res = mount.cli("import", str(src), str(ws), check=False)
    assert res.returncode == 1
    assert "import failed (EEXIST): " in res.stderr, res.stderr
    assert " /ws/sub exists; nothing was imported" in res.stderr, res.stderr
    assert sorted(os.listdir(ws)) == ["mine", "sub"]


def test_refusals(mount: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    (mount.path / "file").write_text("data")
    refused(mount, f"import {tmp_path}/missing dst", errno.ENOENT, "no such directory")
    refused(mount, "import relative/dir dst", errno.EINVAL, "absolute path")
    refused(mount, f"import {src} file/dst", errno.ENOTDIR, "not a directory")
    refused(mount, f"import {src} {'x' * 300}", errno.ENAMETOOLONG, "limit is 255")
    refused(mount, f"import {src}", errno.EINVAL, "usage: import HOSTDIR DIR")
    (mount.path / "agents").mkdir(exist_ok=True)
    (mount.path / "agents" / "alice").mkdir()
    refused(mount, f"import {src} agents/bob", errno.EINVAL, "rules of their own")
    refused(mount, f"import {src} agents/alice/inbox", errno.EINVAL, "rules of their own")
    ctl(mount, f"import {src} agents/alice/workspace")  # an agent's working files: fine
    res = mount.cli("import", str(tmp_path / "missing"), str(mount.path / "x"), check=False)
    assert res.returncode != 0 and "does not exist" in res.stderr
    assert not (mount.path / "x").exists() and not (mount.path / "dst").exists()
    deadline = time.monotonic() + 10
    while not (mount.path / "agents" / "alice" / "workspace" / "f").exists():
        assert time.monotonic() < deadline, status(mount)
        time.sleep(0.05)


def test_sigkill_mid_import_leaves_nothing(mount: Mount, tmp_path: Path) -> None:
    src = host_tree(tmp_path, files=3000)
    chunk = os.urandom(1 << 20)
    for i in range(6):  # what keeps the import busy long enough to be caught in the middle
        (src / f"large{i}").write_bytes(chunk * 16)
    ctl(mount, f"import {src} dst")
    deadline = time.monotonic() + 30
    while True:
        now = status(mount)
        m = re.search(r"importing (\d+)/", now)
        if m and int(m.group(1)) > 0:
            break
        assert time.monotonic() < deadline and "done" not in now, now
        time.sleep(0.002)
    assert not (mount.path / "dst").exists()
    ctl(mount, "gc")  # the control file stays free while an import runs
    assert "import 1 pid" in status(mount) and "done" not in status(mount), status(mount)
    mount.kill()
    mount.start()
    assert not (mount.path / "dst").exists()
    mount.fsck()
    mount.cli("import", str(src), str(mount.path / "dst"))  # and the store takes it again
    assert names(mount.path / "dst") == names(src)
    assert listing(mount.path / "dst" / "a") == listing(src / "a")


def names(top: Path) -> list[str]:
    return sorted(str(Path(d, n).relative_to(top)) for d, ds, fs in os.walk(top)
                  for n in ds + fs)


def test_a_failure_on_the_way_frees_everything(mount: Mount, tmp_path: Path) -> None:
    """A name taken in DIR while the import runs: the last step refuses, the
    CLI says why (errno and errstr), nothing of the import is left."""
    src = host_tree(tmp_path, files=500)
    chunk = os.urandom(1 << 20)
    for i in range(6):
        (src / f"large{i}").write_bytes(chunk * 16)
    ws = mount.path / "ws"
    ws.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "agentfs.cli", "import", str(src), str(ws)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not re.search(r"importing [1-9]", status(mount)):
        assert time.monotonic() < deadline and proc.poll() is None, status(mount)
        time.sleep(0.002)
    (ws / "setuid").write_text("mine")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "import failed (EEXIST): " in err and "/ws/setuid exists (made during the import)" \
        in err, err
    assert os.listdir(ws) == ["setuid"]
    mount.fsck()


def test_ctrl_c_cancels_the_import(mount: Mount, tmp_path: Path) -> None:
    src = host_tree(tmp_path, files=500)
    chunk = os.urandom(1 << 20)
    for i in range(6):
        (src / f"large{i}").write_bytes(chunk * 16)
    proc = subprocess.Popen([sys.executable, "-m", "agentfs.cli", "import", str(src),
                             str(mount.path / "dst")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not re.search(r"importing [1-9]", status(mount)):
        assert time.monotonic() < deadline and proc.poll() is None, status(mount)
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "agentfs import: cancelled; nothing was imported" in err, err
    assert "failed ECANCELED: cancelled by pid" in status(mount)
    assert not (mount.path / "dst").exists()
    refused(mount, "import-cancel 1", errno.ENOENT, "no import 1 is running")
    refused(mount, "import-cancel x", errno.EINVAL, "ID must be a number")
