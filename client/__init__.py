"""agentfs.client: what agents and scripts use to work through a mounted agentfs.

File operations on the mount only; never the daemon, FUSE or trio.
"""

from .agents import (
    LINEAGE_FILE,
    Agent,
    AgentfsError,
    Message,
    Mount,
    dead_mount,
    dead_mount_reason,
    tree_order,
)

__all__ = ["LINEAGE_FILE", "Agent", "AgentfsError", "Message", "Mount", "dead_mount",
           "dead_mount_reason", "tree_order"]
