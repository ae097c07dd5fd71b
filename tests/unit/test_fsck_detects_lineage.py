"""fsck on agent histories: lineage records (H), the turns forks inherited,
and what a removed agent leaves behind. Each test builds a consistent store,
checks that fsck calls it clean, damages one record behind the model's back
and expects a precise complaint (see test_fsck_detects.py)."""

from __future__ import annotations

import json

import pytest
from fsutil import Clock, EngineFactory

from agentfs.agents.history import Lineage
from agentfs.agents.model import Agents
from agentfs.fsck import check_store
from agentfs.posix.fs import FileSystem
from agentfs.storage import codec, keys
from agentfs.storage.kv import Engine


def _line(i: int) -> bytes:
    return json.dumps({"role": "user" if i % 2 == 0 else "assistant",
                       "content": f"turn {i}"}).encode()


@pytest.fixture
def family(engines: EngineFactory) -> tuple[Engine, Agents]:
    """`a` with 6 turns; `b` forked from it at turn 4 with 2 turns of its own;
    then `a` removed (its turns 1..4 stay for `b`)."""
    e = engines()
    agents = Agents(FileSystem(e, clock=Clock()))
    agents.spawn(b"a")
    for i in range(6):
        agents.append("a", _line(i))
    agents.fork("a", b"b", at_turn=4)
    for i in range(4, 6):
        agents.append("b", _line(i))
    agents.remove("a")
    assert check_store(e).problems == []
    return e, agents


def _damaged(e: Engine, fn) -> list[str]:  # type: ignore[no-untyped-def]
    with e.begin(write=True) as txn:
        fn(txn)
    return check_store(e).problems


def test_agent_without_lineage(family: tuple[Engine, Agents]) -> None:
    e, agents = family
    b = agents.get("b").view
    problems = _damaged(e, lambda t: t.delete(keys.history(b)))
    assert any(f"agent 'b': no history record (H<{b}>)" in p for p in problems), problems


def test_inherited_turn_that_resolves_nowhere(family: tuple[Engine, Agents]) -> None:
    e, agents = family
    b = agents.get("b").view
    origin = Lineage.decode(_get(e, keys.history(b))).origin_view
    problems = _damaged(e, lambda t: t.delete(keys.turn(origin, 2)))
    assert any(f"history of view {b}: inherited turn 2 should be view {origin}'s" in p
               for p in problems), problems


def test_own_turns_with_a_gap(family: tuple[Engine, Agents]) -> None:
    e, agents = family
    b = agents.get("b").view
    rec = codec.unpack(_get(e, keys.turn(b, 6)))

    def gap(t) -> None:  # type: ignore[no-untyped-def]
        t.delete(keys.turn(b, 6))
        t.put(keys.turn(b, 7), codec.pack(rec))

    problems = _damaged(e, gap)
    assert any("agent 'b': 6 turns, 4 inherited, but its own turn records are 5..7" in p
               for p in problems), problems


def test_removed_history_that_no_fork_needs(family: tuple[Engine, Agents]) -> None:
    e, agents = family
    b = agents.get("b").view
    origin = Lineage.decode(_get(e, keys.history(b))).origin_view
    problems = _damaged(e, lambda t: t.put(keys.history(b), Lineage(0, 0).encode()))
    assert any(f"history of removed agent view {origin} is kept, but no fork inherits "
               "from it" in p for p in problems), problems


def test_removed_history_keeps_more_than_forks_inherited(
        family: tuple[Engine, Agents]) -> None:
    e, agents = family
    b = agents.get("b").view
    origin = Lineage.decode(_get(e, keys.history(b))).origin_view
    problems = _damaged(e, lambda t: t.put(keys.history(b), Lineage(origin, 2).encode()))
    assert any(f"removed agent view {origin} keeps turns past 2" in p for p in problems), \
        problems


def test_turns_without_lineage(family: tuple[Engine, Agents]) -> None:
    e, agents = family
    b = agents.get("b").view
    origin = Lineage.decode(_get(e, keys.history(b))).origin_view
    problems = _damaged(e, lambda t: t.delete(keys.history(origin)))
    assert any(f"view {origin} has turn records but no history record (H)" in p
               for p in problems), problems


def _get(e: Engine, key: bytes) -> bytes:
    with e.begin() as txn:
        raw = txn.get(key)
    assert raw is not None
    return raw
