"""scripts/install waits, boundedly, for the apt and dpkg locks another package
manager holds (unattended-upgrades on a fresh machine), instead of failing.

The Debian part runs for real up to apt: `dpkg-query` is faked to report one
installed package (fuse3) missing, so `apt-get install fuse3` runs (a no-op
that still takes the dpkg frontend lock) while this test holds that lock.
`apt-get update` needs the network, so a wrapper stands in for it and refuses
the way apt does ("Could not get lock") while a stand-in lists lock is held.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DPKG_FRONTEND_LOCK = "/var/lib/dpkg/lock-frontend"

FAKE_DPKG_QUERY = """#!/bin/sh
# every package installed, but fuse3 (the last argument is the package)
for last; do :; done
if [ "$last" = fuse3 ]; then echo "unknown ok not-installed"; else echo "install ok installed"; fi
"""

FAKE_APT_GET = f"""#!{sys.executable}
import fcntl, os, sys
with open(os.environ["APT_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
if "update" in sys.argv:
    fd = os.open(os.environ["LISTS_LOCK"], os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("E: Could not get lock " + os.environ["LISTS_LOCK"] + ". It is held by process 1 (test)")
        sys.exit(100)
    print("Reading package lists...")
    sys.exit(0)
os.execv("/usr/bin/apt-get", ["apt-get", *sys.argv[1:]])
"""

pytestmark = pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("apt-get") or not os.path.exists(DPKG_FRONTEND_LOCK),
    reason="needs root on a Debian system")


def hold_lock(path: str, seconds: float, held: threading.Event) -> None:
    """An apt-style (fcntl) lock on `path` for `seconds`, in this process."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        held.set()
        time.sleep(seconds)
    finally:
        os.close(fd)  # releases it


def test_install_waits_for_the_apt_and_dpkg_locks(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("dpkg-query", FAKE_DPKG_QUERY), ("apt-get", FAKE_APT_GET)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log, lists_lock = tmp_path / "apt.log", tmp_path / "lists.lock"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", APT_LOG=str(log),
               LISTS_LOCK=str(lists_lock), APT_LOCK_TIMEOUT="60")
    # The lists lock for 2 s, then the dpkg lock for 2 s: update waits for
    # the first, install for the second.
    lists_held, dpkg_held = threading.Event(), threading.Event()
    t1 = threading.Thread(target=hold_lock, args=(str(lists_lock), 2.0, lists_held))
    t1.start()
    lists_held.wait(5)

    def then_dpkg() -> None:
        t1.join()
        hold_lock(DPKG_FRONTEND_LOCK, 2.0, dpkg_held)

    t2 = threading.Thread(target=then_dpkg)
    t2.start()
    start = time.monotonic()
    try:
        res = subprocess.run([str(REPO / "scripts" / "install")], env=env, capture_output=True,
                             text=True, timeout=300)
    finally:
        t1.join()
        t2.join()
    took = time.monotonic() - start
    assert res.returncode == 0, res.stdout + res.stderr
    assert dpkg_held.is_set()
    calls = log.read_text().splitlines()
    updates = [c for c in calls if c.endswith("update -q")]
    installs = [c for c in calls if "install" in c.split()]
    assert len(updates) >= 2, calls  # refused while the lists lock was held, then done
    assert installs and installs[-1].endswith("install -y -q fuse3"), calls
    assert all("DPkg::Lock::Timeout=60" in c for c in calls), calls
    assert "waiting up to 60s for the apt lock: Could not get lock" in res.stdout, res.stdout
    assert took >= 3.5, f"install did not wait for both locks ({took:.1f}s)"
