"""The agent layer on the model: spawn, transcript turns, forks now and at a turn."""

from __future__ import annotations

import errno
import json
import stat

import pytest

from agentfs.agents import SKELETON, Agents, Role
from agentfs.errors import FsError
from agentfs.fs import ROOT_INO, FileSystem, SetAttr


def line(role: str, text: str) -> bytes:
    return json.dumps({"role": role, "content": text}).encode()


def read_all(fs: FileSystem, ino: int) -> bytes:
    return fs.read(ino, 0, fs.getattr(ino).size)


def ws_write(fs: FileSystem, agents: Agents, name: str, fname: bytes, data: bytes) -> None:
    ws = agents.get(name).ino(Role.WORKSPACE)
    try:
        ino = fs.lookup(ws, fname).ino
    except FsError:
        ino = fs.create(ws, fname, stat.S_IFREG | 0o644, 0, 0).ino
    fs.setattr(ino, SetAttr(size=0))
    fs.write(ino, 0, data)


def ws_read(fs: FileSystem, agents: Agents, name: str, fname: bytes) -> bytes:
    return read_all(fs, fs.lookup(agents.get(name).ino(Role.WORKSPACE), fname).ino)


@pytest.fixture
def agents(fs: FileSystem) -> Agents:
    return Agents(fs)


def test_spawn_makes_the_skeleton(fs: FileSystem, agents: Agents) -> None:
    a = agents.spawn(b"alice")
    names = sorted(e.name for e in fs.readdir(a.root_ino))
    assert names == sorted(n for n, _, _, _ in SKELETON)
    assert read_all(fs, a.ino(Role.TOOLS)) == b"[]\n"
    assert fs.lookup(agents.dir_ino(), b"alice").ino == a.root_ino
    assert agents.role_of(a.ino(Role.TRANSCRIPT)) == (a, Role.TRANSCRIPT)
    assert agents.role_of(fs.lookup(ROOT_INO, b"agents").ino) is None


@pytest.mark.parametrize("name", [b"", b".hidden", b"a/b", b"x" * 65, b"sp ace", b"-dash"])
def test_bad_names_are_einval(agents: Agents, name: bytes) -> None:
    with pytest.raises(FsError) as e:
        agents.spawn(name)
    assert e.value.errno == errno.EINVAL
    assert "agent name" in e.value.message


def test_spawn_twice_is_eexist_and_missing_parent_enoent(agents: Agents) -> None:
    agents.spawn(b"a")
    with pytest.raises(FsError) as e:
        agents.spawn(b"a")
    assert e.value.errno == errno.EEXIST
    with pytest.raises(FsError) as e:
        agents.spawn(b"b", parent="nobody")
    assert e.value.errno == errno.ENOENT


def test_append_counts_turns_and_refuses_invalid_lines(fs: FileSystem, agents: Agents) -> None:
    agents.spawn(b"a")
    assert agents.append("a", line("user", "hi")) == 1
    assert agents.append("a", line("assistant", "hello") + b"\n") == 2
    before = read_all(fs, agents.transcript_ino("a"))
    with pytest.raises(ValueError):
        agents.append("a", b'{"role": "wizard", "content": "x"}')
    assert read_all(fs, agents.transcript_ino("a")) == before
    assert agents.get("a").turns == 2
    assert before.count(b"\n") == 2


def test_fork_now_shares_everything_then_diverges(fs: FileSystem, agents: Agents) -> None:
    agents.spawn(b"a")
    agents.append("a", line("user", "task"))
    ws_write(fs, agents, "a", b"f", b"one")
    b = agents.fork("a", b"b")
    assert b.origin == "a" and b.origin_turn == 1 and b.turns == 1
    assert read_all(fs, b.ino(Role.TRANSCRIPT)) == read_all(fs, agents.transcript_ino("a"))
    ws_write(fs, agents, "b", b"f", b"two")
    agents.append("b", line("assistant", "fork says"))
    assert ws_read(fs, agents, "a", b"f") == b"one"
    assert agents.get("a").turns == 1
    assert ws_read(fs, agents, "b", b"f") == b"two"


def test_fork_at_turn_restores_transcript_and_files(fs: FileSystem, agents: Agents) -> None:
    agents.spawn(b"a")
    for i in range(1, 21):
        ws_write(fs, agents, "a", b"state", b"turn %d" % i)
        agents.append("a", line("user" if i % 2 else "assistant", f"turn {i}"))
    f = agents.fork("a", b"past", at_turn=5)
    transcript = read_all(fs, f.ino(Role.TRANSCRIPT))
    assert transcript.count(b"\n") == 5
    assert ws_read(fs, agents, "past", b"state") == b"turn 5"
    assert f.turns == 5
    # A fork of the fork at a turn it inherited resolves to the original agent.
    g = agents.fork("past", b"older", at_turn=3)
    assert ws_read(fs, agents, "older", b"state") == b"turn 3"
    assert read_all(fs, g.ino(Role.TRANSCRIPT)).count(b"\n") == 3
    with pytest.raises(FsError) as e:
        agents.fork("a", b"nope", at_turn=21)
    assert e.value.errno == errno.ENOENT


def test_lineage_export_and_children(agents: Agents) -> None:
    agents.spawn(b"root")
    agents.spawn(b"child", parent="root")
    agents.append("child", line("user", "onboard"))
    for i in range(3):
        agents.fork("child", b"c%d" % i)
    assert agents.children("root") == ["child"]
    assert agents.children("child") == ["c0", "c1", "c2"]
    rows = {r["name"]: r for r in agents.export()}
    assert rows["c1"]["origin"] == "child" and rows["c1"]["shared_prefix_turns"] == 1
    assert rows["child"]["parent"] == "root"


def test_status_and_remove(fs: FileSystem, agents: Agents) -> None:
    agents.spawn(b"a")
    agents.set_status("a", "running")
    assert agents.get("a").status == "running"
    with pytest.raises(FsError) as e:
        agents.set_status("a", "asleep")
    assert e.value.errno == errno.EINVAL
    agents.remove("a")
    with pytest.raises(FsError):
        agents.get("a")
    assert [x.name for x in fs.readdir(agents.dir_ino())] == []
