"""`MOUNT/.agentfs/events` through a real mount.

- A scripted session (spawn, spawn with a parent, turns, a fork at a turn, a
  message sent and consumed, status changes, remove, detach) watched by a
  `tail -f` started before it and by a client that follows part of the
  session, disconnects, and comes back from its cursor: both see every event
  of the session, in order, exactly once.
- SIGKILL of the daemon while a worker loops over agent operations: after
  the remount, every operation the worker saw complete has its events, and
  the one in flight has all of its events or none.
- Idle cost: followers polling the stream (tail -f, the client) make the
  daemon write nothing to the store.
- Reads at any offset, `tail -c`, st_size always current, and a read before
  the retained window fails with ENODATA and a reason in errstr.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import pytest
from agentfs.client import AgentfsError, Mount
from test_crash import read_journal

pytestmark = pytest.mark.agentfs_only

EVENTS = (".agentfs", "events")


def line(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": text}


def brief(e: dict[str, Any]) -> tuple[Any, ...]:
    """(event, agent) and the fields the script fixes (not time, bytes, names)."""
    keep = ("parent", "origin", "turn", "role", "status", "old", "sender")
    return (e["event"], e["agent"], *(f"{k}={e[k]}" for k in keep if k in e))


SCRIPT_FIRST = [
    ("spawn", "lead", "parent=None"),
    ("spawn", "kid", "parent=lead"),
    ("turn", "kid", "turn=1", "role=user"),
    ("turn", "kid", "turn=2", "role=assistant"),
    ("turn", "kid", "turn=3", "role=user"),
    ("turn", "kid", "turn=4", "role=assistant"),
    ("fork", "kid-past", "parent=kid", "origin=kid", "turn=2"),
    ("message", "kid-past", "sender=kid"),
    ("consumed", "kid-past"),
    ("status", "kid", "status=running", "old=idle"),
]
SCRIPT_REST = [
    ("turn", "kid-past", "turn=3", "role=user"),
    ("status", "lead", "status=waiting", "old=idle"),
    ("status", "kid", "status=done", "old=running"),
    ("message", "lead", "sender=kid"),
    ("remove", "kid-past"),
    ("detach", "kid"),
]


def session_first(m: Mount) -> None:
    m.spawn("lead", prompt="Lead.")
    kid = m.spawn("kid", prompt="Work.", parent="lead")
    for i in range(4):
        kid.append(line("user" if i % 2 == 0 else "assistant", f"turn {i + 1}"))
    past = kid.fork("kid-past", at=2)
    m.send("kid-past", "what you will learn", sender="kid")
    msg = past.recv(timeout=10)
    assert msg is not None and msg.sender == "kid"
    kid.set_status("running")


def session_rest(m: Mount) -> None:
    m.agent("kid-past").append(line("user", "thanks"))
    m.agent("lead").set_status("waiting")
    m.agent("kid").set_status("done")
    m.send("lead", "done", sender="kid")
    m.agent("kid-past").remove()
    with open(m.path.joinpath(".agentfs", "ctl"), "w") as f:
        f.write("detach agents/kid\n")


def wait_for_lines(path: Path, n: int, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_bytes().splitlines()
        if len(lines) >= n or time.monotonic() > deadline:
            return [json.loads(x) for x in lines]
        time.sleep(0.05)


def test_tail_f_and_a_reconnecting_client_see_every_event_once(mount, tmp_path: Path) -> None:
    mnt = mount.path
    os.makedirs(mnt / "agents", exist_ok=True)
    m = Mount(mnt)
    events = mnt.joinpath(*EVENTS)
    assert events.stat().st_size == 0
    tailed = tmp_path / "tail.out"
    with open(tailed, "wb") as out:
        tail = subprocess.Popen(["tail", "-n", "+1", "-s", "0.1", "-f", str(events)],
                                stdout=out)
    try:
        got_first: list[dict[str, Any]] = []
        ready = threading.Event()

        def follow_some() -> None:
            # Connects before the session, leaves after its first part.
            for e in m.events(after=0, follow=True, timeout=30):
                got_first.append(e)
                if len(got_first) == len(SCRIPT_FIRST):
                    break
            ready.set()

        reader = threading.Thread(target=follow_some)
        reader.start()
        session_first(m)
        assert ready.wait(30), f"the client saw only {got_first}"
        reader.join()
        cursor = got_first[-1]["seq"]
        session_rest(m)  # (the client is away)
        got_rest = []
        for e in m.events(after=cursor, follow=True, timeout=30):
            got_rest.append(e)
            if e["event"] == "detach":
                break
        want = SCRIPT_FIRST + SCRIPT_REST
        from_tail = wait_for_lines(tailed, len(want))
    finally:
        tail.terminate()
        tail.wait()
    client = got_first + got_rest
    for who, seen in (("client", client), ("tail -f", from_tail)):
        assert [e["seq"] for e in seen] == list(range(1, len(want) + 1)), who
        assert [brief(e) for e in seen] == want, who
    assert client == from_tail
    # The file is those lines, byte for byte, and its size is current.
    raw = events.read_bytes()
    assert raw == tailed.read_bytes() and events.stat().st_size == len(raw)
    assert raw == b"".join((json.dumps(e, sort_keys=True, separators=(",", ":"),
                                       ensure_ascii=False) + "\n").encode() for e in client)
    # The CLI prints the same, from a cursor.
    res = mount.cli("events", "--mount", str(mnt), "--after", "14", "--json")
    assert [json.loads(x) for x in res.stdout.splitlines()] == client[14:]
    text = mount.cli("events", "--mount", str(mnt), "--after", "15").stdout
    assert text.split()[2:4] == ["detach", "kid"]


def test_reads_at_any_offset_and_tail_c(mount) -> None:
    mnt = mount.path
    os.makedirs(mnt / "agents", exist_ok=True)
    m = Mount(mnt)
    a = m.spawn("a")
    for i in range(20):
        a.append(line("user" if i % 2 == 0 else "assistant", "é" * (i + 1)))
    path = mnt.joinpath(*EVENTS)
    whole = path.read_bytes()
    assert len(whole) == path.stat().st_size and whole.count(b"\n") == 21
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in (0, 1, 100, len(whole) - 3, len(whole), len(whole) + 10):
            assert os.pread(fd, 7, off) == whole[off:off + 7]
    finally:
        os.close(fd)
    tail = subprocess.run(["tail", "-c", "100", str(path)], capture_output=True, check=True)
    assert tail.stdout == whole[-100:]
    last = subprocess.run(["tail", "-n", "1", str(path)], capture_output=True, check=True)
    assert json.loads(last.stdout)["seq"] == 21
    with pytest.raises(OSError) as e:
        os.open(path, os.O_WRONLY)
    assert e.value.errno == errno.EACCES


def test_reading_before_the_window_is_enodata_with_a_reason(mount) -> None:
    mnt = mount.path
    os.makedirs(mnt / "agents", exist_ok=True)
    m = Mount(mnt)
    a = m.spawn("a")
    a.append(line("user", "one"))
    with open(mnt.joinpath(".agentfs", "ctl"), "w") as f:
        f.write("keep-events 5\n")
    assert "keeping the newest 5 events" in mnt.joinpath(".agentfs", "ctl").read_text()
    for i in range(2, 12):
        a.append(line("user" if i % 2 == 0 else "assistant", f"turn {i}"))
    got = list(m.events())
    assert [e["seq"] for e in got] == list(range(8, 13))  # the newest 5
    path = mnt.joinpath(*EVENTS)
    with pytest.raises(OSError) as e:
        path.read_bytes()
    assert e.value.errno == errno.ENODATA
    assert "were dropped" in m.errstr() and "tail -c +" in m.errstr()
    with pytest.raises(AgentfsError) as dropped:
        list(m.events(after=2))
    assert dropped.value.errno == errno.ENODATA
    assert [e["seq"] for e in m.events(after=9)] == [10, 11, 12]


def last_txnid(store: Path) -> int:
    env = lmdb.open(str(store / "lmdb"), readonly=True, lock=True, subdir=True)
    try:
        return int(env.info()["last_txnid"])
    finally:
        env.close()


def test_followers_cost_the_store_nothing_when_nothing_happens(mount, tmp_path: Path) -> None:
    mnt = mount.path
    os.makedirs(mnt / "agents", exist_ok=True)
    m = Mount(mnt)
    m.spawn("a").append(line("user", "hello"))
    time.sleep(0.5)  # (let any background gc after the spawn settle)
    with open(tmp_path / "tail.out", "wb") as out:
        tail = subprocess.Popen(["tail", "-n", "+1", "-s", "0.1", "-f",
                                 str(mnt.joinpath(*EVENTS))], stdout=out)
    try:
        before = last_txnid(mount.store)
        seen = list(m.events(follow=True, timeout=2.0))
        after = last_txnid(mount.store)
    finally:
        tail.terminate()
        tail.wait()
    assert [e["event"] for e in seen] == ["spawn", "turn"]
    assert after == before, f"{after - before} store writes while only followers polled"
    m.agent("a").set_status("running")  # (the measure sees a write when there is one)
    assert last_txnid(mount.store) > after


# ----------------------------------------------------------------- SIGKILL

WORKER = r"""
import json, os, sys
from agentfs.client import Mount
mnt, prefix, journal = sys.argv[1], sys.argv[2], sys.argv[3]
m = Mount(mnt)
j = open(journal, "a")
def note(**rec):
    j.write(json.dumps(rec) + "\n"); j.flush(); os.fsync(j.fileno())
def op(n, what, events, fn):
    note(t="begin", n=n, op=what, events=events)
    fn()
    note(t="done", n=n)
print("ready", flush=True)
n = 0
for i in range(10**6):
    a, f = f"{prefix}a{i}", f"{prefix}f{i}"
    two = (json.dumps({"role": "user", "content": f"q{i}"}) + "\n"
           + json.dumps({"role": "assistant", "content": "a" * (i % 50 + 1)}) + "\n").encode()
    def append():
        with open(f"{mnt}/agents/{a}/transcript", "ab") as t:
            t.write(two)
    steps = [
        ("spawn", [["spawn", a]], lambda: m.spawn(a)),
        ("append", [["turn", a], ["turn", a]], append),
        ("send", [["message", a]], lambda: m.send(a, "x" * (i % 300 + 1), sender="w")),
        ("recv", [["consumed", a]], lambda: m.agent(a).recv(timeout=5)),
        ("status", [["status", a]], lambda: m.agent(a).set_status("running")),
        ("fork", [["fork", f]], lambda: m.agent(a).fork(f, at=1)),
        ("remove", [["remove", f]], lambda: m.agent(f).remove()),
    ]
    for what, events, fn in steps:
        n += 1
        op(n, f"{what} {a}", events, fn)
"""


def check_round(got: list[dict[str, Any]], journal: Path, where: str) -> int:
    """The events since the round began are those of the completed operations,
    in order, then all or none of the operation in flight. Returns how many
    operations completed."""
    want: list[list[str]] = []
    pending: list[list[str]] = []
    done = 0
    for rec in read_journal(journal):
        if rec["t"] == "begin":
            pending = rec["events"]
        else:
            want += pending
            pending = []
            done += 1
    seen = [[e["event"], e["agent"]] for e in got]
    assert seen in (want, want + pending), (
        f"{where}: after SIGKILL + remount the stream holds {seen[-6:]} (of {len(seen)}); "
        f"expected the {len(want)} events of {done} completed operations "
        f"{want[-6:]}, optionally followed by {pending}")
    return done


@pytest.mark.slow
def test_every_committed_operation_has_its_event_after_sigkill(mount, tmp_path: Path) -> None:
    mnt = mount.path
    os.makedirs(mnt / "agents", exist_ok=True)
    rng = random.Random(12)
    total = 0
    for rnd in range(4):
        where = f"round {rnd}"
        start = max([e["seq"] for e in Mount(mnt).events()], default=0)
        journal = tmp_path / f"journal{rnd}.jsonl"
        err = tmp_path / f"worker{rnd}.err"
        with open(err, "wb") as errf, subprocess.Popen(
                [sys.executable, "-c", WORKER, str(mnt), f"r{rnd}-", str(journal)],
                stdout=subprocess.PIPE, stderr=errf) as proc:
            try:
                assert proc.stdout is not None
                assert proc.stdout.readline() == b"ready\n", err.read_text()
                time.sleep(rng.uniform(0.3, 1.0))
                assert proc.poll() is None, err.read_text()[-2000:]
                assert mount.proc is not None
                mount.proc.kill()  # the daemon first, then the worker
                mount.proc.wait()
            finally:
                proc.kill()
                proc.wait()
            mount.kill()
        mount.start()
        mount.fsck()
        got = list(Mount(mnt).events(after=start))
        assert [e["seq"] for e in got] == list(range(start + 1, start + 1 + len(got))), where
        total += check_round(got, journal, where)
    assert total >= 8, f"the workers completed only {total} operations"
    print(f"events after SIGKILL: 4 kills, {total} operations completed, each with its events")


def test_a_message_moved_out_of_the_inbox_is_consumed(mount) -> None:
    mnt = mount.path
    os.makedirs(mnt / "agents", exist_ok=True)
    m = Mount(mnt)
    a = m.spawn("a")
    m.send("a", "one", name="m1")
    m.send("a", "two", name="m2")
    first, second = sorted(os.listdir(a.path / "inbox"))
    os.rename(a.path / "inbox" / first, a.path / "inbox" / "kept")  # still in the inbox
    os.rename(a.path / "inbox" / second, a.path / "workspace" / "done")
    assert (a.path / "workspace" / "done").read_text() == "two"
    got = [brief(e) + (e.get("name"),) for e in m.events()][1:]
    assert got == [("message", "a", f"sender={m.identity()}", first),
                   ("message", "a", f"sender={m.identity()}", second),
                   ("consumed", "a", second)]


def test_agentfs_events_follow(mount) -> None:
    mnt = mount.path
    os.makedirs(mnt / "agents", exist_ok=True)
    m = Mount(mnt)
    m.spawn("a")
    proc = subprocess.Popen([sys.executable, "-m", "agentfs.cli", "events", "--mount", str(mnt),
                             "--follow", "--timeout", "4", "--json"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        m.agent("a").set_status("running")  # while it follows
        second = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=10) == 0  # (the timeout ends it)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert (first["event"], second["event"], second["status"]) == ("spawn", "status", "running")
