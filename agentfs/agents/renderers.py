"""One `Renderer` per agent view, fed with every transcript line once: by the
append that writes it (to know, inside the append's transaction, which turns
become compaction points, for the `compaction` event) or, for lines it has
not seen, by a read of context.json or observations/ (context.py), which
catches it up outside any write transaction.

Compaction is a pure function of an agent's inputs and transcript, decided
line by line as `Renderer` appends them (render.py), and nothing of it is
stored: a renderer is a cache, checked against what its user reads (the
inputs' bytes and the transcript's size) before it is used, so a changed
`config` or a remount only costs a catch-up from the start of the
transcript (~25 us a line), never a wrong answer.

Who owns a renderer: the cache, except while an append feeds it. The append
takes it out of the cache (`new_points`) and gives it back only once its
transaction has committed (`keep`): a renderer is never fed the lines of an
aborted transaction, and a read never sees one that is ahead of the store.
A fork made now starts from a copy of its origin's renderer; a fork at a
past turn catches up at its first append or read.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentfs.agents.inputs import Inputs
from agentfs.agents.render import Renderer
from agentfs.errors import FsError

RawInputs = tuple[bytes, bytes, bytes, bytes]  # system, tools.json, prompt, config


@dataclass
class Fed:
    """A renderer and what it was fed: inputs as read, transcript bytes (whole lines)."""

    raw: RawInputs
    renderer: Renderer
    offset: int = 0
    # The last body rendered and the recitation it was rendered with: a read of
    # context.json is a lookup, a getattr or two (its size) and an open, which
    # would otherwise render it about four times (bench: render was half of the
    # daemon's samples at 1k turns).
    last: tuple[str | None, bytes] | None = None

    @classmethod
    def start(cls, raw: RawInputs) -> Fed:
        """From nothing (FsError if the inputs do not parse: context.json says why)."""
        return cls(raw, Inputs.parse(*raw).renderer())

    def feed(self, obj: dict[str, Any], size: int) -> int:
        """The next line (parsed; `size` bytes with its newline); returns its turn."""
        self.last = None
        self.offset += size
        return self.renderer.append(obj)

    def catch_up(self, new: bytes) -> None:
        """Feed the whole lines at the start of `new`, the transcript from `offset`."""
        end = new.rfind(b"\n") + 1  # lines are appended whole; never read half of one
        for raw in new[:end].splitlines():
            if raw:
                self.renderer.append(json.loads(raw))
        if end:
            self.last = None
        self.offset += end

    def body(self, todo: str | None) -> bytes:
        """context.json: the body and a newline."""
        if self.last is None or self.last[0] != todo:
            self.last = (todo, self.renderer.render(todo) + b"\n")
        return self.last[1]


class Renderers:
    """The renderers of the agent views, least recently used first (a bounded cache)."""

    def __init__(self, capacity: int = 64, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes  # transcript bytes fed, over all cached renderers
        self._fed: OrderedDict[int, Fed] = OrderedDict()

    def keep(self, view: int, fed: Fed) -> None:
        """Cache `fed` as view's, the most recent, evicting the least recent over the limits."""
        self._fed[view] = fed
        self._fed.move_to_end(view)
        held = sum(f.offset for f in self._fed.values())
        while len(self._fed) > 1 and (len(self._fed) > self.capacity or held > self.max_bytes):
            held -= self._fed.popitem(last=False)[1].offset  # the least recently used

    def forked(self, origin: int, view: int, size: int) -> None:
        """Agent view `view` was just forked from `origin` whose transcript was
        `size` bytes long (a fork now): start its renderer as a copy of the
        origin's, if that one is in step, rather than catch up from nothing.
        (Called once the fork is committed.)"""
        fed = self._fed.get(origin)
        if fed is not None and fed.offset == size:
            self.keep(view, Fed(fed.raw, fed.renderer.copy(), fed.offset))

    def current(self, view: int, raw: RawInputs, size: int,
                read: Callable[[int, int], bytes]) -> Fed:
        """View's renderer for these inputs, caught up to a transcript of `size`
        bytes; `read(offset, n)` reads n of them from `offset`. For readers:
        called outside any write transaction, with what the store holds."""
        fed = self._fed.pop(view, None)  # (out of the cache while it is fed)
        if fed is None or fed.raw != raw or size < fed.offset:
            fed = Fed.start(raw)
        if size > fed.offset:
            fed.catch_up(read(fed.offset, size - fed.offset))
        self.keep(view, fed)
        return fed

    def new_points(self, view: int, inputs: Callable[[], RawInputs],
                   config: Callable[[], bytes], frozen: bool,
                   transcript: Callable[[int], bytes], size_before: int,
                   lines: list[tuple[dict[str, Any], int]]) -> tuple[list[int], Fed | None]:
        """The turns among `lines` ((parsed line, its bytes with the newline),
        appended at transcript offset `size_before`) that become compaction
        points, and the renderer fed with them, out of the cache: the caller
        gives it back (`keep`) once the append has committed. `inputs()` reads
        the agent's inputs, `config()` its config alone: `frozen` says the
        others cannot have changed since the agent's first turn
        (model.FROZEN_AT_FIRST_TURN), so that only config is read again when
        the cache is in step. `transcript(n)` reads the first n bytes, for a
        catch-up. Inputs that do not parse (context.json says why) make none."""
        fed = self._fed.pop(view, None)
        in_step = fed is not None and fed.offset == size_before
        raw = (*fed.raw[:3], config()) if fed is not None and in_step and frozen else inputs()
        if fed is None or not in_step or fed.raw != raw:
            try:
                fed = Fed.start(raw)
            except FsError:
                return [], None
            fed.catch_up(transcript(size_before))
        points = []
        for obj, size in lines:
            before = fed.renderer.state.points
            turn = fed.feed(obj, size)
            if fed.renderer.state.points != before:
                points.append(turn)
        return points, fed
