"""`agents/NAME/context.json`: the model-ready request, rendered from the agent's files.

Inputs are the agent's own files (`system`, `tools.json`, `prompt`,
`transcript`, `config`, `notes/todo.md`); the compaction state is kept as an
extended attribute of the agent's directory, so forks inherit it (copy on
write) and a fork's rendering is byte-identical to its origin's up to the fork
point. Stubs name observations relative to the agent's directory for the same
reason: a path with the agent's name in it would differ between forks.
"""

from __future__ import annotations

import errno
import json

from .agents import Agent, Agents, Role
from .errors import FsError
from .render import CompactionState, Policy, render

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


def agent_inputs(agents: Agents, a: Agent) -> tuple[str, list[dict], str, list[dict], Policy]:
    system = _read(agents, a, Role.SYSTEM).decode("utf-8", "replace")
    try:
        tools = json.loads(_read(agents, a, Role.TOOLS) or b"[]")
    except ValueError as e:
        raise FsError(errno.EINVAL, f"tools.json is not valid JSON: {e}")
    if not isinstance(tools, list):
        raise FsError(errno.EINVAL, "tools.json must hold a JSON array of tool definitions")
    prompt = _read(agents, a, Role.PROMPT).decode("utf-8", "replace")
    lines = [json.loads(x) for x in _read(agents, a, Role.TRANSCRIPT).splitlines() if x]
    try:
        policy = Policy.parse(_read(agents, a, Role.CONFIG).decode("utf-8", "replace"))
    except ValueError as e:
        raise FsError(errno.EINVAL, f"config: {e}")
    return system, tools, prompt, lines, policy


def render_agent_context(agents: Agents, a: Agent) -> bytes:
    system, tools, prompt, lines, policy = agent_inputs(agents, a)
    try:
        state = CompactionState.decode(
            agents.fs.getxattr(a.root_ino, STATE_XATTR).decode())
    except FsError:
        state = CompactionState()
    body, new_state = render(OBSERVATION_BASE, system, tools, prompt, lines,
                             _todo(agents, a), policy, state)
    if new_state != state:
        agents.fs.setxattr(a.root_ino, STATE_XATTR, new_state.encode().encode())
    return body + b"\n"
