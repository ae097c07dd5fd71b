#!/usr/bin/env python3
"""agentfs benchmark suite: every figure measured on agentfs and on tmpfs in one run.

Usage:  /work/venv/bin/python bench/run.py [--quick] [--only NAME[,NAME]] [--json FILE]

Mounts a fresh agentfs (store on the normal disk under /var/tmp unless
--store-on-tmpfs) and makes a reference directory on tmpfs (/dev/shm), runs the
benchmarks below on both, and prints one table per benchmark with the absolute
values and the ratio agentfs/tmpfs. For times the ratio is "x times tmpfs"
(higher = worse); for throughputs it is "% of tmpfs" (higher = better).

Benchmarks (names for --only): small, listdir, seq, append, tree, chain, fork,
passthrough. See bench/README.md. Standard library only.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
T0 = time.monotonic()
BENCHES = ("small", "listdir", "seq", "append", "tree", "chain", "fork", "passthrough")
PASSTHROUGH_SRC = Path("/usr/share/doc/libfuse3-dev/examples")


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    small_files: int  # 1 KiB files in one directory
    listdir_entries: int
    seq_mib: int  # sequential write/read size
    seq_runs: int  # repetitions (median) of the sequential write/read
    appends: int  # O_APPEND writes without fsync
    fsync_appends: int  # O_APPEND writes each followed by fsync
    tree_dirs: int  # tree benchmark: dirs x files_per_dir
    tree_files_per_dir: int
    fork_trees: tuple[int, ...]  # file counts of the trees to fork/snapshot
    cp_in_mount: tuple[int, ...]  # tree sizes for which `cp -a` inside the mount is timed
    runs: int  # repetitions (median) for fork/snapshot
    chain_mib: int
    chain_depths: tuple[int, ...]


FULL = Sizes(small_files=2000, listdir_entries=5000, seq_mib=256, seq_runs=3,
             appends=5000, fsync_appends=500, tree_dirs=100, tree_files_per_dir=110,
             fork_trees=(1000, 10_000, 100_000), cp_in_mount=(1000, 10_000), runs=5,
             chain_mib=10, chain_depths=(1, 4, 16))
QUICK = Sizes(small_files=500, listdir_entries=5000, seq_mib=64, seq_runs=3,
              appends=2000, fsync_appends=100, tree_dirs=20, tree_files_per_dir=110,
              fork_trees=(1000, 10_000, 20_000), cp_in_mount=(1000,), runs=5,
              chain_mib=10, chain_depths=(1, 4, 16))


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    group: str
    metric: str
    unit: str
    value: float | None  # the subject: agentfs (or passthrough, or depth N)
    ref: float | None  # the reference: tmpfs (or depth 0)
    kind: str  # "time": ratio value/ref, higher=worse; "rate": value/ref in %, higher=better
    note: str = ""

    def ratio(self) -> float | None:
        if self.value is None or not self.ref:
            return None
        return self.value / self.ref

    def ratio_text(self) -> str:
        r = self.ratio()
        if r is None:
            return "-"
        if self.kind == "rate":
            return f"{100 * r:.0f}%"
        if r < 0.1:
            return f"1/{1 / r:,.0f}"
        return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


GROUPS = {
    "small": ("1. small files (1 KiB, one dir): mean per op", "agentfs", "tmpfs"),
    "listdir": ("2. directory listing", "agentfs", "tmpfs"),
    "seq": ("3. sequential I/O (1 MiB ops)", "agentfs", "tmpfs"),
    "append": ("4. O_APPEND of 200 bytes: latency per append", "agentfs", "tmpfs"),
    "tree": ("5. creating a tree", "agentfs", "tmpfs"),
    "fork": ("6. fork / snapshot (median) vs cp -a", "agentfs", "cp-a tmpfs"),
    "chain": ("7. cold read through a fork chain (agentfs only)", "agentfs", "depth 0"),
    "passthrough": ("8. libfuse passthrough example over tmpfs", "passthru", "tmpfs"),
}


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def print_table(rows: list[Row], out=sys.stdout) -> None:
    for group, (title, subj, ref) in GROUPS.items():
        grows = [r for r in rows if r.group == group]
        if not grows:
            continue
        mw = max(len("metric"), *(len(r.metric) for r in grows))
        uw = max(4, *(len(r.unit) for r in grows))
        print(f"\n{title}", file=out)
        head = f"  {'metric':<{mw}}  {'unit':<{uw}}  {subj:>10}  {ref:>10}  {'ratio':>7}  note"
        print(head, file=out)
        print("  " + "-" * (len(head) - 2 + 12), file=out)
        for r in grows:
            print(f"  {r.metric:<{mw}}  {r.unit:<{uw}}  {fmt(r.value):>10}  {fmt(r.ref):>10}  "
                  f"{r.ratio_text():>7}  {r.note}".rstrip(), file=out)


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- helpers


def mountinfo() -> list[tuple[str, str]]:
    """(mountpoint, fstype) of every mount."""
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            sep = parts.index("-")
            res.append((parts[4].replace("\\040", " "), parts[sep + 1]))
    return res


def is_mountpoint(path: Path | str) -> bool:
    target = os.path.realpath(path)
    return any(mp == target for mp, _ in mountinfo())


def fstype(path: Path | str) -> str:
    p = os.path.realpath(path)
    best, kind = "", "?"
    for mp, t in mountinfo():
        if (p == mp or p.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
            best, kind = mp, t
    return kind


def now() -> int:
    return time.perf_counter_ns()


def us(ns: float) -> float:
    return ns / 1e3


def ms(ns: float) -> float:
    return ns / 1e6


def pct(values: list[int] | list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def write_file(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        mv = memoryview(data)
        while mv:
            mv = mv[os.write(fd, mv):]
    finally:
        os.close(fd)


def read_all(path: str, buf: bytearray) -> int:
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        while n := os.readv(fd, [buf]):
            total += n
    finally:
        os.close(fd)
    return total


def build_tree(root: Path, dirs: int, files_per_dir: int) -> int:
    """dirs x files_per_dir small files under root (made here); returns elapsed ns."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    t = now()
    os.mkdir(root)
    for d in range(dirs):
        dpath = f"{root}/d{d:04d}"
        os.mkdir(dpath)
        for i in range(files_per_dir):
            fd = os.open(f"{dpath}/f{i:04d}", flags, 0o644)
            os.write(fd, b"file %d of dir %d: some small contents\n" % (i, d))
            os.close(fd)
    return now() - t


def tree_shape(n: int) -> tuple[int, int]:
    """Directories of 100 files each (fewer for tiny trees)."""
    per = 100 if n >= 100 else n
    return n // per, per


def cp_a(src: Path, dst: Path) -> int:
    t = now()
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return now() - t


# --------------------------------------------------------------------------- mounts


class FuseMount:
    """A FUSE daemon run in the foreground as a child process."""

    def __init__(self, name: str, cmd: list[str], path: Path, logfile: Path) -> None:
        self.name, self.cmd, self.path, self.logfile = name, cmd, path, logfile
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounts = 0

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as logf:
            # own session: a ^C on the terminal reaches us, and we unmount cleanly
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not is_mountpoint(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not mount: {self.log_tail()}")
            time.sleep(0.01)
        os.stat(self.path)  # wait for FUSE INIT
        self.mounts += 1

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close_own_fds(self) -> None:
        """Close fds of this process inside the mount, e.g. one left open by a signal
        arriving between os.open and os.close: it would keep the FUSE connection (and so
        the daemon) alive after the unmount."""
        prefix = os.path.realpath(self.path) + "/"
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                if (os.readlink(f"/proc/self/fd/{fd}") + "/").startswith(prefix):
                    os.close(int(fd))

    def stop(self) -> None:
        self.close_own_fds()
        if self.proc is None:
            if is_mountpoint(self.path):
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            return
        for attempt in range(20):
            if not is_mountpoint(self.path):
                break
            lazy = ["-z"] if attempt == 19 else []
            res = subprocess.run(["fusermount3", "-u", *lazy, str(self.path)],
                                 capture_output=True, text=True)
            if res.returncode == 0:
                break
            time.sleep(0.25)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log(f"{self.name} daemon did not exit after unmount: killing pid {self.proc.pid}")
            self.proc.kill()
            self.proc.wait()
        if is_mountpoint(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        self.proc = None

    def remount(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and is_mountpoint(self.path)


def agentfs_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "agentfs"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "agentfs.cli"]


def control(mnt: Path, line: str) -> None:
    """Write one control line, as `echo LINE > MNT/.agentfs/ctl` does."""
    fd = os.open(mnt / ".agentfs" / "ctl", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(fd, (line + "\n").encode())
    except OSError as e:
        reason = (mnt / ".agentfs" / "errstr").read_text().strip()
        raise RuntimeError(f"control {line!r} failed ({e.strerror}): {reason}")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- context


class Ctx:
    def __init__(self, args: argparse.Namespace, sizes: Sizes) -> None:
        self.args, self.sizes = args, sizes
        store_parent = args.tmpfs_dir if args.store_on_tmpfs else args.store_dir
        self.base = Path(tempfile.mkdtemp(prefix="agentfs-bench-", dir=store_parent))
        self.ref = Path(tempfile.mkdtemp(prefix="agentfs-bench-ref-", dir=args.tmpfs_dir))
        self.mnt = self.base / "mnt"
        self.store = self.base / "store"
        self.agentfs = FuseMount(
            "agentfs", [*agentfs_cmd(), "mount", str(self.base / "mnt"), "--store",
                        str(self.store), "--foreground"],
            self.mnt, self.base / "daemon.log")
        self.rows: list[Row] = []
        self.errors: list[str] = []
        self.extra_mounts: list[FuseMount] = []
        self.cleaned = False

    def add(self, *args, **kw) -> None:
        self.rows.append(Row(*args, **kw))

    def cold(self) -> None:
        """Make agentfs's kernel caches cold: unmount and mount again."""
        self.agentfs.remount()
        if self.args.drop_caches:
            with contextlib.suppress(OSError):
                os.sync()
                Path("/proc/sys/vm/drop_caches").write_text("3\n")

    @contextlib.contextmanager
    def dirs(self, name: str) -> Iterator[tuple[Path, Path]]:
        """A fresh directory `name` in the mount and on tmpfs (tmpfs one removed after)."""
        a, t = self.mnt / name, self.ref / name
        a.mkdir()
        t.mkdir()
        try:
            yield a, t
        finally:
            shutil.rmtree(t, ignore_errors=True)

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        for m in [*self.extra_mounts, self.agentfs]:
            try:
                m.stop()
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                log(f"stopping {m.name} failed: {e}")
        if self.args.keep:
            log(f"kept {self.base} and {self.ref}")
            return
        shutil.rmtree(self.ref, ignore_errors=True)
        mounted = [m.path for m in [*self.extra_mounts, self.agentfs] if is_mountpoint(m.path)]
        if mounted:  # never rmtree through a live mount
            log(f"still mounted, not removing {self.base}: {mounted}")
            return
        shutil.rmtree(self.base, ignore_errors=True)


# --------------------------------------------------------------------------- benchmarks


def small_files(d: Path, n: int, cold: Callable[[], None] | None) -> dict[str, float]:
    """Per-op mean microseconds of create/stat/read/unlink of n 1 KiB files in d.

    Names are resolved relative to an open fd of d (like a process whose cwd is d), so
    only the last path component is looked up: the figure is per file, not per path depth.
    """
    data = os.urandom(KiB)
    names = [f"file{i:05d}" for i in range(n)]
    buf = 4 * KiB
    res: dict[str, float] = {}
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL

    def in_dir() -> int:
        return os.open(d, os.O_RDONLY | os.O_DIRECTORY)

    dfd = in_dir()
    try:
        t = now()
        for p in names:
            fd = os.open(p, flags, 0o644, dir_fd=dfd)
            os.write(fd, data)
            os.close(fd)
        res["create"] = us((now() - t) / n)

        def stat_read(tag: str) -> None:
            t = now()
            for p in names:
                os.stat(p, dir_fd=dfd)
            res["stat" + tag] = us((now() - t) / n)
            t = now()
            for p in names:
                fd = os.open(p, os.O_RDONLY, dir_fd=dfd)
                got = os.read(fd, buf)
                os.close(fd)
            res["read" + tag] = us((now() - t) / n)
            if got != data:
                raise RuntimeError(f"read back wrong data from {d}/{names[-1]}")

        stat_read("")
        if cold is not None:
            os.close(dfd)
            cold()
            dfd = in_dir()
        stat_read(" cold")

        t = now()
        for p in names:
            os.unlink(p, dir_fd=dfd)
        res["unlink"] = us((now() - t) / n)
    finally:
        os.close(dfd)
    if os.listdir(d):
        raise RuntimeError(f"{d} not empty after unlinking")
    return res


def bench_small(ctx: Ctx) -> None:
    n = ctx.sizes.small_files
    with ctx.dirs("small") as (a, t):
        log(f"small files: {n} on agentfs")
        ra = small_files(a, n, ctx.cold)
        log(f"small files: {n} on tmpfs")
        rt = small_files(t, n, None)
    notes = {"create": "open(O_CREAT)+write 1 KiB+close",
             "stat": "right after create",
             "read": "open+read+close",
             "stat cold": "agentfs remounted first",
             "read cold": "agentfs remounted first"}
    for k in ("create", "stat", "read", "stat cold", "read cold", "unlink"):
        ctx.add("small", f"{k} (N={n})", "us/op", ra[k], rt[k], "time", notes.get(k, ""))


def listing(d: Path, plus_stat: bool) -> int:
    t = now()
    if plus_stat:
        with os.scandir(d) as it:
            count = sum(1 for e in it if e.stat().st_size >= 0)
    else:
        count = len(os.listdir(d))
    el = now() - t
    return el if count else -1


def bench_listdir(ctx: Ctx) -> None:
    n = ctx.sizes.listdir_entries
    reps = 5
    res: dict[str, dict[str, float]] = {}
    with ctx.dirs("listdir") as (a, t):
        for label, d in (("agentfs", a), ("tmpfs", t)):
            log(f"listdir: creating {n} entries on {label}")
            for i in range(n):
                os.close(os.open(f"{d}/entry-{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644))
            if len(os.listdir(d)) != n:
                raise RuntimeError(f"{label}: expected {n} entries")
            r: dict[str, float] = {}
            for plus in (False, True):
                key = "scandir+stat" if plus else "listdir"
                if label == "agentfs":
                    ctx.cold()
                    os.stat(d)
                r[key + " cold"] = ms(listing(d, plus))
                r[key + " warm"] = ms(statistics.median(listing(d, plus) for _ in range(reps)))
            res[label] = r
    for k in ("listdir cold", "listdir warm", "scandir+stat cold", "scandir+stat warm"):
        note = "agentfs remounted first; tmpfs has no cold state" if "cold" in k else \
            f"median of {reps}"
        ctx.add("listdir", f"{k} ({n} entries)", "ms", res["agentfs"][k], res["tmpfs"][k],
                "time", note)


def seq_io(d: Path, size: int, data: memoryview, cold: Callable[[], None] | None
           ) -> dict[str, float]:
    """MiB/s of a sequential write (1 MiB writes + fsync) and reads of `size` bytes."""
    p = str(d / "seq.bin")
    res: dict[str, float] = {}
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t = now()
    for off in range(0, size, MiB):
        chunk = data[off:off + MiB]
        while chunk:
            chunk = chunk[os.write(fd, chunk):]
    os.fsync(fd)
    os.close(fd)
    res["write+fsync"] = size / MiB / ((now() - t) / 1e9)
    if cold is not None:
        cold()
    buf = bytearray(MiB)
    for key in ("read cold", "read warm"):
        t = now()
        got = read_all(p, buf)
        res[key] = size / MiB / ((now() - t) / 1e9)
        if got != size:
            raise RuntimeError(f"read {got} bytes of {size} from {p}")
    fd = os.open(p, os.O_RDONLY)
    try:  # spot-check contents (untimed)
        for off in (0, size // 2, size - MiB):
            if os.pread(fd, MiB, off) != data[off:off + MiB]:
                raise RuntimeError(f"{p}: wrong data at offset {off}")
    finally:
        os.close(fd)
    os.unlink(p)
    return res


def median_runs(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def bench_seq(ctx: Ctx) -> None:
    size = ctx.sizes.seq_mib * MiB
    reps = ctx.sizes.seq_runs
    log(f"seq: generating {size // MiB} MiB of random data")
    data = memoryview(os.urandom(size))
    ra, rt = [], []
    with ctx.dirs("seq") as (a, t):
        for i in range(reps):
            log(f"seq: agentfs, tmpfs ({i + 1}/{reps})")
            ra.append(seq_io(a, size, data, ctx.cold))
            rt.append(seq_io(t, size, data, None))
    ma, mt = median_runs(ra), median_runs(rt)
    sz = f"{size // MiB} MiB"
    med = f"median of {reps}"
    ctx.add("seq", f"write {sz} + fsync", "MiB/s", ma["write+fsync"], mt["write+fsync"], "rate",
            med)
    ctx.add("seq", f"read {sz} cold", "MiB/s", ma["read cold"], mt["read cold"], "rate",
            f"{med}; agentfs remounted first")
    ctx.add("seq", f"read {sz} warm", "MiB/s", ma["read warm"], mt["read warm"], "rate",
            f"{med}; second read, page cache")


def appends(d: Path, n: int, mode: str) -> list[int]:
    p = str(d / f"append-{mode}.log")
    rec = b"x" * 199 + b"\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    lat = []
    if mode == "reopen":
        for _ in range(n):
            t = now()
            fd = os.open(p, flags, 0o644)
            os.write(fd, rec)
            os.close(fd)
            lat.append(now() - t)
    else:
        fd = os.open(p, flags, 0o644)
        for _ in range(n):
            t = now()
            os.write(fd, rec)
            if mode == "fsync":
                os.fsync(fd)
            lat.append(now() - t)
        os.close(fd)
    if os.stat(p).st_size != n * len(rec):
        raise RuntimeError(f"{p}: size {os.stat(p).st_size}, expected {n * len(rec)}")
    return lat


def bench_append(ctx: Ctx) -> None:
    s = ctx.sizes
    with ctx.dirs("append") as (a, t):
        for mode, n, what in (("plain", s.appends, "write"),
                              ("fsync", s.fsync_appends, "write+fsync"),
                              ("reopen", s.appends, "open+write+close")):
            log(f"append: {mode} x{n}")
            la, lt = appends(a, n, mode), appends(t, n, mode)
            for q in (0.5, 0.99):
                ctx.add("append", f"{what} p{round(q * 100)} (n={n})", "us", us(pct(la, q)),
                        us(pct(lt, q)), "time",
                        "tmpfs fsync is a no-op" if mode == "fsync" and q == 0.5 else "")


def bench_tree(ctx: Ctx) -> None:
    s = ctx.sizes
    n = s.tree_dirs * s.tree_files_per_dir
    with ctx.dirs("tree") as (a, t):
        log(f"tree: {s.tree_dirs} dirs x {s.tree_files_per_dir} files on agentfs")
        ta = build_tree(a / "t", s.tree_dirs, s.tree_files_per_dir)
        log("tree: tmpfs")
        tt = build_tree(t / "t", s.tree_dirs, s.tree_files_per_dir)
    ctx.add("tree", f"create {s.tree_dirs} dirs x {s.tree_files_per_dir} files ({n:,})", "s",
            ta / 1e9, tt / 1e9, "time", f"agentfs {n / (ta / 1e9):,.0f} files/s")


def label(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def bench_fork(ctx: Ctx) -> None:
    s = ctx.sizes
    with ctx.dirs("fork") as (a, t):
        for n in s.fork_trees:
            nd, per = tree_shape(n)
            lb = label(n)
            log(f"fork: building {nd} dirs x {per} files on agentfs")
            tb_a = build_tree(a / f"tree{lb}", nd, per)
            log(f"fork: built in {tb_a / 1e9:.1f} s ({n / (tb_a / 1e9):,.0f} files/s); tmpfs")
            tb_t = build_tree(t / f"tree{lb}", nd, per)
            ctx.add("fork", f"build {lb}-file tree", "s", tb_a / 1e9, tb_t / 1e9, "time",
                    "tmpfs column: build on tmpfs")
            rel = f"/fork/tree{lb}"
            forks, snaps, cps = [], [], []
            for i in range(s.runs):
                t0 = now()
                control(ctx.mnt, f"fork {rel} /fork/f{lb}-{i}")
                forks.append(now() - t0)
                t0 = now()
                os.mkdir(a / f"tree{lb}" / ".snapshots" / f"s{i}")
                snaps.append(now() - t0)
            # sanity: the fork and the snapshot hold the tree
            probe = f"d{nd - 1:04d}/f{per - 1:04d}"
            for p in (a / f"f{lb}-0" / probe, a / f"tree{lb}" / ".snapshots" / "s0" / probe):
                if not p.is_file():
                    raise RuntimeError(f"{p} missing after fork/snapshot")
            cp_runs = s.runs if n <= 10_000 else 3
            log(f"fork: cp -a on tmpfs x{cp_runs}")
            for i in range(cp_runs):
                cps.append(cp_a(t / f"tree{lb}", t / f"cp{i}"))
            for i in range(cp_runs):
                shutil.rmtree(t / f"cp{i}")
            cp_t = statistics.median(cps)
            ctx.add("fork", f"fork {lb}-file tree", "ms", ms(statistics.median(forks)), ms(cp_t),
                    "time", f"max {ms(max(forks)):.1f} ms of {s.runs}")
            ctx.add("fork", f"snapshot {lb}-file tree", "ms", ms(statistics.median(snaps)),
                    ms(cp_t), "time", f"max {ms(max(snaps)):.1f} ms of {s.runs}")
            if n in s.cp_in_mount:
                log(f"fork: cp -a of {lb} files inside the mount")
                tc = cp_a(a / f"tree{lb}", a / f"cp{lb}")
                ctx.add("fork", f"cp -a {lb}-file tree in mount", "ms", ms(tc), ms(cp_t), "time",
                        "1 run")


def bench_chain(ctx: Ctx) -> None:
    s = ctx.sizes
    size = s.chain_mib * MiB
    data = os.urandom(size)
    root = ctx.mnt / "chain"
    root.mkdir()
    (root / "d0").mkdir()
    write_file(str(root / "d0" / "data"), data)
    top = max(s.chain_depths)
    log(f"chain: forking {top} deep")
    for d in range(1, top + 1):
        control(ctx.mnt, f"fork /chain/d{d - 1} /chain/d{d}")
    depths = (0, *s.chain_depths)
    buf = bytearray(MiB)
    rates: dict[int, list[float]] = {d: [] for d in depths}
    reps = 5
    for rep in range(reps):
        ctx.cold()
        for d in depths[rep % len(depths):] + depths[:rep % len(depths)]:  # rotate the order
            p = str(root / f"d{d}" / "data")
            os.stat(p)
            t = now()
            got = read_all(p, buf)
            rates[d].append(size / MiB / ((now() - t) / 1e9))
            if got != size:
                raise RuntimeError(f"{p}: read {got} of {size}")
    with open(root / f"d{top}" / "data", "rb") as f:
        if f.read() != data:
            raise RuntimeError(f"depth {top}: contents differ")
    base = statistics.median(rates[0])
    for d in depths:
        ctx.add("chain", f"read {s.chain_mib} MiB at fork depth {d}", "MiB/s",
                statistics.median(rates[d]), base, "rate", f"cold, median of {reps}")


def build_passthrough(ctx: Ctx) -> Path | None:
    src = PASSTHROUGH_SRC / "passthrough.c"
    if not src.exists() or not shutil.which("gcc") or not shutil.which("pkg-config"):
        log(f"passthrough: no {src} or no gcc/pkg-config (apt-get install libfuse3-dev gcc)")
        return None
    build = ctx.base / "passthrough-build"
    build.mkdir()
    for f in ("passthrough.c", "passthrough_helpers.h"):
        shutil.copy(PASSTHROUGH_SRC / f, build / f)
    flags = subprocess.run(["pkg-config", "fuse3", "--cflags", "--libs"], capture_output=True,
                           text=True)
    if flags.returncode != 0:
        log("passthrough: pkg-config fuse3 failed")
        return None
    exe = build / "passthrough"
    res = subprocess.run(["gcc", "-O2", "-Wall", str(build / "passthrough.c"), "-o", str(exe),
                          *flags.stdout.split()], capture_output=True, text=True)
    if res.returncode != 0:
        log(f"passthrough: build failed: {res.stderr[-2000:]}")
        return None
    return exe


def bench_passthrough(ctx: Ctx) -> None:
    exe = build_passthrough(ctx)
    if exe is None:
        ctx.add("passthrough", "not built (no libfuse3-dev examples or gcc)", "", None, None,
                "time")
        return
    mp = ctx.base / "pt-mnt"
    pt = FuseMount("passthrough", [str(exe), "-f", str(mp)], mp, ctx.base / "passthrough.log")
    ctx.extra_mounts.append(pt)
    pt.start()
    try:
        n = ctx.sizes.small_files
        size = min(ctx.sizes.seq_mib, 64) * MiB
        data = memoryview(os.urandom(size))
        with ctx.dirs("pt") as (_, t):
            (t / "small").mkdir()
            (t / "seq").mkdir()
            via = Path(str(mp) + str(t))  # the same tmpfs directory, seen through FUSE
            log(f"passthrough: small files x{n}")
            rp = small_files(via / "small", n, pt.remount)
            rt = small_files(t / "small", n, None)
            log(f"passthrough: seq {size // MiB} MiB")
            sp = seq_io(via / "seq", size, data, pt.remount)
            st = seq_io(t / "seq", size, data, None)
    finally:
        pt.stop()
    for k in ("create", "stat", "read", "unlink"):
        ctx.add("passthrough", f"{k} (N={n})", "us/op", rp[k], rt[k], "time")
    sz = f"{size // MiB} MiB"
    for k, metric in (("write+fsync", f"write {sz} + fsync"), ("read cold", f"read {sz} cold"),
                      ("read warm", f"read {sz} warm")):
        ctx.add("passthrough", metric, "MiB/s", sp[k], st[k], "rate",
                "no kernel_cache: 'warm' reads go to the daemon too" if k == "read warm" else "")


RUNNERS: dict[str, Callable[[Ctx], None]] = {
    "small": bench_small, "listdir": bench_listdir, "seq": bench_seq, "append": bench_append,
    "tree": bench_tree, "chain": bench_chain, "fork": bench_fork, "passthrough": bench_passthrough,
}


# --------------------------------------------------------------------------- targets


def find(rows: list[Row], group: str, prefix: str) -> list[Row]:
    return [r for r in rows if r.group == group and r.metric.startswith(prefix)
            and r.value is not None]


def print_targets(rows: list[Row], out=sys.stdout) -> None:
    print("\nTargets (the project's)", file=out)

    def line(what: str, ok: bool | None, got: str) -> None:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[ok]
        print(f"  [{mark}] {what}: {got}", file=out)

    create = find(rows, "small", "create")
    pt_create = find(rows, "passthrough", "create")
    ref = f"; libfuse passthrough measured {pt_create[0].ratio_text()}" if pt_create else \
        "; libfuse passthrough is about 20x per the project"
    if create:
        r = create[0].ratio() or 0
        line("small-file create <= 20x tmpfs", r <= 20, f"{create[0].ratio_text()}{ref}")
    else:
        line("small-file create <= 20x tmpfs", None, "not run")
    seq = [r for r in find(rows, "seq", "") if "warm" not in r.metric]
    if seq:
        worst = min(seq, key=lambda r: r.ratio() or 0)
        line("sequential I/O >= 25% of tmpfs", (worst.ratio() or 0) >= 0.25,
             ", ".join(f"{r.metric} {r.ratio_text()}" for r in seq))
    else:
        line("sequential I/O >= 25% of tmpfs", None, "not run")
    for op in ("fork", "snapshot"):
        rs = [r for r in find(rows, "fork", op + " ")]
        if not rs:
            line(f"{op} < 10 ms and flat", None, "not run")
            continue
        vals = [r.value or 0 for r in rs]
        line(f"{op} < 10 ms", max(vals) < 10,
             ", ".join(f"{r.metric.split()[1]} {fmt(r.value)} ms" for r in rs))
        # Medians of a few ms jitter by a ms or two on a busy 2-core box: call it flat
        # when the largest tree costs at most 2x the smallest or under 2 ms more.
        small, big = vals[0], vals[-1]
        line(f"{op} flat (largest tree <= 2x smallest, or < +2 ms)",
             big <= 2 * small or big - small < 2,
             f"{rs[0].metric.split()[1]} {fmt(small)} ms -> {rs[-1].metric.split()[1]} "
             f"{fmt(big)} ms ({big / max(small, 1e-9):.1f}x)")


# --------------------------------------------------------------------------- main


def environment(ctx: Ctx | None, argv: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    env["command"] = shlex.join([sys.executable, *argv])
    env["kernel"] = platform.release()
    env["cpus"] = str(os.cpu_count())
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().split()[1]
        env["memory"] = f"{int(mem) / 1024 / 1024:.1f} GiB"
    env["python"] = sys.version.split()[0]
    env["load average"] = loadavg()
    from importlib import metadata
    for pkg in ("pyfuse3", "lmdb", "trio"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            env[pkg] = metadata.version(pkg)
    res = subprocess.run(["fusermount3", "-V"], capture_output=True, text=True)
    env["fusermount3"] = (res.stdout + res.stderr).strip().split()[-1] if res.returncode == 0 \
        else "?"
    repo = Path(__file__).resolve().parent.parent
    git = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    if git.returncode == 0:
        env["agentfs commit"] = git.stdout.strip()
    if ctx is not None:
        env["store"] = f"{ctx.store} ({fstype(ctx.base)})"
        env["tmpfs ref"] = f"{ctx.ref} ({fstype(ctx.ref)})"
        env["mount"] = f"{ctx.mnt}"
    return env


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smaller sizes for a sanity run (20k-file tree, 64 MiB, ...)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help=f"run only these (repeat or comma-separate): {', '.join(BENCHES)}")
    ap.add_argument("--store-on-tmpfs", action="store_true",
                    help="put the LMDB store on tmpfs too (isolates FUSE+Python cost)")
    ap.add_argument("--store-dir", default="/var/tmp", help="parent of the temp store")
    ap.add_argument("--tmpfs-dir", default="/dev/shm", help="tmpfs for the reference dir")
    ap.add_argument("--drop-caches", action="store_true",
                    help="also drop the host page cache (root) at every cold remount")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp store and tmpfs dir")
    args = ap.parse_args(argv)
    names = [n for o in args.only for n in o.split(",") if n]
    bad = [n for n in names if n not in BENCHES]
    if bad:
        ap.error(f"unknown benchmark {bad}; choose from {', '.join(BENCHES)}")
    args.selected = [b for b in BENCHES if not names or b in names]
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if fstype(args.tmpfs_dir) != "tmpfs":
        log(f"warning: {args.tmpfs_dir} is {fstype(args.tmpfs_dir)}, not tmpfs")
    ctx = Ctx(args, sizes)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    atexit.register(ctx.cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    env = environment(ctx, [sys.argv[0], *argv])
    print("agentfs benchmarks" + (" (--quick)" if args.quick else ""))
    for k, v in env.items():
        print(f"  {k:<15} {v}")
    sys.stdout.flush()
    if env.get("store", "").endswith("(tmpfs)") and not args.store_on_tmpfs:
        log("warning: the store is on tmpfs; pass --store-dir on a disk filesystem")

    if float(env["load average"].split()[0].replace("?", "0")) > 0.5:
        log(f"warning: load average {env['load average']}: other work will skew the figures")
    started = time.monotonic()
    timings: dict[str, float] = {}
    try:
        ctx.agentfs.start()
        for name in args.selected:
            t = time.monotonic()
            log(f"=== {name}")
            try:
                if not ctx.agentfs.alive():
                    log("agentfs is not mounted: mounting again")
                    ctx.agentfs.stop()
                    ctx.agentfs.start()
                RUNNERS[name](ctx)
            except Exception as e:  # noqa: BLE001 - report and go on with the others
                traceback.print_exc()
                ctx.errors.append(f"{name}: {e!r}")
                ctx.add(name, f"FAILED: {e!r}"[:90], "", None, None, "time")
                if not ctx.agentfs.alive():
                    log(f"daemon log tail:\n{ctx.agentfs.log_tail()}")
            timings[name] = time.monotonic() - t
            log(f"=== {name} done in {timings[name]:.1f} s")
    finally:
        ctx.cleanup()

    print("\nRatios are agentfs/tmpfs: for times (us, ms, s) 'Nx' = N times slower, higher is "
          "worse;\nfor throughputs (MiB/s) '%' = share of tmpfs throughput, higher is better.")
    print_table(ctx.rows)
    print_targets(ctx.rows)
    total = time.monotonic() - started
    print("\nWall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
          + f"; total {total:.0f}s; load average at the end {loadavg()}")
    if ctx.errors:
        print("\nERRORS:\n  " + "\n  ".join(ctx.errors))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"environment": env, "quick": args.quick, "sizes": asdict(sizes),
             "rows": [dict(asdict(r), ratio=r.ratio()) for r in ctx.rows],
             "wall_seconds": timings, "errors": ctx.errors}, indent=2) + "\n")
    return 1 if ctx.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
