"""`import HOSTDIR DIR` with HOSTDIR in, or leading into, the mount itself.

The daemon serves requests on one thread: reading its own mount from that
thread (to check or copy HOSTDIR) would hang it and every process using the
mount. Such an import is refused with EINVAL and a reason, at once, and the
mount stays responsive. Each command runs in a subprocess with a timeout, so
a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # (only then: a unit test's conftest may be the one imported)
    from conftest import Mount

pytestmark = pytest.mark.agentfs_only

TIMEOUT = 20
WRITE_CTL = """
import os, sys
mnt, line = sys.argv[1], sys.argv[2]
try:
    with open(os.path.join(mnt, ".agentfs", "ctl"), "w") as f:
        f.write(line + "\\n")
    print("ok")
except OSError as e:
    print(e.errno)
with open(os.path.join(mnt, ".agentfs", "errstr")) as f:
    print(f.read())
"""


def ctl_in_subprocess(mount: Mount, line: str) -> tuple[str, str]:
    """(errno or "ok", errstr) of writing `line` to the control file."""
    res = subprocess.run([sys.executable, "-c", WRITE_CTL, str(mount.path), line],
                         capture_output=True, text=True, timeout=TIMEOUT, check=True)
    code, _, errstr = res.stdout.partition("\n")
    return code, errstr


def assert_responsive(mount: Mount) -> None:
    subprocess.run(["ls", "-la", str(mount.path), str(mount.path / "x")], check=True,
                   capture_output=True, timeout=TIMEOUT)
    (mount.path / "x" / "still").write_text("fine")


def cli_refuses(mount: Mount, hostdir: Path) -> None:
    """`agentfs import HOSTDIR MOUNT/y` fails with EINVAL and why; nothing is made."""
    res = mount.cli("import", str(hostdir), str(mount.path / "y"), check=False,
                    timeout=TIMEOUT)
    assert res.returncode == 1, res
    assert "import failed (EINVAL)" in res.stderr and "HOSTDIR is inside this mount" \
        in res.stderr, res.stderr
    assert_responsive(mount)
    assert not (mount.path / "y").exists()


@pytest.fixture
def inside(mount: Mount) -> Path:
    x = mount.path / "x"
    (x / "sub").mkdir(parents=True)
    (x / "f").write_text("data")
    return x


def test_hostdir_in_the_mount_is_refused(mount: Mount, inside: Path) -> None:
    for line in (f"import {inside} y", f"import {mount.path} y",
                 f"import {mount.path}/x/../x/sub y", f"import {mount.path}/.agentfs y"):
        code, errstr = ctl_in_subprocess(mount, line)
        assert code == str(errno.EINVAL), (line, code, errstr)
        assert "HOSTDIR is inside this mount" in errstr, errstr
        assert_responsive(mount)
    assert not (mount.path / "y").exists()


def test_agentfs_import_from_the_mount_is_refused(mount: Mount, inside: Path) -> None:
    cli_refuses(mount, inside)


def test_a_host_symlink_into_the_mount_is_refused(mount: Mount, inside: Path,
                                                  tmp_path: Path) -> None:
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "link").symlink_to(inside)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    code, errstr = ctl_in_subprocess(mount, f"import {tmp_path}/host/link y")
    assert code == str(errno.EINVAL) and "HOSTDIR is inside this mount" in errstr, errstr
    assert_responsive(mount)
    code, errstr = ctl_in_subprocess(mount, f"import {tmp_path}/loop y")
    assert code == str(errno.ELOOP), (code, errstr)
    # A symlink inside HOSTDIR into the mount is copied as a symlink, never followed.
    (tmp_path / "host" / "f").write_text("host")
    mount.cli("import", str(tmp_path / "host"), str(mount.path / "y"), timeout=TIMEOUT)
    assert os.readlink(mount.path / "y" / "link") == str(inside)
    assert (mount.path / "y" / "f").read_text() == "host"
    assert_responsive(mount)


def test_bind_mounts_of_the_mount_are_refused(mount: Mount, inside: Path,
                                              tmp_path: Path) -> None:
    """Seen elsewhere through a bind mount: refused when HOSTDIR is in it, and
    when the host walk meets one below HOSTDIR."""
    bound = tmp_path / "bound"
    bound.mkdir()
    src = tmp_path / "src"
    (src / "below").mkdir(parents=True)
    (src / "f").write_text("x")
    subprocess.run(["mount", "--bind", str(mount.path), str(bound)], check=True,
                   timeout=TIMEOUT)
    try:
        code, errstr = ctl_in_subprocess(mount, f"import {bound}/x y")
        assert code == str(errno.EINVAL), (code, errstr)
        assert f"visible at {bound}" in errstr, errstr
        assert_responsive(mount)
        subprocess.run(["mount", "--bind", str(inside), str(src / "below")], check=True,
                       timeout=TIMEOUT)
        cli_refuses(mount, src)  # (the host walk meets the bind mount)
    finally:
        for where in (src / "below", bound):
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True,
                           timeout=TIMEOUT)


def test_reserved_root_names_are_refused(mount: Mount, tmp_path: Path) -> None:
    """AGENTS.md and agents/ at the mount root are agentfs's: an import into
    the root may not bring its own, nor be named so."""
    before = sorted(os.listdir(mount.path))
    assert "AGENTS.md" in before and "agents" in before
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "AGENTS.md").write_text("the repository's own")
    (repo / "src").mkdir()
    for line, name in ((f"import {repo} /", "/AGENTS.md"),
                       (f"import {repo / 'src'} AGENTS.md", "/AGENTS.md")):
        code, errstr = ctl_in_subprocess(mount, line)
        assert code == str(errno.EINVAL), (line, code, errstr)
        assert f"cannot import {name}: agentfs serves /AGENTS.md itself" in errstr, errstr
    (repo / "AGENTS.md").unlink()
    (repo / "agents" / "bob").mkdir(parents=True)
    code, errstr = ctl_in_subprocess(mount, f"import {repo} /")
    assert code == str(errno.EINVAL), (code, errstr)
    assert "cannot import /agents: agents/ at the mount root is agentfs's" in errstr, errstr
    assert sorted(os.listdir(mount.path)) == before
    assert "the repository's own" not in (mount.path / "AGENTS.md").read_text()
