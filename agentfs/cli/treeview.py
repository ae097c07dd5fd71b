"""The spawn/fork tree as `agentfs tree` draws it in text and in JSON.

Both come from one forest: every agent exactly once, under its parent when
the parent is still there; an agent whose parent is gone (or caught in a
parent cycle) starts a tree of its own. agentfs/cli/graph.py draws the same
agents as a Graphviz graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Node:
    info: dict[str, Any]  # agentinfo.agent_info
    children: list[Node] = field(default_factory=list)


def in_tree_order(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parents before children, depth first, children by name (the client's order)."""
    from agentfs.client import tree_order

    return tree_order({i["name"]: i for i in infos})


def forest(infos: list[dict[str, Any]]) -> list[Node]:
    """The roots, each agent placed once: under its parent if that one is
    listed and not yet placed (which also breaks parent cycles)."""
    ordered = in_tree_order(infos)
    names = {i["name"] for i in ordered}
    kids: dict[str, list[dict[str, Any]]] = {}
    for i in ordered:
        p = i.get("parent")
        if isinstance(p, str) and p in names and p != i["name"]:
            kids.setdefault(p, []).append(i)
    placed: set[str] = set()

    def place(info: dict[str, Any]) -> Node:
        placed.add(info["name"])
        node = Node(info)
        for k in kids.get(info["name"], []):
            if k["name"] not in placed:
                node.children.append(place(k))
        return node

    return [place(i) for i in ordered if i["name"] not in placed]


def text_label(info: dict[str, Any], names: set[str]) -> str:
    parts = [info["name"]]
    if info.get("origin"):
        at = info.get("shared_prefix_turns", 0)
        parts.append(f"fork@{at}" if info["origin"] == info.get("parent")
                     else f"fork of {info['origin']}@{at}")
    parts.append(f"{info.get('status', '')} turns={info.get('turns', 0)}")
    p = info.get("parent")
    if p and p not in names:
        parts.append(f"(parent {p} is gone)")
    return "  ".join(parts)


def text_lines(infos: list[dict[str, Any]]) -> list[str]:
    """The tree drawn with box characters, children under their parent."""
    names = {i["name"] for i in infos}
    out: list[str] = []

    def draw(node: Node, prefix: str, last: bool, top: bool) -> None:
        label = text_label(node.info, names)
        out.append(label if top else prefix + ("└── " if last else "├── ") + label)
        inner = "" if top else prefix + ("    " if last else "│   ")
        for n, kid in enumerate(node.children):
            draw(kid, inner, n == len(node.children) - 1, False)

    for root in forest(infos):
        draw(root, "", True, True)
    return out


def nested_json(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`tree --json`: the roots, each agent's dict with its "children" nested."""

    def as_json(node: Node) -> dict[str, Any]:
        return {**node.info, "children": [as_json(k) for k in node.children]}

    return [as_json(root) for root in forest(infos)]
