#!/usr/bin/env python3
"""A scripted 50-turn coding session through `agentfs run`, measured on the
fake Messages API's prompt-cache simulator, beside a naive harness.

Usage:  /work/venv/bin/python bench/runner_session.py [--keep] [--store-dir DIR] [--json FILE]

(about a minute on 2 cores). What it does:

1. Mounts a fresh agentfs (store in a temporary directory under /var/tmp,
   `FuseMount` from bench/run.py), spawns agent `coder` with a coding task
   and seeds its workspace with a small project and 14 build logs and
   traces of 10 to 200 KB.
2. Starts `agentfs.client.fake_messages_api` on loopback with a scripted
   model: 50 requests of `coder` (reads, writes, edits, small shell
   commands, 14 bulky outputs read with bash or read, notes/todo.md kept
   with the memory tool, a restore_observation of a compacted output) and,
   at requests 20 and 40, one turn forking five agents each ("try approach
   N"); every fork runs two requests. Then runs the real runner,
   `agentfs run MNT/agents/coder`, which starts the forks' runners itself
   (first fork alone, to warm the cache). The daemon's default context
   policy applies (budget 150,000 tokens, observations from 4 KB).
3. Reads the simulator's usage of every request and prints: the share of
   prompt tokens read from the cache over the whole session (all agents),
   each fork's first-request cache share, the peak context size, how many
   times compaction rewrote the prefix, and whether every stubbed
   observation (every stub in any request sent) restores byte for byte from
   `agents/NAME/observations/ID`, checked against the transcript and against
   the workspace file it came from.
4. Replays the same session (same transcripts, request by request, forks
   included) through a naive request builder (`Naive` below: the current
   time in the system prompt, no cache_control anywhere, and compaction by
   summarising: when a request would exceed the same budget, one extra
   request asks for a summary and the history before the recent turns is
   replaced by it) and runs those bodies through the same cache simulator.

Targets (issue 4): >= 90% cache-read share overall, >= 95% for the forks'
first requests, context under budget, every compressed observation
restorable. Exit status 1 if one is missed. Token counts are the
simulator's estimate (ceil(canonical JSON bytes / 4) per block), costs use
agentfs.client.runner.PRICES for claude-sonnet-4-6.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentfs.client import Agent, Mount
from agentfs.client.fake_messages_api import (
    FakeMessagesAPI,
    PromptCache,
    RecordedRequest,
    Script,
    count_prompt_tokens,
    estimate_tokens,
    reply,
    text,
    tool_use,
    tool_use_block,
)
from agentfs.client.runner import PRICES, Usage, price

from agentfs.agents.render import Policy, is_extension

MODEL = "claude-sonnet-4-6"
TURNS = 50
BULKY_KB = [10, 200, 25, 120, 50, 15, 180, 60, 30, 100, 40, 150, 20, 80]
BULKY_TURNS = [3, 5, 8, 11, 14, 17, 22, 25, 28, 31, 34, 37, 43, 47]
FORK_TURNS = {20: range(1, 6), 40: range(6, 11)}
RESTORE_TURN = 45
RESTORED = 3  # the request whose output restore_observation brings back
FORK_RE = re.compile(r"You are agent (fork-\d\d), forked from coder")
STUB_RE = re.compile(r"\[observation (turn-\d{5}-[A-Za-z0-9_-]+): (\d+) bytes, stored at "
                     r"\./observations/")
HERE = Path(__file__).resolve().parent
T0 = time.monotonic()

TASK = """\
The service in this workspace (src/) fails its nightly build. The build logs and traces \
of the last runs are in data/. Find the cause, fix the modules involved, keep the notes \
in /memories/todo.md current, and try the competing fixes in parallel with forks before \
settling on one. Report what you changed at the end.
""" + "\n".join(f"- Constraint {i}: keep module interfaces stable; module {i} is imported "
                f"by {i + 3} others and its VALUE constant is read at start-up."
                for i in range(1, 25)) + "\n"


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def load_bench_run() -> Any:
    """bench/run.py as a module (for FuseMount)."""
    spec = importlib.util.spec_from_file_location("agentfs_bench_run", HERE / "run.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- the session


def bulky_name(k: int) -> str:
    return f"data/{k:02d}-{'trace' if BULKY_KB[k] >= 100 else 'build'}.log"


def bulky_text(k: int) -> str:
    """Deterministic log lines, exactly BULKY_KB[k] KiB."""
    rng = random.Random(k)
    size = BULKY_KB[k] * 1024
    lines, n = [], 0
    i = 0
    while n < size:
        mod = rng.randrange(40)
        line = (f"2026-03-{1 + k:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} "
                f"{rng.choice(['INFO', 'INFO', 'INFO', 'WARN', 'DEBUG', 'ERROR'])} "
                f"mod_{mod:02d} step={rng.randrange(10**6)} latency_ms={rng.random() * 90:.3f} "
                f"cache={'hit' if rng.random() < 0.8 else 'miss'} id={rng.getrandbits(48):012x}\n")
        lines.append(line)
        n += len(line)
        i += 1
    data = "".join(lines)[:size - 1] + "\n"
    return data


def module_source(t: int) -> str:
    body = "\n".join(f"def handler_{j}(event):\n    return event.get('k{j}', VALUE) + {j}\n"
                     for j in range(12))
    return f'"""Module {t}."""\n\nVALUE = 0\n\n{body}\n\nif __name__ == "__main__":\n' \
           f"    print('module {t} ok', VALUE)\n"


def obs_id(t: int) -> str:
    """The observation a single-call request t's result becomes (results are line 2t)."""
    return f"turn-{2 * t:05d}-toolu_coder_{t:02d}"


def coder_script() -> list[Any]:
    specs: list[Any] = []
    written: list[int] = []
    edited: set[int] = set()
    todo_done = 0
    for t in range(1, TURNS + 1):
        tid = f"toolu_coder_{t:02d}"
        if t == TURNS:
            specs.append(text("Fixed: the retry budget in the modules was read before start-up "
                              "finished; VALUE constants now set per module, forks compared, "
                              "approach 7 kept. Notes are in /memories/todo.md."))
        elif t in BULKY_TURNS:
            k = BULKY_TURNS.index(t)
            if BULKY_KB[k] < 100:
                specs.append(tool_use("bash", {"command": f"cat {bulky_name(k)}"}, tid,
                                      text="Looking at the next log."))
            else:
                specs.append(tool_use("read", {"file_path": bulky_name(k)}, tid,
                                      text="Reading the trace."))
        elif t in FORK_TURNS:
            specs.append(reply("Trying the candidate fixes in parallel.", *(
                tool_use_block("fork", {"name": f"fork-{i:02d}", "message":
                                        f"Try approach {i}: change the start-up order of "
                                        f"module {i}; run it; report in one line."},
                               f"{tid}_{i:02d}") for i in FORK_TURNS[t])))
        elif t == RESTORE_TURN:
            specs.append(tool_use("restore_observation", {"id": obs_id(RESTORED)}, tid,
                                  text="Back to the first build log."))
        elif t == 1:
            specs.append(tool_use("read", {"file_path": "README.md"}, tid))
        elif t == 2:
            todo = "".join(f"- [ ] step {k}: check module group {k}\n" for k in range(1, 9))
            specs.append(tool_use("memory", {"command": "create", "path": "/memories/todo.md",
                                             "file_text": todo}, tid))
        elif t % 6 == 0 and todo_done < 8:
            todo_done += 1
            specs.append(tool_use("memory", {
                "command": "str_replace", "path": "/memories/todo.md",
                "old_str": f"- [ ] step {todo_done}:", "new_str": f"- [x] step {todo_done}:"},
                tid))
        elif t % 4 == 0 or not written:
            written.append(t)
            specs.append(tool_use("write", {"file_path": f"src/mod_{t:02d}.py",
                                            "content": module_source(t)}, tid))
        elif t % 4 == 1 and [w for w in written if w not in edited]:
            w = [w for w in written if w not in edited][0]
            edited.add(w)
            specs.append(tool_use("edit", {"file_path": f"src/mod_{w:02d}.py",
                                           "old_string": "VALUE = 0",
                                           "new_string": f"VALUE = {t}"}, tid))
        else:
            specs.append(tool_use("bash", {"command": f"python3 src/mod_{written[-1]:02d}.py"
                                                      " && ls src | wc -l"}, tid))
    assert len(specs) == TURNS
    return specs


def fork_script(name: str) -> Script:
    return Script([tool_use("bash", {"command": "python3 -c 'print(sum(range(10)))'"},
                            f"toolu_{name.replace('-', '_')}_1"),
                   text(f"{name}: approach evaluated, start-up order fixed, 2 tests still "
                        "fail")])


def agent_of(body: dict[str, Any]) -> str:
    """Which agent a request is from: a fork carries its instruction in its history."""
    found = "coder"
    for m in body.get("messages", []):
        if m.get("role") != "user" or not isinstance(m.get("content"), list):
            continue
        for b in m["content"]:
            if b.get("type") == "text":
                hit = FORK_RE.search(b.get("text", ""))
                if hit:
                    found = hit.group(1)
    return found


# ---------------------------------------------------------------- the naive baseline


SUMMARY = ("Summary of the conversation so far: the build logs were read and compared; "
           "several modules set VALUE before start-up finished; edits made so far are in "
           "src/. ") * 40  # what a summarising harness keeps (about 1,500 tokens)


@dataclass
class Naive:
    """A request builder without agentfs: the current time in the system prompt,
    no cache breakpoints, and compaction by summary (one extra request that
    reads the whole context; the older history, observations included, is
    replaced by the summary and lost)."""

    system: str
    tools: list[dict[str, Any]]
    prompt: str
    budget: int
    cut: int = 0  # transcript lines before this one are summarised
    summary: str | None = None
    summaries: int = 0

    def _body(self, lines: list[dict[str, Any]], now: str) -> dict[str, Any]:
        first: list[dict[str, Any]] = [{"type": "text", "text": self.prompt}]
        if self.summary:
            first.append({"type": "text", "text": self.summary})
        messages = [{"role": "user", "content": first}]
        for line in lines[self.cut:]:
            content = line["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) \
                else [dict(b) for b in content]
            if messages[-1]["role"] == line["role"]:
                messages[-1]["content"] = [*messages[-1]["content"], *blocks]
            else:
                messages.append({"role": line["role"], "content": blocks})
        return {"model": MODEL, "max_tokens": 8192,
                "system": f"{self.system}\n\nCurrent date and time: {now}",
                "tools": self.tools, "messages": messages}

    def requests(self, lines: list[dict[str, Any]], now: str) -> list[tuple[str, dict]]:
        """The bodies this harness sends for one turn: maybe a summary request, then the turn."""
        out: list[tuple[str, dict]] = []
        body = self._body(lines, now)
        if count_prompt_tokens(body) > self.budget:
            last = body["messages"][-1]
            ask = dict(body, messages=[*body["messages"][:-1], {
                "role": last["role"], "content": [
                    *last["content"],
                    {"type": "text", "text": "Summarise the conversation so far."}]}])
            out.append(("summary", ask))
            self.summary, self.summaries = SUMMARY, self.summaries + 1
            # Keep the longest recent history (from an assistant line, so that every
            # tool result still follows its call) that fits in 60% of the budget.
            starts = [c for c in range(self.cut, len(lines)) if lines[c]["role"] == "assistant"]
            for c in starts:
                self.cut = c
                if count_prompt_tokens(self._body(lines, now)) <= 0.6 * self.budget:
                    break
            body = self._body(lines, now)
        out.append(("turn", body))
        return out


# ---------------------------------------------------------------- measuring


@dataclass
class Tally:
    requests: int = 0
    input: int = 0
    write: int = 0
    read: int = 0
    output: int = 0
    peak: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, u: Any, output: int | None = None, peak: bool = True) -> None:
        self.requests += 1
        self.input += u.input_tokens
        self.write += u.cache_creation_input_tokens
        self.read += u.cache_read_input_tokens
        self.output += u.output_tokens if output is None else output
        size = u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens
        if peak:
            self.peak = max(self.peak, size)
        else:
            self.extra["summary_peak"] = max(self.extra.get("summary_peak", 0), size)

    @property
    def prompt(self) -> int:
        return self.input + self.write + self.read

    @property
    def share(self) -> float:
        return self.read / self.prompt if self.prompt else 0.0

    def cost(self) -> float:
        p_in, p_out = price(MODEL)
        return (self.input * p_in + self.write * p_in * 1.25 + self.read * p_in * 0.1
                + self.output * p_out) / 1e6


def share(u: Any) -> float:
    total = u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens
    return u.cache_read_input_tokens / total if total else 0.0


def sent(r: RecordedRequest) -> dict[str, Any]:
    return {k: v for k, v in r.body.items() if k in ("system", "tools", "messages")}


def tool_result_texts(agent: Agent) -> dict[tuple[int, str], str]:
    """(turn, tool_use_id) -> the text of that tool_result in the transcript."""
    out = {}
    for turn, line in enumerate(agent.transcript(), 1):
        if line["role"] != "user" or not isinstance(line["content"], list):
            continue
        for b in line["content"]:
            if b.get("type") == "tool_result":
                c = b.get("content", "")
                out[(turn, b["tool_use_id"])] = c if isinstance(c, str) else "".join(
                    x.get("text", "") for x in c if x.get("type") == "text")
    return out


def check_restorable(m: Mount, reqs: list[RecordedRequest], seeded: dict[str, bytes]
                     ) -> tuple[int, int, list[str]]:
    """Every stub in every request sent: its file equals the original output."""
    stubs: set[tuple[str, str, int]] = set()
    for r in reqs:
        who = agent_of(r.body)
        for hit in STUB_RE.finditer(json.dumps(r.body, ensure_ascii=False)):
            stubs.add((who, hit.group(1), int(hit.group(2))))
    results: dict[str, dict[tuple[int, str], str]] = {}
    calls: dict[str, dict[str, dict[str, Any]]] = {}
    bad = []
    for who, oid, size in sorted(stubs):
        agent = m.agent(who)
        if who not in results:
            results[who] = tool_result_texts(agent)
            calls[who] = {b["id"]: b for line in agent.transcript()
                          if line["role"] == "assistant" and isinstance(line["content"], list)
                          for b in line["content"] if b.get("type") == "tool_use"}
        data = (agent.path / "observations" / oid).read_bytes()
        turn, tid = int(oid[5:10]), oid[11:]
        original = results[who].get((turn, tid))
        ok = original is not None and data == original.encode() and len(data) == size
        call = calls[who].get(tid, {})
        path = (call.get("input") or {}).get("file_path") or \
            ((call.get("input") or {}).get("command") or "").removeprefix("cat ")
        if ok and path in seeded:  # and what it came from, byte for byte
            ok = seeded[path].rstrip(b"\n") == data.rstrip(b"\n")
        if not ok:
            bad.append(f"{who}/{oid}")
    return len(stubs) - len(bad), len(stubs), bad


def replay_naive(m: Mount, system: str, tools: list[dict[str, Any]], budget: int,
                 reqs_by_agent: dict[str, list[RecordedRequest]]) -> Tally:
    """The same session, request by request, as the naive harness would send it
    (each turn's reply as long as agentfs's was; a summary costs its tokens)."""
    cache = PromptCache()
    tally = Tally()
    firsts: dict[str, float] = {}
    start = time.time()
    summary_tokens = estimate_tokens({"type": "text", "text": SUMMARY})
    states: dict[int, tuple[int, str | None]] = {}
    summaries = 0
    for who in ["coder", *sorted(w for w in reqs_by_agent if w != "coder")]:
        lines = m.agent(who).transcript()
        if who == "coder":
            point, naive = 0, Naive(system, tools, TASK, budget)
        else:  # a fork starts from its origin's (summarised) history, as copied then
            point = next(i for i, line in enumerate(lines) if line["role"] == "user"
                         and FORK_RE.search(json.dumps(line)))
            cut, summary = states[point]
            naive = Naive(system, tools, TASK, budget, cut, summary)
        for n, r in enumerate(reqs_by_agent[who]):
            upto = (0 if who == "coder" else point + 1) + 2 * n
            if who == "coder":
                states[upto] = (naive.cut, naive.summary)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + r.time))
            for kind, body in naive.requests(lines[:upto], now):
                u = cache.process(body)
                assert r.usage is not None
                if kind == "summary":  # reads the whole over-budget context
                    tally.add(u, summary_tokens, peak=False)
                else:
                    tally.add(u, r.usage.output_tokens)
                if n == 0 and kind == "turn" and who != "coder":
                    firsts[who] = share(u)
        summaries += naive.summaries
    tally.extra.update(summaries=summaries, fork_first=firsts)
    return tally


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store-dir", default="/var/tmp", help="parent of the temporary store")
    ap.add_argument("--keep", action="store_true", help="keep the store and mountpoint")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    bench = load_bench_run()
    base = Path(tempfile.mkdtemp(prefix="agentfs-runner-bench-", dir=args.store_dir))
    mnt = base / "mnt"
    fuse = bench.FuseMount("agentfs", [*bench.agentfs_cmd(), "mount", str(mnt), "--store",
                                       str(base / "store"), "--foreground"],
                           mnt, base / "daemon.log")
    fuse.start()
    try:
        return session(args, Mount(mnt), base)
    finally:
        fuse.stop()
        if args.keep:
            log(f"kept {base}")
        elif not bench.is_mountpoint(mnt):
            shutil.rmtree(base, ignore_errors=True)


def session(args: argparse.Namespace, m: Mount, base: Path) -> int:
    coder = m.spawn("coder", prompt=TASK)
    ws = coder.path / "workspace"
    seeded: dict[str, bytes] = {}
    (ws / "data").mkdir()
    (ws / "src").mkdir()
    readme = "# nightly service\n\n" + "".join(
        f"Module group {k} handles events of kind {k}; see src/.\n" for k in range(1, 40))
    (ws / "README.md").write_text(readme)
    for k in range(len(BULKY_KB)):
        data = bulky_text(k).encode()
        (ws / bulky_name(k)).write_bytes(data)
        seeded[bulky_name(k)] = data
    policy = Policy()
    log(f"seeded agents/coder: {sum(BULKY_KB)} KB of logs and traces in "
        f"{len(BULKY_KB)} files; context budget {policy.budget_tokens} tokens")

    coder_replies = Script(coder_script())
    forks = {f"fork-{i:02d}": fork_script(f"fork-{i:02d}") for i in range(1, 11)}

    def respond(body: dict[str, Any]) -> Any:
        who = agent_of(body)
        return coder_replies(body) if who == "coder" else forks[who](body)

    with FakeMessagesAPI(respond) as api:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AGENTFS_", "ANTHROPIC_"))}
        env.update(api.env())
        cmd = [sys.executable, "-m", "agentfs.cli", "run", str(coder.path), "--model", MODEL,
               "--max-turns", str(TURNS + 10)]
        log("running: " + " ".join(cmd[1:]))
        t = time.monotonic()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        wall = time.monotonic() - t
        (base / "coder-run.log").write_text(res.stderr)
        if res.returncode != 0:
            print(res.stdout, res.stderr, sep="\n")
            raise SystemExit(f"agentfs run failed ({res.returncode})")
        log(f"session done in {wall:.1f} s: {res.stdout.strip()}")
        if api.responder_errors:
            raise SystemExit(f"scripted model errors: {api.responder_errors}")
        reqs = [r for r in api.messages_requests() if r.status == 200]

    by_agent: dict[str, list[RecordedRequest]] = {}
    for r in reqs:
        by_agent.setdefault(agent_of(r.body), []).append(r)
    assert len(by_agent["coder"]) == TURNS, len(by_agent["coder"])
    assert len(by_agent) == 11, sorted(by_agent)
    for name in by_agent:
        st = m.agent(name).status()
        assert st[0] == "done", (name, st)

    agentfs = Tally()
    for r in reqs:
        agentfs.add(r.usage)
    firsts = {who: share(rs[0].usage) for who, rs in by_agent.items() if who != "coder"}
    parent = by_agent["coder"]
    rewrites = [i + 1 for i in range(1, len(parent))
                if not is_extension(sent(parent[i - 1]), sent(parent[i]))]
    restorable, stubbed, bad = check_restorable(m, reqs, seeded)
    cost_files = sum(Usage.parse((m.agents_dir / n / "usage").read_text()).cost_usd
                     for n in by_agent)
    system = (coder.path / "system").read_text()
    tools = json.loads((coder.path / "tools.json").read_text())
    naive = replay_naive(m, system, tools, policy.budget_tokens, by_agent)
    observations = len(os.listdir(coder.path / "observations"))

    # ------------------------------------------------------------ report
    p_in, p_out = price(MODEL)
    print(f"\nagentfs run: a {TURNS}-request coding session of `coder` with "
          f"{len(BULKY_KB)} bulky outputs ({min(BULKY_KB)}-{max(BULKY_KB)} KB, "
          f"{sum(BULKY_KB)} KB in all) and 10 forks (2 requests each), against the "
          f"prompt-cache simulator; {MODEL} at ${p_in:g}/${p_out:g} per MTok; wall {wall:.0f} s")
    rows = [
        ("requests", f"{agentfs.requests}", f"{naive.requests} ({naive.extra['summaries']} "
                                            "summaries)"),
        ("prompt tokens", f"{agentfs.prompt:,}", f"{naive.prompt:,}"),
        ("  read from cache", f"{agentfs.read:,}", f"{naive.read:,}"),
        ("  written to cache", f"{agentfs.write:,}", f"{naive.write:,}"),
        ("  uncached input", f"{agentfs.input:,}", f"{naive.input:,}"),
        ("cache-read share, whole session", f"{agentfs.share:.1%}", f"{naive.share:.1%}"),
        ("fork first requests, cache share",
         f"{min(firsts.values()):.1%} - {max(firsts.values()):.1%}",
         f"{min(naive.extra['fork_first'].values()):.1%} - "
         f"{max(naive.extra['fork_first'].values()):.1%}"),
        ("peak context (tokens)", f"{agentfs.peak:,}",
         f"{naive.peak:,} (summary requests: {naive.extra.get('summary_peak', 0):,})"),
        ("context budget (tokens)", f"{policy.budget_tokens:,}", f"{policy.budget_tokens:,}"),
        ("compactions (prefix rewritten)", f"{len(rewrites)} (requests "
                                           f"{', '.join(map(str, rewrites))})",
         f"{naive.extra['summaries']} summaries"),
        ("observations restorable", f"{restorable}/{stubbed} stubs byte for byte "
                                    f"({observations} observation files)",
         "none: summarised away"),
        ("estimated cost (USD)", f"{agentfs.cost():.2f} (usage files: {cost_files:.2f})",
         f"{naive.cost():.2f}"),
    ]
    w = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"  {'':<{w}}  {'agentfs':<{w1}}  naive baseline")
    for label, a, b in rows:
        print(f"  {label:<{w}}  {a:<{w1}}  {b}")
    print("  fork first-request cache shares: " + ", ".join(
        f"{who} {v:.1%}" for who, v in sorted(firsts.items())))
    targets = [
        ("cache-read share >= 90%", agentfs.share >= 0.90),
        ("every fork's first request >= 95%", min(firsts.values()) >= 0.95),
        ("context under budget", agentfs.peak <= policy.budget_tokens),
        ("every compressed observation restorable", stubbed > 0 and not bad),
    ]
    print("targets: " + "; ".join(f"{name}: {'PASS' if good else 'FAIL'}"
                                  for name, good in targets))
    if bad:
        print("not restorable: " + ", ".join(bad))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "agentfs": {"requests": agentfs.requests, "prompt": agentfs.prompt,
                        "read": agentfs.read, "write": agentfs.write, "input": agentfs.input,
                        "share": agentfs.share, "peak": agentfs.peak, "cost": agentfs.cost(),
                        "fork_first_share": firsts, "rewrites": rewrites,
                        "restorable": [restorable, stubbed]},
            "naive": {"requests": naive.requests, "prompt": naive.prompt, "read": naive.read,
                      "share": naive.share, "peak": naive.peak, "cost": naive.cost(),
                      "summaries": naive.extra["summaries"]},
            "prices": [list(p) for p in PRICES if MODEL.startswith(p[0])],
            "wall_seconds": wall}, indent=2) + "\n")
    return 0 if all(good for _, good in targets) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
