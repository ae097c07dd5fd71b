"""Per-agent inboxes: atomic delivery in arrival order.

A message is written into a hidden staging file (`.in-NONCE-NAME`) and becomes
visible, in one transaction, as `SEQ-SENDER+NAME` when its writer closes it:
a reader never sees half a message. `Q<view>` holds the inbox's next sequence
number; a fork inherits its origin's messages and continues after the highest
number it sees.
"""

from __future__ import annotations

import errno
import re
import stat

from agentfs.agents import events
from agentfs.agents.model import Agent, Agents, Role
from agentfs.errors import FsError
from agentfs.posix.forks import Tree
from agentfs.posix.inodes import NAME_MAX, RENAME_NOREPLACE, check_name
from agentfs.storage import keys
from agentfs.storage.codec import Attr, split_ino

STAGED_PREFIX = b".in-"
MESSAGE_RE = re.compile(rb"^(\d{6,})-")


def _next_seq(t: Tree, a: Agent) -> int:
    raw = t.tx.txn.get(keys.inbox_seq(a.view))
    if raw is not None:
        return keys.read_u64(raw)
    # First message since this view began (a fork inherits its origin's messages):
    # continue after the highest number present.
    high = 0
    view, local = split_ino(a.ino(Role.INBOX))
    for sub, _ in t.tx.scan(view, keys.dentry_dir_suffix(local)):
        m = MESSAGE_RE.match(keys.parse_dentry_tail(sub)[1])
        if m:
            high = max(high, int(m.group(1)))
    return high + 1


def staged_name(name: bytes, nonce: int) -> bytes:
    return (STAGED_PREFIX + b"%d-" % nonce + name)[:NAME_MAX]


def stage_message(agents: Agents, a: Agent, name: bytes, nonce: int, uid: int,
                  gid: int) -> Attr:
    """A message being written: a hidden file in the inbox until its writer closes it."""
    check_name(name)
    if name.startswith(STAGED_PREFIX):
        raise FsError(errno.EINVAL, "names starting with .in- are reserved for messages "
                      "being written")
    return agents.fs.create(a.ino(Role.INBOX), staged_name(name, nonce),
                            stat.S_IFREG | 0o644, uid, gid)


def safe_sender(sender: str) -> bytes:
    """Senders are reduced to [A-Za-z0-9._-], so the first '+' always ends the
    sender, whatever the message's own name holds."""
    return re.sub(rb"[^A-Za-z0-9._-]", b"_", sender.encode())[:64] or b"unknown"


def deliver_message(agents: Agents, a: Agent, staged: bytes, sender: str) -> bytes:
    """Make a staged message visible, atomically (one transaction), as SEQ-SENDER+NAME."""
    inbox = a.ino(Role.INBOX)
    original = staged[len(STAGED_PREFIX):].split(b"-", 1)[1]
    with agents.fs.transaction() as t:
        agents.live(t, a.name, a.view)
        seq = _next_seq(t, a)
        final = (b"%06d-%s+%s" % (seq, safe_sender(sender), original))[:NAME_MAX]
        t.tx.txn.put(keys.inbox_seq(a.view), keys.u64(seq + 1))
        size = t.lookup(inbox, staged).size
        t.move(inbox, staged, inbox, final, RENAME_NOREPLACE)
        events.record(t, "message", a.name, name=_text(final),
                      sender=safe_sender(sender).decode(), bytes=size)
    return final


def _text(name: bytes) -> str:
    return name.decode("utf-8", "replace")


def is_message(name: bytes) -> bool:
    """A delivered message's name (not one being written, not any other file)."""
    return MESSAGE_RE.match(name) is not None


def consume_message(agents: Agents, a: Agent, name: bytes,
                    move_to: tuple[int, bytes, int] | None = None) -> None:
    """`rm inbox/NAME`, or `mv inbox/NAME DIR/NEW` (`move_to`: the directory,
    the new name, rename flags): the message leaves the inbox, and the stream
    says it was consumed, in one transaction."""
    with agents.fs.transaction() as t:
        agents.live(t, a.name, a.view)
        if move_to is None:
            t.unlink(a.ino(Role.INBOX), name)
        else:
            t.rename(a.ino(Role.INBOX), name, *move_to)
        events.record(t, "consumed", a.name, name=_text(name))


def drop_staged(agents: Agents) -> int:
    """At mount: messages whose writer never closed them are not messages."""
    n = 0
    for a in agents.all():
        try:
            entries = list(agents.fs.readdir(a.ino(Role.INBOX)))
        except FsError:
            continue
        for e in entries:
            if e.name.startswith(STAGED_PREFIX):
                with agents.fs.transaction() as t:
                    t.unlink(a.ino(Role.INBOX), e.name)
                    t.forget(e.attr.ino)
                n += 1
    return n


def inbox_messages(agents: Agents, a: Agent) -> list[bytes]:
    """Delivered messages in arrival order."""
    names = [e.name for e in agents.fs.readdir(a.ino(Role.INBOX))
             if not e.name.startswith(STAGED_PREFIX)]
    return sorted(names)
