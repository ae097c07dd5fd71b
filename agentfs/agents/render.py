"""The model-ready request (`context.json`) rendered from prompt + transcript.

Pure, synchronous, stdlib only. The daemon and the runner call it; nothing
here knows about FUSE, LMDB or the Anthropic client. The inputs are checked
here too, each with a reason for the user: a transcript line on its own
(`validate_line`) and against the line before it (`validate_next`: the
tool_use / tool_result pairing), and the `config` file (`validate_config`).

Why it looks the way it does (the Manus context-engineering rules):

* **KV-cache hit rate first.** A request is cached by prefix: tools, then
  system, then messages. Everything that is rendered is therefore a pure
  function of (tools, system, prompt, transcript, todo, policy), serialised
  canonically (`canonical`: sorted keys, no spaces, UTF-8) so the same
  inputs always give the same bytes. Nothing variable (names,
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
* **Rare, explicit compaction, a pure function of the transcript.**
  `CompactionState` says which turns are stubbed. It is decided turn by turn,
  as each line is appended: when the body (without the recitation, which
  changes freely) passes the token budget, older observations are stubbed
  until it is under `compact_to_fraction` of the budget, so the next
  compaction is many turns away. The turns where it happened are recorded
  (`points`); only there does the prefix change. Nothing is stored: the state
  follows from (prompt, system, tools, transcript, policy), so reading
  `context.json` never writes, and a fork, which has the same transcript up
  to the fork point, has the same states there, byte for byte.
* **Recitation.** `todo.md` is appended after the last breakpoint, at the
  very end, so it keeps the goal in the model's attention without ever
  breaking the cache.

The body layout is stated once (`_body`, `_message`, over `_json_object` and
`_json_array`, the only code that knows canonical JSON's punctuation), and
`Renderer` is the one renderer that serves it, incrementally: every line is
serialised once, when appended, so the cost of a turn does not grow with the
conversation (beyond joining the bytes). `render` and `render_from_scratch` at the end of this module are
the test oracle: the same rules written the obvious way (build the dict, then
`canonical`), used only by tests to check `Renderer` byte for byte.
"""

from __future__ import annotations

import bisect
import copy
import functools
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import Field, dataclass, field, fields
from typing import Any, TypeVar

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


class Refused(ValueError):
    """An input refused, with a reason meant for the user (the daemon's errstr)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidLine(Refused):
    """A transcript line that is not one well-formed Messages API message, or
    that cannot follow the line before it (`validate_next`)."""


class InvalidConfig(Refused):
    """A `config` text that is not a valid policy (`validate_config`)."""


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


# ---------------------------------------------------------------- pairing with the line before
#
# The Messages API answers 400 to a request whose tool_result does not answer
# a tool_use of the assistant message right before it, or whose tool_use is
# not answered in the message right after it. The transcript is append-only,
# so such a line would make every later request of the agent fail: it is
# refused when it is appended instead. Consecutive lines of one role are
# merged into one message by the renderer, so "the message before" is the
# line before. The rules, for a line that follows `prev`:
#
# * after an assistant line with tool_use blocks, the line must be a user
#   line holding exactly one tool_result for each of those ids (client/
#   runner.py always writes that: every result in order, interrupted or
#   unrun calls answered with is_error results, then any inbox messages as
#   text; a runner killed before answering leaves the assistant line last,
#   which is allowed: nothing follows it yet);
# * anywhere else, a tool_result is refused (nothing to answer);
# * in a user line, tool_result blocks come before any other block (the API
#   wants the results first), and no two answer the same id;
# * in an assistant line, no two tool_use blocks share an id.


def _content(line: dict[str, Any]) -> list[dict[str, Any]]:
    """A validated line's blocks (none for a string content)."""
    content = line["content"]
    return content if isinstance(content, list) else []


def _ids(line: dict[str, Any], block_type: str, key: str) -> list[tuple[int, str]]:
    """(block index, id) of the line's blocks of one type, each id once (else refused)."""
    out: list[tuple[int, str]] = []
    first: dict[str, int] = {}
    for j, b in enumerate(_content(line)):
        if b["type"] != block_type:
            continue
        ident = b[key]
        if ident in first:
            raise InvalidLine(f"content[{j}].{key} {ident!r} repeats content[{first[ident]}]'s: "
                              f"each {block_type} of a line needs its own id")
        first[ident] = j
        out.append((j, ident))
    return out


def _tool_use_ids(line: dict[str, Any] | None) -> list[str]:
    if line is None or line.get("role") != "assistant":
        return []
    return [b["id"] for b in _content(line) if b["type"] == "tool_use"]


def _check_results_come_first(line: dict[str, Any]) -> None:
    content = _content(line)
    other = next((j for j, b in enumerate(content) if b["type"] != "tool_result"), None)
    if other is None:
        return
    for j in range(other + 1, len(content)):
        if content[j]["type"] == "tool_result":
            raise InvalidLine(f"content[{j}] is a tool_result after content[{other}], "
                              f"a {content[other]['type']} block: tool_result blocks "
                              "come first in a user line")


def _check_answers(asked: list[str], line: dict[str, Any],
                   results: list[tuple[int, str]]) -> None:
    wanted = ", ".join(repr(i) for i in asked)
    if line["role"] != "user":
        raise InvalidLine(f"the line before has tool_use ids {wanted}: the next line must be "
                          "a user line with a tool_result for each")
    for j, ident in results:
        if ident not in asked:
            raise InvalidLine(f"content[{j}].tool_use_id {ident!r} is not a tool_use id of "
                              f"the line before ({wanted})")
    answered = {ident for _, ident in results}
    missing = [i for i in asked if i not in answered]
    if missing:
        raise InvalidLine(f"tool_use {', '.join(repr(i) for i in missing)} of the line before "
                          "has no tool_result in this line: every tool_use must be answered in "
                          "the next line")


def validate_next(prev: dict[str, Any] | None, line: dict[str, Any]) -> None:
    """Check that transcript line `line` may follow `prev`, the last line
    before it (None when the transcript is empty; the prompt holds no
    tool_use). Both are validated messages (`validate_line`). Raises
    `InvalidLine` with a reason that names the block and the ids."""
    if line["role"] == "assistant":
        _ids(line, "tool_use", "id")
        results: list[tuple[int, str]] = []
    else:
        results = _ids(line, "tool_result", "tool_use_id")
    asked = _tool_use_ids(prev)
    if asked:
        _check_answers(asked, line, results)
    elif results:
        raise InvalidLine(f"content[{results[0][0]}] is a tool_result, but the line before "
                          "holds no tool_use for it to answer")
    if results:
        _check_results_come_first(line)


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


@dataclass(frozen=True)
class _KeySpec:
    """What one config key allows: an integer >= low, or a number in (low, high]."""

    low: int
    high: int | None  # set for a number (a float) key: the range is (low, high]
    doc: str

    def allowed(self) -> str:
        if self.high is None:
            return f"an integer >= {self.low}"
        return f"a number in ({self.low}, {self.high}]"

    def convert(self, name: str, text: str) -> int | float:
        """The value a config file spells `text`; refused as the user wrote it."""
        try:
            value: int | float = int(text) if self.high is None else float(text)
        except ValueError:
            value = math.nan
        if not self.allows(value):
            raise InvalidConfig(f"{name} must be {self.allowed()}, not {text!r}")
        return value

    def check(self, name: str, value: object) -> None:
        if not self.allows(value):
            raise InvalidConfig(f"{name} must be {self.allowed()}, not {value!r}")

    def allows(self, value: object) -> bool:
        if isinstance(value, bool):
            return False
        if self.high is None:
            return isinstance(value, int) and value >= self.low
        return isinstance(value, int | float) and math.isfinite(value) \
            and self.low < value <= self.high


T = TypeVar("T", int, float)


def _setting(default: T, low: int, doc: str, high: int | None = None) -> T:
    """A Policy field: its default, and (in its metadata) what it allows and means."""
    return field(default=default, metadata={"key": _KeySpec(low, high, doc)})


def _spec(f: Field[Any]) -> _KeySpec:
    key: _KeySpec = f.metadata["key"]
    return key


@dataclass(frozen=True)
class Policy:
    """How an agent's context is compacted (AGENT/config, `KEY VALUE` lines).
    Each key is stated once, here: default, allowed values, meaning."""

    budget_tokens: int = _setting(
        150_000, 1, "estimated tokens the rendered context may hold before a compaction")
    observation_threshold_bytes: int = _setting(
        4096, 1, "a tool output this large or larger is an observation")
    keep_recent_turns: int = _setting(
        6, 0, "observations in the most recent N turns are never stubbed")
    excerpt_chars: int = _setting(300, 0, "characters of an observation kept in its stub")
    compact_to_fraction: float = _setting(
        0.6, 0, "a compaction stubs enough to get under budget * fraction", high=1)
    bytes_per_token: int = _setting(4, 1, "the token estimate is ceil(bytes / bytes_per_token)")

    def __post_init__(self) -> None:
        for f in fields(self):
            _spec(f).check(f.name, getattr(self, f.name))

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Read `KEY VALUE` lines ('#' starts a comment; blank lines and an
        empty text are fine); unset keys keep their defaults. Raises
        `InvalidConfig` naming the line, the key and what it allows."""
        keys = {f.name: _spec(f) for f in fields(cls)}
        values: dict[str, Any] = {}
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise InvalidConfig(f"line {n}: expected 'KEY VALUE', got {line!r}")
            name, value = parts
            if name not in keys:
                raise InvalidConfig(f"line {n}: unknown key {name!r}; known keys: "
                                    f"{', '.join(keys)}")
            if name in values:
                raise InvalidConfig(f"line {n}: {name} is set twice")
            try:
                values[name] = keys[name].convert(name, value)
            except InvalidConfig as e:
                raise InvalidConfig(f"line {n}: {e.reason}")
        return cls(**values)

    def render(self) -> str:
        """The policy as a file, every key set, each after a comment that says
        what it means and allows (`parse` reads it back to the same policy)."""
        out = ["# agentfs context policy: KEY VALUE per line; '#' starts a comment"]
        for f in fields(self):
            key = _spec(f)
            out.append(f"# {key.doc} ({key.allowed()})")
            out.append(f"{f.name} {getattr(self, f.name)!r}")
        return "\n".join(out) + "\n"


def validate_config(raw: bytes) -> Policy:
    """The policy an agent's `config` file holds: the check for a write to it
    (refuse with EINVAL and the reason) and the parse for a render. Raises
    `InvalidConfig` whose reason starts with 'config: ' and names the line,
    the key and its allowed values."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidConfig(f"config: not valid UTF-8 at byte {e.start}")
    try:
        return Policy.parse(text)
    except InvalidConfig as e:
        raise InvalidConfig(f"config: {e.reason}")


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


def _breakpoint_turn(state: CompactionState) -> int | None:
    """The turn of the fourth breakpoint: the most recent compaction point."""
    return state.points[-1] if state.points else None


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
    return CompactionState(new_s, state.points + (n,))


# ---------------------------------------------------------------- blocks
#
# What goes into the body, block by block, as objects: shared by the renderer
# and the oracle, so that both state the same content and differ only in how
# they serialise it.


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


# ---------------------------------------------------------------- the body layout
#
# context.json is canonical({"messages": [...], "system": [...], "tools": [...]})
# ("tools" left out when there are none), each message {"content": [...],
# "role": ...}. Renderer builds those bytes from pieces serialised once, so it
# needs canonical JSON of objects and arrays whose members are already bytes:
# `_json_object` (keys sorted, as canonical() sorts them) and `_json_array`.
# They are the only code that writes JSON punctuation; the layout is `_body`
# and `_message`. Pieces are kept as lists of byte strings (`Pieces`) so that
# the size of a body is known without joining it.

Pieces = list[bytes | bytearray]
"""One JSON text, in order, as byte strings: b"".join(pieces) is the text."""

_ITEM_SEP = b","


@functools.cache
def _json_name(name: str) -> bytes:
    """canonical() of a key or a role: a handful of names, encoded once (json.dumps
    costs ~2 us a call, and every append encodes three of them)."""
    return canonical(name)


def _json_object(members: dict[str, Pieces]) -> Pieces:
    """canonical() of an object whose values are already serialised."""
    out: Pieces = []
    for key in sorted(members):
        out += [_ITEM_SEP if out else b"{", _json_name(key), b":", *members[key]]
    return out + [b"}"] if out else [b"{}"]


def _json_array(items: Iterable[Pieces]) -> Pieces:
    """canonical() of an array whose items are already serialised. An item may
    be a run of several items already joined with `_add_to_run`."""
    out: Pieces = [b"["]
    for item in items:
        if len(out) > 1:
            out.append(_ITEM_SEP)
        out += item
    return out + [b"]"]


def _add_to_run(run: bytearray, item: Pieces) -> None:
    """Append one item to a run of array items (for `_json_array`)."""
    if run:
        run += _ITEM_SEP
    for piece in item:
        run += piece


def _message(role: str, blocks: Iterable[bytes]) -> Pieces:
    return _json_object({"content": _json_array([b] for b in blocks),
                         "role": [_json_name(role)]})


def _body(messages: Iterable[Pieces], system: bytes, tools: bytes | None) -> Pieces:
    members: dict[str, Pieces] = {"messages": _json_array(messages), "system": [system]}
    if tools is not None:
        members["tools"] = [tools]
    return _json_object(members)


# ---------------------------------------------------------------- the renderer


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
    """context.json for one agent, brought up to date line by line.

    `append` serialises a line's blocks (and the stubs that may replace them)
    once, then decides whether the body, as it now stands without the
    recitation, is over budget, and compacts if so: the compaction state is
    a function of the lines appended, whoever reads when. Messages that can
    no longer change (all but the last) are joined once into a cached run,
    valid until the next compaction changes the stubbing point or the fourth
    breakpoint. A render re-serialises only the last message and the
    recitation, then joins. Measured (tests/unit/test_render.py, a loaded
    2-core box): a render 18 us at 100 turns, 53 us at 1,000 (954 KiB body);
    the size check costs about one more serialisation of the last line per
    append (catching up 1,020 turns from nothing: ~70 ms, ~40 ms before the
    check).
    """

    def __init__(self, agent_path: str, system: str, tools: list[dict[str, Any]],
                 prompt: str, policy: Policy) -> None:
        self.agent_path = agent_path
        self.policy = policy
        self._system = canonical(_system_blocks(system))
        self._tools = canonical(_tool_list(tools)) if tools else None
        self._lines: list[_Line] = [_Line(0, "user", [_prompt_block(prompt)], {})]
        self._msgs: list[tuple[str, list[_Line]]] = [("user", [self._lines[0]])]
        self._obs_turns: list[int] = []
        self.observations: list[Observation] = []  # every line's, in order (observations/)
        self._state = CompactionState()
        self._run = bytearray()  # messages [0, _run_n) joined, under _run_state
        self._run_n = 0
        self._run_state = self._state
        self._bp_memo: dict[tuple[int, bool], bytes] = {}

    def copy(self) -> Renderer:
        """An independent renderer in the same state, nothing re-serialised (a
        fork's, from its origin's: lines are shared, they never change)."""
        new = copy.copy(self)
        new._lines = list(self._lines)
        new._msgs = [(role, list(entries)) for role, entries in self._msgs]
        new._obs_turns = list(self._obs_turns)
        new.observations = list(self.observations)
        new._run = bytearray(self._run)
        new._bp_memo = dict(self._bp_memo)
        return new

    @property
    def turns(self) -> int:
        return len(self._lines) - 1

    @property
    def state(self) -> CompactionState:
        """The compaction state after the last line appended."""
        return self._state

    def append(self, line: dict[str, Any]) -> int:
        """Add the next transcript line (a validated message); returns its turn."""
        turn = len(self._lines)
        role = line["role"]
        blocks = _normalise(line["content"])
        found = _line_observations(turn, line, self.policy.observation_threshold_bytes)
        stubs = {j: _stub_block(blocks[j], o, text, self.agent_path, self.policy)
                 for j, o, text in found}
        entry = _Line(turn, role, blocks, stubs)
        self._lines.append(entry)
        if stubs:
            self._obs_turns.append(turn)
            self.observations += [o for _, o, _ in found]
        if self._msgs[-1][0] == role:
            self._msgs[-1][1].append(entry)
        else:
            self._msgs.append((role, [entry]))
        self._compact_if_over_budget()
        return turn

    def render(self, todo: str | None) -> bytes:
        """The body: render_from_scratch() of the lines appended so far."""
        return b"".join(self._pieces(todo))

    def _compact_if_over_budget(self) -> None:
        if not self._stubbable():
            return  # (_choose would find nothing to stub: spare measuring the body)
        size = sum(map(len, self._pieces(None)))
        if estimate_tokens(size, self.policy) <= self.policy.budget_tokens:
            return
        new = _choose(self._state, self.turns, self.policy, size,
                      self._savings(self._state.stub_before_turn))
        if new is not None:
            self._state = new

    def _stubbable(self) -> bool:
        """Has a turn observations that a compaction now could stub (from
        stub_before_turn, before the keep_recent_turns)?"""
        i = bisect.bisect_left(self._obs_turns, self._state.stub_before_turn)
        limit = self.turns - self.policy.keep_recent_turns + 1
        return i < len(self._obs_turns) and self._obs_turns[i] < limit

    def _pieces(self, todo: str | None) -> Pieces:
        self._extend_run()
        last_role = self._msgs[-1][0]
        recite = canonical(_recitation(todo)) if todo else None
        messages: list[Pieces] = [[self._run]] if self._run_n else []
        messages.append(self._message(len(self._msgs) - 1, last=True,
                                      extra=recite if last_role == "user" else None))
        if recite is not None and last_role != "user":
            messages.append(_message("user", [recite]))
        return _body(messages, self._system, self._tools)

    def _extend_run(self) -> None:
        """Bring the cached run up to all messages but the last, under the current state."""
        if self._run_state != self._state:
            self._run, self._run_n, self._run_state = bytearray(), 0, self._state
        while self._run_n < len(self._msgs) - 1:
            _add_to_run(self._run, self._message(self._run_n, last=False, extra=None))
            self._run_n += 1

    def _message(self, mi: int, last: bool, extra: bytes | None) -> Pieces:
        role, entries = self._msgs[mi]
        s = self._state.stub_before_turn
        bp4 = _breakpoint_turn(self._state)
        blocks: list[bytes] = []
        for e in entries:
            stubbed = e.turn < s and bool(e.stubs)
            frags = [e.stubs.get(j, f) for j, f in enumerate(e.frags)] if stubbed else e.frags
            if e.turn == bp4 or (last and e is entries[-1]):
                blocks += frags[:-1]
                blocks.append(self._bp_frag(e, stubbed))
            else:
                blocks += frags
        if extra is not None:
            blocks.append(extra)
        return _message(role, blocks)

    def _bp_frag(self, e: _Line, stubbed: bool) -> bytes:
        """A line's last block with a breakpoint (memoised: the last line's is
        rendered on every read)."""
        key = (e.turn, stubbed)
        frag = self._bp_memo.get(key)
        if frag is None:
            block = e.last_stub if stubbed and e.last_stub is not None else e.last
            frag = canonical({**block, "cache_control": _ephemeral()})
            if len(self._bp_memo) >= 8:
                self._bp_memo.clear()
            self._bp_memo[key] = frag
        return frag

    def _savings(self, start: int) -> Iterator[tuple[int, int]]:
        for i in range(bisect.bisect_left(self._obs_turns, start), len(self._obs_turns)):
            turn = self._obs_turns[i]
            yield turn, self._lines[turn].saved


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


# ---------------------------------------------------------------- the test oracle
#
# The same rules written the obvious way: build the body as objects, then
# canonical(). Used only by tests, to check Renderer byte for byte (its cost
# is a full render per turn: quadratic over a session).


def _render_pure(agent_path: str, system: str, tools: list[dict[str, Any]], prompt: str,
                 lines: list[dict[str, Any]], todo: str | None, policy: Policy,
                 state: CompactionState) -> bytes:
    s = state.stub_before_turn
    bp4 = _breakpoint_turn(state)
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
    """ORACLE, one turn: the body for `lines` (turn N is lines[N-1]), given
    `state`, the compaction state after the turn before, and the state after
    this turn. If the body without the recitation is over the token budget,
    older observations are stubbed until the estimate is under budget *
    compact_to_fraction (or as far as keep_recent_turns allows), and this
    turn becomes a compaction point."""
    plain = _render_pure(agent_path, system, tools, prompt, lines, None, policy, state)
    if estimate_tokens(plain, policy) > policy.budget_tokens:
        new = _choose(state, len(lines), policy, len(plain),
                      _pure_savings(agent_path, lines, policy, state.stub_before_turn))
        state = state if new is None else new
    return _render_pure(agent_path, system, tools, prompt, lines, todo, policy, state), state


def render_from_scratch(agent_path: str, system: str, tools: list[dict[str, Any]],
                        prompt: str, lines: list[dict[str, Any]], todo: str | None,
                        policy: Policy) -> tuple[bytes, CompactionState]:
    """ORACLE: what Renderer gives after appending `lines`, from nothing: the
    compaction state folded turn by turn with `render`, then the body."""
    state = CompactionState()
    for n in range(1, len(lines) + 1):
        _, state = render(agent_path, system, tools, prompt, lines[:n], None, policy, state)
    return _render_pure(agent_path, system, tools, prompt, lines, todo, policy, state), state
