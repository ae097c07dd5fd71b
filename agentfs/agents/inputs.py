"""What an agent's context is rendered from, besides the transcript and the
todo: its system prompt, tools, prompt and context policy, parsed and checked
(context.py renders context.json from them, renderers.py finds the turns
that become compaction points)."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from typing import Any

from agentfs.agents.render import InvalidConfig, Policy, Renderer, validate_config
from agentfs.errors import FsError

OBSERVATION_BASE = "."  # stubs say ./observations/ID: the same in every fork


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
        return validate_config(raw)
    except InvalidConfig as e:
        raise FsError(errno.EINVAL, e.reason)


@dataclass(frozen=True)
class Inputs:
    """What an agent's context is rendered from, besides the transcript and the todo."""

    system: str
    tools: list[dict[str, Any]]
    prompt: str
    policy: Policy

    @classmethod
    def parse(cls, system: bytes, tools: bytes, prompt: bytes, config: bytes) -> Inputs:
        """Raises FsError(EINVAL) with a reason naming the file when tools.json
        or config is not valid."""
        return cls(system.decode("utf-8", "replace"), _tools(tools),
                   prompt.decode("utf-8", "replace"), _policy(config))

    def renderer(self) -> Renderer:
        return Renderer(OBSERVATION_BASE, self.system, self.tools, self.prompt, self.policy)
