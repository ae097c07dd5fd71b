"""What `agentfs top` knows about a mount's agents, and how it keeps current.

One `Row` per agent: its place in the spawn/fork tree, state, turns, inbox
depth, the time of its last turn and its token figures. Two ways keep the
rows current:

- `Board.load(mount)` reads everything: the lineage file (tree, state and
  turns of every agent in one read), then each agent's usage file, inbox
  listing and transcript. Transcripts are append-only, so they are read
  from the byte offset reached last time: a reload costs a stat per agent
  when nothing was appended.
- `Board.apply(event)` takes one event of `MOUNT/.agentfs/events` and
  changes only what it says (a `message` adds one to the inbox depth, a
  `turn` with a usage object adds its tokens, ...); the few reads an event
  calls for (a new agent's files, an agent's usage file after an assistant
  turn) are queued and made by `Board.catch_up(mount)`.

Token figures: an agent's own `usage` file (written by `agentfs run`) when
it has one; else the `usage` objects of its transcript lines, counted from
its fork point on (the lines before are its origin's). A fork inherits its
origin's usage file, whose `agent` line names the origin: not its own.

The client library is imported lazily (the core imports no frontend).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

UNKNOWN = -1  # a transcript offset that events moved past without reading


@dataclass
class Row:
    name: str
    parent: str | None = None
    origin: str | None = None
    fork_turn: int = 0  # transcript lines shared with the origin
    status: str = ""
    turns: int = 0
    inbox: int = 0
    last_turn: float | None = None  # unix time of the last transcript line
    own_usage: Any = None  # agentfs.client.runner.Usage from agents/NAME/usage, if its own
    usage_stamp: tuple[int, int, int] | None = None  # that file's (ino, size, mtime) when read
    inbox_stamp: tuple[int, int] | None = None  # inbox/'s (ino, mtime) when listed
    model: str = ""  # prices the tokens of transcript lines
    line_usage: Any = None  # Usage summed from transcript lines after the fork point
    lines_seen: int = 0  # transcript lines already counted into line_usage
    offset: int = 0  # transcript bytes read so far (UNKNOWN: re-read from 0)

    def figures(self) -> Any:
        """The agent's Usage, or None when it has no figures at all."""
        if self.own_usage is not None:
            return self.own_usage
        return self.line_usage

    def count_line(self, turn: int, usage: Any) -> None:
        """Transcript line number `turn` carries `usage` (once per line)."""
        if turn <= self.lines_seen:
            return
        self.lines_seen = turn
        if turn <= self.fork_turn or not isinstance(usage, dict):
            return
        if self.line_usage is None:
            from agentfs.client.runner import Usage

            self.line_usage = Usage(self.name, model=self.model)
        self.line_usage.add(self.model, usage)


@dataclass
class Board:
    rows: dict[str, Row] = field(default_factory=dict)
    new_agents: set[str] = field(default_factory=set)  # to read whole (catch_up)
    stale_usage: set[str] = field(default_factory=set)  # usage file to re-read
    needs_reload: bool = False  # an event named an agent we never heard of

    # ------------------------------------------------------------ full reads

    def load(self, mount: Any, fresh: bool = False) -> None:
        """Re-read every agent (mount: an agentfs.client.Mount); `fresh`: even
        the files whose stat says they have not changed."""
        from agentfs.client import AgentfsError

        try:
            records = mount.lineage()
        except (AgentfsError, OSError, ValueError):
            records = []
        old = self.rows
        self.rows = {}
        for r in records:
            name = r.get("name")
            if not isinstance(name, str):
                continue
            row = old.get(name) or Row(name)
            fork_turn = int(r.get("shared_prefix_turns") or 0) if r.get("origin") else 0
            if fresh or fork_turn != row.fork_turn:
                row = Row(name)  # asked to, or another agent of that name: afresh
            row.parent, row.origin, row.fork_turn = r.get("parent"), r.get("origin"), fork_turn
            row.status, row.turns = str(r.get("status") or ""), int(r.get("turns") or 0)
            self.rows[name] = row
            self._read_agent(mount, row, status=False)
        self.new_agents.clear()
        self.stale_usage.clear()
        self.needs_reload = False

    def catch_up(self, mount: Any) -> None:
        """Make the reads the applied events called for."""
        if self.needs_reload:
            self.load(mount)
            return
        for name in sorted(self.new_agents):
            if name in self.rows:
                self._read_agent(mount, self.rows[name], status=True)
        for name in sorted(self.stale_usage - self.new_agents):
            if name in self.rows:
                self._read_usage(mount, self.rows[name])
        self.new_agents.clear()
        self.stale_usage.clear()

    def _read_agent(self, mount: Any, row: Row, status: bool) -> None:
        from agentfs.client import Agent

        path = mount.agents_dir / row.name
        if status:
            try:
                row.status, row.turns = Agent(mount, row.name).status()
            except (OSError, ValueError):
                pass  # removed meanwhile: its remove event follows
        try:
            # The listing costs the daemon several requests; the directory's
            # mtime moves with every message delivered or consumed.
            st = os.stat(path / "inbox")
            stamp = (st.st_ino, st.st_mtime_ns)
            if stamp != row.inbox_stamp:
                row.inbox = sum(1 for n in os.listdir(path / "inbox") if not n.startswith("."))
                row.inbox_stamp = stamp
        except OSError:
            row.inbox, row.inbox_stamp = 0, None
        self._read_usage(mount, row)
        self._read_transcript(path / "transcript", row)

    def _read_usage(self, mount: Any, row: Row) -> None:
        """agents/NAME/usage, unless a stat says it is the file read last time
        (`agentfs run` replaces it whole, by rename)."""
        from agentfs.client.runner import USAGE_FILE, Usage

        path = mount.agents_dir / row.name / USAGE_FILE
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == row.usage_stamp:
                return
            usage = Usage.parse(path.read_text(errors="replace"))
        except OSError:
            stamp, usage = None, None
        row.usage_stamp = stamp
        if usage is not None and usage.model:
            row.model = usage.model
        row.own_usage = usage if usage is not None and usage.agent == row.name else None

    def _read_transcript(self, path: Any, row: Row) -> None:
        """Read the lines appended since the last read (all of them the first time)."""
        try:
            st = os.stat(path)
        except OSError:
            return
        if row.turns:
            row.last_turn = st.st_mtime
        if row.offset == UNKNOWN or st.st_size < row.offset:
            row.offset, row.lines_seen, row.line_usage = 0, 0, None
        if row.own_usage is not None:
            row.offset = UNKNOWN  # its usage file has the figures: no need of the lines
            return
        if row.offset == 0 and row.turns == row.fork_turn:
            # A fork without a line of its own: every line is its origin's, none
            # counts (100 forks of a long transcript cost 100 stats, not 100 reads).
            row.offset, row.lines_seen = st.st_size, row.turns
            return
        if st.st_size == row.offset:
            return
        try:
            with open(path, "rb") as f:
                f.seek(row.offset)
                data = f.read(st.st_size - row.offset)
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        row.offset += end
        for line in data[:end].splitlines():
            turn = row.lines_seen + 1
            usage = None
            if b'"usage"' in line:
                try:
                    usage = json.loads(line).get("usage")
                except (ValueError, AttributeError):
                    usage = None
            if usage is None:
                row.lines_seen = turn
            else:
                row.count_line(turn, usage)

    # ------------------------------------------------------------ events

    def apply(self, ev: dict[str, Any]) -> None:
        """Change what one event of the stream says changed."""
        kind, name = ev.get("event"), ev.get("agent")
        if not isinstance(name, str):
            return
        if kind in ("spawn", "fork"):
            self.rows[name] = self._born(name, ev)
            self.new_agents.add(name)
            return
        if kind in ("remove", "detach"):
            self.rows.pop(name, None)
            return
        row = self.rows.get(name)
        if row is None:
            self.needs_reload = True
            return
        if kind == "turn":
            turn = _int(ev.get("turn"))
            row.turns = max(row.turns, turn)
            if isinstance(ev.get("time"), int | float):
                row.last_turn = float(ev["time"])
            row.offset = UNKNOWN  # the transcript grew without us reading it
            if isinstance(ev.get("usage"), dict):
                row.count_line(turn, ev["usage"])
            else:
                row.lines_seen = max(row.lines_seen, turn)
                if ev.get("role") == "assistant":
                    self.stale_usage.add(name)  # agentfs run rewrote its usage file
        elif kind == "message":
            row.inbox += 1
        elif kind == "consumed":
            row.inbox = max(0, row.inbox - 1)
        elif kind == "status" and isinstance(ev.get("status"), str):
            row.status = ev["status"]

    def _born(self, name: str, ev: dict[str, Any]) -> Row:
        """The row of an agent a spawn or fork event announces (its files are read next)."""
        row = Row(name, parent=ev.get("parent"), offset=UNKNOWN)
        if ev.get("event") == "fork":
            row.origin = ev.get("origin")
            row.fork_turn = row.turns = row.lines_seen = _int(ev.get("turn"))
            origin = self.rows.get(row.origin or "")
            row.model = origin.model if origin else ""
        return row

    # ------------------------------------------------------------ reading it

    def ordered(self) -> list[tuple[str, Row]]:
        """(tree prefix, row) depth first from the roots, children by name."""
        from agentfs.client import tree_order

        records = {n: {"name": n, "parent": r.parent} for n, r in self.rows.items()}
        order = [r["name"] for r in tree_order(records)]
        kids: dict[str, list[str]] = {}
        for n in order:
            p = self.rows[n].parent
            if p in self.rows and p != n:
                kids.setdefault(p, []).append(n)
        out: list[tuple[str, Row]] = []
        drawn: set[str] = set()

        def draw(n: str, prefix: str, last: bool, top: bool) -> None:
            drawn.add(n)
            out.append(("" if top else prefix + ("└─" if last else "├─"), self.rows[n]))
            below = [k for k in kids.get(n, []) if k not in drawn]
            inner = "" if top else prefix + ("  " if last else "│ ")
            for i, k in enumerate(below):
                draw(k, inner, i == len(below) - 1, False)

        for n in order:
            if n not in drawn:
                draw(n, "", True, True)
        return out


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0
