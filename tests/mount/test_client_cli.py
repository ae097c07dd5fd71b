"""agentfs.client and the agent commands of `agentfs`, on a real mount.

The library (Mount, Agent, Message, AgentfsError) works with file operations
only; every function is exercised here, with its error paths: the errno the
filesystem gives and the reason the daemon wrote (or the client made). Then
the CLI: spawn, fork (agents and directories), send, recv, ls, tree, log,
export, and how agent names resolve (--mount, $AGENTFS_MOUNT, the current
directory, MOUNT/agents/NAME paths).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from agentfs.client import Agent, AgentfsError, Message, Mount

pytestmark = pytest.mark.agentfs_only

CLI = [sys.executable, "-m", "agentfs.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any ambient AGENTFS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFS_")}
    env.update(extra)
    return env


def cli(*args: str | Path, cwd: Path | str | None = None, input: str | None = None,
        timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, input=input, env=clean_env(**env), timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def refused(res: subprocess.CompletedProcess[str], *words: str, code: int = 1) -> str:
    out = res.stdout + res.stderr
    assert res.returncode == code, f"exit {res.returncode}, wanted {code}:\n{out}"
    assert "Traceback" not in out, out
    for w in words:
        assert w in out, f"{w!r} not in:\n{out}"
    return out


def in_child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run client code in a fresh process started with `env` (the daemon reads
    a process's environment as it was at exec)."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=clean_env(**env), timeout=60, cwd="/")
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture
def m(mount: Any) -> Mount:
    return Mount(mount.path)


def raises(code: int, *words: str) -> Any:
    """pytest.raises(AgentfsError) that also checks the errno and the reason."""

    class Check:
        def __enter__(self) -> Check:
            self.ctx = pytest.raises(AgentfsError)
            self.info = self.ctx.__enter__()
            return self

        def __exit__(self, *exc: Any) -> bool:
            handled = self.ctx.__exit__(*exc)
            e = self.info.value
            assert e.errno == code, f"errno {e.errno}, wanted {code}: {e}"
            for w in words:
                assert w in e.reason, f"{w!r} not in reason {e.reason!r}"
            assert isinstance(e, OSError)
            assert errno.errorcode[code] in str(e)
            return bool(handled)

    return Check()


USER = {"role": "user", "content": "hello"}
ASSISTANT = {"role": "assistant", "content": [
    {"type": "text", "text": "Let me look."},
    {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls -l"}}]}
RESULT = {"role": "user", "content": [
    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a\nb\nc\n" + "x" * 300}]}


# ================================================================= the library


def test_find_the_mount(m: Mount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTFS_MOUNT", raising=False)
    a = m.spawn("finder")
    deep = a.path / "workspace" / "x" / "y"
    deep.mkdir(parents=True)
    assert Mount.find(deep) == m
    assert Mount.find(m.path) == m
    assert Mount.find(str(a.path / "no-such-file")) == m
    monkeypatch.chdir(deep)
    assert Mount.find() == m
    monkeypatch.chdir(tmp_path)
    with raises(errno.ENOENT, "not inside an agentfs mount", "AGENTFS_MOUNT"):
        Mount.find()
    with raises(errno.ENOENT, "not inside an agentfs mount"):
        Mount.find(tmp_path)
    monkeypatch.setenv("AGENTFS_MOUNT", str(m.path))
    assert Mount.find() == m
    with raises(errno.ENOENT, "not an agentfs mount"):
        Mount(tmp_path)


def test_spawn_writes_the_skeleton(m: Mount) -> None:
    assert m.agents() == []
    tools = [{"name": "bash", "description": "run a command",
              "input_schema": {"type": "object", "properties": {}}}]
    a = m.spawn("alpha", prompt="Plan the release.\n", system="Be brief.\n", tools=tools)
    assert isinstance(a, Agent) and a.name == "alpha"
    assert a.path == m.path / "agents" / "alpha"
    assert (a.path / "prompt").read_text() == "Plan the release.\n"
    assert a.prompt() == "Plan the release.\n"
    assert (a.path / "system").read_text() == "Be brief.\n"
    assert json.loads((a.path / "tools.json").read_text()) == tools
    b = m.spawn("beta")
    assert (b.path / "prompt").read_text() == ""
    assert m.agents() == ["alpha", "beta"]
    assert m.agent("beta") == b
    assert a.status() == ("idle", 0)
    assert a.parent() is None and a.children() == []
    ctx = a.context()
    assert ctx["tools"][0]["name"] == "bash"
    assert "Be brief." in json.dumps(ctx["system"])


def test_spawn_errors(m: Mount) -> None:
    m.spawn("alpha")
    with raises(errno.EEXIST, "agent 'alpha' exists"):
        m.spawn("alpha")
    with raises(errno.EINVAL, "agent name", "A-Za-z0-9"):
        m.spawn("-starts-with-dash")
    with raises(errno.ENOENT, "parent agent 'ghost' does not exist"):
        m.spawn("orphan", parent="ghost")
    assert m.agents() == ["alpha"]
    with raises(errno.ENOENT, "no agent named 'ghost'"):
        m.agent("ghost")


def test_spawn_records_the_parent(m: Mount) -> None:
    root = m.spawn("root")
    kid = m.spawn("kid", parent="root")
    assert kid.parent() == "root"
    assert root.children() == ["kid"]
    # A process started as an agent is recorded as the spawner by the daemon...
    in_child(f"""
        from agentfs.client import Mount
        Mount({str(m.path)!r}).spawn("grandkid")
    """, AGENTFS_AGENT="kid")
    assert m.agent("grandkid").parent() == "kid"
    # ...unless it names another parent (the mkdir is then made as that agent).
    in_child(f"""
        from agentfs.client import Mount
        Mount({str(m.path)!r}).spawn("adopted", parent="root")
    """, AGENTFS_AGENT="kid")
    assert m.agent("adopted").parent() == "root"
    assert root.children() == ["adopted", "kid"]
    assert m.agent("kid").children() == ["grandkid"]


def test_identity(m: Mount, monkeypatch: pytest.MonkeyPatch) -> None:
    a = m.spawn("who")
    res = in_child(f"""
        import os
        from agentfs.client import Mount
        mnt = Mount({str(m.path)!r})
        print(mnt.identity())
        os.chdir({str(a.path / "workspace")!r})
        print(mnt.identity())
    """)
    pid_line, cwd_line = res.stdout.split()
    assert pid_line.startswith("pid") and cwd_line == "who"
    res = in_child(f"""
        import os
        os.environ["AGENTFS_AGENT"] = "changed-later"   # the daemon cannot see this
        from agentfs.client import Mount
        print(Mount({str(m.path)!r}).identity())
    """, AGENTFS_AGENT="who")
    assert res.stdout.strip() == "who"


def test_append_and_read_the_transcript(m: Mount) -> None:
    a = m.spawn("talker", prompt="Talk.\n")
    a.append(USER)
    a.append(ASSISTANT)
    a.append(RESULT)
    assert a.transcript() == [USER, ASSISTANT, RESULT]
    assert a.status() == ("idle", 3)
    lines = (a.path / "transcript").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [USER, ASSISTANT, RESULT]
    ctx = a.context()
    assert [msg["role"] for msg in ctx["messages"]] == ["user", "assistant", "user"]
    # A big message is still one line, one turn (the kernel splits the write).
    big = {"role": "assistant", "content": "y" * 700_000 + "\n(end)"}
    a.append(big)
    assert a.transcript()[-1] == big
    assert a.status() == ("idle", 4)


def test_append_errors(m: Mount) -> None:
    a = m.spawn("strict")
    with raises(errno.EINVAL, "agents/strict/transcript", "role 'robot'"):
        a.append({"role": "robot", "content": "beep"})
    with raises(errno.EINVAL, "content"):
        a.append({"role": "user", "content": "   "})
    with raises(errno.EINVAL, "not JSON"):
        a.append({"role": "user", "content": float("nan")})
    with raises(errno.EINVAL, "not JSON"):
        a.append({"role": "user", "content": object()})
    assert a.transcript() == [] and a.status() == ("idle", 0)
    gone = Agent(m, "gone")
    with raises(errno.ENOENT, "no agent named 'gone'"):
        gone.append(USER)
    with raises(errno.ENOENT, "no agent named 'gone'"):
        gone.status()


def test_status(m: Mount) -> None:
    a = m.spawn("worker")
    for s in ("running", "waiting", "done", "failed", "idle"):
        a.set_status(s)
        assert a.status() == (s, 0)
    with raises(errno.EINVAL, "status must be one of"):
        a.set_status("sleeping")
    assert "status must be one of" in a.errstr()
    assert a.status() == ("idle", 0)


def test_fork_now_and_at_a_turn(m: Mount) -> None:
    a = m.spawn("origin", prompt="Work.\n")
    for i in range(1, 5):
        (a.path / "workspace" / "step.txt").write_text(f"step {i}\n")
        a.append({"role": "user" if i % 2 else "assistant", "content": f"turn {i}"})
    now = a.fork("now")
    assert isinstance(now, Agent) and now.name == "now"
    assert now.transcript() == a.transcript() and now.status() == ("idle", 4)
    assert now.prompt() == "Work.\n"
    past = a.fork("past", at=2)
    assert [msg["content"] for msg in past.transcript()] == ["turn 1", "turn 2"]
    assert (past.path / "workspace" / "step.txt").read_text() == "step 2\n"
    assert past.status() == ("idle", 2)
    # Copy on write: the fork's changes stay in the fork.
    past.append({"role": "user", "content": "a different future"})
    assert len(a.transcript()) == 4
    assert past.parent() == "origin" and now.parent() == "origin"
    assert a.children() == ["now", "past"]
    assert m.agents() == ["now", "origin", "past"]


def test_fork_errors(m: Mount) -> None:
    a = m.spawn("src")
    a.append(USER)
    with raises(errno.ENOENT, "fork nope at 7", "not 7"):
        a.fork("nope", at=7)
    with raises(errno.ENOENT, "not 0"):
        a.fork("nope", at=0)
    m.spawn("taken")
    with raises(errno.EEXIST):
        a.fork("taken")
    with raises(errno.EINVAL):
        a.fork("bad name!")
    assert m.agents() == ["src", "taken"]
    with raises(errno.ENOENT, "no agent named 'ghost'"):
        Agent(m, "ghost").fork("x")


def test_snapshot_and_remove(m: Mount) -> None:
    a = m.spawn("snap")
    a.append(USER)
    (a.path / "notes" / "todo.md").write_text("- one\n")
    s = a.snapshot("s1")
    a.append({"role": "assistant", "content": "more"})
    assert (s / "transcript").read_text().count("\n") == 1
    assert (s / "notes" / "todo.md").read_text() == "- one\n"
    with raises(errno.EEXIST):
        a.snapshot("s1")
    b = m.spawn("doomed")
    b.remove()
    assert m.agents() == ["snap"]
    with raises(errno.ENOENT):
        b.status()


def test_send_and_recv(m: Mount) -> None:
    a, b = m.spawn("asker"), m.spawn("answerer")
    a.send("answerer", "Which version?\n")
    a.send(b, "Who signs off?\n", name="q2")
    msgs = b.messages()
    assert [(x.seq, x.sender, x.name, x.text) for x in msgs] == [
        (1, "asker", "msg", "Which version?\n"), (2, "asker", "q2", "Who signs off?\n")]
    assert all(isinstance(x, Message) and x.path.parent == b.path / "inbox" for x in msgs)
    first = b.recv(timeout=5, consume=False)
    assert first == msgs[0]
    assert b.recv(timeout=5) == msgs[0]
    assert not msgs[0].path.exists()
    assert b.recv(timeout=0) == msgs[1]
    assert b.messages() == [] and os.listdir(b.path / "inbox") == []
    # As another sender, and as whoever this process is.
    b.send("asker", "2.0\n", sender="someone")
    m.send("asker", b"raw bytes\n")
    got = [a.recv(1), a.recv(1)]
    assert [(x.sender, x.text) for x in got if x] == [
        ("someone", "2.0\n"), (m.identity(), "raw bytes\n")]
    assert m.identity() == f"pid{os.getpid()}" or "AGENTFS_AGENT" in os.environ


def test_sender_and_name_with_dashes(m: Mount) -> None:
    m.spawn("my-agent")
    inbox = m.spawn("inbox-owner")
    m.agent("my-agent").send("inbox-owner", "hi", name="status-report")
    m.send("inbox-owner", "plain", sender="solo", name="a-b-c")
    # SEQ-SENDER+NAME: a sender never holds '+', so either may hold dashes.
    assert [(x.sender, x.name) for x in inbox.messages()] == [
        ("my-agent", "status-report"), ("solo", "a-b-c")]


def test_recv_waits_and_times_out(m: Mount) -> None:
    a = m.spawn("waiter")
    t0 = time.monotonic()
    assert a.recv(timeout=0) is None
    assert time.monotonic() - t0 < 0.5
    t0 = time.monotonic()
    assert a.recv(timeout=0.5) is None
    assert 0.4 < time.monotonic() - t0 < 3
    timer = threading.Timer(0.5, lambda: m.send("waiter", "late\n", sender="clock"))
    timer.start()
    t0 = time.monotonic()
    msg = a.recv(timeout=None)
    timer.join()
    assert msg is not None and (msg.sender, msg.text) == ("clock", "late\n")
    assert 0.3 < time.monotonic() - t0 < 5
    # Waits longer than one round of inbox/.wait (the client waits in rounds
    # so that signals are seen): a message after the first round still arrives.
    timer = threading.Timer(2.6, lambda: m.send("waiter", "later\n", sender="clock"))
    timer.start()
    msg = a.recv(timeout=8)
    timer.join()
    assert msg is not None and msg.text == "later\n"
    t0 = time.monotonic()
    assert a.recv(timeout=2.5) is None
    assert 2.4 < time.monotonic() - t0 < 6


def test_concurrent_receivers_get_each_message_once(m: Mount) -> None:
    a = m.spawn("shared")
    for i in range(6):
        m.send("shared", f"job {i}\n", sender="boss", name=f"job{i}")
    got: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (msg := a.recv(timeout=1)) is not None:
            with lock:
                got.append(msg.text)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == [f"job {i}\n" for i in range(6)]


def test_send_errors(m: Mount) -> None:
    m.spawn("real")
    with raises(errno.ENOENT, "no agent named 'ghost'"):
        m.send("ghost", "hello?")
    with raises(errno.ENOENT, "no agent named 'ghost'"):
        m.send("ghost", "hello?", sender="real")
    with raises(errno.EINVAL):
        m.send("real", "x", name=".in-reserved")
    with raises(errno.EINVAL, "plain file name"):
        m.send("real", "x", name="a/b")
    with raises(errno.ENOENT, "no agent named 'ghost'"):
        Agent(m, "ghost").recv(timeout=0)
    assert m.agent("real").messages() == []


def test_lineage(m: Mount) -> None:
    root = m.spawn("root")
    root.append(USER)
    root.append({"role": "assistant", "content": "ok"})
    m.spawn("kid", parent="root")
    root.fork("branch", at=1)
    recs = {r["name"]: r for r in m.lineage()}
    assert set(recs) == {"root", "kid", "branch"}
    assert recs["root"]["parent"] is None and recs["root"]["kind"] == "spawn"
    assert recs["kid"]["parent"] == "root" and recs["kid"]["origin"] is None
    assert recs["branch"]["kind"] == "fork" and recs["branch"]["origin"] == "root"
    assert recs["branch"]["shared_prefix_turns"] == 1 and recs["branch"]["turns"] == 1
    assert recs["root"]["turns"] == 2 and recs["root"]["status"] == "idle"
    assert [r["name"] for r in m.lineage()][0] == "root"  # parents first


# ================================================================= the CLI


def test_cli_help_lists_the_agent_commands() -> None:
    out = ok(cli("--help"))
    for command in ("spawn", "fork", "send", "recv", "ls", "tree", "log", "export"):
        assert f"  {command} " in out, out


def test_cli_spawn(mount: Any, tmp_path: Path) -> None:
    mnt: Path = mount.path
    out = ok(cli("spawn", "lead", "--mount", mnt))
    assert out.strip() == str(mnt / "agents" / "lead")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Review the patch.\n")
    ok(cli("spawn", "reviewer", "--parent", "lead", "--prompt-file", prompt,
           AGENTFS_MOUNT=str(mnt)))
    assert (mnt / "agents" / "reviewer" / "prompt").read_text() == "Review the patch.\n"
    assert (mnt / "agents" / "reviewer" / "parent").read_text() == "lead\n"
    ok(cli("spawn", "piped", "--prompt-file", "-", input="From stdin.\n", cwd=mnt))
    assert (mnt / "agents" / "piped" / "prompt").read_text() == "From stdin.\n"
    # Spawned from inside an agent's directory: the daemon records the parent.
    ok(cli("spawn", "helper", cwd=mnt / "agents" / "lead" / "workspace"))
    assert (mnt / "agents" / "helper" / "parent").read_text() == "lead\n"
    refused(cli("spawn", "lead", "--mount", mnt), "agent 'lead' exists", "EEXIST")
    refused(cli("spawn", "x", "--parent", "ghost", "--mount", mnt),
            "parent agent 'ghost' does not exist", "ENOENT")
    refused(cli("spawn", "bad name", "--mount", mnt), "agent name", "EINVAL")
    refused(cli("spawn", "x", cwd=tmp_path), "not inside an agentfs mount")


def test_cli_names_resolve(mount: Any, tmp_path: Path) -> None:
    mnt: Path = mount.path
    m = Mount(mnt)
    m.spawn("here").append(USER)
    expect = "here  idle turns=1"
    # --mount (the root or any path inside), $AGENTFS_MOUNT, the current directory.
    assert expect in ok(cli("tree", "--mount", mnt, cwd=tmp_path))
    assert expect in ok(cli("tree", "--mount", mnt / "agents" / "here", cwd=tmp_path))
    assert expect in ok(cli("tree", cwd=tmp_path, AGENTFS_MOUNT=str(mnt)))
    assert expect in ok(cli("tree", cwd=mnt / "agents"))
    # An agent as a name, a path, or "." from inside its directory.
    assert "hello" in ok(cli("log", "here", cwd=mnt))
    assert "hello" in ok(cli("log", mnt / "agents" / "here", cwd=tmp_path))
    assert "hello" in ok(cli("log", "agents/here", cwd=mnt))
    assert "hello" in ok(cli("log", ".", cwd=mnt / "agents" / "here" / "workspace"))
    refused(cli("log", "nobody", cwd=mnt), "no agent named 'nobody'", "ENOENT")
    refused(cli("log", mnt / "elsewhere"), "not an agent's directory")
    refused(cli("log", "here", cwd=tmp_path), "not inside an agentfs mount", "AGENTFS_MOUNT")


def test_cli_fork_agents(mount: Any) -> None:
    mnt: Path = mount.path
    m = Mount(mnt)
    a = m.spawn("main")
    for i in range(1, 4):
        (a.path / "workspace" / "f").write_text(f"v{i}\n")
        a.append({"role": "user" if i % 2 else "assistant", "content": f"turn {i}"})
    ok(cli("fork", "main", "copy", "--mount", mnt))
    assert m.agent("copy").status() == ("idle", 3)
    ok(cli("fork", "main", "early", "--at", "1", cwd=mnt))
    assert len(m.agent("early").transcript()) == 1
    assert (mnt / "agents" / "early" / "workspace" / "f").read_text() == "v1\n"
    ok(cli("fork", mnt / "agents" / "main", mnt / "agents" / "bypath", "--at", "2"))
    assert m.agent("bypath").status() == ("idle", 2)
    ok(cli("fork", "agents/main", "rel", cwd=mnt))
    assert m.agent("rel").parent() == "main"
    refused(cli("fork", "main", "late", "--at", "9", cwd=mnt), "fork late at 9", "not 9",
            "ENOENT")
    refused(cli("fork", "main", "copy", cwd=mnt), "EEXIST")
    refused(cli("fork", "ghost", "x", cwd=mnt), "no agent named 'ghost'")
    refused(cli("fork", "main", mnt / "outside", cwd=mnt), "give DST as a name")
    assert sorted(m.agents()) == ["bypath", "copy", "early", "main", "rel"]


def test_cli_fork_directories_still_work(mount: Any) -> None:
    mnt: Path = mount.path
    (mnt / "dir").mkdir()
    (mnt / "dir" / "f").write_text("data\n")
    ok(cli("fork", mnt / "dir", mnt / "dir2"))
    assert (mnt / "dir2" / "f").read_text() == "data\n"
    ok(cli("fork", "dir", "dir3", cwd=mnt))
    assert (mnt / "dir3" / "f").read_text() == "data\n"
    # A directory inside an agent is forked as a directory.
    a = Mount(mnt).spawn("owner")
    (a.path / "workspace" / "g").write_text("ws\n")
    ok(cli("fork", a.path / "workspace", mnt / "ws-copy"))
    assert (mnt / "ws-copy" / "g").read_text() == "ws\n"
    refused(cli("fork", mnt / "nope", mnt / "x"), str(mnt / "nope"), code=2)
    refused(cli("fork", mnt / "dir" / "f", mnt / "x"), "is a file", code=2)


def test_cli_send_and_recv(mount: Any) -> None:
    mnt: Path = mount.path
    m = Mount(mnt)
    m.spawn("boss")
    m.spawn("dev")
    ok(cli("send", "dev", "--from", "boss", "Ship it", cwd=mnt))
    assert ok(cli("recv", "dev", "--wait", "5", cwd=mnt)) == "boss: Ship it\n"
    # The sender is whoever the CLI runs as: $AGENTFS_AGENT here.
    ok(cli("send", "boss", "Done.", cwd=mnt, AGENTFS_AGENT="dev"))
    ok(cli("send", "boss", "-", "--name", "log", cwd=mnt, input="line 1\nline 2\n",
           AGENTFS_AGENT="dev"))
    kept = json.loads(ok(cli("recv", "boss", "--keep", "--json", cwd=mnt)))
    assert kept["sender"] == "dev" and kept["text"] == "Done.\n" and kept["seq"] == 1
    assert kept["name"] == "msg" and Path(kept["path"]).exists()
    assert ok(cli("recv", "boss", cwd=mnt)) == "dev: Done.\n"
    assert ok(cli("recv", "boss", cwd=mnt)) == "dev: line 1\nline 2\n"
    assert os.listdir(mnt / "agents" / "boss" / "inbox") == []
    # Timeout: exit 1 with a word on stderr.
    t0 = time.monotonic()
    res = refused(cli("recv", "boss", "--wait", "0.5", cwd=mnt), "no message for boss")
    assert time.monotonic() - t0 < 10, res
    # A waiting recv gets a message sent later.
    waiter = subprocess.Popen([*CLI, "recv", "boss", "--wait", "20"], cwd=mnt,
                              env=clean_env(), stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    ok(cli("send", "boss", "wake up", "--from", "dev", cwd=mnt))
    out, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 0 and out == "dev: wake up\n"
    refused(cli("send", "ghost", "hello", cwd=mnt), "no agent named 'ghost'", "ENOENT")
    refused(cli("recv", "ghost", "--wait", "0", cwd=mnt), "no agent named 'ghost'")


def test_cli_recv_is_interruptible(mount: Any) -> None:
    """Ctrl-C ends a waiting recv promptly (the daemon does not serve FUSE
    interrupts, so the client must not block in one long read)."""
    Mount(mount.path).spawn("idle")
    waiter = subprocess.Popen([*CLI, "recv", "idle"], cwd=mount.path, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    t0 = time.monotonic()
    waiter.send_signal(signal.SIGINT)
    _, err = waiter.communicate(timeout=20)
    assert waiter.returncode != 0 and "Traceback" not in err, err
    assert time.monotonic() - t0 < 5


def make_family(m: Mount) -> None:
    lead = m.spawn("lead", prompt="Lead.\n")
    lead.append(USER)
    lead.append(ASSISTANT)
    lead.append(RESULT)
    m.spawn("kid", parent="lead")
    m.spawn("grandkid", parent="kid")
    lead.fork("retry", at=2)
    lead.fork("twin")
    m.spawn("loner")
    m.agent("twin").set_status("running")


def test_cli_ls(mount: Any) -> None:
    m = Mount(mount.path)
    make_family(m)
    lines = ok(cli("ls", "--mount", mount.path)).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "TURNS", "PARENT", "ORIGIN", "COST", "CACHE"]
    rows = {line.split()[0]: line.split()[:5] for line in lines[1:]}
    assert rows == {
        "grandkid": ["grandkid", "idle", "0", "kid", "-"],
        "kid": ["kid", "idle", "0", "lead", "-"],
        "lead": ["lead", "idle", "3", "-", "-"],
        "loner": ["loner", "idle", "0", "-", "-"],
        "retry": ["retry", "idle", "2", "lead", "lead@2"],
        "twin": ["twin", "running", "3", "lead", "lead@3"],
    }  # COST and CACHE: tests/mount/test_tree_graph_cli.py
    assert list(rows) == sorted(rows)
    assert ok(cli("ls", "--mount", mount.path)) == ok(cli("ls", cwd=mount.path))


def test_cli_ls_on_an_empty_mount(mount: Any) -> None:
    assert ok(cli("ls", cwd=mount.path)).split() == ["NAME", "STATUS", "TURNS", "PARENT",
                                                      "ORIGIN", "COST", "CACHE"]
    assert ok(cli("tree", cwd=mount.path)) == ""
    assert ok(cli("export", cwd=mount.path)) == ""


def test_cli_tree(mount: Any) -> None:
    m = Mount(mount.path)
    make_family(m)
    assert ok(cli("tree", cwd=mount.path)) == textwrap.dedent("""\
        lead  idle turns=3
        ├── kid  idle turns=0
        │   └── grandkid  idle turns=0
        ├── retry  fork@2  idle turns=2
        └── twin  fork@3  running turns=3
        loner  idle turns=0
    """)
    # A parent that was removed leaves its children as roots, marked.
    m.agent("kid").remove()
    out = ok(cli("tree", cwd=mount.path))
    assert "grandkid  idle turns=0  (parent kid is gone)\n" in out.splitlines(True)


def test_cli_tree_survives_a_parent_cycle(mount: Any) -> None:
    m = Mount(mount.path)
    m.spawn("x")
    m.spawn("y", parent="x")
    (m.agent("x").path / "parent").write_text("y\n")  # set once, after the fact
    out = ok(cli("tree", cwd=mount.path))
    assert out == "x  idle turns=0\n└── y  idle turns=0\n"


def test_cli_log(mount: Any) -> None:
    m = Mount(mount.path)
    a = m.spawn("talker")
    a.append(USER)
    a.append(ASSISTANT)
    a.append(RESULT)
    a.append({"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm " * 50, "signature": "sig"},
        {"type": "text", "text": "Two\nlines."},
        {"type": "tool_use", "id": "toolu_2", "name": "bash", "input": {"command": "x"}}]})
    a.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
         "content": [{"type": "text", "text": "boom"}]},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}}]})
    out = ok(cli("log", "talker", cwd=mount.path))
    lines = out.splitlines()
    headers = [line for line in lines if line.startswith("──")]
    assert [h.split()[1:3] for h in headers] == [["1", "user"], ["2", "assistant"],
                                                ["3", "user"], ["4", "assistant"],
                                                ["5", "user"]]
    assert "  hello" in lines
    assert "  Let me look." in lines
    assert '  → tool_use bash [toolu_1] {"command": "ls -l"}' in lines
    result = next(line for line in lines if "tool_result [toolu_1]" in line)
    assert "4 line(s), 306 chars: a" in result and "x" * 300 not in out
    assert any(line.startswith("  [thinking] hmm") and "(200 chars)" in line for line in lines)
    assert "  Two" in lines and "  lines." in lines
    assert "  ← tool_result [toolu_2] ERROR 1 line(s), 4 chars: boom" in lines
    assert "  [image image/png]" in lines
    full = ok(cli("log", "talker", "--full", cwd=mount.path))
    assert "x" * 300 in full and "hmm " * 49 in full
    assert ok(cli("log", m.spawn("silent").path)) == ""


def test_cli_export(mount: Any) -> None:
    m = Mount(mount.path)
    make_family(m)
    recs = [json.loads(line) for line in ok(cli("export", cwd=mount.path)).splitlines()]
    by = {r["name"]: r for r in recs}
    assert set(by) == {"lead", "kid", "grandkid", "retry", "twin", "loner"}
    for r in recs:
        assert {"name", "parent", "origin", "kind", "shared_prefix_turns", "turns",
                "status"} <= set(r)
    assert by["retry"] | {"inferred": True} == {
        "name": "retry", "parent": "lead", "origin": "lead", "kind": "fork",
        "shared_prefix_turns": 2, "turns": 2, "status": "idle", "inferred": True}
    assert by["twin"]["shared_prefix_turns"] == 3 and by["twin"]["status"] == "running"
    assert by["grandkid"]["parent"] == "kid" and by["grandkid"]["kind"] == "spawn"
    assert by["lead"]["parent"] is None and by["lead"]["turns"] == 3
    order = [r["name"] for r in recs]
    assert order.index("lead") < order.index("kid") < order.index("grandkid")
    assert recs == m.lineage()
