"""`agents/NAME/context.json` and `observations/`, rendered from the agent's files.

Inputs are the agent's own files (`system`, `tools.json`, `prompt`,
`transcript`, `config`, `notes/todo.md`); the compaction state is kept as an
extended attribute of the agent's directory, so forks inherit it (copy on
write) and a fork's rendering is byte-identical to its origin's up to the fork
point. Stubs name observations relative to the agent's directory for the same
reason: a path with the agent's name in it would differ between forks.

`Contexts` keeps one incremental `Renderer` per agent: each render reads
only the transcript bytes appended since the last one, so the cost of a turn
does not grow with the length of the conversation. `render_agent_context` is
the from-scratch reference the tests compare it with.
"""

from __future__ import annotations

import errno
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agentfs.agents.model import Agent, Agents, Role
from agentfs.agents.render import (
    CompactionState,
    Observation,
    Policy,
    Renderer,
    extract_observations,
    render,
)
from agentfs.errors import FsError

STATE_XATTR = b"trusted.agentfs.compaction"
OBSERVATION_BASE = "."  # stubs say ./observations/ID: the same in every fork


def _read(agents: Agents, a: Agent, role: Role) -> bytes:
    ino = a.ino(role)
    return agents.fs.read(ino, 0, agents.fs.getattr(ino).size)


def _todo(agents: Agents, a: Agent) -> str | None:
    try:
        ino = agents.fs.lookup(a.ino(Role.NOTES), b"todo.md").ino
    except FsError:
        return None
    return agents.fs.read(ino, 0, agents.fs.getattr(ino).size).decode("utf-8", "replace")


def _tools(raw: bytes) -> list[dict[str, Any]]:
    try:
        tools = json.loads(raw or b"[]")
    except ValueError as e:
        raise FsError(errno.EINVAL, f"tools.json is not valid JSON: {e}")
    if not isinstance(tools, list):
        raise FsError(errno.EINVAL, "tools.json must hold a JSON array of tool definitions")
    return tools


def _policy(raw: bytes) -> Policy:
    try:
        return Policy.parse(raw.decode("utf-8", "replace"))
    except ValueError as e:
        raise FsError(errno.EINVAL, f"config: {e}")


def _state(agents: Agents, a: Agent) -> CompactionState:
    try:
        return CompactionState.decode(agents.fs.getxattr(a.root_ino, STATE_XATTR).decode())
    except FsError:
        return CompactionState()


def _save_state(agents: Agents, a: Agent, old: CompactionState, new: CompactionState) -> None:
    if new != old:
        agents.fs.setxattr(a.root_ino, STATE_XATTR, new.encode().encode())


def agent_inputs(agents: Agents, a: Agent) -> tuple[str, list[dict], str, list[dict], Policy]:
    system = _read(agents, a, Role.SYSTEM).decode("utf-8", "replace")
    tools = _tools(_read(agents, a, Role.TOOLS))
    prompt = _read(agents, a, Role.PROMPT).decode("utf-8", "replace")
    lines = [json.loads(x) for x in _read(agents, a, Role.TRANSCRIPT).splitlines() if x]
    return system, tools, prompt, lines, _policy(_read(agents, a, Role.CONFIG))


def render_agent_context(agents: Agents, a: Agent) -> bytes:
    """context.json rendered from scratch (the reference for `Contexts.render`)."""
    system, tools, prompt, lines, policy = agent_inputs(agents, a)
    state = _state(agents, a)
    body, new_state = render(OBSERVATION_BASE, system, tools, prompt, lines,
                             _todo(agents, a), policy, state)
    _save_state(agents, a, state, new_state)
    return body + b"\n"


@dataclass
class _Incremental:
    """What has been read of one agent's transcript, rendered incrementally."""

    inputs: tuple[bytes, bytes, bytes, bytes]  # system, tools, prompt, config as rendered
    policy: Policy
    renderer: Renderer
    offset: int = 0  # transcript bytes consumed (always whole lines)
    observations: list[Observation] = field(default_factory=list)


class Contexts:
    """Incremental context.json and observations for every agent (a bounded cache)."""

    def __init__(self, agents: Agents, capacity: int = 64,
                 max_bytes: int = 256 * 1024 * 1024) -> None:
        self.agents = agents
        self.capacity = capacity
        self.max_bytes = max_bytes  # transcript bytes held (about twice that in memory)
        self._cache: OrderedDict[int, _Incremental] = OrderedDict()

    def _inputs(self, a: Agent) -> tuple[bytes, bytes, bytes, bytes]:
        return (_read(self.agents, a, Role.SYSTEM), _read(self.agents, a, Role.TOOLS),
                _read(self.agents, a, Role.PROMPT), _read(self.agents, a, Role.CONFIG))

    def _current(self, a: Agent) -> _Incremental:
        """The agent's renderer, brought up to the end of its transcript."""
        inputs = self._inputs(a)
        inc = self._cache.get(a.view)
        fs = self.agents.fs
        t = a.ino(Role.TRANSCRIPT)
        size = fs.getattr(t).size
        if inc is None or inc.inputs != inputs or size < inc.offset:
            system, tools, prompt, config = inputs
            policy = _policy(config)
            inc = _Incremental(inputs, policy, Renderer(
                OBSERVATION_BASE, system.decode("utf-8", "replace"), _tools(tools),
                prompt.decode("utf-8", "replace"), policy))
        self._cache[a.view] = inc
        self._cache.move_to_end(a.view)
        while len(self._cache) > self.capacity or (
                len(self._cache) > 1
                and sum(x.offset for x in self._cache.values()) > self.max_bytes):
            self._cache.popitem(last=False)
        if size > inc.offset:
            new = fs.read(t, inc.offset, size - inc.offset)
            end = new.rfind(b"\n") + 1  # lines are appended whole; never read half of one
            threshold = inc.policy.observation_threshold_bytes
            for raw in new[:end].splitlines():
                if raw:
                    line = json.loads(raw)
                    turn = inc.renderer.append(line)
                    inc.observations += extract_observations(turn, line, threshold)
            inc.offset += end
        return inc

    def render(self, a: Agent) -> bytes:
        """context.json: the same bytes as render_agent_context, incrementally."""
        inc = self._current(a)
        state = _state(self.agents, a)
        body, new_state = inc.renderer.render(_todo(self.agents, a), state)
        _save_state(self.agents, a, state, new_state)
        return body + b"\n"

    def observations(self, a: Agent) -> list[Observation]:
        """The agent's observations (bulky tool results), in transcript order."""
        return self._current(a).observations
