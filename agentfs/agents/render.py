"""The model-ready request (`context.json`) rendered from prompt + transcript.

Pure, synchronous, stdlib only. The daemon and the runner call it; nothing
here knows about FUSE, LMDB or the Anthropic client.

Why it looks the way it does (the Manus context-engineering rules):

* **KV-cache hit rate first.** A request is cached by prefix: tools, then
  system, then messages. Everything that is rendered is therefore a pure
  function of (tools, system, prompt, transcript, todo, policy, compaction
  state), serialised canonically (`canonical`: sorted keys, no spaces, UTF-8)
  so the same inputs always give the same bytes. Nothing variable (names,
  timestamps, counters) is ever injected.
* **Append-only context.** Between two turns the model-visible content
  (`prefix_content`) only grows at its end (`is_extension`): a new transcript
  line becomes a new message, or new blocks at the end of the last message
  when roles repeat (the API wants alternating roles, so consecutive messages
  of one role are merged by concatenating their blocks).
* **Explicit cache breakpoints**, at most 4 (the API's limit):
  1. the last tool definition,
  2. the system block,
  3. the last block of the last message (moves every turn),
  4. the last block of the transcript line at the most recent compaction
     point (a stable anchor once the prefix was rewritten).
  `cache_control` keys that arrive in the transcript or the tool list are not
  rendered (they would break the limit); the transcript keeps them.
* **Restorable compression.** A tool_result whose text is at least
  `observation_threshold_bytes` is an *observation* (`extract_observations`),
  stored by the daemon at `AGENT/observations/ID`. Once compacted, its content
  is rendered as a short stub that names that path and keeps an excerpt;
  reading the file restores the full text, and the transcript itself is never
  compacted.
* **Rare, explicit compaction.** `CompactionState` says which turns are
  stubbed; it changes only when a render would exceed the token budget, and
  then it jumps far enough (to `compact_to_fraction` of the budget) that the
  next compactions are many turns away. The turns where it happened are
  recorded (`points`); only there does the prefix change.
* **Recitation.** `todo.md` is appended after the last breakpoint, at the
  very end, so it keeps the goal in the model's attention without ever
  breaking the cache.

`render` is the reference implementation; `Renderer` produces the same bytes
incrementally (cached serialised fragments, flat cost per turn).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

MAX_LINE = 16 * 1024 * 1024
"""Longest transcript line accepted, in bytes (without its newline)."""

ROLES = ("user", "assistant")
BLOCK_TYPES = ("text", "tool_use", "tool_result", "image", "thinking", "redacted_thinking")
RESULT_BLOCK_TYPES = ("text", "image")
ASSISTANT_ONLY = frozenset({"tool_use", "thinking", "redacted_thinking"})
USER_ONLY = frozenset({"tool_result"})

DEFAULT_SYSTEM = "You are an agent working through the agentfs filesystem."
"""Rendered when the agent's system prompt is empty (fixed: cache-stable)."""

DEFAULT_PROMPT = "(no prompt was given)"
"""Rendered when the agent's prompt is empty (the API refuses empty text)."""


def _ephemeral() -> dict[str, str]:
    return {"type": "ephemeral"}


def canonical(obj: Any) -> bytes:
    """The one serialisation used everywhere: byte-deterministic JSON.

    Strings that cannot be UTF-8 (lone surrogates, which only unvalidated
    input can hold) are replaced rather than crashing the daemon.
    """
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode("utf-8", "replace")


def estimate_tokens(body: bytes | int, policy: Policy) -> int:
    """ceil(bytes / bytes_per_token), of a rendered body or a byte count."""
    n = body if isinstance(body, int) else len(body)
    return -(-n // policy.bytes_per_token)


# ---------------------------------------------------------------- validation


class InvalidLine(ValueError):
    """A transcript line that is not one well-formed Messages API message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _one_of(values: Iterable[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _reject_constant(name: str) -> Any:
    raise InvalidLine(f"line is not valid JSON: {name} is not a JSON number")


def validate_line(line: bytes) -> dict[str, Any]:
    """Check one transcript line (without its newline) and return it parsed.

    A line is a UTF-8 JSON object holding one Anthropic Messages API message:
    {"role": "user"|"assistant", "content": str | [block, ...]}. Raises
    `InvalidLine` with a reason that names the offending field.
    """
    if len(line) > MAX_LINE:
        raise InvalidLine(f"line is {len(line)} bytes, over the limit of {MAX_LINE} bytes")
    if not line.strip():
        raise InvalidLine("line is empty: a transcript line holds one JSON message")
    nl = line.find(b"\n")
    if nl >= 0:
        raise InvalidLine(f"line contains a newline at byte {nl}: a transcript line holds "
                          "exactly one JSON message, on one line")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidLine(f"line is not valid UTF-8 at byte {e.start}")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise InvalidLine(f"line is not valid JSON at column {e.colno}: {e.msg}")
    except RecursionError:
        raise InvalidLine("line is not valid JSON: nested too deeply")
    if not isinstance(obj, dict):
        raise InvalidLine(f"line is {_kind(obj)}, not a JSON object")
    _check_message(obj)
    if b"\\u" in line:  # an escape may encode a lone surrogate, which UTF-8 cannot hold
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidLine("line contains an unpaired surrogate escape (\\ud800-\\udfff), "
                              "which is not text")
        except RecursionError:
            raise InvalidLine("line is not valid JSON: nested too deeply")
    return obj


def _check_message(m: dict[str, Any]) -> None:
    for k in m:
        if k not in ("role", "content"):
            raise InvalidLine(f"key {k!r} is not allowed in a message: only 'role' and 'content'")
    if "role" not in m:
        raise InvalidLine("role is missing")
    role = m["role"]
    if not isinstance(role, str):
        raise InvalidLine(f"role must be a string, not {_kind(role)}")
    if role not in ROLES:
        raise InvalidLine(f"role {role!r} is not one of {_one_of(ROLES)}")
    if "content" not in m:
        raise InvalidLine("content is missing")
    content = m["content"]
    if isinstance(content, str):
        if not content.strip():
            raise InvalidLine("content is empty or only whitespace")
        return
    if not isinstance(content, list):
        raise InvalidLine(f"content must be a string or a list of content blocks, "
                          f"not {_kind(content)}")
    if not content:
        raise InvalidLine("content is an empty list")
    for i, block in enumerate(content):
        _check_block(block, f"content[{i}]", role)


def _check_cache_control(b: dict[str, Any], path: str) -> None:
    if "cache_control" in b and not isinstance(b["cache_control"], dict):
        raise InvalidLine(f"{path}.cache_control must be an object, "
                          f"not {_kind(b['cache_control'])}")


def _require_str(b: dict[str, Any], key: str, path: str, nonblank: bool = True) -> None:
    if key not in b:
        raise InvalidLine(f"{path}.{key} is missing")
    v = b[key]
    if not isinstance(v, str):
        raise InvalidLine(f"{path}.{key} must be a string, not {_kind(v)}")
    if nonblank and not v.strip():
        raise InvalidLine(f"{path}.{key} is empty or only whitespace")


def _block_type(b: Any, path: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(b, dict):
        raise InvalidLine(f"{path} must be an object, not {_kind(b)}")
    if "type" not in b:
        raise InvalidLine(f"{path}.type is missing")
    t = b["type"]
    if not isinstance(t, str):
        raise InvalidLine(f"{path}.type must be a string, not {_kind(t)}")
    if t not in allowed:
        raise InvalidLine(f"{path}.type {t!r} is not one of {_one_of(allowed)}")
    _check_cache_control(b, path)
    return t


def _check_block(b: Any, path: str, role: str) -> None:
    t = _block_type(b, path, BLOCK_TYPES)
    if role == "user" and t in ASSISTANT_ONLY:
        raise InvalidLine(f"{path} is a {t} block, which only an assistant message may hold")
    if role == "assistant" and t in USER_ONLY:
        raise InvalidLine(f"{path} is a {t} block, which only a user message may hold")
    if t == "text":
        _require_str(b, "text", path)
    elif t == "tool_use":
        _require_str(b, "id", path)
        _require_str(b, "name", path)
        if "input" not in b:
            raise InvalidLine(f"{path}.input is missing")
        if not isinstance(b["input"], dict):
            raise InvalidLine(f"{path}.input must be an object, not {_kind(b['input'])}")
    elif t == "tool_result":
        _require_str(b, "tool_use_id", path)
        if "is_error" in b and not isinstance(b["is_error"], bool):
            raise InvalidLine(f"{path}.is_error must be a boolean, not {_kind(b['is_error'])}")
        c = b.get("content", "")
        if isinstance(c, list):
            for j, sub in enumerate(c):
                sp = f"{path}.content[{j}]"
                st = _block_type(sub, sp, RESULT_BLOCK_TYPES)
                if st == "text":
                    _require_str(sub, "text", sp)
                else:
                    _check_image(sub, sp)
        elif not isinstance(c, str):
            raise InvalidLine(f"{path}.content must be a string or a list of text/image "
                              f"blocks, not {_kind(c)}")
    elif t == "image":
        _check_image(b, path)
    elif t == "thinking":
        _require_str(b, "thinking", path, nonblank=False)
    else:  # redacted_thinking
        _require_str(b, "data", path, nonblank=False)


def _check_image(b: dict[str, Any], path: str) -> None:
    if "source" not in b:
        raise InvalidLine(f"{path}.source is missing")
    if not isinstance(b["source"], dict):
        raise InvalidLine(f"{path}.source must be an object, not {_kind(b['source'])}")


# ---------------------------------------------------------------- observations


@dataclass(frozen=True)
class Observation:
    """A bulky tool output, stored in full at AGENT/observations/ID."""

    id: str
    turn: int
    tool_use_id: str
    size: int
    text: bytes


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _sanitise(tool_use_id: str) -> str:
    return _UNSAFE.sub("_", tool_use_id)[:128] or "_"


def _result_text(block: dict[str, Any]) -> str:
    c = block.get("content", "")
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(b["text"] for b in c
                       if isinstance(b, dict) and b.get("type") == "text"
                       and isinstance(b.get("text"), str))
    return ""


def _line_observations(turn: int, message: dict[str, Any], threshold: int
                       ) -> list[tuple[int, Observation, str]]:
    """(block index, observation, its text) for each observation of a line."""
    content = message.get("content")
    if not isinstance(content, list):
        return []
    out: list[tuple[int, Observation, str]] = []
    seen: set[str] = set()
    for j, b in enumerate(content):
        if not isinstance(b, dict) or b.get("type") != "tool_result":
            continue
        text = _result_text(b)
        data = text.encode("utf-8", "replace")
        if len(data) < threshold:
            continue
        tid = str(b.get("tool_use_id", ""))
        base = oid = f"turn-{turn:05d}-{_sanitise(tid)}"
        n = 2
        while oid in seen:  # two ids that sanitise alike: still distinct files
            oid = f"{base}-{n}"
            n += 1
        seen.add(oid)
        out.append((j, Observation(oid, turn, tid, len(data), data), text))
    return out


def extract_observations(turn: int, message: dict[str, Any], threshold: int
                         ) -> list[Observation]:
    """The observations of transcript line number `turn` (1-based): every
    tool_result whose text (a string, or its text blocks concatenated) is at
    least `threshold` UTF-8 bytes. Ids are `turn-NNNNN-<tool_use_id>`, with
    the tool_use_id reduced to [A-Za-z0-9_-]."""
    return [o for _, o, _ in _line_observations(turn, message, threshold)]


def stub_text(obs: Observation, agent_path: str, excerpt_chars: int,
              text: str | None = None) -> str:
    """The text that replaces a compacted observation in the rendered context."""
    if text is None:
        text = obs.text.decode("utf-8", "replace")
    return (f"[observation {obs.id}: {obs.size} bytes, stored at "
            f"{agent_path}/observations/{obs.id} — read that file to restore it. "
            f"Excerpt: {text[:excerpt_chars]}…]")


# ---------------------------------------------------------------- policy


_POLICY_DOC = {
    "budget_tokens": "estimated tokens the rendered context may hold before a compaction",
    "observation_threshold_bytes": "a tool output this large or larger is an observation",
    "keep_recent_turns": "observations in the most recent N turns are never stubbed",
    "excerpt_chars": "characters of an observation kept in its stub",
    "compact_to_fraction": "a compaction stubs enough to get under budget * fraction",
    "bytes_per_token": "the token estimate is ceil(bytes / bytes_per_token)",
}


@dataclass(frozen=True)
class Policy:
    """How an agent's context is compacted (AGENT/policy, `KEY VALUE` lines)."""

    budget_tokens: int = 150_000
    observation_threshold_bytes: int = 4096
    keep_recent_turns: int = 6
    excerpt_chars: int = 300
    compact_to_fraction: float = 0.6
    bytes_per_token: int = 4

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_policy_value(f.name, getattr(self, f.name))

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Read `KEY VALUE` lines ('#' starts a comment); unset keys keep their
        defaults. Raises ValueError naming the line and the problem."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"line {n}: expected 'KEY VALUE', got {line!r}")
            key, value = parts
            if key not in known:
                raise ValueError(f"line {n}: unknown key {key!r}; known keys: "
                                 f"{', '.join(known)}")
            if key in values:
                raise ValueError(f"line {n}: {key} is set twice")
            default = getattr(cls, key)
            try:
                if isinstance(default, float):
                    v: Any = float(value)
                else:
                    v = int(value)
            except ValueError:
                what = "a number" if isinstance(default, float) else "an integer"
                raise ValueError(f"line {n}: {key} must be {what}, not {value!r}")
            try:
                _check_policy_value(key, v)
            except ValueError as e:
                raise ValueError(f"line {n}: {e}")
            values[key] = v
        return cls(**values)

    def render(self) -> str:
        """The policy as a file, every key set, each with a one-line comment."""
        out = ["# agentfs context policy: KEY VALUE per line; '#' starts a comment"]
        for f in fields(self):
            out.append(f"# {_POLICY_DOC[f.name]}")
            out.append(f"{f.name} {getattr(self, f.name)!r}")
        return "\n".join(out) + "\n"


def _check_policy_value(key: str, v: Any) -> None:
    if key == "compact_to_fraction":
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{key} must be a number, not {v!r}")
        if not 0 < v <= 1:
            raise ValueError(f"{key} must be in (0, 1], not {v!r}")
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key} must be an integer, not {v!r}")
    low = 0 if key in ("keep_recent_turns", "excerpt_chars") else 1
    if v < low:
        raise ValueError(f"{key} must be at least {low}, not {v}")


# ---------------------------------------------------------------- compaction state


@dataclass(frozen=True)
class CompactionState:
    """Which observations are stubbed: those of turns < stub_before_turn.
    `points` are the turns (transcript lengths) at which compactions
    happened: the only turns where the rendered prefix was rewritten."""

    stub_before_turn: int = 0
    points: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stub_before_turn, bool) or not isinstance(self.stub_before_turn, int) \
                or self.stub_before_turn < 0:
            raise ValueError(f"stub_before_turn must be an integer >= 0, "
                             f"not {self.stub_before_turn!r}")
        prev = 0
        for p in self.points:
            if isinstance(p, bool) or not isinstance(p, int) or p <= prev:
                raise ValueError(f"points must be increasing turn numbers >= 1, "
                                 f"not {self.points!r}")
            prev = p

    def encode(self) -> str:
        """One text line, e.g. `stub_before_turn=12 points=30,45`."""
        return f"stub_before_turn={self.stub_before_turn} points={','.join(map(str, self.points))}"

    @classmethod
    def decode(cls, text: str) -> CompactionState:
        """Inverse of encode(); an empty text is the initial state."""
        s = 0
        points: tuple[int, ...] = ()
        seen: set[str] = set()
        for tok in text.split():
            key, eq, value = tok.partition("=")
            if not eq or key not in ("stub_before_turn", "points") or key in seen:
                raise ValueError(f"compaction state: unexpected {tok!r} "
                                 "(expected stub_before_turn=N points=A,B,...)")
            seen.add(key)
            try:
                if key == "stub_before_turn":
                    s = int(value)
                else:
                    points = tuple(int(p) for p in value.split(",")) if value else ()
            except ValueError:
                raise ValueError(f"compaction state: {key} has a non-integer in {value!r}")
        return cls(s, points)


def _bp4_turn(state: CompactionState, n: int) -> int:
    """The most recent compaction point within the first n turns, or -1."""
    i = bisect.bisect_right(state.points, n)
    return state.points[i - 1] if i else -1


def _choose(state: CompactionState, n: int, policy: Policy, body_len: int,
            savings: Iterable[tuple[int, int]]) -> CompactionState | None:
    """The state after a compaction at turn n, or None if nothing can be stubbed.

    `savings` yields (turn, bytes saved by stubbing that turn's observations)
    for turns with observations, ascending, from stub_before_turn on.
    """
    limit = n - policy.keep_recent_turns + 1  # stub_before_turn never goes beyond
    if limit <= state.stub_before_turn:
        return None
    target = policy.budget_tokens * policy.compact_to_fraction
    size, new_s = body_len, 0
    for turn, saved in savings:
        if turn >= limit:
            break
        if turn < state.stub_before_turn:
            continue
        size -= saved
        new_s = turn + 1
        if estimate_tokens(size, policy) <= target:
            break
    if not new_s:
        return None
    points = tuple(p for p in state.points if p < n) + (n,)
    return CompactionState(new_s, points)


# ---------------------------------------------------------------- rendering


def _text_block(text: str) -> dict[str, Any]:
    return {"text": text, "type": "text"}


def _strip_cc(b: Any) -> Any:
    """A block without cache_control (nested tool_result blocks too); a copy."""
    if not isinstance(b, dict):
        return b
    out = {k: v for k, v in b.items() if k != "cache_control"}
    c = out.get("content")
    if out.get("type") == "tool_result" and isinstance(c, list):
        out["content"] = [_strip_cc(x) for x in c]
    return out


def _normalise(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [_text_block(content)]
    if not isinstance(content, list) or not content:
        raise InvalidLine("content must be a non-empty string or list of content blocks")
    return [_strip_cc(b) for b in content]


def _stub_block(block: dict[str, Any], obs: Observation, text: str, agent_path: str,
                policy: Policy) -> dict[str, Any]:
    return {**block, "content": [_text_block(stub_text(obs, agent_path, policy.excerpt_chars,
                                                       text))]}


def _system_blocks(system: str) -> list[dict[str, Any]]:
    return [{"cache_control": _ephemeral(), "text": system if system.strip() else DEFAULT_SYSTEM,
             "type": "text"}]


def _tool_list(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [{k: v for k, v in t.items() if k != "cache_control"} for t in tools]
    if out:
        out[-1]["cache_control"] = _ephemeral()
    return out


def _prompt_block(prompt: str) -> dict[str, Any]:
    return _text_block(prompt if prompt.strip() else DEFAULT_PROMPT)


def _recitation(todo: str) -> dict[str, Any]:
    return _text_block("<todo>\n" + todo + "\n</todo>")


def _render_pure(agent_path: str, system: str, tools: list[dict[str, Any]], prompt: str,
                 lines: list[dict[str, Any]], todo: str | None, policy: Policy,
                 state: CompactionState) -> bytes:
    s = state.stub_before_turn
    bp4 = _bp4_turn(state, len(lines))
    messages: list[dict[str, Any]] = [{"role": "user", "content": [_prompt_block(prompt)]}]
    for turn, line in enumerate(lines, 1):
        blocks = _normalise(line["content"])
        if turn < s:
            for j, obs, text in _line_observations(turn, line,
                                                   policy.observation_threshold_bytes):
                blocks[j] = _stub_block(blocks[j], obs, text, agent_path, policy)
        if turn == bp4:
            blocks[-1] = {**blocks[-1], "cache_control": _ephemeral()}
        if messages[-1]["role"] == line["role"]:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": line["role"], "content": blocks})
    last = messages[-1]["content"]
    last[-1] = {**last[-1], "cache_control": _ephemeral()}
    if todo:
        if messages[-1]["role"] == "user":
            last.append(_recitation(todo))
        else:
            messages.append({"role": "user", "content": [_recitation(todo)]})
    body: dict[str, Any] = {"messages": messages, "system": _system_blocks(system)}
    if tools:
        body["tools"] = _tool_list(tools)
    return canonical(body)


def _pure_savings(agent_path: str, lines: list[dict[str, Any]], policy: Policy,
                  start: int) -> Iterator[tuple[int, int]]:
    for turn in range(max(start, 1), len(lines) + 1):
        line = lines[turn - 1]
        obs = _line_observations(turn, line, policy.observation_threshold_bytes)
        if not obs:
            continue
        blocks = _normalise(line["content"])
        saved = 0
        for j, o, text in obs:
            stub = _stub_block(blocks[j], o, text, agent_path, policy)
            saved += len(canonical(blocks[j])) - len(canonical(stub))
        yield turn, saved


def render(agent_path: str, system: str, tools: list[dict[str, Any]], prompt: str,
           lines: list[dict[str, Any]], todo: str | None, policy: Policy,
           state: CompactionState) -> tuple[bytes, CompactionState]:
    """The Messages API request body (without model/max_tokens), canonical
    bytes, and the compaction state to keep for the next turn.

    `lines` are validated transcript messages (turn N is lines[N-1]). The
    state changes only when the render would exceed the token budget: then
    older observations are stubbed until the estimate is under
    budget * compact_to_fraction (or as far as keep_recent_turns allows), and
    the turn is recorded as a compaction point.
    """
    body = _render_pure(agent_path, system, tools, prompt, lines, todo, policy, state)
    if estimate_tokens(body, policy) <= policy.budget_tokens:
        return body, state
    new = _choose(state, len(lines), policy, len(body),
                  _pure_savings(agent_path, lines, policy, state.stub_before_turn))
    if new is None:
        return body, state
    return _render_pure(agent_path, system, tools, prompt, lines, todo, policy, new), new


# ---------------------------------------------------------------- model-visible content


def _visible_block(b: Any) -> Any:
    return _strip_cc(b)


def _model_visible(obj: Any) -> dict[str, Any]:
    if isinstance(obj, bytes | bytearray | str):
        obj = json.loads(obj)
    system = obj.get("system", [])
    if isinstance(system, str):
        system = [_text_block(system)]
    messages: list[dict[str, Any]] = []
    for m in obj.get("messages", []):
        content = m["content"]
        if isinstance(content, str):
            content = [_text_block(content)]
        messages.append({"role": m["role"], "content": content})
    if messages:  # the recitation: whatever follows the last breakpoint
        last = messages[-1]["content"]
        marked = [i for i, b in enumerate(last) if isinstance(b, dict) and "cache_control" in b]
        if marked:
            messages[-1] = {"role": messages[-1]["role"], "content": last[:marked[-1] + 1]}
        else:
            messages.pop()
    return {
        "tools": [_visible_block(t) for t in obj.get("tools", [])],
        "system": [_visible_block(b) for b in system],
        "messages": [{"role": m["role"], "content": [_visible_block(b) for b in m["content"]]}
                     for m in messages],
    }


def prefix_content(obj: Any) -> bytes:
    """The model-visible content of a rendered body (bytes, str or dict): the
    canonical bytes of tools + system + messages with every cache_control
    removed and the todo recitation (everything after the last breakpoint)
    removed. Between compactions, this only grows from turn to turn (see
    is_extension): it is what a prompt cache can reuse."""
    return canonical(_model_visible(obj))


def is_extension(prev: Any, new: Any) -> bool:
    """Whether `new`'s model-visible content extends `prev`'s: same tools and
    system, each previous message equal, except that the last previous
    message may have gained blocks at its end (consecutive same-role lines
    are merged)."""
    a, b = _model_visible(prev), _model_visible(new)
    if canonical(a["tools"]) != canonical(b["tools"]) \
            or canonical(a["system"]) != canonical(b["system"]):
        return False
    pm, nm = a["messages"], b["messages"]
    if len(pm) > len(nm):
        return False
    if not pm:
        return True
    for x, y in zip(pm[:-1], nm, strict=False):
        if canonical(x) != canonical(y):
            return False
    lp, ln = pm[-1], nm[len(pm) - 1]
    k = len(lp["content"])
    return lp["role"] == ln["role"] and len(ln["content"]) >= k \
        and canonical(ln["content"][:k]) == canonical(lp["content"])


# ---------------------------------------------------------------- incremental


class _Line:
    """One transcript line, serialised once: block fragments, stub fragments."""

    __slots__ = ("turn", "role", "frags", "stubs", "saved", "last", "last_stub")

    def __init__(self, turn: int, role: str, blocks: list[dict[str, Any]],
                 stubs: dict[int, dict[str, Any]]) -> None:
        self.turn = turn
        self.role = role
        self.frags = [canonical(b) for b in blocks]
        self.stubs = {j: canonical(b) for j, b in stubs.items()}
        self.saved = sum(len(self.frags[j]) - len(f) for j, f in self.stubs.items())
        self.last = blocks[-1]  # only a line's last block ever carries a breakpoint
        self.last_stub = stubs.get(len(blocks) - 1)


class Renderer:
    """render() for one agent, incrementally: same bytes, flat cost per turn.

    Every line is serialised once, when appended; messages that can no longer
    change (all but the last) are joined once into a cached byte prefix, valid
    as long as the stubbing point and the compaction breakpoint stay the same
    (that is, until the next compaction). A render re-serialises only the last
    message's breakpoint block and the recitation, then joins.
    """

    def __init__(self, agent_path: str, system: str, tools: list[dict[str, Any]],
                 prompt: str, policy: Policy) -> None:
        self.agent_path = agent_path
        self.policy = policy
        tail = b'],"system":' + canonical(_system_blocks(system))
        if tools:
            tail += b',"tools":' + canonical(_tool_list(tools))
        self._tail = tail + b"}"
        self._lines: list[_Line] = [_Line(0, "user", [_prompt_block(prompt)], {})]
        self._msgs: list[tuple[str, list[_Line]]] = [("user", [self._lines[0]])]
        self._obs_turns: list[int] = []
        self._key: tuple[int, int] | None = None
        self._frozen = bytearray()
        self._frozen_n = 0
        self._bp_memo: dict[tuple[int, bool], bytes] = {}

    @property
    def turns(self) -> int:
        return len(self._lines) - 1

    def append(self, line: dict[str, Any]) -> int:
        """Add the next transcript line (a validated message); returns its turn."""
        turn = len(self._lines)
        role = line["role"]
        blocks = _normalise(line["content"])
        stubs = {j: _stub_block(blocks[j], o, text, self.agent_path, self.policy)
                 for j, o, text in _line_observations(turn, line,
                                                      self.policy.observation_threshold_bytes)}
        entry = _Line(turn, role, blocks, stubs)
        self._lines.append(entry)
        if stubs:
            self._obs_turns.append(turn)
        if self._msgs[-1][0] == role:
            self._msgs[-1][1].append(entry)
        else:
            self._msgs.append((role, [entry]))
        return turn

    def _bp_frag(self, e: _Line, stubbed: bool) -> bytes:
        key = (e.turn, stubbed)
        frag = self._bp_memo.get(key)
        if frag is None:
            block = e.last_stub if stubbed and e.last_stub is not None else e.last
            frag = canonical({**block, "cache_control": _ephemeral()})
            if len(self._bp_memo) >= 8:
                self._bp_memo.clear()
            self._bp_memo[key] = frag
        return frag

    def _message(self, mi: int, s: int, bp4: int, last: bool, extra: bytes | None) -> bytes:
        role, entries = self._msgs[mi]
        parts: list[bytes] = []
        for e in entries:
            stubbed = e.turn < s and bool(e.stubs)
            frags = e.frags
            if stubbed:
                frags = [e.stubs.get(j, f) for j, f in enumerate(frags)]
            if e.turn == bp4 or (last and e is entries[-1]):
                parts.extend(frags[:-1])
                parts.append(self._bp_frag(e, stubbed))
            else:
                parts.extend(frags)
        if extra is not None:
            parts.append(extra)
        return b'{"content":[' + b",".join(parts) + b'],"role":' + canonical(role) + b"}"

    def _render_state(self, todo: str | None, state: CompactionState) -> bytes:
        s = state.stub_before_turn
        bp4 = _bp4_turn(state, self.turns)
        if self._key != (s, bp4):
            self._key = (s, bp4)
            self._frozen = bytearray()
            self._frozen_n = 0
        m = len(self._msgs)
        while self._frozen_n < m - 1:
            if self._frozen_n:
                self._frozen += b","
            self._frozen += self._message(self._frozen_n, s, bp4, False, None)
            self._frozen_n += 1
        recite = canonical(_recitation(todo)) if todo else None
        last_role = self._msgs[-1][0]
        parts: list[bytes | bytearray] = [b'{"messages":[', self._frozen]
        if self._frozen_n:
            parts.append(b",")
        parts.append(self._message(m - 1, s, bp4, True, recite if last_role == "user" else None))
        if recite is not None and last_role != "user":
            parts.append(b',{"content":[' + recite + b'],"role":"user"}')
        parts.append(self._tail)
        return b"".join(parts)

    def _savings(self, start: int) -> Iterator[tuple[int, int]]:
        for i in range(bisect.bisect_left(self._obs_turns, start), len(self._obs_turns)):
            turn = self._obs_turns[i]
            yield turn, self._lines[turn].saved

    def render(self, todo: str | None, state: CompactionState
               ) -> tuple[bytes, CompactionState]:
        """Exactly render(agent_path, system, tools, prompt, lines, todo,
        policy, state) for the lines appended so far."""
        body = self._render_state(todo, state)
        if estimate_tokens(body, self.policy) <= self.policy.budget_tokens:
            return body, state
        new = _choose(state, self.turns, self.policy, len(body),
                      self._savings(state.stub_before_turn))
        if new is None:
            return body, state
        return self._render_state(todo, new), new
