"""`agentfs run`: drive one agent through the mount with the Anthropic SDK, cache-first.

    from agentfs.client.runner import run_agent
    result = run_agent("/srv/agents/agents/alice", max_turns=20)
    result.status, result.usage.cache_read_share, result.usage.cost_usd

One process runs one agent, with file operations on the mount only:

1. On the first run of a fresh agent (`tools.json` is `[]`, the transcript
   empty) the runner writes its tool set (`tools.TOOL_DEFINITIONS`) into
   `tools.json`, and a default system prompt if `system` is empty. The daemon
   freezes both at the first turn and forks inherit them: the tool list never
   changes; `tools.mask` masks tools instead.
2. Each request is `context.json` exactly as the daemon rendered it
   (deterministic bytes, cache breakpoints, compaction, recitation), plus
   `model`, `max_tokens`, and `tool_choice: none` only while every tool is
   masked. Nothing is re-rendered or reordered, so the prompt cache holds.
   It goes out through the official SDK (streaming), which retries 429, 5xx
   and 529 with backoff (`max_retries`, honouring retry-after).
3. The assistant message is appended as the API returned it (content blocks
   as plain JSON, tool_use ids kept; blank text blocks, which the API refuses
   back, dropped). Its tool calls run in order; then ONE user line holds every
   tool_result in order, followed by the inbox messages waiting at this turn
   boundary. Messages are only ever delivered at turn boundaries, never by
   cancelling a tool, as text blocks
   `<message from="SENDER" name="NAME">\\nTEXT\\n</message>` (`tools.format_message`),
   and consumed (rm) once the line is in. When the model ends its turn and
   messages are waiting, they are appended as a user line of their own (the
   daemon merges consecutive user lines into one API message).
4. The loop ends when the model ends its turn (end_turn, stop_sequence,
   refusal) with no message waiting and none of the agents this runner started
   still running; status `done`. A reply cut at `max_tokens` goes on: its
   tool calls are answered "not run", or the model is asked to continue.
   `max_turns` requests reached: status `idle`. An error the SDK gives up on:
   status `failed`, nothing half-written.

Ctrl-C (SIGINT, also SIGTERM) leaves a consistent transcript: lines are
written whole, signals are held while a line, the usage file or a message
consumption is being written. Interrupted while tools run, the runner appends
the results of the calls that finished and, for the others, an is_error
result "interrupted before the tool finished" (they are not re-run: they may
have had effects). A runner killed outright (SIGKILL) leaves the tool_use line
unanswered; the next `agentfs run` answers it the same way before anything
else. Then status `idle`, exit status 130.

Accounting: `agents/NAME/usage`, flat `KEY VALUE` lines rewritten atomically
(temp file in the agent's directory, then rename): `agent`, `model`,
`requests`, `input_tokens`, `cache_creation_input_tokens`,
`cache_read_input_tokens`, `output_tokens`, `cache_read_share` (cache reads /
all prompt tokens), `cost_usd` (list prices, `PRICES`). A fork inherits its
origin's file; the `agent` line tells the runner, which starts the fork's
own counters (keeping the `model`, so a fork asks the same model and reuses
its origin's cache).

Spawns and forks made with the tools get a runner of their own at once: an
`agentfs run` subprocess (log in `agents/NAME/run.log`) with the same model
and limits; this runner stays until they have all exited, delivering their
messages (`children=False`, `--no-children`: start them yourself). A fork is
made as the agent was before the turn that forks (its context is the
origin's last request, already cached) and gets its instruction as a message,
so its first request reads the origin's whole prefix from the cache. When one
turn forks several agents, the first fork's runner is started alone and the
others only once its first request has completed: the shared prefix is then
certainly written and fresh (the API cannot serve a cache entry whose writing
request has not started answering; concurrent first requests would all pay
for it).

Processes writing for the agent (tool subprocesses, the `agentfs run`
process itself) carry AGENTFS_AGENT=NAME, so the daemon records the agent as
the sender of its messages and the parent of its spawns.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .agents import Agent, AgentfsError, Message, Mount, _exec_environ_agent
from .tools import Hooks, Toolbox, ToolResult, definitions_json, format_message, read_mask

if TYPE_CHECKING:
    import anthropic

__all__ = ["DEFAULT_MODEL", "DEFAULT_SYSTEM", "PRICES", "RunResult", "Usage", "api_key_problem",
           "price", "run_agent", "speak_as"]

DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_MAX_TOKENS = 8192
DEFAULT_MAX_TURNS = 100
DEFAULT_MAX_RETRIES = 8
WARM_TIMEOUT = 300.0  # seconds to wait for the first fork's first request
USAGE_FILE = "usage"
PID_FILE = "runner.pid"
LOG_FILE = "run.log"
REEXEC_GUARD = "AGENTFS_RUN_REEXEC"

INTERRUPTED = ("interrupted before the tool finished: the runner was stopped (Ctrl-C or a "
               "crash) and did not re-run it; check its effects before calling it again")
NOT_RUN_IN_FORK = ("not run in this agent: it is a fork, made while this call was in flight "
                   "(the call ran in the agent it was forked from)")
CUT_AT_MAX_TOKENS = ("not run: your reply reached max_tokens before it was complete; repeat "
                     "the call if you still need it")
CONTINUE = "(your reply reached max_tokens and was cut; continue where it stopped)"

DEFAULT_SYSTEM = """\
You are an agent working in an agentfs mount: a filesystem shared with other agents, where \
everything (prompts, conversations, messages, notes, forks) is a file.

Your working files are in your workspace/ directory: read, write, edit, glob and grep take \
paths relative to it and cannot leave it; bash starts there. Keep notes that must survive \
context compaction with the memory tool (your notes/ directory); /memories/todo.md is shown \
at the end of your context, so keep your plan and progress there.

Messages from other agents arrive between your turns as <message from="SENDER" name="NAME"> \
blocks. send writes to another agent; spawn starts a helper agent with its own prompt; fork \
copies you, context and files, onto a subtask; wait_for_message blocks until a message \
comes; ask_parent asks the agent that started you and waits for its answer.

Old bulky tool results are replaced by a stub naming ./observations/ID; restore_observation \
returns the full text.

When the task is done, end your turn with a short summary of what you did."""

# USD per million tokens (input, output) at Anthropic's list prices
# (https://platform.claude.com/docs/en/about-claude/pricing and each model's
# overview page). Cache writes (5-minute TTL, what the daemon's breakpoints
# ask for) cost 1.25x input and cache reads 0.1x input: the documented
# multipliers of most models (a few recent ones bill reads lower, and Haiku
# 5.5 has a higher tier above 100k-token prompts: the estimate ignores both).
# The first prefix of the model id that matches wins; an unknown model is
# priced by the family word in its name (opus, haiku), else as a Sonnet.
PRICES: list[tuple[str, float, float]] = [
    ("claude-fable-5", 10.0, 50.0),
    ("claude-opus-5-5", 4.0, 20.0),
    ("claude-opus-4-0", 15.0, 75.0),  # Opus 4 (claude-opus-4-0, claude-opus-4-20250514)
    ("claude-opus-4-2025", 15.0, 75.0),
    ("claude-opus-4-1", 15.0, 75.0),  # Opus 4.1
    ("claude-3-opus", 15.0, 75.0),
    ("claude-opus", 5.0, 25.0),  # Opus 4.5 to 5
    ("claude-sonnet-5", 2.0, 10.0),  # Sonnet 5, 5.5
    ("claude-sonnet", 3.0, 15.0),  # Sonnet 4 to 4.6
    ("claude-3-7-sonnet", 3.0, 15.0),
    ("claude-3-5-sonnet", 3.0, 15.0),
    ("claude-haiku-5", 0.10, 0.50),  # Haiku 5.5 (prompts up to 100k tokens)
    ("claude-haiku", 1.0, 5.0),  # Haiku 4.5
    ("claude-3-5-haiku", 0.80, 4.0),
    ("claude-3-haiku", 0.25, 1.25),
]
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1


def price(model: str) -> tuple[float, float]:
    """(input, output) USD per million tokens for `model`."""
    for prefix, inp, out in PRICES:
        if model.startswith(prefix):
            return inp, out
    low = model.lower()
    if "opus" in low:
        return 5.0, 25.0
    if "haiku" in low:
        return 1.0, 5.0
    return 3.0, 15.0


# ---------------------------------------------------------------- accounting


@dataclass
class Usage:
    """agents/NAME/usage: this agent's requests and tokens, and what they cost."""

    agent: str
    model: str = ""
    requests: int = 0
    input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    @property
    def cache_read_share(self) -> float:
        total = self.prompt_tokens
        return self.cache_read_input_tokens / total if total else 0.0

    def add(self, model: str, usage: Any) -> None:
        """Count one answered request (an SDK Usage object or a dict)."""

        def get(key: str) -> int:
            v = usage.get(key) if isinstance(usage, dict) else getattr(usage, key, None)
            return int(v or 0)

        n_in, n_write = get("input_tokens"), get("cache_creation_input_tokens")
        n_read, n_out = get("cache_read_input_tokens"), get("output_tokens")
        p_in, p_out = price(model)
        self.model = model
        self.requests += 1
        self.input_tokens += n_in
        self.cache_creation_input_tokens += n_write
        self.cache_read_input_tokens += n_read
        self.output_tokens += n_out
        self.cost_usd += (n_in * p_in + n_write * p_in * CACHE_WRITE_FACTOR
                          + n_read * p_in * CACHE_READ_FACTOR + n_out * p_out) / 1e6

    def render(self) -> str:
        return (f"agent {self.agent}\nmodel {self.model or '-'}\nrequests {self.requests}\n"
                f"input_tokens {self.input_tokens}\n"
                f"cache_creation_input_tokens {self.cache_creation_input_tokens}\n"
                f"cache_read_input_tokens {self.cache_read_input_tokens}\n"
                f"output_tokens {self.output_tokens}\n"
                f"cache_read_share {self.cache_read_share:.4f}\n"
                f"cost_usd {self.cost_usd:.6f}\n")

    @classmethod
    def parse(cls, text: str) -> Usage:
        """The file's KEY VALUE lines (unknown keys and bad values are ignored)."""
        values: dict[str, str] = {}
        for line in text.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2:
                values[parts[0]] = parts[1].strip()
        u = cls(agent=values.get("agent", ""))
        u.model = "" if values.get("model", "-") == "-" else values.get("model", "")
        for f in fields(cls):
            if f.name in ("agent", "model") or f.name not in values:
                continue
            try:
                setattr(u, f.name, float(values[f.name]) if f.name == "cost_usd"
                        else int(values[f.name]))
            except ValueError:
                pass
        return u

    @classmethod
    def read(cls, agent: Agent) -> Usage | None:
        try:
            return cls.parse((agent.path / USAGE_FILE).read_text(errors="replace"))
        except FileNotFoundError:
            return None


@dataclass
class RunResult:
    """How a run ended. status: done | idle | failed; reason: the model's last
    stop_reason, "max_turns", "interrupted" or "error"."""

    agent: str
    status: str
    reason: str
    requests: int  # requests made by this run
    turns: int  # transcript lines at the end
    usage: Usage  # the agent's totals (usage file)
    error: str | None = None
    children: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.status == "failed":
            return 1
        if self.reason == "interrupted":
            return 130
        return 0

    def summary(self) -> str:
        u = self.usage
        text = (f"{self.agent}: {self.status} ({self.reason}) after {self.requests} request(s) "
                f"this run, {self.turns} turns; cache read {u.cache_read_share:.1%} of "
                f"{u.prompt_tokens} prompt tokens; ${u.cost_usd:.4f}")
        return text + (f"; error: {self.error}" if self.error else "")


class RunFailed(Exception):
    """An error the run cannot go past (status failed)."""


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """SIGINT/SIGTERM raise Interrupted, except inside critical sections, where
    they are held until the section ends (a line is never half written)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None
        self.old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGINT, signal.SIGTERM):
            self.old[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)
        self.old.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.depth:
            self.pending = signum
            return
        raise Interrupted(signum)

    @contextmanager
    def critical(self, raise_pending: bool = True) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if raise_pending and not self.depth and self.pending is not None:
            s, self.pending = self.pending, None
            raise Interrupted(s)


# ---------------------------------------------------------------- helpers


def api_key_problem() -> str | None:
    """Why the SDK could not authenticate from the environment, or None."""
    if os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"):
        return None
    return ("ANTHROPIC_API_KEY is not set: export your Anthropic API key to run agents "
            "(ANTHROPIC_BASE_URL points the runner at another endpoint)")


def speak_as(name: str) -> None:
    """Make this process speak for agent `name`: the daemon reads
    AGENTFS_AGENT from the environment a process was started with, so re-exec
    the same command line with it set, unless it already is. Returns only
    when nothing had to change."""
    if _exec_environ_agent() == name or os.environ.get(REEXEC_GUARD) == name:
        return
    env = dict(os.environ, AGENTFS_AGENT=name)
    env[REEXEC_GUARD] = name
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)


def _content_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def plain_blocks(content: Any) -> list[dict[str, Any]]:
    """The reply's content blocks as plain JSON dicts, as the API sent them
    (unset and None fields left out); blank text blocks dropped."""
    out = []
    for b in content:
        if hasattr(b, "to_dict"):
            d = b.to_dict(mode="json", exclude_none=True)
        else:
            d = dict(b)
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        if d.get("type") == "text" and not str(d.get("text", "")).strip():
            continue
        out.append(d)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- the runner


class Runner:
    def __init__(self, agent: Agent, *, model: str | None, max_turns: int, max_tokens: int,
                 client: anthropic.Anthropic | None, wait: float, children: bool,
                 max_retries: int, log: Callable[[str], None] | None,
                 bash_timeout: float | None) -> None:
        self.agent = agent
        self.model = model
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self._client = client
        self._owns_client = client is None  # closed by close(); a given one is the caller's
        self.wait = wait
        self.children_enabled = children
        self.max_retries = max_retries
        self._log = log
        self.signals = _Signals()
        hooks = Hooks(turn=lambda: self.turns, launch=self._launch, status=self._set_status)
        self.tools = (Toolbox(agent, hooks) if bash_timeout is None
                      else Toolbox(agent, hooks, bash_timeout=bash_timeout))
        self.turns = 0
        self.last: dict[str, Any] | None = None
        self.requests = 0
        self.usage = Usage(agent.name)
        self.fresh_fork = False
        self.stop_reason = ""
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._partial: list[dict[str, Any]] | None = None
        self._warmer: tuple[str, subprocess.Popen[bytes]] | None = None
        self._warmed = False

    # ------------------------------------------------------------ plumbing

    def log(self, text: str) -> None:
        if self._log is not None:
            self._log(text)

    @property
    def client(self) -> anthropic.Anthropic:
        if self._client is None:
            import anthropic

            self._client = anthropic.Anthropic(max_retries=self.max_retries)
        return self._client

    def close(self) -> None:
        """Close the HTTP client this runner made (its pooled sockets would
        otherwise be left to the garbage collector); a given client is the caller's."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    def _set_status(self, status: str) -> None:
        try:
            self.agent.set_status(status)
        except AgentfsError as e:
            self.log(f"cannot set status {status}: {e}")

    def _append(self, message: dict[str, Any]) -> None:
        try:
            self.agent.append(message)
        except AgentfsError as e:
            raise RunFailed(f"the transcript refused a {message['role']} line: {e}") from e
        self.turns += 1
        self.last = message

    def _append_user(self, blocks: list[dict[str, Any]], deliver: bool) -> None:
        """One user line: `blocks`, then (deliver) the messages waiting now, which
        are consumed once the line is in. Call inside a critical section."""
        msgs: list[Message] = self.agent.messages() if deliver else []
        blocks = blocks + [{"type": "text", "text": format_message(m)} for m in msgs]
        if not blocks:
            return
        self._append({"role": "user", "content": blocks})
        for m in msgs:
            self.log(f"delivered message {m.path.name}")
            try:
                os.unlink(m.path)
            except FileNotFoundError:
                pass

    def _write_usage(self) -> None:
        path = self.agent.path / USAGE_FILE
        tmp = self.agent.path / f".{USAGE_FILE}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(self.usage.render())
        os.replace(tmp, path)

    # ------------------------------------------------------------ one run

    def run(self) -> RunResult:
        self.signals.install()
        try:
            self._take_pidfile()
            try:
                return self._run()
            finally:
                self._drop_pidfile()
        finally:
            self.signals.restore()

    def _take_pidfile(self) -> None:
        path = self.agent.path / PID_FILE
        try:
            words = path.read_text().split()
        except FileNotFoundError:
            words = []
        if len(words) == 2 and words[0] == self.agent.name and words[1].isdigit():
            pid = int(words[1])
            if pid != os.getpid() and _alive(pid):
                raise AgentfsError(errno.EBUSY, f"agent {self.agent.name} is already being run "
                                   f"by process {pid} ({path})")
        tmp = self.agent.path / f".{PID_FILE}.tmp-{os.getpid()}"
        tmp.write_text(f"{self.agent.name} {os.getpid()}\n")
        os.replace(tmp, path)

    def _drop_pidfile(self) -> None:
        path = self.agent.path / PID_FILE
        try:
            if path.read_text().split() == [self.agent.name, str(os.getpid())]:
                path.unlink()
        except OSError:
            pass

    def _run(self) -> RunResult:
        interrupted = False
        try:
            try:
                self._prepare()
                self._set_status("running")
                self._answer_dangling(NOT_RUN_IN_FORK if self.fresh_fork else INTERRUPTED,
                                      deliver=True)
                reason = self._loop()
            except KeyboardInterrupt:
                interrupted = True
                raise
            finally:
                self.tools.close(interrupted)
        except KeyboardInterrupt:
            self.log("interrupted")
            try:
                self._answer_dangling(INTERRUPTED, deliver=False, raise_pending=False)
            except (RunFailed, AgentfsError) as e:
                self.log(f"cannot answer the interrupted tool calls: {e}")
            self._set_status("idle")
            return self._result("idle", "interrupted")
        except (RunFailed, AgentfsError) as e:
            self.log(f"failed: {e}")
            self._set_status("failed")
            return self._result("failed", "error", str(e))
        status = "idle" if reason == "max_turns" else "done"
        self._set_status(status)
        return self._result(status, reason)

    def _result(self, status: str, reason: str, error: str | None = None) -> RunResult:
        return RunResult(self.agent.name, status, reason, self.requests, self.turns, self.usage,
                         error, [name for name, _ in self.children])

    def _prepare(self) -> None:
        lines = self.agent.transcript()
        self.turns, self.last = len(lines), (lines[-1] if lines else None)
        if not lines:
            try:
                current = json.loads((self.agent.path / "tools.json").read_text() or "[]")
            except ValueError:
                current = None
            if current == []:
                self.agent._write_file("tools.json", definitions_json().encode())
            if not (self.agent.path / "system").read_text().strip():
                self.agent._write_file("system", (DEFAULT_SYSTEM + "\n").encode())
        found = Usage.read(self.agent)
        if found is not None and found.agent == self.agent.name:
            self.usage = found
        else:
            # none yet, or inherited from the agent this one was forked from
            self.fresh_fork = found is not None and bool(found.agent)
            self.usage = Usage(self.agent.name, model=found.model if found else "")
        if self.model is None:
            self.model = self.usage.model or os.environ.get("AGENTFS_MODEL") or DEFAULT_MODEL

    def _answer_dangling(self, text: str, deliver: bool, raise_pending: bool = True) -> None:
        """Close a trailing assistant line whose tool calls have no results: results
        already computed (self._partial), else an is_error result saying why."""
        last = self.last
        if last is None or last.get("role") != "assistant":
            return
        uses = [b for b in _content_blocks(last) if b.get("type") == "tool_use"]
        if not uses:
            return
        done = {b["tool_use_id"]: b for b in self._partial or []}
        blocks = [done.get(u["id"]) or ToolResult(text, True).block(u["id"]) for u in uses]
        with self.signals.critical(raise_pending):
            self._append_user(blocks, deliver)
            self._partial = None

    def _loop(self) -> str:
        while True:
            # A turn boundary: deliver what has arrived.
            if self.agent.messages():
                with self.signals.critical():
                    self._append_user([], deliver=True)
            if self.last is not None and self.last["role"] == "assistant":
                if self._wait_for_more():
                    continue
                return self.stop_reason or "end_turn"
            if self.requests >= self.max_turns:
                return "max_turns"
            reply = self._request()
            content = plain_blocks(reply.content)
            self.stop_reason = reply.stop_reason or ""
            with self.signals.critical():
                self.usage.add(self.model or "", reply.usage)
                self._write_usage()
                if content:
                    self._append({"role": "assistant", "content": content})
            u = reply.usage
            self.log(f"request {self.requests}: input {u.input_tokens}, cache write "
                     f"{u.cache_creation_input_tokens or 0}, cache read "
                     f"{u.cache_read_input_tokens or 0}, output {u.output_tokens}; "
                     f"stop {reply.stop_reason}")
            if not content:
                return self.stop_reason or "empty reply"
            uses = [b for b in content if b.get("type") == "tool_use"]
            if uses:
                self._run_tools(uses, cut=reply.stop_reason == "max_tokens")
            elif reply.stop_reason == "max_tokens":
                with self.signals.critical():
                    self._append_user([{"type": "text", "text": CONTINUE}], deliver=True)

    def _request(self) -> Any:
        import anthropic

        try:
            body = self.agent.context()
        except (OSError, ValueError) as e:
            raise RunFailed(f"cannot read agents/{self.agent.name}/context.json: {e}") from e
        params: dict[str, Any] = dict(body)
        params["model"] = self.model
        params["max_tokens"] = self.max_tokens
        names = [t.get("name") for t in body.get("tools") or []]
        if names and set(names) <= read_mask(self.agent):
            params["tool_choice"] = {"type": "none"}
        self.requests += 1
        try:
            with self.client.messages.stream(**params) as stream:
                return stream.get_final_message()
        except anthropic.APIStatusError as e:
            raise RunFailed(f"the API answered {e.status_code}: {_api_message(e)}") from e
        except anthropic.APIConnectionError as e:
            raise RunFailed(f"cannot reach the API: {e}") from e
        except anthropic.AnthropicError as e:
            raise RunFailed(f"API error: {e}") from e

    def _run_tools(self, uses: list[dict[str, Any]], cut: bool) -> None:
        self._partial = results = []
        self._warmer, self._warmed = None, False
        for b in uses:
            if cut:
                r = ToolResult(CUT_AT_MAX_TOKENS, True)
            else:
                self.log(f"tool {b['name']} {json.dumps(b.get('input'), ensure_ascii=False)[:200]}")
                r = self.tools.call(b["name"], b.get("input"))
            results.append(r.block(b["id"]))
        with self.signals.critical():
            self._append_user(results, deliver=True)
            self._partial = None

    # ------------------------------------------------------------ agents this one starts

    def _launch(self, name: str, kind: str) -> str:
        """Start `agentfs run` for a spawned or forked agent; the note for the result."""
        path = self.agent.mount.agents_dir / name
        if not self.children_enabled:
            return f"no runner was started for it: run `agentfs run {path}`"
        if kind == "fork":
            if self._warmer is None:
                self._warmer = (name, self._start(name))
                return "its runner started"
            self._wait_warm()
        self._start(name)
        return "its runner started"

    def _start(self, name: str) -> subprocess.Popen[bytes]:
        path = self.agent.mount.agents_dir / name
        cmd = [sys.executable, "-m", "agentfs.cli", "run", str(path),
               "--model", self.model or DEFAULT_MODEL, "--max-turns", str(self.max_turns),
               "--max-tokens", str(self.max_tokens), "--max-retries", str(self.max_retries)]
        env = dict(os.environ, AGENTFS_AGENT=name)
        env.pop(REEXEC_GUARD, None)
        if self._client is not None:  # a client given to run_agent: the same endpoint
            env["ANTHROPIC_BASE_URL"] = str(self._client.base_url)
            if self._client.api_key:
                env["ANTHROPIC_API_KEY"] = self._client.api_key
        with open(path / LOG_FILE, "ab") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, env=env, cwd="/")
        self.children.append((name, proc))
        self.log(f"started the runner of {name} (pid {proc.pid}, log agents/{name}/{LOG_FILE})")
        return proc

    def _wait_warm(self) -> None:
        """Wait (once per turn) for the first fork's first request to complete."""
        if self._warmed or self._warmer is None:
            return
        name, proc = self._warmer
        deadline = time.monotonic() + WARM_TIMEOUT
        fork = Agent(self.agent.mount, name)
        while time.monotonic() < deadline and proc.poll() is None:
            u = Usage.read(fork)
            if u is not None and u.agent == name and u.requests >= 1:
                break
            time.sleep(0.05)
        self._warmed = True
        self.log(f"cache warmed by {name}")

    def _wait_for_more(self) -> bool:
        """The model ended its turn: wait while agents this runner started are
        still running (and `wait` seconds), for a message to continue with."""
        deadline = time.monotonic() + self.wait
        if not self._children_alive() and self.wait <= 0:
            return False
        self._set_status("waiting")
        try:
            while True:
                if self.agent.messages():
                    return True
                left = deadline - time.monotonic()
                if not self._children_alive() and left <= 0:
                    return False
                self.agent.recv(timeout=max(0.0, min(1.0, left)) if left > 0 else 1.0,
                                consume=False)
        finally:
            self._set_status("running")

    def _children_alive(self) -> bool:
        return any(p.poll() is None for _, p in self.children)


def _api_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return f"{err.get('type', 'error')}: {err['message']}"
    return str(getattr(e, "message", e))


def run_agent(agent: Agent | str | os.PathLike[str], *, model: str | None = None,
              max_turns: int = DEFAULT_MAX_TURNS, max_tokens: int = DEFAULT_MAX_TOKENS,
              client: anthropic.Anthropic | None = None, wait: float = 0.0,
              children: bool = True, max_retries: int = DEFAULT_MAX_RETRIES,
              log: Callable[[str], None] | None = None,
              bash_timeout: float | None = None) -> RunResult:
    """Run `agent` (an Agent, or the path MOUNT/agents/NAME) until it ends its turn.

    model: default the model the agent last ran with (a fork: its origin's),
    else $AGENTFS_MODEL, else DEFAULT_MODEL. max_turns: model requests this
    run may make. client: an `anthropic.Anthropic` (default: one from
    ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL with `max_retries`). wait: after
    the model ends its turn, wait that many seconds for a message to go on
    with. children: start runners for the agents the tools spawn or fork.
    log: called with one line per event. Raises AgentfsError if the agent
    does not exist or another runner is running it; other failures end the
    run with status "failed" (RunResult.error says why).
    """
    if not isinstance(agent, Agent):
        path = Path(os.path.abspath(agent))
        mount = Mount.find(path)
        try:
            parts = path.relative_to(mount.agents_dir).parts
        except ValueError:
            parts = ()
        if not parts:
            raise AgentfsError(errno.EINVAL, f"{agent} is not an agent's directory "
                               "(MOUNT/agents/NAME)")
        agent = mount.agent(parts[0])
    runner = Runner(agent, model=model, max_turns=max_turns, max_tokens=max_tokens,
                    client=client, wait=wait, children=children, max_retries=max_retries,
                    log=log, bash_timeout=bash_timeout)
    try:
        return runner.run()
    finally:
        runner.close()
