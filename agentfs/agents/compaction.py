"""Which transcript appends make a compaction point, known inside the append's
transaction (for the `compaction` event).

Compaction is a pure function of an agent's inputs and transcript, decided
line by line as `Renderer` appends them (render.py), and nothing of it is
stored. To know, while a line is being appended, whether its turn becomes a
compaction point, `CompactionPoints` keeps one `Renderer` per agent view fed
with every line appended through it. The cache is checked against what the
transaction reads (the inputs' bytes and the transcript's size before the
append), so an aborted append, a changed `config` or a remount only costs a
catch-up from the start of the transcript (inside that append's transaction:
~25 us a line, 2.5 s at 100k lines), never a wrong answer. A fork made now
starts from a copy of its origin's renderer instead; a fork at a past turn
catches up at its first append.
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
class _Fed:
    raw: RawInputs
    renderer: Renderer
    offset: int  # transcript bytes fed (whole lines)


class CompactionPoints:
    """One renderer per agent view, fed at append time (a bounded cache)."""

    def __init__(self, capacity: int = 64, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes  # transcript bytes fed, over all cached renderers
        self._fed: OrderedDict[int, _Fed] = OrderedDict()

    def forked(self, origin: int, view: int, size: int) -> None:
        """Agent view `view` was just forked from `origin` whose transcript was
        `size` bytes long (a fork now): start its renderer as a copy of the
        origin's, if that one is in step, rather than catch up from nothing
        at the fork's first append. (Called once the fork is committed.)"""
        fed = self._fed.get(origin)
        if fed is not None and fed.offset == size:
            self._fed[view] = _Fed(fed.raw, fed.renderer.copy(), fed.offset)

    def new_points(self, view: int, inputs: Callable[[], RawInputs],
                   config: Callable[[], bytes], frozen: bool,
                   transcript: Callable[[int], bytes], size_before: int,
                   lines: list[tuple[dict[str, Any], int]]) -> list[int]:
        """The turns among `lines` ((parsed line, its bytes with the newline),
        appended at transcript offset `size_before`) that become compaction
        points. `inputs()` reads the agent's inputs, `config()` its config
        alone: `frozen` says the others cannot have changed since the agent's
        first turn (model.FROZEN_AT_FIRST_TURN), so that only config is read
        again when the cache is in step. `transcript(n)` reads the first n
        bytes, for a catch-up. Inputs that do not parse (context.json says
        why) make none."""
        fed = self._fed.pop(view, None)
        in_step = fed is not None and fed.offset == size_before
        raw = (*fed.raw[:3], config()) if fed is not None and in_step and frozen else inputs()
        if fed is None or not in_step or fed.raw != raw:
            try:
                renderer = Inputs.parse(*raw).renderer()
            except FsError:
                return []
            fed = _Fed(raw, renderer, 0)
            for old in transcript(size_before).splitlines():
                if old:
                    fed.renderer.append(json.loads(old))
            fed.offset = size_before
        points = []
        for obj, size in lines:
            before = fed.renderer.state.points
            turn = fed.renderer.append(obj)
            if fed.renderer.state.points != before:
                points.append(turn)
            fed.offset += size
        self._fed[view] = fed
        held = sum(f.offset for f in self._fed.values())
        while len(self._fed) > 1 and (len(self._fed) > self.capacity or held > self.max_bytes):
            held -= self._fed.popitem(last=False)[1].offset  # the least recently fed
        return points
