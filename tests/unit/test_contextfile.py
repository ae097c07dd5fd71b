"""context.json through `Contexts` (incremental) equals the from-scratch oracle,
turn after turn, through prompt edits, compactions, forks and todo changes;
reading it never writes."""

from __future__ import annotations

import errno
import json
import random
from collections.abc import Iterator

import pytest
from fsutil import put_file

from agentfs.agents.context import OBSERVATION_BASE, Contexts, agent_inputs, recitation
from agentfs.agents.model import Agent, Agents, Role
from agentfs.agents.render import CompactionState, render, render_from_scratch
from agentfs.agents.renderers import Renderers
from agentfs.errors import FsError
from agentfs.posix.fs import FileSystem


def oracle(agents: Agents, a: Agent, before: CompactionState | None = None
           ) -> tuple[bytes, CompactionState]:
    """context.json and the compaction state, from scratch; or, given the state
    `before` the last turn, from that state (one oracle step: linear, not
    quadratic, in the turns)."""
    inputs, lines = agent_inputs(agents, a)
    args = (OBSERVATION_BASE, inputs.system, inputs.tools, inputs.prompt, lines,
            recitation(agents, a), inputs.policy)
    body, state = render_from_scratch(*args) if before is None else render(*args, before)
    return body + b"\n", state


def served(contexts: Contexts, a: Agent) -> tuple[bytes, CompactionState]:
    return contexts.render(a), contexts.compaction(a)


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


def compacting(fs: FileSystem, turns: int) -> tuple[Agents, random.Random]:
    """Agent `a` `turns` turns into a session that compacts (at turns 3, 7 and
    9), and the random source of its next lines."""
    agents = Agents(fs)
    a = agents.spawn(b"a")
    put_file(fs, a.root_ino, b"config", b"budget_tokens 20000\nkeep_recent_turns 1\n")
    rng = random.Random(0)
    for turn in range(1, turns + 1):
        agents.append("a", session_line(rng, turn))
    return agents, rng


def test_incremental_equals_reference_over_a_session(fs: FileSystem) -> None:
    agents = Agents(fs)
    contexts = Contexts(agents)
    a = agents.spawn(b"a")
    put_file(fs, a.root_ino, b"system", b"You are careful.")
    put_file(fs, a.root_ino, b"prompt", b"first version")
    assert served(contexts, a) == oracle(agents, a)
    put_file(fs, a.root_ino, b"prompt", b"second version")  # before the first turn: allowed
    put_file(fs, a.root_ino, b"config", b"budget_tokens 60000\nkeep_recent_turns 4\n")
    assert served(contexts, a) == oracle(agents, a)
    rng = random.Random(7)
    state = CompactionState()
    for turn in range(1, 41):
        agents.append("a", session_line(rng, turn))
        if turn == 15:
            put_file(fs, a.ino(Role.NOTES), b"todo.md", b"- finish")
        a = agents.get("a")
        expected = oracle(agents, a, state)
        assert served(contexts, a) == expected, f"turn {turn}"
        state = expected[1]
        if turn == 20:
            agents.fork("a", b"f")
            f = agents.get("f")
            assert served(contexts, f) == served(contexts, a) == oracle(agents, f)
    assert served(contexts, a) == oracle(agents, a)
    assert len(state.points) >= 2
    names = [o.id for o in contexts.observations(agents.get("a"))]
    assert names and all(n.startswith("turn-") for n in names)
    assert contexts.observations(agents.get("f"))[: len(names)] == \
        contexts.observations(agents.get("a"))[: len(contexts.observations(agents.get("f")))]


@pytest.mark.parametrize("limits", [{"capacity": 2}, {"max_bytes": 1}])
def test_a_fork_at_a_turn_renders_its_own_history(fs: FileSystem,
                                                  limits: dict[str, int]) -> None:
    agents = Agents(fs)
    agents.renderers = Renderers(**limits)
    contexts = Contexts(agents)
    a = agents.spawn(b"a")
    put_file(fs, a.root_ino, b"config", b"budget_tokens 20000\nkeep_recent_turns 1\n")
    rng = random.Random(0)  # compactions at turns 3, 7 and 9
    states = [contexts.compaction(a)]
    for turn in range(1, 11):
        agents.append("a", session_line(rng, turn))
        contexts.render(agents.get("a"))
        states.append(contexts.compaction(agents.get("a")))
    assert states[4].points and len(states[-1].points) > len(states[4].points)
    agents.fork("a", b"past", at_turn=4)
    agents.spawn(b"other")
    for name in ("past", "other", "a", "past"):  # more agents than the cache holds
        x = agents.get(name)
        assert served(contexts, x) == oracle(agents, x)
    assert contexts.compaction(agents.get("past")) == states[4]


@pytest.fixture
def session(fs: FileSystem) -> Iterator[tuple[Agents, Contexts]]:
    """An agent `a` 12 turns into a session that compacts, its todo set, read once."""
    agents = Agents(fs)
    contexts = Contexts(agents)
    a = agents.spawn(b"a")
    put_file(fs, a.root_ino, b"config", b"budget_tokens 20000\nkeep_recent_turns 1\n")
    put_file(fs, a.ino(Role.NOTES), b"todo.md", b"- [ ] port the parser")
    rng = random.Random(3)
    for turn in range(1, 13):
        agents.append("a", session_line(rng, turn))
    yield agents, contexts


def test_reading_stores_no_compaction_state(session: tuple[Agents, Contexts],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    agents, contexts = session
    fs = agents.fs

    def no_setxattr(*args: object) -> None:
        raise AssertionError("a render wrote an extended attribute")

    monkeypatch.setattr(fs, "setxattr", no_setxattr)
    a = agents.get("a")
    contexts.render(a)
    assert len(contexts.compaction(a).points) >= 2
    assert fs.listxattr(a.root_ino) == []
    # a fresh cache (a remount) derives the same state from the same files
    assert served(Contexts(Agents(fs)), a) == served(contexts, a)


def test_reading_opens_no_write_transaction(session: tuple[Agents, Contexts],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    agents, contexts = session
    fs = agents.fs
    writes: list[str] = []
    write = fs.store.write

    def counted() -> object:
        writes.append("write")
        return write()

    monkeypatch.setattr(fs.store, "write", counted)
    a = agents.get("a")
    contexts.render(a)
    Contexts(Agents(fs)).render(a)  # (from scratch)
    contexts.observations(a)
    assert writes == []


def test_an_invalid_config_fails_the_read_with_its_reason(session: tuple[Agents, Contexts]
                                                          ) -> None:
    agents, contexts = session
    a = agents.get("a")
    put_file(agents.fs, a.root_ino, b"config", b"budget_tokens 2O000\n")
    with pytest.raises(FsError) as ei:
        contexts.render(a)
    assert ei.value.errno == errno.EINVAL
    assert ei.value.message == "config: line 1: budget_tokens must be an integer >= 1, " \
        "not '2O000'"


def test_one_renderer_per_agent_fed_each_line_once(fs: FileSystem,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """context.json reads the renderer the appends feed (renderers.py): a read
    catches it up, the next append feeds only its own line; an append whose
    transaction aborts feeds nothing that stays."""
    agents, rng = compacting(fs, 4)
    contexts = Contexts(agents)
    a = agents.get("a")
    assert served(contexts, a) == oracle(agents, a)
    fed = agents.renderers._fed[a.view]
    turn_lines = []
    for turn in range(5, 9):
        turn_lines.append(session_line(rng, turn))
        agents.append("a", turn_lines[-1])
        assert agents.renderers._fed[a.view] is fed  # the same renderer, fed by the append
        assert fed.renderer.turns == agents.get("a").turns  # each line once
        assert served(contexts, agents.get("a")) == oracle(agents, agents.get("a"))

    def fail(*args: object) -> None:
        raise RuntimeError("the append fails after its lines were fed")

    monkeypatch.setattr("agentfs.agents.events.record_all", fail)
    with pytest.raises(RuntimeError):
        agents.append("a", session_line(rng, 9))
    monkeypatch.undo()
    a = agents.get("a")
    assert a.turns == 8 and a.view not in agents.renderers._fed  # dropped with the abort
    assert served(contexts, a) == oracle(agents, a)  # (caught up from the store)
    agents.append("a", session_line(random.Random(1), 9))
    assert agents.renderers._fed[a.view].renderer.turns == 9
    assert served(contexts, agents.get("a")) == oracle(agents, agents.get("a"))
