"""The fake Messages API's script files: `"for": TEXT` lines answer only the
agent whose prompt holds TEXT, each agent in its own order."""

from __future__ import annotations

from pathlib import Path

from agentfs.client.fake_messages_api import Reply, script_file, text


def body(prompt: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}]}


def said(spec: object) -> str:
    assert isinstance(spec, Reply)
    return "".join(b.get("text", "") for b in spec.content)


def test_lines_are_routed_by_the_agents_prompt(tmp_path: Path) -> None:
    script = tmp_path / "s.jsonl"
    script.write_text('# comment\n'
                      '{"for": "lead", "text": "L1"}\n'
                      '"any1"\n'
                      '{"for": "helper", "text": "H1"}\n'
                      '{"for": "lead", "text": "L2"}\n'
                      '\n'
                      '{"for": "helper", "tool_use": {"name": "send", "input": {"to": "x"}}}\n')
    respond = script_file(script, when_done=text("done"))
    assert said(respond(body("you are the helper"))) == "H1"
    assert said(respond(body("you lead"))) == "L1"
    assert said(respond(body("someone else"))) == "any1"
    h2 = respond(body("helper"))
    assert isinstance(h2, Reply) and h2.content[0]["name"] == "send"
    assert said(respond(body("lead"))) == "L2"
    assert said(respond(body("lead"))) == "done"
    assert said(respond(body("someone else"))) == "done"
