"""The text of `agentfs top`'s table: fixed-width lines, no terminal involved.

      AGENT                    STATE   TURNS     IN    OUT CACHE    COST INBOX  LAST
    > lead                     running    12  48.1k   2.3k   91%  $0.084     1    3s
      └─helper                 waiting     7  20.0k    812   88%  $0.031     0    1m
        └─helper-2@4           idle        4      -      -     -       -     0    2m
      TOTAL 3 agents                      23  68.1k   3.1k   90%  $0.115     1

The AGENT column takes what the fixed columns leave of the width (names are
cut with '…'), so the table fits any terminal from 60 columns up; 80x24
shows 19 agents at once and the rest scrolls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .top_board import Board, Row

# name, width, right-aligned
COLUMNS = [("STATE", 7, False), ("TURNS", 5, True), ("IN", 6, True), ("OUT", 6, True),
           ("CACHE", 5, True), ("COST", 7, True), ("INBOX", 5, True), ("LAST", 5, True)]
SELECTED = "> "  # before the selected row; the others get as many spaces
MARK = len(SELECTED)
MIN_NAME = 8


def name_width(width: int) -> int:
    return max(MIN_NAME, width - MARK - sum(w + 1 for _, w, _ in COLUMNS))


def tokens(n: int) -> str:
    if n < 1000:
        return str(n)
    for unit, div in (("k", 1e3), ("M", 1e6), ("G", 1e9)):
        v = n / div
        if v < 999.5:
            return f"{v:.1f}{unit}" if v < 99.95 else f"{v:.0f}{unit}"
    return f"{n / 1e12:.0f}T"


def dollars(x: float) -> str:
    if x < 10:
        return f"${x:.3f}"
    if x < 1000:
        return f"${x:.2f}" if x < 100 else f"${x:.1f}"
    return f"${x:.0f}"


def ago(then: float | None, now: float) -> str:
    if then is None:
        return "-"
    s = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _line(name: str, cells: Iterable[str], width: int, selected: bool) -> str:
    mark = SELECTED if selected else " " * MARK
    parts = [mark + fit(name, name_width(width)).ljust(name_width(width))]
    for (_, w, right), cell in zip(COLUMNS, cells, strict=True):
        cell = fit(cell, w)
        parts.append(cell.rjust(w) if right else cell.ljust(w))
    return " ".join(parts)[:width].rstrip()


def _figures(u: Any) -> list[str]:
    if u is None:
        return ["-", "-", "-", "-"]
    return [tokens(u.prompt_tokens), tokens(u.output_tokens),
            f"{u.cache_read_share:.0%}" if u.prompt_tokens else "-", dollars(u.cost_usd)]


def header(width: int) -> str:
    return _line("AGENT", (c for c, _, _ in COLUMNS), width, False)


def row_line(prefix: str, row: Row, width: int, now: float, selected: bool = False) -> str:
    name = prefix + row.name + (f"@{row.fork_turn}" if row.origin else "")
    cells = [row.status or "?", str(row.turns), *_figures(row.figures()), str(row.inbox),
             ago(row.last_turn, now) if row.turns else "-"]
    return _line(name, cells, width, selected)


def totals_line(board: Board, width: int) -> str:
    rows = list(board.rows.values())
    figs = [u for u in (r.figures() for r in rows) if u is not None]
    prompt = sum(u.prompt_tokens for u in figs)
    read = sum(u.cache_read_input_tokens for u in figs)
    cells = ["", str(sum(r.turns for r in rows)),
             tokens(prompt) if figs else "-", tokens(sum(u.output_tokens for u in figs))
             if figs else "-", f"{read / prompt:.0%}" if prompt else "-",
             dollars(sum(u.cost_usd for u in figs)) if figs else "-",
             str(sum(r.inbox for r in rows)), ""]
    return _line(f"TOTAL {len(rows)} agent" + ("" if len(rows) == 1 else "s"), cells, width,
                 False)


def table(board: Board, width: int, selected: str | None = None,
          now: float | None = None) -> list[str]:
    """Header, one line per agent in tree order, totals: the whole table as text."""
    now = time.time() if now is None else now
    return [header(width),
            *(row_line(p, r, width, now, r.name == selected) for p, r in board.ordered()),
            totals_line(board, width)]
