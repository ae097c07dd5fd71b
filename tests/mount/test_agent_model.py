"""Model-based test of the agent layer: the twin of test_differential.py.

A hypothesis state machine drives a real agentfs mount only through paths
(mkdir/rmdir/open/write/read/unlink/listdir, the agents' `ctl` files and
`MOUNT/.agentfs/ctl`) and a plain-Python model of the agent namespace
(agent_model.py) side by side: spawn (valid, invalid and taken names),
transcript appends (valid lines, invalid lines, multi-line writes holding one
invalid line, unmatched tool_result, a last line without its newline, a line
split over two writes), prompt writes, workspace writes and deletes, messages
sent and consumed, forks now and at turn N through both doors, plain
directory forks, forks refused for a bad destination, named snapshots,
`rmdir` of a turn snapshot, status, remove through all three doors
(`echo remove > ctl`, `detach` on the mount ctl, `rmdir agents/X`),
`rm -rf agents/X`, remount and SIGKILL + remount.

Every operation's outcome (success, or the errno: EEXIST, EINVAL, ENOENT,
EPERM) must be the model's, a failed command must leave a reason in errstr,
and after every step the whole namespace is compared with the model: `ls
agents`, `.agentfs/lineage`, each agent's directory listing (its skeleton),
transcript bytes, `status` (STATE turns=N), prompt, workspace (listing and
contents), inbox (names parse as SEQ-SENDER+NAME with increasing SEQ; NAME
parts, order and contents), the `.snapshots` listing (turn-1..turn-T plus
named ones), one turn snapshot (rotating through the turns) and the sizes
that generated files report. `agentfs fsck --store STORE` runs after every
step (AGENTFS_MODEL_FSCK_EVERY=N for every N-th) and must be clean.

SIGKILL + remount must leave the model unchanged: every agent operation is a
committed LMDB transaction when it returns (README "Durability": "Every
completed operation survives a SIGKILL of the daemon"; test_crash.py checks
the same promise for POSIX operations without fsync), and only the daemon
dies, not the machine.

Each example gets a fresh store and mount. Size: AGENTFS_MODEL_EXAMPLES
(default 25) examples of AGENTFS_MODEL_STEPS (default 30) steps, about 2-3
minutes when everything passes; run it large once with
AGENTFS_MODEL_EXAMPLES=300. A failure is shrunk (hypothesis gives up after 5
minutes, each example costing a mount); AGENTFS_MODEL_SHRINK=0 reports the
first failing sequence at once. Every example starts from 1-3 agents with a
few turns (populate), and rule arguments mostly name an existing agent
(`pick`), so that few steps are spent on agents that do not exist.

AGENTFS_MODEL_SKIP=tag,tag leaves out a check or an operation variant (tags
in TAGS below), only to look past one known defect to the next while fixing;
by default nothing is skipped. E.g. to see past every defect known on the
`layout` branch:

    AGENTFS_MODEL_SKIP=config,sizes,mount-fork,mount-fork-at,bad-fork,rm-rf,snapls,\
    tool-pairing,multi-invalid,detach,rmdir-turn,rmdir-agent,readonly,config-validate,\
    remove-origin
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from agent_model import (
    CONFIG_KEYS,
    INVALID_KINDS,
    NAME_RE,
    SKELETON,
    STATUSES,
    VALID_KINDS,
    AgentM,
    Model,
    ctl_write,
    errname,
    lineage,
    lines_ok,
    make_line,
    parse_inbox,
    read_bytes,
    read_tree,
    stamp_now,
    write_file,
)
from conftest import Mount
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

pytestmark = pytest.mark.agentfs_only

EXAMPLES = int(os.environ.get("AGENTFS_MODEL_EXAMPLES", "25"))
STEPS = int(os.environ.get("AGENTFS_MODEL_STEPS", "30"))
FSCK_EVERY = int(os.environ.get("AGENTFS_MODEL_FSCK_EVERY", "1"))
SHRINK = os.environ.get("AGENTFS_MODEL_SHRINK", "1") != "0"  # 0: report unshrunk, faster
MAX_RESTARTS = 3  # remounts + SIGKILLs per example (each costs ~0.5 s)

TAGS = {
    # checks
    "skeleton": "each agent directory lists exactly the skeleton",
    "lineage": ".agentfs/lineage lists exactly the agents, with kind/origin/turns",
    "snapls": ".snapshots lists turn-1..turn-T and the named snapshots",
    "turnsnap": "one .snapshots/turn-K per agent and step matches the model",
    "sizes": "generated files report their real size",
    "config": "a fresh agent's config shows every key",
    "errstr": "a failed command leaves a fresh reason in errstr",
    # operation variants
    "mount-fork": "forks through .agentfs/ctl",
    "mount-fork-at": "forks at turn N through .agentfs/ctl",
    "bad-fork": "mount-level forks refused for a bad destination or an epoch",
    "detach": "remove through `detach agents/X`",
    "rmdir-agent": "remove through `rmdir agents/X`",
    "rm-rf": "rm -rf agents/X",
    "remove-origin": "removing an agent that has live forks",
    "multi-invalid": "multi-line writes with an invalid line",
    "tool-pairing": "tool_result lines (paired or not)",
    "partial-close": "a last line without its newline, refused at close",
    "rmdir-turn": "rmdir of a turn snapshot",
    "config-validate": "invalid config writes",
    "readonly": "writes to read-only generated files",
}
SKIP = {t for t in os.environ.get("AGENTFS_MODEL_SKIP", "").split(",") if t}
assert set(TAGS) >= SKIP, f"unknown AGENTFS_MODEL_SKIP tags: {SKIP - set(TAGS)}"

# CI runs the same examples every time (a red CI then means a regression, not
# a lucky draw); AGENTFS_MODEL_RANDOM=1, or a large run, explores anew.
RANDOM = bool(os.environ.get("AGENTFS_MODEL_RANDOM")) or "AGENTFS_MODEL_EXAMPLES" in os.environ

SETTINGS = settings(
    derandomize=not RANDOM,
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=None,
    print_blob=True,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, *([Phase.shrink] if SHRINK else [])],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)

NAMES = ["a", "b", "c", "d", "e"]
BAD_NAMES = ["-x", ".hidden", "a+b", "x" * 65, "é", "_u"]
names = st.sampled_from(NAMES)
any_names = st.one_of(names, names, st.sampled_from(BAD_NAMES))
who = st.integers(0, 99)  # mostly an existing agent: see AgentMachine.pick
FILES = ["f", "g", "h"]
NESTED = ["w1", "w2"]
SNAPS = ["s1", "s2"]
MSGS = ["hello", "m", "m", "re: x"]
IDS = ["t1", "t2"]
contents = st.binary(min_size=0, max_size=300)
line_specs = st.lists(
    st.tuples(st.sampled_from(VALID_KINDS * 3 + INVALID_KINDS), st.sampled_from(IDS)),
    min_size=1, max_size=3)
turn_numbers = st.integers(0, 7)


class Mismatch(AssertionError):
    pass


def outcome(fn) -> int | None:
    """None if fn() succeeded, else its errno."""
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


class AgentMachine(RuleBasedStateMachine):
    def __init__(self, base: Path) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=base, prefix="ex-"))
        self.mount = Mount(self.dir / "mnt", self.dir / "store")
        self.mount.start()
        self.mnt = self.mount.path
        assert (self.mnt / "agents").is_dir()  # every mount has it
        self.model = Model()
        self.steps = 0
        self.restarts = 0

    # ------------------------------------------------------------ helpers

    def pick(self, n: int | str) -> str:
        """n < 85: an existing agent (if any), else any name of the pool (a
        name passes through: populate calls the rules directly)."""
        if isinstance(n, str):
            return n
        if n < 85 and self.agents:
            return sorted(self.agents)[n % len(self.agents)]
        return NAMES[n % len(NAMES)]

    def agent(self, name: str) -> Path:
        return self.mnt / "agents" / name

    @property
    def agents(self) -> dict[str, AgentM]:
        return self.model.agents

    def errstr(self) -> str:
        return read_bytes(self.mnt / ".agentfs" / "errstr").decode(errors="replace")

    def expect(self, what: str, fn, expected: set[int] | None, reason: bool = True) -> bool:
        """Run fn; it must succeed (expected None) or fail with an errno in
        `expected`. A failure through a daemon door must leave a fresh reason
        in errstr (`reason`). Returns whether it succeeded."""
        before = self.errstr() if expected and reason and "errstr" not in SKIP else None
        got = outcome(fn)
        if expected is None and got is not None:
            raise Mismatch(f"{what}: failed with {errname(got)}, the model says it succeeds")
        if expected is not None and got not in expected:
            raise Mismatch(f"{what}: {'succeeded' if got is None else errname(got)}, "
                           f"the model says {'/'.join(sorted(map(errname, expected)))}")
        if before is not None and got is not None:
            after = self.errstr()
            if not after.strip() or (after == before and not after.startswith(stamp_now())):
                raise Mismatch(f"[errstr] {what} failed with {errname(got)} but errstr gives "
                               f"no fresh reason: {after!r}")
        return got is None

    @initialize(setup=st.lists(st.tuples(st.integers(0, 3), contents), min_size=1, max_size=3))
    def populate(self, setup):
        """Start from a few agents with some turns and a file, made through the
        rules themselves, so that most steps meet agents with a history."""
        for name, (turns, data) in zip(NAMES, setup, strict=False):
            self.spawn(name)
            self.ws_write(name, "f", data)
            for i in range(turns):
                self.append(name, [("user" if i % 2 == 0 else "assistant", f"p{i}")], "one", 0)

    # ------------------------------------------------------------ spawn

    @rule(name=any_names)
    def spawn(self, name):
        expected = ({errno.EINVAL} if not NAME_RE.match(name)
                    else {errno.EEXIST} if name in self.agents else None)
        # An EEXIST may come from the kernel's dentry cache: no reason then.
        ok = self.expect(f"mkdir agents/{name}", lambda: os.mkdir(self.agent(name)), expected,
                         reason=expected != {errno.EEXIST})
        if ok:
            self.agents[name] = AgentM(name)
            if "config" not in SKIP:
                cfg = read_bytes(self.agent(name) / "config").decode()
                missing = [k for k in CONFIG_KEYS if k not in cfg]
                assert not missing, f"[config] a fresh config lacks {missing}: {cfg!r}"

    # ------------------------------------------------------------ transcript

    @rule(name=who, specs=line_specs, mode=st.sampled_from(["one", "one", "split", "partial"]),
          cut=st.integers(0, 10**6))
    def append(self, name, specs, mode, cut):
        name = self.pick(name)
        lines = [make_line(k, i) for k, i in specs]
        if "tool-pairing" in SKIP and any(k == "tool_result" for k, _ in specs):
            return
        a = self.agents.get(name)
        path = self.agent(name) / "transcript"
        if a is None:
            self.expect(f"open agents/{name}/transcript", lambda: os.close(os.open(
                path, os.O_WRONLY | os.O_APPEND)), {errno.ENOENT}, reason=False)
            return
        valid = lines_ok(a.turns, lines)
        if mode == "split" and not valid:
            mode = "one"
        if mode == "one":
            if not valid and len(lines) > 1 and "multi-invalid" in SKIP:
                return
            data = b"".join(lines)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                self.expect(f"write {data!r} to agents/{name}/transcript",
                            lambda: os.write(fd, data), None if valid else {errno.EINVAL})
            finally:
                os.close(fd)
            if valid:
                a.append(lines)
        elif mode == "split":
            data = b"".join(lines)
            k = 1 + cut % (len(data) - 1)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                for piece in (data[:k], data[k:]):
                    self.expect(f"write {piece!r} to agents/{name}/transcript (a line split "
                                "over two writes)", lambda p=piece: os.write(fd, p), None)
            finally:
                os.close(fd)
            a.append(lines)
        else:  # the last line lacks its newline: pending, refused loudly at close
            if "partial-close" in SKIP:
                return
            whole, partial = lines[:-1], lines[-1][:-1]
            whole_ok = lines_ok(a.turns, whole)
            if not whole_ok and len(whole) + 1 > 1 and "multi-invalid" in SKIP:
                return
            data = b"".join(whole) + partial
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            closed = False
            try:
                wrote = self.expect(f"write {data!r} to agents/{name}/transcript",
                                    lambda: os.write(fd, data),
                                    None if whole_ok else {errno.EINVAL})
                closed = True
                # After a refused write nothing should be pending, but a
                # loud refusal of the rest at close is acceptable too.
                self.expect(f"close agents/{name}/transcript with {partial!r} pending "
                            "(no newline)", lambda: os.close(fd),
                            {errno.EINVAL} if wrote else {errno.EINVAL, None})  # type: ignore[arg-type]
            finally:
                if not closed:
                    os.close(fd)
            if whole_ok:
                a.append(whole)

    @rule(name=who, data=contents)
    def write_prompt(self, name, data):
        name = self.pick(name)
        a = self.agents.get(name)
        expected = {errno.ENOENT} if a is None else {errno.EPERM} if a.turns else None
        if self.expect(f"write agents/{name}/prompt", lambda: write_file(
                self.agent(name) / "prompt", data), expected, reason=a is not None):
            assert a is not None
            a.prompt = data

    # ------------------------------------------------------------ workspace

    @rule(name=who, f=st.sampled_from(FILES), data=contents)
    def ws_write(self, name, f, data):
        name = self.pick(name)
        a = self.agents.get(name)
        if self.expect(f"write agents/{name}/workspace/{f}", lambda: write_file(
                self.agent(name) / "workspace" / f, data),
                {errno.ENOENT} if a is None else None, reason=False):
            assert a is not None
            a.now.files[f] = data

    @rule(name=who, f=st.sampled_from(FILES))
    def ws_delete(self, name, f):
        name = self.pick(name)
        a = self.agents.get(name)
        ok = self.expect(f"rm agents/{name}/workspace/{f}",
                         lambda: os.unlink(self.agent(name) / "workspace" / f),
                         {errno.ENOENT} if a is None or f not in a.now.files else None,
                         reason=False)
        if ok:
            assert a is not None
            del a.now.files[f]

    # ------------------------------------------------------------ inbox

    @rule(name=who, msg=st.one_of(st.sampled_from(MSGS), st.just(".in-x")), data=contents)
    def send(self, name, msg, data):
        name = self.pick(name)
        a = self.agents.get(name)
        expected = ({errno.ENOENT} if a is None
                    else {errno.EINVAL} if msg.startswith(".in-") else None)
        if self.expect(f"send agents/{name}/inbox/{msg}", lambda: write_file(
                self.agent(name) / "inbox" / msg, data), expected, reason=a is not None):
            assert a is not None
            a.now.inbox.append((msg, data))

    @rule(name=who)
    def consume(self, name):
        name = self.pick(name)
        a = self.agents.get(name)
        if a is None or not a.now.inbox:
            inbox = self.agent(name) / "inbox"
            self.expect(f"rm agents/{name}/inbox/999999-x+none",
                        lambda: os.unlink(inbox / "999999-x+none"), {errno.ENOENT},
                        reason=False)
            return
        first = sorted(n for n in os.listdir(self.agent(name) / "inbox"))[0]
        self.expect(f"rm agents/{name}/inbox/{first}",
                    lambda: os.unlink(self.agent(name) / "inbox" / first), None)
        a.now.inbox.pop(0)

    # ------------------------------------------------------------ forks

    @rule(src=who, new=any_names, at=st.none() | turn_numbers,
          door=st.sampled_from(["agent", "mount"]))
    def fork(self, src, new, at, door):
        src = self.pick(src)
        if door == "mount" and ("mount-fork" in SKIP or at is not None and "mount-fork-at"
                                in SKIP):
            door = "agent"
        s = self.agents.get(src)
        expected: set[int] = set()
        if s is None:
            expected.add(errno.ENOENT)
        if not NAME_RE.match(new):
            expected.add(errno.EINVAL)
        elif new in self.agents:
            expected.add(errno.EEXIST)
        if s is not None and at is not None and not 1 <= at <= len(s.turns):
            expected.add(errno.ENOENT)
        tail = "" if at is None else f" at {at}"
        if door == "agent":
            path, line = self.agent(src) / "ctl", f"fork {shlex.quote(new)}{tail}"
        else:
            path = self.mnt / ".agentfs" / "ctl"
            line = f"fork agents/{src} {shlex.quote('agents/' + new)}{tail}"
        ok = self.expect(f"echo {line!r} > {path.relative_to(self.mnt)}",
                         lambda: ctl_write(path, line), expected or None,
                         reason=s is not None or door == "mount")
        if ok:
            assert s is not None
            self.agents[new] = s.fork(new, at)

    @precondition(lambda self: "bad-fork" not in SKIP)
    @rule(src=who, how=st.sampled_from(["top", "inside", "epoch"]), dst=who)
    def bad_mount_fork(self, src, how, dst):
        """A mount-level fork of an agent must land at agents/NEW, without an epoch."""
        src = self.pick(src)
        dst = self.pick(dst)
        if src not in self.agents:
            return
        target = {"top": "copy-" + dst, "inside": f"agents/{src}/workspace/copy",
                  "epoch": f"agents/{dst}-e 1"}[how]
        line = f"fork agents/{src} {target}"
        self.expect(f"echo {line!r} > .agentfs/ctl",
                    lambda: ctl_write(self.mnt / ".agentfs" / "ctl", line), {errno.EINVAL})

    @rule(src=who, dst=who, w=st.sampled_from(NESTED))
    def plain_fork(self, src, dst, w):
        """A plain directory (a workspace) forks as a plain directory copy."""
        src = self.pick(src)
        dst = self.pick(dst)
        s, d = self.agents.get(src), self.agents.get(dst)
        expected = ({errno.ENOENT} if s is None or d is None
                    else {errno.EEXIST} if w in d.now.dirs else None)
        line = f"fork agents/{src}/workspace agents/{dst}/workspace/{w}"
        if self.expect(f"echo {line!r} > .agentfs/ctl",
                       lambda: ctl_write(self.mnt / ".agentfs" / "ctl", line), expected):
            assert s is not None and d is not None
            files, dirs = dict(s.now.files), set(s.now.dirs)
            d.now.dirs.add(w)
            d.now.dirs.update(f"{w}/{x}" for x in dirs)
            d.now.files.update({f"{w}/{p}": c for p, c in files.items()})

    # ------------------------------------------------------------ snapshots

    @rule(name=who, snap=st.sampled_from(SNAPS), door=st.sampled_from(["ctl", "mkdir"]))
    def snapshot(self, name, snap, door):
        name = self.pick(name)
        a = self.agents.get(name)
        expected = ({errno.ENOENT} if a is None
                    else {errno.EEXIST} if snap in a.snaps else None)
        if door == "ctl":
            what = f"echo 'snapshot {snap}' > agents/{name}/ctl"
            def fn():
                ctl_write(self.agent(name) / "ctl", f"snapshot {snap}")
        else:
            what = f"mkdir agents/{name}/.snapshots/{snap}"
            def fn():
                os.mkdir(self.agent(name) / ".snapshots" / snap)
        if self.expect(what, fn, expected, reason=door == "ctl" and a is not None):
            assert a is not None
            a.snaps[snap] = (list(a.turns), a.now.copy())

    @rule(name=who, snap=st.sampled_from(SNAPS))
    def delete_snapshot(self, name, snap):
        name = self.pick(name)
        a = self.agents.get(name)
        if self.expect(f"rmdir agents/{name}/.snapshots/{snap}",
                       lambda: os.rmdir(self.agent(name) / ".snapshots" / snap),
                       {errno.ENOENT} if a is None or snap not in a.snaps else None,
                       reason=False):
            assert a is not None
            del a.snaps[snap]

    @precondition(lambda self: "rmdir-turn" not in SKIP)
    @rule(name=who, k=turn_numbers)
    def rmdir_turn_snapshot(self, name, k):
        """History is append-only: a turn snapshot cannot be deleted."""
        name = self.pick(name)
        a = self.agents.get(name)
        if a is None:
            return
        self.expect(f"rmdir agents/{name}/.snapshots/turn-{k}",
                    lambda: os.rmdir(self.agent(name) / ".snapshots" / f"turn-{k}"),
                    {errno.EPERM} if 1 <= k <= len(a.turns) else {errno.ENOENT},
                    reason=1 <= k <= len(a.turns))

    @rule(name=who, k=turn_numbers)
    def check_turn_snapshot(self, name, k):
        name = self.pick(name)
        a = self.agents.get(name)
        if a is not None and 1 <= k <= len(a.turns):
            self.compare_turn(a, k)

    @rule(name=who, snap=st.sampled_from(SNAPS))
    def check_named_snapshot(self, name, snap):
        name = self.pick(name)
        a = self.agents.get(name)
        if a is None or snap not in a.snaps:
            return
        turns, tree = a.snaps[snap]
        root = self.agent(name) / ".snapshots" / snap
        got = read_bytes(root / "transcript")
        assert got == b"".join(turns), (
            f"agents/{name}/.snapshots/{snap}/transcript: {got!r}, model {b''.join(turns)!r}")
        self.compare_workspace(f"agents/{name}/.snapshots/{snap}", root, tree)
        self.compare_inbox(f"agents/{name}/.snapshots/{snap}", root, tree.inbox)

    # ------------------------------------------------------------ config

    @rule(name=who, key=st.sampled_from(["budget_tokens", "keep_recent_turns", "budget_tokenz"]),
          value=st.sampled_from(["1000", "7", "lots", "-3"]))
    def write_config(self, name, key, value):
        """config is validated when written (EINVAL + errstr) and reads back as written."""
        name = self.pick(name)
        a = self.agents.get(name)
        ok_value = value.isdigit() and int(value) > 0
        expected = ({errno.ENOENT} if a is None
                    else None if key != "budget_tokenz" and ok_value else {errno.EINVAL})
        if expected == {errno.EINVAL} and "config-validate" in SKIP:
            return
        data = f"{key} {value}\n".encode()
        if self.expect(f"echo '{key} {value}' > agents/{name}/config", lambda: write_file(
                self.agent(name) / "config", data), expected, reason=a is not None):
            assert a is not None
            a.now.config = data

    @precondition(lambda self: "readonly" not in SKIP)
    @rule(name=who, which=st.sampled_from(["status", "context.json", "children",
                                             "AGENTS.md", "lineage"]))
    def write_generated(self, name, which):
        """Writing a read-only generated file says so: EACCES or EROFS."""
        name = self.pick(name)
        if which == "AGENTS.md":
            path = self.mnt / "AGENTS.md"
        elif which == "lineage":
            path = self.mnt / ".agentfs" / "lineage"
        elif name in self.agents:
            path = self.agent(name) / which
        else:
            return
        self.expect(f"[readonly] write {path.relative_to(self.mnt)}",
                    lambda: write_file(path, b"x\n"), {errno.EACCES, errno.EROFS},
                    reason=False)

    # ------------------------------------------------------------ status

    @rule(name=who, status=st.sampled_from([*STATUSES, "bogus"]))
    def set_status(self, name, status):
        name = self.pick(name)
        a = self.agents.get(name)
        expected = ({errno.ENOENT} if a is None
                    else {errno.EINVAL} if status not in STATUSES else None)
        if self.expect(f"echo 'status {status}' > agents/{name}/ctl",
                       lambda: ctl_write(self.agent(name) / "ctl", f"status {status}"),
                       expected, reason=a is not None):
            assert a is not None
            a.status = status

    # ------------------------------------------------------------ remove

    @rule(name=who, door=st.sampled_from(["ctl", "detach", "rmdir"]))
    def remove(self, name, door):
        name = self.pick(name)
        if door == "detach" and "detach" in SKIP or door == "rmdir" and "rmdir-agent" in SKIP:
            door = "ctl"
        if "remove-origin" in SKIP and any(x.origin == name for x in self.agents.values()):
            return
        a = self.agents.get(name)
        if door == "ctl":
            what = f"echo remove > agents/{name}/ctl"
            def fn():
                ctl_write(self.agent(name) / "ctl", "remove")
        elif door == "detach":
            what = f"echo 'detach agents/{name}' > .agentfs/ctl"
            def fn():
                ctl_write(self.mnt / ".agentfs" / "ctl", f"detach agents/{name}")
        else:
            what = f"rmdir agents/{name}"
            def fn():
                os.rmdir(self.agent(name))
        if self.expect(what, fn, {errno.ENOENT} if a is None else None,
                       reason=door == "detach"):
            del self.agents[name]
            # Its forks keep their whole history: every turn snapshot, now.
            for f in self.agents.values():
                if f.origin == name and "turnsnap" not in SKIP:
                    for k in range(1, len(f.turns) + 1):
                        self.compare_turn(f, k)

    @precondition(lambda self: "rm-rf" not in SKIP)
    @rule(name=who)
    def rm_rf(self, name):
        """rm -rf agents/X removes the agent entirely or leaves it whole."""
        name = self.pick(name)
        if name not in self.agents:
            return
        subprocess.run(["rm", "-rf", str(self.agent(name))], capture_output=True)
        if not os.path.lexists(self.agent(name)):
            del self.agents[name]
        # else: the invariant compares what is left with the untouched model

    # ------------------------------------------------------------ daemon restarts

    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule()
    def remount(self):
        self.restarts += 1
        self.mount.remount()

    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule()
    def sigkill_and_remount(self):
        self.restarts += 1
        self.mount.kill()
        self.mount.start()

    # ------------------------------------------------------------ comparing

    def compare_workspace(self, where: str, root: Path, tree) -> None:
        files, dirs = read_tree(root / "workspace")
        if (files, dirs) != (tree.files, tree.dirs):
            raise Mismatch(f"{where}/workspace: found files {_short(files)} dirs "
                           f"{sorted(dirs)}; model files {_short(tree.files)} dirs "
                           f"{sorted(tree.dirs)}")

    def compare_inbox(self, where: str, root: Path, inbox) -> None:
        listing = sorted(os.listdir(root / "inbox"))
        parsed, problems = parse_inbox(listing)
        assert not problems, f"{where}/inbox: {problems}"
        got = [(n, read_bytes(root / "inbox" / full)) for (_, _, n), full in
               zip(parsed, listing, strict=True)]
        if got != list(inbox):
            raise Mismatch(f"{where}/inbox: found {_short(got)}, model {_short(inbox)}")

    def compare_turn(self, a: AgentM, k: int) -> None:
        root = self.agent(a.name) / ".snapshots" / f"turn-{k}"
        try:
            got = read_bytes(root / "transcript")
        except OSError as e:
            raise Mismatch(f"[turnsnap] agents/{a.name}/.snapshots/turn-{k}/transcript "
                           f"(the agent has {len(a.turns)} turns): {errname(e.errno)}")
        want = b"".join(a.turns[:k])
        assert got == want, (f"agents/{a.name}/.snapshots/turn-{k}/transcript: {got!r}, "
                             f"model {want!r}")
        self.compare_workspace(f"agents/{a.name}/.snapshots/turn-{k}", root, a.history[k - 1])
        self.compare_inbox(f"agents/{a.name}/.snapshots/turn-{k}", root,
                           a.history[k - 1].inbox)

    def compare_agent(self, a: AgentM) -> None:
        d = self.agent(a.name)
        where = f"agents/{a.name}"
        listing = set(os.listdir(d))
        if "skeleton" not in SKIP and listing != SKELETON:
            raise Mismatch(f"[skeleton] {where} lists {sorted(listing)}: missing "
                           f"{sorted(SKELETON - listing)}, extra {sorted(listing - SKELETON)}")
        got = read_bytes(d / "transcript")
        if got != b"".join(a.turns):
            raise Mismatch(f"{where}/transcript: {got!r}, model {b''.join(a.turns)!r}")
        status = read_bytes(d / "status").decode()
        want = f"{a.status} turns={len(a.turns)}\n"
        assert status == want, f"{where}/status: {status!r}, model {want!r}"
        prompt = read_bytes(d / "prompt")
        assert prompt == a.prompt, f"{where}/prompt: {prompt!r}, model {a.prompt!r}"
        if a.now.config is not None:
            config = read_bytes(d / "config")
            assert config == a.now.config, f"{where}/config: {config!r}, model {a.now.config!r}"
        try:
            json.loads(read_bytes(d / "context.json"))
        except OSError as e:
            raise Mismatch(f"cat {where}/context.json: {errname(e.errno)}")
        self.compare_workspace(where, d, a.now)
        self.compare_inbox(where, d, a.now.inbox)
        if "snapls" not in SKIP:
            snaps = set(os.listdir(d / ".snapshots"))
            want_snaps = {f"turn-{k}" for k in range(1, len(a.turns) + 1)} | set(a.snaps)
            if snaps != want_snaps:
                raise Mismatch(f"[snapls] ls {where}/.snapshots: {sorted(snaps)}, model "
                               f"{sorted(want_snaps)}")
        if "turnsnap" not in SKIP and a.turns:
            self.compare_turn(a, 1 + self.steps % len(a.turns))
        if "sizes" not in SKIP:
            for f in ("status", "context.json", "parent", "children"):
                size, data = os.stat(d / f).st_size, read_bytes(d / f)
                if size != len(data):
                    raise Mismatch(f"[sizes] {where}/{f}: stat says {size} bytes, reading "
                                   f"gives {len(data)}")

    @invariant()
    def matches_model(self):
        self.steps += 1
        listed = sorted(os.listdir(self.mnt / "agents"))
        if listed != sorted(self.agents):
            raise Mismatch(f"ls agents: {listed}, model {sorted(self.agents)}")
        if "lineage" not in SKIP:
            got = {n: (r["kind"], r["origin"], r["shared_prefix_turns"], r["turns"], r["status"])
                   for n, r in lineage(self.mnt).items()}
            want = {n: (a.kind, a.origin, a.shared, len(a.turns), a.status)
                    for n, a in self.agents.items()}
            if got != want:
                raise Mismatch(f"[lineage] .agentfs/lineage (kind, origin, shared, turns, "
                               f"status): {got}, model {want}")
        for a in self.agents.values():
            self.compare_agent(a)
        if "sizes" not in SKIP:
            for p in (self.mnt / "AGENTS.md", self.mnt / ".agentfs" / "lineage"):
                size, data = os.stat(p).st_size, read_bytes(p)
                if size != len(data):
                    raise Mismatch(f"[sizes] {p.relative_to(self.mnt)}: stat says {size} "
                                   f"bytes, reading gives {len(data)}")
        if self.steps % FSCK_EVERY == 0:
            self.mount.fsck()

    def teardown(self):
        failed = sys.exc_info()[0] is not None
        try:
            self.mount.umount()
            if not failed:
                self.mount.fsck()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _short(x) -> str:
    text = repr(x)
    return text if len(text) < 400 else text[:400] + f"... ({len(text)} chars)"


def test_agent_layer_against_model(tmp_path: Path) -> None:
    run_state_machine_as_test(lambda: AgentMachine(tmp_path),  # type: ignore[arg-type]
                              settings=SETTINGS)
