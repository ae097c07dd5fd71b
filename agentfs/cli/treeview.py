"""The spawn/fork tree as `agentfs tree` draws it in text and in JSON.

Both come from one forest: every agent exactly once, under its parent when
the parent is still there; an agent whose parent is gone (or caught in a
parent cycle) starts a tree of its own. agentfs/cli/graph.py draws the same
agents as a Graphviz graph.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
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
    listed and not yet placed (which also breaks parent cycles). Iterative:
    a chain of forks may be thousands deep."""
    ordered = in_tree_order(infos)
    names = {i["name"] for i in ordered}
    kids: dict[str, list[dict[str, Any]]] = {}
    for i in ordered:
        p = i.get("parent")
        if isinstance(p, str) and p in names and p != i["name"]:
            kids.setdefault(p, []).append(i)
    placed: set[str] = set()
    roots: list[Node] = []
    for top in ordered:
        if top["name"] in placed:
            continue
        placed.add(top["name"])
        roots.append(Node(top))
        stack = [roots[-1]]
        while stack:
            node = stack.pop()
            for k in kids.get(node.info["name"], []):
                if k["name"] not in placed:
                    placed.add(k["name"])
                    node.children.append(Node(k))
            stack.extend(reversed(node.children))
    return roots


def walk(roots: list[Node]) -> Iterator[tuple[Node, list[bool]]]:
    """Depth first, parents before children: each node with, for each of its
    ancestors below the root and itself, whether it is its parent's last child."""
    stack: list[tuple[Node, list[bool]]] = [(r, []) for r in reversed(roots)]
    while stack:
        node, lasts = stack.pop()
        yield node, lasts
        n = len(node.children)
        stack.extend((k, [*lasts, i == n - 1]) for i, k in reversed(list(enumerate(
            node.children))))


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
    out = []
    for node, lasts in walk(forest(infos)):
        rails = "".join("    " if last else "│   " for last in lasts[:-1])
        branch = ("└── " if lasts[-1] else "├── ") if lasts else ""
        out.append(rails + branch + text_label(node.info, names))
    return out


def nested_json(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`tree --json`: the roots, each agent's dict with its "children" nested."""
    return _nested(forest(infos))


def _nested(roots: list[Node]) -> list[dict[str, Any]]:
    made = {id(n): {**n.info, "children": []} for n, _ in walk(roots)}
    for n, _ in walk(roots):
        made[id(n)]["children"] = [made[id(k)] for k in n.children]
    return [made[id(r)] for r in roots]


def nested_json_text(infos: list[dict[str, Any]]) -> str:
    """nested_json on one line (indented, a deep tree's text would grow with
    the square of its depth). The encoder recurses, twice per level: allow the
    tree's depth for the time it takes."""
    roots = forest(infos)
    depth = max((len(lasts) for _, lasts in walk(roots)), default=0)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 4 * depth + 200))
    try:
        return json.dumps(_nested(roots), ensure_ascii=False) + "\n"
    finally:
        sys.setrecursionlimit(old)
