"""The tools `agentfs run` gives an agent: their definitions and implementations.

Definitions (`TOOL_DEFINITIONS`) are written into `agents/NAME/tools.json` on
an agent's first run and never change after that (the daemon freezes the file
at the first turn, forks inherit it): a changing tool list would break the
prompt cache and confuse the model. Availability changes through the mask
file `agents/NAME/tools.mask` instead (one tool name per line, `#` starts a
comment): a call to a masked tool gets an error result.

Workspace tools, confined to `agents/NAME/workspace/`:

* `read`, `write`, `edit`, `glob`, `grep` are the SDK's reference
  implementations (`anthropic.lib.tools.agent_toolset`: `beta_read_tool` ...
  `beta_grep_tool`, bound to an `AgentToolContext` whose workdir is the
  workspace). They resolve every path, symlinks and `..` included, and refuse
  anything outside the workspace. glob and grep print paths relative to the
  workspace (the SDK prints absolute ones, which name the agent and would
  differ between forks).
* `bash` is the SDK's persistent shell (`agent_toolset.BashSession`: one
  `/bin/bash` for the agent's run, sentinel-framed, output capped at its last
  100 KB, a timeout kills and restarts it). It starts in the workspace with
  `AGENTFS_AGENT=NAME` and `AGENTFS_MOUNT` set and without the runner's
  `ANTHROPIC_*` credentials; it is not a sandbox.
* `memory` is the SDK's file-backed memory tool
  (`BetaLocalFilesystemMemoryTool`) with its `/memories` root pointed at
  `agents/NAME/notes/`, declared as an ordinary tool with the memory tool's
  command schema (so it works on every model and needs no beta header).

Coordination tools are thin wrappers over the mount's conventions (see
AGENTS.md): `spawn` (mkdir + prompt), `fork` (`fork NEW at N` on ctl, then
the instruction as a message), `send` (a file in the recipient's inbox),
`wait_for_message` (`inbox/.wait-N`), `ask_parent` (send to the agent named
in `parent`, then wait for its reply), `restore_observation` (read
`observations/ID`).

The SDK's tools are async (anyio); they run on one event loop in a thread
(`anyio.from_thread.start_blocking_portal`), which also keeps the bash
session alive between calls.
"""

from __future__ import annotations

import concurrent.futures
import functools
import html
import json
import os
import re
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .agents import NAME_RULE, Agent, AgentfsError, Message

__all__ = ["TOOL_DEFINITIONS", "TOOL_NAMES", "MASK_FILE", "ToolResult", "Toolbox",
           "format_message", "read_mask"]

MASK_FILE = "tools.mask"
BASH_TIMEOUT = 120.0  # seconds, when the call gives no timeout_ms
BASH_MAX_TIMEOUT = 3600.0
OUTPUT_CAP = 100 * 1024  # bytes of a bash result kept (its tail), as the SDK does
RESTORE_CAP = 1024 * 1024  # characters restore_observation returns at most
WAIT_DEFAULT = 60
WAIT_MAX = 3600
ASK_DEFAULT = 600
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

JSON = dict[str, Any]


def _schema(properties: JSON, required: list[str]) -> JSON:
    return {"type": "object", "properties": properties, "required": required}


_S = {"type": "string"}
_I = {"type": "integer"}

TOOL_DEFINITIONS: list[JSON] = [
    {"name": "bash",
     "description": "Run a command in a persistent bash shell that starts in your workspace/ "
                    "directory (the working directory, variables and background jobs persist "
                    "between calls). The result is stdout and stderr together, at most its last "
                    "100 KB; a non-zero exit status makes it an error. timeout_ms defaults to "
                    "120000. restart=true starts a fresh shell. $AGENTFS_AGENT is your agent "
                    "name and $AGENTFS_MOUNT the mount (its AGENTS.md explains it).",
     "input_schema": _schema({"command": {**_S, "description": "the command line"},
                              "timeout_ms": {**_I, "description": "give up after this long"},
                              "restart": {"type": "boolean",
                                          "description": "start a fresh shell"}}, [])},
    {"name": "read",
     "description": "Read a text file (or an image) in your workspace/. Paths are relative to "
                    "workspace/ and cannot leave it. view_range [first, last] reads those lines "
                    "only (1-based, last -1 for the end); files over 256 KB need one.",
     "input_schema": _schema({"file_path": _S,
                              "view_range": {"type": "array", "items": _I}}, ["file_path"])},
    {"name": "write",
     "description": "Create or overwrite a file in your workspace/ (parent directories are "
                    "made as needed).",
     "input_schema": _schema({"file_path": _S, "content": _S}, ["file_path", "content"])},
    {"name": "edit",
     "description": "Replace old_string by new_string in a file of your workspace/. old_string "
                    "must occur exactly once unless replace_all is true.",
     "input_schema": _schema({"file_path": _S, "old_string": _S, "new_string": _S,
                              "replace_all": {"type": "boolean"}},
                             ["file_path", "old_string", "new_string"])},
    {"name": "glob",
     "description": "List the files of your workspace/ matching a glob pattern (e.g. "
                    "**/*.py), newest first, at most 200, as paths relative to workspace/. "
                    "path narrows the search to a subdirectory.",
     "input_schema": _schema({"pattern": _S, "path": _S}, ["pattern"])},
    {"name": "grep",
     "description": "Search the files of your workspace/ (or the file or directory `path`) "
                    "for a regular expression; prints path:line:text for each matching line.",
     "input_schema": _schema({"pattern": _S, "path": _S}, ["pattern"])},
    {"name": "memory",
     "description": "Your notes, kept in your notes/ directory and seen here as /memories: "
                    "they survive context compaction and forks inherit them; "
                    "/memories/todo.md is recited at the end of your context, keep your plan "
                    "there. Commands: view (path; a directory listing, or a file with line "
                    "numbers, view_range optional), create (path, file_text), str_replace "
                    "(path, old_str, new_str), insert (path, insert_line, insert_text), delete "
                    "(path), rename (old_path, new_path).",
     "input_schema": _schema({
         "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert",
                                                "delete", "rename"]},
         "path": _S, "file_text": _S, "old_str": _S, "new_str": _S, "insert_line": _I,
         "insert_text": _S, "view_range": {"type": "array", "items": _I},
         "old_path": _S, "new_path": _S}, ["command"])},
    {"name": "spawn",
     "description": "Start a new agent NAME with this prompt; you are its parent. Its runner "
                    "starts at once. It may ask you questions: they arrive as messages, "
                    "answer them with send.",
     "input_schema": _schema({"name": {**_S, "description": NAME_RULE},
                              "prompt": _S}, ["name", "prompt"])},
    {"name": "fork",
     "description": "Copy yourself (conversation, notes and workspace) into a new agent NAME "
                    "that starts with `message` as its next instruction. By default the copy "
                    "is you as you were just before this turn (it has your whole context, "
                    "not this call); at_turn copies you as you were after that transcript "
                    "turn. Forks share your cached context, so many forks are cheap.",
     "input_schema": _schema({"name": {**_S, "description": NAME_RULE}, "message": _S,
                              "at_turn": _I}, ["name", "message"])},
    {"name": "send",
     "description": "Send a message to agent `to`; it sees it between two of its turns.",
     "input_schema": _schema({"to": _S, "text": _S}, ["to", "text"])},
    {"name": "wait_for_message",
     "description": "Wait for the next message in your inbox (at most timeout seconds, "
                    "default 60) and return it; it is then consumed.",
     "input_schema": _schema({"timeout": _I}, [])},
    {"name": "ask_parent",
     "description": "Send a question to your parent agent and wait for its answer (at most "
                    "timeout seconds, default 600), which is returned.",
     "input_schema": _schema({"question": _S, "timeout": _I}, ["question"])},
    {"name": "restore_observation",
     "description": "Return the full text of a tool result that was compacted into a stub: "
                    "its ID (turn-NNNNN-...) or the ./observations/ID path the stub names.",
     "input_schema": _schema({"id": _S}, ["id"])},
]
TOOL_NAMES = tuple(t["name"] for t in TOOL_DEFINITIONS)
SDK_FILE_TOOLS = ("read", "write", "edit", "glob", "grep")


@dataclass
class ToolResult:
    """What goes into a tool_result block: text (or text/image blocks)."""

    content: str | list[JSON]
    is_error: bool = False

    def block(self, tool_use_id: str) -> JSON:
        content = self.content
        if isinstance(content, str) and not content.strip():
            content = "(no output)"
        b: JSON = {"type": "tool_result", "tool_use_id": tool_use_id, "content": content}
        if self.is_error:
            b["is_error"] = True
        return b


class ToolFailed(Exception):
    """A tool's own failure: becomes an is_error result with this text."""


def format_message(msg: Message) -> str:
    """How an inbox message is shown to the model (deterministic, names the sender)."""
    text = msg.text[:-1] if msg.text.endswith("\n") else msg.text
    sender = msg.sender or "unknown"
    return (f'<message from="{html.escape(sender)}" name="{html.escape(msg.name)}">\n'
            f"{text}\n</message>")


def read_mask(agent: Agent) -> set[str]:
    """The masked (disabled) tool names: agents/NAME/tools.mask, one per line."""
    try:
        text = (agent.path / MASK_FILE).read_text(errors="replace")
    except FileNotFoundError:
        return set()
    names = set()
    for line in text.splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            names.add(word)
    return names


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for b in content or []:
        if isinstance(b, dict) and b.get("type") == "text":
            parts.append(str(b.get("text", "")))
        elif isinstance(b, dict):
            parts.append(f"[{b.get('type', 'block')}]")
    return "\n".join(parts)


def _want_str(inp: JSON, key: str, required: bool = True) -> str | None:
    v = inp.get(key)
    if v is None:
        if required:
            raise ToolFailed(f"missing required parameter {key!r}")
        return None
    if not isinstance(v, str):
        raise ToolFailed(f"{key} must be a string")
    return v


def _want_int(inp: JSON, key: str, default: int | None) -> int | None:
    v = inp.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ToolFailed(f"{key} must be a number")
    return int(v)


@dataclass
class Hooks:
    """What the coordination tools need from the runner."""

    turn: Callable[[], int]  # transcript lines so far (the current assistant line included)
    launch: Callable[[str, str], str]  # (agent name, "spawn"|"fork") -> a note for the result
    status: Callable[[str], None]  # set the agent's status (waiting while blocked)
    interrupted: Callable[[], bool] = field(default=lambda: False)


class Toolbox:
    """The tools of one agent's run. `call(name, input)` never raises for a
    tool's own failure (that is an is_error result); KeyboardInterrupt passes."""

    def __init__(self, agent: Agent, hooks: Hooks, *, bash_timeout: float = BASH_TIMEOUT,
                 output_cap: int = OUTPUT_CAP) -> None:
        self.agent = agent
        self.hooks = hooks
        self.bash_timeout = bash_timeout
        self.output_cap = output_cap
        self.workspace = agent.path / "workspace"
        self.notes = agent.path / "notes"
        self._stack = ExitStack()
        self._portal: Any = None
        self._ctx: Any = None
        self._sdk_tools: dict[str, Any] = {}
        self._memory: Any = None
        self._bash: Any = None

    # ------------------------------------------------------------ lifecycle

    def _ensure_sdk(self) -> None:
        if self._portal is not None:
            return
        from anthropic.lib.tools.agent_toolset import (
            AgentToolContext,
            beta_edit_tool,
            beta_glob_tool,
            beta_grep_tool,
            beta_read_tool,
            beta_write_tool,
        )
        from anyio.from_thread import start_blocking_portal

        self._ctx = AgentToolContext(workdir=str(self.workspace), env=self._bash_env())
        makers = {"read": beta_read_tool, "write": beta_write_tool, "edit": beta_edit_tool,
                  "glob": beta_glob_tool, "grep": beta_grep_tool}
        self._sdk_tools = {name: make(self._ctx) for name, make in makers.items()}
        self._portal = self._stack.enter_context(start_blocking_portal())

    def _bash_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
        env["AGENTFS_AGENT"] = self.agent.name
        env["AGENTFS_MOUNT"] = str(self.agent.mount.path)
        env.pop("AGENTFS_RUN_REEXEC", None)
        return env

    def close(self, interrupted: bool = False) -> None:
        """Stop the shell and the event loop. interrupted: a command may still be
        running (Ctrl-C came during a tool): its processes are killed first."""
        if self._portal is None:
            return
        try:
            if self._bash is not None:
                if interrupted:
                    pid = getattr(getattr(self._bash, "_proc", None), "pid", None)
                    if isinstance(pid, int):
                        _kill_tree(pid)
                try:
                    self._call(self._bash.close)
                except Exception:
                    pass
        finally:
            self._bash = None
            self._portal = None
            self._stack.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on the tools' event loop. Waits in short slices, so that a
        signal handled by this (main) thread interrupts the wait at once."""
        fut = self._portal.start_task_soon(fn, *args)
        while not fut.done():
            concurrent.futures.wait([fut], timeout=0.25)
        return fut.result()

    # ------------------------------------------------------------ dispatch

    def call(self, name: str, inp: Any) -> ToolResult:
        if name in read_mask(self.agent):
            return ToolResult(f"tool {name!r} is masked (disabled) for this agent "
                              f"(agents/{self.agent.name}/{MASK_FILE})", True)
        if name not in TOOL_NAMES:
            return ToolResult(f"no tool named {name!r} in this runner "
                              f"(tools: {', '.join(TOOL_NAMES)})", True)
        if not isinstance(inp, dict):
            return ToolResult(f"{name}: the input must be a JSON object", True)
        try:
            if name in SDK_FILE_TOOLS:
                return self._sdk_file_tool(name, inp)
            result: ToolResult = getattr(self, f"_tool_{name}")(inp)
            return result
        except ToolFailed as e:
            return ToolResult(f"{name}: {e}", True)
        except AgentfsError as e:
            return ToolResult(f"{name}: {e}", True)
        except OSError as e:
            return ToolResult(f"{name}: {e.strerror or e}", True)
        except Exception as e:  # a bug in a tool must not end the agent's run
            return ToolResult(f"{name}: internal error: {type(e).__name__}: {e}", True)

    # ------------------------------------------------------------ workspace (the SDK's tools)

    def _relative(self, text: str) -> str:
        root = str(self.workspace.resolve())
        out = []
        for line in text.split("\n"):
            if line == root:
                line = "."
            elif line.startswith(root + "/"):
                line = line[len(root) + 1:]
            out.append(line)
        return "\n".join(out)

    def _sdk_file_tool(self, name: str, inp: JSON) -> ToolResult:
        from anthropic.lib.tools import ToolError

        self._ensure_sdk()
        tool = self._sdk_tools[name]
        try:
            result = self._call(tool.call, inp)
        except ToolError as e:
            text = _text_of(e.content).replace("the session's working directory", "workspace/")
            return ToolResult(text, True)
        except ValueError as e:  # the SDK's input validation
            cause = e.__cause__
            detail = ""
            if cause is not None and hasattr(cause, "errors"):
                detail = "; ".join(f"{'.'.join(map(str, err.get('loc', ())))}: {err.get('msg')}"
                                   for err in cause.errors())
            return ToolResult(f"{name}: invalid input{': ' + detail if detail else ''}", True)
        if isinstance(result, str):
            if name in ("glob", "grep"):
                result = self._relative(result)
            return ToolResult(result)
        blocks = [b for b in result if isinstance(b, dict)]
        if any(b.get("type") not in ("text", "image") for b in blocks):
            return ToolResult(f"{name}: this file type cannot be returned here "
                              "(text and images only)", True)
        return ToolResult(blocks)

    def _tool_bash(self, inp: JSON) -> ToolResult:
        from anthropic.lib.tools.agent_toolset import BashSession

        self._ensure_sdk()
        if inp.get("restart"):
            if self._bash is not None:
                self._call(self._bash.close)
            self._bash = None
            if not inp.get("command"):
                return ToolResult("bash session restarted")
        command = _want_str(inp, "command")
        assert command is not None
        timeout_ms = _want_int(inp, "timeout_ms", None)
        timeout = self.bash_timeout if not timeout_ms or timeout_ms <= 0 else timeout_ms / 1000
        timeout = min(timeout, BASH_MAX_TIMEOUT)
        if self._bash is None or self._bash.closed:
            self._bash = self._call(
                functools.partial(BashSession.start, str(self.workspace), env=self._bash_env()))
        try:
            out, code = self._call(self._bash.exec, command, timeout)
        except TimeoutError:
            self._bash = None
            return ToolResult(f"bash: the command timed out after {timeout:g} s; the shell "
                              "was killed (a new one starts at the next call, in workspace/)",
                              True)
        except RuntimeError as e:
            self._bash = None
            return ToolResult(f"bash: {e}", True)
        data = out.encode("utf-8", "replace")
        if len(data) > self.output_cap:
            out = (f"[output truncated: its last {self.output_cap} bytes]\n"
                   + data[-self.output_cap:].decode("utf-8", "replace"))
        if self._bash.closed:  # `exit`, or the shell died: the SDK cannot tell the status
            self._bash = None
            note = "[the shell exited; a new one starts at the next call, in workspace/]"
            return ToolResult(f"{out}\n{note}" if out else note, True)
        if code != 0:
            return ToolResult(f"{out}\n[exit status {code}]" if out else f"[exit status {code}]",
                              True)
        return ToolResult(out)

    def _tool_memory(self, inp: JSON) -> ToolResult:
        from anthropic.lib.tools import ToolError

        if self._memory is None:
            self._memory = _notes_memory(self.notes)
        try:
            result = self._memory.call(inp)
        except ToolError as e:
            return ToolResult(_text_of(e.content), True)
        except Exception as e:
            return ToolResult(f"memory: bad input for command {inp.get('command')!r}: {e}", True)
        return ToolResult(_text_of(result))

    # ------------------------------------------------------------ coordination

    def _check_name(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise ToolFailed(f"bad agent name {name!r}: {NAME_RULE}")

    def _tool_spawn(self, inp: JSON) -> ToolResult:
        name = _want_str(inp, "name")
        prompt = _want_str(inp, "prompt")
        assert name is not None and prompt is not None
        self._check_name(name)
        self.agent.mount.spawn(name, prompt=prompt, parent=self.agent.name)
        note = self.hooks.launch(name, "spawn")
        return ToolResult(f"spawned agent {name} (agents/{name}), your child; {note}")

    def _tool_fork(self, inp: JSON) -> ToolResult:
        name = _want_str(inp, "name")
        message = _want_str(inp, "message")
        assert name is not None and message is not None
        self._check_name(name)
        at = _want_int(inp, "at_turn", None)
        now = self.hooks.turn()
        if at is None:
            at = now - 1  # as we were before this turn: without this call
        if not 0 <= at <= now:
            raise ToolFailed(f"at_turn must be between 0 and {now}")
        # The daemon forks after turns 1..N; "before the first turn" is taken as now
        # (the fork then holds this call, answered there as not run).
        point = at if at >= 1 else now
        forked = self.agent.fork(name, at=point if point < now else None)
        self.agent.send(forked.name, f"You are agent {name}, forked from {self.agent.name} "
                        f"at turn {point}.\n{message}", name="fork")
        note = self.hooks.launch(name, "fork")
        return ToolResult(f"forked {name} (agents/{name}) from turn {point}; {note}")

    def _tool_send(self, inp: JSON) -> ToolResult:
        to = _want_str(inp, "to")
        text = _want_str(inp, "text")
        assert to is not None and text is not None
        self._check_name(to)
        if not self.agent.mount.exists(to):
            raise ToolFailed(f"no agent named {to!r}")
        self.agent.send(to, text if text.endswith("\n") else text + "\n")
        return ToolResult(f"sent to {to}")

    def _wait(self, timeout: float, sender: str | None) -> Message | None:
        """The first message (from `sender`, if given) within `timeout` seconds, consumed."""
        deadline = time.monotonic() + timeout
        self.hooks.status("waiting")
        try:
            while True:
                msgs = self.agent.messages()
                for m in msgs:
                    if sender is None or m.sender == sender:
                        try:
                            os.unlink(m.path)
                        except FileNotFoundError:
                            continue  # someone else took it
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if msgs:  # only others' messages: they wait for the next turn boundary
                    time.sleep(min(0.2, left))
                else:
                    self.agent.recv(timeout=min(left, 2.0), consume=False)
        finally:
            self.hooks.status("running")

    def _tool_wait_for_message(self, inp: JSON) -> ToolResult:
        timeout = _want_int(inp, "timeout", WAIT_DEFAULT)
        assert timeout is not None
        timeout = max(0, min(timeout, WAIT_MAX))
        msg = self._wait(timeout, None)
        if msg is None:
            return ToolResult(f"no message within {timeout} s")
        return ToolResult(format_message(msg))

    def _tool_ask_parent(self, inp: JSON) -> ToolResult:
        question = _want_str(inp, "question")
        assert question is not None
        timeout = _want_int(inp, "timeout", ASK_DEFAULT)
        assert timeout is not None
        timeout = max(0, min(timeout, WAIT_MAX))
        parent = self.agent.parent()
        if not parent:
            raise ToolFailed("this agent has no parent (agents/NAME/parent is empty)")
        if not self.agent.mount.exists(parent):
            raise ToolFailed(f"the parent agent {parent!r} is gone")
        self.agent.send(parent, question if question.endswith("\n") else question + "\n",
                        name="question")
        msg = self._wait(timeout, parent)
        if msg is None:
            return ToolResult(f"no answer from {parent} within {timeout} s", True)
        return ToolResult(format_message(msg))

    def _tool_restore_observation(self, inp: JSON) -> ToolResult:
        ident = _want_str(inp, "id")
        assert ident is not None
        oid = ident.strip().rstrip("/").rsplit("/", 1)[-1]
        if not oid or oid in (".", "..") or oid == "observations":
            raise ToolFailed(f"not an observation id: {ident!r}")
        path = self.agent.path / "observations" / oid
        try:
            with open(path, "rb") as f:
                data = f.read(RESTORE_CAP * 4 + 1)
        except FileNotFoundError:
            raise ToolFailed(f"no observation {oid!r} (ls agents/{self.agent.name}/observations)")
        text = data.decode("utf-8", "replace")
        if len(text) > RESTORE_CAP:
            text = (text[:RESTORE_CAP] + f"\n[truncated at {RESTORE_CAP} characters; the file "
                    f"is ../observations/{oid} from your workspace]")
        return ToolResult(text)


def _kill_tree(pid: int) -> None:
    """SIGKILL process `pid` and everything descended from it (found through
    /proc first: once `pid` is dead its children are reparented)."""
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    tree, stack = [pid], [pid]
    while stack:
        for child in kids.get(stack.pop(), []):
            tree.append(child)
            stack.append(child)
    for p in tree:  # the shell first, so that it starts nothing more
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def _notes_memory(notes: Path) -> Any:
    """The SDK's BetaLocalFilesystemMemoryTool with /memories = notes/."""
    from anthropic.lib.tools._beta_builtin_memory_tool import (
        BetaAbstractMemoryTool,
        BetaLocalFilesystemMemoryTool,
    )

    class NotesMemory(BetaLocalFilesystemMemoryTool):
        def __init__(self, root: Path) -> None:
            BetaAbstractMemoryTool.__init__(self)
            self.base_path = root
            self.memory_root = root

    return NotesMemory(notes)


def definitions_json() -> str:
    """tools.json as the runner writes it."""
    return json.dumps(TOOL_DEFINITIONS, indent=2, ensure_ascii=False) + "\n"
