"""The spawn/fork tree as a Graphviz graph: `agentfs tree --format dot|svg|png`.

The dot source is written here, deterministically (agents in tree order,
attributes in a fixed order, figures with fixed precision), so that the same
tree gives the same bytes; svg and png are Debian's `dot` run on it.

Nodes are agents, named by the agent's name (an SVG node's <title> is
exactly the name), labelled with its status, turns and, when it has its own
usage file, its cache-read share and cost. Status shows as fill colour and
border style. A spawn edge (parent -> child) is solid; a fork edge
(origin -> fork) is dashed, labelled with the fork point ORIGIN@TURN. Edges
carry the SVG class `spawn` or `fork`, nodes `agent STATUS`.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from agentfs.cli.agentinfo import cache_text, cost_text, fork_point
from agentfs.cli.treeview import in_tree_order

FORMATS = ("text", "json", "dot", "svg", "png")
RENDERED = ("svg", "png")  # the formats `dot` makes
SUFFIXES = {".txt": "text", ".json": "json", ".dot": "dot", ".gv": "dot", ".svg": "svg",
            ".png": "png"}

# status -> (node style, fill colour, border colour, extra attributes): a
# border style as well as a colour, so that the picture reads in grey too.
STATUS_STYLE: dict[str, tuple[str, str, str, str]] = {
    "running": ("rounded,filled,bold", "#c8efc8", "#2e7d32", "penwidth=2"),
    "waiting": ("rounded,filled,dashed", "#fff0b3", "#a66f00", "penwidth=1.5"),
    "done": ("rounded,filled", "#d6e4ff", "#1f4e9c", "peripheries=2"),
    "idle": ("rounded,filled", "#eeeeee", "#666666", ""),
    "failed": ("filled,diagonals,bold", "#ffd0d0", "#b71c1c", "penwidth=2"),
}
UNKNOWN_STYLE = ("filled,dotted", "#ffffff", "#000000", "")
SPAWN_EDGE = 'class="spawn", color="#555555", arrowhead=normal'
FORK_EDGE = ('class="fork", style=dashed, color="#1f5fbf", fontcolor="#1f5fbf", '
             'arrowhead=empty')


def quote(s: str) -> str:
    """`s` as a DOT quoted string.

    Inside quotes DOT only unescapes \\" (and joins lines at a backslash-
    newline), so every backslash is doubled and every quote and newline
    escaped: any text stays one well-formed string. Graphviz also reads
    HTML entities in any string (&amp; would show as &), so & is written
    &amp;. In labels (escString) \\\\ and \\n read back as a backslash and a
    line break; in a node's name they stay as written, which only names the
    daemon refuses can contain."""
    return '"' + (s.replace("&", "&amp;").replace("\\", "\\\\").replace('"', '\\"')
                  .replace("\n", "\\n")) + '"'


def label_of(info: dict[str, Any], names: set[str]) -> str:
    """The node's lines: name; status and turns; cache share and cost; what is gone."""
    lines = [info["name"], f"{info['status'] or '?'}, {info['turns']} turns"]
    if info.get("usage"):
        lines.append(f"cache {cache_text(info)}, {cost_text(info)}")
    if info.get("parent") and info["parent"] not in names:
        lines.append(f"parent {info['parent']} (gone)")
    if info.get("origin") and info["origin"] not in names:
        lines.append(f"fork of {fork_point(info)} (gone)")
    # Each line escaped on its own, joined by DOT's centred line break.
    return '"' + "\\n".join(quote(line)[1:-1] for line in lines) + '"'


def node_line(info: dict[str, Any], names: set[str]) -> str:
    style, fill, border, extra = STATUS_STYLE.get(info["status"], UNKNOWN_STYLE)
    attrs = [f"label={label_of(info, names)}", f'style="{style}"', f'fillcolor="{fill}"',
             f'color="{border}"', f'class={quote("agent " + (info["status"] or "unknown"))}']
    if extra:
        attrs.append(extra)
    return f"  {quote(info['name'])} [{', '.join(attrs)}];"


def edge_lines(info: dict[str, Any], names: set[str]) -> list[str]:
    """The edges into one agent: from its spawner, and from its origin if it is a fork
    (one dashed edge when the two are the same agent, as for every fork the daemon makes)."""
    name, parent, origin = info["name"], info.get("parent"), info.get("origin")
    out = []
    if parent in names and parent != name and parent != origin:
        out.append(f"  {quote(parent)} -> {quote(name)} [{SPAWN_EDGE}];")
    if origin in names and origin != name:
        label = quote(fork_point(info))
        out.append(f"  {quote(origin)} -> {quote(name)} [{FORK_EDGE}, label={label}];")
    return out


def dot_source(infos: list[dict[str, Any]]) -> str:
    """The whole graph; the same agents give the same text."""
    ordered = in_tree_order(infos)
    names = {i["name"] for i in ordered}
    lines = [
        "digraph agentfs {",
        # Left to right: fork trees grow wide (ten forks of one point), and a
        # tall picture stays legible where a wide one is scaled down.
        '  graph [rankdir=LR, nodesep=0.2, ranksep=0.6, fontname="Helvetica", '
        'bgcolor="white"];',
        '  node [shape=box, fontname="Helvetica", fontsize=11, margin="0.15,0.06"];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    lines += [node_line(i, names) for i in ordered]
    lines += [e for i in ordered for e in edge_lines(i, names)]
    lines.append("}")
    return "\n".join(lines) + "\n"


class RenderError(Exception):
    """`dot` is missing or failed; the message says what to do."""


def render(source: str, fmt: str) -> bytes:
    """svg or png of `source`, by Graphviz's `dot`."""
    exe = shutil.which("dot")
    if exe is None:
        raise RenderError(f"--format {fmt} needs Graphviz's `dot` command, which is not on "
                          "PATH (Debian: apt-get install graphviz; scripts/install does it); "
                          "--format dot prints the graph's source without it")
    res = subprocess.run([exe, f"-T{fmt}"], input=source.encode(), capture_output=True,
                         timeout=120)
    if res.returncode != 0:
        raise RenderError(f"dot -T{fmt} failed (exit {res.returncode}): "
                          f"{res.stderr.decode(errors='replace').strip()}")
    return res.stdout


def format_for(fmt: str | None, output: str | None) -> str:
    """--format if given, else the one -o FILE's suffix names, else text."""
    if fmt:
        return fmt
    if output:
        for suffix, name in SUFFIXES.items():
            if output.lower().endswith(suffix):
                return name
    return "text"
