"""`agentfs tree --format dot|svg|png|json`, `ls`'s COST and CACHE columns,
--json on the commands that print tables, shell completion, and the script
that renders the README's picture: on a real mount, through the CLI.

The dot source's escaping and layout rules are unit-tested in
tests/unit/test_tree_graph.py."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from agentfs.client import Mount
from agentfs.client.runner import Usage

pytestmark = [pytest.mark.agentfs_only,
              pytest.mark.skipif(shutil.which("dot") is None,
                                 reason="Graphviz's dot is not installed (scripts/install)")]

CLI = [sys.executable, "-m", "agentfs.cli"]
AGENTFS = Path(sys.executable).parent / "agentfs"  # the installed command (completion)
REPO = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"
PNG_HEADER = b"\x89PNG\r\n\x1a\n"
AGENTS = {"lead", "planner", "coder", "lint", "lead-2", "helper", "planner-b", "twin"}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFS_")}
    env.update(extra)
    return env


def run(*args: str | Path, cwd: Path | str = "/", env: dict[str, str] | None = None,
        command: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*(command or CLI), *map(str, args)], capture_output=True,
                          cwd=cwd, env=env or clean_env(), timeout=120,
                          stdin=subprocess.DEVNULL)


def ok(res: subprocess.CompletedProcess[bytes]) -> bytes:
    assert res.returncode == 0, f"exit {res.returncode}:\n{res.stdout!r}\n{res.stderr!r}"
    return res.stdout


def refused(res: subprocess.CompletedProcess[bytes], *words: str) -> str:
    out = (res.stdout + res.stderr).decode()
    assert res.returncode != 0 and "Traceback" not in out, out
    for w in words:
        assert w in out, f"{w!r} not in {out!r}"
    return out


def talk(agent: Any, turns: int) -> None:
    for n in range(turns):
        agent.append({"role": "user" if n % 2 == 0 else "assistant", "content": f"t{n}"})


def bill(agent: Any, fresh: int, written: int, read: int) -> Usage:
    u = Usage(agent.name)
    u.add("claude-sonnet-4-6", {"input_tokens": fresh, "cache_creation_input_tokens": written,
                                "cache_read_input_tokens": read, "output_tokens": 100})
    (agent.path / "usage").write_text(u.render())
    return u


def build(m: Mount) -> dict[str, Usage]:
    """lead (4 turns) spawns planner (3) and coder; coder spawns lint; lead is
    forked at turn 2 (lead-2, which spawns helper) and now (twin: it inherits
    lead's usage file, which is not its own); planner is forked at turn 1."""
    lead = m.spawn("lead")
    talk(lead, 4)
    planner = m.spawn("planner", parent="lead")
    talk(planner, 3)
    coder = m.spawn("coder", parent="lead")
    m.spawn("lint", parent="coder")
    usage = {"lead": bill(lead, 100, 1000, 9000), "coder": bill(coder, 10, 0, 0)}
    lead2 = lead.fork("lead-2", at=2)
    m.spawn("helper", parent="lead-2")
    planner.fork("planner-b", at=1)
    lead.fork("twin")
    coder.set_status("running")
    lead2.set_status("failed")
    return usage


SPAWNS = {("lead", "planner"), ("lead", "coder"), ("coder", "lint"), ("lead-2", "helper")}
FORKS = {("lead", "lead-2"), ("planner", "planner-b"), ("lead", "twin")}


def svg_parts(data: bytes) -> tuple[list[str], dict[str, set[tuple[str, str]]]]:
    root = ET.fromstring(data)
    nodes: list[str] = []
    edges: dict[str, set[tuple[str, str]]] = {"spawn": set(), "fork": set()}
    for g in root.iter(f"{SVG}g"):
        classes = g.get("class", "").split()
        title = g.find(f"{SVG}title")
        assert title is not None and title.text
        if "node" in classes:
            nodes.append(title.text)
        elif "edge" in classes:
            src, dst = title.text.split("->")
            edges[classes[1]].add((src, dst))
    return nodes, edges


def test_tree_svg_shows_exactly_the_agents_and_their_lineage(mount: Any) -> None:
    m = Mount(mount.path)
    usage = build(m)
    out = ok(run("tree", "--format", "svg", cwd=mount.path))
    nodes, edges = svg_parts(out)
    assert sorted(nodes) == sorted(AGENTS)
    assert edges == {"spawn": SPAWNS, "fork": FORKS}
    # The same, from the lineage the daemon exports.
    lineage = {r["name"]: r for r in m.lineage()}
    assert {(r["parent"], n) for n, r in lineage.items() if r["kind"] == "spawn"
            and r["parent"]} == SPAWNS
    assert {(r["origin"], n) for n, r in lineage.items() if r["kind"] == "fork"} == FORKS
    root = ET.fromstring(out)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "lead@2" in texts and "planner@1" in texts and "lead@4" in texts  # fork points
    assert "running, 0 turns" in texts and "failed, 2 turns" in texts
    lead = usage["lead"]
    assert lead.cache_read_share == 9000 / 10100
    assert f"cache 89.1%, ${lead.cost_usd:.4f}" in texts  # lead's own usage file


def test_tree_dot_is_deterministic(mount: Any) -> None:
    build(Mount(mount.path))
    first = ok(run("tree", "--format", "dot", "--mount", mount.path))
    assert ok(run("tree", "--format", "dot", cwd=mount.path / "agents" / "lint")) == first
    mount.remount()
    assert ok(run("tree", "--format", "dot", "--mount", mount.path)) == first
    text = first.decode()
    assert text.startswith("digraph agentfs {") and text.count(" [label=") == len(AGENTS)


def test_tree_png_and_output_files(mount: Any, tmp_path: Path) -> None:
    build(Mount(mount.path))
    assert ok(run("tree", "--format", "png", cwd=mount.path))[:8] == PNG_HEADER
    assert ok(run("tree", "-o", tmp_path / "t.png", cwd=mount.path)) == b""
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG_HEADER
    ok(run("tree", "-o", tmp_path / "t.svg", cwd=mount.path))  # format from the suffix
    assert sorted(svg_parts((tmp_path / "t.svg").read_bytes())[0]) == sorted(AGENTS)
    ok(run("tree", "--format", "dot", "-o", tmp_path / "t.png", cwd=mount.path))
    assert (tmp_path / "t.png").read_text().startswith("digraph")  # --format wins
    ok(run("tree", "-o", tmp_path / "t.txt", cwd=mount.path))
    assert (tmp_path / "t.txt").read_bytes() == ok(run("tree", cwd=mount.path))
    refused(run("tree", "-o", tmp_path / "no" / "such" / "t.png", cwd=mount.path),
            "cannot write", "No such file or directory")


def test_tree_png_is_not_written_to_a_terminal(mount: Any) -> None:
    build(Mount(mount.path))
    leader, follower = pty.openpty()
    try:
        res = subprocess.run([*CLI, "tree", "--format", "png"], cwd=mount.path,
                             stdout=follower, stderr=subprocess.PIPE, env=clean_env(),
                             timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert res.returncode == 1 and b"not writing a PNG to a terminal" in res.stderr


def test_tree_without_dot_says_so(mount: Any) -> None:
    build(Mount(mount.path))
    env = clean_env(PATH="/nonexistent")
    for fmt in ("svg", "png"):
        refused(run("tree", "--format", fmt, cwd=mount.path, env=env),
                f"--format {fmt} needs Graphviz's `dot`", "apt-get install graphviz")
    assert ok(run("tree", "--format", "dot", cwd=mount.path, env=env)).startswith(b"digraph")
    refused(run("tree", "--json", "--format", "svg", cwd=mount.path), "contradict")


def test_ls_cost_and_cache_columns(mount: Any) -> None:
    usage = build(Mount(mount.path))
    lines = ok(run("ls", cwd=mount.path)).decode().splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "TURNS", "PARENT", "ORIGIN", "COST", "CACHE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    cost = {n: f"${u.cost_usd:.4f}" for n, u in usage.items()}
    assert rows["lead"] == ["lead", "idle", "4", "-", "-", cost["lead"], "89.1%"]
    assert rows["coder"] == ["coder", "running", "0", "lead", "-", cost["coder"], "0.0%"]
    assert rows["lead-2"] == ["lead-2", "failed", "2", "lead", "lead@2", "-", "-"]
    # twin holds lead's usage file (inherited at the fork): not twin's own spending.
    assert (mount.path / "agents" / "twin" / "usage").read_text().startswith("agent lead\n")
    assert rows["twin"][-2:] == ["-", "-"]
    assert set(rows) == AGENTS and list(rows) == sorted(rows)


def test_ls_json(mount: Any) -> None:
    usage = build(Mount(mount.path))
    infos = json.loads(ok(run("ls", "--json", cwd=mount.path)))
    assert [i["name"] for i in infos] == sorted(AGENTS)
    keys = ["name", "status", "turns", "parent", "origin", "kind", "shared_prefix_turns",
            "usage"]
    assert all(list(i) == keys for i in infos)
    by = {i["name"]: i for i in infos}
    assert by["lead-2"] == {"name": "lead-2", "status": "failed", "turns": 2, "parent": "lead",
                            "origin": "lead", "kind": "fork", "shared_prefix_turns": 2,
                            "usage": None}
    assert by["lead"]["usage"] == {
        "model": "claude-sonnet-4-6", "requests": 1, "input_tokens": 100,
        "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 9000,
        "output_tokens": 100, "cache_read_share": 0.8911,
        "cost_usd": round(usage["lead"].cost_usd, 6)}
    assert by["twin"]["usage"] is None
    assert json.loads(ok(run("ls", "--json", "--mount", mount.path))) == infos


def test_tree_json(mount: Any) -> None:
    build(Mount(mount.path))
    roots = json.loads(ok(run("tree", "--json", cwd=mount.path)))
    assert json.loads(ok(run("tree", "--format", "json", cwd=mount.path))) == roots

    def pairs(node: dict[str, Any]) -> set[tuple[str, str]]:
        out = set()
        for kid in node["children"]:
            out |= {(node["name"], kid["name"])} | pairs(kid)
        return out

    assert [r["name"] for r in roots] == ["lead"]
    assert pairs(roots[0]) == SPAWNS | FORKS
    flat = {i["name"]: i for i in json.loads(ok(run("ls", "--json", cwd=mount.path)))}
    assert {k: v for k, v in roots[0].items() if k != "children"} == flat["lead"]


def test_json_of_the_empty_mount(mount: Any) -> None:
    assert json.loads(ok(run("ls", "--json", cwd=mount.path))) == []
    assert json.loads(ok(run("tree", "--json", cwd=mount.path))) == []
    nodes, edges = svg_parts(ok(run("tree", "--format", "svg", cwd=mount.path)))
    assert nodes == [] and edges == {"spawn": set(), "fork": set()}


def test_snapshots_gc_and_fsck_json(mount: Any) -> None:
    m = Mount(mount.path)
    a = m.spawn("solo")
    talk(a, 2)
    a.snapshot("before")
    snaps = json.loads(ok(run("snapshots", "--json", a.path)))
    where = mount.path / "agents" / "solo" / ".snapshots"
    assert snaps == [{"name": n, "path": str(where / n)} for n in ("before", "turn-1", "turn-2")]
    assert [s["name"] for s in snaps] == ok(run("snapshots", a.path)).decode().split()
    counts = json.loads(ok(run("gc", "--mount", mount.path, "--json")))
    assert set(counts) == {"views", "versions", "dropped_views"}
    assert all(isinstance(v, int) for v in counts.values())
    report = json.loads(ok(run("fsck", "--store", mount.store, "--json")))
    assert report["clean"] is True and report["problems"] == []
    assert report["summary"] == ok(run("fsck", "--store", mount.store)).decode().strip()
    mount.umount()
    offline = json.loads(ok(run("gc", "--store", mount.store, "--json")))
    assert set(offline) == set(counts)
    mount.start()


# ----------------------------------------------------------------- shell completion


def complete(words: str, cwd: Path | str = "/", **env: str) -> list[tuple[str, str]]:
    """What bash gets on Tab after `words` (the last word is the one completed)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    res = run(command=[str(AGENTFS)], cwd=cwd,
              env=clean_env(_AGENTFS_COMPLETE="bash_complete", COMP_WORDS=words,
                            COMP_CWORD=str(cword), **env))
    assert res.returncode == 0 and not res.stderr, res
    lines = [line for line in res.stdout.decode().splitlines() if line]
    return [(t, v) for t, v in (line.split(",", 1) for line in lines)]


def values(items: list[tuple[str, str]]) -> list[str]:
    assert all(t == "plain" for t, _ in items), items
    return [v for _, v in items]


def test_completion_of_commands() -> None:
    commands = values(complete("agentfs "))
    for c in ("mount", "umount", "fork", "ls", "tree", "send", "recv", "run", "log",
              "snapshots", "export"):
        assert c in commands
    assert values(complete("agentfs tr")) == ["tree"]
    assert values(complete("agentfs tree --format ")) == ["text", "json", "dot", "svg", "png"]
    source = ok(run("--help", command=[str(AGENTFS)],
                    env=clean_env(_AGENTFS_COMPLETE="bash_source")))
    assert b"_AGENTFS_COMPLETE=bash_complete" in source
    for shell in ("zsh", "fish"):
        ok(run(command=[str(AGENTFS)], env=clean_env(_AGENTFS_COMPLETE=f"{shell}_source")))


def test_completion_of_agent_names(mount: Any) -> None:
    build(Mount(mount.path))
    mnt = str(mount.path)
    assert values(complete(f"agentfs send --mount {mnt} ")) == sorted(AGENTS)
    assert values(complete("agentfs log l", cwd=mnt)) == ["lead", "lead-2", "lint"]
    assert values(complete("agentfs recv pl", AGENTFS_MOUNT=mnt)) == ["planner", "planner-b"]
    assert values(complete("agentfs run c", cwd=mount.path / "agents")) == ["coder"]
    assert values(complete("agentfs spawn new --parent h", cwd=mnt)) == ["helper"]
    assert values(complete("agentfs send lead --from tw", cwd=mnt)) == ["twin"]
    assert values(complete("agentfs fork le", cwd=mnt)) == ["lead", "lead-2"]
    # A path, no agent of that name, or no mount at all: the shell completes directories.
    assert complete("agentfs fork ./w", cwd=mnt) == [("dir", "./w")]
    assert complete("agentfs fork zz", cwd=mnt) == [("dir", "zz")]
    assert complete("agentfs log ") == [("dir", "")]
    assert complete("agentfs spawn x --parent ") == []


# ----------------------------------------------------------------- the README's picture


def test_the_readme_picture_is_rendered_by_the_command(tmp_path: Path) -> None:
    out = tmp_path / "tree.png"
    res = subprocess.run([str(REPO / "scripts" / "render-readme-tree"), str(out)],
                         capture_output=True, text=True, timeout=300, env=clean_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert out.read_bytes()[:8] == PNG_HEADER
    drawn = [line for line in res.stdout.splitlines() if "turns=" in line]
    assert len(drawn) == 12, res.stdout
    assert (REPO / "docs" / "tree.png").read_bytes()[:8] == PNG_HEADER
