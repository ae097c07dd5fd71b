"""An agent's history: its turns, and where the turns it inherited live.

Every transcript line is a turn. Appending one pins the agent's whole tree as
it is after the line (holder `t<view>`, on the agent's view and the forks
nested in it) and records `T<view><turn>` = [epoch, transcript bytes]. A
fork inherits the turns before its fork point: `H<view>` = [origin view,
origin turn] says that turns 1..origin_turn of `view` are those of the origin
view, and so on up the chain. Walking views, not names, keeps a fork's
history its own: a name can be reused, and an origin can be removed.

Removing an agent does not take away what its forks can see: its turn records
and pins up to the highest turn any fork inherited are kept (the view itself
is dead, so nothing else of it is reachable), and released once the last such
fork goes. Everything here works inside the caller's transaction (a `Tree`).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from agentfs.errors import FsError
from agentfs.posix.forks import Tree
from agentfs.storage import codec, keys


@dataclass
class Lineage:
    """H<view>: turns 1..origin_turn of `view` are `origin_view`'s."""

    origin_view: int
    origin_turn: int

    def encode(self) -> bytes:
        return codec.pack([codec.FORMAT, self.origin_view, self.origin_turn])

    @classmethod
    def decode(cls, raw: bytes) -> Lineage:
        f = codec.unpack(raw)
        assert isinstance(f, list) and f[0] == codec.FORMAT, f"unknown lineage record {f!r}"
        return cls(int(f[1]), int(f[2]))


def begin(t: Tree, view: int, origin_view: int = 0, origin_turn: int = 0) -> None:
    """Start the history of a new agent view (spawned, or forked at a turn)."""
    t.tx.txn.put(keys.history(view), Lineage(origin_view, origin_turn).encode())


def lineage(t: Tree, view: int) -> Lineage | None:
    raw = t.tx.txn.get(keys.history(view))
    return None if raw is None else Lineage.decode(raw)


def record_turn(t: Tree, view: int, turn: int, transcript_size: int) -> int:
    """Remember the agent's whole tree as it is now, as turn `turn`; returns the epoch."""
    epoch = t.pin_tree(view, keys.turn_holder(view))
    t.tx.txn.put(keys.turn(view, turn), codec.pack([epoch, transcript_size]))
    return epoch


def turn_owner(t: Tree, view: int, turn: int) -> int:
    """The view whose own turn `turn` is, following the lineage of `view`."""
    for _ in range(10000):
        h = lineage(t, view)
        if h is None or not h.origin_view or turn > h.origin_turn:
            return view
        view = h.origin_view
    raise FsError(errno.ELOOP, "fork lineage too deep")


def turn_epoch(t: Tree, view: int, turn: int) -> tuple[int, int]:
    """(the view that owns turn `turn` of `view`'s history, the epoch of that turn)."""
    owner = turn_owner(t, view, turn)
    raw = t.tx.txn.get(keys.turn(owner, turn))
    if raw is None:
        raise FsError(errno.ENOENT, f"turn {turn} was not recorded")
    rec = codec.unpack(raw)
    assert isinstance(rec, list)
    return owner, int(rec[0])


def _needed_turns(t: Tree, view: int) -> int:
    """The highest turn of `view` that a history still depending on it inherited."""
    needed = 0
    for _, raw in t.tx.txn.scan(*keys.HISTORY.span()):
        h = Lineage.decode(raw)
        if h.origin_view == view:
            needed = max(needed, h.origin_turn)
    return needed


def _bypass(t: Tree, view: int) -> None:
    """Point the forks of removed view `view` that inherited only turns `view`
    itself inherited straight at its origin: nothing of `view` is needed for
    them, and gc may then drop it (its records with it) without breaking
    their lineage."""
    h = lineage(t, view)
    if h is None or not h.origin_view:
        return
    for k, raw in list(t.tx.txn.scan(*keys.HISTORY.span())):
        d = Lineage.decode(raw)
        if d.origin_view == view and d.origin_turn <= h.origin_turn:
            t.tx.txn.put(k, Lineage(h.origin_view, d.origin_turn).encode())


def release(t: Tree, view: int, is_live: bool) -> None:
    """Let go of the turns of removed agent `view` that nothing needs any more:
    all but those its descendants inherited. Its lineage then covers no more
    than that, so its origin (if removed too) may need less in turn."""
    while view and not is_live:
        _bypass(t, view)
        keep = _needed_turns(t, view)
        dropped = set()
        for k, raw in list(t.tx.txn.scan(*keys.span(keys.turn_prefix(view)))):
            if keys.parse_turn(k)[1] > keep:
                rec = codec.unpack(raw)
                assert isinstance(rec, list)
                dropped.add(int(rec[0]))
                t.tx.txn.delete(k)
        h = lineage(t, view)
        if keep:
            t.release(keys.turn_holder(view), dropped)
            if h is None or h.origin_turn <= keep:
                return  # what the origin must keep did not change
            h.origin_turn = keep
            t.tx.txn.put(keys.history(view), h.encode())
        else:
            t.release(keys.turn_holder(view))
            t.tx.txn.delete(keys.history(view))
            if h is None:
                return
        view = h.origin_view
        is_live = t.tx.txn.get(keys.agent_of_view(view)) is not None
