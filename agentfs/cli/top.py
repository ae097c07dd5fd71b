"""`agentfs top`: a live view of a mount's agents, in any terminal (80x24 up,
no mouse, fine over ssh), on textual.

    agentfs top  /srv/agents  events                                     12:04:51
      AGENT                    STATE   TURNS     IN    OUT CACHE    COST INBOX  LAST
    > lead                     running    12  48.1k   2.3k   91%  $0.084     1    3s
      └─helper                 waiting     7  20.0k    812   88%  $0.031     0    1m
        └─helper-2@4           idle        4      -      -     -       -     0    2m
      TOTAL 3 agents                      23  68.1k   3.1k   90%  $0.115     1
    ↑↓/jk select  ⏎ log  t follow  m message  f fork  s stop  r re-read  q quit

The data side (`top_source`, `top_board`, `top_table`) knows nothing of the
terminal; this module only draws it and turns keys into the same file
operations the other commands make: a message file in the inbox, `fork NEW
[at TURN]` on the agent's ctl, and for stop, SIGTERM to the agent's runner
(`agentfs run` finishes the line it is writing, answers open tool calls and
sets status idle, as on Ctrl-C). The ctl has no stop command: an agent with
no live runner but a status that says `running` or `waiting` (a runner
killed outright) gets status `idle`, which is what the runner would have
written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Input, RichLog, Static

from . import top_table
from .top_source import Source

TICK = 0.5  # seconds between two looks at the news (the source rate-limits itself)
KEYS = "↑↓/jk select  ⏎ log  t follow  m message  f fork  s stop  r re-read  q quit"
QUESTIONS = {"message": "message to {name}:", "fork": "fork {name} as NEW [TURN]:",
             "stop": "stop {name}? y/N:"}
STATE_STYLES = {"running": "bold green", "waiting": "yellow", "failed": "bold red"}


def run_top(mount: Any, once: bool) -> None:
    """The live view; the table once when asked, or when stdout is no terminal."""
    source = Source(mount)
    if once or not (sys.stdout.isatty() and sys.stdin.isatty()):
        source.reload()
        width = shutil.get_terminal_size((80, 24)).columns
        for line in top_table.table(source.board, width):
            print(line)
        return
    TopApp(source).run(mouse=False)  # the terminal keeps its own selection (copy, paste)


# ---------------------------------------------------------------- actions on an agent


def parse_fork(text: str) -> tuple[str, int | None]:
    """NEW, NEW TURN or NEW at TURN."""
    words = text.split()
    if len(words) == 3 and words[1] == "at":
        words = [words[0], words[2]]
    if len(words) == 1:
        return words[0], None
    if len(words) == 2 and words[1].isdigit():
        return words[0], int(words[1])
    raise ValueError(f"{text!r}: give NEW, NEW TURN or NEW at TURN")


def runner_pid(agent: Any) -> int | None:
    """The pid of the live `agentfs run` of `agent`, from its runner.pid, if the
    process really is that runner (the file is the agent's to write: a pid in
    it alone is no reason to signal a process)."""
    from agentfs.client.runner import PID_FILE

    try:
        words = (agent.path / PID_FILE).read_text().split()
    except OSError:
        return None
    if len(words) != 2 or words[0] != agent.name or not words[1].isdigit():
        return None
    pid = int(words[1])
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    if f"AGENTFS_AGENT={agent.name}".encode() not in env or b"run" not in argv:
        return None
    return pid


def stop_agent(agent: Any) -> str:
    """Stop the agent's runner (SIGTERM); a stale running/waiting status becomes idle."""
    pid = runner_pid(agent)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        return f"{agent.name}: SIGTERM to its runner (pid {pid}); it stops with status idle"
    state, _ = agent.status()
    if state in ("running", "waiting"):
        agent.set_status("idle")
        return f"{agent.name}: no runner alive; status {state} -> idle"
    return f"{agent.name}: no runner alive, nothing to stop (status {state})"


# ---------------------------------------------------------------- the table

FAR = 1 << 30  # a step past either end: home and end


def motions(action: str, page: int) -> list[Binding]:
    """Arrows, j/k, page up/down, home/end as ACTION(STEP) bindings."""
    steps = {"down,j": 1, "up,k": -1, "pagedown": page, "pageup": -page, "home": -FAR,
             "end": FAR}
    return [Binding(keys, f"{action}({n})", show=False) for keys, n in steps.items()]


class AgentTable(Widget, can_focus=True):
    """The agents, one line each, the selected one marked; scrolls to keep it in view."""

    BINDINGS = [
        *motions("move", 10),
        Binding("enter,o", "app.open_log", show=False),
        Binding("t", "app.open_log(True)", show=False),
        Binding("m", "app.ask('message')", show=False),
        Binding("f", "app.ask('fork')", show=False),
        Binding("s", "app.ask('stop')", show=False),
        Binding("r", "app.reread", show=False),
        Binding("q", "app.quit", show=False),
    ]

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.names: list[str] = []
        self.lines: list[str] = []
        self.states: list[str] = []
        self.selected: str | None = None
        self.first = 0  # index of the top visible line

    def keep_selection(self, names: list[str]) -> str | None:
        """The selected agent among `names`: the same one, else the one now at
        its place (it was removed), else the first."""
        if self.selected not in names:
            old = self.names.index(self.selected) if self.selected in self.names else 0
            self.selected = names[min(old, len(names) - 1)] if names else None
        return self.selected

    def show(self, names: list[str], lines: list[str], states: list[str]) -> None:
        if (names, lines, states) != (self.names, self.lines, self.states):
            self.names, self.lines, self.states = names, lines, states
            self.refresh()

    def action_move(self, step: int) -> None:
        if not self.names:
            return
        i = self.names.index(self.selected) if self.selected in self.names else 0
        self.selected = self.names[max(0, min(len(self.names) - 1, i + step))]
        self.refresh()

    def render(self) -> Text:
        if not self.lines:
            return Text("  no agents yet: agentfs spawn NAME, or mkdir MOUNT/agents/NAME",
                        style="dim")
        height = max(1, self.size.height)
        i = self.names.index(self.selected) if self.selected in self.names else 0
        self.first = min(max(self.first, i - height + 1), i)
        out = Text(no_wrap=True, overflow="crop")
        for j in range(self.first, min(len(self.lines), self.first + height)):
            line, style = self.lines[j], STATE_STYLES.get(self.states[j], "")
            if j == i:  # the mark shows without colours too (and in capture-pane)
                line, style = top_table.SELECTED + line[len(top_table.SELECTED):], "reverse"
            out.append(line + ("\n" if j + 1 < self.first + height else ""), style)
        return out


# ---------------------------------------------------------------- the log view


class LogScreen(Screen[None]):
    """An agent's transcript, as `agentfs log` shows it; following it (t) adds
    lines as they are appended (a stat of the transcript per tick)."""

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "back"),
        Binding("t", "follow", "follow"),
        *motions("scroll", 20),
        Binding("space", "scroll(20)", show=False),
        Binding("b", "scroll(-20)", show=False),
        Binding("g", f"scroll({-FAR})", show=False),
        Binding("G", f"scroll({FAR})", show=False),
    ]

    def __init__(self, agent: Any, follow: bool) -> None:
        super().__init__()
        self.agent = agent
        self.following = follow
        self.read_to = 0
        self.turn = 0

    def compose(self) -> ComposeResult:
        yield Static(id="log-title")
        yield RichLog(id="log", wrap=True, auto_scroll=self.following)
        yield Static("jk/↑↓ scroll  space/b page  g/G top/end  t follow  q/esc back",
                     id="log-keys")

    def on_mount(self) -> None:
        self.read_more()
        self.set_interval(TICK, self.tick)

    def title_text(self) -> str:
        state = "following" if self.following else "t to follow"
        return f"agents/{self.agent.name}/transcript  {self.turn} turn(s)  {state}"

    def tick(self) -> None:
        if self.following:
            self.read_more()

    def read_more(self) -> None:
        from .main import message_lines

        path = self.agent.path / "transcript"
        try:
            size = os.stat(path).st_size
            if size > self.read_to:
                with open(path, "rb") as f:
                    f.seek(self.read_to)
                    data = f.read(size - self.read_to)
            else:
                data = b""
        except OSError as e:
            self.query_one("#log-title", Static).update(f"{path}: {e.strerror}")
            return
        end = data.rfind(b"\n") + 1
        self.read_to += end
        log = self.query_one(RichLog)
        for raw in data[:end].splitlines():
            self.turn += 1
            try:
                message = json.loads(raw)
            except ValueError:
                message = raw.decode(errors="replace")
            head, lines = message_lines(self.turn, message, False)
            log.write(Text("\n".join([head, *lines])))
        self.query_one("#log-title", Static).update(self.title_text())

    def action_follow(self) -> None:
        self.following = not self.following
        log = self.query_one(RichLog)
        log.auto_scroll = self.following
        if self.following:
            self.read_more()
            log.scroll_end(animate=False)
        self.query_one("#log-title", Static).update(self.title_text())

    def action_scroll(self, lines: int) -> None:
        log = self.query_one(RichLog)
        log.scroll_to(y=log.scroll_y + lines, animate=False)


# ---------------------------------------------------------------- the app


class TopApp(App[None]):
    CSS = """
    #title, #header, #totals, #note, #keys, #log-title, #log-keys { height: 1; }
    #title, #log-title { background: $primary; color: $text; }
    #header, #totals { text-style: bold; }
    AgentTable { height: 1fr; }
    #prompt { height: 1; border: none; padding: 0 1; display: none; }
    #prompt.shown { display: block; }
    RichLog { height: 1fr; }
    """
    BINDINGS = [Binding("ctrl+c", "quit", show=False, priority=True),
                Binding("escape", "cancel", show=False)]
    ENABLE_COMMAND_PALETTE = False

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.source = source
        self.asking: tuple[str, str] | None = None  # (what, agent) the prompt is for
        self.shown: dict[str, str] = {}  # what each one-line Static shows

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="header")
        yield AgentTable(id="table")
        yield Static(id="totals")
        yield Static(id="note")
        yield Input(id="prompt")
        yield Static(KEYS, id="keys")

    @property
    def table(self) -> AgentTable:
        return self.query_one(AgentTable)

    def on_mount(self) -> None:
        self.source.reload()
        self.redraw()
        self.table.focus()
        self.set_interval(TICK, self.tick)

    def on_resize(self) -> None:
        self.redraw()

    def tick(self) -> None:
        try:
            self.source.tick()
        except OSError as e:
            self.say(f"cannot read the mount: {e}")
        self.redraw()

    def say(self, text: str) -> None:
        self.put("#note", text)

    def put(self, widget: str, text: str) -> None:
        """Set a one-line Static; an unchanged line costs no repaint (idle CPU)."""
        if self.shown.get(widget) != text:
            self.shown[widget] = text
            self.query_one(widget, Static).update(Text(text, no_wrap=True, overflow="ellipsis"))

    def redraw(self) -> None:
        width = self.size.width or 80
        board, now = self.source.board, time.time()
        ordered = board.ordered()
        names = [r.name for _, r in ordered]
        self.table.keep_selection(names)
        self.table.show(names, [top_table.row_line(p, r, width, now) for p, r in ordered],
                        [r.status for _, r in ordered])
        clock = time.strftime("%H:%M:%S")
        title = f"agentfs top  {self.source.mount.path}  {self.source.mode}"
        self.put("#title", title[: max(0, width - len(clock) - 1)].ljust(width - len(clock))
                 + clock)
        self.put("#header", top_table.header(width))
        self.put("#totals", top_table.totals_line(board, width))
        if self.source.note:
            self.say(self.source.note)
            self.source.note = ""

    # ------------------------------------------------------------ keys (bound on the table)

    def selected_agent(self) -> Any:
        name = self.table.selected
        if name is None:
            self.say("no agent selected")
            return None
        from agentfs.client import Agent

        return Agent(self.source.mount, name)

    def action_open_log(self, follow: bool = False) -> None:
        agent = self.selected_agent()
        if agent is not None:
            self.push_screen(LogScreen(agent, follow))

    def action_reread(self) -> None:
        self.source.reload(fresh=True)
        self.say("re-read every agent")
        self.redraw()

    def action_ask(self, what: str) -> None:
        name = self.table.selected
        if name is None:
            self.say("no agent selected")
            return
        self.asking = (what, name)
        self.say(QUESTIONS[what].format(name=name) + "  (enter: do it, esc: cancel)")
        prompt = self.query_one("#prompt", Input)
        prompt.value = ""
        prompt.add_class("shown")
        prompt.focus()

    def action_cancel(self) -> None:
        if self.asking is not None:
            self.end_prompt("cancelled")

    def end_prompt(self, note: str) -> None:
        self.asking = None
        prompt = self.query_one("#prompt", Input)
        prompt.remove_class("shown")
        self.table.focus()
        self.say(note)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.asking is None:
            return
        what, name = self.asking
        text = event.value.strip()
        from agentfs.client import Agent, AgentfsError

        agent = Agent(self.source.mount, name)
        try:
            if not text:
                note = "cancelled"
            elif what == "message":
                self.source.mount.send(name, text + "\n")
                note = f"sent to {name}: {text}"
            elif what == "fork":
                new, turn = parse_fork(text)
                agent.fork(new, turn)
                self.table.selected = new
                note = f"forked {name} -> {new}" + ("" if turn is None else f" at turn {turn}")
            elif text.lower() in ("y", "yes"):
                note = stop_agent(agent)
            else:
                note = "not stopped"
        except (AgentfsError, OSError, ValueError) as e:
            note = f"{what} {name}: {e}"
        self.end_prompt(note)
        self.source.next_reload = 0.0  # without the events stream: show it at once
        self.tick()
