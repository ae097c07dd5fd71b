"""fsck is the oracle of every other test: check that it sees what it claims to.

Each test builds a small consistent store, checks that fsck calls it clean,
damages one record behind the model's back and expects a precise complaint.
These stores are not handed to the autouse fsck (they are meant to be broken).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable

import pytest
from fsutil import Clock, EngineFactory, mkdir, mkfile

from agentfs.agents.model import Agents, Role
from agentfs.fsck import check_store
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.storage import codec
from agentfs.storage.codec import Attr, split_ino
from agentfs.storage.kv import Engine


def newest(engine: Engine, view: int, suffix: bytes) -> tuple[bytes, bytes]:
    """(raw key, value) of the newest version of a record in `view`'s own layer."""
    base = b"R" + codec.u32(view) + suffix
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
    key, raw = newest(e, view, codec.attr_suffix(local))
    a = Attr.decode(raw)
    a.stored += 1
    problems = damage(e, lambda t: t.put(key, a.encode()))
    assert any("stored counter 6 but blocks hold 5 bytes" in p for p in problems), problems


def test_block_past_the_end(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    f = mkfile(fs, ROOT_INO, b"f", b"x" * 10)
    view, local = split_ino(f.ino)
    key, raw = newest(e, view, codec.attr_suffix(local))
    a = Attr.decode(raw)
    a.size = 4
    problems = damage(e, lambda t: t.put(key, a.encode()))
    assert any("past size 4" in p for p in problems), problems


def test_dangling_entry_and_link_count(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    d = mkdir(fs, ROOT_INO, b"d")
    f = mkfile(fs, d.ino, b"f", b"x")
    view, local = split_ino(f.ino)
    key, _ = newest(e, view, codec.attr_suffix(local))
    problems = damage(e, lambda t: t.delete(key))
    assert any("missing inode" in p or "no inode" in p or "leads to" in p
               for p in problems), problems


def test_directory_link_count(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    d = mkdir(fs, ROOT_INO, b"d")
    mkdir(fs, d.ino, b"sub")
    view, local = split_ino(d.ino)
    key, raw = newest(e, view, codec.attr_suffix(local))
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
        base = b"R" + codec.u32(view) + codec.log_dir_suffix(local)
        keys = [k for k, _ in txn.scan(base, base + b"\xff")]
    assert len(keys) == 3
    problems = damage(e, lambda txn: txn.delete(keys[1]))
    assert any("does not follow on" in p for p in problems), problems


def test_log_record_that_does_not_decompress(fresh: tuple[Engine, FileSystem]) -> None:
    e, fs = fresh
    _, t = _agent_with_log(fs)
    view, local = split_ino(t)
    with e.begin() as txn:
        base = b"R" + codec.u32(view) + codec.log_dir_suffix(local)
        key, value = next(iter(txn.scan(base, base + b"\xff")))
    assert value[0] == 1, "a 2 KB line of one letter is stored compressed"
    bad = value[:5] + zlib.compress(b"short")
    problems = damage(e, lambda txn: txn.put(key, bad))
    assert any("does not decompress" in p for p in problems), problems
    assert any("stored counter" in p for p in problems), problems
