"""A plain-Python model of the agent namespace, and the path-only probes that
read an agent back from a mount (shared by test_agent_model.py and
test_agent_crash.py).

The model follows the intended semantics (issue 7, spec-agent-layer.md), not
whatever the daemon does today:

- an agent is: turns (transcript lines, each ending in a newline), workspace
  files and directories, inbox messages (NAME, content) in arrival order,
  prompt, status, origin (kind, origin name, shared prefix turns), named
  snapshots, and its history: the (workspace, inbox) it had at the end of
  every turn, which fork-at-N and `.snapshots/turn-N` show;
- one `write()` to a transcript is all or nothing: every complete line valid
  (the tool_result blocks of a user line answer exactly the tool_use ids of
  the assistant line just before) -> all appended, else EINVAL and none;
- a fork (now or at turn N, from either door) is a full agent with its own
  copy of the history it shares: removing its origin takes nothing away;
- remove (three doors) frees the name.

Nothing here talks to agentfs except through paths (open/read/write/listdir).
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MESSAGE_RE = re.compile(r"^(\d{6,})-([A-Za-z0-9._-]+)\+(.*)$", re.S)
STATUSES = ("idle", "running", "waiting", "done", "failed")
SKELETON_FILES = {"prompt", "system", "tools.json", "transcript", "config"}
SKELETON_DIRS = {"notes", "workspace", "inbox"}
VIRTUAL = {"ctl", "errstr", "status", "parent", "children", "context.json", "observations"}
SKELETON = SKELETON_FILES | SKELETON_DIRS | VIRTUAL
CONFIG_KEYS = ("budget_tokens", "observation_threshold_bytes", "keep_recent_turns",
               "excerpt_chars", "compact_to_fraction", "bytes_per_token")


def errname(code: int | None) -> str:
    return errno.errorcode.get(code, str(code)) if code is not None else "ok"


# ------------------------------------------------------------------ lines


def line_bytes(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def make_line(kind: str, arg: str) -> bytes:
    """One transcript line (with its newline) of a given kind.

    valid kinds: user, assistant, tool_use (assistant line with tool_use id
    ARG), tool_result (user line answering id ARG: valid only right after an
    assistant line holding that id); invalid kinds: bad_json, bad_role,
    empty_content, bad_key."""
    if kind == "user":
        return line_bytes({"role": "user", "content": f"u {arg}"})
    if kind == "assistant":
        return line_bytes({"role": "assistant", "content": f"a {arg}"})
    if kind == "tool_use":
        return line_bytes({"role": "assistant", "content": [
            {"type": "text", "text": "calling"},
            {"type": "tool_use", "id": arg, "name": "bash", "input": {"command": "ls"}}]})
    if kind == "tool_result":
        return line_bytes({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": arg, "content": f"result of {arg}"}]})
    if kind == "bad_json":
        return b'{"role":"user","content": oops}\n'
    if kind == "bad_role":
        return line_bytes({"role": "robot", "content": arg})
    if kind == "empty_content":
        return line_bytes({"role": "user", "content": "   "})
    if kind == "bad_key":
        return line_bytes({"role": "user", "content": "x", "id": arg})
    raise AssertionError(kind)


VALID_KINDS = ("user", "assistant", "tool_use", "tool_result")
INVALID_KINDS = ("bad_json", "bad_role", "empty_content", "bad_key")


def tool_use_ids(line: bytes) -> set[str] | None:
    """The tool_use ids of an assistant line (None for a user line)."""
    m = json.loads(line)
    if m["role"] != "assistant":
        return None
    c = m["content"]
    return {b["id"] for b in c if b.get("type") == "tool_use"} if isinstance(c, list) else set()


def line_ok(prev: bytes | None, line: bytes) -> bool:
    """Is `line` a valid transcript line after `prev` (the previous line or None)?
    The API's pairing rule, which an append-only history must keep: after an
    assistant line with tool_use blocks, the next line is a user line whose
    tool_result blocks (first in it) answer every one of those ids, once; a
    tool_result anywhere else is refused."""
    try:
        m = json.loads(line)
    except ValueError:
        return False
    if set(m) != {"role", "content"} or m["role"] not in ("user", "assistant"):
        return False
    c = m["content"]
    if isinstance(c, str) and not c.strip():
        return False
    blocks = c if isinstance(c, list) else []
    results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
    asked = (tool_use_ids(prev) or set()) if prev is not None else set()
    if not asked:
        return not results
    if m["role"] != "user" or len(results) != len(set(results)) or set(results) != asked:
        return False
    return all(b.get("type") == "tool_result" for b in blocks[:len(results)])


def lines_ok(turns: list[bytes], new: list[bytes]) -> bool:
    prev = turns[-1] if turns else None
    for line in new:
        if not line_ok(prev, line):
            return False
        prev = line
    return True


# ------------------------------------------------------------------ the model


Files = dict[str, bytes]


@dataclass
class Tree:
    """An agent's files at one moment: workspace (files + dirs), inbox, config."""

    files: Files = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    inbox: list[tuple[str, bytes]] = field(default_factory=list)
    config: bytes | None = None  # None: the default, as spawned

    def copy(self) -> Tree:
        return Tree(dict(self.files), set(self.dirs), list(self.inbox), self.config)


@dataclass
class AgentM:
    name: str
    kind: str = "spawn"
    origin: str | None = None
    shared: int = 0
    prompt: bytes = b""
    status: str = "idle"
    turns: list[bytes] = field(default_factory=list)
    now: Tree = field(default_factory=Tree)
    history: list[Tree] = field(default_factory=list)  # [N-1]: the tree after turn N
    snaps: dict[str, tuple[list[bytes], Tree]] = field(default_factory=dict)

    def fork(self, new: str, at: int | None) -> AgentM:
        n = len(self.turns) if at is None else at
        tree = self.now.copy() if at is None else self.history[at - 1].copy()
        return AgentM(new, "fork", self.name, n, self.prompt, "idle",
                      list(self.turns[:n]), tree, [t.copy() for t in self.history[:n]], {})

    def append(self, lines: list[bytes]) -> None:
        for line in lines:
            self.turns.append(line)
            self.history.append(self.now.copy())


class Model:
    def __init__(self) -> None:
        self.agents: dict[str, AgentM] = {}

    def copy(self) -> Model:
        return copy.deepcopy(self)


# ------------------------------------------------------------------ reading a mount


def read_bytes(p: Path | str) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def read_tree(root: Path) -> tuple[Files, set[str]]:
    """Files (by content) and directories below `root` (relative paths)."""
    files: Files = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            dirs.add(os.path.normpath(os.path.join(rel, d)))
        for f in filenames:
            files[os.path.normpath(os.path.join(rel, f))] = read_bytes(os.path.join(dirpath, f))
    return files, dirs


def parse_inbox(names: list[str]) -> tuple[list[tuple[int, str, str]], list[str]]:
    """Messages (seq, sender, NAME) of an inbox listing in `ls` order, and problems."""
    out, problems = [], []
    for n in sorted(names):
        m = MESSAGE_RE.match(n)
        if not m:
            problems.append(f"inbox entry {n!r} is not SEQ-SENDER+NAME")
            continue
        out.append((int(m.group(1)), m.group(2), m.group(3)))
    seqs = [s for s, _, _ in out]
    if seqs != sorted(set(seqs)):
        problems.append(f"inbox sequence numbers not strictly increasing: {seqs}")
    return out, problems


def write_file(path: Path | str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
               ) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def ctl_write(path: Path | str, line: str) -> None:
    """`echo LINE > PATH`: one write of the line with its newline, then close."""
    write_file(path, line.encode() + b"\n", os.O_WRONLY | os.O_TRUNC)


def is_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def lineage(mnt: Path) -> dict[str, dict]:
    out = {}
    for line in read_bytes(mnt / ".agentfs" / "lineage").splitlines():
        rec = json.loads(line)
        out[rec["name"]] = rec
    return out


def stamp_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ------------------------------------------------------------------ crash worker
#
# Runs in a subprocess (test_agent_crash.py) on the mount while the test
# SIGKILLs the daemon. Journal (outside the mount, fsync'ed per record):
#   {"t": "begin", "seq": N, "op": ..., "alts": {agent: [state, state, ...]}}
#   {"t": "done", "seq": N, "state": {agent: state}}
#   {"t": "failed", "seq": N, "errno": ...}  the operation was refused (a defect:
#       every operation the worker tries is valid): it must have changed nothing
# A state is "absent" or {"transcript": sha, "lines": n, "files": {name: sha|"*"},
# "inbox": [[NAME, sha], ...]}: the operation in flight must leave one of its
# alternatives (before or after: whole or not at all).


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def agent_state(lines: list[bytes], files: Files, inbox: list[tuple[str, bytes]]) -> dict:
    return {"transcript": _sha(b"".join(lines)), "lines": len(lines),
            "files": {k: _sha(v) for k, v in sorted(files.items())},
            "inbox": [[n, _sha(c)] for n, c in inbox]}


def crash_worker(mnt: str, prefix: str, journal: str, seed: str) -> None:
    import random

    rng = random.Random(int(seed))
    agents_dir = Path(mnt) / "agents"
    jfd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    live: dict[str, dict[str, Any]] = {}  # name -> {"lines", "files", "inbox", "history"}
    made = 0
    seq = 0

    def st(name: str) -> dict | str:
        a = live.get(name)
        return "absent" if a is None else agent_state(a["lines"], a["files"], a["inbox"])

    def log(rec: dict) -> None:
        os.write(jfd, (json.dumps(rec, sort_keys=True) + "\n").encode())
        os.fsync(jfd)

    def begin(op: str, alts: dict[str, list]) -> None:
        nonlocal seq
        seq += 1
        log({"t": "begin", "seq": seq, "op": op, "alts": alts})

    def done(*names: str) -> None:
        log({"t": "done", "seq": seq, "state": {n: st(n) for n in names}})

    def new_name() -> str:
        nonlocal made
        made += 1
        return f"{prefix}{made}"

    def spawn() -> None:
        name = new_name()
        begin(f"mkdir agents/{name}", {name: ["absent", agent_state([], {}, [])]})
        os.mkdir(agents_dir / name)
        live[name] = {"lines": [], "files": {}, "inbox": [], "history": []}
        done(name)

    def append(name: str) -> None:
        a = live[name]
        lines = []
        # At most ~60 KB in all: the kernel hands a write() over in pieces of
        # max_write (128 KiB), and all-or-nothing can only hold per piece.
        for _ in range(rng.randint(1, 3)):
            big = "y" * rng.choice([0, 0, 5000, 20_000])
            lines.append(make_line(rng.choice(["user", "assistant"]), f"{seq} {big}"))
        after = agent_state(a["lines"] + lines, a["files"], a["inbox"])
        begin(f"append {len(lines)} lines to agents/{name}", {name: [st(name), after]})
        write_file(agents_dir / name / "transcript", b"".join(lines), os.O_WRONLY | os.O_APPEND)
        for line in lines:
            a["lines"].append(line)
            a["history"].append((dict(a["files"]), list(a["inbox"])))
        done(name)

    def ws_write(name: str) -> None:
        a = live[name]
        f = rng.choice(["f", "g"])
        data = rng.randbytes(rng.choice([10, 3000, 200_000]))
        during = agent_state(a["lines"], a["files"], a["inbox"])
        during["files"][f] = "*"  # a plain write: any content until fsync'ed
        begin(f"write agents/{name}/workspace/{f}", {name: [during]})
        fd = os.open(agents_dir / name / "workspace" / f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        a["files"][f] = data
        done(name)

    def send(name: str) -> None:
        a = live[name]
        msg = rng.choice(["hello", "report", "m"])
        data = rng.randbytes(rng.choice([5, 4000, 300_000]))
        after = agent_state(a["lines"], a["files"], [*a["inbox"], (msg, data)])
        begin(f"send agents/{name}/inbox/{msg}", {name: [st(name), after]})
        fd = os.open(agents_dir / name / "inbox" / msg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o644)
        try:
            for i in range(0, len(data), 65536):  # several writes: a kill may land between
                os.write(fd, data[i:i + 65536])
        finally:
            os.close(fd)
        a["inbox"].append((msg, data))
        done(name)

    def consume(name: str) -> None:
        a = live[name]
        if not a["inbox"]:
            return send(name)
        first = sorted(os.listdir(agents_dir / name / "inbox"))[0]
        after = agent_state(a["lines"], a["files"], a["inbox"][1:])
        begin(f"rm agents/{name}/inbox/{first}", {name: [st(name), after]})
        os.unlink(agents_dir / name / "inbox" / first)
        a["inbox"].pop(0)
        done(name)

    def fork(name: str) -> None:
        a = live[name]
        new = new_name()
        at = rng.randint(1, len(a["lines"])) if a["lines"] and rng.random() < 0.6 else None
        b: dict[str, Any]
        if at is None:
            b = {"lines": list(a["lines"]), "files": dict(a["files"]),
                 "inbox": list(a["inbox"]), "history": list(a["history"])}
        else:
            files, inbox = a["history"][at - 1]
            b = {"lines": a["lines"][:at], "files": dict(files), "inbox": list(inbox),
                 "history": a["history"][:at]}
        tail = "" if at is None else f" at {at}"
        begin(f"echo 'fork {new}{tail}' > agents/{name}/ctl",
              {new: ["absent", agent_state(b["lines"], b["files"], b["inbox"])]})
        ctl_write(agents_dir / name / "ctl", f"fork {new}{tail}")
        live[new] = b
        done(new)

    def remove(name: str) -> None:
        begin(f"echo remove > agents/{name}/ctl", {name: [st(name), "absent"]})
        ctl_write(agents_dir / name / "ctl", "remove")
        del live[name]
        done(name)

    ops = [(append, 5), (send, 3), (consume, 2), (fork, 3), (remove, 2), (ws_write, 2)]
    print("ready", flush=True)
    while True:
        if len(live) < 2 or len(live) < 6 and rng.random() < 0.15:
            spawn()
            continue
        fn = rng.choices([f for f, _ in ops], weights=[w for _, w in ops])[0]
        if fn is remove and len(live) <= 2:
            continue
        name = rng.choice(sorted(live))
        snapshot = copy.deepcopy(live)
        try:
            fn(name)
        except OSError as e:
            if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                os._exit(3)  # the daemon is gone: the operation stays in flight
            # Refused: a defect, but it must have changed nothing; go on.
            live.clear()
            live.update(snapshot)
            log({"t": "failed", "seq": seq, "op": f"{fn.__name__} {name}",
                 "errno": errname(e.errno), "error": str(e)})
