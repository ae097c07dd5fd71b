"""`agents/NAME/context.json` and `observations/`, rendered from the agent's files.

Inputs are the agent's own files (`system`, `tools.json`, `prompt`,
`transcript`, `config`, `notes/todo.md`). Nothing else is kept: the
compaction state follows from those inputs (`Renderer` decides it turn by
turn), so reading `context.json` never writes, and a fork, whose transcript
is its origin's up to the fork point, renders byte-identically there. Stubs
name observations relative to the agent's directory for the same reason: a
path with the agent's name in it would differ between forks.

`Contexts` renders with the agent layer's incremental `Renderer` of each
agent (renderers.py), which every append feeds with its lines: a read
catches it up only with the bytes appended since it was last fed (none,
usually), so the cost of a turn does not grow with the length of the
conversation, and each line is serialised and held once.
"""

from __future__ import annotations

import json
from typing import Any

from agentfs.agents.inputs import OBSERVATION_BASE, Inputs
from agentfs.agents.model import Agent, Agents, Role
from agentfs.agents.render import CompactionState, Observation
from agentfs.agents.renderers import Fed
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


class Contexts:
    """context.json and observations for every agent, from the renderers the
    agent layer feeds at each append (agents.renderers, renderers.py): a read
    catches one up with what was appended since it was last fed, if anything
    (after a remount, a changed config or an eviction: from the start), and
    reads only; the next append finds it in step and feeds only its lines."""

    def __init__(self, agents: Agents) -> None:
        self.agents = agents

    def _current(self, a: Agent) -> Fed:
        """The agent's renderer, brought up to the end of its transcript."""
        transcript = a.ino(Role.TRANSCRIPT)
        return self.agents.renderers.current(
            a.view, _raw_inputs(self.agents, a), _size(self.agents, transcript),
            lambda offset, n: _read_range(self.agents, transcript, offset, n))

    def render(self, a: Agent) -> bytes:
        """context.json: the body and a newline. Reads only."""
        return self._current(a).body(recitation(self.agents, a))

    def compaction(self, a: Agent) -> CompactionState:
        """The agent's compaction state (stubbing point and compaction turns)."""
        return self._current(a).renderer.state

    def observations(self, a: Agent) -> list[Observation]:
        """The agent's observations (bulky tool results), in transcript order."""
        return self._current(a).renderer.observations
