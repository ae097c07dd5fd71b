"""What `agentfs ls` and `agentfs tree` show about each agent: its lineage
record joined with its own usage file, as one JSON-ready dict.

The shape is the one `ls --json` prints and every node of `tree --json`
carries (documented in the README): every key is always present, `null`
when there is nothing to say, so a script can rely on it.

The client (agentfs.client) is imported inside functions only: the CLI
modules are imported by the core's layout test without any front end.
"""

from __future__ import annotations

from typing import Any

# The lineage record's keys, as `agentfs export` names them.
RECORD_KEYS = ("name", "status", "turns", "parent", "origin", "kind", "shared_prefix_turns")
# The usage file's figures (agents/NAME/usage, written by `agentfs run`).
USAGE_KEYS = ("model", "requests", "input_tokens", "cache_creation_input_tokens",
              "cache_read_input_tokens", "output_tokens", "cache_read_share", "cost_usd")


def own_usage(agent: Any) -> Any:
    """The agent's own agents/NAME/usage as a runner.Usage, or None.

    A fork inherits its origin's file, whose `agent` line names the origin:
    those are the origin's requests, not the fork's, so they count as none
    (the fork's runner starts its own counters the same way)."""
    from agentfs.client.runner import Usage

    try:
        usage = Usage.read(agent)
    except OSError:  # removed meanwhile, or not a regular file
        return None
    if usage is None or (usage.agent and usage.agent != agent.name):
        return None
    return usage


def usage_json(usage: Any) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {"model": usage.model or None, "requests": usage.requests,
            "input_tokens": usage.input_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_share": round(usage.cache_read_share, 4),
            "cost_usd": round(usage.cost_usd, 6)}


def agent_info(record: dict[str, Any], usage: Any) -> dict[str, Any]:
    """One agent: the lineage record's keys (normalised) and "usage"."""
    return {"name": record["name"], "status": str(record.get("status") or ""),
            "turns": int(record.get("turns") or 0), "parent": record.get("parent") or None,
            "origin": record.get("origin") or None,
            "kind": record.get("kind") or ("fork" if record.get("origin") else "spawn"),
            "shared_prefix_turns": int(record.get("shared_prefix_turns") or 0),
            "usage": usage_json(usage)}


def agent_infos(mount: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every agent of `mount` (a client Mount), in the records' order."""
    from agentfs.client import Agent

    return [agent_info(r, own_usage(Agent(mount, r["name"]))) for r in records]


def fork_point(info: dict[str, Any]) -> str:
    """ORIGIN@TURN for a fork ("" for a spawn): the turn its history was cut at."""
    if not info.get("origin"):
        return ""
    return f"{info['origin']}@{info.get('shared_prefix_turns', 0)}"


def cost_text(info: dict[str, Any]) -> str:
    u = info.get("usage")
    return f"${u['cost_usd']:.4f}" if u else "-"


def cache_text(info: dict[str, Any]) -> str:
    """The share of prompt tokens read from the cache ("-" before any request)."""
    u = info.get("usage")
    if not u or not (u["input_tokens"] + u["cache_creation_input_tokens"]
                     + u["cache_read_input_tokens"]):
        return "-"
    return f"{100 * u['cache_read_share']:.1f}%"


LS_HEADER = ("NAME", "STATUS", "TURNS", "PARENT", "ORIGIN", "COST", "CACHE")


def ls_lines(infos: list[dict[str, Any]]) -> list[str]:
    """`agentfs ls`: one aligned row per agent, by name, under LS_HEADER."""
    rows: list[tuple[str, ...]] = [LS_HEADER]
    for i in sorted(infos, key=lambda i: i["name"]):
        rows.append((i["name"], i["status"], str(i["turns"]), i["parent"] or "-",
                     fork_point(i) or "-", cost_text(i), cache_text(i)))
    return table(rows)


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]
