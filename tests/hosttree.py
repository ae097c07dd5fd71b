"""A host directory tree with one of everything `import` keeps, for the unit
tests (tests/unit/test_hostimport.py) and the mount tests
(tests/mount/test_import_mount.py) of agentfs/posix/hostimport.py."""

from __future__ import annotations

import os
from pathlib import Path

ENTRIES = 16  # what host_tree(root) holds below src/, with files=0


def host_tree(root: Path, files: int = 0) -> Path:
    """`root/src`: nested and empty directories, an empty file, a 3 MiB file,
    setuid and 0o000 modes, another owner (as root), chosen times, relative,
    absolute and dangling symlinks, three hard links of one file, a fifo, an
    xattr; and `files` more small files under many/."""
    src = root / "src"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "a" / "f.txt").write_text("hello\n")
    (src / "a" / "b" / "c" / "deep").write_bytes(b"deep" * 999)
    (src / "empty").write_bytes(b"")
    (src / "big.bin").write_bytes(os.urandom(1 << 16) * 48)  # several blocks and batches
    (src / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "setuid", 0o4755)
    (src / "none").write_bytes(b"for root only")
    os.chmod(src / "none", 0o000)
    if os.geteuid() == 0:
        os.chown(src / "a" / "f.txt", 1234, 5678)
    os.symlink("a/f.txt", src / "rel-link")
    os.symlink("/nowhere/at/all", src / "dangling-abs")
    os.symlink(str(src / "a"), src / "abs-link")
    os.link(src / "a" / "f.txt", src / "hard")
    os.link(src / "a" / "f.txt", src / "a" / "b" / "hard2")
    os.mkfifo(src / "fifo")
    os.utime(src / "a" / "f.txt", ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    os.utime(src / "a", ns=(1_600_000_000_000_000_000, 1_400_000_000_000_000_000))
    try:
        os.setxattr(src / "empty", "user.origin", b"host")
    except OSError:
        pass  # the host filesystem keeps no user xattrs: nothing to import
    for i in range(files):
        d = src / "many" / f"d{i % 37}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"%d\n" % i * (i % 50))
    return src
