"""fsck on the event stream: a consistent stream is clean; each kind of damage,
done behind the model's back, gets a precise complaint (see test_fsck_detects.py)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from fsutil import Clock, EngineFactory

from agentfs.agents.model import Agents
from agentfs.fsck import check_store
from agentfs.posix.fs import FileSystem
from agentfs.storage import eventlog, keys
from agentfs.storage.kv import Engine, Txn


@pytest.fixture
def store(engines: EngineFactory) -> Engine:
    """Six events: a spawn and five turns."""
    e = engines()
    agents = Agents(FileSystem(e, clock=Clock()))
    agents.spawn(b"a")
    for i in range(5):
        agents.append("a", json.dumps({"role": "user" if i % 2 == 0 else "assistant",
                                       "content": f"turn {i}"}).encode())
    assert check_store(e).problems == []
    return e


def _damaged(e: Engine, fn: Callable[[Txn], None]) -> list[str]:
    with e.begin(write=True) as txn:
        fn(txn)
    return check_store(e).problems


def _line(txn: Txn, seq: int) -> eventlog.Line:
    found = eventlog.get(txn, seq)
    assert found is not None
    return found


def test_a_missing_event(store: Engine) -> None:
    problems = _damaged(store, lambda t: t.delete(keys.event(3)))
    assert any("event 4 follows 2: events 3..3 are missing" in p for p in problems), problems


def test_an_undecodable_event(store: Engine) -> None:
    problems = _damaged(store, lambda t: t.put(keys.event(2), b"\xc1"))
    assert any(p.startswith("event 2: undecodable") for p in problems), problems


def _rewritten(e: Engine, seq: int, offset: int, fix: Callable[[bytes], bytes]) -> list[str]:
    """Problems after event `seq` is rewritten at its offset + `offset`, its line `fix`ed."""
    def rewrite(t: Txn) -> None:
        x = _line(t, seq)
        t.put(keys.event(seq), eventlog.encode_line(x.offset + offset, fix(x.data)))

    return _damaged(e, rewrite)


def test_an_event_at_the_wrong_offset(store: Engine) -> None:
    problems = _rewritten(store, 4, 1, lambda data: data)
    assert any("event 4 starts at byte" in p and "not where event 3 ended" in p
               for p in problems), problems


def test_a_line_not_in_canonical_form(store: Engine) -> None:
    problems = _rewritten(store, 6, 0, lambda data: data.replace(b",", b", "))
    assert any("event 6: the line is not in canonical form" in p for p in problems), problems
    # (and its length changed, so the head's counts no longer agree)
    assert any("retained bytes" in p for p in problems), problems


def test_a_line_with_another_seq(store: Engine) -> None:
    problems = _rewritten(store, 5, 0, lambda data: data.replace(b'"seq":5', b'"seq":7'))
    assert any("event 5: its line says seq 7" in p for p in problems), problems


def test_a_head_out_of_step(store: Engine) -> None:
    def bump(t: Txn) -> None:
        h = eventlog.head(t)
        h.next_seq += 1
        t.put(keys.event_head(), h.encode())

    problems = _damaged(store, bump)
    assert any("the next event is 8, but the last stored is 6" in p for p in problems), problems


def test_an_undecodable_head(store: Engine) -> None:
    problems = _damaged(store, lambda t: t.put(keys.event_head(), b"\x93\x01"))
    assert any(p.startswith("event stream head: undecodable") for p in problems), problems
