"""Crash consistency of agent operations: SIGKILL the daemon mid-loop, remount, verify.

Each round starts a worker subprocess (agent_model.crash_worker) that loops
over spawn, transcript appends (1-3 lines, some of them bulky, in one
write), workspace writes (fsync'ed), message delivery (a message written in
several pieces, then closed), consuming a message, fork now, fork at turn N
and remove, all through paths (mkdir, `>>`, the agents' `ctl`). It journals
every operation outside the mount before it starts and after it returned.
The test SIGKILLs the daemon after a random 0.05-0.6 s, kills the worker,
remounts and checks, for every agent the journal knows:

- each operation happened whole or not at all: the agent is in its last
  journaled state, or (for the one operation in flight) in one of its
  alternatives: absent or a full agent for spawn and fork (the whole
  transcript, files and messages of its source, now or at turn N); fully
  there or fully gone for remove; a message delivered with its full content
  or absent; all lines of one transcript write or none;
- every agent listed has its whole skeleton, `status` says turns == the
  number of transcript lines, the transcript is whole valid lines, its inbox
  lists only SEQ-SENDER+NAME messages (never a `.in-` staging file);
- `.agentfs/lineage` names exactly the agents `ls agents` lists;
- agents settled in earlier rounds did not change; `agentfs fsck` is clean;
- no operation was refused (every one the worker tries is valid): a refused
  one must change nothing, the worker goes on, and the test lists them all
  at the end, so that a refusal does not hide the crash checks.

AGENTFS_AGENT_CRASH_ROUNDS (default 24) rounds, one SIGKILL each;
AGENTFS_AGENT_CRASH_SEED (default fixed, "random" for a fresh one). Timing
varies, so a seed replays the workloads and sleeps, not the kill points.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_model import MESSAGE_RE, SKELETON, agent_state, lineage, read_bytes, read_tree
from test_crash import read_journal  # the same journal format rules (a torn last line)

ROUNDS = int(os.environ.get("AGENTFS_AGENT_CRASH_ROUNDS", "24"))
DEFAULT_SEED = 7_2025
HERE = Path(__file__).resolve().parent
WORKER = ("import sys; sys.path.insert(0, sys.argv[1]); from agent_model import crash_worker; "
          "crash_worker(*sys.argv[2:])")


def actual_state(mnt: Path, name: str) -> dict | str:
    d = mnt / "agents" / name
    if not os.path.lexists(d):
        return "absent"
    transcript = read_bytes(d / "transcript")
    files, _ = read_tree(d / "workspace")
    inbox = []
    for n in sorted(os.listdir(d / "inbox")):
        m = MESSAGE_RE.match(n)
        inbox.append((m.group(3) if m else f"<unparsed {n}>", read_bytes(d / "inbox" / n)))
    lines = transcript.splitlines(keepends=True)
    return agent_state(lines, files, inbox)


def matches(got: dict | str, want: dict | str) -> bool:
    if isinstance(got, str) or isinstance(want, str):
        return got == want
    files_ok = set(got["files"]) <= set(want["files"]) and all(
        v == "*" or got["files"].get(k) == v for k, v in want["files"].items()
        if v != "*" or k in got["files"])
    return files_ok and {k: v for k, v in got.items() if k != "files"} == {
        k: v for k, v in want.items() if k != "files"}


def structural_problems(mnt: Path) -> list[str]:
    """What must hold of every agent whatever happened: skeleton, turns, lines, inbox."""
    problems = []
    listed = sorted(os.listdir(mnt / "agents"))
    registered = sorted(lineage(mnt))
    if listed != registered:
        problems.append(f"ls agents {listed} but .agentfs/lineage names {registered}")
    for name in listed:
        d = mnt / "agents" / name
        entries = set(os.listdir(d))
        if entries != SKELETON:
            problems.append(f"agents/{name} lists {sorted(entries)}: missing "
                            f"{sorted(SKELETON - entries)}, extra {sorted(entries - SKELETON)}")
            continue
        data = read_bytes(d / "transcript")
        if data and not data.endswith(b"\n"):
            problems.append(f"agents/{name}/transcript ends in a partial line")
        lines = data.splitlines()
        for i, line in enumerate(lines):
            try:
                json.loads(line)
            except ValueError:
                problems.append(f"agents/{name}/transcript line {i + 1} is not JSON: "
                                f"{line[:80]!r}")
        status = read_bytes(d / "status").decode()
        if not status.endswith(f" turns={len(lines)}\n"):
            problems.append(f"agents/{name}/status {status!r} but the transcript has "
                            f"{len(lines)} lines")
        for n in os.listdir(d / "inbox"):
            if not MESSAGE_RE.match(n):
                problems.append(f"agents/{name}/inbox lists {n!r}, not a delivered message")
    return problems


def verify_round(mnt: Path, journal: Path, refused: list[str]
                 ) -> tuple[list[str], dict[str, dict | str]]:
    records = read_journal(journal)
    known: dict[str, dict | str] = {}
    pending: dict | None = None
    for rec in records:
        if rec["t"] == "begin":
            assert pending is None, f"two operations in flight: {pending} {rec}"
            pending = rec
        elif rec["t"] == "failed":  # (it may fail before its begin record)
            op = pending["op"] if pending and pending["seq"] == rec["seq"] else rec["op"]
            refused.append(f"{op}: {rec['errno']} ({rec['error']})")
            pending = None
        else:
            assert pending is not None and rec["seq"] == pending["seq"], rec
            known.update(rec["state"])
            pending = None
    problems = []
    names = set(known) | (set(pending["alts"]) if pending else set())
    states = {}
    for name in sorted(names):
        got = actual_state(mnt, name)
        states[name] = got
        if pending and name in pending["alts"]:
            if not any(matches(got, alt) for alt in pending["alts"][name]):
                problems.append(f"in flight: {pending['op']!r} left agents/{name} as "
                                f"{_short(got)}; expected one of {_short(pending['alts'][name])}")
        elif got != known[name]:
            problems.append(f"agents/{name}: expected {_short(known[name])}, found {_short(got)}")
    if problems:
        tail = "\n    ".join(json.dumps(r)[:300] for r in records[-5:])
        problems.append(f"({len(records)} journal records; last ones:\n    {tail})")
    return problems, states


def _short(x) -> str:
    text = json.dumps(x, sort_keys=True)
    return text if len(text) < 500 else text[:500] + "..."


@pytest.mark.agentfs_only
@pytest.mark.slow
def test_sigkill_during_agent_operations(mount, tmp_path: Path) -> None:
    env_seed = os.environ.get("AGENTFS_AGENT_CRASH_SEED", str(DEFAULT_SEED))
    seed = random.randrange(2**32) if env_seed == "random" else int(env_seed)
    print(f"AGENTFS_AGENT_CRASH_SEED={seed}")
    rng = random.Random(seed)
    mnt = mount.path
    assert (mnt / "agents").is_dir()  # every mount has it
    settled: dict[str, dict | str] = {}
    stats = {"records": 0, "in_flight": 0}
    ops_in_flight: list[str] = []
    refused: list[str] = []  # valid operations the daemon refused (checked at the end)
    t0 = time.monotonic()
    for rnd in range(ROUNDS):
        where = f"seed {seed}, round {rnd}"
        journal = tmp_path / f"journal{rnd:03}.jsonl"
        errlog = tmp_path / f"worker{rnd:03}.err"
        with open(errlog, "wb") as err, subprocess.Popen(
            [sys.executable, "-c", WORKER, str(HERE), str(mnt), f"r{rnd}-", str(journal),
             str(rng.randrange(2**32))], stdout=subprocess.PIPE, stderr=err,
        ) as proc:
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline() == b"ready\n", errlog.read_text()
                time.sleep(rng.uniform(0.05, 0.6))
                early_exit = proc.poll()
                # The daemon first, then the worker, and only then clear the dead
                # mount: after `fusermount3 -u -z` the worker's paths would reach
                # the empty directory below (ENOENT, not ENOTCONN).
                assert mount.proc is not None
                mount.proc.kill()
                mount.proc.wait()
            finally:
                proc.kill()
                proc.wait()
            mount.kill()  # (the daemon is dead already: this clears the mount)
        assert early_exit is None, (
            f"{where}: the worker failed before the crash (exit {early_exit}):\n"
            f"{errlog.read_text()[-3000:]}")
        mount.start()
        mount.fsck()
        problems, states = verify_round(mnt, journal, refused)
        problems += structural_problems(mnt)
        assert not problems, f"{where}: after SIGKILL + remount:\n  " + "\n  ".join(problems)
        for name, want in settled.items():
            got = actual_state(mnt, name)
            assert got == want, (f"{where}: agents/{name} (verified in an earlier round) "
                                 f"changed: {_short(want)} -> {_short(got)}")
        settled.update(states)
        records = read_journal(journal)
        stats["records"] += len(records)
        if records and records[-1]["t"] == "begin":
            stats["in_flight"] += 1
            ops_in_flight.append(records[-1]["op"].split()[0])
    assert not refused, (f"seed {seed}: {len(refused)} valid operations were refused "
                         "(each changed nothing):\n  " + "\n  ".join(refused[:20]))
    assert stats["records"] > ROUNDS * 4, f"seed {seed}: the workers did almost nothing: {stats}"
    print(f"agent crash test seed {seed}: {ROUNDS} kills, {stats['records']} journal records, "
          f"{stats['in_flight']} mid-operation ({sorted(ops_in_flight)}), "
          f"{time.monotonic() - t0:.1f}s")
