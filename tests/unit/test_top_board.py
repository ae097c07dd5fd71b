"""agentfs top's board and its source, on a plain directory laid out like a
mount (.agentfs/ctl, .agentfs/lineage, .agentfs/events, agents/NAME/...):
what the events stream changes, what the fallback re-read finds, and the
text of the table. No daemon: the mount tests (tests/mount/test_top.py) run
the real thing in tmux.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from agentfs.client import Mount
from agentfs.client.runner import Usage, price

from agentfs.cli import top_table
from agentfs.cli.top_board import UNKNOWN, Row
from agentfs.cli.top_source import POLL_SECONDS, Source


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeMount:
    """The files of a mount that top reads, in a plain directory."""

    def __init__(self, root: Path, stream: bool = True) -> None:
        self.root = root
        (root / ".agentfs").mkdir(parents=True)
        (root / ".agentfs" / "ctl").write_text("agentfs pid=1\n")
        if stream:  # a daemon with the events stream (else one from before it)
            (root / ".agentfs" / "events").write_bytes(b"")
        (root / "agents").mkdir()
        self.records: list[dict[str, Any]] = []
        self.seq = 0
        self.write_lineage()

    def write_lineage(self) -> None:
        (self.root / ".agentfs" / "lineage").write_text(
            "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))

    def agent(self, name: str, parent: str | None = None, origin: str | None = None,
              prefix: int = 0, status: str = "idle", lines: list[dict[str, Any]] | None = None,
              inbox: int = 0) -> Path:
        d = self.root / "agents" / name
        (d / "inbox").mkdir(parents=True)
        for i in range(inbox):
            (d / "inbox" / f"00000{i + 1}-x+msg").write_text("hi\n")
        lines = lines or []
        (d / "transcript").write_text("".join(json.dumps(m) + "\n" for m in lines))
        (d / "status").write_text(f"{status} turns={len(lines)}\n")
        self.records.append({"name": name, "parent": parent, "origin": origin,
                             "kind": "fork" if origin else "spawn",
                             "shared_prefix_turns": prefix, "turns": len(lines),
                             "status": status})
        self.write_lineage()
        return d

    def event(self, event: str, agent: str, **fields: Any) -> None:
        self.seq += 1
        obj = {"seq": self.seq, "time": 1700000000.0 + self.seq, "event": event,
               "agent": agent, **fields}
        with open(self.root / ".agentfs" / "events", "a") as f:
            f.write(json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")


def usage_file(name: str, model: str = "claude-sonnet-4-6", n_in: int = 100,
               write: int = 2000, read: int = 7900, out: int = 50, cost: float = 0.0123) -> str:
    return (f"agent {name}\nmodel {model}\nrequests 1\ninput_tokens {n_in}\n"
            f"cache_creation_input_tokens {write}\ncache_read_input_tokens {read}\n"
            f"output_tokens {out}\ncache_read_share 0.79\ncost_usd {cost}\n")


USER = {"role": "user", "content": "hi"}
REPLY = {"role": "assistant", "content": [{"type": "text", "text": "hello"}]}


@pytest.fixture
def fake(tmp_path: Path) -> FakeMount:
    return FakeMount(tmp_path / "mnt")


@pytest.fixture
def old(tmp_path: Path) -> FakeMount:
    return FakeMount(tmp_path / "mnt", stream=False)


def source(fake: FakeMount, clock: Clock | None = None) -> Source:
    s = Source(Mount(fake.root), clock=clock or Clock())
    s.reload()
    return s


def tick(s: Source, clock: Clock) -> bool:
    clock.t += 1
    return s.tick()


# ---------------------------------------------------------------- the events stream


def test_events_change_only_what_they_say(fake: FakeMount) -> None:
    d = fake.agent("alice", lines=[USER, REPLY])
    (d / "usage").write_text(usage_file("alice"))
    fake.event("spawn", "alice", parent=None)  # history before top started: not replayed
    fake.event("status", "alice", status="running", old="idle")
    clock = Clock()
    s = source(fake, clock)
    assert s.mode == "events"
    alice = s.board.rows["alice"]
    assert (alice.turns, alice.figures().prompt_tokens, alice.inbox) == (2, 10000, 0)

    fake.event("spawn", "bob", parent="alice")
    fake.agent("bob", parent="alice", inbox=1)
    fake.event("message", "bob", name="000001-x+msg", sender="x", bytes=3)
    fake.event("message", "alice", name="000001-bob+msg", sender="bob", bytes=3)
    fake.event("status", "alice", status="running", old="idle")
    assert tick(s, clock)
    bob = s.board.rows["bob"]
    # a new agent's files are read after the batch of events is applied: its inbox
    # listing already holds the message of the event that followed its spawn
    assert bob.parent == "alice" and bob.inbox == 1
    assert (alice.status, alice.inbox) == ("running", 1)
    fake.event("consumed", "alice", name="000001-bob+msg")
    fake.event("consumed", "alice", name="000001-bob+msg")  # one too many: never below 0
    tick(s, clock)
    assert alice.inbox == 0

    # a turn with a usage object adds its tokens, priced by the agent's model; the
    # transcript is not read again
    fake.event("spawn", "carol", parent=None)
    fake.agent("carol")
    tick(s, clock)
    (fake.root / "agents" / "carol" / "transcript").write_text("garbage that is not read\n")
    u = {"input_tokens": 10, "cache_creation_input_tokens": 0,
         "cache_read_input_tokens": 990, "output_tokens": 7}
    fake.event("turn", "carol", turn=1, role="user", bytes=30)
    fake.event("turn", "carol", turn=2, role="assistant", bytes=80, usage=u)
    tick(s, clock)
    carol = s.board.rows["carol"]
    figs = carol.figures()
    p_in, p_out = price("")
    assert (carol.turns, figs.prompt_tokens, figs.output_tokens) == (2, 1000, 7)
    assert figs.cache_read_share == pytest.approx(0.99)
    assert figs.cost_usd == pytest.approx((10 * p_in + 990 * p_in * 0.1 + 7 * p_out) / 1e6)
    assert carol.last_turn == pytest.approx(1700000000.0 + fake.seq)

    # an assistant turn without usage: agentfs run rewrote the usage file; re-read it
    (d / "usage").write_text(usage_file("alice", n_in=200, out=60))
    fake.event("turn", "alice", turn=3, role="assistant", bytes=50)
    tick(s, clock)
    assert (alice.turns, alice.figures().input_tokens, alice.figures().output_tokens) == \
        (3, 200, 60)

    fake.event("remove", "bob")
    fake.event("detach", "carol")
    tick(s, clock)
    assert sorted(s.board.rows) == ["alice"]


def test_a_fork_event_counts_only_its_own_turns(fake: FakeMount) -> None:
    d = fake.agent("alice", lines=[USER, REPLY])
    (d / "usage").write_text(usage_file("alice"))
    clock = Clock()
    s = source(fake, clock)
    fake.event("fork", "alice-2", origin="alice", turn=2, parent="alice")
    f = fake.agent("alice-2", parent="alice", origin="alice", prefix=2, lines=[USER, REPLY])
    (f / "usage").write_text(usage_file("alice"))  # inherited: names its origin
    tick(s, clock)
    fork = s.board.rows["alice-2"]
    assert (fork.origin, fork.fork_turn, fork.turns) == ("alice", 2, 2)
    assert fork.figures() is None  # no request of its own yet
    fake.event("turn", "alice-2", turn=3, role="assistant", bytes=9,
               usage={"input_tokens": 5, "output_tokens": 1})
    tick(s, clock)
    assert (fork.figures().prompt_tokens, fork.figures().model) == (5, "claude-sonnet-4-6")
    lines = top_table.table(s.board, 80)
    assert lines[2].lstrip().startswith("└─alice-2@2")


def test_turns_read_at_load_are_not_counted_again(fake: FakeMount) -> None:
    """An event between the stream's stat and the read is seen by both: a turn
    is counted once, by its number."""
    fake.agent("a")
    clock = Clock()
    s = source(fake, clock)
    rows = s.board.rows
    rows["a"].count_line(1, {"input_tokens": 3})
    rows["a"].count_line(1, {"input_tokens": 3})
    fake.event("turn", "a", turn=1, role="assistant", bytes=9, usage={"input_tokens": 3})
    tick(s, clock)
    assert rows["a"].figures().input_tokens == 3


def test_unknown_agent_or_lost_events_reload_everything(fake: FakeMount) -> None:
    fake.agent("a")
    clock = Clock()
    s = source(fake, clock)
    fake.agent("b", status="running")  # created without its spawn event
    fake.event("status", "b", status="running", old="idle")
    tick(s, clock)
    assert s.board.rows["b"].status == "running"
    fake.agent("c")
    fake.seq += 5  # the stream dropped events before top read them
    fake.event("status", "a", status="done", old="idle")
    tick(s, clock)
    assert "c" in s.board.rows and "dropped" in s.note
    assert s.mode == "events"


def test_without_the_stream_everything_is_re_read_every_poll(old: FakeMount) -> None:
    fake = old
    d = fake.agent("a", lines=[USER])
    clock = Clock()
    s = source(fake, clock)
    assert s.mode.startswith("re-read")
    clock.t += POLL_SECONDS / 2
    assert not s.tick()  # not yet
    with open(d / "transcript", "a") as f:
        f.write(json.dumps(REPLY) + "\n")
    (d / "usage").write_text(usage_file("a", out=77))
    (d / "inbox" / "000001-b+msg").write_text("hi\n")
    fake.records[0].update(turns=2, status="done")
    fake.write_lineage()
    clock.t += POLL_SECONDS
    assert s.tick()
    row = s.board.rows["a"]
    assert (row.turns, row.status, row.inbox, row.figures().output_tokens) == (2, "done", 1, 77)
    assert row.offset == UNKNOWN  # its usage file has the figures: its lines are not read
    with open(d / "transcript", "a") as f:
        f.write(json.dumps(dict(REPLY, usage={"output_tokens": 5})) + "\n")
    (d / "usage").unlink()
    clock.t += POLL_SECONDS
    s.tick()
    assert row.figures().output_tokens == 5 and row.lines_seen == 3
    assert row.offset == (d / "transcript").stat().st_size  # read up to here, not again


def test_the_stream_appearing_switches_to_events(old: FakeMount) -> None:
    fake = old
    fake.agent("a")
    clock = Clock()
    s = source(fake, clock)
    assert s.tail is None
    fake.event("status", "a", status="running", old="idle")
    clock.t += POLL_SECONDS
    s.tick()
    assert s.mode == "events"


def test_line_usage_in_transcripts_counts_after_the_fork_point(fake: FakeMount) -> None:
    """Transcript lines that carry a usage object (another harness's) count for
    the agent that wrote them: a fork counts from its fork point on."""
    used = dict(REPLY, usage={"input_tokens": 40, "output_tokens": 4})
    fake.agent("a", lines=[USER, used])
    fake.agent("f", parent="a", origin="a", prefix=2, lines=[USER, used, USER, used])
    fake.agent("g", parent="a", origin="a", prefix=2, lines=[USER, used])
    s = source(fake)
    assert s.board.rows["a"].figures().input_tokens == 40
    assert s.board.rows["f"].figures().input_tokens == 40  # one of the two is its own
    g = s.board.rows["g"]  # none of its own: not even read
    assert g.figures() is None and (g.lines_seen, g.offset) == (2, (fake.root / "agents" / "g"
                                                                     / "transcript").stat().st_size)
    with open(fake.root / "agents" / "g" / "transcript", "a") as f:
        f.write(json.dumps(used) + "\n")
    fake.event("turn", "g", turn=3, role="assistant", bytes=9, usage=used["usage"])
    tick(s, Clock())
    assert g.figures().input_tokens == 40


# ---------------------------------------------------------------- the table


def test_table_fits_and_shows_the_tree(fake: FakeMount) -> None:
    d = fake.agent("planner", status="running", lines=[USER, REPLY], inbox=2)
    (d / "usage").write_text(usage_file("planner"))
    fake.agent("coder-with-a-very-long-name-indeed", parent="planner", status="waiting")
    fake.agent("tester", parent="planner")
    fake.agent("sub", parent="coder-with-a-very-long-name-indeed")
    s = source(fake)
    for width in (80, 60, 120):
        lines = top_table.table(s.board, width, selected="tester")
        assert all(len(line) <= width for line in lines), (width, lines)
    lines = top_table.table(s.board, 80, selected="tester")
    assert lines[0].split() == ["AGENT", "STATE", "TURNS", "IN", "OUT", "CACHE", "COST",
                                "INBOX", "LAST"]
    assert lines[1].split()[:9] == ["planner", "running", "2", "10.0k", "50", "79%", "$0.012",
                                    "2", lines[1].split()[8]]
    assert lines[2].split()[0] == "├─coder-with-a-very-lon…"
    assert lines[3].split()[:2] == ["│", "└─sub"]
    assert lines[4].startswith("> └─tester ")
    assert lines[-1].split() == ["TOTAL", "4", "agents", "2", "10.0k", "50", "79%", "$0.012", "2"]


def test_figures_read_at_a_glance() -> None:
    assert [top_table.tokens(n) for n in (0, 999, 1000, 12345, 999_499, 999_500, 2_500_000)] \
        == ["0", "999", "1.0k", "12.3k", "999k", "1.0M", "2.5M"]
    assert [top_table.dollars(x) for x in (0, 0.0123, 12.345, 123.45, 4321)] == \
        ["$0.000", "$0.012", "$12.35", "$123.5", "$4321"]
    assert [top_table.ago(t, 1000.0) for t in (None, 999.5, 940, 1000 - 7200, 1000 - 3 * 86400)]\
        == ["-", "0s", "1m", "2h", "3d"]


def test_usage_of_a_board_row_is_the_clients_usage() -> None:
    """Figures are agentfs.client.runner.Usage: one accounting, the runner's."""
    row = Row("x")
    row.count_line(1, {"input_tokens": 1000, "output_tokens": 10})
    expected = Usage("x")
    expected.add("", {"input_tokens": 1000, "output_tokens": 10})
    assert row.figures() == expected
