"""agentfs.posix.ownmount: where the daemon's own mount is visible (from a
mount table), and host paths resolved without ever an lstat inside it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from fsutil import raises

from agentfs.posix.ownmount import OwnMount

TABLE = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
50 22 0:41 / /srv/my\\040mnt rw,nosuid,nodev,relatime shared:2 - fuse.agentfs agentfs:/s rw
51 22 0:41 /work /home/u/bound rw,relatime shared:2 - fuse.agentfs agentfs:/s rw
52 22 0:42 / /other rw,relatime shared:3 - fuse.agentfs agentfs:/t rw
"""


def own(tmp_path: Path, mountpoint: str) -> OwnMount:
    table = tmp_path / "mountinfo"
    table.write_text(TABLE)
    return OwnMount.find(mountpoint, str(table))


def test_the_mount_and_its_bind_mounts_are_found(tmp_path: Path) -> None:
    m = own(tmp_path, "/srv/my mnt")
    assert m.places == [b"/home/u/bound", b"/srv/my mnt"]
    assert m.devices == {os.makedev(0, 41)}
    assert m.holds(b"/srv/my mnt/x") == b"/srv/my mnt"
    assert m.holds(b"/home/u/bound") == b"/home/u/bound"
    assert m.holds(b"/srv/my mntx") is None and m.holds(b"/other/x") is None
    assert OwnMount.find("/srv/my mnt", str(tmp_path / "missing")).places == [b"/srv/my mnt"]


def test_resolve_never_lstats_inside_the_mount(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    mnt = tmp_path / "mnt"
    (mnt / "x").mkdir(parents=True)
    host = tmp_path / "host"
    (host / "real").mkdir(parents=True)
    (host / "up").symlink_to("real/../real")
    (host / "into").symlink_to(mnt / "x")
    (host / "rel").symlink_to("../mnt")
    (host / "file").write_text("")
    m = OwnMount(os.fsencode(mnt), [os.fsencode(mnt)])
    lstat = os.lstat
    seen: list[bytes] = []

    def spy(path: bytes) -> os.stat_result:
        seen.append(path)
        return lstat(path)

    monkeypatch.setattr(os, "lstat", spy)
    assert m.resolve(f"{host}/up/.") == os.fsencode(host / "real")
    for path in (f"{host}/into", f"{host}/rel/x", f"{mnt}/x", f"{host}/../mnt",
                 f"{host}/real/../into/sub"):
        with raises(errno.EINVAL) as info:
            m.resolve(path)
        assert f"HOSTDIR is inside this mount ({path} is in {mnt}" in info.value.message
    assert not [p for p in seen if m.holds(p)]
    with raises(errno.ENOENT):
        m.resolve(f"{host}/missing/x")
    with raises(errno.ENOTDIR):
        m.resolve(f"{host}/file/x")
    (host / "loop").symlink_to("loop")
    with raises(errno.ELOOP):
        m.resolve(f"{host}/loop")
