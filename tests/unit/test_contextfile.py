"""context.json through `Contexts` (incremental) equals the from-scratch render,
turn after turn, through prompt edits, compactions, forks and todo changes."""

from __future__ import annotations

import json
import random

import pytest
from fsutil import put_file

from agentfs.agents.context import Contexts, render_agent_context
from agentfs.agents.model import Agents, Role
from agentfs.errors import FsError
from agentfs.posix.fs import FileSystem


def state(fs: FileSystem, ino: int) -> bytes:
    try:
        return fs.getxattr(ino, b"trusted.agentfs.compaction")
    except FsError:
        return b""


def session_line(rng: random.Random, turn: int) -> bytes:
    if turn % 2 == 1:
        return json.dumps({"role": "assistant", "content": [
            {"type": "text", "text": f"step {turn}"},
            {"type": "tool_use", "id": f"t{turn}", "name": "bash", "input": {"cmd": "ls"}}]}
        ).encode()
    size = rng.choice([100, 10_000, 50_000, 200_000])
    out = "".join(rng.choice("abcdefgh \n") for _ in range(size))
    return json.dumps({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": f"t{turn - 1}", "content": out}]}).encode()


def test_incremental_equals_reference_over_a_session(fs: FileSystem) -> None:
    agents = Agents(fs)
    contexts = Contexts(agents)
    a = agents.spawn(b"a")
    put_file(fs, a.root_ino, b"system", b"You are careful.")
    put_file(fs, a.root_ino, b"prompt", b"first version")
    assert contexts.render(a) == render_agent_context(agents, a)
    put_file(fs, a.root_ino, b"prompt", b"second version")  # before the first turn: allowed
    put_file(fs, a.root_ino, b"config", b"budget_tokens 60000\nkeep_recent_turns 4\n")
    assert contexts.render(a) == render_agent_context(agents, a)
    rng = random.Random(7)
    compactions = 0
    for turn in range(1, 41):
        agents.append("a", session_line(rng, turn))
        if turn == 15:
            put_file(fs, a.ino(Role.NOTES), b"todo.md", b"- finish")
        a = agents.get("a")
        before = state(fs, a.root_ino)
        got = contexts.render(a)
        assert got == render_agent_context(agents, a), f"turn {turn}"
        after = state(fs, a.root_ino)
        compactions += before != after
        if turn == 20:
            agents.fork("a", b"f")
            f = agents.get("f")
            assert contexts.render(f) == render_agent_context(agents, f)
    assert compactions >= 1
    names = [o.id for o in contexts.observations(agents.get("a"))]
    assert names and all(n.startswith("turn-") for n in names)
    assert contexts.observations(agents.get("f"))[: len(names)] == \
        contexts.observations(agents.get("a"))[: len(contexts.observations(agents.get("f")))]


@pytest.mark.parametrize("limits", [{"capacity": 2}, {"max_bytes": 1}])
def test_a_fork_at_a_turn_renders_its_own_history(fs: FileSystem,
                                                  limits: dict[str, int]) -> None:
    agents = Agents(fs)
    contexts = Contexts(agents, **limits)
    agents.spawn(b"a")
    rng = random.Random(1)
    for turn in range(1, 11):
        agents.append("a", session_line(rng, turn))
        contexts.render(agents.get("a"))
    agents.fork("a", b"past", at_turn=4)
    agents.spawn(b"other")
    for name in ("past", "other", "a", "past"):  # more agents than the cache holds
        x = agents.get(name)
        assert contexts.render(x) == render_agent_context(agents, x)
