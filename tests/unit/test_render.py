"""The renderer: line validation, observations, policy, the rendered request
(determinism, cache breakpoints, recitation, append-only prefix, restorable
compaction, fork prefixes) and the incremental Renderer (same bytes, flat
cost per turn).

Pure functions only: no store, no engine (the unit layer's autouse fsck
fixture does nothing for tests that do not open one).
"""

from __future__ import annotations

import base64
import json
import random
import re
import statistics
import time
from typing import Any

import pytest

from agentfs.agents.render import (
    DEFAULT_PROMPT,
    DEFAULT_SYSTEM,
    MAX_LINE,
    CompactionState,
    InvalidConfig,
    InvalidLine,
    Observation,
    Policy,
    Renderer,
    canonical,
    estimate_tokens,
    extract_observations,
    is_extension,
    prefix_content,
    render,
    render_from_scratch,
    stub_text,
    validate_config,
    validate_line,
)

PATH = "/mnt/agents/alice"
SYSTEM = "You are alice. Work in workspace/."
PROMPT = "Port the parser to Rust; keep the tests green."
TOOLS: list[dict[str, Any]] = [
    {"name": "bash", "description": "Run a shell command",
     "input_schema": {"type": "object", "properties": {"cmd": {"type": "string"}},
                      "required": ["cmd"]}},
    {"name": "read", "description": "Read a file",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}},
]
STUB_RE = re.compile(
    r"\[observation (turn-\d{5}-[A-Za-z0-9_-]+): (\d+) bytes, stored at (.*)/observations/"
    r"(turn-\d{5}-[A-Za-z0-9_-]+) — read that file to restore it\. Excerpt: (.*)…\]\Z",
    re.S)


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def refused(line: bytes | Any) -> str:
    raw = line if isinstance(line, bytes) else enc(line)
    with pytest.raises(InvalidLine) as ei:
        validate_line(raw)
    assert isinstance(ei.value, ValueError)
    assert str(ei.value) == ei.value.reason
    return ei.value.reason


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def tool_use(tid: str, cmd: str = "ls") -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": "bash", "input": {"cmd": cmd}}


def tool_result(tid: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tid, "content": content, **extra}


def breakpoints(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Where cache_control sits, anywhere a block can hold one."""
    out: list[tuple[Any, ...]] = []
    for i, t in enumerate(body.get("tools", [])):
        if "cache_control" in t:
            out.append(("tools", i))
    for i, b in enumerate(body["system"]):
        if "cache_control" in b:
            out.append(("system", i))
    for mi, m in enumerate(body["messages"]):
        for bi, b in enumerate(m["content"]):
            if "cache_control" in b:
                out.append(("messages", mi, bi))
            if b["type"] == "tool_result" and isinstance(b.get("content"), list):
                for sub in b["content"]:
                    assert "cache_control" not in sub
    return out


def do_render(lines: list[dict[str, Any]], todo: str | None = None,
              policy: Policy | None = None, state: CompactionState | None = None,
              tools: list[dict[str, Any]] | None = None
              ) -> tuple[bytes, CompactionState]:
    return render(PATH, SYSTEM, TOOLS if tools is None else tools, PROMPT, lines, todo,
                  policy or Policy(), state or CompactionState())


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("msg", [
    user("hi"),
    assistant("hello"),
    user([{"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
          {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                       "data": "iVBORw0KGgo="}}]),
    assistant([{"type": "thinking", "thinking": "hmm", "signature": "sig"},
               {"type": "redacted_thinking", "data": "xyz"},
               {"type": "text", "text": "running it"}, tool_use("toolu_1")]),
    user([tool_result("toolu_1", "ok"),
          tool_result("toolu_2", [{"type": "text", "text": "a"},
                                  {"type": "image", "source": {"type": "url", "url": "u"}}],
                      is_error=True),
          tool_result("toolu_3", ""),
          {"type": "tool_result", "tool_use_id": "toolu_4"},
          {"type": "text", "text": "and then?"}]),
    user("émoji ✓ — ünïcode"),
])
def test_valid_lines_are_returned_parsed_and_untouched(msg: dict[str, Any]) -> None:
    assert validate_line(enc(msg)) == msg
    assert validate_line(json.dumps(msg, ensure_ascii=False).encode()) == msg


def test_a_line_of_exactly_max_line_bytes_is_accepted_one_more_is_not() -> None:
    head = b'{"role":"user","content":"'
    line = head + b"x" * (MAX_LINE - len(head) - 2) + b'"}'
    assert len(line) == MAX_LINE
    assert validate_line(line)["role"] == "user"
    long = line[:-2] + b'x"}'
    assert "over the limit of 16777216 bytes" in refused(long)


@pytest.mark.parametrize(("line", "reason"), [
    (b"", "line is empty"),
    (b"not json", "line is not valid JSON at column 1: Expecting value"),
    (b'{"role": "user", "content": "x"', "line is not valid JSON at column 32"),
    (b'{"role": "user", "content": "x"}}', "line is not valid JSON at column 33: Extra data"),
    (b'{"role": "user",\n"content": "x"}', "line contains a newline at byte 16"),
    (b'{"role": "user", "content": \xff}', "line is not valid UTF-8 at byte 28"),
    (b'{"role": "user", "content": [{"type": "text", "text": NaN}]}',
     "NaN is not a JSON number"),
    (b'{"role": "user", "content": "\\ud800"}', "unpaired surrogate"),
    (b"[1, 2]", "line is an array, not a JSON object"),
    (b'"hi"', "line is a string, not a JSON object"),
])
def test_malformed_lines_are_refused(line: bytes, reason: str) -> None:
    assert reason in refused(line)


@pytest.mark.parametrize(("msg", "reason"), [
    ({"content": "x"}, "role is missing"),
    ({"role": 3, "content": "x"}, "role must be a string, not a number"),
    ({"role": "wizard", "content": "x"}, "role 'wizard' is not one of 'user', 'assistant'"),
    ({"role": "system", "content": "x"}, "role 'system' is not one of"),
    ({"role": "user"}, "content is missing"),
    (user(""), "content is empty or only whitespace"),
    (user("  \t"), "content is empty or only whitespace"),
    (user([]), "content is an empty list"),
    (user(None), "content must be a string or a list of content blocks, not null"),
    (user({"type": "text"}), "content must be a string or a list of content blocks, not an object"),
    ({"role": "user", "content": "x", "name": "bob"}, "key 'name' is not allowed in a message"),
    (user(["hi"]), "content[0] must be an object, not a string"),
    (user([{"text": "hi"}]), "content[0].type is missing"),
    (user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "foo"}]),
     "content[2].type 'foo' is not one of 'text', 'tool_use', 'tool_result', 'image', "
     "'thinking', 'redacted_thinking'"),
    (user([{"type": 7}]), "content[0].type must be a string, not a number"),
    (user([{"type": "text"}]), "content[0].text is missing"),
    (user([{"type": "text", "text": ""}]), "content[0].text is empty or only whitespace"),
    (user([{"type": "text", "text": 5}]), "content[0].text must be a string, not a number"),
    (user([{"type": "text", "text": "a", "cache_control": "yes"}]),
     "content[0].cache_control must be an object, not a string"),
    (user([tool_use("toolu_1")]),
     "content[0] is a tool_use block, which only an assistant message may hold"),
    (user([{"type": "thinking", "thinking": "x"}]),
     "content[0] is a thinking block, which only an assistant message may hold"),
    (assistant([{"type": "text", "text": "ok"}, tool_result("toolu_1", "x")]),
     "content[1] is a tool_result block, which only a user message may hold"),
    (assistant([{"type": "tool_use", "name": "bash", "input": {}}]), "content[0].id is missing"),
    (assistant([{"type": "tool_use", "id": "t", "input": {}}]), "content[0].name is missing"),
    (assistant([{"type": "tool_use", "id": "t", "name": "bash"}]), "content[0].input is missing"),
    (assistant([{"type": "tool_use", "id": "t", "name": "bash", "input": []}]),
     "content[0].input must be an object, not an array"),
    (user([{"type": "tool_result", "content": "x"}]), "content[0].tool_use_id is missing"),
    (user([tool_result("t", "x", is_error="yes")]),
     "content[0].is_error must be a boolean, not a string"),
    (user([tool_result("t", 42)]),
     "content[0].content must be a string or a list of text/image blocks, not a number"),
    (user([tool_result("t", [{"type": "text", "text": "a"}, tool_use("x")])]),
     "content[0].content[1].type 'tool_use' is not one of 'text', 'image'"),
    (user([tool_result("t", [{"type": "text", "text": ""}])]),
     "content[0].content[0].text is empty or only whitespace"),
    (user([tool_result("t", [{"type": "image"}])]), "content[0].content[0].source is missing"),
    (user([{"type": "image", "source": "http://x"}]),
     "content[0].source must be an object, not a string"),
    (assistant([{"type": "redacted_thinking"}]), "content[0].data is missing"),
])
def test_invalid_messages_are_refused_naming_the_field(msg: Any, reason: str) -> None:
    assert reason in refused(msg)


# ---------------------------------------------------------------- observations


def test_observations_are_the_bulky_tool_results() -> None:
    big = "é" * 2048  # 4096 bytes, 2048 characters
    msg = user([
        tool_result("toolu_A1", big),
        tool_result("toolu_small", "x" * 4095),
        {"type": "text", "text": "y" * 10_000},  # not a tool output
        tool_result("call/../weird id", [{"type": "text", "text": "a" * 3000},
                                          {"type": "image", "source": {"type": "url", "url": "u"}},
                                          {"type": "text", "text": "b" * 1096}]),
        tool_result("call____weird_id", "c" * 5000),  # sanitises to the same id
    ])
    obs = extract_observations(7, msg, 4096)
    assert [o.id for o in obs] == ["turn-00007-toolu_A1", "turn-00007-call____weird_id",
                                   "turn-00007-call____weird_id-2"]
    assert obs[0] == Observation("turn-00007-toolu_A1", 7, "toolu_A1", 4096, big.encode())
    assert obs[1].tool_use_id == "call/../weird id"
    assert obs[1].text == b"a" * 3000 + b"b" * 1096 and obs[1].size == 4096
    assert obs[2].text == b"c" * 5000
    assert extract_observations(7, msg, 4097)[0].id == "turn-00007-call____weird_id"
    assert extract_observations(1, assistant("x" * 10_000), 10) == []
    assert extract_observations(1, user("x" * 10_000), 10) == []


def test_stub_text_names_the_file_and_keeps_an_excerpt() -> None:
    o = Observation("turn-00003-t1", 3, "t1", 9, b"abcdefghi")
    assert stub_text(o, "/m/agents/a", 4) == (
        "[observation turn-00003-t1: 9 bytes, stored at /m/agents/a/observations/turn-00003-t1"
        " — read that file to restore it. Excerpt: abcd…]")


# ---------------------------------------------------------------- policy and state


def test_policy_defaults_parse_and_render_round_trip() -> None:
    p = Policy()
    assert (p.budget_tokens, p.observation_threshold_bytes, p.keep_recent_turns,
            p.excerpt_chars, p.compact_to_fraction, p.bytes_per_token) == (
        150_000, 4096, 6, 300, 0.6, 4)
    assert Policy.parse(p.render()) == p
    assert Policy.parse("") == p
    q = Policy.parse("# mine\n\nbudget_tokens 2000   # small\n  compact_to_fraction 0.5\n"
                     "keep_recent_turns 0\n")
    assert q == Policy(budget_tokens=2000, compact_to_fraction=0.5, keep_recent_turns=0)
    assert Policy.parse(q.render()) == q
    assert "budget_tokens 2000\n" in q.render()


@pytest.mark.parametrize(("text", "reason"), [
    ("budget 10", "line 1: unknown key 'budget'; known keys: budget_tokens, "
     "observation_threshold_bytes, keep_recent_turns, excerpt_chars, compact_to_fraction, "
     "bytes_per_token"),
    ("\nbudget_tokens", "line 2: expected 'KEY VALUE', got 'budget_tokens'"),
    ("budget_tokens 1 2", "line 1: expected 'KEY VALUE'"),
    ("budget_tokens lots", "line 1: budget_tokens must be an integer >= 1, not 'lots'"),
    ("budget_tokens 1.5", "line 1: budget_tokens must be an integer >= 1, not '1.5'"),
    ("budget_tokens 0", "line 1: budget_tokens must be an integer >= 1, not '0'"),
    ("keep_recent_turns -1", "line 1: keep_recent_turns must be an integer >= 0, not '-1'"),
    ("bytes_per_token 0", "line 1: bytes_per_token must be an integer >= 1"),
    ("compact_to_fraction 1.5", "line 1: compact_to_fraction must be a number in (0, 1], "
     "not '1.5'"),
    ("compact_to_fraction 0", "compact_to_fraction must be a number in (0, 1], not '0'"),
    ("compact_to_fraction nan", "compact_to_fraction must be a number in (0, 1], not 'nan'"),
    ("compact_to_fraction inf", "compact_to_fraction must be a number in (0, 1], not 'inf'"),
    ("compact_to_fraction half", "line 1: compact_to_fraction must be a number in (0, 1], "
     "not 'half'"),
    ("excerpt_chars 3\nexcerpt_chars 4", "line 2: excerpt_chars is set twice"),
])
def test_policy_errors_are_readable(text: str, reason: str) -> None:
    with pytest.raises(InvalidConfig) as ei:
        Policy.parse(text)
    assert reason in ei.value.reason
    assert isinstance(ei.value, ValueError) and str(ei.value) == ei.value.reason


def test_policy_values_are_checked_on_construction_too() -> None:
    with pytest.raises(ValueError, match="observation_threshold_bytes must be an integer >= 1"):
        Policy(observation_threshold_bytes=0)
    with pytest.raises(ValueError, match="budget_tokens must be an integer >= 1, not True"):
        Policy(budget_tokens=True)
    assert Policy(compact_to_fraction=1).compact_to_fraction == 1


def test_the_rendered_policy_says_what_each_key_allows() -> None:
    text = Policy().render()
    assert "# estimated tokens the rendered context may hold before a compaction " \
           "(an integer >= 1)\nbudget_tokens 150000\n" in text
    assert "(a number in (0, 1])\ncompact_to_fraction 0.6\n" in text
    assert all(line.startswith("#") or len(line.split()) == 2 for line in text.splitlines())


def test_validate_config_is_the_check_for_a_write_to_config() -> None:
    assert validate_config(b"") == Policy()  # a fresh agent's config, or an emptied one
    assert validate_config(Policy().render().encode()) == Policy()
    assert validate_config(b"budget_tokens 2000\r\n") == Policy(budget_tokens=2000)
    for raw, reason in [
            (b"budget_tokens abc\n", "config: line 1: budget_tokens must be an integer >= 1, "
                                     "not 'abc'"),
            (b"# ok\nbudget_token 5\n", "config: line 2: unknown key 'budget_token'; known "
                                         "keys: budget_tokens, "),
            (b"excerpt_chars \xff\n", "config: not valid UTF-8 at byte 14")]:
        with pytest.raises(InvalidConfig) as ei:
            validate_config(raw)
        assert ei.value.reason.startswith(reason), ei.value.reason


def test_compaction_state_is_one_line() -> None:
    assert CompactionState().encode() == "stub_before_turn=0 points="
    s = CompactionState(12, (30, 45))
    assert s.encode() == "stub_before_turn=12 points=30,45"
    assert "\n" not in s.encode()
    assert CompactionState.decode(s.encode()) == s
    assert CompactionState.decode(s.encode() + "\n") == s
    assert CompactionState.decode("") == CompactionState()
    assert CompactionState.decode(CompactionState().encode()) == CompactionState()
    for bad in ("stub_before_turn=x", "what=1", "stub_before_turn=1 stub_before_turn=2",
                "points=3,2", "stub_before_turn=-1", "12"):
        with pytest.raises(ValueError):
            CompactionState.decode(bad)


# ---------------------------------------------------------------- the rendered request


def test_request_structure() -> None:
    lines = [assistant([{"type": "text", "text": "first"}, tool_use("t1")]),
             user([tool_result("t1", "ok")]), user("and another thing"),
             assistant("done")]
    body_bytes, state = do_render(lines)
    assert state == CompactionState()
    body = json.loads(body_bytes)
    assert sorted(body) == ["messages", "system", "tools"]
    assert canonical(body) == body_bytes
    assert body["tools"][:-1] == TOOLS[:-1]
    assert body["tools"][-1] == {**TOOLS[-1], "cache_control": {"type": "ephemeral"}}
    assert body["system"] == [{"type": "text", "text": SYSTEM,
                               "cache_control": {"type": "ephemeral"}}]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        {"role": "assistant", "content": [{"type": "text", "text": "first"}, tool_use("t1")]},
        {"role": "user", "content": [tool_result("t1", "ok"),
                                     {"type": "text", "text": "and another thing"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "done",
                                           "cache_control": {"type": "ephemeral"}}]},
    ]
    assert TOOLS[-1].get("cache_control") is None  # inputs are not mutated


def test_defaults_for_empty_system_prompt_and_tools() -> None:
    body = json.loads(render(PATH, "", [], " ", [user("hi")], None, Policy(),
                             CompactionState())[0])
    assert "tools" not in body
    assert body["system"][0]["text"] == DEFAULT_SYSTEM
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": DEFAULT_PROMPT},
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]
    body = json.loads(render(PATH, "", [], "task", [], None, Policy(), CompactionState())[0])
    assert breakpoints(body) == [("system", 0), ("messages", 0, 0)]


def test_cache_control_from_the_transcript_or_tools_is_not_rendered() -> None:
    cc = {"type": "ephemeral"}
    tools = [{**t, "cache_control": cc} for t in TOOLS]
    lines = [user([{"type": "text", "text": "a", "cache_control": cc},
                   {"type": "text", "text": "b", "cache_control": cc}]),
             assistant([{"type": "text", "text": "c", "cache_control": cc}, tool_use("t")]),
             user([tool_result("t", [{"type": "text", "text": "d", "cache_control": cc}],
                               cache_control=cc)])]
    for line in lines:
        validate_line(enc(line))
    body = json.loads(do_render(lines, tools=tools)[0])
    assert breakpoints(body) == [("tools", 1), ("system", 0), ("messages", 2, 0)]
    assert lines[0]["content"][0]["cache_control"] == cc  # the input is untouched


def test_renders_are_deterministic_and_ignore_input_key_order() -> None:
    lines = [assistant([{"type": "text", "text": "é ✓"}, tool_use("t1", "cat x")]),
             user([tool_result("t1", "z" * 5000, is_error=False)]),
             assistant("ok")]

    def reorder(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: reorder(obj[k]) for k in reversed(list(obj))}
        if isinstance(obj, list):
            return [reorder(x) for x in obj]
        return obj

    a = do_render(lines, "- [ ] x")[0]
    assert a == do_render(lines, "- [ ] x")[0]
    assert a == do_render(reorder(lines), "- [ ] x", tools=reorder(TOOLS))[0]
    assert "é ✓".encode() in a  # UTF-8, not \u escapes
    st = CompactionState(3, (3,))
    assert do_render(lines, None, state=st) == do_render(reorder(lines), None, state=st)


def test_recitation_comes_after_the_last_breakpoint() -> None:
    todo = "- [x] read\n- [ ] write"
    recite = {"type": "text", "text": "<todo>\n" + todo + "\n</todo>"}
    # last message is a user one: the todo becomes its last block
    body = json.loads(do_render([assistant("a"), user("b")], todo)[0])
    last = body["messages"][-1]
    assert last["content"][-1] == recite
    assert last["content"][-2] == {"type": "text", "text": "b",
                                   "cache_control": {"type": "ephemeral"}}
    assert breakpoints(body)[-1] == ("messages", 2, 0)
    # last message is an assistant one: a new trailing user message
    body = json.loads(do_render([assistant("a")], todo)[0])
    assert body["messages"][-1] == {"role": "user", "content": [recite]}
    assert breakpoints(body)[-1] == ("messages", 1, 0)
    # no todo, or an empty one: nothing recited
    for t in (None, ""):
        body = json.loads(do_render([assistant("a")], t)[0])
        assert body["messages"][-1]["role"] == "assistant"
    # the recitation is not model-visible prefix: it changes freely
    assert prefix_content(do_render([assistant("a")], "x")[0]) == \
        prefix_content(do_render([assistant("a")], "y")[0]) == \
        prefix_content(do_render([assistant("a")], None)[0])


def test_compaction_stubs_old_observations_and_places_the_fourth_breakpoint() -> None:
    policy = Policy(budget_tokens=3500, keep_recent_turns=2, excerpt_chars=10,
                    compact_to_fraction=0.5)
    lines: list[dict[str, Any]] = []
    for i in range(1, 4):
        lines.append(assistant([tool_use(f"t{i}")]))
        lines.append(user([tool_result(f"t{i}", f"{i}" * 8000)]))
    body_bytes, state = do_render(lines[:4], None, policy)
    assert state == CompactionState(3, (4,))  # turn 2's observation stubbed, turn 4 kept
    assert estimate_tokens(body_bytes, policy) <= 3500
    body = json.loads(body_bytes)
    stub = body["messages"][2]["content"][0]["content"]
    assert stub == [{"type": "text", "text": f"[observation turn-00002-t1: 8000 bytes, stored at "
                     f"{PATH}/observations/turn-00002-t1 — read that file to restore it. "
                     f"Excerpt: 1111111111…]"}]
    assert body["messages"][4]["content"][0]["content"] == "2" * 8000
    # turn 4 is both the compaction point and the last line: one breakpoint
    assert breakpoints(body) == [("tools", 1), ("system", 0), ("messages", 4, 0)]
    # later: the moving breakpoint at the end, the fourth one at turn 4
    body_bytes, state2 = do_render(lines[:5], "todo", policy, state)
    assert state2 == state
    body = json.loads(body_bytes)
    assert breakpoints(body) == [("tools", 1), ("system", 0), ("messages", 4, 0),
                                 ("messages", 5, 0)]
    # turn 6 forces a second compaction; only 1 point is kept as breakpoint
    body_bytes, state3 = do_render(lines, "todo", policy, state2)
    assert state3 == CompactionState(5, (4, 6))
    body = json.loads(body_bytes)
    assert len(breakpoints(body)) == 3 and breakpoints(body)[-1] == ("messages", 6, 0)
    assert not is_extension(do_render(lines[:5], "todo", policy, state2)[0], body_bytes)
    # nothing left to stub: over budget, but the state does not move
    tiny = Policy(budget_tokens=100, keep_recent_turns=2)
    b, st = do_render(lines, None, tiny, state3)
    assert st == state3 and estimate_tokens(b, tiny) > 100


def test_is_extension() -> None:
    lines = [assistant("a"), user("b"), assistant("c")]
    b2, b3 = do_render(lines[:2], "t")[0], do_render(lines, "u")[0]
    assert is_extension(b2, b3) and is_extension(b2, b2)
    assert not is_extension(b3, b2)
    assert not is_extension(b2, do_render([assistant("A"), user("b")])[0])
    assert not is_extension(b2, do_render(lines, tools=TOOLS[:1])[0])
    assert not is_extension(b2, render(PATH, "other", TOOLS, PROMPT, lines, None, Policy(),
                                       CompactionState())[0])
    # merging: the last message gains blocks at its end, never in the middle
    m1 = do_render([assistant("a"), user("b")])[0]
    m2 = do_render([assistant("a"), user("b"), user("c")])[0]
    assert is_extension(m1, m2)
    assert not is_extension(m2, do_render([assistant("a"), user("c"), user("b")])[0])


# ---------------------------------------------------------------- a long session


def blob(rng: random.Random, size: int) -> str:
    """Random text of about `size` bytes, with some multi-byte characters."""
    text = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
    pos = rng.randrange(len(text))
    return text[:pos] + " résumé ✓ " + text[pos:]


def session_lines(seed: int, turns: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Alternating tool calls and bulky results (10-200 KB), seeded."""
    rng = random.Random(seed)
    lines: list[dict[str, Any]] = []
    outputs: dict[str, str] = {}
    for turn in range(1, turns + 1):
        if turn % 2:
            tid = f"toolu_{turn:03d}"
            lines.append(assistant([{"type": "text", "text": f"Step {turn}: look at part {turn}."},
                                    tool_use(tid, f"cat part{turn}.txt")]))
        else:
            tid = f"toolu_{turn - 1:03d}"
            text = blob(rng, rng.randint(10_000, 200_000))
            outputs[tid] = text
            if rng.random() < 0.5:
                content: Any = text
            else:
                cut = rng.randrange(1, len(text))
                content = [{"type": "text", "text": text[:cut]},
                           {"type": "text", "text": text[cut:]}]
            lines.append(user([tool_result(tid, content)]))
        validate_line(enc(lines[-1]))
    return lines, outputs


def test_a_long_session_is_append_only_between_rare_restorable_compactions() -> None:
    policy = Policy(budget_tokens=150_000, keep_recent_turns=4, excerpt_chars=120)
    all_lines, outputs = session_lines(1234, 50)
    lines: list[dict[str, Any]] = []
    observations: dict[str, Observation] = {}
    state, prev = CompactionState(), b""
    compactions: list[int] = []
    for turn, line in enumerate(all_lines, 1):
        lines.append(line)
        for o in extract_observations(turn, line, policy.observation_threshold_bytes):
            observations[o.id] = o
            # what the daemon stores is the full original output
            assert o.text == outputs[o.tool_use_id].encode()
        todo = None if turn % 3 == 0 else f"- [ ] finish step {turn}"
        body_bytes, new = do_render(lines, todo, policy, state)
        # the recitation changes freely: it neither moves the state nor counts
        # against the budget, which bounds the rest of the body
        plain, same = do_render(lines, None, policy, state)
        assert same == new and estimate_tokens(plain, policy) <= policy.budget_tokens
        if new != state:
            compactions.append(turn)
            assert new.points == state.points + (turn,)
            assert state.stub_before_turn < new.stub_before_turn <= turn - 4 + 1
            assert not is_extension(prev, body_bytes)
        elif prev:
            assert is_extension(prev, body_bytes), f"turn {turn} rewrote the prefix"
        body = json.loads(body_bytes)
        assert len(breakpoints(body)) <= 4
        assert breakpoints(body)[:2] == [("tools", 1), ("system", 0)]
        recited = todo is not None and line["role"] == "user"
        assert breakpoints(body)[2:] == [
            ("messages", p, len(body["messages"][p]["content"]) - 1 - (recited and p == turn))
            for p in sorted({*new.points[-1:], turn})]
        stubbed = set()
        for m in body["messages"]:
            for b in m["content"]:
                if b["type"] != "tool_result":
                    continue
                oid = f"turn-{all_lines.index(m_line(all_lines, b['tool_use_id'])) + 1:05d}-" \
                      f"{b['tool_use_id']}"
                o = observations[oid]
                c = b["content"]
                if o.turn < new.stub_before_turn:
                    assert len(c) == 1 and c[0]["type"] == "text"
                    mt = STUB_RE.match(c[0]["text"])
                    assert mt, c[0]["text"][:200]
                    assert mt[1] == mt[4] == o.id and int(mt[2]) == o.size and mt[3] == PATH
                    assert mt[5] == o.text.decode()[:policy.excerpt_chars]
                    stubbed.add(o.id)
                else:
                    text = c if isinstance(c, str) else "".join(x["text"] for x in c)
                    assert text.encode() == o.text
        assert stubbed == {o.id for o in observations.values()
                           if o.turn < new.stub_before_turn}
        prev, state = body_bytes, new
    assert len(compactions) >= 3, compactions
    assert tuple(compactions) == state.points
    # compactions are rare: several turns apart
    assert min(b - a for a, b in zip(compactions, compactions[1:], strict=False)) >= 4
    print(f"\n50-turn session: compactions at turns {compactions}, "
          f"final context {estimate_tokens(prev, policy)} tokens, "
          f"{len(observations)} observations")


def m_line(lines: list[dict[str, Any]], tid: str) -> dict[str, Any]:
    """The user line holding the result of tool call `tid`."""
    return next(ln for ln in lines if ln["role"] == "user" and isinstance(ln["content"], list)
                and any(b.get("tool_use_id") == tid for b in ln["content"]))


# ---------------------------------------------------------------- forks


def random_lines(seed: int, n: int) -> list[dict[str, Any]]:
    """Valid lines with random roles (so merges happen), block kinds and sizes."""
    rng = random.Random(seed)
    lines: list[dict[str, Any]] = []
    pending: list[str] = []
    cc = {"type": "ephemeral"}
    for i in range(1, n + 1):
        if rng.random() < 0.5:
            blocks: list[dict[str, Any]] = []
            if rng.random() < 0.3:
                blocks.append({"type": "thinking", "thinking": f"hmm {i}", "signature": "s"})
            blocks.append({"type": "text", "text": blob(rng, rng.randint(10, 400))})
            for k in range(rng.choice([0, 1, 1, 2])):
                pending.append(f"toolu_{i}_{k}")
                blocks.append(tool_use(pending[-1], f"step {i}"))
            if rng.random() < 0.1:
                blocks[-1] = {**blocks[-1], "cache_control": cc}
            lines.append(assistant(blocks if rng.random() < 0.8 else blocks[0]["text"]
                                   if blocks[0]["type"] == "text" else blocks))
        else:
            blocks = []
            while pending:
                tid = pending.pop(0)
                size = rng.choice([100, 1000, 3000, 5000, 12_000, 30_000])
                text = blob(rng, rng.randint(size // 2, size))
                content: Any = text if rng.random() < 0.6 else [
                    {"type": "text", "text": text},
                    {"type": "image", "source": {"type": "url", "url": f"http://x/{i}"}}]
                blocks.append(tool_result(tid, content, **({"is_error": True}
                                                           if rng.random() < 0.1 else {})))
            if not blocks or rng.random() < 0.4:
                blocks.append({"type": "text", "text": blob(rng, rng.randint(5, 300)),
                               **({"cache_control": cc} if rng.random() < 0.1 else {})})
            lines.append(user(blocks if len(blocks) > 1 or rng.random() < 0.5
                              or blocks[0]["type"] != "text" else blocks[0]["text"]))
        validate_line(enc(lines[-1]))
    return lines


def test_a_fork_renders_a_prefix_of_its_parent() -> None:
    lines = random_lines(7, 120)
    full = do_render(lines, "- [ ] parent todo")[0]
    for k in (1, 2, 17, 60, 119, 120):
        at_k = do_render(lines[:k], f"todo at {k}")[0]
        assert is_extension(at_k, full), k
        # a fork at turn k, then a message into it: still extends the parent at k
        fork = lines[:k] + [user("fork: try the other approach")]
        forked = do_render(fork, "- [ ] fork todo")[0]
        assert is_extension(at_k, forked), k
        if k < 120:
            assert not is_extension(forked, full)
    # with compaction states too: a fork carries its parent's state at turn k
    policy = Policy(budget_tokens=20_000, keep_recent_turns=3, compact_to_fraction=0.5)
    state, states = CompactionState(), []
    for k in range(1, len(lines) + 1):
        _, state = do_render(lines[:k], None, policy, state)
        states.append(state)
    assert len(state.points) >= 2
    for k in (30, 75, 110):
        parent_k = do_render(lines[:k], None, policy, states[k - 1])[0]
        fork_body, fork_state = do_render(lines[:k] + [user("fork here")], None, policy,
                                          states[k - 1])
        assert fork_state != states[k - 1] or is_extension(parent_k, fork_body)


# ---------------------------------------------------------------- incremental


def test_renderer_gives_the_oracles_bytes_and_states() -> None:
    rng = random.Random(99)
    lines = random_lines(42, 200)
    policy = Policy(budget_tokens=25_000, keep_recent_turns=3, excerpt_chars=50,
                    compact_to_fraction=0.5, observation_threshold_bytes=2000)
    r = Renderer(PATH, SYSTEM, TOOLS, PROMPT, policy)
    assert (r.render(None), r.state) == do_render([], None, policy)
    state = CompactionState()
    for turn, line in enumerate(lines, 1):
        assert r.append(line) == turn == r.turns
        todo = rng.choice([None, "", f"- [ ] item {turn}\n- [x] ✓ done"])
        body, state = do_render(lines[:turn], todo, policy, state)
        assert (r.render(todo), r.state) == (body, state), turn
        assert len(breakpoints(json.loads(body))) <= 4
    assert len(state.points) >= 5
    assert render_from_scratch(PATH, SYSTEM, TOOLS, PROMPT, lines, "t", policy) == \
        (r.render("t"), state)
    # prompt/system/tools edge cases
    for system, tools, prompt in (("", [], ""), (SYSTEM, TOOLS[:1], " ")):
        r = Renderer(PATH, system, tools, prompt, Policy())
        for line in lines[:5]:
            r.append(line)
            assert (r.render("t"), r.state) == render_from_scratch(
                PATH, system, tools, prompt, lines[:r.turns], "t", Policy())


def test_the_compaction_state_depends_on_the_transcript_only() -> None:
    """Not on who read when, nor on the todo: a renderer read after every
    line and one read once at the end agree, byte for byte, and a fork (a
    renderer fed the same first k lines) has its origin's state at k."""
    lines = session_lines(77, 40)[0]
    policy = Policy(budget_tokens=60_000, keep_recent_turns=2, compact_to_fraction=0.5)
    eager, lazy = (Renderer(PATH, SYSTEM, TOOLS, PROMPT, policy) for _ in range(2))
    states = [eager.state]
    for turn, line in enumerate(lines, 1):
        eager.append(line)
        eager.render(f"- [ ] todo {turn}" * (turn % 7))
        states.append(eager.state)
        lazy.append(line)
    assert len(eager.state.points) >= 3
    assert (lazy.render("x"), lazy.state) == (eager.render("x"), eager.state)
    for k in (5, 17, 33):
        fork = Renderer(PATH, SYSTEM, TOOLS, PROMPT, policy)
        for line in lines[:k]:
            fork.append(line)
        assert fork.state == states[k]
        assert fork.state.points == tuple(p for p in eager.state.points if p <= k)


def test_renderer_time_is_flat_in_the_number_of_turns() -> None:
    rng = random.Random(5)
    policy = Policy(budget_tokens=10**9)  # measure rendering, not compaction
    r = Renderer(PATH, SYSTEM, TOOLS, PROMPT, policy)
    lines: list[dict[str, Any]] = []

    def add() -> None:
        i = len(lines) + 1
        if i % 2:
            line = assistant([{"type": "text", "text": blob(rng, rng.randint(50, 600))},
                              tool_use(f"toolu_{i}", f"step {i}")])
        else:
            line = user([tool_result(f"toolu_{i - 1}", blob(rng, rng.randint(100, 2500)))])
        lines.append(line)
        r.append(line)

    def per_turn(turns: int) -> float:
        while len(lines) < turns:
            add()
        r.render("- [ ] todo")  # warm: catch up the cached prefix
        times = []
        for _ in range(41):
            add()
            t0 = time.perf_counter()
            r.render(f"- [ ] todo {len(lines)}")
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t100 = per_turn(100)
    t1000 = per_turn(1000)
    t0 = time.perf_counter()
    ref = render(PATH, SYSTEM, TOOLS, PROMPT, lines, "x", policy, CompactionState())[0]
    t_pure = time.perf_counter() - t0
    assert ref == r.render("x")
    size = len(ref)
    print(f"\nRenderer per turn: {t100 * 1e6:.0f} us at 100 turns, "
          f"{t1000 * 1e6:.0f} us at 1000 turns (x{t1000 / t100:.1f}, body {size >> 10} KiB); "
          f"pure render() at {len(lines)} turns: {t_pure * 1e3:.1f} ms")
    assert t1000 < 10 * t100 + 0.002
