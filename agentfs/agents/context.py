"""`agents/NAME/context.json` and `observations/`, rendered from the agent's files.

Inputs are the agent's own files (`system`, `tools.json`, `prompt`,
`transcript`, `config`, `notes/todo.md`). Nothing else is kept: the
compaction state follows from those inputs (`Renderer` decides it turn by
turn), so reading `context.json` never writes, and a fork, whose transcript
is its origin's up to the fork point, renders byte-identically there. Stubs
name observations relative to the agent's directory for the same reason: a
path with the agent's name in it would differ between forks.

`Contexts` keeps one incremental `Renderer` per agent: each render reads
only the transcript bytes appended since the last one, so the cost of a turn
does not grow with the length of the conversation.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agentfs.agents.inputs import OBSERVATION_BASE, Inputs
from agentfs.agents.model import Agent, Agents, Role
from agentfs.agents.render import CompactionState, Observation, Renderer, extract_observations
from agentfs.errors import FsError

__all__ = ["OBSERVATION_BASE", "Contexts", "Inputs", "agent_inputs", "recitation"]


# ---------------------------------------------------------------- reading, read-only


def _read_range(agents: Agents, ino: int, offset: int, size: int) -> bytes:
    """The one place a render reads file data. It never writes: a render is the
    daemon's read, not the user's, so no atime is refreshed."""
    return agents.fs.read(ino, offset, size, touch_atime=False)


def _size(agents: Agents, ino: int) -> int:
    return agents.fs.getattr(ino).size


def _contents(agents: Agents, ino: int) -> bytes:
    return _read_range(agents, ino, 0, _size(agents, ino))


def _file(agents: Agents, a: Agent, role: Role) -> bytes:
    return _contents(agents, a.ino(role))


def recitation(agents: Agents, a: Agent) -> str | None:
    """The text of `notes/todo.md`, recited at the end of the body, if there is one."""
    try:
        ino = agents.fs.lookup(a.ino(Role.NOTES), b"todo.md").ino
    except FsError:
        return None
    return _contents(agents, ino).decode("utf-8", "replace")


# ---------------------------------------------------------------- inputs


def _raw_inputs(agents: Agents, a: Agent) -> tuple[bytes, bytes, bytes, bytes]:
    return (_file(agents, a, Role.SYSTEM), _file(agents, a, Role.TOOLS),
            _file(agents, a, Role.PROMPT), _file(agents, a, Role.CONFIG))


def agent_inputs(agents: Agents, a: Agent) -> tuple[Inputs, list[dict[str, Any]]]:
    """The agent's inputs and its transcript lines, read whole (for tests and tools;
    `Contexts` reads the transcript incrementally)."""
    lines = [json.loads(x) for x in _file(agents, a, Role.TRANSCRIPT).splitlines() if x]
    return Inputs.parse(*_raw_inputs(agents, a)), lines


# ---------------------------------------------------------------- the cache


@dataclass
class _Incremental:
    """What has been read of one agent's transcript, rendered incrementally."""

    raw: tuple[bytes, bytes, bytes, bytes]  # system, tools, prompt, config as read
    inputs: Inputs
    renderer: Renderer
    offset: int = 0  # transcript bytes consumed (always whole lines)
    observations: list[Observation] = field(default_factory=list)
    # The last body rendered and the recitation it was rendered with: a read of
    # context.json is a lookup, a getattr or two (its size) and an open, which
    # would otherwise render it about four times (bench: render was half of the
    # daemon's samples at 1k turns).
    last: tuple[str | None, bytes] | None = None

    def catch_up(self, new: bytes) -> None:
        """Append the whole lines at the start of `new`, the transcript from `offset`."""
        end = new.rfind(b"\n") + 1  # lines are appended whole; never read half of one
        threshold = self.inputs.policy.observation_threshold_bytes
        for raw in new[:end].splitlines():
            if raw:
                line = json.loads(raw)
                turn = self.renderer.append(line)
                self.observations += extract_observations(turn, line, threshold)
        if end:
            self.last = None
        self.offset += end

    def body(self, todo: str | None) -> bytes:
        if self.last is None or self.last[0] != todo:
            self.last = (todo, self.renderer.render(todo) + b"\n")
        return self.last[1]


class Contexts:
    """Incremental context.json and observations for every agent (a bounded cache)."""

    def __init__(self, agents: Agents, capacity: int = 64,
                 max_bytes: int = 256 * 1024 * 1024) -> None:
        self.agents = agents
        self.capacity = capacity
        self.max_bytes = max_bytes  # transcript bytes held (about twice that in memory)
        self._cache: OrderedDict[int, _Incremental] = OrderedDict()

    def _current(self, a: Agent) -> _Incremental:
        """The agent's renderer, brought up to the end of its transcript."""
        raw = _raw_inputs(self.agents, a)
        transcript = a.ino(Role.TRANSCRIPT)
        size = _size(self.agents, transcript)
        inc = self._cache.get(a.view)
        if inc is None or inc.raw != raw or size < inc.offset:
            inputs = Inputs.parse(*raw)
            inc = _Incremental(raw, inputs, inputs.renderer())
        self._keep(a.view, inc)
        if size > inc.offset:
            inc.catch_up(_read_range(self.agents, transcript, inc.offset, size - inc.offset))
        return inc

    def _keep(self, view: int, inc: _Incremental) -> None:
        """Cache `inc` as the most recent, evicting the least recent over the limits."""
        self._cache[view] = inc
        self._cache.move_to_end(view)
        while len(self._cache) > self.capacity or (
                len(self._cache) > 1
                and sum(x.offset for x in self._cache.values()) > self.max_bytes):
            self._cache.popitem(last=False)

    def render(self, a: Agent) -> bytes:
        """context.json: the body and a newline. Reads only."""
        return self._current(a).body(recitation(self.agents, a))

    def compaction(self, a: Agent) -> CompactionState:
        """The agent's compaction state (stubbing point and compaction turns)."""
        return self._current(a).renderer.state

    def observations(self, a: Agent) -> list[Observation]:
        """The agent's observations (bulky tool results), in transcript order."""
        return self._current(a).observations
