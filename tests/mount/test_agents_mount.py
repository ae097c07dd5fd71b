"""The agent layer through a real mount: refusals, inbox concurrency, restart, forks, lineage.

Every refusal is checked the way an agent would meet it: the errno of the
system call, the reason in `agents/NAME/errstr` (read from the process that
got the error: errstr is per process), and that nothing changed (transcripts,
prompts, statuses, the list of agents).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.agentfs_only

USER = b'{"role":"user","content":"hello"}\n'
ASSISTANT = b'{"role":"assistant","content":"hi there"}\n'


# ---------------------------------------------------------------- helpers


def clean_env(agent: str | None = None) -> dict[str, str]:
    """The environment for a child process, speaking for `agent` (or no agent)."""
    env = {k: v for k, v in os.environ.items() if k != "AGENTFS_AGENT"}
    if agent is not None:
        env["AGENTFS_AGENT"] = agent
    return env


def run_py(code: str, *args: str, agent: str | None = None, cwd: Path | None = None,
           ) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-c", code, *args], env=clean_env(agent), cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"child failed:\n{res.stdout}\n{res.stderr}"
    return res


def spawn(mnt: Path, name: str) -> Path:
    (mnt / "agents").mkdir(exist_ok=True)
    d = mnt / "agents" / name
    os.mkdir(d)
    return d


def append(agent: Path, *lines: bytes) -> None:
    """`>>` each line onto the transcript (O_APPEND, one write per line)."""
    fd = os.open(agent / "transcript", os.O_WRONLY | os.O_APPEND)
    try:
        for line in lines:
            assert os.write(fd, line) == len(line)
    finally:
        os.close(fd)


def turn(i: int) -> bytes:
    role = "user" if i % 2 else "assistant"
    return json.dumps({"role": role, "content": f"turn {i}"}).encode() + b"\n"


def ctl(agent: Path, command: str) -> None:
    """Write one command line to the agent's ctl (the error, if any, comes from write)."""
    fd = os.open(agent / "ctl", os.O_WRONLY)
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)


def errstr(agent: Path) -> str:
    with open(agent / "errstr") as f:
        return f.read()


def read(p: Path) -> str:
    with open(p) as f:
        return f.read()


def tree(root: Path) -> dict[str, str | bytes]:
    """Every entry below `root`: directories as "dir", files by content."""
    out: dict[str, str | bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d))] = "dir"
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.normpath(os.path.join(rel, f))] = fh.read()
    return out


def state(mnt: Path) -> dict[str, object]:
    """What a refused operation must leave as it was."""
    agents = sorted(os.listdir(mnt / "agents"))
    out: dict[str, object] = {"agents": agents}
    for name in agents:
        d = mnt / "agents" / name
        files = {}
        for f in ("prompt", "system", "tools.json", "transcript", "config"):
            with open(d / f, "rb") as fh:
                files[f] = fh.read()
        out[name] = {
            "files": files,
            "status": read(d / "status"),
            "parent": read(d / "parent"),
            "children": read(d / "children"),
            "workspace": tree(d / "workspace"),
            "notes": tree(d / "notes"),
            "inbox": sorted(os.listdir(d / "inbox")),
        }
    return out


def refused(mnt: Path, agent: Path, code: int, reason: str, op: Callable[[], object]) -> None:
    """`op` fails with `code`, errstr names `reason`, and nothing changed."""
    before = state(mnt)
    with pytest.raises(OSError) as info:
        op()
    got = info.value.errno
    assert got == code, (f"expected {errno.errorcode[code]}, got "
                         f"{errno.errorcode.get(got, got)}: {info.value}")
    msg = errstr(agent)
    assert reason in msg, f"errstr lacks {reason!r}: {msg!r}"
    after = state(mnt)
    assert after == before, "a refused operation changed something"


@pytest.fixture
def started(mnt: Path) -> Path:
    """Agent `a` with a prompt, a system prompt, a workspace file and one turn."""
    a = spawn(mnt, "a")
    (a / "prompt").write_text("Do the thing.\n")
    (a / "system").write_text("You are careful.\n")
    (a / "workspace" / "x").write_text("x")
    append(a, USER)
    return a


# ---------------------------------------------------------------- 1. refusals


def test_prompt_is_writable_until_the_first_turn(mnt: Path) -> None:
    a = spawn(mnt, "a")
    (a / "prompt").write_text("first\n")
    (a / "prompt").write_text("second\n")  # O_TRUNC rewrite: allowed before turn 1
    with open(a / "prompt", "a") as f:
        f.write("more\n")
    os.truncate(a / "prompt", 7)
    assert read(a / "prompt") == "second\n"
    (a / "tools.json").write_text('[{"name": "t", "input_schema": {"type": "object"}}]\n')
    append(a, USER)
    assert read(a / "prompt") == "second\n"


@pytest.mark.parametrize("fname", ["prompt", "system", "tools.json"])
def test_frozen_after_first_turn(mnt: Path, started: Path, fname: str) -> None:
    a = started
    p = a / fname
    reason = f"agents/a/{fname} is frozen: the transcript has 1 turn(s)"

    def write_append() -> None:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"more")
        finally:
            os.close(fd)

    def write_at_0() -> None:
        fd = os.open(p, os.O_RDWR)
        try:
            os.pwrite(fd, b"X", 0)
        finally:
            os.close(fd)

    def open_trunc() -> None:
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))

    def open_rdonly_trunc() -> None:
        os.close(os.open(p, os.O_RDONLY | os.O_TRUNC))

    def shell_redirect() -> None:
        res = subprocess.run(["bash", "-c", f"echo new > '{p}' || {{ cat '{a}/errstr'; exit 1; }}"],
                             capture_output=True, text=True)
        if res.returncode:
            assert reason in res.stdout, res.stdout  # the shell's child reads the shell's error
            raise PermissionError(errno.EPERM, res.stderr)

    refused(mnt, a, errno.EPERM, reason, write_append)
    refused(mnt, a, errno.EPERM, reason, write_at_0)
    refused(mnt, a, errno.EPERM, reason, open_trunc)
    refused(mnt, a, errno.EPERM, reason, open_rdonly_trunc)
    refused(mnt, a, errno.EPERM, reason, lambda: os.truncate(p, 0))
    refused(mnt, a, errno.EPERM, reason, lambda: os.truncate(p, 100))
    refused(mnt, a, errno.EPERM, reason, lambda: os.unlink(p))
    refused(mnt, a, errno.EPERM, reason, lambda: os.rename(p, a / "workspace" / "moved"))
    refused(mnt, a, errno.EPERM, reason,
            lambda: os.rename(a / "workspace" / "x", p))
    # The shell's `>`, with `|| cat errstr` as an agent would write it.
    refused(mnt, a, errno.EPERM, reason, shell_redirect)
    # Still readable, unchanged; a fork is the way to change it (and the fork is frozen too).
    if fname == "prompt":
        assert read(p) == "Do the thing.\n"
    ctl(a, "fork b")
    b = mnt / "agents" / "b"
    refused(mnt, b, errno.EPERM, f"agents/b/{fname} is frozen",
            lambda: os.truncate(b / fname, 0))


def test_transcript_truncation_is_refused(mnt: Path, started: Path) -> None:
    a = started
    append(a, ASSISTANT)
    t = a / "transcript"
    reason = "agents/a/transcript is append-only (truncate refused)"

    def open_trunc() -> None:
        os.close(os.open(t, os.O_WRONLY | os.O_TRUNC))

    def shell_truncate() -> None:
        with open(t, "wb") as f:  # Python's `>`: O_WRONLY|O_CREAT|O_TRUNC
            f.write(USER)

    def ftruncate_appender() -> None:
        fd = os.open(t, os.O_WRONLY | os.O_APPEND)
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    refused(mnt, a, errno.EPERM, reason, open_trunc)
    refused(mnt, a, errno.EPERM, reason, shell_truncate)
    refused(mnt, a, errno.EPERM, reason, lambda: os.truncate(t, 0))
    refused(mnt, a, errno.EPERM, reason, lambda: os.truncate(t, len(USER)))
    refused(mnt, a, errno.EPERM, reason, lambda: os.truncate(t, 4096))  # growing too
    refused(mnt, a, errno.EPERM, reason, ftruncate_appender)
    assert (a / "transcript").read_bytes() == USER + ASSISTANT
    assert read(a / "status") == "idle turns=2\n"


def test_transcript_unlink_and_rename_are_refused(mnt: Path, started: Path) -> None:
    a = started
    other = spawn(mnt, "other")
    t = a / "transcript"
    (a / "workspace" / "fake").write_bytes(ASSISTANT * 3)
    refused(mnt, a, errno.EPERM, "agents/a/transcript is append-only (unlink refused)",
            lambda: os.unlink(t))
    refused(mnt, a, errno.EPERM, "agents/a/transcript is append-only (rename refused)",
            lambda: os.rename(a / "workspace" / "fake", t))
    refused(mnt, a, errno.EPERM, "agents/a/transcript is append-only (rename refused)",
            lambda: os.rename(t, a / "workspace" / "stolen"))
    refused(mnt, a, errno.EPERM, "agents/a/transcript is append-only (rename refused)",
            lambda: os.rename(t, a / "transcript.old"))
    # One agent's transcript cannot replace another's, in either direction.
    refused(mnt, a, errno.EPERM, "transcript is append-only (rename refused)",
            lambda: os.rename(other / "transcript", t))
    refused(mnt, a, errno.EPERM, "transcript is append-only (rename refused)",
            lambda: os.rename(t, other / "transcript"))
    assert t.read_bytes() == USER


def test_transcript_writes_need_o_append(mnt: Path, started: Path) -> None:
    """Every write appends: opening the transcript for writing without
    O_APPEND (a program that would rewrite it in place) is refused at open."""
    a = started
    append(a, ASSISTANT)
    reason = "agents/a/transcript is append-only (writing without O_APPEND refused)"
    for flags in (os.O_WRONLY, os.O_RDWR):
        refused(mnt, a, errno.EPERM, reason,
                lambda flags=flags: os.close(os.open(a / "transcript", flags)))
    with open(a / "transcript", "rb") as f:  # reading is fine
        assert f.read() == USER + ASSISTANT
    with open(a / "transcript", "ab") as f:  # Python's "a" is O_APPEND
        f.write(USER)
    assert read(a / "status") == "idle turns=3\n"


def test_failed_spawn_and_message_names_explain_themselves(mnt: Path, started: Path) -> None:
    a = started
    refused(mnt, a, errno.EINVAL, "mkdir agents/-bad: agent name '-bad' must be",
            lambda: os.mkdir(mnt / "agents" / "-bad"))
    refused(mnt, a, errno.EINVAL, "inbox/.in-x: names starting with .in- are reserved",
            lambda: (a / "inbox" / ".in-x").write_text("x"))


INVALID_LINES = [
    pytest.param(b"not json", "line is not valid JSON", id="not-json"),
    pytest.param(b'["user", "hi"]', "not a JSON object", id="not-an-object"),
    pytest.param(b'{"role":"system","content":"x"}',
                 "role 'system' is not one of 'user', 'assistant'", id="wrong-role"),
    pytest.param(b'{"content":"x"}', "role is missing", id="no-role"),
    pytest.param(b'{"role":"user","content":""}', "content is empty or only whitespace",
                 id="empty-content"),
    pytest.param(b'{"role":"user","content":"   "}', "content is empty or only whitespace",
                 id="blank-content"),
    pytest.param(b'{"role":"user","content":[]}', "content is an empty list",
                 id="empty-block-list"),
    pytest.param(b'{"role":"user","content":[{"type":"bogus","text":"x"}]}',
                 "content[0].type 'bogus' is not one of", id="unknown-block-type"),
    pytest.param(b'{"role":"user","content":[{"type":"tool_use","id":"t1","name":"ls",'
                 b'"input":{}}]}',
                 "content[0] is a tool_use block, which only an assistant message may hold",
                 id="tool_use-in-user"),
    pytest.param(b'{"role":"assistant","content":[{"type":"tool_result",'
                 b'"tool_use_id":"t1","content":"ok"}]}',
                 "content[0] is a tool_result block, which only a user message may hold",
                 id="tool_result-in-assistant"),
    pytest.param(b'{"role":"user","content":"x","name":"bob"}', "key 'name' is not allowed",
                 id="extra-key"),
    pytest.param(b"", "line is empty", id="empty-line"),
    pytest.param(b'{"role":"user","content":"\xff"}', "not valid UTF-8", id="not-utf8"),
]


@pytest.mark.parametrize(("line", "reason"), INVALID_LINES)
def test_invalid_line_is_refused(mnt: Path, started: Path, line: bytes, reason: str) -> None:
    a = started
    fd = os.open(a / "transcript", os.O_WRONLY | os.O_APPEND)
    try:
        refused(mnt, a, errno.EINVAL, reason, lambda: os.write(fd, line + b"\n"))
        assert "agents/a/transcript: line refused" in errstr(a)
        # The refused line left nothing pending: the same descriptor appends the next turn.
        os.write(fd, ASSISTANT)
    finally:
        os.close(fd)
    assert (a / "transcript").read_bytes() == USER + ASSISTANT
    assert read(a / "status") == "idle turns=2\n"


def test_invalid_line_through_the_shell(mnt: Path, started: Path) -> None:
    a = started
    before = state(mnt)
    res = subprocess.run(["bash", "-c", f"echo '{{\"role\":\"robot\",\"content\":\"x\"}}' >> "
                          f"'{a}/transcript' || cat '{a}/errstr'"],
                         capture_output=True, text=True)
    assert "Invalid argument" in res.stderr, res.stderr
    assert "role 'robot' is not one of 'user', 'assistant'" in res.stdout, res.stdout
    assert state(mnt) == before


def test_partial_line_is_refused_at_close(mnt: Path, started: Path) -> None:
    a = started
    before = state(mnt)
    fd = os.open(a / "transcript", os.O_WRONLY | os.O_APPEND)
    partial = b'{"role":"assistant","content":"no newline"}'
    assert os.write(fd, partial) == len(partial)  # held until the newline comes
    with pytest.raises(OSError) as info:
        os.close(fd)
    assert info.value.errno == errno.EINVAL
    msg = errstr(a)
    assert "agents/a/transcript: incomplete line refused at close (no newline" in msg, msg
    assert state(mnt) == before
    # A line split over several writes is fine once its newline arrives.
    fd = os.open(a / "transcript", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b'{"role":"assistant",')
    os.write(fd, b'"content":"split"}')
    os.write(fd, b"\n")
    os.close(fd)
    assert (a / "transcript").read_bytes() == USER + b'{"role":"assistant","content":"split"}\n'


def test_skeleton_cannot_be_removed_or_renamed(mnt: Path) -> None:
    a = spawn(mnt, "a")
    skeleton = "part of the agent's skeleton; remove the agent with rmdir agents/a"
    refused(mnt, a, errno.EPERM, skeleton, lambda: os.unlink(a / "prompt"))
    refused(mnt, a, errno.EPERM, skeleton, lambda: os.rmdir(a / "workspace"))
    refused(mnt, a, errno.EPERM, skeleton, lambda: os.rename(a / "notes", a / "workspace" / "n"))
    refused(mnt, a, errno.EPERM, skeleton, lambda: os.rename(a / "config", a / "cfg"))
    refused(mnt, a, errno.EPERM, skeleton, lambda: os.rename(a, mnt / "agents" / "z"))


def test_rmdir_of_an_agent_removes_it_whole(mnt: Path) -> None:
    """The cgroupfs convention: rmdir removes the agent though it holds files."""
    a = spawn(mnt, "a")
    (a / "workspace" / "f").write_text("x")
    os.rmdir(a)
    assert not a.exists() and os.listdir(mnt / "agents") == []
    lineage = (mnt / ".agentfs" / "lineage").read_text()
    assert '"name": "a"' not in lineage
    b = spawn(mnt, "a")  # the name is free again
    assert os.listdir(b / "workspace") == []


def test_rm_rf_of_an_agent_leaves_it_whole(mnt: Path) -> None:
    """rm -r would empty the agent file by file before failing on its skeleton:
    it is refused at its first step, and nothing inside is removed."""
    a = spawn(mnt, "a")
    (a / "workspace" / "f").write_text("x")
    (a / "notes" / "todo.md").write_text("- [ ] y\n")
    before = state(mnt)
    res = subprocess.run(["rm", "-rf", str(a)], capture_output=True, text=True)
    assert res.returncode != 0
    assert state(mnt) == before
    assert (a / "workspace" / "f").read_text() == "x"
    assert "rmdir agents/a" in (a / "errstr").read_text()


@pytest.fixture
def two_agents(mnt: Path) -> Path:
    """`a` with two turns and a status, and a second agent `b`."""
    a = spawn(mnt, "a")
    (a / "prompt").write_text("Do it.\n")
    append(a, turn(1), turn(2))
    ctl(a, "status waiting")
    spawn(mnt, "b")
    return a


BAD_COMMANDS = [
    pytest.param("bogus", errno.EINVAL, "unknown command or bad arguments 'bogus'",
                 id="unknown"),
    pytest.param("fork", errno.EINVAL, "unknown command or bad arguments 'fork'",
                 id="fork-no-name"),
    pytest.param("fork x y", errno.EINVAL, "unknown command or bad arguments",
                 id="fork-two-words"),
    pytest.param("fork x at", errno.EINVAL, "unknown command or bad arguments",
                 id="fork-at-no-turn"),
    pytest.param("fork x at two", errno.EINVAL, "usage: fork NEW at TURN", id="fork-at-word"),
    pytest.param("fork x at -1", errno.EINVAL, "usage: fork NEW at TURN",
                 id="fork-at-negative"),
    pytest.param("fork x after 1", errno.EINVAL, "usage: fork NEW at TURN", id="fork-after"),
    pytest.param("fork ../x", errno.EINVAL, "must be 1-64 characters", id="fork-bad-name"),
    pytest.param("fork .hidden", errno.EINVAL, "must be 1-64 characters",
                 id="fork-dot-name"),
    pytest.param("fork b", errno.EEXIST, "exists", id="fork-to-existing"),
    pytest.param("fork a", errno.EEXIST, "exists", id="fork-to-self"),
    pytest.param("fork x at 3", errno.ENOENT, "a has turns 1..2, not 3",
                 id="fork-beyond-history"),
    pytest.param("fork x at 0", errno.ENOENT, "a has turns 1..2, not 0", id="fork-at-zero"),
    pytest.param("status", errno.EINVAL, "unknown command or bad arguments 'status'",
                 id="status-no-arg"),
    pytest.param("status sleepy", errno.EINVAL,
                 "status must be one of idle, running, waiting, done, failed", id="bad-status"),
    pytest.param("status done now", errno.EINVAL, "unknown command or bad arguments",
                 id="status-two-args"),
    pytest.param("snapshot", errno.EINVAL, "unknown command or bad arguments",
                 id="snapshot-no-name"),
    pytest.param("remove now", errno.EINVAL, "unknown command or bad arguments",
                 id="remove-with-arg"),
    pytest.param("fork 'x", errno.EINVAL, "cannot parse", id="unbalanced-quote"),
]


@pytest.mark.parametrize(("command", "code", "reason"), BAD_COMMANDS)
def test_bad_ctl_command(mnt: Path, two_agents: Path, command: str, code: int,
                         reason: str) -> None:
    a = two_agents
    refused(mnt, a, code, reason, lambda: ctl(a, command))
    msg = errstr(a)
    assert f"agents/a/ctl: {command}: " in msg, msg
    assert read(a / "status") == "waiting turns=2\n"
    assert sorted(os.listdir(mnt / "agents")) == ["a", "b"]


def test_bad_ctl_command_through_the_shell(mnt: Path, two_agents: Path) -> None:
    """`echo cmd > ctl || cat errstr`: the reader (a child of the shell) sees the shell's error."""
    a = two_agents
    before = state(mnt)
    res = subprocess.run(["bash", "-c", f"echo 'fork zz at 9' > '{a}/ctl' || cat '{a}/errstr'"],
                         capture_output=True, text=True)
    assert "No such file or directory" in res.stderr, res.stderr
    assert "agents/a/ctl: fork zz at 9: a has turns 1..2, not 9" in res.stdout, res.stdout
    assert state(mnt) == before


def test_errstr_is_per_process(mnt: Path, two_agents: Path) -> None:
    """Another process's later error does not replace this process's own."""
    a = two_agents
    refused(mnt, a, errno.EINVAL, "status sleepy", lambda: ctl(a, "status sleepy"))
    run_py("import os, sys\n"
           "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
           "try:\n    os.write(fd, b'bogus-from-child\\n')\n"
           "except OSError:\n    pass\n"
           "assert 'bogus-from-child' in open(sys.argv[2]).read()\n",
           str(a / "ctl"), str(a / "errstr"))
    msg = errstr(a)
    assert "status sleepy" in msg and "bogus-from-child" not in msg, msg


# ---------------------------------------------------------------- 2. inbox concurrency

SENDERS = 8
PER_SENDER = 500

SENDER_CODE = r"""
import os, sys
inbox, i, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for j in range(n):
    fd = os.open(os.path.join(inbox, "m%03d" % j), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"sender-%d-msg-%d" % (i, j))
    os.close(fd)
"""


def test_inbox_many_senders_one_reader(mnt: Path) -> None:
    """8 processes x 500 messages into one inbox while one reader consumes them:
    every message arrives exactly once, sequence numbers are gapless and follow
    arrival, each sender's messages keep their order, and every listing the reader
    takes is consistent (it never shows message k+1 while k, already delivered,
    is missing)."""
    hub = spawn(mnt, "hub")
    inbox = hub / "inbox"
    total = SENDERS * PER_SENDER
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", SENDER_CODE, str(inbox), str(i),
                               str(PER_SENDER)], env=clean_env(f"s{i}"))
             for i in range(SENDERS)]
    consumed: list[tuple[int, str, str, str]] = []  # (seq, sender, name, body) in read order
    inconsistent: list[str] = []  # listings that skip a delivered message
    listings = 0
    deadline = time.monotonic() + 120
    try:
        while len(consumed) < total:
            assert time.monotonic() < deadline, (
                f"reader got {len(consumed)} of {total} messages in 120 s")
            names = sorted(os.listdir(inbox))
            listings += 1
            if not names:
                with open(inbox / ".wait-5") as f:
                    f.read()
                continue
            seqs = [int(n.split("-", 1)[0]) for n in names]
            have = {c[0] for c in consumed} | set(seqs)
            skipped = [k for k in range(1, max(seqs)) if k not in have]
            if skipped:
                inconsistent.append(f"listing {listings}: {len(names)} names up to "
                                    f"{max(seqs)}, missing {skipped[:8]} ({len(skipped)})")
            for name in names:
                with open(inbox / name) as f:
                    body = f.read()
                os.unlink(inbox / name)
                seq, rest = name.split("-", 1)
                sender, base = rest.split("+", 1)
                consumed.append((int(seq), sender, base, body))
    finally:
        for p in procs:
            p.wait(timeout=60)
    elapsed = time.monotonic() - t0
    print(f"{total} messages from {SENDERS} senders in {elapsed:.1f}s, {listings} listings")
    assert all(p.returncode == 0 for p in procs)
    assert os.listdir(inbox) == []

    problems: list[str] = []
    bodies = [c[3] for c in consumed]
    expected = {f"sender-{i}-msg-{j}" for i in range(SENDERS) for j in range(PER_SENDER)}
    if len(bodies) != total or set(bodies) != expected:
        problems.append(f"not exactly once: {len(bodies)} read, {len(set(bodies))} distinct, "
                        f"{len(expected - set(bodies))} missing")
    for seq, sender, base, body in consumed:
        i, j = body.split("-")[1], body.split("-")[3]
        if sender != f"s{i}" or base != f"m{int(j):03d}":
            problems.append(f"message {seq}-{sender}-{base} holds {body!r}")
            break
    seqs = [c[0] for c in consumed]
    if sorted(seqs) != list(range(1, total + 1)):
        problems.append(f"sequence numbers not gapless 1..{total}: "
                        f"{sorted(set(range(1, total + 1)) - set(seqs))[:10]} missing")
    for i in range(SENDERS):
        mine = sorted((c[0], int(c[3].rsplit("-", 1)[1])) for c in consumed
                      if c[1] == f"s{i}")
        if [j for _, j in mine] != list(range(PER_SENDER)):
            problems.append(f"sender s{i}'s messages are not numbered in the order sent")
    out_of_order = [(x, y) for x, y in zip(seqs, seqs[1:], strict=False) if y <= x]
    if out_of_order:
        problems.append(f"reader consumed sequence numbers out of order {len(out_of_order)} "
                        f"times, first {out_of_order[:5]}")
    problems += inconsistent
    assert not problems, "\n".join(problems)
    assert elapsed < 120


# ---------------------------------------------------------------- 3. restart

SEND_CODE = r"""
import os, sys
inbox = sys.argv[1]
for name in sys.argv[2:]:
    with open(os.path.join(inbox, name), "w") as f:
        f.write("body of " + name)
"""

STORED_INBOX_CODE = r"""
import json, sys
from agentfs.storage import codec, keys
from agentfs.agents.model import Agent, Role
from agentfs.storage.kv import LmdbEngine
from agentfs.storage.views import Store
engine = LmdbEngine(sys.argv[1])
with Store(engine).read() as tx:
    a = Agent.decode(sys.argv[2], tx.txn.get(b"A" + sys.argv[2].encode()))
    names = [sub[8:-1].decode() for sub, _ in tx.scan(a.view, keys.dentry_dir_suffix(Role.INBOX))]
engine.close()
print(json.dumps(names))
"""


def stored_inbox(mount, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Every entry of the agent's inbox as stored, staged messages included."""
    res = run_py(STORED_INBOX_CODE, str(mount.store / "lmdb"), name)
    return sorted(json.loads(res.stdout))


HOLD_CODE = r"""
import os, sys
fd = os.open(os.path.join(sys.argv[1], "unfinished"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, b"half a message")
print("ready", flush=True)
sys.stdin.read()  # keep it open until killed
"""


def test_messages_survive_daemon_kill(mount) -> None:  # type: ignore[no-untyped-def]
    mnt = mount.path
    a = spawn(mnt, "a")
    run_py(SEND_CODE, str(a / "inbox"), "first", "second", "third", agent="alice")
    delivered = ["000001-alice+first", "000002-alice+second", "000003-alice+third"]
    assert sorted(os.listdir(a / "inbox")) == delivered
    # A message still being written (its writer has it open) when the daemon dies.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CODE, str(a / "inbox")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=clean_env("carol"))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
        assert sorted(os.listdir(a / "inbox")) == delivered  # staged: not listed
        staged = [n for n in stored_inbox(mount, "a") if n not in delivered]
        assert len(staged) == 1 and staged[0].startswith(".in-"), staged
        mount.kill()
    finally:
        holder.kill()
        holder.wait()
        holder.stdin.close()  # type: ignore[union-attr]
        holder.stdout.close()  # type: ignore[union-attr]
    mount.start()
    a = mnt / "agents" / "a"
    assert sorted(os.listdir(a / "inbox")) == delivered
    for name in delivered:
        assert read(a / "inbox" / name) == "body of " + name.split("+", 1)[1]
    assert stored_inbox(mount, "a") == delivered, "the staged message was kept in the store"
    with open(a / "inbox" / ".wait-1") as f:
        assert f.read() == "000001-alice+first\n"
    # Numbering continues after the restart.
    run_py(SEND_CODE, str(a / "inbox"), "fourth", agent="bob")
    assert sorted(os.listdir(a / "inbox")) == [*delivered, "000004-bob+fourth"]
    mount.fsck()


def test_message_stays_hidden_while_a_child_shares_its_descriptor(mnt: Path) -> None:
    """A message is delivered when its writer closes it, not when some copy of
    the descriptor is closed: a command run while the message is open (fork +
    exec, or a child of the shell writing into the same redirection) must not
    make the half-written message visible."""
    a = spawn(mnt, "a")
    inbox = a / "inbox"
    fd = os.open(inbox / "report", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"part 1\n")
        subprocess.run(["true"], check=True)  # the fork's copy of fd closes at exec
        seen_while_open = sorted(os.listdir(inbox))
        os.write(fd, b"part 2\n")
    finally:
        os.close(fd)
    names = sorted(os.listdir(inbox))
    assert len(names) == 1 and names[0].endswith("+report"), names
    assert read(inbox / names[0]) == "part 1\npart 2\n"
    # The same through the shell: a command inside the redirected block.
    res = subprocess.run(["bash", "-c", f"{{ echo head; /bin/true; ls '{inbox}' >&2; "
                          f"echo tail; }} > '{inbox}/shell'"],
                         capture_output=True, text=True, env=clean_env("sh-agent"))
    assert res.returncode == 0, res.stderr
    listed = sorted(res.stderr.split())
    assert read(inbox / "000002-sh-agent+shell") == "head\ntail\n"
    assert (seen_while_open, listed) == ([], names), (
        f"half-written messages visible while still open: {seen_while_open} (Python, after "
        f"a fork+exec), {sorted(set(listed) - set(names))} (shell block)")


def test_transcript_line_written_around_a_child_process(mnt: Path, started: Path) -> None:
    """A line split over two writes with a command run in between (its copy of
    the descriptor closes first) is still one line once its newline arrives."""
    a = started
    res = subprocess.run(["bash", "-c", "{ printf '{\"role\":\"assistant\",'; /bin/true; "
                          "printf '\"content\":\"done\"}\\n'; } >> "
                          f"'{a}/transcript' || cat '{a}/errstr'"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr, (res.stdout, res.stderr)
    assert (a / "transcript").read_bytes() == USER + b'{"role":"assistant","content":"done"}\n'


def test_inbox_wait_blocks_until_a_message_is_delivered(mnt: Path) -> None:
    a = spawn(mnt, "a")
    with open(a / "inbox" / ".wait-0") as f:
        assert f.read() == ""  # nothing there: no wait
    got: list[str] = []

    def waiter() -> None:
        with open(a / "inbox" / ".wait-20") as f:
            got.append(f.read())

    t = threading.Thread(target=waiter)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.5)
    with open(a / "inbox" / "ping", "w") as f:
        f.write("ping")
        f.flush()
        time.sleep(0.3)
        assert not got, "woke before the message was closed"
    t.join(timeout=25)
    assert not t.is_alive()
    assert 0.5 <= time.monotonic() - t0 < 10
    assert len(got) == 1 and got[0].endswith("+ping\n"), got


# ---------------------------------------------------------------- 4. forks


def agent_view(d: Path) -> dict[str, object]:
    files = {}
    for f in ("prompt", "system", "tools.json", "transcript", "config"):
        files[f] = (d / f).read_bytes()
    return {"files": files, "workspace": tree(d / "workspace"), "notes": tree(d / "notes")}


def test_fork_now_shares_everything_then_diverges(mnt: Path) -> None:
    a = spawn(mnt, "a")
    (a / "prompt").write_text("Refactor.\n")
    (a / "system").write_text("Be brief.\n")
    (a / "notes" / "todo.md").write_text("- [ ] start\n")
    for i in range(1, 4):
        (a / "workspace" / "step.txt").write_text(f"step {i}\n")
        (a / "workspace" / f"dir-{i}").mkdir()
        (a / "workspace" / f"dir-{i}" / "f").write_bytes(os.urandom(1000) * i)
        append(a, turn(i))
    res = subprocess.run(["bash", "-c", f"echo 'fork b' > '{a}/ctl'"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    b = mnt / "agents" / "b"
    base = agent_view(a)
    assert agent_view(b) == base
    assert read(b / "status") == "idle turns=3\n"
    assert (b / "transcript").read_bytes() == turn(1) + turn(2) + turn(3)

    # Writes in the fork are invisible to the origin...
    (b / "workspace" / "step.txt").write_text("fork's own\n")
    (b / "workspace" / "only-b").write_text("b")
    (b / "notes" / "todo.md").write_text("- [x] start\n")
    os.unlink(b / "workspace" / "dir-1" / "f")
    append(b, turn(4))
    assert agent_view(a) == base
    assert read(a / "status") == "idle turns=3\n"
    # ...and the origin's writes are invisible to the fork.
    b_now = agent_view(b)
    (a / "workspace" / "only-a").write_text("a")
    (a / "workspace" / "dir-2" / "f").write_text("changed in a")
    append(a, b'{"role":"assistant","content":"a goes on"}\n')
    assert agent_view(b) == b_now
    assert (a / "transcript").read_bytes() == (turn(1) + turn(2) + turn(3)
                                               + b'{"role":"assistant","content":"a goes on"}\n')
    assert (b / "transcript").read_bytes() == turn(1) + turn(2) + turn(3) + turn(4)
    assert not (a / "workspace" / "only-b").exists()
    assert not (b / "workspace" / "only-a").exists()
    assert read(a / "status") == "idle turns=4\n"
    assert read(b / "status") == "idle turns=4\n"


def test_fork_at_turn_takes_the_past(mnt: Path) -> None:
    a = spawn(mnt, "a")
    (a / "prompt").write_text("Count.\n")
    at_turn: dict[int, dict[str, str | bytes]] = {}
    notes_at: dict[int, dict[str, str | bytes]] = {}
    for i in range(1, 6):
        (a / "workspace" / "step.txt").write_text(f"step {i}\n")
        (a / "workspace" / f"dir-{i}").mkdir()
        if i == 3:
            os.unlink(a / "workspace" / "step.txt")
        (a / "notes" / "log").write_text(f"after {i}\n")
        append(a, turn(i))
        at_turn[i] = tree(a / "workspace")
        notes_at[i] = tree(a / "notes")
    ctl(a, "fork c at 2")
    c = mnt / "agents" / "c"
    assert (c / "transcript").read_bytes() == turn(1) + turn(2)
    assert read(c / "status") == "idle turns=2\n"
    assert tree(c / "workspace") == tree(a / ".snapshots" / "turn-2" / "workspace")
    assert tree(c / "workspace") == at_turn[2]
    assert read(c / "workspace" / "step.txt") == "step 2\n"
    assert not (c / "workspace" / "dir-3").exists()
    assert tree(c / "notes") == notes_at[2]
    assert (c / "prompt").read_bytes() == b"Count.\n"
    # The fork goes its own way from turn 2; the origin keeps its five turns.
    append(c, turn(3))
    (c / "workspace" / "c-only").write_text("c")
    assert (a / "transcript").read_bytes() == b"".join(turn(i) for i in range(1, 6))
    assert tree(a / "workspace") == at_turn[5]
    # Every past turn of the origin, through .snapshots/turn-N.
    for i in (1, 3, 5):
        assert tree(a / ".snapshots" / f"turn-{i}" / "workspace") == at_turn[i], i
    # A fork of a fork at a turn it inherited gets the original's past.
    ctl(a, "fork b")
    ctl(mnt / "agents" / "b", "fork d at 2")
    d = mnt / "agents" / "d"
    assert (d / "transcript").read_bytes() == turn(1) + turn(2)
    assert tree(d / "workspace") == at_turn[2]
    # Forking at the last turn is forking now.
    ctl(a, "fork e at 5")
    assert agent_view(mnt / "agents" / "e") == agent_view(a)


def test_fork_context_matches_parent_byte_for_byte(mnt: Path) -> None:
    a = spawn(mnt, "a")
    (a / "system").write_text("You are a careful engineer.\n")
    (a / "prompt").write_text("Fix the bug in parse().\n")
    (a / "tools.json").write_text(json.dumps([{
        "name": "bash", "description": "run a command",
        "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    }]) + "\n")
    (a / "notes" / "todo.md").write_text("- [ ] reproduce\n")
    append(a,
           b'{"role":"assistant","content":[{"type":"text","text":"Looking."},'
           b'{"type":"tool_use","id":"t1","name":"bash","input":{"cmd":"ls"}}]}\n',
           b'{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1",'
           b'"content":"parse.py"}]}\n',
           b'{"role":"assistant","content":"Found it."}\n')
    with open(a / "context.json", "rb") as f:
        parent_ctx = f.read()
    ctx = json.loads(parent_ctx)
    assert ctx["messages"], ctx
    ctl(a, "fork f")
    f_dir = mnt / "agents" / "f"
    with open(f_dir / "context.json", "rb") as f:
        fork_ctx = f.read()
    assert fork_ctx == parent_ctx
    with open(a / "context.json", "rb") as f:
        assert f.read() == parent_ctx  # reading it did not change the parent's either
    # A fork at the last turn renders the same too.
    ctl(a, "fork g at 3")
    with open(mnt / "agents" / "g" / "context.json", "rb") as f:
        assert f.read() == parent_ctx


# ---------------------------------------------------------------- 5. status, parent, children


def test_status_reflects_turns_and_ctl(mnt: Path) -> None:
    a = spawn(mnt, "a")
    assert read(a / "status") == "idle turns=0\n"
    append(a, turn(1), turn(2))
    assert read(a / "status") == "idle turns=2\n"
    ctl(a, "status running")
    assert read(a / "status") == "running turns=2\n"
    assert read(a / "ctl") == "running turns=2\n"
    append(a, turn(3))
    assert read(a / "status") == "running turns=3\n"
    for s in ("waiting", "done", "failed", "idle"):
        subprocess.run(["bash", "-c", f"echo 'status {s}' > '{a}/ctl'"], check=True)
        assert read(a / "status") == f"{s} turns=3\n"
    # A fork starts idle with the turns it inherited.
    ctl(a, "status running")
    ctl(a, "fork b at 1")
    assert read(mnt / "agents" / "b" / "status") == "idle turns=1\n"
    assert read(a / "status") == "running turns=3\n"


MKDIR_CODE = "import os, sys\nos.mkdir(sys.argv[1])\n"


def test_parent_and_children(mnt: Path) -> None:
    a = spawn(mnt, "a")
    agents = mnt / "agents"
    assert read(a / "parent") == ""
    assert read(a / "children") == ""
    append(a, turn(1))
    # Spawned by a process speaking for `a`.
    run_py(MKDIR_CODE, str(agents / "kid"), agent="a")
    assert read(agents / "kid" / "parent") == "a\n"
    # Spawned from inside a's directory (no AGENTFS_AGENT): a again.
    run_py(MKDIR_CODE, "../kid2", cwd=a)
    assert read(agents / "kid2" / "parent") == "a\n"
    # Spawned for an agent that does not exist: no parent.
    run_py(MKDIR_CODE, str(agents / "orphan"), agent="nobody")
    assert read(agents / "orphan" / "parent") == ""
    # Forks record their origin as parent.
    ctl(a, "fork f1")
    ctl(a, "fork f2 at 1")
    assert read(agents / "f1" / "parent") == "a\n"
    assert read(agents / "f2" / "parent") == "a\n"
    assert read(a / "children") == "f1\nf2\nkid\nkid2\n"
    # Grandchildren are the child's.
    run_py(MKDIR_CODE, str(agents / "grandkid"), agent="kid")
    assert read(agents / "kid" / "children") == "grandkid\n"
    assert read(a / "children") == "f1\nf2\nkid\nkid2\n"
    assert read(agents / "orphan" / "children") == ""
    # The parent can be recorded after the fact, once.
    with open(agents / "orphan" / "parent", "w") as f:
        f.write("kid\n")
    assert read(agents / "orphan" / "parent") == "kid\n"
    assert read(agents / "kid" / "children") == "grandkid\norphan\n"
    refused(mnt, agents / "orphan", errno.EEXIST, "parent is already kid",
            lambda: (agents / "orphan" / "parent").write_text("a\n"))
    # Removing a child takes it out of the listing and out of its parent's children.
    ctl(agents / "kid2", "remove")
    assert "kid2" not in os.listdir(agents)
    assert not (agents / "kid2").exists()
    assert read(a / "children") == "f1\nf2\nkid\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_blocked_wait_can_be_interrupted(mnt: Path, sig: signal.Signals) -> None:
    """Ctrl-C (or kill) on `cat inbox/.wait-600` ends it at once, not in ten minutes."""
    a = spawn(mnt, "w")
    p = subprocess.Popen(["cat", str(a / "inbox" / ".wait-600")])
    time.sleep(0.5)
    assert p.poll() is None, "the wait returned without a message"
    t0 = time.monotonic()
    p.send_signal(sig)
    p.wait(timeout=5)
    assert time.monotonic() - t0 < 2
    assert p.returncode == -sig
    # The inbox still works for the next reader.
    (a / "inbox" / "m").write_text("x")
    assert read(a / "inbox" / ".wait-5").endswith("+m\n")


APPEND_CODE = r"""
import json, os, sys
path, start = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
i = start
while True:
    role = "user" if i % 2 == 0 else "assistant"
    body = ("bulky output " * (i % 7 * 300)) or "short"
    os.write(fd, json.dumps({"role": role, "content": f"{i} {body}"}).encode() + b"\n")
    if i % 3 == 0:
        os.fsync(fd)
        print(i, flush=True)  # every line up to i is durable
    i += 1
"""


@pytest.mark.slow
def test_transcripts_survive_sigkill_mid_append(mount) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the daemon while a writer appends (some lines compressed): after
    each remount every fsync'ed line is there, the transcript is whole lines
    in order, the turn count matches, and fsck is clean."""
    import random

    rng = random.Random(5)
    mnt = mount.path
    spawn(mnt, "w")
    next_line = 0
    for _round in range(6):
        t = mnt / "agents" / "w" / "transcript"
        writer = subprocess.Popen([sys.executable, "-c", APPEND_CODE, str(t), str(next_line)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  env=clean_env(None))
        assert writer.stdout is not None
        durable = -1
        deadline = time.monotonic() + rng.uniform(0.2, 1.0)
        while time.monotonic() < deadline:
            out = writer.stdout.readline()
            if not out:
                break
            durable = int(out)
        mount.kill()
        writer.kill()
        writer.wait()
        writer.stdout.close()
        mount.start()
        data = (mnt / "agents" / "w" / "transcript").read_bytes()
        assert data.endswith(b"\n") or not data
        lines = [json.loads(x) for x in data.splitlines()]
        assert [int(m["content"].split(" ", 1)[0]) for m in lines] == list(range(len(lines)))
        assert len(lines) > durable, f"fsync'ed line {durable} lost ({len(lines)} lines)"
        assert read(mnt / "agents" / "w" / "status") == f"idle turns={len(lines)}\n"
        next_line = len(lines)
        mount.fsck()
    assert next_line > 30, f"only {next_line} lines written: the test did not exercise much"


def test_huge_lines_are_refused_without_buffering_forever(mnt: Path, started: Path) -> None:
    """A transcript line that passes 16 MiB with no newline, or a control
    command that passes 64 KiB, is refused (EINVAL, reason in errstr) and
    dropped; the file works normally afterwards. A big valid line (10 MB,
    written in kernel-sized pieces) goes in whole and quickly."""
    a = started
    from agentfs.agents.render import MAX_LINE

    def huge_line() -> None:
        fd = os.open(a / "transcript", os.O_WRONLY | os.O_APPEND)
        try:
            chunk = b"x" * (1 << 20)
            for _ in range(MAX_LINE // len(chunk) + 2):
                os.write(fd, chunk)
        finally:
            os.close(fd)

    refused(mnt, a, errno.EINVAL, f"agents/a/transcript: a line longer than {MAX_LINE + 1} "
            "bytes without a newline", huge_line)
    def huge_command() -> None:
        fd = os.open(a / "ctl", os.O_WRONLY)
        try:
            os.write(fd, b"status " + b"x" * 100_000)  # no newline yet
        finally:
            os.close(fd)

    refused(mnt, a, errno.EINVAL, "control file: a line longer than 65536 bytes", huge_command)
    # A long bad command that does end in a newline: refused, and errstr stays short.
    with pytest.raises(OSError):
        ctl(a, "status " + "x" * 60_000)
    assert len(errstr(a)) < 1100 and "characters cut" in errstr(a)
    assert errstr(a).rstrip().endswith("status must be one of idle, running, waiting, done, "
                                       "failed")
    text = "y" * 10_000_000
    big = json.dumps({"role": "assistant", "content": text}).encode() + b"\n"
    t0 = time.monotonic()
    append(a, big)
    assert time.monotonic() - t0 < 10
    assert (a / "transcript").read_bytes() == USER + big
    assert read(a / "status") == "idle turns=2\n"


def test_a_write_with_an_invalid_line_appends_none_of_its_lines(
        mnt: Path, started: Path) -> None:
    """One write() is all or nothing: the valid line before a bad one is not kept."""
    a = started
    fd = os.open(a / "transcript", os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(OSError) as info:
            os.write(fd, ASSISTANT + b"not json\n" + USER)
        assert info.value.errno == errno.EINVAL
        os.write(fd, ASSISTANT)  # nothing of the failed write is pending: this line stands alone
    finally:
        os.close(fd)
    assert (a / "transcript").read_bytes() == USER + ASSISTANT
    assert "line is not valid JSON" in errstr(a)
    assert "none of the 3 lines of this write was appended" in errstr(a)
