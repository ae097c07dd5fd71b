"""The agent layer through the pyfuse3 Operations, called directly (no kernel).

Everything here goes through the handlers only (lookup, mkdir, open, write,
flush, release, readdir, rmdir, ...), as the kernel would call them: spawn,
the skeleton and the generated files' real sizes, transcript appends (all or
nothing per write, a partial line refused at close, tool_use/tool_result
pairing), config validated on write, inbox delivery, both control doors,
turn snapshots, read-only generated files, and errstr for every refusal that
has a reason. fsck runs on the store after every test (conftest.py).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import pytest
from agentfs.daemon.operations import Operations
from opsutil import CTX, ctl_open, errstr, fields, fuse_errno, listdir, run

from agentfs.posix.fs import ROOT_INO, FileSystem

USER = b'{"role":"user","content":"hello"}'
ASSISTANT = b'{"role":"assistant","content":"hi there"}'
TOOL_USE = (b'{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"sh",'
            b'"input":{"cmd":"ls"}}]}')
TOOL_RESULT_T1 = (b'{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1",'
                  b'"content":"a b c"}]}')
TOOL_RESULT_T9 = (b'{"role":"user","content":[{"type":"tool_result","tool_use_id":"t9",'
                  b'"content":"a b c"}]}')
APPEND = os.O_WRONLY | os.O_APPEND
SKELETON_FILES = {b"prompt", b"system", b"tools.json", b"transcript", b"config"}
SKELETON_DIRS = {b"notes", b"workspace", b"inbox"}
GENERATED = {b"ctl", b"errstr", b"status", b"parent", b"children", b"context.json"}


# ----------------------------------------------------------------- helpers


def lookup(ops: Operations, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
    return run(ops.lookup, parent, name, CTX)


def ino(ops: Operations, parent: int, *path: bytes) -> int:
    for name in path:
        parent = int(lookup(ops, parent, name).st_ino)
    return parent


def agents_dir(ops: Operations) -> int:
    try:
        return ino(ops, ROOT_INO, b"agents")
    except pyfuse3.FUSEError:
        return int(run(ops.mkdir, ROOT_INO, b"agents", 0o777, CTX).st_ino)


def spawn(ops: Operations, name: bytes) -> int:
    """mkdir agents/NAME: the agent's directory inode."""
    return int(run(ops.mkdir, agents_dir(ops), name, 0o755, CTX).st_ino)


def agent(ops: Operations, name: bytes) -> int:
    return ino(ops, agents_dir(ops), name)


def read(ops: Operations, file_ino: int) -> bytes:
    fi = run(ops.open, file_ino, os.O_RDONLY, CTX)
    try:
        return bytes(run(ops.read, fi.fh, 0, 1 << 24))
    finally:
        run(ops.release, fi.fh)


def cat(ops: Operations, parent: int, *path: bytes) -> bytes:
    return read(ops, ino(ops, parent, *path))


def names(ops: Operations, dir_ino: int) -> set[bytes]:
    return {n for n, _, _ in listdir(ops, dir_ino).entries} - {b".", b".."}


def refused(code: int, reason: str, ops: Operations, fn: Callable[..., Awaitable[Any]],
            *args: Any) -> str:
    """The call fails with `code`, and errstr (of its process) gives a reason
    that contains `reason`. Returns the errstr line."""
    assert fuse_errno(fn, *args) == code
    said = errstr(ops).decode()
    assert reason in said, f"errstr {said!r} lacks {reason!r}"
    return said


def write_ctl(ops: Operations, file_ino: int, line: bytes) -> None:
    """echo LINE > FILE (a control file): open, write, flush, release."""
    fi = run(ops.open, file_ino, os.O_WRONLY | os.O_TRUNC, CTX)
    try:
        assert run(ops.write, fi.fh, 0, line + b"\n") == len(line) + 1
        run(ops.flush, fi.fh)
    finally:
        run(ops.release, fi.fh)


def mount_ctl(ops: Operations, line: bytes) -> None:
    fh = ctl_open(ops)
    try:
        run(ops.write, fh, 0, line + b"\n")
    finally:
        run(ops.release, fh)


def append(ops: Operations, a: int, *lines: bytes) -> None:
    """echo LINES >> agents/X/transcript, in one write()."""
    fi = run(ops.open, ino(ops, a, b"transcript"), APPEND, CTX)
    data = b"".join(x + b"\n" for x in lines)
    try:
        assert run(ops.write, fi.fh, 0, data) == len(data)
        run(ops.flush, fi.fh)
    finally:
        run(ops.release, fi.fh)


def turns(ops: Operations, a: int) -> int:
    status = cat(ops, a, b"status").decode()
    return int(status.split("turns=")[1])


def is_agent(ops: Operations, name: bytes) -> bool:
    """Listed in agents/ and with the virtual files of an agent."""
    if name not in names(ops, agents_dir(ops)):
        return False
    a = agent(ops, name)
    return names(ops, a) >= GENERATED and cat(ops, a, b"status").startswith(b"idle")


# ----------------------------------------------------------------- spawn


def test_spawn_makes_the_skeleton(ops: Operations, readdir_recorder: None) -> None:
    a = spawn(ops, b"alice")
    e = run(ops.getattr, a, CTX)
    assert stat.S_ISDIR(e.st_mode)
    listed = names(ops, a)
    assert SKELETON_FILES | SKELETON_DIRS | GENERATED | {b"observations"} <= listed
    for n in SKELETON_FILES:
        assert stat.S_ISREG(lookup(ops, a, n).st_mode)
    for n in SKELETON_DIRS | {b"observations"}:
        assert stat.S_ISDIR(lookup(ops, a, n).st_mode)
    assert b"alice" in names(ops, agents_dir(ops))


def test_generated_files_report_their_real_size(ops: Operations,
                                                readdir_recorder: None) -> None:
    """tar, rsync and cp copy st_size bytes: a generated file must not say 0."""
    parent = spawn(ops, b"p")
    a = spawn(ops, b"kid")
    write_ctl(ops, ino(ops, a, b"parent"), b"p")
    append(ops, a, USER, ASSISTANT)
    for name in (b"context.json", b"status", b"parent"):
        content = cat(ops, a, name)
        assert content, name
        assert lookup(ops, a, name).st_size == len(content), name
        assert run(ops.getattr, ino(ops, a, name), CTX).st_size == len(content), name
    children = cat(ops, parent, b"children")
    assert children == b"kid\n"
    assert lookup(ops, parent, b"children").st_size == len(children)
    assert cat(ops, a, b"parent") == b"p\n"
    assert cat(ops, a, b"status") == b"idle turns=2\n"
    body = json.loads(cat(ops, a, b"context.json"))
    assert [m["role"] for m in body["messages"]][-2:] == ["user", "assistant"]
    # readdir hands out the same sizes as lookup.
    fh = run(ops.opendir, a, CTX)
    sizes: dict[bytes, int] = {}

    def reply(token: object, name: bytes, attr: pyfuse3.EntryAttributes, off: int) -> bool:
        sizes[name] = attr.st_size
        return True

    real, pyfuse3.readdir_reply = pyfuse3.readdir_reply, reply
    try:
        run(ops.readdir, fh, 0, object())
    finally:
        pyfuse3.readdir_reply = real
        run(ops.releasedir, fh)
    for name in (b"context.json", b"status", b"parent"):
        assert sizes[name] == len(cat(ops, a, name)), name


@pytest.mark.parametrize("bad", [b"-x", b".hidden", b"a b", b"x" * 65, "é".encode()])
def test_bad_agent_names_are_einval(ops: Operations, bad: bytes) -> None:
    d = agents_dir(ops)
    refused(errno.EINVAL, "must be 1-64 characters", ops, ops.mkdir, d, bad, 0o755, CTX)


def test_name_in_use_is_eexist(ops: Operations) -> None:
    spawn(ops, b"a")
    refused(errno.EEXIST, "exists", ops, ops.mkdir, agents_dir(ops), b"a", 0o755, CTX)


# ----------------------------------------------------------------- transcript


def test_transcript_without_o_append_is_refused(ops: Operations) -> None:
    a = spawn(ops, b"a")
    t = ino(ops, a, b"transcript")
    before = len(ops.handles)
    refused(errno.EPERM, "append-only", ops, ops.open, t, os.O_WRONLY, CTX)
    refused(errno.EPERM, "append-only", ops, ops.open, t, os.O_RDWR, CTX)
    assert len(ops.handles) == before


def test_several_lines_in_one_write_all_appended(ops: Operations) -> None:
    a = spawn(ops, b"a")
    append(ops, a, USER, ASSISTANT, USER)
    assert turns(ops, a) == 3
    assert cat(ops, a, b"transcript") == USER + b"\n" + ASSISTANT + b"\n" + USER + b"\n"
    assert lookup(ops, a, b"transcript").st_size == len(cat(ops, a, b"transcript"))


def test_one_invalid_line_refuses_the_whole_write(ops: Operations) -> None:
    a = spawn(ops, b"a")
    append(ops, a, USER)
    fi = run(ops.open, ino(ops, a, b"transcript"), APPEND, CTX)
    data = ASSISTANT + b"\n" + b'{"role":"robot","content":"x"}\n' + USER + b"\n"
    said = refused(errno.EINVAL, "none of the 3 lines", ops, ops.write, fi.fh, 0, data)
    assert "robot" in said or "role" in said
    # Nothing of the refused write stays pending: a valid write goes through.
    assert run(ops.write, fi.fh, 0, ASSISTANT + b"\n") == len(ASSISTANT) + 1
    run(ops.flush, fi.fh)
    run(ops.release, fi.fh)
    assert cat(ops, a, b"transcript") == USER + b"\n" + ASSISTANT + b"\n"
    assert turns(ops, a) == 2


def test_partial_line_is_refused_at_close(ops: Operations) -> None:
    a = spawn(ops, b"a")
    fi = run(ops.open, ino(ops, a, b"transcript"), APPEND, CTX)
    assert run(ops.write, fi.fh, 0, USER + b"\n" + ASSISTANT[:10]) == len(USER) + 11
    assert turns(ops, a) == 1  # the complete line is in
    refused(errno.EINVAL, "incomplete line refused at close", ops, ops.flush, fi.fh)
    run(ops.release, fi.fh)
    assert cat(ops, a, b"transcript") == USER + b"\n"


def test_partial_line_completed_by_the_next_write(ops: Operations) -> None:
    a = spawn(ops, b"a")
    fi = run(ops.open, ino(ops, a, b"transcript"), APPEND, CTX)
    run(ops.write, fi.fh, 0, USER[:7])
    run(ops.write, fi.fh, 0, USER[7:] + b"\n")
    run(ops.flush, fi.fh)
    run(ops.release, fi.fh)
    assert turns(ops, a) == 1


def test_partial_line_at_release_without_flush_sets_errstr(ops: Operations) -> None:
    a = spawn(ops, b"a")
    fi = run(ops.open, ino(ops, a, b"transcript"), APPEND, CTX)
    run(ops.write, fi.fh, 0, USER)  # no newline, and no flush (the opener passed it on)
    run(ops.release, fi.fh)  # release cannot fail: errstr says it
    assert b"incomplete line refused at close" in errstr(ops)
    assert cat(ops, a, b"transcript") == b""


def test_tool_result_must_answer_a_tool_use(ops: Operations) -> None:
    a = spawn(ops, b"a")
    append(ops, a, USER, TOOL_USE)
    fi = run(ops.open, ino(ops, a, b"transcript"), APPEND, CTX)
    refused(errno.EINVAL, "'t9' is not a tool_use id", ops, ops.write, fi.fh, 0,
            TOOL_RESULT_T9 + b"\n")
    assert run(ops.write, fi.fh, 0, TOOL_RESULT_T1 + b"\n") == len(TOOL_RESULT_T1) + 1
    run(ops.release, fi.fh)
    assert turns(ops, a) == 3
    # A tool_result with no tool_use at all before it.
    b = spawn(ops, b"b")
    fi = run(ops.open, ino(ops, b, b"transcript"), APPEND, CTX)
    refused(errno.EINVAL, "holds no tool_use", ops, ops.write, fi.fh, 0,
            TOOL_RESULT_T1 + b"\n")
    run(ops.release, fi.fh)
    assert turns(ops, b) == 0


# ----------------------------------------------------------------- config


def test_config_shows_the_defaults(ops: Operations) -> None:
    a = spawn(ops, b"a")
    text = cat(ops, a, b"config").decode()
    for key in ("budget_tokens 150000", "observation_threshold_bytes 4096",
                "keep_recent_turns 6"):
        assert key in text
    assert text.count("#") >= 6  # every key comes with a comment


def test_config_typo_is_refused_and_leaves_it_unchanged(ops: Operations) -> None:
    a = spawn(ops, b"a")
    c = ino(ops, a, b"config")
    before = cat(ops, a, b"config")
    fi = run(ops.open, c, os.O_WRONLY, CTX)
    said = refused(errno.EINVAL, "budget_tokns", ops, ops.write, fi.fh, 0,
                   b"budget_tokns 5000\n")
    assert "known keys" in said and "budget_tokens" in said
    said = refused(errno.EINVAL, "keep_recent_turns", ops, ops.write, fi.fh, 0,
                   b"keep_recent_turns -3\n")
    run(ops.release, fi.fh)
    assert cat(ops, a, b"config") == before
    assert lookup(ops, a, b"config").st_size == len(before)
    # A valid change goes through, and context.json still renders.
    fi = run(ops.open, c, os.O_WRONLY | os.O_TRUNC, CTX)
    run(ops.write, fi.fh, 0, b"budget_tokens 5000\n")
    run(ops.release, fi.fh)
    assert cat(ops, a, b"config") == b"budget_tokens 5000\n"
    json.loads(cat(ops, a, b"context.json"))


# ----------------------------------------------------------------- inbox


def test_inbox_delivery(ops: Operations, readdir_recorder: None) -> None:
    a = spawn(ops, b"a")
    box = ino(ops, a, b"inbox")
    fi, e = run(ops.create, box, b"hello", 0o644, os.O_WRONLY, CTX)
    # Not listed while it is being written.
    assert names(ops, box) == set()
    run(ops.write, fi.fh, 0, b"the message")
    run(ops.flush, fi.fh)
    run(ops.release, fi.fh)
    delivered = sorted(names(ops, box))
    assert len(delivered) == 1
    seq, rest = delivered[0].split(b"-", 1)
    assert len(seq) >= 6 and seq.isdigit()
    assert rest.endswith(b"+hello")
    assert cat(ops, box, delivered[0]) == b"the message"
    # A second message comes after it.
    fi, _ = run(ops.create, box, b"again", 0o644, os.O_WRONLY, CTX)
    run(ops.write, fi.fh, 0, b"2")
    run(ops.flush, fi.fh)
    run(ops.release, fi.fh)
    later = sorted(names(ops, box))
    assert later[0] == delivered[0] and later[1].endswith(b"+again") and later[1] > later[0]
    # Consume: rm.
    run(ops.unlink, box, delivered[0], CTX)
    assert sorted(names(ops, box)) == later[1:]
    run(ops.forget, [(e.st_ino, 2)])


# ----------------------------------------------------------------- agent ctl


def test_agent_ctl_fork_now_and_at_turn(ops: Operations, readdir_recorder: None) -> None:
    a = spawn(ops, b"a")
    append(ops, a, USER, ASSISTANT, USER)
    ctl = ino(ops, a, b"ctl")
    write_ctl(ops, ctl, b"fork b")
    assert is_agent(ops, b"b")
    b = agent(ops, b"b")
    assert turns(ops, b) == 3
    assert cat(ops, b, b"transcript") == cat(ops, a, b"transcript")
    write_ctl(ops, ctl, b"fork c at 2")
    c = agent(ops, b"c")
    assert turns(ops, c) == 2
    assert cat(ops, c, b"transcript") == USER + b"\n" + ASSISTANT + b"\n"
    assert cat(ops, a, b"children") == b"b\nc\n"
    fi = run(ops.open, ctl, os.O_WRONLY, CTX)
    refused(errno.ENOENT, "turns 1..3", ops, ops.write, fi.fh, 0, b"fork d at 7\n")
    refused(errno.EEXIST, "exists", ops, ops.write, fi.fh, 0, b"fork b\n")
    refused(errno.EINVAL, "unknown command", ops, ops.write, fi.fh, 0, b"frob\n")
    run(ops.release, fi.fh)
    assert b"d" not in names(ops, agents_dir(ops))


def test_agent_ctl_snapshot_status_remove(ops: Operations, fs: FileSystem,
                                          readdir_recorder: None) -> None:
    a = spawn(ops, b"a")
    append(ops, a, USER)
    ctl = ino(ops, a, b"ctl")
    write_ctl(ops, ctl, b"snapshot before")
    sd = ino(ops, a, b".snapshots")
    assert b"before" in names(ops, sd)
    write_ctl(ops, ctl, b"status running")
    assert cat(ops, a, b"status") == b"running turns=1\n"
    fi = run(ops.open, ctl, os.O_WRONLY, CTX)
    refused(errno.EINVAL, "status must be one of", ops, ops.write, fi.fh, 0,
            b"status sleepy\n")
    run(ops.release, fi.fh)
    write_ctl(ops, ctl, b"remove")
    assert ops.gc_wanted
    assert b"a" not in names(ops, agents_dir(ops))
    # The name is free again: a new agent.
    a2 = spawn(ops, b"a")
    assert turns(ops, a2) == 0


# ----------------------------------------------------------------- .agentfs/ctl


def test_mount_ctl_fork_of_an_agent_is_an_agent(ops: Operations,
                                                readdir_recorder: None) -> None:
    a = spawn(ops, b"a")
    append(ops, a, USER, ASSISTANT)
    mount_ctl(ops, b"fork agents/a agents/b")
    assert is_agent(ops, b"b")
    b = agent(ops, b"b")
    assert turns(ops, b) == 2
    assert cat(ops, b, b"transcript") == cat(ops, a, b"transcript")
    mount_ctl(ops, b"fork agents/a agents/c at 1")
    assert turns(ops, agent(ops, b"c")) == 1
    # detach of an agent removes the agent: its name is free again.
    mount_ctl(ops, b"detach agents/b")
    assert b"b" not in names(ops, agents_dir(ops))
    assert turns(ops, spawn(ops, b"b")) == 0


def test_mount_ctl_refuses_an_agent_fork_outside_agents(ops: Operations, fs: FileSystem,
                                                        readdir_recorder: None) -> None:
    spawn(ops, b"a")
    before = names(ops, ROOT_INO)
    fh = ctl_open(ops)
    said = refused(errno.EINVAL, "agents/NEW", ops, ops.write, fh, 0,
                   b"fork agents/a elsewhere\n")
    assert "fork agents/a" in said
    refused(errno.EINVAL, "at TURN", ops, ops.write, fh, 0, b"fork agents/a agents/z 1\n")
    refused(errno.EEXIST, "exists", ops, ops.write, fh, 0, b"fork agents/a agents/a\n")
    run(ops.release, fh)
    # A failed command changes nothing.
    assert names(ops, ROOT_INO) == before
    assert names(ops, agents_dir(ops)) == {b"a"}
    # A plain directory inside an agent forks as a plain directory.
    mount_ctl(ops, b"fork agents/a/workspace ws-copy")
    assert b"ws-copy" in names(ops, ROOT_INO)


# ----------------------------------------------------------------- rmdir and snapshots


def test_rmdir_removes_the_whole_agent(ops: Operations, readdir_recorder: None) -> None:
    a = spawn(ops, b"a")
    append(ops, a, USER)
    ws = ino(ops, a, b"workspace")
    fi, _ = run(ops.create, ws, b"f", 0o644, os.O_WRONLY, CTX)
    run(ops.write, fi.fh, 0, b"data")
    run(ops.release, fi.fh)
    run(ops.rmdir, agents_dir(ops), b"a", CTX)
    assert names(ops, agents_dir(ops)) == set()
    assert fuse_errno(ops.lookup, agents_dir(ops), b"a", CTX) == errno.ENOENT
    assert turns(ops, spawn(ops, b"a")) == 0


def test_rm_r_of_an_agent_removes_nothing(ops: Operations, readdir_recorder: None) -> None:
    """rm -r unlinks the generated files first: refused, and then every
    removal inside that agent by the same process is refused too."""
    a = spawn(ops, b"a")
    ws = ino(ops, a, b"workspace")
    fi, _ = run(ops.create, ws, b"f", 0o644, os.O_WRONLY, CTX)
    run(ops.release, fi.fh)
    refused(errno.EPERM, "rmdir agents/a", ops, ops.unlink, a, b"context.json", CTX)
    refused(errno.EPERM, "stays whole", ops, ops.unlink, ws, b"f", CTX)
    assert names(ops, ws) == {b"f"}


def test_turn_snapshots_are_listed_and_kept(ops: Operations, readdir_recorder: None) -> None:
    a = spawn(ops, b"a")
    append(ops, a, USER)
    append(ops, a, ASSISTANT)
    append(ops, a, USER)
    sd = ino(ops, a, b".snapshots")
    assert names(ops, sd) == {b"turn-1", b"turn-2", b"turn-3"}
    assert cat(ops, sd, b"turn-2", b"transcript") == USER + b"\n" + ASSISTANT + b"\n"
    refused(errno.EPERM, "append-only", ops, ops.rmdir, sd, b"turn-2", CTX)
    assert names(ops, sd) == {b"turn-1", b"turn-2", b"turn-3"}
    # Turn snapshots are read-only like any other.
    t = ino(ops, sd, b"turn-1", b"transcript")
    refused(errno.EROFS, "read-only", ops, ops.open, t, APPEND, CTX)


def test_fork_keeps_its_history_when_the_origin_goes(ops: Operations,
                                                     readdir_recorder: None) -> None:
    a = spawn(ops, b"a")
    append(ops, a, USER, ASSISTANT)
    append(ops, a, USER)
    write_ctl(ops, ino(ops, a, b"ctl"), b"fork f at 2")
    f = agent(ops, b"f")
    seen = cat(ops, f, b".snapshots", b"turn-1", b"transcript")
    run(ops.rmdir, agents_dir(ops), b"a", CTX)
    assert names(ops, ino(ops, f, b".snapshots")) == {b"turn-1", b"turn-2"}
    assert cat(ops, f, b".snapshots", b"turn-1", b"transcript") == seen
    write_ctl(ops, ino(ops, f, b"ctl"), b"fork g at 1")
    assert cat(ops, agent(ops, b"g"), b"transcript") == USER + b"\n"


# ----------------------------------------------------------------- read-only generated files


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC])
def test_generated_files_refuse_writes_with_eacces(ops: Operations, flags: int) -> None:
    a = spawn(ops, b"a")
    before = len(ops.handles)
    for name in (b"context.json", b"status", b"children"):
        refused(errno.EACCES, "read-only", ops, ops.open, ino(ops, a, name), flags, CTX)
    guide = ino(ops, ROOT_INO, b"AGENTS.md")
    refused(errno.EACCES, "AGENTS.md", ops, ops.open, guide, flags, CTX)
    assert len(ops.handles) == before


def test_generated_files_refuse_other_changes(ops: Operations) -> None:
    a = spawn(ops, b"a")
    guide = ino(ops, ROOT_INO, b"AGENTS.md")
    attr = pyfuse3.EntryAttributes()
    for target in (guide, ino(ops, a, b"context.json"), ino(ops, a, b"status")):
        code = fuse_errno(ops.setattr, target, attr, fields(update_size=True), None, CTX)
        assert code in (errno.EACCES, errno.EPERM, errno.EROFS)
        assert fuse_errno(ops.setxattr, target, b"user.k", b"v", CTX) == errno.ENOTSUP
    refused(errno.EPERM, "AGENTS.md", ops, ops.unlink, ROOT_INO, b"AGENTS.md", CTX)
    assert fuse_errno(ops.rename, ROOT_INO, b"AGENTS.md", ROOT_INO, b"x", 0, CTX) in (
        errno.EPERM, errno.EACCES)
    assert cat(ops, ROOT_INO, b"AGENTS.md").startswith(b"#")


def test_failed_open_of_context_json_leaks_no_handle(ops: Operations) -> None:
    a = spawn(ops, b"a")
    tools = ino(ops, a, b"tools.json")
    fi = run(ops.open, tools, os.O_WRONLY | os.O_TRUNC, CTX)
    run(ops.write, fi.fh, 0, b"not json")
    run(ops.release, fi.fh)
    before = len(ops.handles)
    for _ in range(3):
        refused(errno.EINVAL, "tools.json is not valid JSON", ops, ops.open,
                ino(ops, a, b"context.json"), os.O_RDONLY, CTX)
    assert len(ops.handles) == before


# ----------------------------------------------------------------- errstr


def test_agent_errstr_file_gives_the_reason(ops: Operations) -> None:
    a = spawn(ops, b"a")
    fi = run(ops.open, ino(ops, a, b"ctl"), os.O_WRONLY, CTX)
    assert fuse_errno(ops.write, fi.fh, 0, b"frobnicate\n") == errno.EINVAL
    run(ops.release, fi.fh)
    said = cat(ops, a, b"errstr")
    assert b"agents/a/ctl: frobnicate" in said and b"unknown command" in said


def test_every_refusal_with_a_reason_reaches_errstr(ops: Operations) -> None:
    """Each failing call leaves its own reason (a later failure replaces it)."""
    a = spawn(ops, b"a")
    d = agents_dir(ops)
    append(ops, a, USER)
    cases: list[tuple[int, str, Callable[..., Awaitable[Any]], tuple[Any, ...]]] = [
        (errno.EINVAL, "must be 1-64", ops.mkdir, (d, b"-bad", 0o755, CTX)),
        (errno.EEXIST, "exists", ops.mkdir, (d, b"a", 0o755, CTX)),
        (errno.EPERM, "append-only", ops.open, (ino(ops, a, b"transcript"), os.O_WRONLY,
                                                CTX)),
        (errno.EPERM, "frozen", ops.open, (ino(ops, a, b"prompt"), os.O_WRONLY, CTX)),
        (errno.EACCES, "read-only", ops.open, (ino(ops, a, b"status"), os.O_WRONLY, CTX)),
        (errno.EPERM, "generated", ops.unlink, (a, b"status", CTX)),
        (errno.EPERM, "skeleton", ops.rename, (a, b"config", a, b"config2", 0, CTX)),
        (errno.EPERM, "append-only", ops.rmdir, (ino(ops, a, b".snapshots"), b"turn-1",
                                                 CTX)),
    ]
    for code, reason, fn, args in cases:
        refused(code, reason, ops, fn, *args)


def test_generated_names_cannot_be_taken_or_moved(ops: Operations,
                                                  readdir_recorder: None) -> None:
    """A stored file under a generated file's name would hide behind it (lookup)
    and be listed twice (readdir): such names are taken (EEXIST), and a
    generated file cannot be renamed away (EPERM)."""
    a = spawn(ops, b"a")
    box = ino(ops, a, b"inbox")
    ws = ino(ops, a, b"workspace")
    x, fh = (lambda r: (int(r[1].st_ino), int(r[0].fh)))(
        run(ops.create, ws, b"x", 0o644, os.O_WRONLY, CTX))
    run(ops.release, fh)
    for parent, name in ((a, b"status"), (a, b"context.json"), (a, b"observations"),
                         (ROOT_INO, b"AGENTS.md"), (box, b".wait"), (box, b".wait-5")):
        refused(errno.EEXIST, "generated by agentfs", ops, ops.create, parent, name, 0o644,
                os.O_WRONLY, CTX)
        refused(errno.EEXIST, "generated by agentfs", ops, ops.mkdir, parent, name, 0o755,
                CTX)
        refused(errno.EEXIST, "generated by agentfs", ops, ops.symlink, parent, name, b"t",
                CTX)
        refused(errno.EEXIST, "generated by agentfs", ops, ops.mknod, parent, name,
                stat.S_IFIFO | 0o600, 0, CTX)
        refused(errno.EEXIST, "generated by agentfs", ops, ops.link, x, parent, name, CTX)
        refused(errno.EEXIST, "generated by agentfs", ops, ops.rename, ws, b"x", parent, name,
                0, CTX)
    for parent, name in ((a, b"status"), (a, b"ctl"), (ROOT_INO, b"AGENTS.md")):
        refused(errno.EPERM, "generated by agentfs", ops, ops.rename, parent, name, ws,
                b"moved", 0, CTX)
    assert names(ops, ws) == {b"x"}
    listed = [n for n, _, _ in listdir(ops, a).entries]
    assert len(listed) == len(set(listed))


def test_agent_ctl_runs_a_last_line_without_newline(ops: Operations) -> None:
    """`echo -n 'status running' > ctl`: the line is run at close, as on .agentfs/ctl."""
    a = spawn(ops, b"a")
    fi = run(ops.open, ino(ops, a, b"ctl"), os.O_WRONLY, CTX)
    run(ops.write, fi.fh, 0, b"status running")
    assert cat(ops, a, b"status") == b"idle turns=0\n"
    run(ops.flush, fi.fh)
    run(ops.release, fi.fh)
    assert cat(ops, a, b"status") == b"running turns=0\n"
    fi = run(ops.open, ino(ops, a, b"ctl"), os.O_WRONLY, CTX)
    run(ops.write, fi.fh, 0, b"status nope")
    refused(errno.EINVAL, "status must be one of", ops, ops.flush, fi.fh)
    run(ops.release, fi.fh)


# ----------------------------------------------------------------- every handler, every kind


def _virtual_inodes(ops: Operations) -> dict[str, int]:
    from agentfs.daemon import inodes
    from agentfs.daemon.inodes import Kind

    a = spawn(ops, b"a")
    append(ops, a, USER)
    box = ino(ops, a, b"inbox")
    found = {n.decode(): ino(ops, a, n) for n in GENERATED | {b"observations"}}
    found |= {
        ".agentfs": ino(ops, ROOT_INO, b".agentfs"),
        ".agentfs/ctl": ino(ops, ROOT_INO, b".agentfs", b"ctl"),
        ".agentfs/errstr": ino(ops, ROOT_INO, b".agentfs", b"errstr"),
        ".agentfs/lineage": ino(ops, ROOT_INO, b".agentfs", b"lineage"),
        ".agentfs/events": ino(ops, ROOT_INO, b".agentfs", b"events"),
        ".snapshots": ino(ops, a, b".snapshots"),
        "AGENTS.md": ino(ops, ROOT_INO, b"AGENTS.md"),
        "inbox/.wait-0": ino(ops, box, b".wait-0"),
        "stale snapdir": inodes.encode(Kind.SNAPDIR, 999),
        "gone agent": inodes.encode(Kind.AGENT_FILE, 999, 1),
        "gone observation": inodes.encode(Kind.OBSERVATION, 999, 1, 0),
        "no kind": inodes.VIRTUAL | 0x7F << inodes.KIND_SHIFT,
    }
    return found


def test_every_handler_on_every_virtual_kind_fails_cleanly(ops: Operations,
                                                           readdir_recorder: None) -> None:
    """Whatever the kernel asks of a virtual inode, the answer is a result or
    a meaningful errno: never EIO (an unexpected error inside the daemon)."""
    f, fh = (lambda r: (int(r[1].st_ino), int(r[0].fh)))(
        run(ops.create, ROOT_INO, b"f", 0o644, os.O_WRONLY, CTX))
    run(ops.release, fh)
    attr = pyfuse3.EntryAttributes()
    for what, v in _virtual_inodes(ops).items():
        calls: list[tuple[str, Callable[..., Awaitable[Any]], tuple[Any, ...]]] = [
            ("lookup", ops.lookup, (v, b"x", CTX)),
            ("getattr", ops.getattr, (v, CTX)),
            ("chmod", ops.setattr, (v, attr, fields(update_mode=True), None, CTX)),
            ("truncate", ops.setattr, (v, attr, fields(update_size=True), None, CTX)),
            ("readlink", ops.readlink, (v, CTX)),
            ("mknod", ops.mknod, (v, b"x", stat.S_IFIFO | 0o600, 0, CTX)),
            ("mkdir", ops.mkdir, (v, b"x", 0o755, CTX)),
            ("symlink", ops.symlink, (v, b"x", b"t", CTX)),
            ("create", ops.create, (v, b"x", 0o644, os.O_WRONLY, CTX)),
            ("unlink", ops.unlink, (v, b"x", CTX)),
            ("rmdir", ops.rmdir, (v, b"x", CTX)),
            ("rename from", ops.rename, (v, b"x", ROOT_INO, b"y", 0, CTX)),
            ("rename into", ops.rename, (ROOT_INO, b"f", v, b"y", 0, CTX)),
            ("link", ops.link, (v, ROOT_INO, b"z", CTX)),
            ("link into", ops.link, (f, v, b"z", CTX)),
            ("open", ops.open, (v, os.O_RDONLY, CTX)),
            ("open for writing", ops.open, (v, os.O_WRONLY, CTX)),
            ("opendir", ops.opendir, (v, CTX)),
            ("setxattr", ops.setxattr, (v, b"user.k", b"v", CTX)),
            ("getxattr", ops.getxattr, (v, b"user.k", CTX)),
            ("listxattr", ops.listxattr, (v, CTX)),
            ("removexattr", ops.removexattr, (v, b"user.k", CTX)),
        ]
        for call, fn, args in calls:
            try:
                result = run(fn, *args)
            except pyfuse3.FUSEError as e:
                assert e.errno != errno.EIO, f"{call} on {what}: EIO"
                continue
            # What succeeded is cleaned up like the kernel would.
            if call in ("open", "open for writing"):
                run(ops.release, result.fh)
            elif call == "opendir":
                listdir(ops, v)
                run(ops.releasedir, result)
            elif call == "create":
                run(ops.release, result[0].fh)
    assert b"f" in names(ops, ROOT_INO)


def test_parent_is_written_once_and_ctl_may_be_truncated(ops: Operations) -> None:
    spawn(ops, b"p")
    spawn(ops, b"q")
    a = spawn(ops, b"kid")
    par = ino(ops, a, b"parent")
    attr = pyfuse3.EntryAttributes()
    run(ops.setattr, ino(ops, a, b"ctl"), attr, fields(update_size=True, update_mtime=True),
        None, CTX)  # `>` may truncate first: allowed, changes nothing
    write_ctl(ops, par, b"p")
    fi = run(ops.open, par, os.O_WRONLY, CTX)
    refused(errno.EEXIST, "parent is already p", ops, ops.write, fi.fh, 0, b"q\n")
    run(ops.release, fi.fh)
    assert cat(ops, a, b"parent") == b"p\n"


def test_mknod_in_an_inbox_is_refused(ops: Operations) -> None:
    """Only regular files made with create are messages (staged, then delivered)."""
    a = spawn(ops, b"a")
    inbox = ino(ops, a, b"inbox")
    refused(errno.EPERM, "create them as regular files", ops, ops.mknod, inbox, b"fifo",
            stat.S_IFIFO | 0o644, 0, CTX)
