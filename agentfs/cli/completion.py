"""Shell completion of agent names (click's own completion does the rest:
`eval "$(_AGENTFS_COMPLETE=bash_source agentfs)"`).

A callback lists MOUNT/agents/ of the mount the command line names: its
--mount if typed before the word, else $AGENTFS_MOUNT, else the mount the
current directory is in. Completion runs on every Tab: it never raises (a
traceback would land in the user's prompt) and offers nothing when no
mount is found.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem


def mount_agents(ctx: click.Context) -> list[str]:
    from agentfs.client import Mount

    try:
        where = ctx.params.get("mount_opt")
        m = Mount.find(where) if where else Mount.find()
        return m.agents()
    except Exception:  # any failure means: nothing to offer
        return []


def agent_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """The agents whose name starts with what is typed."""
    return [CompletionItem(n) for n in mount_agents(ctx) if n.startswith(incomplete)]


def agent_or_path(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """For arguments that take an agent's name or a path (run AGENT, fork SRC):
    agent names, or the shell's own path completion once the word looks like a
    path or names no agent. (bash cannot offer both in one list.)"""
    names = [] if "/" in incomplete or incomplete.startswith(".") else \
        agent_names(ctx, param, incomplete)
    return names or [CompletionItem(incomplete, type="dir")]

