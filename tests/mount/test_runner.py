"""`agentfs run` (agentfs.client.runner) end to end: a real mount, the fake
Messages API (agentfs.client.fake_messages_api) and its prompt-cache simulator.

Covered: several tool turns in a workspace (files really change, the
transcript is valid, each request is the daemon's rendering as is, usage
adds up), a masked tool, API errors the SDK retries (429, 529, 500) and one
it gives up on, no API key, Ctrl-C during a tool and during a request and a
killed runner (each followed by a resume), two runner processes talking
through ask_parent, and a fan-out of 5 forks whose first requests read their
origin's prefix from the cache, the first fork warming it alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import pytest
from agentfs.client import Agent, Mount
from agentfs.client.fake_messages_api import (
    FakeMessagesAPI,
    RecordedRequest,
    Script,
    delay,
    error,
    last_user_text,
    reply,
    text,
    tool_use,
    tool_use_block,
)
from agentfs.client.runner import DEFAULT_SYSTEM, Usage, price, run_agent
from agentfs.client.tools import TOOL_DEFINITIONS

from agentfs.agents.render import CompactionState, Policy, canonical, is_extension, render

pytestmark = pytest.mark.agentfs_only

CLI = [sys.executable, "-m", "agentfs.cli"]
MODEL = "claude-sonnet-4-6"
LONG = ("You maintain a small project in your workspace. " * 120).strip()


def env_for(api: FakeMessagesAPI | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AGENTFS_", "ANTHROPIC_"))}
    if api is not None:
        env.update(api.env())
    env.update(extra)
    return env


def run_cli(agent: Agent, api: FakeMessagesAPI | None, *args: str, timeout: float = 60,
            **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "run", str(agent.path), *args], capture_output=True,
                          text=True, env=env_for(api, **extra), timeout=timeout, cwd="/",
                          stdin=subprocess.DEVNULL)


def start_cli(agent: Agent, api: FakeMessagesAPI, *args: str) -> subprocess.Popen[str]:
    """A runner in a session of its own (the test can kill what it leaves)."""
    return subprocess.Popen([*CLI, "run", str(agent.path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for(api), cwd="/",
                            stdin=subprocess.DEVNULL, start_new_session=True)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}:\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return res.stdout


def wait_for(cond: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def check_transcript(lines: list[dict[str, Any]]) -> None:
    """Every line a message; merged roles alternate from the prompt's user turn;
    every tool_use is answered, in order, by the next line, and nothing else is."""
    role = "user"  # the rendered prompt
    pending: list[str] = []
    for i, line in enumerate(lines, 1):
        assert set(line) == {"role", "content"}, line
        blocks = line["content"] if isinstance(line["content"], list) else []
        results = [b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"]
        if pending:
            assert line["role"] == "user" and results == pending, f"line {i}: {line}"
            pending = []
        else:
            assert not results, f"line {i}: results without calls"
        if line["role"] == "assistant":
            assert role == "user", f"line {i}: two assistant turns in a row"
            pending = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        role = line["role"]
    assert not pending, "the transcript ends with unanswered tool calls"


def sent(r: RecordedRequest) -> dict[str, Any]:
    """The part of a request the daemon rendered."""
    return {k: v for k, v in r.body.items() if k in ("system", "tools", "messages")}


def status(agent: Agent) -> str:
    return agent.status()[0]


@pytest.fixture
def m(mount: Any) -> Mount:
    return Mount(mount.path)


# ---------------------------------------------------------------- one agent


def test_tool_turns_in_the_workspace(m: Mount, tmp_path: Path) -> None:
    a = m.spawn("solo", prompt=LONG)
    ws = a.path / "workspace"
    outside = tmp_path / "outside"
    outside.mkdir()
    script = Script([
        tool_use("write", {"file_path": "src/app.py", "content": "print('hello')\n"}),
        tool_use("bash", {"command": "python3 src/app.py > out.txt; cat out.txt; "
                                     "echo agent=$AGENTFS_AGENT; ln -s " + str(outside) + " esc"}),
        reply("Two at once.",
              tool_use_block("edit", {"file_path": "src/app.py", "old_string": "hello",
                                      "new_string": "bye"}),
              tool_use_block("read", {"file_path": "src/app.py"})),
        tool_use("glob", {"pattern": "**/*.py"}),
        tool_use("grep", {"pattern": "bye"}),
        reply(tool_use_block("write", {"file_path": "../prompt", "content": "x"}),
              tool_use_block("write", {"file_path": "esc/owned.txt", "content": "x"}),
              tool_use_block("bash", {"command": "(exit 3)"})),
        tool_use("memory", {"command": "create", "path": "/memories/todo.md",
                            "file_text": "- [x] app prints bye\n"}),
        text("All done."),
    ])
    with (FakeMessagesAPI(script, min_cache_tokens=64) as api,
          anthropic.Anthropic(base_url=api.base_url, api_key="test", max_retries=0) as client):
        result = run_agent(a.path, model=MODEL, client=client)
        reqs = api.messages_requests()
        totals = api.totals()
    assert result.status == "done" and result.reason == "end_turn", result
    assert result.requests == 8 and result.turns == 15
    assert status(a) == "done"
    # The workspace really changed, and nothing escaped it.
    assert (ws / "src/app.py").read_text() == "print('bye')\n"
    assert (ws / "out.txt").read_text() == "hello\n"
    assert not (outside / "owned.txt").exists()
    assert (a.path / "prompt").read_text() == LONG
    assert (a.path / "notes/todo.md").read_text() == "- [x] app prints bye\n"
    lines = a.transcript()
    check_transcript(lines)
    results = [b for line in lines if line["role"] == "user" for b in line["content"]]
    by_id = {b["tool_use_id"]: b for b in results}
    calls = [b for line in lines if line["role"] == "assistant" for b in line["content"]
             if b["type"] == "tool_use"]
    out = {c["name"] + str(i): by_id[c["id"]] for i, c in enumerate(calls)}
    assert out["bash1"]["content"] == "hello\nagent=solo" and "is_error" not in out["bash1"]
    assert out["read3"]["content"] == "print('bye')\n"
    assert out["glob4"]["content"] == "src/app.py"  # relative to the workspace
    assert out["grep5"]["content"] == "src/app.py:1:print('bye')"
    assert out["write6"]["is_error"] and "outside" in out["write6"]["content"]
    assert out["write7"]["is_error"] and "outside" in out["write7"]["content"]  # symlink
    assert out["bash8"]["is_error"] and "[exit status 3]" in out["bash8"]["content"]
    # Tools and system were written once, on the first turn, and sent as written.
    assert json.loads((a.path / "tools.json").read_text()) == TOOL_DEFINITIONS
    assert (a.path / "system").read_text().strip() == DEFAULT_SYSTEM
    # Each request is the daemon's rendering as is: the last one equals the
    # reference render of the transcript before it, and each extends the last.
    policy, state = Policy(), CompactionState()
    body, _ = render(".", DEFAULT_SYSTEM + "\n", TOOL_DEFINITIONS, LONG, lines[:-1],
                     "- [x] app prints bye\n", policy, state)
    assert canonical(sent(reqs[-1])) == canonical(json.loads(body))
    for r in reqs:
        assert set(r.body) == {"system", "tools", "messages", "model", "max_tokens", "stream"}
        assert r.body["model"] == MODEL and "tool_choice" not in r.body
    for prev, new in zip(reqs, reqs[1:], strict=False):
        assert is_extension(sent(prev), sent(new))
        assert sent(new)["tools"] == sent(reqs[0])["tools"]
    # Usage: the server's figures, priced.
    u = Usage.parse((a.path / "usage").read_text())
    assert (u.agent, u.model, u.requests) == ("solo", MODEL, 8)
    assert (u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens,
            u.output_tokens) == (totals.input, totals.cache_creation, totals.cache_read,
                                 totals.output)
    p_in, p_out = price(MODEL)
    cost = (totals.input * p_in + totals.cache_creation * p_in * 1.25
            + totals.cache_read * p_in * 0.1 + totals.output * p_out) / 1e6
    assert abs(u.cost_usd - cost) < 1e-5
    share = totals.cache_read / (totals.input + totals.cache_creation + totals.cache_read)
    assert f"cache_read_share {share:.4f}" in (a.path / "usage").read_text()
    assert share > 0.8
    assert not (a.path / "runner.pid").exists()


def test_masked_tool_is_refused_and_the_tool_list_kept(m: Mount) -> None:
    a = m.spawn("masked", prompt="Try the shell.")
    (a.path / "tools.mask").write_text("# no shell for this one\nbash\n")
    script = Script([tool_use("bash", {"command": "touch made.txt"}), text("ok"),
                     text("nothing to call")])
    with FakeMessagesAPI(script, min_cache_tokens=64) as api:
        ok(run_cli(a, api, "--model", MODEL))
        lines = a.transcript()
        check_transcript(lines)
        res = lines[1]["content"][0]
        assert res["is_error"] and "masked" in res["content"]
        assert not (a.path / "workspace/made.txt").exists()
        # Every tool masked: tool_choice none, the tool list unchanged.
        names = [t["name"] for t in TOOL_DEFINITIONS]
        (a.path / "tools.mask").write_text("\n".join(names) + "\n")
        m.send("masked", "one more thing", sender="human")
        ok(run_cli(a, api, "--model", MODEL))
        reqs = api.messages_requests()
    assert "tool_choice" not in reqs[0].body and "tool_choice" not in reqs[1].body
    assert reqs[2].body["tool_choice"] == {"type": "none"}
    assert reqs[2].body["tools"] == reqs[0].body["tools"]
    last_user = a.transcript()[-2]
    assert last_user == {"role": "user", "content": [
        {"type": "text", "text": '<message from="human" name="msg">\none more thing\n</message>'}]}
    assert status(a) == "done"


# ---------------------------------------------------------------- errors


def test_api_errors_are_retried_then_a_final_one_fails_cleanly(m: Mount) -> None:
    a = m.spawn("flaky", prompt="Say hi from the shell.")
    script = Script([
        error(429, retry_after=0.01), error(529, retry_after=0.01),
        error(500, retry_after=0.01),
        tool_use("bash", {"command": "echo hi"}),
        error(529, retry_after=0.01),
        text("done"),
        # second run: more overloads than the retries allow
        error(529, retry_after=0.01), error(529, retry_after=0.01),
    ])
    with FakeMessagesAPI(script, min_cache_tokens=64) as api:
        out = ok(run_cli(a, api, "--model", MODEL, "--max-retries", "3"))
        assert "done" in out
        statuses = [r.status for r in api.messages_requests()]
        assert statuses == [429, 529, 500, 200, 529, 200]
        lines = a.transcript()
        check_transcript(lines)
        assert len(lines) == 3 and lines[1]["content"][0]["content"] == "hi"
        u = Usage.parse((a.path / "usage").read_text())
        assert u.requests == 2  # only answered requests are billed
        m.send("flaky", "again?", sender="human")
        res = run_cli(a, api, "--model", MODEL, "--max-retries", "1")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "529" in res.stdout and "overloaded" in res.stdout.lower()
    assert status(a) == "failed"
    lines = a.transcript()
    check_transcript(lines)
    assert len(lines) == 4 and lines[-1]["role"] == "user"  # the message, nothing half done
    assert Usage.parse((a.path / "usage").read_text()).requests == 2


def test_no_api_key_is_one_clear_line(m: Mount) -> None:
    a = m.spawn("nokey", prompt="hello")
    res = run_cli(a, None)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "ANTHROPIC_API_KEY" in err[0], res.stderr
    assert a.transcript() == [] and status(a) == "idle"
    assert (a.path / "tools.json").read_text() == "[]\n"


# ---------------------------------------------------------------- Ctrl-C and resume


def transcript_len(a: Agent) -> int:
    return len(a.transcript())


def test_ctrl_c_during_a_tool_then_resume(m: Mount) -> None:
    a = m.spawn("slow", prompt="Wait a while.")
    script = Script([tool_use("bash", {"command": "touch started; sleep 30; touch finished"}),
                     text("resumed and done")])
    with FakeMessagesAPI(script, min_cache_tokens=64) as api:
        p = start_cli(a, api, "--model", MODEL)
        try:
            wait_for(lambda: (a.path / "workspace/started").exists(), what="the tool to start")
            t0 = time.monotonic()
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        assert p.returncode == 130, out + err
        assert time.monotonic() - t0 < 10
        assert "Traceback" not in err
        lines = a.transcript()
        check_transcript(lines)
        assert len(lines) == 2
        res = lines[1]["content"][0]
        assert res["is_error"] and "interrupted before the tool finished" in res["content"]
        assert status(a) == "idle"
        time.sleep(0.3)
        assert not (a.path / "workspace/finished").exists()  # the command was stopped
        ok(run_cli(a, api))  # resume: the model sees the interruption, goes on
    lines = a.transcript()
    check_transcript(lines)
    assert len(lines) == 3 and lines[2]["content"][0]["text"] == "resumed and done"
    assert status(a) == "done"
    assert Usage.parse((a.path / "usage").read_text()).model == MODEL  # kept across runs


def test_ctrl_c_during_a_request_then_resume(m: Mount) -> None:
    a = m.spawn("waiting", prompt="Answer slowly.")
    script = Script([delay(30, then=text("too late")), text("second try")])
    with FakeMessagesAPI(script, min_cache_tokens=64) as api:
        p = start_cli(a, api, "--model", MODEL)
        try:
            wait_for(lambda: api.messages_requests(), what="the request")
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        assert p.returncode == 130, out + err
        assert a.transcript() == [] and status(a) == "idle"
        ok(run_cli(a, api))
    lines = a.transcript()
    assert lines == [{"role": "assistant", "content": [{"type": "text", "text": "second try"}]}]


def test_killed_runner_is_resumed_with_results_for_its_open_calls(m: Mount) -> None:
    a = m.spawn("crashy", prompt="Two slow things.")
    script = Script([reply(tool_use_block("bash", {"command": "touch a; sleep 30"}),
                           tool_use_block("bash", {"command": "echo never"})),
                     text("ok, carrying on")])
    with FakeMessagesAPI(script, min_cache_tokens=64) as api:
        p = start_cli(a, api, "--model", MODEL)
        try:
            wait_for(lambda: (a.path / "workspace/a").exists(), what="the tool to start")
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=20)
        lines = a.transcript()
        assert len(lines) == 1 and lines[0]["role"] == "assistant"  # open calls
        m.send("crashy", "are you there?", sender="human")
        ok(run_cli(a, api))
        body = api.messages_requests()[-1].body
    lines = a.transcript()
    check_transcript(lines)
    first, second, note = lines[1]["content"]
    assert first["is_error"] and "interrupted before the tool finished" in first["content"]
    assert second["is_error"] and "interrupted" in second["content"]
    assert note["type"] == "text" and "are you there?" in note["text"]
    assert lines[2]["content"][0]["text"] == "ok, carrying on"
    assert body["messages"][-1]["content"][:2] == lines[1]["content"][:2]
    assert status(a) == "done"


# ---------------------------------------------------------------- two runners


def test_child_asks_its_parent_through_two_runners(m: Mount) -> None:
    parent = m.spawn("boss", prompt="Delegate the colour choice.", system="PARENT-AGENT")
    boss = Script([
        tool_use("spawn", {"name": "kid", "prompt": "Paint the fence; ask boss the colour."}),
        tool_use("wait_for_message", {"timeout": 40}),
        tool_use("send", {"to": "kid", "text": "blue"}),
        tool_use("wait_for_message", {"timeout": 40}),
        text("the fence is painted"),
    ])
    kid = Script([
        tool_use("ask_parent", {"question": "Which colour?", "timeout": 40}),
        tool_use("write", {"file_path": "fence.txt", "content": "blue\n"}),
        tool_use("send", {"to": "boss", "text": "painted"}),
        text("done painting"),
    ])

    def route(body: dict[str, Any]) -> Any:
        system = "".join(b["text"] for b in body["system"])
        return boss(body) if "PARENT-AGENT" in system else kid(body)

    with FakeMessagesAPI(route, min_cache_tokens=64) as api:
        ok(run_cli(parent, api, "--model", MODEL))
        errors = api.responder_errors
    assert errors == []
    child = m.agent("kid")
    assert child.parent() == "boss"
    assert status(parent) == "done" and status(child) == "done"
    assert (child.path / "workspace/fence.txt").read_text() == "blue\n"
    check_transcript(parent.transcript())
    check_transcript(child.transcript())
    results = [b["content"] for line in child.transcript() if line["role"] == "user"
               for b in line["content"] if b["type"] == "tool_result"]
    assert results[0] == '<message from="boss" name="msg">\nblue\n</message>'
    got = [b["content"] for line in parent.transcript() if line["role"] == "user"
           for b in line["content"] if b["type"] == "tool_result"]
    assert got[1] == '<message from="kid" name="question">\nWhich colour?\n</message>'
    assert got[3] == '<message from="kid" name="msg">\npainted\n</message>'
    assert (child.path / "run.log").exists()
    assert Usage.parse((child.path / "usage").read_text()).agent == "kid"


# ---------------------------------------------------------------- forks and the cache


def test_fork_fan_out_reads_the_parent_prefix_from_the_cache(m: Mount) -> None:
    a = m.spawn("lead", prompt=LONG)
    forks = [f"f{i}" for i in range(1, 6)]
    lead = Script([
        tool_use("bash", {"command": "echo ready"}),
        reply("Fanning out.", *(tool_use_block("fork", {"name": f, "message": f"Take part {f}."})
                                for f in forks)),
        text("forked"),
    ])
    arrivals: dict[str, float] = {}
    answered: dict[int, float] = {}

    def route(body: dict[str, Any]) -> Any:
        found = re.search(r"You are agent (f\d), forked from lead", last_user_text(body))
        if found:
            arrivals.setdefault(found.group(1), time.monotonic())
            return text(f"{found.group(1)} done")
        return lead(body)

    with FakeMessagesAPI(route, min_cache_tokens=64,
                         on_request=lambda r: answered.setdefault(r.seq, time.monotonic())
                         ) as api:
        ok(run_cli(a, api, "--model", MODEL))
        reqs = api.messages_requests()
        assert api.responder_errors == []
    assert status(a) == "done"
    parent_lines = a.transcript()
    check_transcript(parent_lines)
    # The request that asked for the forks: its cached prefix is theirs.
    fan = reqs[1]
    assert fan.usage is not None
    shared = fan.usage.cache_read_input_tokens + fan.usage.cache_creation_input_tokens
    firsts = {}
    for r in reqs:
        found = re.search(r"You are agent (f\d)", last_user_text(r.body))
        if found:
            firsts.setdefault(found.group(1), r)
    assert sorted(firsts) == forks
    for f, r in firsts.items():
        assert r.usage is not None and r.body["model"] == MODEL
        assert r.usage.cache_read_input_tokens >= shared, (f, r.usage)
        total = (r.usage.input_tokens + r.usage.cache_creation_input_tokens
                 + r.usage.cache_read_input_tokens)
        assert r.usage.cache_read_input_tokens / total > 0.9, (f, r.usage)
        fork = m.agent(f)
        lines = fork.transcript()
        check_transcript(lines)
        assert lines[:2] == parent_lines[:2]  # forked before the turn that forked
        assert lines[2]["content"][0]["text"].startswith(
            f'<message from="lead" name="fork">\nYou are agent {f}, forked from lead at turn 2.')
        assert status(fork) == "done"
        u = Usage.parse((fork.path / "usage").read_text())
        assert (u.agent, u.requests) == (f, 1)  # its own counters, not the parent's
    # Warming: the first fork's first request was answered before the others came.
    first = firsts["f1"]
    assert all(answered[first.seq] <= arrivals[f] for f in forks[1:])
    assert Usage.parse((a.path / "usage").read_text()).requests == 3
