#!/usr/bin/env python3
"""`agentfs import` against `cp -a`: seeding a fresh mount with a host tree.

Usage:  .venv/bin/python bench/import.py [--quick] [--sizes N,N] [--keep] [--json FILE]

Generates trees of small files of varied sizes (half under 256 B, a few up to
128 KiB; directories 1 to 8 levels deep, 30 files each, some hard links and
symlinks) on tmpfs, then for each tree, in the same run:

  import   `agentfs import TREE MOUNT/dst` into a fresh mount (wall clock of
           the CLI, which returns once the daemon has made the tree visible)
  cp -a    `cp -a TREE MOUNT/dst` into another fresh mount
  stat     a loop of stat(2) on a name the kernel cannot cache, on an idle
           mount and during an import of the tree (p50 / p99 / max latency,
           and how long the import takes with that loop running)

and prints the ratio cp -a / import (the target: at least 10x). Both copies
are checked (same number of entries, and for --quick `diff -r`). Default
sizes 10k and 100k files; --quick: 2k. Standard library only; run it with the
venv's python, as root or a user who may mount FUSE filesystems.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import FuseMount, agentfs_cmd, control, fmt, log, now, pct  # noqa: E402

FILES_PER_DIR = 30
SIZES = (0, 16, 100, 200, 256, 700, 1500, 2048, 4000, 9000, 16_384, 40_000, 131_072)
WEIGHTS = (4, 10, 14, 12, 10, 12, 10, 8, 8, 6, 3, 2, 1)


def make_tree(root: Path, n: int, seed: int = 12) -> tuple[int, int]:
    """`n` files under `root` (made here); returns (entries, bytes)."""
    rng = random.Random(seed)
    blob = os.urandom(max(SIZES))
    root.mkdir()
    dirs = [root]
    entries = total = 0
    for i in range(n):
        if i % FILES_PER_DIR == 0 and i:
            parent = rng.choice(dirs[-20:]) if len(dirs) > 1 else root
            depth = len(parent.relative_to(root).parts)
            d = (parent if depth < 8 else root) / f"d{i // FILES_PER_DIR}"
            d.mkdir()
            dirs.append(d)
            entries += 1
        d = dirs[-1]
        size = rng.choices(SIZES, WEIGHTS)[0]
        p = d / f"f{i}"
        first_in_dir = i % FILES_PER_DIR == 0
        if i % 97 == 5 and not first_in_dir:
            os.symlink(f"f{i - 1}", p)
        elif i % 89 == 3 and not first_in_dir and (d / f"f{i - 1}").is_file():
            os.link(d / f"f{i - 1}", p)
        else:
            with open(p, "wb") as f:
                f.write(blob[:size])
            total += size
        entries += 1
    return entries, total


def count(top: Path) -> int:
    return sum(len(ds) + len(fs) for _, ds, fs in os.walk(top))


class Mounts:
    """Fresh agentfs mounts, each on its own store under `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.n = 0
        self.current: FuseMount | None = None

    def fresh(self) -> Path:
        self.stop()
        self.n += 1
        mnt, store = self.base / f"mnt{self.n}", self.base / f"store{self.n}"
        self.current = FuseMount("agentfs", [*agentfs_cmd(), "mount", str(mnt), "--store",
                                             str(store), "--foreground"], mnt,
                                 self.base / f"daemon{self.n}.log")
        self.current.start()
        return mnt

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            shutil.rmtree(self.current.path.parent / f"store{self.n}", ignore_errors=True)
            self.current = None


def timed(cmd: list[str]) -> float:
    t = now()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (now() - t) / 1e9


def stat_loop(mnt: Path, stop: threading.Event, lat: list[int]) -> None:
    name = str(mnt / "not-there")  # a miss is never cached: one request each time
    while not stop.is_set():
        t = now()
        try:
            os.stat(name)
        except FileNotFoundError:
            pass
        lat.append(now() - t)


def latency_during(mnt: Path, src: Path, idle_seconds: float) -> dict[str, float]:
    """stat latency on the idle mount, then while the daemon imports `src`."""
    stop = threading.Event()
    lat: list[int] = []
    th = threading.Thread(target=stat_loop, args=(mnt, stop, lat))
    th.start()
    time.sleep(idle_seconds)
    idle = list(lat)
    lat.clear()
    t = now()
    control(mnt, f"import {src} during")
    while True:
        status = (mnt / ".agentfs" / "ctl").read_text()
        if " done: " in status or " failed " in status:
            break
        time.sleep(0.02)
    took = (now() - t) / 1e9
    stop.set()
    th.join()
    if " failed " in status:
        raise RuntimeError(status)
    return {"idle_p50": pct(idle, 0.5) / 1e6, "idle_p99": pct(idle, 0.99) / 1e6,
            "idle_max": max(idle) / 1e6, "p50": pct(lat, 0.5) / 1e6,
            "p99": pct(lat, 0.99) / 1e6, "max": max(lat) / 1e6, "stats": len(lat),
            "import_s": took}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one 2k-file tree")
    ap.add_argument("--sizes", default=None, help="comma-separated file counts")
    ap.add_argument("--keep", action="store_true", help="keep the trees and stores")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
             else [2000] if args.quick else [10_000, 100_000])
    base = Path(tempfile.mkdtemp(prefix="agentfs-bench-import-", dir="/var/tmp"))
    trees = Path(tempfile.mkdtemp(prefix="agentfs-bench-import-src-", dir="/dev/shm"))
    mounts = Mounts(base)
    rows = []
    agentfs = agentfs_cmd()
    try:
        for n in sizes:
            src = trees / f"tree{n}"
            entries, size = make_tree(src, n)
            log(f"tree of {n} files: {entries} entries, {size / 2**20:.1f} MiB")
            mnt = mounts.fresh()
            t_import = timed([*agentfs, "import", str(src), str(mnt / "dst")])
            assert count(mnt / "dst") == entries, "import: entries missing"
            if args.quick:
                subprocess.run(["diff", "-r", "--no-dereference", str(src), str(mnt / "dst")],
                               check=True)
            log(f"import: {t_import:.2f} s")
            mnt = mounts.fresh()
            t_cp = timed(["cp", "-a", str(src), str(mnt / "dst")])
            assert count(mnt / "dst") == entries, "cp -a: entries missing"
            log(f"cp -a: {t_cp:.2f} s")
            mnt = mounts.fresh()
            lat = latency_during(mnt, src, 1.0)
            log(f"stat during import: {lat}")
            rows.append({"files": n, "entries": entries, "mib": size / 2**20,
                         "import_s": t_import, "cp_s": t_cp, "ratio": t_cp / t_import,
                         "stat": lat})
    finally:
        mounts.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
            shutil.rmtree(trees, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"quick": args.quick, "rows": rows}, indent=2))
    print("\nagentfs import vs cp -a into a fresh mount" + (" (--quick)" if args.quick else ""))
    print(f"  {'files':>7} {'entries':>8} {'MiB':>7} {'import s':>9} {'cp -a s':>9} "
          f"{'cp/import':>9} {'entries/s':>10}")
    for r in rows:
        print(f"  {r['files']:>7} {r['entries']:>8} {r['mib']:>7.1f} {r['import_s']:>9.2f} "
              f"{r['cp_s']:>9.2f} {r['ratio']:>8.1f}x {r['entries'] / r['import_s']:>10.0f}")
    print("\n  stat(2) latency, ms: idle mount p50/p99/max; during an import p50/p99/max "
          "(the import's time with the stat loop running)")
    for r in rows:
        s = r["stat"]
        print(f"  {r['files']:>7}  idle {fmt(s['idle_p50'])}/{fmt(s['idle_p99'])}/"
              f"{fmt(s['idle_max'])}  during {fmt(s['p50'])}/{fmt(s['p99'])}/{fmt(s['max'])} "
              f"({s['stats']} stats; import {s['import_s']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
