"""The event stream in the model (agents/events.py over storage/eventlog.py), on
every engine, fsck'ed after each test: each operation writes its event in its
own transaction (and a refused one none), the lines are canonical, offsets
are stable, the window is bounded, and the stream's bytes read at any offset
are the lines joined."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from fsutil import put_file
from test_contextfile import compacting, session_line

from agentfs.agents import events
from agentfs.agents.context import Contexts
from agentfs.agents.control import run_agent_command, run_command
from agentfs.agents.inbox import consume_message, deliver_message, stage_message
from agentfs.agents.model import Agents
from agentfs.agents.renderers import Renderers
from agentfs.errors import FsError
from agentfs.posix.fs import FileSystem
from agentfs.storage import eventlog


def line(role: str, text: str) -> bytes:
    return json.dumps({"role": role, "content": text}).encode()


def stream(fs: FileSystem) -> list[dict[str, Any]]:
    with fs.store.read() as tx:
        lines = eventlog.lines_after(tx.txn, 0, limit=10**9)
    return [json.loads(x.data) for x in lines]


def file_bytes(fs: FileSystem, offset: int = 0, size: int = 1 << 30) -> bytes:
    with fs.store.read() as tx:
        return eventlog.read(tx.txn, offset, size)


def send(agents: Agents, to: str, name: bytes, data: bytes, sender: str) -> bytes:
    a = agents.get(to)
    staged = stage_message(agents, a, name, 1, 0, 0)
    agents.fs.write(staged.ino, 0, data)
    return deliver_message(agents, a, b".in-1-" + name, sender)


def brief(e: dict[str, Any]) -> tuple[Any, ...]:
    """An event without its seq and time."""
    return (e["event"], e["agent"], *(f"{k}={e[k]}" for k in sorted(e)
                                       if k not in ("seq", "time", "event", "agent")))


def test_every_operation_writes_its_event(fs: FileSystem) -> None:
    agents = Agents(fs)
    agents.spawn(b"lead")
    agents.spawn(b"kid", parent="lead")
    agents.append("kid", line("user", "one"))
    agents.append("kid", line("assistant", "two"))
    agents.fork("kid", b"past", at_turn=1)
    msg = send(agents, "kid", b"hello", b"hi there", "lead")
    consume_message(agents, agents.get("kid"), msg)
    agents.set_status("kid", "running")
    agents.set_status("kid", "running")  # no change: no event
    run_agent_command(agents, agents.get("kid"), "status done")
    run_agent_command(agents, agents.get("past"), "remove")
    run_command(agents, "detach agents/lead")
    got = stream(fs)
    assert [e["seq"] for e in got] == list(range(1, len(got) + 1))
    assert [brief(e) for e in got] == [
        ("spawn", "lead", "parent=None"),
        ("spawn", "kid", "parent=lead"),
        ("turn", "kid", "bytes=35", "role=user", "turn=1"),
        ("turn", "kid", "bytes=40", "role=assistant", "turn=2"),
        ("fork", "past", "origin=kid", "parent=kid", "turn=1"),
        ("message", "kid", "bytes=8", "name=000001-lead+hello", "sender=lead"),
        ("consumed", "kid", "name=000001-lead+hello"),
        ("status", "kid", "old=idle", "status=running"),
        ("status", "kid", "old=running", "status=done"),
        ("remove", "past"),
        ("detach", "lead"),
    ]
    assert all(isinstance(e["time"], float) for e in got)
    raw = file_bytes(fs)
    assert raw == b"".join((json.dumps(e, sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False) + "\n").encode() for e in got)


def test_a_refused_operation_writes_no_event(fs: FileSystem) -> None:
    agents = Agents(fs)
    agents.spawn(b"a")
    n = len(stream(fs))
    with pytest.raises(FsError):
        agents.spawn(b"a")
    with pytest.raises(FsError):  # the second line is invalid: neither is appended
        agents.append_lines("a", [line("user", "ok"), b"{not json"])
    with pytest.raises(FsError):
        agents.fork("a", b"b", at_turn=3)
    with pytest.raises(FsError):
        agents.set_status("a", "sleepy")
    assert len(stream(fs)) == n
    agents.append_lines("a", [line("user", "x"), line("assistant", "y")])
    assert [e["turn"] for e in stream(fs)[n:]] == [1, 2]


def test_compaction_points_are_events(fs: FileSystem) -> None:
    agents = Agents(fs)
    a = agents.spawn(b"a")
    put_file(fs, a.root_ino, b"config", b"budget_tokens 20000\nkeep_recent_turns 1\n")
    rng = random.Random(0)  # compactions at turns 3, 7 and 9 (test_contextfile.py)
    for turn in range(1, 7):
        if turn == 6:
            agents.renderers = Renderers()  # as after a remount
        agents.append("a", session_line(rng, turn))
    # Several lines in one write: each compaction right after its turn.
    agents.append_lines("a", [session_line(rng, turn) for turn in range(7, 11)])
    points = [e["turn"] for e in stream(fs) if e["event"] == "compaction"]
    fresh = Contexts(Agents(fs))  # a renderer of its own, fed from scratch at this read
    assert points == list(fresh.compaction(agents.get("a")).points) == [3, 7, 9]
    # Each one comes right after the turn that made it.
    evs = [brief(e)[:1] + (e.get("turn"),) for e in stream(fs) if e["event"] != "spawn"]
    for point in points:
        assert evs[evs.index(("compaction", point)) - 1] == ("turn", point)
    assert evs[-4:] == [("turn", 8), ("turn", 9), ("compaction", 9), ("turn", 10)]


def test_offsets_are_stable_and_reads_at_any_offset_give_the_lines(fs: FileSystem) -> None:
    agents = Agents(fs)
    agents.spawn(b"a")
    for i in range(30):
        agents.append("a", line("user" if i % 2 == 0 else "assistant", "é" * (i + 1)))
    whole = file_bytes(fs)
    with fs.store.read() as tx:
        h = eventlog.head(tx.txn)
        assert h.next_offset == len(whole) and h.next_seq == 32
        for off in (0, 1, 17, len(whole) // 2, len(whole) - 1, len(whole)):
            for size in (1, 5, 300, 1 << 20):
                assert eventlog.read(tx.txn, off, size) == whole[off:off + size]
        for x in eventlog.lines_after(tx.txn, 0, limit=100):
            assert whole[x.offset:x.end] == x.data


def test_the_window_is_bounded_and_bytes_before_it_are_gone(fs: FileSystem) -> None:
    agents = Agents(fs)
    agents.spawn(b"a")
    with fs.transaction() as t:
        eventlog.set_limits(t.tx.txn, 10, 1 << 20)
    for i in range(40):
        agents.append("a", line("user" if i % 2 == 0 else "assistant", f"turn {i}"))
    got = stream(fs)
    assert [e["seq"] for e in got] == list(range(32, 42))  # the newest 10 of 41
    with fs.store.read() as tx:
        h = eventlog.head(tx.txn)
        start = eventlog.first_offset(tx.txn, h)
        assert h.first_seq == 32 and start > 0
        with pytest.raises(eventlog.Gone) as gone:
            eventlog.read(tx.txn, start - 1, 10)
        assert (gone.value.first_offset, gone.value.first_seq) == (start, 32)
        tail = eventlog.read(tx.txn, start, 1 << 20)
    assert tail.count(b"\n") == 10 and json.loads(tail.split(b"\n")[0])["seq"] == 32
    # Lowering the limits: each append trims a little more, until it fits.
    with fs.transaction() as t:
        eventlog.set_limits(t.tx.txn, 10, 200)
    for i in range(10):
        agents.append("a", line("user" if i % 2 == 0 else "assistant", "x"))
    with fs.store.read() as tx:
        h = eventlog.head(tx.txn)
        assert h.retained_bytes <= 200 and not h.over_limits()


def test_gc_trims_a_window_over_lowered_limits(fs: FileSystem) -> None:
    from agentfs.storage.gc import collect

    agents = Agents(fs)
    agents.spawn(b"a")
    for i in range(20):
        agents.append("a", line("user" if i % 2 == 0 else "assistant", "y"))
    with fs.transaction() as t:
        eventlog.set_limits(t.tx.txn, 5, 1 << 20)
    collect(fs.store)
    assert [e["seq"] for e in stream(fs)] == list(range(17, 22))


def test_lines_are_canonical_json(fs: FileSystem) -> None:
    agents = Agents(fs)
    agents.spawn(b"cafe-1")
    send(agents, "cafe-1", "naïve".encode(), b"x", "ünï")
    e = stream(fs)[-1]
    assert e["name"] == "000001-__n__+naïve" and e["sender"] == "__n__"
    assert "naïve".encode() in file_bytes(fs)  # ensure_ascii=False: UTF-8, not \u escapes
    assert events.check_line(eventlog.Line(e["seq"], 0, b'{"seq":%d}\n' % e["seq"]))


@pytest.mark.parametrize("limits", [{"capacity": 1}, {"max_bytes": 1}])
def test_compaction_events_with_a_small_watch_cache(fs: FileSystem,
                                                    limits: dict[str, int]) -> None:
    """Two agents appending in turn, with room for one renderer: each append
    catches up from the transcript, and the points are the same."""
    agents = Agents(fs)
    agents.renderers = Renderers(**limits)
    for name in (b"a", b"b"):
        a = agents.spawn(name)
        put_file(fs, a.root_ino, b"config", b"budget_tokens 20000\nkeep_recent_turns 1\n")
    rng = {"a": random.Random(0), "b": random.Random(0)}
    for turn in range(1, 11):
        for name in ("a", "b"):
            agents.append(name, session_line(rng[name], turn))
    for name in ("a", "b"):
        assert [e["turn"] for e in stream(fs) if e["event"] == "compaction"
                and e["agent"] == name] == [3, 7, 9]


def test_a_fork_starts_from_its_origins_compaction_watch(fs: FileSystem) -> None:
    """A fork now copies its origin's renderer (no catch-up at its first
    append); the two then go their own ways, each with its own points."""
    agents, rng = compacting(fs, 6)
    agents.fork("a", b"f")
    assert agents.get("f").view in agents.renderers._fed  # (copied, not caught up)
    other = random.Random(5)
    for turn in range(7, 15):
        agents.append("a", session_line(rng, turn))
        agents.append("f", session_line(other, turn))
    contexts = Contexts(agents)
    for name in ("a", "f"):
        want = [p for p in contexts.compaction(agents.get(name)).points if p > 6]
        got = [e["turn"] for e in stream(fs)
               if e["event"] == "compaction" and e["agent"] == name and e["turn"] > 6]
        assert got == want and want, (name, got, want)
