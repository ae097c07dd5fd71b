"""`agentfs events`: the mount's event stream (`MOUNT/.agentfs/events`), as its
JSON lines or readably, from a seq on, optionally following it."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

FIXED = ("seq", "time", "event", "agent")


def readable(e: dict[str, Any]) -> str:
    """One event as `SEQ HH:MM:SS.mmm EVENT AGENT key=value ...`."""
    t = float(e.get("time", 0))
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    rest = " ".join(f"{k}={json.dumps(e[k], ensure_ascii=False, sort_keys=True)}"
                    if not isinstance(e[k], str) else f"{k}={e[k]}"
                    for k in sorted(e) if k not in FIXED)
    return f"{e.get('seq', '?'):>6} {stamp} {e.get('event', '?'):<10} {e.get('agent', '?')}" \
        + (f"  {rest}" if rest else "")


@click.command()
@click.option("--after", "after", type=int, default=0, show_default=True,
              help="only events with a seq above this (the last one you saw)")
@click.option("--follow", "-f", is_flag=True, help="wait for new events (Ctrl-C ends)")
@click.option("--timeout", type=float, default=None,
              help="with --follow: stop after SECONDS")
@click.option("--json/--text", "as_json", default=False,
              help="print the stream's JSON lines as they are, or readably (default)")
@click.option("--mount", "mount_opt", type=click.Path(file_okay=False), default=None,
              help="the agentfs mount (default: $AGENTFS_MOUNT, else the mount the "
                   "current directory is in)")
def events(after: int, follow: bool, timeout: float | None, as_json: bool,
           mount_opt: str | None) -> None:
    """Print the mount's events (spawn, fork, turn, message, consumed, status,
    compaction, remove, detach) with a seq above --after, in order."""
    from agentfs.cli.main import client_errors, client_mount

    m = client_mount(mount_opt)
    try:
        with client_errors():
            for e in m.events(after=after, follow=follow, timeout=timeout):
                click.echo(json.dumps(e, sort_keys=True, separators=(",", ":"),
                                      ensure_ascii=False) if as_json else readable(e))
                if follow:
                    sys.stdout.flush()
    except KeyboardInterrupt:
        pass
