"""`agentfs tree`'s pictures and `ls`'s columns, from lineage records alone
(agentfs/cli/graph.py, treeview.py, agentinfo.py): dot source deterministic
and well escaped (checked by Graphviz itself), the forest, the JSON shapes.
The same commands on a real mount are in tests/mount/test_tree_graph_cli.py."""

from __future__ import annotations

import random
import shutil
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from agentfs.cli import graph, treeview
from agentfs.cli.agentinfo import agent_info, cache_text, cost_text, ls_lines

SVG = "{http://www.w3.org/2000/svg}"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot is not installed (scripts/install)")


class FakeUsage:
    """What agentinfo reads from a runner.Usage."""

    def __init__(self, cost: float, read: int, written: int, fresh: int) -> None:
        self.model, self.requests, self.output_tokens = "claude-sonnet-4-6", 3, 10
        self.cost_usd = cost
        self.cache_read_input_tokens = read
        self.cache_creation_input_tokens = written
        self.input_tokens = fresh
        total = read + written + fresh
        self.cache_read_share = read / total if total else 0.0


def rec(name: str, parent: str | None = None, origin: str | None = None, at: int = 0,
        turns: int = 0, status: str = "idle", usage: Any = None) -> dict[str, Any]:
    return agent_info({"name": name, "parent": parent, "origin": origin,
                       "kind": "fork" if origin else "spawn", "shared_prefix_turns": at,
                       "turns": turns, "status": status}, usage)


def family() -> list[dict[str, Any]]:
    return [rec("lead", turns=6, status="running", usage=FakeUsage(0.1234, 900, 50, 50)),
            rec("kid", "lead", turns=2, status="done"),
            rec("grandkid", "kid", status="waiting"),
            rec("retry", "lead", "lead", at=2, turns=3, status="failed"),
            rec("twin", "lead", "lead", at=6, turns=6),
            rec("stray", "gone-parent", "gone-origin", at=4, turns=4, status="weird")]


def svg_graph(source: str) -> tuple[list[str], list[tuple[str, str]], ET.Element]:
    """(node titles, (edge class, edge title) pairs, the SVG root) of `source` drawn by dot."""
    root = ET.fromstring(graph.render(source, "svg"))
    nodes, edges = [], []
    for g in root.iter(f"{SVG}g"):
        classes = g.get("class", "").split()
        title = g.find(f"{SVG}title")
        assert title is not None
        if "node" in classes:
            nodes.append(title.text or "")
        elif "edge" in classes:
            edges.append((classes[1], title.text or ""))
    return nodes, sorted(edges), root


def test_dot_source_is_deterministic() -> None:
    infos = family()
    first = graph.dot_source(infos)
    for seed in range(5):
        shuffled = infos[:]
        random.Random(seed).shuffle(shuffled)
        assert graph.dot_source(shuffled) == first
    assert first.startswith("digraph agentfs {\n") and first.endswith("}\n")
    lines = first.splitlines()
    assert '  "lead" -> "kid" [class="spawn", color="#555555", arrowhead=normal];' in lines
    assert any(line.startswith('  "lead" -> "retry" [class="fork", style=dashed')
               and line.endswith('label="lead@2"];') for line in lines)
    # A fork the daemon made has its origin as parent: one (fork) edge, not two.
    assert sum('-> "twin"' in line for line in lines) == 1
    # Gone parents and origins are no nodes and no edges: the label says it.
    assert not any('"gone-parent"' in line or '"gone-origin"' in line for line in lines)
    stray = next(line for line in lines if line.startswith('  "stray"'))
    assert "parent gone-parent (gone)\\nfork of gone-origin@4 (gone)" in stray


def test_labels_carry_status_turns_cache_and_cost() -> None:
    lines = graph.dot_source(family()).splitlines()
    lead = next(line for line in lines if line.startswith('  "lead" ['))
    assert 'label="lead\\nrunning, 6 turns\\ncache 90.0%, $0.1234"' in lead
    assert 'class="agent running"' in lead
    kid = next(line for line in lines if line.startswith('  "kid" ['))
    assert 'label="kid\\ndone, 2 turns"' in kid  # no usage file: no figures
    def look(line: str) -> tuple[str, ...]:
        return tuple(line.split(f'{attr}="')[1].split('"')[0] for attr in ("style", "fillcolor"))

    looks = {line.split('"')[1]: look(line) for line in lines if " [label=" in line}
    assert len(set(looks.values())) == 6  # every status looks different


@needs_dot
def test_svg_nodes_are_the_agents_and_edges_the_lineage() -> None:
    nodes, edges, _ = svg_graph(graph.dot_source(family()))
    assert sorted(nodes) == ["grandkid", "kid", "lead", "retry", "stray", "twin"]
    assert edges == [("fork", "lead->retry"), ("fork", "lead->twin"),
                     ("spawn", "kid->grandkid"), ("spawn", "lead->kid")]


def test_a_fork_by_another_agent_gets_both_edges() -> None:
    """Lineage inferred from files can name a spawner that is not the origin."""
    infos = [rec("a", turns=3), rec("b"), rec("c", "b", "a", at=2, turns=2)]
    lines = graph.dot_source(infos).splitlines()
    assert sum(line.startswith('  "b" -> "c" [class="spawn"') for line in lines) == 1
    assert sum(line.startswith('  "a" -> "c" [class="fork"') for line in lines) == 1


ODD = ['q"uote', "back\\slash", "trail\\", 'both\\"', "new\nline", "<b>&amp;</b>",
       "{ x -> y; }", "été ✓", "sp ace", "-- //"]


def as_node_name(name: str) -> str:
    return name.replace("\\", "\\\\").replace("\n", "\\n")


@needs_dot
def test_odd_names_stay_one_well_formed_string() -> None:
    """Whatever the text, dot parses the source, every agent is one node and
    every label shows its name as written (in a node's name a backslash stays
    doubled and a newline escaped: DOT cannot unescape them there, and the
    daemon refuses such names anyway)."""
    infos = [rec("root", status='st"at\\us')] + [rec(n, "root", status="idle") for n in ODD]
    infos.append(rec("fork", ODD[0], ODD[0], at=1))
    nodes, edges, root = svg_graph(graph.dot_source(infos))
    assert sorted(nodes) == sorted(["root", "fork", *map(as_node_name, ODD)])
    assert len(edges) == len(ODD) + 1
    texts = [t.text for t in root.iter(f"{SVG}text")]
    for n in ODD:
        for line in n.split("\n"):
            assert line in texts, (line, texts)
    assert 'st"at\\us, 0 turns' in texts


def test_quote() -> None:
    assert graph.quote("plain") == '"plain"'
    assert graph.quote('a"b') == '"a\\"b"'
    assert graph.quote("a\\") == '"a\\\\"'
    assert graph.quote("a\nb") == '"a\\nb"'
    assert graph.quote("&lt;") == '"&amp;lt;"'


@needs_dot
def test_png_has_the_png_header() -> None:
    assert graph.render(graph.dot_source(family()), "png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_without_dot_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(graph.RenderError, match="apt-get install graphviz"):
        graph.render("digraph {}", "svg")


@needs_dot
def test_render_reports_dot_failures() -> None:
    with pytest.raises(graph.RenderError, match="dot -Tsvg failed"):
        graph.render("digraph { this is not dot", "svg")


def test_format_from_the_output_suffix() -> None:
    assert graph.format_for(None, None) == "text"
    assert graph.format_for(None, "x/tree.PNG") == "png"
    assert graph.format_for(None, "tree.gv") == "dot"
    assert graph.format_for(None, "tree.out") == "text"
    assert graph.format_for("svg", "tree.png") == "svg"


def test_forest_and_text() -> None:
    assert treeview.text_lines(family()) == [
        "lead  running turns=6",
        "├── kid  done turns=2",
        "│   └── grandkid  waiting turns=0",
        "├── retry  fork@2  failed turns=3",
        "└── twin  fork@6  idle turns=6",
        "stray  fork of gone-origin@4  weird turns=4  (parent gone-parent is gone)",
    ]
    # A parent cycle still shows every agent once.
    cycle = [rec("x", "y"), rec("y", "x")]
    assert treeview.text_lines(cycle) == ["x  idle turns=0", "└── y  idle turns=0"]


def test_tree_json_nests_children() -> None:
    roots = treeview.nested_json(family())
    assert [r["name"] for r in roots] == ["lead", "stray"]
    lead = roots[0]
    assert [k["name"] for k in lead["children"]] == ["kid", "retry", "twin"]
    assert lead["children"][0]["children"][0]["name"] == "grandkid"
    assert set(lead) == {"name", "status", "turns", "parent", "origin", "kind",
                         "shared_prefix_turns", "usage", "children"}


def test_agent_info_shape() -> None:
    info = rec("lead", turns=6, status="running", usage=FakeUsage(0.1234, 900, 50, 50))
    assert info == {"name": "lead", "status": "running", "turns": 6, "parent": None,
                    "origin": None, "kind": "spawn", "shared_prefix_turns": 0,
                    "usage": {"model": "claude-sonnet-4-6", "requests": 3,
                              "input_tokens": 50, "cache_creation_input_tokens": 50,
                              "cache_read_input_tokens": 900, "output_tokens": 10,
                              "cache_read_share": 0.9, "cost_usd": 0.1234}}
    assert (cost_text(info), cache_text(info)) == ("$0.1234", "90.0%")
    none = rec("kid")
    assert none["usage"] is None and (cost_text(none), cache_text(none)) == ("-", "-")
    # A usage file before any prompt token: a cost, but no share to show.
    empty = rec("new", usage=FakeUsage(0.0, 0, 0, 0))
    assert (cost_text(empty), cache_text(empty)) == ("$0.0000", "-")


def test_ls_lines() -> None:
    lines = ls_lines(family())
    assert lines[0].split() == ["NAME", "STATUS", "TURNS", "PARENT", "ORIGIN", "COST", "CACHE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["lead"] == ["lead", "running", "6", "-", "-", "$0.1234", "90.0%"]
    assert rows["retry"] == ["retry", "failed", "3", "lead", "lead@2", "-", "-"]
    assert list(rows) == sorted(rows)
    assert len({len(line) for line in lines[:1]}) == 1


def test_a_deep_chain_of_forks() -> None:
    """Thousands of forks of forks: no recursion limit in the way."""
    depth = 3000
    infos = [rec("a0", turns=1)] + [rec(f"a{n}", f"a{n - 1}", f"a{n - 1}", at=1, turns=1)
                                    for n in range(1, depth)]
    lines = treeview.text_lines(infos)
    assert len(lines) == depth
    assert lines[2] == "    └── a2  fork@1  idle turns=1"
    text = treeview.nested_json_text(infos)
    assert text.count('"name"') == depth and text.endswith("]\n")
    assert graph.dot_source(infos).count(" [label=") == depth
