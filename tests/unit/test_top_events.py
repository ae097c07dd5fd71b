"""agentfs top's reader of MOUNT/.agentfs/events, fed lines from a plain file.

The stream's contract (shared with the daemon's side): one JSON object per
line with seq (contiguous from 1), time, event, agent; byte offsets stable;
st_size current. The reader follows it by byte offset, waits for a line to
be whole, skips lines that break the contract, and says `lost` when it can
no longer trust its cursor (a seq gap, a file that shrank or vanished).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentfs.cli import top_events
from agentfs.cli.top_events import EventTail, parse_event


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def line(seq: int, event: str = "status", agent: str = "a", **fields: Any) -> bytes:
    obj = {"seq": seq, "time": 1700000000.0 + seq, "event": event, "agent": agent, **fields}
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            + "\n").encode()


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_new_lines_in_order_and_a_partial_line_waits(tmp_path: Path) -> None:
    path = tmp_path / "events"
    path.write_bytes(b"")
    clock = Clock()
    tail = EventTail(path, min_interval=0.25, clock=clock)
    assert tail.poll().events == []
    whole = line(1, "spawn", "a", parent=None) + line(2, "message", "a", name="m", sender="b",
                                                      bytes=3)
    third = line(3, "status", "a", status="running", old="idle")
    append(path, whole + third[:10])
    clock.t += 1
    batch = tail.poll()
    assert [e["seq"] for e in batch.events] == [1, 2] and not batch.lost
    assert batch.events[0]["parent"] is None and batch.events[1]["sender"] == "b"
    append(path, third[10:])
    clock.t += 1
    batch = tail.poll()
    assert [(e["seq"], e["status"]) for e in batch.events] == [(3, "running")]
    assert tail.offset == path.stat().st_size


def test_stats_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "events"
    path.write_bytes(b"")
    clock = Clock()
    tail = EventTail(path, min_interval=0.25, clock=clock)
    tail.poll()
    append(path, line(1))
    assert tail.poll().events == []  # too soon: not even a stat
    clock.t += 0.1
    assert tail.poll().events == []
    clock.t += 0.2
    assert [e["seq"] for e in tail.poll().events] == [1]


def test_at_end_reports_only_what_comes_after(tmp_path: Path) -> None:
    path = tmp_path / "events"
    path.write_bytes(line(1) + line(2))
    assert EventTail.at_end(tmp_path / "missing") is None
    clock = Clock()
    tail = EventTail.at_end(path, clock=clock)
    assert tail is not None and tail.offset == path.stat().st_size
    assert tail.poll().events == []
    append(path, line(3))
    clock.t += 1
    batch = tail.poll()
    # the first event seen is not a gap: the reader started at an offset, not a seq
    assert [e["seq"] for e in batch.events] == [3] and not batch.lost


def test_a_seq_gap_means_events_were_lost(tmp_path: Path) -> None:
    path = tmp_path / "events"
    path.write_bytes(line(1))
    clock = Clock()
    tail = EventTail(path, clock=clock)
    assert [e["seq"] for e in tail.poll().events] == [1]
    append(path, line(5) + line(6))
    clock.t += 1
    batch = tail.poll()
    assert batch.lost and "2..4" in batch.reason
    assert [e["seq"] for e in batch.events] == [5, 6]


def test_a_reader_resumed_from_a_seq_skips_what_it_saw(tmp_path: Path) -> None:
    path = tmp_path / "events"
    path.write_bytes(line(1) + line(2) + line(3))
    tail = EventTail(path, last_seq=2, clock=Clock())
    batch = tail.poll()
    assert [e["seq"] for e in batch.events] == [3] and not batch.lost


def test_shrunk_or_vanished_stream_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "events"
    path.write_bytes(line(1) + line(2))
    clock = Clock()
    tail = EventTail(path, clock=clock)
    tail.poll()
    path.write_bytes(line(1))
    clock.t += 1
    batch = tail.poll()
    assert batch.lost and "shrank" in batch.reason
    path.unlink()
    clock.t += 1
    batch = tail.poll()
    assert batch.lost and str(path) in batch.reason


def test_lines_that_break_the_contract_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events"
    bad = [b"not json\n", b"[1,2]\n", b'{"seq":"2","event":"x","agent":"a"}\n',
           b'{"seq":2,"agent":"a"}\n', b'{"seq":2,"event":"x","agent":null}\n',
           b"\xff\xfe\n", b"\n"]
    path.write_bytes(line(1) + b"".join(bad) + line(2))
    tail = EventTail(path, clock=Clock())
    batch = tail.poll()
    assert [e["seq"] for e in batch.events] == [1, 2] and not batch.lost
    assert tail.bad_lines == 6
    assert parse_event(line(7, "remove", "x")) == json.loads(line(7, "remove", "x"))


def test_a_long_backlog_is_read_over_several_polls(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(top_events, "MAX_READ", 1000)
    path = tmp_path / "events"
    path.write_bytes(b"".join(line(i, "turn", "a", turn=i, role="user", bytes=10)
                              for i in range(1, 101)))
    clock = Clock()
    tail = EventTail(path, clock=clock)
    seen: list[int] = []
    for _ in range(100):
        batch = tail.poll()
        assert not batch.lost
        seen += [e["seq"] for e in batch.events]
        clock.t += 1
        if tail.offset == path.stat().st_size:
            break
    seen += [e["seq"] for e in tail.poll().events]
    assert seen == list(range(1, 101))
