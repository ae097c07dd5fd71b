"""fsck for the agent layer's records (see agents/model.py and storage/keys.py):

- every agent record `A<name>` decodes, its view is live and `a<view>` names
  it back;
- every `a<view>` names an existing agent whose view it is;
- every inbox counter `Q<view>` of a live view belongs to that view's agent
  and holds a u64 >= 1 (in a dead view it is garbage that gc drops with it);
- every turn record `T<view><turn>` decodes to [epoch, transcript size], the
  sizes do not decrease from one turn to the next, and the turn's epoch is
  pinned by the agent's turn holder (`P<view><epoch>t<view>`), so a fork at
  that turn can still see it;
- every history record `H<view>` decodes to [FORMAT, origin_view, origin_turn];
  every live agent has one; each turn a history inherits resolves, along the
  chain of origins, to a recorded turn; a removed agent's history (no
  `a<view>`) is kept only while a fork still inherits from it, and only the
  turns some fork inherited;
- an agent's turn count is what its history holds: its own turns follow on
  from the turns it inherited, without gaps.
"""

from __future__ import annotations

from agentfs.agents.history import Lineage
from agentfs.agents.model import Agent
from agentfs.storage import codec, keys
from agentfs.storage.views import Tx


def check_agents(tx: Tx, problems: list[str]) -> None:
    _check_agent_records(tx, problems)
    _check_view_names(tx, problems)
    _check_inbox_counters(tx, problems)
    _check_turns(tx, problems)
    _check_histories(tx, problems)
    _check_lineage(tx, problems)


def _live(tx: Tx, vid: int) -> bool:
    try:
        return tx.view(vid).kind != "dead"
    except Exception:  # noqa: BLE001 - missing or undecodable: fsck names the view itself
        return False


def _agent_view(raw: bytes) -> int:
    """The view of an encoded agent record (raises if it does not decode)."""
    return Agent.decode("", raw).view


def _check_agent_records(tx: Tx, problems: list[str]) -> None:
    for k, raw in tx.txn.scan(*keys.agent_span()):
        name = keys.parse_agent(k)
        try:
            view = _agent_view(raw)
        except Exception as e:  # noqa: BLE001 - report, don't crash
            problems.append(f"agent {name!r}: undecodable record ({e})")
            continue
        if not _live(tx, view):
            problems.append(f"agent {name!r}: its view {view} is dead or missing "
                            "(the agent is registered without its directory)")
        back = tx.txn.get(keys.agent_of_view(view))
        if back is None:
            problems.append(f"agent {name!r}: its view {view} does not name it (no a<view>)")
        elif back != name.encode():
            problems.append(f"agent {name!r}: its view {view} names agent {back!r}")


def _check_view_names(tx: Tx, problems: list[str]) -> None:
    for k, raw in tx.txn.scan(*keys.AGENT_OF_VIEW.span()):
        view = keys.parse_view_id(k)
        agent = tx.txn.get(keys.agent(raw))
        if agent is None:
            problems.append(f"view {view} names agent {raw!r}, which does not exist")
            continue
        try:
            owner = _agent_view(agent)
        except Exception:  # noqa: BLE001 - _check_agent_records names it
            continue
        if owner != view:
            problems.append(f"view {view} names agent {raw!r}, whose view is {owner}")


def _check_inbox_counters(tx: Tx, problems: list[str]) -> None:
    for k, raw in tx.txn.scan(*keys.INBOX_SEQ.span()):
        view = keys.parse_view_id(k)
        if not _live(tx, view):
            continue  # goes with the view
        if tx.txn.get(keys.agent_of_view(view)) is None:
            problems.append(f"inbox counter of view {view}, which is no agent's view")
        if len(raw) != 8 or keys.read_u64(raw) < 1:
            problems.append(f"inbox counter of view {view}: {raw.hex()} is not a u64 >= 1")


def _check_turns(tx: Tx, problems: list[str]) -> None:
    last_view, last_size = 0, 0
    for k, raw in tx.txn.scan(*keys.TURN.span()):
        view, turn = keys.parse_turn(k)
        rec = _decode_turn(raw)
        if rec is None:
            problems.append(f"turn {turn} of view {view}: undecodable record {raw.hex()}")
            continue
        epoch, size = rec
        if view == last_view and size < last_size:
            problems.append(f"turn {turn} of view {view}: transcript size {size} is below "
                            f"the previous turn's {last_size}")
        last_view, last_size = view, size
        if tx.txn.get(keys.pin(view, epoch, keys.turn_holder(view))) is None:
            problems.append(f"turn {turn} of view {view}: its epoch {epoch} is not pinned "
                            "for the agent's turns")


def _decode_turn(raw: bytes) -> tuple[int, int] | None:
    try:
        rec = codec.unpack(raw)
    except Exception:  # noqa: BLE001
        return None
    if (isinstance(rec, list) and len(rec) == 2
            and all(isinstance(n, int) and n >= 0 for n in rec)):
        return rec[0], rec[1]
    return None


def _check_histories(tx: Tx, problems: list[str]) -> None:
    for k, raw in tx.txn.scan(*keys.HISTORY.span()):
        view = keys.parse_view_id(k)
        try:
            rec = codec.unpack(raw)
        except Exception:  # noqa: BLE001
            rec = None
        if not (isinstance(rec, list) and len(rec) >= 3 and rec[0] == codec.FORMAT):
            problems.append(f"history of view {view}: undecodable record {raw.hex()}")


def _lineages(tx: Tx) -> dict[int, Lineage]:
    out = {}
    for k, raw in tx.txn.scan(*keys.HISTORY.span()):
        try:
            out[keys.parse_view_id(k)] = Lineage.decode(raw)
        except Exception:  # noqa: BLE001 - _check_histories names it
            continue
    return out


def _own_turns(tx: Tx) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for k, _ in tx.txn.scan(*keys.TURN.span()):
        view, n = keys.parse_turn(k)
        out.setdefault(view, []).append(n)
    return out


def _check_lineage(tx: Tx, problems: list[str]) -> None:
    lineages = _lineages(tx)
    turns = _own_turns(tx)
    agents = {}
    for k, raw in tx.txn.scan(*keys.agent_span()):
        try:
            agents[keys.parse_agent(k)] = Agent.decode(keys.parse_agent(k), raw)
        except Exception:  # noqa: BLE001 - _check_agent_records names it
            continue
    live_views = {a.view for a in agents.values()}
    for view in turns:
        if view not in lineages:
            problems.append(f"view {view} has turn records but no history record (H)")
    for a in agents.values():
        h = lineages.get(a.view)
        if h is None:
            problems.append(f"agent {a.name!r}: no history record (H<{a.view}>)")
            continue
        own = turns.get(a.view, [])
        want = list(range(h.origin_turn + 1, a.turns + 1))
        if own != want:
            problems.append(f"agent {a.name!r}: {a.turns} turns, {h.origin_turn} inherited, "
                            f"but its own turn records are {_ranges(own)}")
    needed: dict[int, int] = {}
    for view, h in lineages.items():
        if h.origin_view:
            needed[h.origin_view] = max(needed.get(h.origin_view, 0), h.origin_turn)
        for n in range(1, h.origin_turn + 1):
            owner = _owner(lineages, view, n)
            if n not in turns.get(owner, []):
                problems.append(f"history of view {view}: inherited turn {n} should be view "
                                f"{owner}'s, which has no record of it")
                break
    for view in lineages:
        if view in live_views:
            continue
        keep = needed.get(view, 0)
        if not keep:
            problems.append(f"history of removed agent view {view} is kept, but no fork "
                            "inherits from it")
        elif max(turns.get(view, [0])) > keep:
            problems.append(f"removed agent view {view} keeps turns past {keep}, the last "
                            "one a fork inherited")


def _owner(lineages: dict[int, Lineage], view: int, turn: int) -> int:
    for _ in range(10000):
        h = lineages.get(view)
        if h is None or not h.origin_view or turn > h.origin_turn:
            return view
        view = h.origin_view
    return view


def _ranges(ns: list[int]) -> str:
    return f"{ns[0]}..{ns[-1]} ({len(ns)})" if ns else "none"
