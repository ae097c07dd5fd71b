#!/usr/bin/env python3
"""The agent layer's benchmarks, each next to a reference measured in the same run.

Usage:  /work/venv/bin/python bench/agents.py [--quick] [--only NAME[,NAME]] [--json FILE]

Mounts a fresh agentfs (store under /var/tmp) and a reference directory on
tmpfs (/dev/shm), then measures (names for --only):

  forks       100 forks of an agent whose workspace holds 10k files and whose
              transcript is 1 MB: total time, and the space they add (exact
              B-tree pages of the store, read with lmdb) as a share of the
              space the agent takes; reference: one `cp -a` of the agent
              directory on tmpfs.
  messages    delivery latency, sender's close -> a reader blocked in
              `inbox/.wait` wakes (p50/p99), against a pipe between two
              threads; throughput of 4 senders and one consuming reader,
              against the same protocol with rename(2) on tmpfs.
  transcript  append latency of one line at 10-210 lines and at 100k lines,
              against O_APPEND on a tmpfs file of the same length; store
              bytes per transcript byte.
  render      time to read context.json after each new turn at 10 and at
              1k turns (incremental), and the first render after a remount
              (from scratch); reference: reading a tmpfs file of the same size.

Ratios are agentfs/reference: for times, N x slower. Standard library plus
the `lmdb` module the daemon itself uses (run it with the venv's python).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import FuseMount, agentfs_cmd, fmt, log, now, pct  # noqa: E402

BENCHES = ("forks", "messages", "transcript", "render")
ROWS: list[tuple[str, str, str, float | None, float | None, str]] = []


def row(group: str, metric: str, unit: str, value: float | None, ref: float | None,
        note: str = "") -> None:
    ROWS.append((group, metric, unit, value, ref, note))
    ratio = f"{value / ref:.1f}x" if value is not None and ref else "-"
    log(f"{group}: {metric} = {fmt(value)} {unit} (ref {fmt(ref)}, {ratio}) {note}")


def line(role: str, text: str) -> bytes:
    return json.dumps({"role": role, "content": text}).encode() + b"\n"


def store_bytes(store: Path) -> int:
    """Exact bytes of the B-tree pages holding agentfs's records (not the
    file's high-water mark, which freed pages never lower)."""
    env = lmdb.open(str(store / "lmdb"), readonly=True, lock=True, max_dbs=4)
    try:
        db = env.open_db(b"agentfs", create=False)
        with env.begin() as txn:
            st = txn.stat(db)
        return (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
    finally:
        env.close()


def ctl(agent: Path, command: str) -> None:
    fd = os.open(agent / "ctl", os.O_WRONLY)
    try:
        os.write(fd, (command + "\n").encode())
    except OSError as e:
        raise RuntimeError(f"{command}: {e}: {(agent / 'errstr').read_text()}") from e
    finally:
        os.close(fd)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = Path(tempfile.mkdtemp(prefix="agentfs-bench-agents-", dir="/var/tmp"))
        self.ref = Path(tempfile.mkdtemp(prefix="agentfs-bench-agents-ref-", dir="/dev/shm"))
        self.mnt = self.base / "mnt"
        self.store = self.base / "store"
        self.fuse = FuseMount("agentfs", [*agentfs_cmd(), "mount", str(self.mnt), "--store",
                                          str(self.store), "--foreground"],
                              self.mnt, self.base / "daemon.log")
        self.agents = self.mnt / "agents"

    def spawn(self, name: str) -> Path:
        self.agents.mkdir(exist_ok=True)
        p = self.agents / name
        p.mkdir()
        return p

    # ------------------------------------------------------------ forks

    def forks(self) -> None:
        files = 2000 if self.args.quick else 10_000
        n_forks = 100
        a = self.spawn("base")
        empty = store_bytes(self.store)
        ws = a / "workspace"
        body = b"x" * 1000 + b"\n"
        for d in range(files // 100):
            (ws / f"d{d:03}").mkdir()
            for f in range(100):
                (ws / f"d{d:03}" / f"f{f:03}").write_bytes(body)
        fd = os.open(a / "transcript", os.O_WRONLY | os.O_APPEND)
        text = "y" * 1000
        for i in range(1000):
            os.write(fd, line("user" if i % 2 == 0 else "assistant", f"{i} {text}"))
        os.close(fd)
        size = sum(f.stat().st_size for f in a.rglob("*") if f.is_file())
        before = store_bytes(self.store)
        agent_bytes = before - empty
        t = now()
        for i in range(n_forks):
            ctl(a, f"fork f{i:03}")
        took = now() - t
        after = store_bytes(self.store)
        assert (self.agents / "f099" / "transcript").stat().st_size == \
            (a / "transcript").stat().st_size
        ref = self.ref / "base"
        t = now()
        subprocess.run(["cp", "-a", str(a), str(ref)], check=True)
        cp = now() - t
        shutil.rmtree(ref)
        row("forks", f"{n_forks} forks of an agent ({files} files, 1 MB transcript)", "ms",
            took / 1e6, cp / 1e6, "ref: one cp -a of it on tmpfs")
        row("forks", "per fork", "ms", took / 1e6 / n_forks, None)
        added = after - before
        row("forks", f"space added by {n_forks} forks", "KiB", added / 1024, agent_bytes / 1024,
            f"{100 * added / agent_bytes:.2f}% of the agent's {agent_bytes / 2**20:.1f} MiB "
            f"in the store ({size / 2**20:.1f} MiB of files)")

    # ------------------------------------------------------------ messages

    def messages(self) -> None:
        n = 200 if self.args.quick else 1000
        a = self.spawn("inbox")
        inbox = a / "inbox"
        wake: list[int] = []
        names: list[str] = []

        def reader() -> None:
            for _ in range(n):
                with open(inbox / ".wait-30", "rb") as f:
                    got = f.read()
                wake.append(now())
                name = got.decode().strip()
                names.append(name)
                os.unlink(inbox / name)

        th = threading.Thread(target=reader)
        th.start()
        closes = []
        for i in range(n):
            fd = os.open(inbox / f"m{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"hello\n")
            while len(wake) < i:  # one message at a time: the reader is blocked again
                time.sleep(0)
            time.sleep(0.001)
            closes.append(now())
            os.close(fd)
            while len(wake) <= i:
                time.sleep(0)
        th.join()
        lat = [(w - c) / 1e3 for c, w in zip(closes, wake, strict=True)]
        assert [x.split("+", 1)[1] for x in names] == [f"m{i}" for i in range(n)]
        # Reference: the cheapest wake-up there is, a pipe between two threads.
        r, w = os.pipe()
        pwake: list[int] = []

        def pipe_reader() -> None:
            for _ in range(n):
                os.read(r, 64)
                pwake.append(now())

        th = threading.Thread(target=pipe_reader)
        th.start()
        pclose = []
        for i in range(n):
            time.sleep(0.001)
            pclose.append(now())
            os.write(w, b"x")
            while len(pwake) <= i:
                time.sleep(0)
        th.join()
        os.close(r)
        os.close(w)
        plat = [(x - c) / 1e3 for c, x in zip(pclose, pwake, strict=True)]
        for q in (0.5, 0.99):
            row("messages", f"delivery p{int(q * 100)}: close -> blocked reader wakes", "us",
                pct(lat, q), pct(plat, q), "ref: pipe write -> reader thread")
        self._throughput(a)

    def _throughput(self, a: Path) -> None:
        senders, per = 4, 100 if self.args.quick else 500
        total = senders * per

        def run(send: Callable[[int, int], None], consume: Callable[[], int]) -> float:
            got = [0]

            def reader() -> None:
                while got[0] < total:
                    got[0] += consume()

            ths = [threading.Thread(target=lambda s=s: [send(s, j) for j in range(per)])
                   for s in range(senders)]
            rd = threading.Thread(target=reader)
            t = now()
            rd.start()
            for th in ths:
                th.start()
            for th in ths:
                th.join()
            rd.join()
            return total / ((now() - t) / 1e9)

        inbox = a / "inbox"

        def send_agentfs(s: int, j: int) -> None:
            (inbox / f"s{s}-{j}").write_bytes(b"payload\n")

        def consume_agentfs() -> int:
            with open(inbox / ".wait-10", "rb") as f:
                if not f.read():
                    return 0
            k = 0
            for name in sorted(os.listdir(inbox)):
                os.unlink(inbox / name)
                k += 1
            return k

        tdir = self.ref / "inbox"
        tdir.mkdir()
        tmp = self.ref / "tmp"
        tmp.mkdir()

        def send_tmpfs(s: int, j: int) -> None:
            p = tmp / f"s{s}-{j}"
            p.write_bytes(b"payload\n")
            os.rename(p, tdir / f"s{s}-{j}")

        def consume_tmpfs() -> int:
            k = 0
            for name in sorted(os.listdir(tdir)):
                os.unlink(tdir / name)
                k += 1
            if not k:
                time.sleep(0.0005)
            return k

        rate = run(send_agentfs, consume_agentfs)
        ref = run(send_tmpfs, consume_tmpfs)
        ROWS.append(("messages", f"throughput, {senders} senders x {per}, 1 reader", "msg/s",
                     rate, ref, "ref: write+rename on tmpfs, polling reader"))
        log(f"messages: throughput {rate:.0f} msg/s (tmpfs {ref:.0f})")

    # ------------------------------------------------------------ transcript

    def transcript(self) -> None:
        big = 20_000 if self.args.quick else 100_000
        a = self.spawn("long")
        ref = self.ref / "transcript"
        msg = "z" * 150
        samples = 200

        def measure(fd: int, rfd: int, count: int, turn: int) -> tuple[list[float], list[float]]:
            lat, rlat = [], []
            for i in range(count):
                data = line("user" if (turn + i) % 2 == 0 else "assistant", f"{turn + i} {msg}")
                t = now()
                os.write(fd, data)
                lat.append((now() - t) / 1e3)
                t = now()
                os.write(rfd, data)
                rlat.append((now() - t) / 1e3)
            return lat, rlat

        fd = os.open(a / "transcript", os.O_WRONLY | os.O_APPEND)
        rfd = os.open(ref, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        before = store_bytes(self.store)
        for i in range(10):
            os.write(fd, line("user" if i % 2 == 0 else "assistant", f"{i} {msg}"))
            os.write(rfd, line("user" if i % 2 == 0 else "assistant", f"{i} {msg}"))
        small, rsmall = measure(fd, rfd, samples, 10)
        log(f"transcript: filling to {big} lines")
        chunk = []
        for i in range(10 + samples, big - samples):
            chunk.append(line("user" if i % 2 == 0 else "assistant", f"{i} {msg}"))
            if len(chunk) == 200:
                os.write(fd, b"".join(chunk))  # many lines per write: each is still a turn
                os.write(rfd, b"".join(chunk))
                chunk = []
        if chunk:
            os.write(fd, b"".join(chunk))
            os.write(rfd, b"".join(chunk))
        n0 = (a / "transcript").read_bytes().count(b"\n")
        large, rlarge = measure(fd, rfd, samples, n0)
        os.close(fd)
        os.close(rfd)
        lines = (a / "status").read_text().split("turns=")[1].strip()
        size = (a / "transcript").stat().st_size
        added = store_bytes(self.store) - before
        for q in (0.5, 0.99):
            row("transcript", f"append p{int(q * 100)} at lines 10-{10 + samples}", "us",
                pct(small, q),
                pct(rsmall, q), "ref: O_APPEND on tmpfs")
            row("transcript", f"append p{int(q * 100)} at {lines} lines", "us", pct(large, q),
                pct(rlarge, q))
        row("transcript", f"store bytes per transcript byte ({size / 2**20:.1f} MB)", "B/B",
            added / size, 1.0, "every line is a turn, pinned")

    # ------------------------------------------------------------ render

    def render(self) -> None:
        turns = 1000
        a = self.spawn("ctx")
        (a / "system").write_text("You are careful.\n")
        (a / "prompt").write_text("Refactor the parser.\n")
        fd = os.open(a / "transcript", os.O_WRONLY | os.O_APPEND)
        samples = 20

        def turn_line(i: int) -> bytes:
            if i % 2 == 0:  # asks for the tool_result of the next line (pairing)
                return json.dumps({"role": "assistant", "content": [
                    {"type": "text", "text": f"step {i}: " + "thinking " * 40},
                    {"type": "tool_use", "id": f"t{i + 1}", "name": "bash", "input": {}}]}
                ).encode() + b"\n"
            return json.dumps({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": f"t{i}",
                 "content": f"output {i}\n" + "row of tool output\n" * (20 if i % 10 else 400)}]}
            ).encode() + b"\n"

        def measure(start: int) -> tuple[list[float], list[float], int]:
            lat, rlat = [], []
            size = 0
            for i in range(start, start + samples):
                os.write(fd, line("assistant", f"turn {i}") if i % 2 == 0 else
                         line("user", f"turn {i}"))
                t = now()
                data = (a / "context.json").read_bytes()
                lat.append((now() - t) / 1e3)
                ref = self.ref / "context.json"
                ref.write_bytes(data)
                t = now()
                ref.read_bytes()
                rlat.append((now() - t) / 1e3)
                size = len(data)
            return lat, rlat, size

        for i in range(10):
            os.write(fd, turn_line(i))
        (a / "context.json").read_bytes()
        small, rsmall, s1 = measure(10)
        for i in range(30, turns):
            os.write(fd, turn_line(i))
        (a / "context.json").read_bytes()
        large, rlarge, s2 = measure(turns)
        os.close(fd)
        row("render", f"context.json after a turn, 30 turns ({s1 // 1024} KiB)", "us",
            statistics.median(small), statistics.median(rsmall), "ref: read of the same bytes "
            "from tmpfs")
        row("render", f"context.json after a turn, {turns + samples} turns ({s2 // 1024} KiB)",
            "us", statistics.median(large), statistics.median(rlarge))
        self.fuse.remount()
        t = now()
        (a / "context.json").read_bytes()
        cold = (now() - t) / 1e3
        row("render", f"first render after remount, {turns + samples} turns (from scratch)",
            "us", cold, statistics.median(rlarge))

    # ------------------------------------------------------------ driver

    def run(self, names: list[str]) -> None:
        self.fuse.start()
        try:
            for name in names:
                log(f"=== {name}")
                getattr(self, name)()
        finally:
            self.fuse.stop()
            shutil.rmtree(self.ref, ignore_errors=True)
            if not self.args.keep:
                shutil.rmtree(self.base, ignore_errors=True)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated benchmarks")
    ap.add_argument("--keep", action="store_true", help="keep the store")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in BENCHES:
            ap.error(f"unknown benchmark {n!r}; choose from {', '.join(BENCHES)}")
    try:
        Bench(args).run(names)
    finally:  # a failed benchmark still leaves the figures measured before it
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"quick": args.quick, "complete": sys.exc_info()[0] is None, "rows": [
                    {"group": g, "metric": m, "unit": u, "value": v, "ref": r, "note": n,
                     "ratio": v / r if v is not None and r else None}
                    for g, m, u, v, r, n in ROWS]}, indent=2) + "\n")
    print("\nagentfs agent layer" + (" (--quick)" if args.quick else ""))
    width = max(len(r[1]) for r in ROWS)
    for group, metric, unit, value, ref, note in ROWS:
        ratio = "-" if value is None or not ref else f"{value / ref:.2f}x"
        print(f"  {group:<10} {metric:<{width}}  {fmt(value):>10} {unit:<5} "
              f"ref {fmt(ref):>10}  {ratio:>8}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
