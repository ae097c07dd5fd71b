#!/usr/bin/env python3
"""In-process CPU cost of one transcript append (Agents.append_lines of one
line, on an LMDB store in a temporary directory; no FUSE, no daemon).

Usage:  .venv/bin/python bench/append_cpu.py [--lines N] [--repeat R]
        [--no-events] [--no-compaction] [--read]   (the agentfs the venv imports)

Appends N single-line turns (alternating user/assistant) R times over fresh
stores and prints the median per-append CPU time (thread_time) of each run and of them all,
in microseconds. With --no-events / --no-compaction it stubs those out, to
see what each costs; with --read it also renders context.json (Contexts)
after each append, as a runner reading its context each turn does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agentfs.agents.context import Contexts
from agentfs.agents.model import Agents
from agentfs.posix.fs import FileSystem
from agentfs.storage.kv import LmdbEngine


def run(n: int, events: bool, compaction: bool, read: bool) -> float:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        engine = LmdbEngine(Path(d) / "store")
        try:
            agents = Agents(FileSystem(engine))
            if not compaction:  # (agents.compactions before the renderers were shared)
                if hasattr(agents, "renderers"):
                    agents.renderers.new_points = lambda *a, **k: ([], None)  # type: ignore
                else:
                    agents.compactions.new_points = lambda *a, **k: []  # type: ignore
            if not events:
                import agentfs.agents.events as ev
                ev.record_all = lambda t, evs: [0] * len(evs)  # type: ignore[assignment]
            agents.spawn(b"a")
            contexts = Contexts(agents)
            times = []
            for i in range(n):
                role = "user" if i % 2 == 0 else "assistant"
                data = json.dumps({"role": role, "content": f"turn {i} " + "x" * 200}).encode()
                t0 = time.thread_time_ns()
                agents.append_lines("a", [data])
                if read:
                    contexts.render(agents.get("a"))
                times.append(time.thread_time_ns() - t0)
            return statistics.median(times) / 1000
        finally:
            engine.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-events", action="store_true")
    ap.add_argument("--no-compaction", action="store_true")
    ap.add_argument("--read", action="store_true", help="and render context.json after each")
    args = ap.parse_args()
    runs = [run(args.lines, not args.no_events, not args.no_compaction, args.read)
            for _ in range(args.repeat)]
    print("per-append median CPU us:", " ".join(f"{r:.1f}" for r in runs),
          f"-> median {statistics.median(runs):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
