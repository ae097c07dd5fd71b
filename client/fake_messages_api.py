"""A local fake of Anthropic's Messages API, with a prompt-cache simulator.

The official `anthropic` SDK works against it unchanged: point it at
`api.base_url` (or set ANTHROPIC_BASE_URL) and give it any API key. Replies
are scripted by the test; token usage, including prompt caching, is computed
the way the real API reports it, from a documented estimate, so tests and
benchmarks can assert on cache behaviour without the network.

    from agentfs.client.fake_messages_api import FakeMessagesAPI, Script, text, tool_use

    with FakeMessagesAPI(Script([tool_use("read", {"path": "a"}), text("done")])) as api:
        client = anthropic.Anthropic(base_url=api.base_url, api_key="test")
        msg = client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=[...])
        api.requests[0].usage.cache_read_input_tokens, api.totals()

Serves 127.0.0.1 only (port 0 picks a free port) from a background thread.
Stdlib only: no import of the daemon, FUSE, trio or the SDK.

Wire subset
-----------
Sources: https://docs.claude.com/en/api/messages,
https://platform.claude.com/docs/en/build-with-claude/streaming,
https://docs.claude.com/en/api/errors, and the SDK's own parser
(anthropic/_streaming.py, lib/streaming/_messages.py, _base_client.py).

* `POST /v1/messages`: request JSON as the API takes it (`model`,
  `max_tokens`, `messages`, `system` as a string or text blocks, `tools`,
  `tool_choice`, `thinking`, top-level and per-block `cache_control`; other
  fields are accepted and ignored). The reply is a Message object
  (`msg_fake_0001`, content of `text` and `tool_use` blocks, `stop_reason`,
  `stop_sequence`, `usage`). With `"stream": true` it is the SSE sequence
  message_start, ping, then per block content_block_start /
  content_block_delta (`text_delta` or `input_json_delta`) /
  content_block_stop, then message_delta (stop_reason and cumulative usage)
  and message_stop, sent with chunked transfer encoding.
* `POST /v1/messages/count_tokens`: `{"input_tokens": N}`.
* Every response carries a `request-id` header (`req_fake_0001`). Errors are
  `{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`
  with the documented status/type pairs (400 invalid_request_error, 429
  rate_limit_error, 500 api_error, 529 overloaded_error, ...), an optional
  `retry-after` header and `x-should-retry` (false on 4xx other than 429,
  true otherwise, as the API sends it; the SDK obeys it before anything else).
* Validation, with the real API's messages: `model`, `max_tokens`,
  `messages` present; non-empty content; roles alternate starting with
  "user" (`strict_roles=False` allows runs of one role, which the API
  reference says it combines into one turn; "system"-role messages, which
  SDK 2.x can send, are accepted anywhere and left out of the alternation);
  every `tool_result` answers a `tool_use` id of the previous assistant
  message and every `tool_use` is answered in the next message; at most 4
  `cache_control` breakpoints ("A maximum of 4 blocks with cache_control may
  be provided. Found 5."); `cache_control` is `{"type": "ephemeral"}` with
  an optional `"ttl": "5m" | "1h"`, and 1h breakpoints come before 5m ones.
  Authentication is not checked.

Scripting replies
-----------------
A responder is any callable taking the parsed request body (a dict: system
prompt, messages, tools, everything) and returning a spec. Build specs with
`text()`, `tool_use()` / `reply()` (several blocks, leading text, any
stop_reason), `error(status, retry_after=...)`, `delay(seconds, then=...)`
(a slow or hanging request, to trip client timeouts) and
`close_connection()`. A string is taken as `text(s)`, a dict as the JSON form
(`spec_from_json`). `Script([...])` replays specs in order;
`by_system({"planner": ..., "coder": ...})` routes by the system prompt so
that each agent gets its own script. A responder that raises gets a 500
api_error with `x-should-retry: false` (the exception is kept in
`api.responder_errors`). Ids are deterministic per server: msg_fake_0001,
toolu_fake_0001, req_fake_0001. Every request (also errors and retries) is
in `api.requests` as a `RecordedRequest` (`.body`, `.headers`, `.status`,
`.usage`, `.response`), appended when it arrives and completed when answered.

Token estimate
--------------
`estimate_tokens(block) = ceil(len(canonical_json(block)) / 4)`, where
canonical JSON is `json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)` in UTF-8 and a block's own `cache_control` is left out
(moving a breakpoint does not change what is cached). The prompt is the list
of blocks tools (each tool definition), then system (each text block; a
string is one text block), then messages (each content block; a string is
one text block); its size is the sum over its blocks, so every prefix has a
size and sizes add up. Message roles and boundaries are part of a prefix's
identity but cost no tokens. `output_tokens` is the same estimate summed
over the reply's content blocks. `count_prompt_tokens(body)` gives the
total; benchmarks can use these functions to predict the same numbers.

Prompt-cache simulator (`PromptCache`)
--------------------------------------
Rules from https://platform.claude.com/docs/en/build-with-claude/prompt-caching
and https://platform.claude.com/docs/en/agents-and-tools/tool-use/tool-use-with-prompt-caching:

* The cacheable prefix is tools, then system, then messages. A block with
  `cache_control` is a breakpoint (a top-level `cache_control` puts one on
  the last block, the documented automatic caching). A cache entry is the
  whole prefix up to and including the breakpoint block, keyed by the model
  and the canonical bytes of every block in it (a hash chain), so any change
  before a breakpoint misses it, and a change to a tool misses everything.
  `tool_choice` and `thinking` are part of the key of message blocks only
  (documented: changing them keeps the tools and system cache).
* For each breakpoint the simulator looks for a live entry ending at the
  breakpoint or at one of the block boundaries before it, at most
  `lookback=20` positions counting the breakpoint itself (the documented
  lookback window); the longest hit over all breakpoints is read.
* `cache_read_input_tokens` = size of that prefix;
  `cache_creation_input_tokens` = size from its end to the last breakpoint
  whose prefix is at least the minimum cacheable length, and those
  breakpoints' prefixes become entries (`usage.cache_creation` splits the
  tokens by the TTL of the breakpoint that closes them);
  `input_tokens` = everything else (after the last cached breakpoint).
* Prefixes shorter than the minimum are not cached: by default 2048 tokens
  for Haiku models and 1024 for the others (`min_cache_tokens=` overrides).
* Entries live 5 minutes (`"ttl": "1h"`: one hour) from their last use; a
  hit refreshes them. Time comes from `clock` (inject a `ManualClock`).

Deviations: tokens are an estimate, not Claude's tokenizer; the minimum is
per model family (the docs give other values for some recent models, e.g.
4096 for Opus 4.5/4.6 and Haiku 4.5: pass `min_cache_tokens`); a cache entry
is usable as soon as the request that writes it is processed (the real
cache becomes usable once the first response starts, and concurrent
identical requests may both miss); entries are shared by all requests to one server
(no workspace isolation), never evicted before their TTL, and only
top-level content blocks carry breakpoints; images, citations, web search
and speed toggles do not affect keys; scripted text is not truncated at
`max_tokens`; the TTL-order error text is our own wording.

In tests
--------
Give the SDK small `max_retries` and errors a small positive `retry_after`
(the SDK treats 0 as absent and backs off 0.5-8 s); trip timeouts with
`delay(30)` and a client `timeout=0.2` (closing the server ends the delay);
drive TTLs with `ManualClock.advance`; use a small `min_cache_tokens` to
keep prompts short; compare usage with `estimate_tokens` of the blocks.
`api.env()` gives ANTHROPIC_BASE_URL and a key for agent subprocesses.

CLI
---
`python -m agentfs.client.fake_messages_api [--port N] [--script FILE.jsonl]`
prints `http://127.0.0.1:PORT` as its first line and serves until killed.
Each script line is one spec in the JSON form of `spec_from_json` (blank
lines and lines starting with `#` are skipped); a line with `"for": TEXT`
answers only requests whose first message (an agent's prompt) contains TEXT
(see `script_file`), so that agents running at once each follow their own
lines. When the lines for a request are exhausted (or without a script)
it gets the end_turn text "done".
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import urlsplit

__all__ = [
    "FakeMessagesAPI",
    "RecordedRequest",
    "Totals",
    "Usage",
    "PromptCache",
    "ManualClock",
    "Script",
    "ScriptExhausted",
    "Reply",
    "ErrorReply",
    "Delay",
    "CloseConnection",
    "text",
    "tool_use",
    "tool_use_block",
    "reply",
    "error",
    "delay",
    "close_connection",
    "spec_from_json",
    "by_system",
    "system_text",
    "first_user_text",
    "last_user_text",
    "script_file",
    "tool_results",
    "canonical_json",
    "estimate_tokens",
    "count_prompt_tokens",
    "min_cacheable_tokens",
    "validate_request",
    "main",
]

JSON = dict[str, Any]

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
MAX_BREAKPOINTS = 4
DEFAULT_LOOKBACK = 20
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
STOP_REASONS = ("end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal")


# --------------------------------------------------------------------------
# Token estimate


def canonical_json(obj: Any) -> bytes:
    """The canonical serialisation every estimate and cache key is made of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _without_cache_control(block: Any) -> Any:
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def estimate_tokens(obj: Any) -> int:
    """ceil(len(canonical JSON bytes) / 4), the block's own cache_control left out."""
    return math.ceil(len(canonical_json(_without_cache_control(obj))) / 4)


def min_cacheable_tokens(model: str) -> int:
    """The documented minimum cacheable prefix per model family (Haiku 2048, else 1024)."""
    return 2048 if "haiku" in model.lower() else 1024


@dataclass(frozen=True)
class PromptBlock:
    """One block of the rendered prompt, in cache order (tools, system, messages)."""

    segment: str  # "tools" | "system" | "messages"
    path: str  # where it is in the request, for error messages: "messages.2.content.0"
    block: JSON  # a string system/content is normalised to one text block
    role: str | None
    message_index: int | None
    tokens: int

    @property
    def cache_control(self) -> Any:
        return self.block.get("cache_control")


def _content_blocks(content: Any) -> list[JSON]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content) if isinstance(content, list) else []


def prompt_blocks(body: Mapping[str, Any]) -> list[PromptBlock]:
    """The request's prompt as blocks in cache order; assumes a validated body."""
    blocks: list[PromptBlock] = []
    for i, tool in enumerate(body.get("tools") or []):
        blocks.append(PromptBlock("tools", f"tools.{i}", tool, None, None, estimate_tokens(tool)))
    system = body.get("system")
    if system:
        one = isinstance(system, str)
        for i, b in enumerate(_content_blocks(system)):
            path = "system" if one else f"system.{i}"
            blocks.append(PromptBlock("system", path, b, None, None, estimate_tokens(b)))
    for m, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        one = isinstance(content, str)
        for i, b in enumerate(_content_blocks(content)):
            path = f"messages.{m}.content" if one else f"messages.{m}.content.{i}"
            blocks.append(
                PromptBlock("messages", path, b, message.get("role"), m, estimate_tokens(b))
            )
    return blocks


def count_prompt_tokens(body: Mapping[str, Any]) -> int:
    """The estimated size of the whole prompt: what count_tokens answers."""
    return sum(b.tokens for b in prompt_blocks(body))


def _breakpoints(body: Mapping[str, Any], blocks: list[PromptBlock]) -> list[tuple[int, str]]:
    """(block index, ttl) of every breakpoint, in prompt order."""
    points = [
        (i, b.cache_control.get("ttl", "5m")) for i, b in enumerate(blocks) if b.cache_control
    ]
    auto = body.get("cache_control")
    # Automatic caching marks the last block, unless it already is a breakpoint.
    if auto and blocks and (not points or points[-1][0] != len(blocks) - 1):
        points.append((len(blocks) - 1, auto.get("ttl", "5m")))
    return points


# --------------------------------------------------------------------------
# Request validation


class _Invalid(Exception):
    pass


def validate_request(
    body: Any, *, require_max_tokens: bool = True, strict_roles: bool = True
) -> str | None:
    """The invalid_request_error message the API would give, or None if valid."""
    try:
        _check_fields(body, require_max_tokens)
        _check_messages(body["messages"], strict_roles)
        _check_cache_control(body)
    except _Invalid as e:
        return str(e)
    return None


def _check_fields(body: Any, require_max_tokens: bool) -> None:
    if not isinstance(body, dict):
        raise _Invalid("Input should be a valid dictionary or object")
    required = ("max_tokens", "messages", "model") if require_max_tokens else ("messages", "model")
    for name in required:
        if name not in body:
            raise _Invalid(f"{name}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise _Invalid("model: Input should be a valid string")
    if require_max_tokens:
        mt = body["max_tokens"]
        if not isinstance(mt, int) or isinstance(mt, bool):
            raise _Invalid("max_tokens: Input should be a valid integer")
        if mt < 1:
            raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    if not isinstance(body["messages"], list):
        raise _Invalid("messages: Input should be a valid list")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            raise _Invalid("system: Input should be a valid list")
        for i, b in enumerate(system):
            if (
                not isinstance(b, dict)
                or b.get("type") != "text"
                or not isinstance(b.get("text"), str)
            ):
                raise _Invalid(f"system.{i}: Input should be a valid text block")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _Invalid("tools: Input should be a valid list")
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise _Invalid(f"tools.{i}.name: Field required")


def _check_messages(messages: list[Any], strict_roles: bool) -> None:
    if not messages:
        raise _Invalid("messages: at least one message is required")
    for i, m in enumerate(messages):
        _check_message(i, m, last=i == len(messages) - 1)
    # Messages with the "system" role (which newer SDKs send mid-conversation)
    # stand outside the user/assistant alternation.
    turns = [m for m in messages if m["role"] != "system"]
    if strict_roles and turns:
        if turns[0]["role"] != "user":
            raise _Invalid('messages: first message must use the "user" role')
        for prev, cur in itertools.pairwise(turns):
            if prev["role"] == cur["role"]:
                raise _Invalid(
                    'messages: roles must alternate between "user" and "assistant", '
                    f'but found multiple "{cur["role"]}" roles in a row'
                )
    _check_tool_pairs(messages)


def _check_message(i: int, m: Any, *, last: bool) -> None:
    if not isinstance(m, dict):
        raise _Invalid(f"messages.{i}: Input should be a valid dictionary or object")
    if m.get("role") not in ("user", "assistant", "system"):
        raise _Invalid(f"messages.{i}.role: Input should be 'user', 'assistant' or 'system'")
    content = m.get("content")
    if not isinstance(content, (str, list)):
        raise _Invalid(f"messages.{i}.content: Input should be a valid list")
    if not content and not (last and m["role"] == "assistant"):
        raise _Invalid(
            f"messages.{i}: all messages must have non-empty content except for the "
            "optional final assistant message"
        )
    for j, b in enumerate(content if isinstance(content, list) else []):
        where = f"messages.{i}.content.{j}"
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise _Invalid(f"{where}.type: Field required")
        needed = {"tool_use": ("id", "name", "input"), "tool_result": ("tool_use_id",)}
        for name in needed.get(b["type"], ()):
            if name not in b:
                raise _Invalid(f"{where}.{b['type']}.{name}: Field required")


def _blocks_of(message: Mapping[str, Any], kind: str) -> list[tuple[int, JSON]]:
    content = message.get("content")
    if not isinstance(content, list):
        return []
    return [(j, b) for j, b in enumerate(content) if b.get("type") == kind]


def _check_tool_pairs(messages: list[JSON]) -> None:
    """tool_result answers the previous assistant message's tool_use ids, and all of them.
    A stray tool_result is reported before the tool_use it leaves unanswered."""
    for i, m in enumerate(messages):
        prev = messages[i - 1] if i > 0 and messages[i - 1]["role"] == "assistant" else {}
        asked = {b["id"] for _, b in _blocks_of(prev, "tool_use")}
        for j, b in _blocks_of(m, "tool_result"):
            if b["tool_use_id"] not in asked:
                raise _Invalid(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {b['tool_use_id']}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or i + 1 == len(messages):
            continue
        answered = {b["tool_use_id"] for _, b in _blocks_of(messages[i + 1], "tool_result")}
        missing = [b["id"] for _, b in _blocks_of(m, "tool_use") if b["id"] not in answered]
        if missing:
            raise _Invalid(
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )


def _check_cache_control_value(where: str, cc: Any) -> None:
    if not isinstance(cc, dict) or cc.get("type") != "ephemeral":
        raise _Invalid(f"{where}.type: Input should be 'ephemeral'")
    if "ttl" in cc and cc["ttl"] not in TTL_SECONDS:
        raise _Invalid(f"{where}.ttl: Input should be '5m' or '1h'")


def _check_cache_control(body: JSON) -> None:
    blocks = prompt_blocks(body)
    for b in blocks:
        if "cache_control" in b.block and b.block["cache_control"] is not None:
            _check_cache_control_value(f"{b.path}.cache_control", b.block["cache_control"])
    if body.get("cache_control") is not None:
        _check_cache_control_value("cache_control", body["cache_control"])
    points = _breakpoints(body, blocks)
    if len(points) > MAX_BREAKPOINTS:
        raise _Invalid(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(points)}."
        )
    ttls = [ttl for _, ttl in points]
    if "5m" in ttls and "1h" in ttls[ttls.index("5m") :]:
        raise _Invalid(
            'cache_control: a breakpoint with "ttl": "1h" cannot come after one with '
            '"ttl": "5m"; longer TTLs must come first (tools, system, messages order)'
        )


# --------------------------------------------------------------------------
# Prompt-cache simulator


@dataclass(frozen=True)
class Usage:
    """Token usage of one reply, as the API reports it."""

    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0

    def as_json(self) -> JSON:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_creation_5m,
                "ephemeral_1h_input_tokens": self.cache_creation_1h,
            },
            "output_tokens": self.output_tokens,
            "service_tier": "standard",
        }


@dataclass
class _Entry:
    expires: float
    ttl: float


class PromptCache:
    """Anthropic's prompt cache, simulated (see the module docstring for the rules).

    Usable without the server: `PromptCache(clock=...).process(body)` gives the
    Usage (output_tokens 0) a request would get, and updates the cache.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_tokens: int | None = None,
        lookback: int = DEFAULT_LOOKBACK,
    ) -> None:
        self.clock = clock
        self.min_tokens = min_tokens
        self.lookback = lookback
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def min_tokens_for(self, model: str) -> int:
        return self.min_tokens if self.min_tokens is not None else min_cacheable_tokens(model)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        """The number of live entries."""
        with self._lock:
            self._expire(self.clock())
            return len(self._entries)

    def process(self, body: Mapping[str, Any]) -> Usage:
        blocks = prompt_blocks(body)
        sizes = list(itertools.accumulate(b.tokens for b in blocks))
        total = sizes[-1] if sizes else 0
        points = _breakpoints(body, blocks)
        if not points:
            return Usage(input_tokens=total)
        keys = _prefix_keys(body, blocks)
        minimum = self.min_tokens_for(str(body.get("model", "")))
        with self._lock:
            now = self.clock()
            self._expire(now)
            hit = self._longest_hit(points, keys)
            read = sizes[hit] if hit >= 0 else 0
            self._refresh(hit, points, keys, now)
            created = {"5m": 0, "1h": 0}
            start = read
            for index, ttl in points:
                if index <= hit or sizes[index] < minimum:
                    continue
                # Tokens up to this breakpoint are written with its TTL.
                created[ttl] += sizes[index] - start
                start = sizes[index]
                self._entries[keys[index]] = _Entry(now + TTL_SECONDS[ttl], TTL_SECONDS[ttl])
        creation = created["5m"] + created["1h"]
        return Usage(
            input_tokens=total - read - creation,
            cache_creation_input_tokens=creation,
            cache_read_input_tokens=read,
            cache_creation_5m=created["5m"],
            cache_creation_1h=created["1h"],
        )

    def _expire(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            del self._entries[key]

    def _longest_hit(self, points: list[tuple[int, str]], keys: list[str]) -> int:
        """The last block of the longest cached prefix within any breakpoint's lookback, or -1."""
        hit = -1
        for index, _ in points:
            for pos in range(index, max(index - self.lookback, -1), -1):
                if keys[pos] in self._entries:
                    hit = max(hit, pos)
                    break
        return hit

    def _refresh(
        self, hit: int, points: list[tuple[int, str]], keys: list[str], now: float
    ) -> None:
        """A hit refreshes the entry read and the entries of breakpoints inside it."""
        if hit < 0:
            return
        entry = self._entries[keys[hit]]
        entry.expires = now + entry.ttl
        for index, _ in points:
            inside = self._entries.get(keys[index]) if index <= hit else None
            if inside is not None:
                inside.expires = now + inside.ttl


def _prefix_keys(body: Mapping[str, Any], blocks: list[PromptBlock]) -> list[str]:
    """keys[i] identifies the prefix blocks[0..i]: a hash chain over canonical bytes."""
    h = hashlib.sha256(b"model\0" + canonical_json(body.get("model")))
    keys: list[str] = []
    in_messages = False
    for b in blocks:
        if b.segment == "messages" and not in_messages:
            # Documented: these invalidate the messages cache, not tools/system.
            in_messages = True
            context = {"tool_choice": body.get("tool_choice"), "thinking": body.get("thinking")}
            h.update(b"\0messages\0" + canonical_json(context))
        h.update(b"\0" + canonical_json([b.segment, b.message_index, b.role]) + b"\0")
        h.update(canonical_json(_without_cache_control(b.block)))
        keys.append(h.copy().hexdigest())
    return keys


class ManualClock:
    """A clock for tests: starts at `start`, moves only by `advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


# --------------------------------------------------------------------------
# Response specs


@dataclass(frozen=True)
class Reply:
    """A successful Message. tool_use blocks without an "id" get toolu_fake_NNNN."""

    content: tuple[JSON, ...]
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None


@dataclass(frozen=True)
class ErrorReply:
    status: int
    type: str
    message: str
    retry_after: float | None = None
    should_retry: bool | None = None  # None: what the API sends for this status


@dataclass(frozen=True)
class Delay:
    """Wait, then answer with `then` (or drop the connection if None)."""

    seconds: float
    then: Spec | None = None


@dataclass(frozen=True)
class CloseConnection:
    """Close the connection without answering."""


Spec: TypeAlias = Reply | ErrorReply | Delay | CloseConnection
SpecLike: TypeAlias = Spec | str | Mapping[str, Any]
Responder: TypeAlias = Callable[[JSON], SpecLike]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ERROR_MESSAGES = {
    429: "This request would exceed the rate limit for your organization. Please retry later.",
    500: "Internal server error",
    529: "Overloaded",
}
_REASONS = {529: "Overloaded"}


def tool_use_block(name: str, input: Mapping[str, Any], id: str | None = None) -> JSON:
    block: JSON = {"type": "tool_use", "name": name, "input": dict(input)}
    if id is not None:
        block["id"] = id
    return block


def reply(
    *blocks: str | Mapping[str, Any],
    stop_reason: str | None = None,
    stop_sequence: str | None = None,
) -> Reply:
    """A Message of these blocks (a string is a text block). The stop_reason
    defaults to "tool_use" when there is a tool_use block, else "end_turn"."""
    content = tuple({"type": "text", "text": b} if isinstance(b, str) else dict(b) for b in blocks)
    if stop_reason is None:
        has_tool = any(b.get("type") == "tool_use" for b in content)
        stop_reason = "tool_use" if has_tool else "end_turn"
    if stop_reason not in STOP_REASONS:
        raise ValueError(f"unknown stop_reason {stop_reason!r}")
    return Reply(content, stop_reason, stop_sequence)


def text(s: str, *, stop_reason: str = "end_turn", stop_sequence: str | None = None) -> Reply:
    return reply(s, stop_reason=stop_reason, stop_sequence=stop_sequence)


def tool_use(
    name: str, input: Mapping[str, Any], id: str | None = None, *, text: str | None = None
) -> Reply:
    """One tool call (stop_reason tool_use), after an optional text block.
    For several calls: reply("...", tool_use_block(...), tool_use_block(...))."""
    lead = [text] if text is not None else []
    return reply(*lead, tool_use_block(name, input, id))


def error(
    status: int,
    *,
    retry_after: float | None = None,
    message: str | None = None,
    type: str | None = None,
    should_retry: bool | None = None,
) -> ErrorReply:
    """An HTTP error. Note the SDK ignores retry-after <= 0 (it then backs off
    0.5-8 s), so for fast tests use a small positive value such as 0.01."""
    kind = type or _ERROR_TYPES.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )
    return ErrorReply(
        status, kind, message or _ERROR_MESSAGES.get(status, kind), retry_after, should_retry
    )


def delay(seconds: float, then: SpecLike | None = None) -> Delay:
    return Delay(seconds, None if then is None else _coerce(then))


def close_connection() -> CloseConnection:
    return CloseConnection()


def spec_from_json(obj: Any) -> Spec:
    """The JSON form of a spec (script files, responders returning dicts):

    "hello"  or  {"text": "hello", "stop_reason": "max_tokens"}
    {"tool_use": {"name": "read", "input": {"path": "a"}, "id": "t1"}, "text": "Let me look."}
    {"tool_use": [{"name": ...}, {"name": ...}]}
    {"content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"}
    {"error": 429, "retry_after": 1, "message": "...", "type": "...", "should_retry": true}
    {"delay": 2.5, "then": {"text": "late"}}
    {"close_connection": true}
    """
    if isinstance(obj, str):
        return text(obj)
    if not isinstance(obj, Mapping):
        raise ValueError(f"not a response spec: {obj!r}")
    stop = {k: obj[k] for k in ("stop_reason", "stop_sequence") if k in obj}
    if "error" in obj:
        opts = {k: obj[k] for k in ("retry_after", "message", "type", "should_retry") if k in obj}
        return error(int(obj["error"]), **opts)
    if "delay" in obj:
        return delay(float(obj["delay"]), obj.get("then"))
    if obj.get("close_connection"):
        return close_connection()
    if "tool_use" in obj:
        calls = obj["tool_use"] if isinstance(obj["tool_use"], list) else [obj["tool_use"]]
        lead = [obj["text"]] if "text" in obj else []
        blocks = [tool_use_block(c["name"], c.get("input", {}), c.get("id")) for c in calls]
        return reply(*lead, *blocks, **stop)
    if "content" in obj:
        return reply(*obj["content"], **stop)
    if "text" in obj:
        return reply(obj["text"], **stop)
    raise ValueError(f"not a response spec: {obj!r}")


def _coerce(spec: SpecLike) -> Spec:
    if isinstance(spec, (Reply, ErrorReply, Delay, CloseConnection)):
        return spec
    return spec_from_json(spec)


class ScriptExhausted(LookupError):
    pass


class Script:
    """A responder replaying specs in order (thread-safe). When they run out it
    answers `when_done` if given, else fails the request (500, no retry)."""

    def __init__(self, specs: Iterable[SpecLike], *, when_done: SpecLike | None = None) -> None:
        self._specs = [_coerce(s) for s in specs]
        self._next = 0
        self._when_done = None if when_done is None else _coerce(when_done)
        self._lock = threading.Lock()

    @classmethod
    def from_jsonl(cls, path: str | Path, *, when_done: SpecLike | None = None) -> Script:
        return cls(_jsonl_specs(path), when_done=when_done)


    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._specs) - self._next

    def __call__(self, body: JSON) -> Spec:
        with self._lock:
            if self._next < len(self._specs):
                self._next += 1
                return self._specs[self._next - 1]
        if self._when_done is None:
            raise ScriptExhausted(f"script exhausted after {len(self._specs)} responses")
        return self._when_done


def _jsonl_specs(path: str | Path) -> list[Any]:
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip() and not line.startswith("#")]


def script_file(path: str | Path, *, when_done: SpecLike | None = None) -> Responder:
    """The responder of a JSONL script file (the CLI's --script): one spec per
    line, replayed in order. A line with a `"for": TEXT` key is kept for the
    requests whose first message (an agent's prompt) contains TEXT, in the
    order of those lines: several agents running at once each get their own
    replies. Lines without it answer every other request."""
    routed: dict[str, list[Any]] = {}
    rest: list[Any] = []
    for spec in _jsonl_specs(path):
        if isinstance(spec, dict) and "for" in spec:
            routed.setdefault(str(spec["for"]), []).append(
                {k: v for k, v in spec.items() if k != "for"})
        else:
            rest.append(spec)
    scripts = {key: Script(specs, when_done=when_done) for key, specs in routed.items()}
    default = Script(rest, when_done=when_done)

    def respond(body: JSON) -> SpecLike:
        prompt = first_user_text(body)
        for key, script in scripts.items():
            if key in prompt:
                return script(body)
        return default(body)

    return respond



def system_text(body: Mapping[str, Any]) -> str:
    """The system prompt as one string (text blocks joined by newlines)."""
    return "\n".join(b.get("text", "") for b in _content_blocks(body.get("system")))


def first_user_text(body: Mapping[str, Any]) -> str:
    """The text blocks of the first message (an agentfs agent's prompt), joined."""
    messages = body.get("messages") or []
    if not messages:
        return ""
    blocks = _content_blocks(messages[0].get("content"))
    return "\n".join(b.get("text", "") for b in blocks if b.get("type") == "text")


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text blocks of the last user message, joined by newlines."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    if not users:
        return ""
    blocks = _content_blocks(users[-1].get("content"))
    return "\n".join(b.get("text", "") for b in blocks if b.get("type") == "text")


def tool_results(body: Mapping[str, Any]) -> list[JSON]:
    """The tool_result blocks of the last message."""
    messages = body.get("messages") or []
    if not messages:
        return []
    return [b for _, b in _blocks_of(messages[-1], "tool_result")]


def by_system(table: Mapping[str, Responder], default: Responder | None = None) -> Responder:
    """Route each request to the responder of the first key found in its system prompt."""

    def route(body: JSON) -> SpecLike:
        system = system_text(body)
        for key, responder in table.items():
            if key in system:
                return responder(body)
        if default is None:
            raise LookupError(f"no responder for system prompt {system[:80]!r}")
        return default(body)

    return route


# --------------------------------------------------------------------------
# The server


@dataclass
class RecordedRequest:
    """One HTTP request the server received, completed once it is answered."""

    seq: int
    path: str
    body: Any  # parsed JSON (None if the body was not JSON)
    headers: dict[str, str]  # names in lower case
    request_id: str
    time: float  # the server's clock when it arrived
    status: int | None = None  # None while in flight; 0 if the connection was dropped
    usage: Usage | None = None
    response: JSON | None = None  # the Message or error body sent
    spec: Spec | None = None

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def retry_count(self) -> int:
        """The SDK's attempt number (x-stainless-retry-count), 0 for a first try."""
        return int(self.headers.get("x-stainless-retry-count", "0"))


@dataclass(frozen=True)
class Totals:
    """Usage summed over the messages requests answered with a Message."""

    requests: int = 0
    input: int = 0
    cache_creation: int = 0
    cache_read: int = 0
    output: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, api: FakeMessagesAPI, port: int) -> None:
        self.api = api
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up (timeouts, dropped connections) are expected here.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    disable_nagle_algorithm = True  # headers and body are separate small writes
    timeout = 60  # idle keep-alive connections end eventually
    server: _Server

    def do_POST(self) -> None:
        self.server.api._serve(self)

    def do_GET(self) -> None:
        self.server.api._serve(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeMessagesAPI:
    """The fake API server. `with FakeMessagesAPI(responder) as api:` serves on
    `api.base_url` until the block ends (or `start()` ... `close()`).

    responder: request body -> spec (default: always text("done")).
    clock, min_cache_tokens, cache_lookback: for the PromptCache (`api.cache`).
    strict_roles: require user/assistant alternation starting with user.
    stream_chunk_chars: size of the text / partial_json pieces in a stream.
    on_request: called with each RecordedRequest once it is answered.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        min_cache_tokens: int | None = None,
        cache_lookback: int = DEFAULT_LOOKBACK,
        strict_roles: bool = True,
        stream_chunk_chars: int = 16,
        on_request: Callable[[RecordedRequest], None] | None = None,
    ) -> None:
        self.responder: Responder = responder or (lambda body: text("done"))
        self.clock = clock
        self.cache = PromptCache(clock=clock, min_tokens=min_cache_tokens, lookback=cache_lookback)
        self.strict_roles = strict_roles
        self.stream_chunk_chars = max(1, stream_chunk_chars)
        self.on_request = on_request
        self.responder_errors: list[BaseException] = []
        self._port = port
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._counters: dict[str, int] = {}
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> FakeMessagesAPI:
        if self._server is None:
            self._server = _Server(self, self._port)
            self._thread = threading.Thread(
                # A short poll interval keeps close() (server.shutdown) fast.
                target=self._server.serve_forever,
                args=(0.05,),
                name="fake-messages-api",
                daemon=True,
            )
            self._thread.start()
        return self

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()  # ends pending delays
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FakeMessagesAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeMessagesAPI is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for a subprocess whose SDK should talk to this server."""
        return {"ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": "fake-key"}

    # -- what happened

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a snapshot of the list)."""
        with self._lock:
            return list(self._requests)

    def messages_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == MESSAGES_PATH]

    def totals(self) -> Totals:
        billed = [r.usage for r in self.messages_requests() if r.usage is not None]
        return Totals(
            requests=len(billed),
            input=sum(u.input_tokens for u in billed),
            cache_creation=sum(u.cache_creation_input_tokens for u in billed),
            cache_read=sum(u.cache_read_input_tokens for u in billed),
            output=sum(u.output_tokens for u in billed),
        )

    # -- serving

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            n = self._counters.get(prefix, 0) + 1
            self._counters[prefix] = n
        return f"{prefix}_fake_{n:04d}"

    def _arrive(self, path: str, body: Any, headers: dict[str, str]) -> RecordedRequest:
        request_id = self._next_id("req")
        with self._lock:
            record = RecordedRequest(
                len(self._requests), path, body, headers, request_id, self.clock()
            )
            self._requests.append(record)
        return record

    def _finish(
        self,
        record: RecordedRequest,
        status: int,
        response: JSON | None = None,
        usage: Usage | None = None,
    ) -> None:
        with self._lock:
            record.status, record.response, record.usage = status, response, usage
        if self.on_request is not None:
            self.on_request(record)

    def _serve(self, h: _Handler) -> None:
        path = urlsplit(h.path).path
        raw = h.rfile.read(int(h.headers.get("content-length") or 0))
        try:
            body: Any = json.loads(raw) if raw else None
            is_json = True
        except ValueError:
            body, is_json = None, False
        record = self._arrive(path, body, {k.lower(): v for k, v in h.headers.items()})
        if h.command != "POST" or path not in (MESSAGES_PATH, COUNT_TOKENS_PATH):
            return self._send_error(h, record, error(404, message=f"{h.command} {path}: not found"))
        if not is_json:
            return self._send_error(h, record, error(400, message="Request body is not valid JSON"))
        problem = validate_request(
            body, require_max_tokens=path == MESSAGES_PATH, strict_roles=self.strict_roles
        )
        if problem is not None:
            return self._send_error(h, record, error(400, message=problem))
        if path == COUNT_TOKENS_PATH:
            return self._send_json(h, record, 200, {"input_tokens": count_prompt_tokens(body)})
        spec = self._ask(body, record)
        self._perform(h, record, body, spec)

    def _ask(self, body: JSON, record: RecordedRequest) -> Spec:
        try:
            spec = _coerce(self.responder(body))
        except Exception as e:  # a broken script must fail the test, not hang it
            self.responder_errors.append(e)
            spec = error(500, message=f"fake responder failed: {e!r}", should_retry=False)
        record.spec = spec
        return spec

    def _perform(self, h: _Handler, record: RecordedRequest, body: JSON, spec: Spec) -> None:
        while isinstance(spec, Delay):
            if self._closing.wait(spec.seconds):
                spec = CloseConnection()  # server closing: give up waiting
            else:
                spec = spec.then if spec.then is not None else CloseConnection()
        if isinstance(spec, CloseConnection):
            h.close_connection = True
            return self._finish(record, 0)
        if isinstance(spec, ErrorReply):
            return self._send_error(h, record, spec)
        message, usage = self._render(spec, body)
        if body.get("stream") is True:
            self._send_stream(h, record, message, usage)
        else:
            self._send_json(h, record, 200, message, usage)

    def _render(self, spec: Reply, body: JSON) -> tuple[JSON, Usage]:
        content = [dict(b) for b in spec.content]
        for b in content:
            if b.get("type") == "tool_use" and "id" not in b:
                b["id"] = self._next_id("toolu")
        output = sum(estimate_tokens(b) for b in content)
        usage = replace(self.cache.process(body), output_tokens=output)
        message = {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": spec.stop_reason,
            "stop_sequence": spec.stop_sequence,
            "usage": usage.as_json(),
        }
        return message, usage

    # -- writing responses

    def _start_response(
        self, h: _Handler, record: RecordedRequest, status: int, headers: Mapping[str, str]
    ) -> None:
        h.send_response(status, _REASONS.get(status))
        h.send_header("request-id", record.request_id)
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()

    def _send_json(
        self,
        h: _Handler,
        record: RecordedRequest,
        status: int,
        obj: JSON,
        usage: Usage | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(obj).encode()
        all_headers = {"content-type": "application/json", "content-length": str(len(data))}
        all_headers.update(headers or {})
        self._finish(record, status, obj, usage)
        try:
            self._start_response(h, record, status, all_headers)
            h.wfile.write(data)
        except OSError:  # the client gave up (e.g. timed out): nothing to tell it
            h.close_connection = True

    def _send_error(self, h: _Handler, record: RecordedRequest, spec: ErrorReply) -> None:
        should_retry = spec.should_retry
        if should_retry is None:
            should_retry = spec.status == 429 or spec.status >= 500
        headers = {"x-should-retry": "true" if should_retry else "false"}
        if spec.retry_after is not None:
            headers["retry-after"] = f"{spec.retry_after:g}"
        body = {
            "type": "error",
            "error": {"type": spec.type, "message": spec.message},
            "request_id": record.request_id,
        }
        self._send_json(h, record, spec.status, body, headers=headers)

    def _send_stream(
        self, h: _Handler, record: RecordedRequest, message: JSON, usage: Usage
    ) -> None:
        self._finish(record, 200, message, usage)
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
        }
        try:
            self._start_response(h, record, 200, headers)
            for name, data in self._stream_events(message, usage):
                event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                h.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            h.wfile.write(b"0\r\n\r\n")
        except OSError:
            h.close_connection = True

    def _stream_events(self, message: JSON, usage: Usage) -> Iterable[tuple[str, JSON]]:
        start_usage = replace(usage, output_tokens=min(1, usage.output_tokens)).as_json()
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        yield "message_start", {"type": "message_start", "message": start}
        yield "ping", {"type": "ping"}
        for index, block in enumerate(message["content"]):
            yield from self._block_events(index, block)
        final = usage.as_json()
        final_usage = {
            k: final[k]
            for k in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
                "output_tokens",
            )
        }
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
        yield "message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}
        yield "message_stop", {"type": "message_stop"}

    def _block_events(self, index: int, block: JSON) -> Iterable[tuple[str, JSON]]:
        if block.get("type") == "text":
            opening: JSON = {**block, "text": ""}
            pieces = [{"type": "text_delta", "text": p} for p in self._chunks(block["text"])]
        elif block.get("type") == "tool_use":
            opening = {**block, "input": {}}
            # The API opens tool input with an empty partial_json, then the JSON in pieces.
            partial = [""] + self._chunks(json.dumps(block["input"]))
            pieces = [{"type": "input_json_delta", "partial_json": p} for p in partial]
        else:  # any other scripted block is sent whole
            opening, pieces = block, []
        yield (
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": opening},
        )
        for delta in pieces:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}

    def _chunks(self, s: str) -> list[str]:
        n = self.stream_chunk_chars
        return [s[i : i + n] for i in range(0, len(s), n)] or [""]


# --------------------------------------------------------------------------
# CLI


def _log_request(r: RecordedRequest) -> None:
    u = r.usage
    tokens = (
        (
            f" in={u.input_tokens} cache_write={u.cache_creation_input_tokens} "
            f"cache_read={u.cache_read_input_tokens} out={u.output_tokens}"
        )
        if u
        else ""
    )
    print(f"{r.request_id} POST {r.path} {r.status}{tokens}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentfs.client.fake_messages_api",
        description="Serve a fake Anthropic Messages API on 127.0.0.1 until killed.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--script", type=Path, help="JSONL file, one response spec per line")
    parser.add_argument(
        "--min-cache-tokens",
        type=int,
        default=None,
        help="minimum cacheable prefix (default: per model family)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)

    done = text("done")
    responder: Responder = (
        script_file(args.script, when_done=done) if args.script else (lambda body: done)
    )
    api = FakeMessagesAPI(
        responder,
        port=args.port,
        min_cache_tokens=args.min_cache_tokens,
        on_request=_log_request if args.verbose else None,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    with api:
        print(api.base_url, flush=True)
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
