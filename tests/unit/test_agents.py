"""The agent layer on the model: spawn, transcript turns, forks now and at a turn."""

from __future__ import annotations

import errno
import json
import stat

import pytest
from fsutil import dead_views, put_file

from agentfs.agents.model import SKELETON, Agents, Role
from agentfs.errors import FsError
from agentfs.posix.fs import ROOT_INO, FileSystem, SetAttr
from agentfs.storage import codec, keys


def line(role: str, text: str) -> bytes:
    return json.dumps({"role": role, "content": text}).encode()


def read_all(fs: FileSystem, ino: int) -> bytes:
    return fs.read(ino, 0, fs.getattr(ino).size)


def ws_write(fs: FileSystem, agents: Agents, name: str, fname: bytes, data: bytes) -> None:
    put_file(fs, agents.get(name).ino(Role.WORKSPACE), fname, data)


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
    with pytest.raises(FsError) as e:
        agents.append("a", b'{"role": "wizard", "content": "x"}')
    assert e.value.errno == errno.EINVAL and "role 'wizard'" in e.value.message
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


def store_bytes(fs: FileSystem) -> int:
    with fs.store.read() as tx:
        return sum(len(k) + len(v) for k, v in tx.txn.scan(b"", b"\xff"))


def test_transcript_turns_cost_their_bytes_not_a_block_each(fs: FileSystem,
                                                            agents: Agents) -> None:
    """Every turn pins the agent; a log-structured transcript makes that free:
    500 turns of ~1 KB store about 500 KB, not a 128 KiB tail block per turn."""
    agents.spawn(b"a")
    before = store_bytes(fs)
    text = "x" * 900
    for i in range(500):
        agents.append("a", line("user" if i % 2 == 0 else "assistant", f"{i} {text}"))
    t = agents.transcript_ino("a")
    size = fs.getattr(t).size
    grown = store_bytes(fs) - before
    assert size > 450_000
    assert grown < size * 1.5, (grown, size)
    # Fork at any turn still reads exactly the first N lines.
    agents.fork("a", b"past", at_turn=123)
    lines = read_all(fs, agents.transcript_ino("past")).splitlines()
    assert len(lines) == 123 and lines[-1].startswith(b'{"role": "user", "content": "122 ')
    agents.append("past", line("assistant", "a different turn 124"))
    assert read_all(fs, agents.transcript_ino("past")).splitlines()[-1] == \
        line("assistant", "a different turn 124")
    assert len(read_all(fs, t).splitlines()) == 500


def test_bulky_lines_are_stored_compressed_and_read_back_exactly(fs: FileSystem,
                                                                 agents: Agents) -> None:
    agents.spawn(b"a")
    out = "".join(f"line {i}: some tool output that repeats\n" for i in range(5000))
    msg = json.dumps({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": out}]}).encode()
    agents.append("a", line("user", "hi"))
    agents.append("a", json.dumps({"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "run", "input": {}}]}).encode())
    agents.append("a", msg)
    t = agents.transcript_ino("a")
    attr = fs.getattr(t)
    assert attr.stored < attr.size / 3  # st_blocks shows the compression
    whole = read_all(fs, t)
    assert whole.splitlines()[2] == msg
    # Reads at any offset and size, across record boundaries, give the same bytes.
    for off, n in [(0, 10), (5, 100_000), (len(whole) - 7, 100), (30, len(whole)),
                   (len(whole), 10), (131072, 131072)]:
        assert fs.read(t, off, n) == whole[off:off + n]


def test_log_files_refuse_rewrites_and_truncation(fs: FileSystem, agents: Agents) -> None:
    agents.spawn(b"a")
    agents.append("a", line("user", "hi"))
    t = agents.transcript_ino("a")
    size = fs.getattr(t).size
    for off in (0, 3, size + 1):
        with pytest.raises(FsError) as e:
            fs.write(t, off, b'{"role":"user","content":"x"}\n')
        assert e.value.errno == errno.EPERM
    for n in (0, 3, size + 10):
        with pytest.raises(FsError) as e:
            fs.setattr(t, SetAttr(size=n))
        assert e.value.errno == errno.EPERM
    fs.setattr(t, SetAttr(size=size))  # no change: allowed (O_TRUNC on an empty file)
    assert read_all(fs, t) == line("user", "hi") + b"\n"


def test_a_fork_reads_its_tail_without_walking_its_origins_later_turns(
        fs: FileSystem, agents: Agents) -> None:
    """Reading a fork's own appended lines must not step over every line its
    origin appended after the fork point (they are bounded out of the scan)."""
    agents.spawn(b"a")
    for i in range(5):
        agents.append("a", line("user" if i % 2 == 0 else "assistant", f"early {i}"))
    agents.fork("a", b"b", at_turn=5)
    for i in range(5, 2005):
        agents.append("a", line("user" if i % 2 == 0 else "assistant", f"late {i}"))
    agents.append("b", line("assistant", "the fork's own turn"))
    t = agents.transcript_ino("b")
    size = fs.getattr(t).size
    seen = 0
    real_scan = fs.store.engine.begin

    class Counting:
        def __init__(self, ctx: object) -> None:
            self.ctx = ctx

        def __enter__(self) -> object:
            txn = self.ctx.__enter__()  # type: ignore[attr-defined]
            inner = txn.scan

            def scan(start: bytes, end: bytes | None = None):  # type: ignore[no-untyped-def]
                nonlocal seen
                for kv in inner(start, end):
                    seen += 1
                    yield kv
            txn.scan = scan
            return txn

        def __exit__(self, *exc: object) -> object:
            return self.ctx.__exit__(*exc)  # type: ignore[attr-defined]

    fs.store.engine.begin = lambda write=False: Counting(real_scan(write))  # type: ignore[method-assign]
    try:
        tail = fs.read(t, size - 20, 20)
    finally:
        fs.store.engine.begin = real_scan  # type: ignore[method-assign]
    assert tail == (line("assistant", "the fork's own turn") + b"\n")[-20:]
    assert seen < 50, f"{seen} keys visited for one read"


def test_removing_an_agent_keeps_only_the_turns_its_forks_inherited(
        fs: FileSystem, agents: Agents) -> None:
    """Each turn pins the agent. Once it is removed, only the turns a fork
    inherited stay (the fork's history is its own); once the fork goes too,
    gc drops everything."""
    from agentfs.storage.gc import collect

    agents.spawn(b"a")
    for i in range(30):
        agents.append("a", line("user" if i % 2 == 0 else "assistant", f"turn {i}"))
        ws_write(fs, agents, "a", b"f", b"version %d" % i)
    agents.fork("a", b"keep", at_turn=10)
    view = agents.get("a").view
    agents.remove("a")
    collect(fs.store)
    with fs.store.read() as tx:
        kept = [keys.read_u32(k, 5) for k, _ in
                tx.txn.scan(b"T" + keys.u32(view), b"T" + keys.u32(view + 1))]
    assert kept == list(range(1, 11))
    assert ws_read(fs, agents, "keep", b"f") == b"version 8"  # written before turn 10
    # The fork can still be forked at (and show) the turns it inherited.
    agents.fork("keep", b"again", at_turn=4)
    assert ws_read(fs, agents, "again", b"f") == b"version 2"
    agents.remove("keep")
    collect(fs.store)
    with fs.store.read() as tx:
        kept = [keys.read_u32(k, 5) for k, _ in
                tx.txn.scan(b"T" + keys.u32(view), b"T" + keys.u32(view + 1))]
    assert kept == list(range(1, 5))  # what `again` still inherits
    agents.remove("again")
    collect(fs.store)
    assert dead_views(fs) == []


def test_turn_snapshots_include_forks_nested_in_the_workspace(fs: FileSystem,
                                                              agents: Agents) -> None:
    from agentfs.storage.gc import collect

    a = agents.spawn(b"a")
    ws = a.ino(Role.WORKSPACE)
    d = fs.create(ws, b"d", stat.S_IFDIR | 0o755, 0, 0)
    fs.fork(d.ino, ws, b"nested")
    nested = fs.lookup(ws, b"nested").ino
    f = fs.create(nested, b"f", stat.S_IFREG | 0o644, 0, 0).ino
    for i in range(6):
        fs.setattr(f, SetAttr(size=0))
        fs.write(f, 0, b"turn %d" % i)
        agents.append("a", line("user" if i % 2 == 0 else "assistant", f"turn {i}"))
    collect(fs.store)
    owner, epoch = agents.turn_epoch("a", 3)
    root = codec.fuse_ino(owner, Role.ROOT)
    snap = fs.snapshot(root, b"turn-3", epoch)
    sws = fs.lookup(snap.ino, b"workspace").ino
    got = fs.lookup(fs.lookup(sws, b"nested").ino, b"f")
    assert fs.read(got.ino, 0, 100) == b"turn 2"
    fs.delete_snapshot(root, b"turn-3")
    agents.remove("a")
    collect(fs.store)
    assert dead_views(fs) == []
