"""Permission checks, as root and as an unprivileged user (uid/gid 65534 in a
forked child; see posix_util.run_in_child).

On agentfs the unprivileged cases also need the mount to admit other users
(allow_other); the positive tests below fail loudly if it does not."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from posix_util import NOBODY, opened, raises_errno, read_file, run_in_child, write_file

G = 4321  # a group nobody is not in


@pytest.fixture
def work(mnt: Path) -> Path:
    """A root-owned 0755 directory to run the unprivileged child in."""
    d = mnt / "w"
    d.mkdir()
    os.chmod(d, 0o755)
    return d


def root_file(path: Path, mode: int, data: bytes = b"secret", uid: int = 0,
              gid: int = 0) -> None:
    write_file(path, data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def nobody_read(name: str) -> bytes:
    with open(name, "rb") as f:
        return f.read()


def nobody_write(name: str, data: bytes = b"x") -> None:
    with open(name, "r+b") as f:
        f.write(data)


# --- reading / writing files ------------------------------------------------------


def test_nobody_reads_world_readable_file(work: Path) -> None:
    root_file(work / "f", 0o644, b"public")
    assert run_in_child(work, lambda: nobody_read("f")) == b"public"


def test_nobody_reading_0600_root_file_eacces(work: Path) -> None:
    root_file(work / "f", 0o600)
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: nobody_read("f"))


def test_nobody_writing_0644_root_file_eacces(work: Path) -> None:
    root_file(work / "f", 0o644, b"orig")
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: nobody_write("f"))
    assert read_file(work / "f") == b"orig"


def test_nobody_writes_0666_root_file(work: Path) -> None:
    root_file(work / "f", 0o666, b"orig")
    run_in_child(work, lambda: nobody_write("f", b"O"))
    assert read_file(work / "f") == b"Orig"


def test_nobody_truncating_0644_root_file_eacces(work: Path) -> None:
    root_file(work / "f", 0o644, b"orig")
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: os.truncate("f", 0))
    assert read_file(work / "f") == b"orig"


def test_group_bits_apply_to_group_member(work: Path) -> None:
    root_file(work / "f", 0o640, b"group", gid=NOBODY)
    assert run_in_child(work, lambda: nobody_read("f")) == b"group"


def test_group_bits_take_precedence_over_other(work: Path) -> None:
    root_file(work / "f", 0o604, gid=NOBODY)
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: nobody_read("f"))


def test_owner_bits_take_precedence_over_other(work: Path) -> None:
    root_file(work / "f", 0o066, uid=NOBODY, gid=G)
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: nobody_read("f"))


def test_access_reports_permissions(work: Path) -> None:
    root_file(work / "ro", 0o644)
    root_file(work / "private", 0o600)

    def probe() -> tuple[bool, bool, bool, bool]:
        return (os.access("ro", os.R_OK), os.access("ro", os.W_OK),
                os.access("private", os.R_OK), os.access("ro", os.F_OK))

    assert run_in_child(work, probe) == (True, False, False, True)


# --- directories ----------------------------------------------------------------------


def test_nobody_creating_in_0755_root_dir_eacces(work: Path) -> None:
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: os.close(os.open("new", os.O_CREAT | os.O_WRONLY)))
    assert os.listdir(work) == []


def test_nobody_mkdir_in_0755_root_dir_eacces(work: Path) -> None:
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: os.mkdir("new"))


def test_nobody_unlinking_in_0755_root_dir_eacces(work: Path) -> None:
    root_file(work / "f", 0o666)
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: os.unlink("f"))
    assert os.listdir(work) == ["f"]


def test_nobody_renaming_in_0755_root_dir_eacces(work: Path) -> None:
    root_file(work / "f", 0o666)
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: os.rename("f", "g"))


def test_nobody_creates_in_world_writable_dir_with_own_ids(work: Path) -> None:
    os.mkdir(work / "pub")
    os.chmod(work / "pub", 0o777)

    def create() -> None:
        with open("pub/mine", "wb") as f:
            f.write(b"mine")
        os.mkdir("pub/mydir")

    run_in_child(work, create)
    for name in ("mine", "mydir"):
        st = os.stat(work / "pub" / name)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)


def test_search_without_x_eacces(work: Path) -> None:
    os.mkdir(work / "d")
    root_file(work / "d" / "f", 0o644)
    os.chmod(work / "d", 0o666)
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: os.stat("d/f"))


def test_list_without_r_eacces_but_lookup_works(work: Path) -> None:
    os.mkdir(work / "d")
    root_file(work / "d" / "f", 0o644, b"found")
    os.chmod(work / "d", 0o711)
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: os.listdir("d"))
    assert run_in_child(work, lambda: nobody_read("d/f")) == b"found"


def test_sticky_dir_protects_other_users_files(work: Path) -> None:
    os.mkdir(work / "tmp")
    os.chmod(work / "tmp", 0o1777)
    root_file(work / "tmp" / "f", 0o666)
    with raises_errno(errno.EPERM):
        run_in_child(work, lambda: os.unlink("tmp/f"))
    with raises_errno(errno.EPERM):
        run_in_child(work, lambda: os.rename("tmp/f", "tmp/g"))
    assert os.listdir(work / "tmp") == ["f"]


def test_sticky_dir_lets_owner_remove_own_file(work: Path) -> None:
    os.mkdir(work / "tmp")
    os.chmod(work / "tmp", 0o1777)

    def own() -> None:
        write_file(Path("tmp/mine"), b"x")
        os.unlink("tmp/mine")

    run_in_child(work, own)
    assert os.listdir(work / "tmp") == []


def test_world_writable_dir_without_sticky_allows_removal(work: Path) -> None:
    os.mkdir(work / "pub")
    os.chmod(work / "pub", 0o777)
    root_file(work / "pub" / "f", 0o600)
    run_in_child(work, lambda: os.unlink("pub/f"))
    assert os.listdir(work / "pub") == []


# --- setattr as nobody --------------------------------------------------------------------


def test_nobody_chmod_of_root_file_eperm(work: Path) -> None:
    root_file(work / "f", 0o666)
    with raises_errno(errno.EPERM):
        run_in_child(work, lambda: os.chmod("f", 0o777))
    assert stat.S_IMODE(os.stat(work / "f").st_mode) == 0o666


def test_nobody_chmod_of_own_file(work: Path) -> None:
    root_file(work / "f", 0o600, uid=NOBODY, gid=NOBODY)
    run_in_child(work, lambda: os.chmod("f", 0o640))
    assert stat.S_IMODE(os.stat(work / "f").st_mode) == 0o640


def test_nobody_chown_own_file_to_other_user_eperm(work: Path) -> None:
    root_file(work / "f", 0o644, uid=NOBODY, gid=NOBODY)
    with raises_errno(errno.EPERM):
        run_in_child(work, lambda: os.chown("f", 0, -1))
    assert os.stat(work / "f").st_uid == NOBODY


def test_nobody_chgrp_to_foreign_group_eperm(work: Path) -> None:
    root_file(work / "f", 0o644, uid=NOBODY, gid=NOBODY)
    with raises_errno(errno.EPERM):
        run_in_child(work, lambda: os.chown("f", -1, G))
    assert os.stat(work / "f").st_gid == NOBODY


def test_nobody_utime_now_needs_only_write_permission(work: Path) -> None:
    root_file(work / "f", 0o666)
    os.utime(work / "f", ns=(10**18, 10**18))
    run_in_child(work, lambda: os.utime("f"))
    assert os.stat(work / "f").st_mtime_ns > 10**18


def test_nobody_explicit_utime_on_others_file_eperm(work: Path) -> None:
    root_file(work / "f", 0o666)
    with raises_errno(errno.EPERM):
        run_in_child(work, lambda: os.utime("f", ns=(10**18, 10**18)))


def test_nobody_explicit_utime_on_own_file(work: Path) -> None:
    root_file(work / "f", 0o444, uid=NOBODY, gid=NOBODY)
    run_in_child(work, lambda: os.utime("f", ns=(10**18, 10**18 + 1)))
    assert os.stat(work / "f").st_mtime_ns == 10**18 + 1


def test_nobody_utime_now_on_unwritable_others_file_eacces(work: Path) -> None:
    root_file(work / "f", 0o644)
    with raises_errno(errno.EACCES, errno.EPERM):
        run_in_child(work, lambda: os.utime("f"))


def test_nobody_setxattr_without_write_permission_eacces(work: Path) -> None:
    root_file(work / "f", 0o644)
    with raises_errno(errno.EACCES):
        run_in_child(work, lambda: os.setxattr("f", "user.k", b"v"))


def test_unprivileged_write_clears_setuid(work: Path) -> None:
    root_file(work / "f", 0o4777, b"prog")
    run_in_child(work, lambda: nobody_write("f", b"P"))
    assert stat.S_IMODE(os.stat(work / "f").st_mode) == 0o777


def test_unprivileged_write_clears_setgid_on_group_executable(work: Path) -> None:
    root_file(work / "f", 0o2777, b"prog")
    run_in_child(work, lambda: nobody_write("f", b"P"))
    assert stat.S_IMODE(os.stat(work / "f").st_mode) == 0o777


def test_unprivileged_truncate_clears_setuid(work: Path) -> None:
    root_file(work / "f", 0o4777, b"prog")
    run_in_child(work, lambda: os.truncate("f", 1))
    assert stat.S_IMODE(os.stat(work / "f").st_mode) == 0o777


def test_chmod_by_owner_outside_group_drops_setgid(work: Path) -> None:
    # POSIX chmod(): without privilege and not in the file's group, S_ISGID is cleared.
    root_file(work / "f", 0o644, uid=NOBODY, gid=G)
    run_in_child(work, lambda: os.chmod("f", 0o2755))
    assert stat.S_IMODE(os.stat(work / "f").st_mode) == 0o755


def test_chmod_by_owner_in_group_keeps_setgid(work: Path) -> None:
    root_file(work / "f", 0o644, uid=NOBODY, gid=NOBODY)
    run_in_child(work, lambda: os.chmod("f", 0o2755))
    assert stat.S_IMODE(os.stat(work / "f").st_mode) == 0o2755


# --- root ---------------------------------------------------------------------------------


def test_root_bypasses_read_write_bits(mnt: Path) -> None:
    root_file(mnt / "f", 0o000, b"locked")
    assert read_file(mnt / "f") == b"locked"
    with opened(mnt / "f", os.O_WRONLY | os.O_APPEND) as fd:
        os.write(fd, b"!")
    assert read_file(mnt / "f") == b"locked!"


def test_root_exec_needs_some_x_bit(mnt: Path) -> None:
    root_file(mnt / "noexec", 0o644)
    root_file(mnt / "otherexec", 0o601)
    assert not os.access(mnt / "noexec", os.X_OK)
    assert os.access(mnt / "otherexec", os.X_OK)


# --- setgid directories -----------------------------------------------------------------------


@pytest.fixture
def sgid_dir(mnt: Path) -> Path:
    d = mnt / "shared"
    d.mkdir()
    os.chown(d, 0, G)
    os.chmod(d, 0o2775)
    return d


def test_setgid_dir_file_inherits_group(sgid_dir: Path) -> None:
    write_file(sgid_dir / "f")
    assert os.stat(sgid_dir / "f").st_gid == G


def test_setgid_dir_subdir_inherits_group_and_bit(sgid_dir: Path) -> None:
    os.mkdir(sgid_dir / "sub", 0o755)
    st = os.stat(sgid_dir / "sub")
    assert st.st_gid == G
    assert st.st_mode & stat.S_ISGID


def test_setgid_dir_group_inherited_by_unprivileged_creator(sgid_dir: Path) -> None:
    os.chmod(sgid_dir, 0o2777)

    def create() -> None:
        write_file(Path("f"))
        os.mkdir("d")

    run_in_child(sgid_dir, create)
    assert os.stat(sgid_dir / "f").st_uid == NOBODY
    assert os.stat(sgid_dir / "f").st_gid == G
    assert os.stat(sgid_dir / "d").st_gid == G
    assert os.stat(sgid_dir / "d").st_mode & stat.S_ISGID


def test_plain_dir_file_gets_creator_group(mnt: Path) -> None:
    os.mkdir(mnt / "plain")
    os.chown(mnt / "plain", 0, G)
    write_file(mnt / "plain" / "f")
    assert os.stat(mnt / "plain" / "f").st_gid == os.getegid()
