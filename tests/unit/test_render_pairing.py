"""validate_next: a transcript line against the line before it (tool_use /
tool_result pairing), the rules the Messages API enforces with a 400 that an
append-only transcript could never recover from.

Pure functions only: no store, no engine.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentfs.agents.render import InvalidLine, validate_line, validate_next


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


def text(t: str = "ok") -> dict[str, Any]:
    return {"type": "text", "text": t}


def use(tid: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": "bash", "input": {"cmd": "ls"}}


def result(tid: str, **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tid, "content": "out", **extra}


def checked(prev: dict[str, Any] | None, line: dict[str, Any]) -> None:
    """validate_next on lines that are each valid on their own."""
    for m in (prev, line):
        if m is not None:
            assert validate_line(json.dumps(m).encode()) == m
    validate_next(prev, line)


def refused(prev: dict[str, Any] | None, line: dict[str, Any]) -> str:
    with pytest.raises(InvalidLine) as ei:
        checked(prev, line)
    return ei.value.reason


@pytest.mark.parametrize(("prev", "line"), [
    (None, user(text("hi"))),
    (None, {"role": "user", "content": "hi"}),
    (None, assistant(use("a"))),  # the first line may already call a tool
    (assistant(use("a"), use("b")), user(result("a"), result("b", is_error=True))),
    (assistant(use("a"), use("b")), user(result("b"), result("a"))),  # any order
    (assistant(text("let me look"), use("a")), user(result("a"), text("<message/>"))),
    (assistant(text("done")), user(text("more"))),
    (assistant(text("done")), assistant(text("and more"))),  # merged by the renderer
    ({"role": "assistant", "content": "done"}, {"role": "user", "content": "next"}),
    (user(text("a")), user(text("b"))),
    (user(result("a")), user(text("a message, after the results"))),
    (user(result("a")), assistant(use("a2"), use("b2"))),
])
def test_lines_that_the_api_accepts(prev: dict[str, Any] | None, line: dict[str, Any]) -> None:
    checked(prev, line)


@pytest.mark.parametrize(("prev", "line", "reason"), [
    (None, user(result("a")),
     "content[0] is a tool_result, but the line before holds no tool_use for it to answer"),
    (assistant(text("no tools")), user(text("x"), result("a")),
     "content[1] is a tool_result, but the line before holds no tool_use"),
    (user(text("hi")), user(result("a")), "content[0] is a tool_result, but the line before"),
    (user(result("a")), user(result("a")), "content[0] is a tool_result, but the line before"),
    (assistant(use("a")), user(result("b")),
     "content[0].tool_use_id 'b' is not a tool_use id of the line before ('a')"),
    (assistant(use("a"), use("b")), user(result("a"), result("x")),
     "content[1].tool_use_id 'x' is not a tool_use id of the line before ('a', 'b')"),
    (assistant(use("a"), use("b"), use("c")), user(result("b")),
     "tool_use 'a', 'c' of the line before has no tool_result in this line: every tool_use "
     "must be answered in the next line"),
    (assistant(use("a")), user(text("forgot the result")), "tool_use 'a' of the line before"),
    (assistant(use("a")), {"role": "user", "content": "plain text"},
     "tool_use 'a' of the line before has no tool_result"),
    (assistant(use("a")), assistant(text("and then")),
     "the line before has tool_use ids 'a': the next line must be a user line with a "
     "tool_result for each"),
    (assistant(use("a"), use("b")), user(result("a"), result("a")),
     "content[1].tool_use_id 'a' repeats content[0]'s: each tool_result of a line needs its "
     "own id"),
    (None, assistant(use("a"), text("x"), use("a")),
     "content[2].id 'a' repeats content[0]'s: each tool_use of a line needs its own id"),
    (assistant(use("a"), use("b")), user(result("a"), text("between"), result("b")),
     "content[2] is a tool_result after content[1], a text block: tool_result blocks come "
     "first in a user line"),
])
def test_lines_that_would_make_every_later_request_fail(
        prev: dict[str, Any] | None, line: dict[str, Any], reason: str) -> None:
    assert reason in refused(prev, line)


def test_a_whole_runner_session_pairs() -> None:
    """The lines client/runner.py writes: results in order then inbox messages;
    a separate user line for messages after the model ended its turn."""
    session = [
        user(text("<message from=\"parent\">go</message>")),
        assistant(text("on it"), use("t1"), use("t2")),
        user(result("t1"), result("t2", is_error=True), text("<message from=\"bob\"/>")),
        assistant(text("done")),
        user(text("<message from=\"bob\">one more</message>")),
        assistant(use("t3")),
        user(result("t3", content=[{"type": "text", "text": "interrupted"}], is_error=True)),
    ]
    prev = None
    for line in session:
        checked(prev, line)
        prev = line
