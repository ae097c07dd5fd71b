"""Third-party stress tools with data verification, run inside the mount.

pjdfstest, fsx and fsstress are not packaged for Debian 12; stress-ng's
filesystem stressors and fio's verifying workloads are, and both check what
they read back.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.agentfs_only


def run(cmd: list[str], cwd: Path) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{cmd[0]} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng not installed")
def test_stress_ng_filesystem_stressors(mount) -> None:
    work = mount.path / "stress"
    work.mkdir()
    out = run(["stress-ng", "--temp-path", str(work), "--dir", "1", "--dentry", "1",
               "--link", "1", "--symlink", "1", "--rename", "1", "--hdd", "1",
               "--hdd-bytes", "8M", "--xattr", "1", "--lockf", "1", "--flock", "1",
               "--utime", "1", "--chmod", "1", "--chown", "1", "--seek", "1",
               "--mmap", "1", "--verify", "-t", "4s", "--metrics-brief"], work)
    assert "unsuccessful run" not in out
    assert "failed" not in out.lower().replace("failed: 0", "")


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed")
@pytest.mark.parametrize("rw", ["randwrite", "write"])
def test_fio_writes_verify(mount, rw: str) -> None:
    run(["fio", "--name=verify", f"--directory={mount.path}", "--size=32M", f"--rw={rw}",
         "--bs=4k", "--ioengine=psync", "--verify=crc32c", "--do_verify=1",
         "--verify_fatal=1", "--fsync=64"], mount.path)
