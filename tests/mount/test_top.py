"""`agentfs top` in a real terminal: tmux runs it at 80x24 against a real
mount while the test spawns, forks, messages and runs agents; the screen is
read with `tmux capture-pane` and keys are typed with `tmux send-keys`.

Each test has a tmux server of its own (its socket in the test's tmp_path),
killed in teardown; every wait is bounded. The idle test measures the daemon's CPU time (utime + stime of
/proc/PID/stat) over 10 s with top running and nothing happening.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from agentfs.client import Agent, Mount
from agentfs.client.fake_messages_api import FakeMessagesAPI, Script, text

pytestmark = pytest.mark.agentfs_only

CLI = [sys.executable, "-m", "agentfs.cli"]
WAIT = 30.0  # seconds any one screen may take to show what it should (a loaded 2-core VM)
TREE_CHARS = " │├└─>"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFS_", "ANTHROPIC_"))}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8", **extra)
    return env


class Tmux:
    """One tmux server (its own socket) with one 80x24 session running a command."""

    def __init__(self, socket: Path) -> None:
        self.socket = str(socket)  # in the test's tmp_path: nothing left in /tmp/tmux-UID

    def tmux(self, *args: str) -> str:
        res = subprocess.run(["tmux", "-u", "-S", self.socket, *args], capture_output=True,
                             text=True, env=clean_env(), timeout=10)
        assert res.returncode == 0, f"tmux {args}: {res.stderr}"
        return res.stdout

    def start(self, argv: list[str]) -> None:
        # The shell line outlives top so that its exit status (or traceback) stays readable.
        line = f"{shlex.join(argv)}; echo top exited $?; sleep 600"
        self.tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "top", line)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "top", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "top", "-l", text)

    def wait(self, cond: Callable[[str], Any], what: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if "top exited" in screen and "top exited" not in what:
                break
            if cond(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"the screen never showed {what}:\n{screen}")

    def wait_text(self, *texts: str, timeout: float = WAIT) -> str:
        return self.wait(lambda s: all(t in s for t in texts), repr(texts), timeout)

    def pane_pid(self) -> int:
        return int(self.tmux("display-message", "-p", "-t", "top", "#{pane_pid}").strip())

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=10)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path / "tmux.sock")
    try:
        yield t
    finally:
        t.kill()


def start_top(tmux: Tmux, mnt: Path) -> None:
    tmux.start([*CLI, "top", "--mount", str(mnt)])
    tmux.wait_text("AGENT", "TOTAL")


def rows(screen: str) -> dict[str, list[str]]:
    """Table lines by agent name (tree drawing and fork marks taken off):
    [STATE, TURNS, IN, OUT, CACHE, COST, INBOX, LAST]."""
    out = {}
    for line in screen.splitlines():
        words = line.lstrip(TREE_CHARS).split()
        if len(words) >= 9 and words[2].isdigit() and words[0] not in ("TOTAL", "AGENT"):
            out[words[0].split("@")[0]] = words[1:]
    return out


def selected(screen: str) -> str | None:
    for line in screen.splitlines():
        if line.startswith("> "):
            return line.lstrip(TREE_CHARS).split()[0].split("@")[0]
    return None


def select(tmux: Tmux, name: str) -> None:
    """Move the selection to `name` with the arrow keys and j/k."""
    names = list(rows(tmux.screen()))
    for _ in range(2 * len(names) + 2):
        screen = tmux.screen()
        now = selected(screen)
        if now == name:
            return
        order = list(rows(screen))
        tmux.keys("j" if now is None or order.index(now) < order.index(name) else "Up")
        tmux.wait(lambda s, was=now: selected(s) != was, "the selection moving", timeout=10)
    raise AssertionError(f"could not select {name}:\n{tmux.screen()}")


def usage(name: str, n_in: int, write: int, read: int, out: int, cost: float) -> str:
    return (f"agent {name}\nmodel claude-sonnet-4-6\nrequests 1\ninput_tokens {n_in}\n"
            f"cache_creation_input_tokens {write}\ncache_read_input_tokens {read}\n"
            f"output_tokens {out}\ncache_read_share 0\ncost_usd {cost}\n")


def put_usage(a: Agent, text_: str) -> None:
    """Write agents/NAME/usage the way agentfs run does: a temp file, then rename."""
    tmp = a.path / ".usage.tmp-test"
    tmp.write_text(text_)
    os.replace(tmp, a.path / "usage")


USER = {"role": "user", "content": "Plan the release."}


def reply(words: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": words}]}


def lead(m: Mount, name: str, words: str) -> Agent:
    """An agent with two turns and the usage file of one request (10k prompt
    tokens, 79% of them read from the cache, 50 out, $0.0123)."""
    a = m.spawn(name, prompt="Lead.")
    a.append(USER)
    a.append(reply(words))
    put_usage(a, usage(name, 100, 2000, 7900, 50, 0.0123))
    return a


def test_top_shows_the_agents_and_keeps_up(mount: Any, tmux: Tmux) -> None:
    m = Mount(mount.path)
    alice = lead(m, "alice", "On it.")
    m.spawn("bob", parent="alice")
    alice.fork("alice-2", at=1)
    start_top(tmux, mount.path)
    screen = tmux.wait(lambda s: {"alice", "alice-2", "bob"} <= set(rows(s)), "three agents")
    r = rows(screen)
    assert r["alice"][:7] == ["idle", "2", "10.0k", "50", "79%", "$0.012", "0"]
    assert r["alice-2"][:7] == ["idle", "1", "-", "-", "-", "-", "0"]  # no request of its own
    assert r["bob"][:2] == ["idle", "0"] and r["bob"][7] == "-"
    assert "├─alice-2@1" in screen and "└─bob" in screen  # both children of alice
    total = next(line for line in screen.splitlines() if "TOTAL" in line).split()
    assert total == ["TOTAL", "3", "agents", "3", "10.0k", "50", "79%", "$0.012", "0"]
    assert all(len(line) <= 80 for line in screen.splitlines())

    # activity while it runs: a spawn, a message, a status, a turn and usage of bob
    m.spawn("carol", parent="bob")
    m.send("bob", "ping")
    alice.set_status("running")
    bob = m.agent("bob")
    bob.append(USER)
    put_usage(bob, usage("bob", 1000, 0, 3000, 400, 0.5))
    bob.append(reply("pong"))
    screen = tmux.wait(lambda s: "carol" in rows(s) and rows(s)["bob"][:7] == [
        "idle", "2", "4.0k", "400", "75%", "$0.500", "1"] and rows(s)["alice"][0] == "running",
        "carol, bob's message, turns and figures, alice running")
    assert "└─carol" in screen
    assert rows(screen)["bob"][7].endswith("s")  # its last turn: seconds ago
    # the same table without a terminal (--once, or stdout not a tty)
    for args in (["--once"], []):
        res = subprocess.run([*CLI, "top", "--mount", str(mount.path), *args],
                             capture_output=True, text=True, env=clean_env(COLUMNS="80"),
                             timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        without_last = {k: v[:7] for k, v in rows(res.stdout).items()}  # LAST ticks on
        assert without_last == {k: v[:7] for k, v in rows(screen).items()}

    # m: a message to the selected agent
    select(tmux, "bob")
    tmux.keys("m")
    tmux.wait_text("message to bob:")
    tmux.type("hello from top")
    tmux.keys("Enter")
    tmux.wait_text("sent to bob: hello from top")
    texts = [msg.text for msg in bob.messages()]
    assert texts == ["ping", "hello from top\n"]
    tmux.wait(lambda s: rows(s)["bob"][6] == "2", "bob's inbox at 2")

    # f: a fork, now and at a turn
    tmux.keys("f")
    tmux.wait_text("fork bob as NEW [TURN]:")
    tmux.type("bob-fork")
    tmux.keys("Enter")
    screen = tmux.wait(lambda s: "bob-fork" in rows(s), "the fork")
    assert "bob-fork@2" in screen and "forked bob -> bob-fork" in screen
    assert m.agent("bob-fork").transcript() == bob.transcript()
    select(tmux, "bob")
    tmux.keys("f")
    tmux.wait_text("fork bob as NEW [TURN]:")
    tmux.type("bob-at-1 at 1")
    tmux.keys("Enter")
    screen = tmux.wait(lambda s: "bob-at-1" in rows(s), "the fork at turn 1")
    assert "bob-at-1@1" in screen and rows(screen)["bob-at-1"][1] == "1"
    assert len(m.agent("bob-at-1").transcript()) == 1
    # a refused fork says why, and changes nothing
    select(tmux, "bob")
    tmux.keys("f")
    tmux.wait_text("fork bob as NEW [TURN]:")
    tmux.type("alice")
    tmux.keys("Enter")
    tmux.wait_text("fork bob:", "EEXIST")
    # esc cancels a question
    tmux.keys("m")
    tmux.wait_text("message to bob:")
    tmux.type("never sent")
    tmux.keys("Escape")
    tmux.wait_text("cancelled")
    assert len(bob.messages()) == 2

    # enter: the log; t follows the transcript as it grows
    select(tmux, "alice")
    tmux.keys("Enter")
    screen = tmux.wait_text("agents/alice/transcript", "── 1 user", "── 2 assistant", "On it.")
    tmux.keys("t")
    tmux.wait_text("following")
    alice.append(USER)
    alice.append(reply("A line that came while following."))
    tmux.wait_text("── 4 assistant", "A line that came while following.")
    tmux.keys("q")
    tmux.wait(lambda s: rows(s).get("alice", ["", ""])[1] == "4", "the table again, alice at 4 turns")
    tmux.keys("q")
    tmux.wait_text("top exited 0")
    mount.fsck()


def test_stop_key_stops_a_runner_or_a_stale_status(mount: Any, tmux: Tmux) -> None:
    m = Mount(mount.path)
    a = m.spawn("worker", prompt="Say hello, then wait for mail.")
    stale = m.spawn("stale")
    stale.set_status("running")  # as a runner killed outright leaves it
    with FakeMessagesAPI(Script([text("hello")])) as api:
        env = clean_env(**api.env())
        runner = subprocess.Popen([*CLI, "run", "worker", "--mount", str(mount.path), "--wait",
                                   "300", "--model", "claude-sonnet-4-6", "-q"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env, cwd="/", stdin=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            start_top(tmux, mount.path)
            screen = tmux.wait(lambda s: rows(s).get("worker", [""])[0] == "waiting",
                               "the runner waiting for mail")
            assert rows(screen)["worker"][1] == "1"  # the reply (the task is the prompt)
            assert rows(screen)["worker"][3] != "-"  # the runner's usage file: its figures
            select(tmux, "worker")
            tmux.keys("s")
            tmux.wait_text("stop worker? y/N:")
            tmux.keys("n", "Enter")
            tmux.wait_text("not stopped")
            assert runner.poll() is None
            tmux.keys("s")
            tmux.wait_text("stop worker? y/N:")
            tmux.keys("y", "Enter")
            tmux.wait_text("SIGTERM to its runner")
            out, err = runner.communicate(timeout=WAIT)
            assert runner.returncode == 130, out + err
            tmux.wait(lambda s: rows(s)["worker"][0] == "idle", "the worker idle")
        finally:
            if runner.poll() is None:
                os.killpg(runner.pid, signal.SIGKILL)
                runner.communicate()
    assert a.status()[0] == "idle"
    select(tmux, "stale")
    tmux.keys("s")
    tmux.wait_text("stop stale? y/N:")
    tmux.keys("y", "Enter")
    tmux.wait_text("stale: no runner alive; status running -> idle")
    tmux.wait(lambda s: rows(s)["stale"][0] == "idle", "the stale status cleared")
    assert stale.status()[0] == "idle"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_top_costs_the_daemon_almost_nothing(mount: Any, tmux: Tmux) -> None:
    m = Mount(mount.path)
    boss = lead(m, "lead", "Forking.")
    for i in range(3):
        boss.fork(f"fork-{i}", at=1)
        m.spawn(f"helper-{i}", parent="lead")
        m.send(f"helper-{i}", "task")
    start_top(tmux, mount.path)
    tmux.wait(lambda s: len(rows(s)) == 7, "seven agents")
    assert mount.proc is not None
    daemon, top = mount.proc.pid, tmux.pane_pid()
    time.sleep(2)  # let what the start stirred up settle
    d0, t0, w0 = cpu_seconds(daemon), cpu_seconds_tree(top), time.monotonic()
    time.sleep(10)
    d1, t1, w1 = cpu_seconds(daemon), cpu_seconds_tree(top), time.monotonic()
    share = (d1 - d0) / (w1 - w0)
    print(f"\nidle top, 7 agents, {w1 - w0:.1f} s: daemon CPU {d1 - d0:.2f} s = {share:.2%}; "
          f"top itself {t1 - t0:.2f} s = {(t1 - t0) / (w1 - w0):.2%}")
    assert share < 0.01
    assert len(rows(tmux.screen())) == 7  # still showing them all


def cpu_seconds_tree(pid: int) -> float:
    """CPU time of `pid` and its children (the pane's shell runs top)."""
    total = cpu_seconds(pid)
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return total + sum(cpu_seconds_tree(int(k)) for k in kids)


def test_many_agents_scroll_within_80x24(mount: Any, tmux: Tmux) -> None:
    m = Mount(mount.path)
    long = "a-name-much-too-long-for-the-agent-column"
    names = [f"agent-{i:02d}" for i in range(30)] + [long]
    for n in names:
        m.spawn(n)
    start_top(tmux, mount.path)
    cut = long[:23] + "…"  # it sorts first; cut to the 24 characters of its column
    screen = tmux.wait(lambda s: cut in rows(s) and "agent-00" in rows(s), "the first agents")
    lines = screen.splitlines()
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
    shown = rows(screen)
    assert 15 <= len(shown) < len(names)  # a screenful, the totals line still in view
    assert "TOTAL" in screen and "TOTAL 31 agents" in screen
    tmux.keys("End")
    screen = tmux.wait(lambda s: selected(s) == "agent-29", "the last agent selected")
    assert "agent-00" not in rows(screen) and cut not in rows(screen) and "TOTAL" in screen
    tmux.keys("Home")
    screen = tmux.wait(lambda s: selected(s) == cut, "the first agent selected again")
    assert "agent-29" not in rows(screen)
    tmux.keys("PageDown")
    tmux.wait(lambda s: selected(s) == "agent-09", "ten agents further")
