"""What the mount's event stream (`MOUNT/.agentfs/events`) says: one JSON line per
agent operation, written by `record` inside the operation's own transaction
(so after a crash an operation and its event are both there or both absent).

Every line is `json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False) + "\\n"` of an object with `seq` (1, 2, ... never reused),
`time` (unix seconds, 3 decimals), `event` (one of `KINDS`) and `agent` (the
agent's name), plus the fields of its kind:

    spawn       parent (name or null)
    fork        origin, turn (the fork point), parent
    turn        turn (the transcript's turns after this line), role, bytes
                (the line with its newline), usage (only if the line has one)
    message     name (the message's file name in the inbox), sender, bytes
    consumed    name (removed from the inbox)
    status      status, old
    compaction  turn (the turn that became a compaction point)
    remove      (agents/NAME removed: rmdir, or `remove` on its ctl)
    detach      (removed by `detach agents/NAME` on the mount's ctl)

Storage, offsets and the window are storage/eventlog.py's.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from agentfs.posix.fs import FileSystem, Tree
from agentfs.storage import eventlog
from agentfs.storage.kv import Txn

KINDS = ("spawn", "fork", "turn", "message", "consumed", "status", "compaction", "remove",
         "detach")

# json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
# without building an encoder per line (~1 us of an append's ~90 us).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def render(seq: int, time_ns: int, kind: str, agent: str, fields: dict[str, Any]) -> bytes:
    """The line of one event, byte-deterministic."""
    obj = {**fields, "seq": seq, "time": round(time_ns / 1e9, 3), "event": kind,
           "agent": agent}
    return (_CANONICAL.encode(obj) + "\n").encode()


Event = tuple[str, str, dict[str, Any]]  # kind, agent, fields


def record(t: Tree, kind: str, agent: str, **fields: Any) -> int:
    """Add event `kind` about `agent` in transaction `t`; returns its seq."""
    return record_all(t, [(kind, agent, fields)])[0]


def record_all(t: Tree, evs: list[Event]) -> list[int]:
    """Add these events, in order, in transaction `t` (one operation that
    makes many, e.g. a write of many transcript lines); returns their seqs."""
    assert all(kind in KINDS for kind, _, _ in evs), evs
    now = t.clock()
    makers = [functools.partial(_line, now, kind, agent, fields) for kind, agent, fields in evs]
    return [line.seq for line in eventlog.append(t.tx.txn, *makers)]


def _line(now: int, kind: str, agent: str, fields: dict[str, Any], seq: int) -> bytes:
    return render(seq, now, kind, agent, fields)


def keep(fs: FileSystem, keep_events: int, keep_bytes: int | None = None) -> eventlog.Head:
    """`keep-events N [BYTES]` on the mount's ctl: the stream keeps the newest
    N events (and at most BYTES bytes of them; the bytes limit stays as it
    was if not given). One transaction; gc trims the excess."""
    with fs.transaction() as t:
        return eventlog.set_limits(t.tx.txn, keep_events, keep_bytes)


def check_line(line: eventlog.Line) -> str | None:
    """What is wrong with a stored event line (None: nothing): one canonical
    JSON object with its own seq, a known kind and an agent."""
    try:
        obj = json.loads(line.data)
    except ValueError as e:
        return f"not JSON ({e})"
    if not isinstance(obj, dict):
        return "not a JSON object"
    if obj.get("seq") != line.seq:
        return f"its line says seq {obj.get('seq')!r}"
    if obj.get("event") not in KINDS or not isinstance(obj.get("agent"), str):
        return f"event {obj.get('event')!r} of agent {obj.get('agent')!r} is of no known kind"
    if line.data != (_CANONICAL.encode(obj) + "\n").encode():
        return "the line is not in canonical form"
    return None


def check(txn: Txn) -> list[str]:
    """fsck of the event stream (see storage/eventlog.py `check`)."""
    return eventlog.check(txn, check_line)
