"""The daemon's life as systemd and a user see it, and the `agentfs` command.

- systemd/agentfs@.service passes `systemd-analyze verify`, and its commands,
  run the way systemd runs them, mount, notify READY=1, survive a SIGKILL
  restart and unmount on SIGTERM;
- sd_notify: READY=1 arrives on NOTIFY_SOCKET once the mount is live;
  SIGTERM unmounts cleanly and the daemon exits 0;
- `agentfs mount` refuses bad mountpoints and a store already in use;
- background `agentfs mount` returns once mounted, `agentfs umount` waits for
  the daemon, data persists, the default store honours XDG_DATA_HOME;
- `agentfs fork/snapshot/snapshots/gc` and their error messages.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "agentfs@.service"
UNIT_BINARY = "/usr/local/bin/agentfs"
CLI = [sys.executable, "-m", "agentfs.cli"]

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AGENTFS_TEST_TARGET")), reason="needs real agentfs mounts"
)


# ----------------------------------------------------------------- helpers


def is_mountpoint(path: Path | str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def cli(*args: str | Path, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def daemon_pid(mnt: Path) -> int:
    status = (mnt / ".agentfs" / "ctl").read_text()
    m = re.search(r"pid=(\d+)", status)
    assert m, f"no pid in control status {status!r}"
    return int(m.group(1))


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(cond, timeout: float = 30, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def force_unmount(mnt: Path) -> None:
    """Best-effort cleanup of a mount (live or dead) and its daemon."""
    pid = 0
    try:
        pid = daemon_pid(mnt)
    except (OSError, AssertionError):
        pass
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
    if pid:
        deadline = time.monotonic() + 20
        while not process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not process_gone(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cleanup() -> Iterator[list[Path]]:
    """Mountpoints registered here are unmounted (and their daemons ended) at teardown."""
    mounts: list[Path] = []
    yield mounts
    for m in mounts:
        if is_mountpoint(m):  # live or dead (ENOTCONN)
            force_unmount(m)


class Notify:
    """A NOTIFY_SOCKET like systemd's: a bound unix datagram socket."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = tempfile.mkdtemp(prefix="agentfs-notify-", dir="/tmp")
        if abstract:
            name = f"agentfs-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(self.dir, "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def wait_for(self, state: str, proc: subprocess.Popen[bytes], log: Path,
                 timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while state not in self.messages:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {state} within {timeout}s; got {self.messages}")
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if proc.poll() is not None and state not in self.messages:
                    raise AssertionError(
                        f"daemon exited {proc.returncode} before {state}; got "
                        f"{self.messages}\n{log.read_text(errors='replace')}")
                continue
            self.messages.extend(data.decode().split("\n"))

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket(request: pytest.FixtureRequest) -> Iterator[Notify]:
    n = Notify(abstract=getattr(request, "param", False))
    yield n
    n.close()


def start_foreground(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as logf:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


# ----------------------------------------------------------------- the unit file


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment in the unit, in order."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key: str) -> list[str]:
    return [v for _, k, v in unit_entries() if k == key]


def unit_command(value: str, instance: str, env: dict[str, str]) -> tuple[bool, list[str]]:
    """Expand an Exec*= line as systemd does: prefixes, %i, ${VAR}, $VAR, $$."""
    ignore_failure = False
    while value[:1] in ("-", "@", "+", "!", ":"):
        ignore_failure |= value[0] == "-"
        value = value[1:]
    value = value.replace("%%", "\x01").replace("%i", instance).replace("\x01", "%")
    value = value.replace("$$", "\x02")
    value = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), value)
    words = []
    for w in shlex.split(value):
        m = re.fullmatch(r"\$(\w+)", w)
        words.extend(env.get(m.group(1), "").split() if m else [w])
    words = [w.replace("\x02", "$") for w in words]
    if words and words[0] == UNIT_BINARY:
        words = [*CLI, *words[1:]]
    return ignore_failure, words


def test_unit_is_a_notify_template_that_unmounts_on_sigterm() -> None:
    assert UNIT.exists()
    assert unit_values("Type") == ["notify"]
    assert unit_values("NotifyAccess") == ["main"]
    assert unit_values("Restart") == ["on-failure"]
    assert unit_values("KillMode") == ["mixed"]
    assert unit_values("EnvironmentFile") == ["/etc/agentfs/%i.env"]
    (start,) = unit_values("ExecStart")
    _, argv = unit_command(start, "x", {"STORE": "/s", "MOUNTPOINT": "/m"})
    assert argv == [*CLI, "mount", "--foreground", "--store", "/s", "/m"]
    assert unit_values("WantedBy") == ["multi-user.target"]
    # Any of these gives the service its own mount namespace: the mount would be invisible.
    for key in ("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateMounts", "ReadOnlyPaths",
                "TemporaryFileSystem", "PrivateDevices", "RootDirectory", "MountFlags"):
        assert not unit_values(key), f"{key}= would hide the FUSE mount"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (scripts/install installs systemd)")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at this checkout's agentfs.
    agentfs = Path(sys.executable).parent / "agentfs"
    if not agentfs.exists():
        agentfs = Path(shutil.which("agentfs") or "")
    assert agentfs.is_file(), "the agentfs console script is not installed next to python"
    text = UNIT.read_text()
    assert UNIT_BINARY in text
    unit = tmp_path / "agentfs@.service"
    unit.write_text(text.replace(UNIT_BINARY, str(agentfs)))
    for name in (unit, tmp_path / "agentfs@agents.service"):
        if name != unit:
            shutil.copy(unit, name)
        res = subprocess.run(["systemd-analyze", "verify", str(name)], capture_output=True,
                             text=True, cwd=tmp_path, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        # verify exits 0 on unknown keys and bad values, but says so: demand silence.
        assert (res.stdout + res.stderr).strip() == "", res.stdout + res.stderr
    # ... and the silence means something: a typo is reported.
    bad = tmp_path / "agentfs-bad@.service"
    bad.write_text(unit.read_text().replace("Type=notify", "Type=notify\nRestartt=always"))
    res = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert "Restartt" in res.stdout + res.stderr


def test_unit_commands_run_as_systemd_would(tmp_path: Path, notify_socket: Notify,
                                            cleanup: list[Path]) -> None:
    """ExecStartPre + ExecStart with the instance's env file; SIGKILL; restart; SIGTERM."""
    mnt = tmp_path / "srv" / "agents"  # does not exist yet: ExecStartPre creates it
    store = tmp_path / "lib" / "agents"
    envfile = {"MOUNTPOINT": str(mnt), "STORE": str(store)}
    env = {**os.environ, **envfile, "NOTIFY_SOCKET": notify_socket.address}
    log = tmp_path / "journal.log"
    cleanup.append(mnt)

    def exec_start_pre() -> None:
        for value in unit_values("ExecStartPre"):
            ignore, argv = unit_command(value, "agents", env)
            res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            assert ignore or res.returncode == 0, f"{argv}: {res.stdout}{res.stderr}"

    def exec_start() -> subprocess.Popen[bytes]:
        (value,) = unit_values("ExecStart")
        _, argv = unit_command(value, "agents", env)
        notify_socket.messages.clear()
        proc = start_foreground(argv, env, log)
        notify_socket.wait_for("READY=1", proc, log)
        assert is_mountpoint(mnt)
        return proc

    exec_start_pre()
    assert mnt.is_dir()
    proc = exec_start()
    (mnt / "kept").write_bytes(b"fsynced before the crash\n")
    fd = os.open(mnt / "kept", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)

    # A crash leaves a dead mount behind; Restart=on-failure runs the commands again.
    proc.kill()
    proc.wait()
    with pytest.raises(OSError) as e:
        os.listdir(mnt)
    assert e.value.errno == errno.ENOTCONN
    exec_start_pre()  # detaches it (as `agentfs mount` would: see test_cli_edges.py)
    proc = exec_start()
    assert (mnt / "kept").read_bytes() == b"fsynced before the crash\n"

    # ExecStartPre leaves a live mount alone, and the daemon refuses to mount over it.
    exec_start_pre()
    assert is_mountpoint(mnt) and (mnt / "kept").exists()

    # systemctl stop: SIGTERM to the main process (KillMode=mixed), even with a file open.
    held = open(mnt / "kept", "rb")  # noqa: SIM115 - must stay open across the stop
    try:
        assert stop(proc) == 0, log.read_text()
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: its filesystem is gone
            held.close()
    notify_socket.wait_for("STOPPING=1", proc, log)
    assert not is_mountpoint(mnt)
    assert "Traceback" not in log.read_text()


# ----------------------------------------------------------------- sd_notify, signals


@pytest.mark.parametrize(("notify_socket", "sig"),
                         [(False, signal.SIGTERM), (True, signal.SIGTERM), (False, signal.SIGINT),
                          (False, signal.SIGHUP)],
                         indirect=["notify_socket"], ids=["path-TERM", "abstract-TERM", "INT", "HUP"])
def test_sd_notify_ready_then_signal_unmounts(tmp_path: Path, notify_socket: Notify, sig: int,
                                              cleanup: list[Path]) -> None:
    mnt, store, log = tmp_path / "mnt", tmp_path / "store", tmp_path / "daemon.log"
    mnt.mkdir()
    cleanup.append(mnt)
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address}
    proc = start_foreground([*CLI, "mount", str(mnt), "--store", str(store), "--foreground"],
                            env, log)
    notify_socket.wait_for("READY=1", proc, log)
    # At the moment READY=1 arrives, the mount is there and serves requests.
    assert is_mountpoint(mnt)
    assert sorted(os.listdir(mnt)) == ["AGENTS.md", "agents"]
    assert daemon_pid(mnt) == proc.pid
    (mnt / "f").write_text("data\n")
    assert proc.poll() is None

    assert stop(proc, sig) == 0, log.read_text()
    notify_socket.wait_for("STOPPING=1", proc, log)
    assert not is_mountpoint(mnt)
    assert os.listdir(mnt) == []
    assert "Traceback" not in log.read_text(), log.read_text()
    fsck = cli("fsck", "--store", store)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_no_notify_socket_is_fine(tmp_path: Path, cleanup: list[Path]) -> None:
    mnt, log = tmp_path / "mnt", tmp_path / "daemon.log"
    mnt.mkdir()
    cleanup.append(mnt)
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = start_foreground([*CLI, "mount", str(mnt), "--store", str(tmp_path / "s"),
                             "--foreground"], env, log)
    wait_until(lambda: is_mountpoint(mnt) or proc.poll() is not None, what="mount")
    assert proc.poll() is None, log.read_text()
    os.stat(mnt)
    assert stop(proc) == 0, log.read_text()
    assert not is_mountpoint(mnt)


# ----------------------------------------------------------------- refusals


MODES = pytest.mark.parametrize("mode", ["--foreground", "--background"])


def refused(res: subprocess.CompletedProcess[str], *words: str) -> str:
    out = res.stdout + res.stderr
    assert res.returncode != 0, f"not refused:\n{out}"
    assert "Traceback" not in out, out
    for w in words:
        assert w in out, f"{w!r} not in message:\n{out}"
    return out


@MODES
def test_refuses_non_empty_directory(tmp_path: Path, mode: str, cleanup: list[Path]) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "precious").write_text("x")
    cleanup.append(mnt)
    refused(cli("mount", mnt, "--store", tmp_path / "s", mode, timeout=30), "not empty", str(mnt))
    assert not is_mountpoint(mnt)
    assert (mnt / "precious").read_text() == "x"


@MODES
def test_refuses_non_directory(tmp_path: Path, mode: str, cleanup: list[Path]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    cleanup.append(f)
    out = refused(cli("mount", f, "--store", tmp_path / "s", mode, timeout=30), str(f))
    assert "is a file" in out or "not a directory" in out, out
    assert not is_mountpoint(f)


@MODES
def test_refuses_existing_mountpoint(mount, tmp_path: Path, mode: str,  # type: ignore[no-untyped-def]
                                     cleanup: list[Path]) -> None:
    (mount.path / "f").write_text("still here\n")
    other = tmp_path / "other-store"
    out = refused(cli("mount", mount.path, "--store", other, mode, timeout=30))
    assert "already a mount point" in out or "not empty" in out, out
    # The live mount is untouched.
    assert (mount.path / "f").read_text() == "still here\n"
    assert daemon_pid(mount.path) == mount.proc.pid


@MODES
def test_refuses_second_mount_of_the_same_store(mount, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                mode: str, cleanup: list[Path]) -> None:
    second = tmp_path / "second"
    second.mkdir()
    cleanup.append(second)
    out = refused(cli("mount", second, "--store", mount.store, mode, timeout=30),
                  "already mounted", str(mount.store))
    assert f"pid {mount.proc.pid}" in out, out  # names the holder
    assert not is_mountpoint(second)
    (mount.path / "f").write_text("first mount still serves\n")
    assert (mount.path / "f").read_text() == "first mount still serves\n"


# ----------------------------------------------------------------- mount / umount


def test_background_mount_umount_and_persistence(tmp_path: Path, cleanup: list[Path]) -> None:
    mnt, store = tmp_path / "mnt", tmp_path / "store"
    mnt.mkdir()
    cleanup.append(mnt)
    t0 = time.monotonic()
    res = cli("mount", mnt, "--store", store)
    assert res.returncode == 0, res.stdout + res.stderr
    assert time.monotonic() - t0 < 30
    # Returned once mounted: no waiting needed.
    assert is_mountpoint(mnt)
    (mnt / "dir").mkdir()
    (mnt / "dir" / "file").write_bytes(b"persist me\n" * 1000)
    pid = daemon_pid(mnt)
    assert not process_gone(pid)
    assert (store / "daemon.log").exists()

    res = cli("umount", mnt)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not is_mountpoint(mnt)
    assert process_gone(pid), "agentfs umount returned before the daemon exited"
    assert os.listdir(mnt) == []
    fsck = cli("fsck", "--store", store)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    # The store lock was released: mount again at once, the data is there.
    res = cli("mount", mnt, "--store", store)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (mnt / "dir" / "file").read_bytes() == b"persist me\n" * 1000
    assert daemon_pid(mnt) != pid
    assert cli("umount", mnt).returncode == 0
    assert not is_mountpoint(mnt)


def test_umount_refuses_what_is_not_mounted(tmp_path: Path) -> None:
    refused(cli("umount", tmp_path), "not mounted")
    refused(cli("umount", tmp_path / "missing"))


def test_umount_of_a_busy_mount_fails_and_keeps_it(tmp_path: Path, cleanup: list[Path]) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    assert cli("mount", mnt, "--store", tmp_path / "s").returncode == 0
    with open(mnt / "f", "w") as held:
        held.write("busy")
        res = cli("umount", mnt)
        assert res.returncode != 0
        assert is_mountpoint(mnt)
    assert cli("umount", mnt).returncode == 0
    assert not is_mountpoint(mnt)


@pytest.mark.parametrize("how", ["XDG_DATA_HOME", "HOME"])
def test_default_store_location(tmp_path: Path, how: str, cleanup: list[Path]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XDG_DATA_HOME"}
    if how == "XDG_DATA_HOME":
        env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
        expected = tmp_path / "xdg" / "agentfs" / "default"
    else:
        env["HOME"] = str(tmp_path / "home")
        expected = tmp_path / "home" / ".local" / "share" / "agentfs" / "default"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    res = cli("mount", mnt, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (expected / "lmdb").exists()
    assert str(mnt) in (expected / "agentfs.lock").read_text()
    (mnt / "hello").write_text("hi\n")
    assert cli("umount", mnt, env=env).returncode == 0
    # fsck and gc find the same default store.
    fsck = cli("fsck", env=env)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert cli("gc", env=env).returncode == 0
    assert cli("mount", mnt, env=env).returncode == 0
    assert (mnt / "hello").read_text() == "hi\n"
    assert cli("umount", mnt, env=env).returncode == 0


# ----------------------------------------------------------------- fork / snapshot


def test_cli_fork(mount) -> None:  # type: ignore[no-untyped-def]
    mnt: Path = mount.path
    (mnt / "a" / "sub").mkdir(parents=True)
    (mnt / "a" / "f").write_text("parent\n")
    (mnt / "a" / "sub" / "g").write_text("deep\n")
    res = cli("fork", mnt / "a", mnt / "b")
    assert res.returncode == 0, res.stderr
    assert (mnt / "b" / "f").read_text() == "parent\n"
    assert (mnt / "b" / "sub" / "g").read_text() == "deep\n"
    (mnt / "b" / "f").write_text("fork\n")
    (mnt / "a" / "new").write_text("after the fork\n")
    assert (mnt / "a" / "f").read_text() == "parent\n"
    assert not (mnt / "b" / "new").exists()
    # Relative paths work too.
    res = subprocess.run([*CLI, "fork", "a/sub", "c"], cwd=mnt, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (mnt / "c" / "g").read_text() == "deep\n"


def test_cli_fork_errors_say_why(mount, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    mnt: Path = mount.path
    (mnt / "a").mkdir()
    (mnt / "b").mkdir()
    # DST exists: the errno and the daemon's errstr reason.
    out = refused(cli("fork", mnt / "a", mnt / "b"), "fork failed", "File exists")
    assert "exists" in out.split("File exists", 1)[1], out
    # SRC missing.
    refused(cli("fork", mnt / "nope", mnt / "c"), str(mnt / "nope"))
    assert not (mnt / "c").exists()
    # DST's parent missing: only the daemon can tell.
    refused(cli("fork", mnt / "a", mnt / "no" / "c"), "fork failed")
    # Outside any agentfs mount.
    refused(cli("fork", tmp_path, mnt / "c"), "not inside an agentfs mount")
    refused(cli("fork", mnt / "a", tmp_path / "c"), "not inside")
    # The same through the control file, the shell way.
    sh = subprocess.run(["sh", "-c", f'echo "fork /nope /c" > {mnt}/.agentfs/ctl '
                                     f'|| cat {mnt}/.agentfs/errstr'],
                        capture_output=True, text=True)
    assert "fork /nope /c" in sh.stdout, sh.stdout + sh.stderr
    assert not (mnt / "c").exists()


def test_cli_snapshots(mount) -> None:  # type: ignore[no-untyped-def]
    mnt: Path = mount.path
    d = mnt / "agent"
    d.mkdir()
    (d / "f").write_text("v1\n")
    res = cli("snapshot", d, "s1")
    assert res.returncode == 0, res.stderr
    (d / "f").write_text("v2\n")
    assert (d / ".snapshots" / "s1" / "f").read_text() == "v1\n"
    assert ".snapshots" not in os.listdir(d)
    assert cli("snapshots", d).stdout == "s1\n"
    # Read-only inside.
    with pytest.raises(OSError) as e:
        (d / ".snapshots" / "s1" / "f").write_text("no\n")
    assert e.value.errno == errno.EROFS
    # The mkdir convention makes one too; both are listed, sorted.
    (d / ".snapshots" / "s0").mkdir()
    assert (d / ".snapshots" / "s0" / "f").read_text() == "v2\n"
    assert cli("snapshots", d).stdout == "s0\ns1\n"
    # A duplicate name is refused with a reason.
    refused(cli("snapshot", d, "s1"), "snapshot failed")
    # Delete, by the CLI and by rmdir.
    assert cli("snapshot", "--delete", d, "s1").returncode == 0
    (d / ".snapshots" / "s0").rmdir()
    assert cli("snapshots", d).stdout == ""
    assert os.listdir(d / ".snapshots") == []
    refused(cli("snapshot", "--delete", d, "s1"), "unsnapshot failed")
    assert (d / "f").read_text() == "v2\n"
    res = cli("gc", "--mount", mnt)
    assert res.returncode == 0 and "gc views=" in res.stdout, res.stdout + res.stderr


def test_cli_help_lists_every_command() -> None:
    res = cli("--help")
    assert res.returncode == 0
    for command in ("mount", "umount", "fork", "snapshot", "snapshots", "fsck", "gc"):
        assert re.search(rf"^\s+{command}\s", res.stdout, re.M), res.stdout


def test_deleted_snapshots_vanish_at_once(mount) -> None:  # type: ignore[no-untyped-def]
    """What the control file deletes must not stay reachable through the kernel's
    dentry cache, and a name reused at once must lead to the new tree."""
    mnt: Path = mount.path
    d = mnt / "a"
    d.mkdir()
    (d / "f").write_text("v1\n")
    assert cli("snapshot", d, "s1").returncode == 0
    assert (d / ".snapshots" / "s1" / "f").read_text() == "v1\n"  # now cached by the kernel
    assert cli("snapshot", "--delete", d, "s1").returncode == 0
    assert not (d / ".snapshots" / "s1").exists(), "deleted snapshot still reachable"
    (d / "f").write_text("v2\n")
    assert cli("snapshot", d, "s1").returncode == 0
    assert (d / ".snapshots" / "s1" / "f").read_text() == "v2\n"


def test_detached_forks_vanish_at_once(mount) -> None:  # type: ignore[no-untyped-def]
    """`detach` through the control file: the name is gone when the write
    returns, and a fork made again under that name shows the new tree. The
    cycle repeats, on fresh daemons too, because a late (asynchronous) cache
    invalidation loses the race only some of the time."""
    mnt: Path = mount.path
    d = mnt / "a"
    d.mkdir()
    (d / "f").write_text("v0\n")
    assert cli("fork", d, mnt / "b").returncode == 0
    for i in range(1, 21):
        if i % 2:
            mount.remount()
        assert (mnt / "b" / "f").read_text() == f"v{i - 1}\n", f"round {i}: stale fork"
        (mnt / ".agentfs" / "ctl").write_text("detach b\n")
        assert "b" not in os.listdir(mnt)
        assert not (mnt / "b").exists(), f"round {i}: detached fork still reachable"
        (d / "f").write_text(f"v{i}\n")
        assert cli("fork", d, mnt / "b").returncode == 0
