"""fsck is the oracle of every other test: check that it sees what it claims to.

Each test builds a small consistent store, checks that fsck calls it clean,
damages one record behind the model's back and expects a precise complaint.
These stores are not handed to the autouse fsck (they are meant to be broken).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fsutil import Clock, EngineFactory, mkdir, mkfile

from agentfs.agents.model import Agent, Agents, Role
from agentfs.fsck import check_store
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.storage import codec, keys
from agentfs.storage.codec import ROOT_VIEW, Attr, ViewDef, split_ino
from agentfs.storage.kv import Engine, Txn


def newest(engine: Engine, view: int, suffix: bytes) -> tuple[bytes, bytes]:
    """(raw key, value) of the newest version of a record in `view`'s own layer."""
    base = keys.record(view, suffix)
    with engine.begin() as txn:
        hit = txn.first(base, base + b"\xff" * 9)
    assert hit is not None, "no such record"
    return hit


def damage(engine: Engine, fn: Callable[..., None]) -> list[str]:
    with engine.begin(write=True) as txn:
        fn(txn)
    return check_store(engine).problems


@pytest.fixture
def fresh(engines: EngineFactory) -> tuple[Engine, FileSystem]:
    e = engines()
    fs = FileSystem(e, clock=Clock())
    return e, fs


def test_wrong_stored_counter(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    f = mkfile(fs, ROOT_INO, b"f", b"hello")
    assert check_store(e).problems == []
    view, local = split_ino(f.ino)
    key, raw = newest(e, view, keys.attr_suffix(local))
    a = Attr.decode(raw)
    a.stored += 1
    problems = damage(e, lambda t: t.put(key, a.encode()))
    assert any("stored counter 6 but blocks hold 5 bytes" in p for p in problems), problems


def test_block_past_the_end(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    f = mkfile(fs, ROOT_INO, b"f", b"x" * 10)
    view, local = split_ino(f.ino)
    key, raw = newest(e, view, keys.attr_suffix(local))
    a = Attr.decode(raw)
    a.size = 4
    problems = damage(e, lambda t: t.put(key, a.encode()))
    assert any("past size 4" in p for p in problems), problems


def test_dangling_entry_and_link_count(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    d = mkdir(fs, ROOT_INO, b"d")
    f = mkfile(fs, d.ino, b"f", b"x")
    view, local = split_ino(f.ino)
    key, _ = newest(e, view, keys.attr_suffix(local))
    problems = damage(e, lambda t: t.delete(key))
    assert any("missing inode" in p or "no inode" in p or "leads to" in p
               for p in problems), problems


def test_directory_link_count(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    d = mkdir(fs, ROOT_INO, b"d")
    mkdir(fs, d.ino, b"sub")
    view, local = split_ino(d.ino)
    key, raw = newest(e, view, keys.attr_suffix(local))
    a = Attr.decode(raw)
    a.nlink = 7
    problems = damage(e, lambda t: t.put(key, a.encode()))
    assert any("nlink" in p or "link count" in p for p in problems), problems


def _agent_with_log(fs: FileSystem) -> tuple[Agents, int]:
    agents = Agents(fs)
    agents.spawn(b"a")
    for i in range(3):
        agents.append("a", json.dumps({"role": "user" if i % 2 == 0 else "assistant",
                                       "content": f"turn {i} " + "y" * 2000}).encode())
    return agents, agents.get("a").ino(Role.TRANSCRIPT)


def test_log_gap(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    _, t = _agent_with_log(fs)
    assert check_store(e).problems == []
    view, local = split_ino(t)
    with e.begin() as txn:
        base = keys.record(view, keys.log_dir_suffix(local))
        appends = [k for k, _ in txn.scan(base, base + b"\xff")]
    assert len(appends) == 3
    problems = damage(e, lambda txn: txn.delete(appends[1]))
    assert any("does not follow on" in p for p in problems), problems


def test_log_record_that_does_not_decompress(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    _, t = _agent_with_log(fs)
    view, local = split_ino(t)
    with e.begin() as txn:
        base = keys.record(view, keys.log_dir_suffix(local))
        key, value = next(iter(txn.scan(base, base + b"\xff")))
    assert value[0] == 1, "a 2 KB line of one letter is stored compressed"
    bad = value[:5] + zlib.compress(b"short")
    problems = damage(e, lambda txn: txn.put(key, bad))
    assert any("does not decompress" in p for p in problems), problems
    assert any("stored counter" in p for p in problems), problems


# ----------------------------------------------------------------- every key kind


@dataclass
class World:
    """A small store with something of every kind, and the ids to damage it by."""

    engine: Engine
    fs: FileSystem
    agents: Agents
    agent_view: int  # agent "a", 3 turns
    fork_view: int  # /fk, a fork of /d, with a nested copy of /d/inner
    inner_view: int  # /d/inner, a fork nested in the root view
    file_local: int  # /d/f in the root view
    turns: list[tuple[int, int]]  # (epoch, transcript size) of a's turns


@pytest.fixture
def world(fresh: tuple[Engine, FileSystem]) -> World:
    e, fs = fresh
    d = mkdir(fs, ROOT_INO, b"d")
    f = mkfile(fs, d.ino, b"f", b"x")
    inner = fs.fork(d.ino, d.ino, b"inner")
    fk = fs.fork(d.ino, ROOT_INO, b"fk")
    fs.lookup(fk.ino, b"inner")  # makes the fork's own copy of the nested fork
    agents, _ = _agent_with_log(fs)
    view = agents.get("a").view
    with e.begin() as txn:
        turns = [tuple(codec.unpack(raw))
                 for _, raw in txn.scan(*keys.span(keys.turn_prefix(view)))]
    assert check_store(e).problems == []
    return World(e, fs, agents, view, split_ino(fk.ino)[0], split_ino(inner.ino)[0],
                 split_ino(f.ino)[1], turns)  # type: ignore[arg-type]


MISSING = 999  # a view id no store in these tests reaches


def _nested_copy_key(w: World) -> bytes:
    return keys.nested_copy(w.fork_view, w.inner_view)


def _set_turn_size(w: World, txn: Txn, turn: int, size: int) -> None:
    epoch, _ = w.turns[turn - 1]
    txn.put(keys.turn(w.agent_view, turn), codec.pack([epoch, size]))


def _ghost_agent(w: World, txn: Txn) -> None:
    """An agent registered on a dead view (what detach of an agent fork left)."""
    ghost = Agent("ghost", w.inner_view, "", 0, "spawn", "", 0, "idle", 0)
    raw = txn.get(keys.view_def(w.inner_view))
    assert raw is not None
    dead = ViewDef.decode(w.inner_view, raw)
    dead.kind = "dead"
    txn.put(keys.view_def(w.inner_view), dead.encode())
    txn.delete(keys.contained(ROOT_VIEW, w.inner_view))
    txn.put(keys.agent("ghost"), ghost.encode())
    txn.put(keys.agent_of_view(w.inner_view), b"ghost")


def _dead_view_naming_a_dropped_copy(w: World, txn: Txn) -> None:
    """A dead view (kept by a pin) whose m key outlived the copy it names."""
    raw = txn.get(keys.view_def(w.fork_view))
    assert raw is not None
    dead = ViewDef.decode(w.fork_view, raw)
    dead.kind = "dead"
    txn.put(keys.view_def(w.fork_view), dead.encode())
    txn.put(keys.pin(w.fork_view, 1, keys.view_holder(ROOT_VIEW)), b"")
    txn.put(_nested_copy_key(w), keys.u32(MISSING))


# what -> (damage, the complaint fsck must make; {w} is the World)
DAMAGE: dict[str, tuple[Callable[[World, Txn], None], str]] = {
    "unknown prefix": (lambda w, t: t.put(b"Zjunk", b""),
                       "key 5a6a756e6b: unknown prefix b'Z' (not in the key table)"),
    "short key": (lambda w, t: t.put(keys.GC_QUEUE.tag + b"\0", b""),
                  "gc queue key 4700: 2 bytes do not fit its layout G<view:4>"),
    "record in missing view": (
        lambda w, t: t.put(keys.record_version(MISSING, keys.attr_suffix(1), 1), b""),
        "record key 52000003e7"),
    "pin on missing view": (lambda w, t: t.put(keys.pin(MISSING, 1, keys.view_holder(1)), b""),
                            "pin key 50000003e7"),
    "pin held by missing view": (
        lambda w, t: t.put(keys.pin(ROOT_VIEW, 1, keys.view_holder(MISSING)), b""),
        "pin on view 1 held by missing view 999"),
    "pin of an unknown holder": (lambda w, t: t.put(keys.pin(ROOT_VIEW, 1, b"h"), b""),
                                 "pin on view 1 (epoch 1) has a holder of no known kind: b'h'"),
    "turn pins of a view without turns": (
        lambda w, t: t.put(keys.pin(ROOT_VIEW, 1, keys.turn_holder(ROOT_VIEW)), b""),
        "pins held for the turns of view 1"),
    "gc queue of a missing view": (lambda w, t: t.put(keys.gc_queue(MISSING), b""),
                                   "gc queue key 47000003e7 in missing view 999"),
    "dangling C": (lambda w, t: t.put(keys.contained(ROOT_VIEW, MISSING), b""),
                   "view 1 contains missing view 999"),
    "C of another container": (lambda w, t: t.put(keys.contained(w.fork_view, w.inner_view), b""),
                               "view {w.fork_view} contains view {w.inner_view}, whose container "
                               "is 1"),
    "live view not contained": (lambda w, t: t.delete(keys.contained(ROOT_VIEW, w.fork_view)),
                                "view {w.fork_view}: its container 1 does not list it"),
    "dangling m": (lambda w, t: t.put(_nested_copy_key(w), keys.u32(MISSING)),
                   "view {w.fork_view}'s copy of nested view {w.inner_view} names missing view 999"),
    "dangling m of a dead view": (_dead_view_naming_a_dropped_copy,
                                  "view {w.fork_view}'s copy of nested view {w.inner_view} "
                                  "names missing view 999"),
    "m of a missing view": (lambda w, t: t.put(keys.nested_copy(w.fork_view, MISSING),
                                               keys.u32(w.inner_view)),
                            "view {w.fork_view}'s copy of nested view 999: view 999 is missing"),
    "snapshot of a missing view": (lambda w, t: t.put(keys.snapshot(ROOT_VIEW, 1, b"s"),
                                                      keys.u32(MISSING)),
                                   "snapshot b's' of directory 1 in view 1 names missing view 999"),
    "orphan with nlink": (lambda w, t: t.put(keys.orphan(ROOT_VIEW, w.file_local), b""),
                          "view 1: orphan {w.file_local} still has nlink 1"),
    "metadata missing": (lambda w, t: t.delete(keys.meta("next_view")),
                         "metadata 'next_view' is missing"),
    "unknown metadata": (lambda w, t: t.put(keys.meta("colour"), codec.pack(1)),
                         "unknown metadata key 'colour'"),
    "agent without a<view>": (lambda w, t: t.delete(keys.agent_of_view(w.agent_view)),
                              "agent 'a': its view {w.agent_view} does not name it (no a<view>)"),
    "a<view> without agent": (lambda w, t: t.delete(keys.agent("a")),
                              "view {w.agent_view} names agent b'a', which does not exist"),
    "agent on a dead view": (_ghost_agent, "agent 'ghost': its view {w.inner_view} is dead"),
    "Q of a non-agent view": (lambda w, t: t.put(keys.inbox_seq(ROOT_VIEW), keys.u64(1)),
                              "inbox counter of view 1, which is no agent's view"),
    "Q that is no counter": (lambda w, t: t.put(keys.inbox_seq(w.agent_view), b"x"),
                             "inbox counter of view {w.agent_view}: 78 is not a u64 >= 1"),
    "T without its pin": (
        lambda w, t: t.delete(keys.pin(w.agent_view, w.turns[1][0],
                                       keys.turn_holder(w.agent_view))),
        "turn 2 of view {w.agent_view}: its epoch {w.turns[1][0]} is not pinned"),
    "T sizes decreasing": (lambda w, t: _set_turn_size(w, t, 3, 10),
                           "turn 3 of view {w.agent_view}: transcript size 10 is below"),
    "T undecodable": (lambda w, t: t.put(keys.turn(w.agent_view, 2), codec.pack("x")),
                      "turn 2 of view {w.agent_view}: undecodable record"),
    "H undecodable": (lambda w, t: t.put(keys.history(w.agent_view), codec.pack([])),
                      "history of view {w.agent_view}: undecodable record"),
}


@pytest.mark.parametrize("what", DAMAGE)
def test_fsck_names_the_damage(world: World, what: str) -> None:
    fn, complaint = DAMAGE[what]
    problems = damage(world.engine, lambda txn: fn(world, txn))
    expected = complaint.format(w=world)
    assert any(expected in p for p in problems), (expected, problems)


def test_every_key_kind_is_damaged_by_some_test() -> None:
    """A new prefix in the key table wants a damage test here too (or in a
    test_fsck_detects_*.py beside this file)."""
    here = Path(__file__)
    source = "".join(f.read_text() for f in sorted(here.parent.glob("test_fsck_detects*.py")))
    for p in keys.TABLE:
        builder = {"meta": "keys.meta(", "view": "keys.view_def(", "record": "keys.record",
                   "gc queue": "keys.gc_queue(", "contained": "keys.contained(",
                   "nested copy": "keys.nested_copy(", "agent": "keys.agent(",
                   "agent of view": "keys.agent_of_view(", "turn": "keys.turn(",
                   "inbox sequence": "keys.inbox_seq(", "history": "keys.history(",
                   "pin": "keys.pin(", "snapshot": "keys.snapshot(", "orphan": "keys.orphan(",
                   "event": "keys.event(", "event stream": "keys.event_head(",
                   "staged import": "keys.staged("}
        assert builder[p.name] in source, f"no damage test builds a {p.name} key"


def test_dead_view_that_gc_would_never_visit(fresh: tuple[Engine, FileSystem]) -> None:
    """A detached fork is garbage until gc drops it; fsck accepts it only while
    it is queued, since nothing else would ever reclaim it."""
    e, fs = fresh
    d = mkdir(fs, ROOT_INO, b"d")
    fs.fork(d.ino, ROOT_INO, b"fk")
    view = split_ino(fs.lookup(ROOT_INO, b"fk").ino)[0]
    fs.detach(ROOT_INO, b"fk")
    assert check_store(e).problems == []
    problems = damage(e, lambda t: t.delete(keys.gc_queue(view)))
    assert problems == [f"view {view} is dead and unpinned but not queued for gc"], problems
