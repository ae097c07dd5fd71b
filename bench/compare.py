#!/usr/bin/env python3
"""Compare two checkouts of agentfs with their own benchmark scripts, in one run.

Usage:  python bench/compare.py --old DIR --new DIR [--rounds N] [--quick]
                                [--suite run|agents|both] [--scripts DIR] [--save FILE]

Each round runs every suite under the OLD checkout and then the NEW one, the
order swapped every other round so that drift in the machine's load cancels.
Each side runs with its own `.venv/bin/python` and its own `bench/run.py` or
`bench/agents.py` (results read from `--json`, or parsed from the printed table
when that script has no `--json`). A benchmark's figures are ratios against a
reference measured in the same run (tmpfs, depth 0, a pipe, ...), so the
comparison is of ratios: per metric, the median over the rounds of the old
ratios, of the new ones, and new/old. A metric that got worse by more than 15%
(new/old > 1.15 for a time, < 1/1.15 for a throughput) is flagged. The load
average is printed before every run. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# passthrough measures libfuse's example over tmpfs, the same code on both sides
RUN_ONLY = "small,listdir,seq,append,tree,chain,fork"
THRESHOLD = 1.15
# the printed table of bench/agents.py: group, metric, value unit, ref, ratio, note
AGENTS_ROW = re.compile(r"^  (\S+)\s+(.*?)\s{2,}(\S+) (\S+)\s+ref\s+(\S+)\s+(\S+)")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def number(text: str) -> float | None:
    return None if text == "-" else float(text.replace(",", ""))


def parse_agents_table(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.split("\nagentfs agent layer", 1)[-1].splitlines()[1:]:
        m = AGENTS_ROW.match(line)
        if m:
            group, metric, value, unit, ref, _ = m.groups()
            rows.append({"group": group, "metric": metric, "unit": unit,
                         "value": number(value), "ref": number(ref)})
    return rows


def run_suite(tree: Path, scripts: Path, suite: str, quick: bool, logdir: Path, tag: str
              ) -> list[dict]:
    """Rows {group, metric, unit, kind, ratio} of one run of scripts/`suite`.py under the
    Python (and so the agentfs) of checkout `tree`."""
    script = scripts / f"{suite}.py"
    out = logdir / f"{tag}.json"
    cmd = [str(tree / ".venv" / "bin" / "python"), str(script), *(["--quick"] if quick else [])]
    if suite == "run":
        cmd += ["--only", RUN_ONLY]
    has_json = "--json" in script.read_text()
    if has_json:
        cmd += ["--json", str(out)]
    with open(logdir / f"{tag}.log", "w") as log:
        res = subprocess.run(cmd, cwd=tree, stdout=subprocess.PIPE, stderr=log, text=True)
    (logdir / f"{tag}.out").write_text(res.stdout)
    if res.returncode != 0:
        print(f"    {tag}: exit {res.returncode}, see {logdir / tag}.log", flush=True)
    if has_json and out.exists():
        rows = json.loads(out.read_text())["rows"]
    else:
        rows = parse_agents_table(res.stdout)
    for r in rows:
        r.setdefault("kind", "rate" if r["unit"].endswith("/s") else "time")
        r["ratio"] = r["value"] / r["ref"] if r["value"] is not None and r["ref"] else None
    return [r for r in rows if r["ratio"] is not None]


def key(suite: str, row: dict) -> str:
    """A metric's name without its parenthesised sizes, which may differ between trees."""
    return f"{suite}/{row['group']}: " + re.sub(r"\s*\([^)]*\)", "", row["metric"])


def show(ratio: float | None, kind: str) -> str:
    if ratio is None:
        return "-"
    return f"{100 * ratio:.1f}%" if kind == "rate" else f"{ratio:.3g}x"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="checkout of the reference code")
    ap.add_argument("--new", type=Path, required=True, help="checkout of the code under test")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="pass --quick to the suites")
    ap.add_argument("--suite", choices=("run", "agents", "both"), default="both")
    ap.add_argument("--scripts", type=Path, metavar="DIR",
                    help="run DIR/run.py and DIR/agents.py on both sides, instead of each "
                    "checkout's own bench/ (one workload for both)")
    ap.add_argument("--save", type=Path, help="also write every run's ratios as JSON")
    args = ap.parse_args(argv)
    suites = ("run", "agents") if args.suite == "both" else (args.suite,)
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    logdir = Path(tempfile.mkdtemp(prefix="agentfs-compare-"))
    for side, tree in trees.items():
        rev = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                             capture_output=True, text=True).stdout.strip()
        print(f"{side}: {tree} at {rev[:90]}")
    if args.scripts:
        print(f"bench scripts of both sides: {args.scripts.resolve()}")
    print(f"logs in {logdir}", flush=True)

    # ratios[side][metric] = one ratio per round; kinds[metric] = "time" | "rate"
    ratios: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    kinds: dict[str, str] = {}
    loads: list[str] = []
    for rnd in range(1, args.rounds + 1):
        order = ("old", "new") if rnd % 2 else ("new", "old")
        for suite in suites:
            for side in order:
                load = loadavg()
                loads.append(f"round {rnd} {suite:<6} {side}: load {load}")
                print(f"round {rnd}/{args.rounds}: {suite} on {side} (load {load})", flush=True)
                t = time.monotonic()
                scripts = args.scripts.resolve() if args.scripts else trees[side] / "bench"
                tag = f"{rnd}-{suite}-{side}"
                for r in run_suite(trees[side], scripts, suite, args.quick, logdir, tag):
                    k = key(suite, r)
                    kinds[k] = r["kind"]
                    ratios[side].setdefault(k, []).append(r["ratio"])
                print(f"    took {time.monotonic() - t:.0f} s", flush=True)

    print("\nLoad average (1, 5, 15 min) before each run:\n  " + "\n  ".join(loads))
    print(f"\nMedian over {args.rounds} rounds of each ratio (times: Nx the reference, higher is "
          "worse;\nthroughputs: % of the reference, higher is better). new/old is of the "
          f"ratios; '<<' marks\na metric more than {100 * (THRESHOLD - 1):.0f}% worse in the new "
          "code.\n")
    width = max(len(k) for k in kinds)
    print(f"  {'metric':<{width}}  {'old':>9}  {'new':>9}  {'new/old':>7}")
    flagged = []
    for k, kind in kinds.items():
        old = statistics.median(ratios["old"][k]) if k in ratios["old"] else None
        new = statistics.median(ratios["new"][k]) if k in ratios["new"] else None
        rel = new / old if old and new is not None else None
        worse = rel is not None and (rel > THRESHOLD if kind == "time" else rel < 1 / THRESHOLD)
        if worse:
            flagged.append(k)
        print(f"  {k:<{width}}  {show(old, kind):>9}  {show(new, kind):>9}  "
              f"{'-' if rel is None else f'{rel:.2f}':>7}{'  <<' if worse else ''}")
    print(f"\n{len(flagged)} possible regression(s)" + (": " + "; ".join(flagged) if flagged
                                                      else ""))
    if args.save:
        args.save.write_text(json.dumps({"trees": {s: str(t) for s, t in trees.items()},
                                         "quick": args.quick, "loads": loads, "kinds": kinds,
                                         "ratios": ratios}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
