"""The key schema (agentfs/storage/keys.py) owns the keyspace.

- the table is well formed and its docstring lists every entry;
- builders and parsers agree;
- no module outside keys.py builds a key from a raw prefix byte or reads a
  key at a magic offset (an AST scan of agentfs/ and daemon/);
- a realistic workload stores only keys of the table, and gc leaves no key
  of a view it dropped (the inbox counter `Q<view>` used to stay).
"""

from __future__ import annotations

import ast
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fsutil import mkdir, mkfile

from agentfs.agents.inbox import deliver_message, stage_message
from agentfs.agents.model import Agents, Role
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.posix.hostimport import HostImport
from agentfs.storage import keys
from agentfs.storage.codec import split_ino
from agentfs.storage.gc import collect

REPO = Path(__file__).resolve().parents[2]
TAGS = {p.tag for p in keys.TABLE}
HOLDER_TAGS = set(keys.HOLDER_KINDS)  # v<view>, t<view>: key material too

# Files still building keys by hand. The lead is migrating them to the
# builders of keys.py; this list must be emptied (test_allowlist_is_needed
# says when an entry can go).
ALLOWLIST: set[str] = set()

KEY_METHODS = {"get", "put", "delete", "scan", "first", "last", "startswith"}
KEY_NAMES = {"k", "key", "sub", "rec", "holder", "first"}
OFFSET_READERS = {"read_u32", "read_u64"}


# ----------------------------------------------------------------- the table


def test_tags_are_unique_single_bytes() -> None:
    tags = [p.tag for p in keys.TABLE]
    assert len(tags) == len(set(tags)), f"duplicate tags in the key table: {tags}"
    assert all(len(t) == 1 for t in tags)
    assert len({p.name for p in keys.TABLE}) == len(keys.TABLE)


def test_every_entry_is_documented() -> None:
    doc = keys.__doc__ or ""
    for p in keys.TABLE:
        assert p.layout.startswith(p.tag.decode()), p
        assert p.layout in doc, f"{p.layout} is missing from keys.py's 'All keys:' list"
        assert p.scope in ("global", "view"), p
        assert p.owner.startswith("agentfs."), p
        assert p.doc
    for p in keys.VIEW_SCOPED:
        assert p.layout[1:].startswith("<view:4>"), f"{p.name}: the view id follows the tag"


def test_layout_lengths() -> None:
    assert (keys.VIEW.min_len, keys.VIEW.max_len) == (5, 5)
    assert (keys.TURN.min_len, keys.TURN.max_len) == (9, 9)
    assert (keys.PIN.min_len, keys.PIN.max_len) == (13, None)
    assert keys.RECORD.min_len == 22


def test_builders_and_parsers_agree() -> None:
    holder = keys.turn_holder(7)
    assert keys.parse_pin(keys.pin(3, 99, holder)) == (3, 99, holder)
    assert keys.pin(3, 99, holder).startswith(keys.pin_at(3, 99))
    assert keys.pin_at(3, 99).startswith(keys.pin_prefix(3))
    assert keys.parse_holder(keys.view_holder(5)) == ("view", 5)
    assert keys.parse_holder(holder) == ("turns", 7)
    assert keys.parse_holder(b"h") is None
    assert keys.parse_snapshot(keys.snapshot(2, 10, b"s1")) == (2, 10, b"s1")
    assert keys.parse_orphan(keys.orphan(2, 10)) == (2, 10)
    assert keys.parse_contained(keys.contained(2, 9)) == (2, 9)
    assert keys.contained(2, 9).startswith(keys.contained_prefix(2))
    assert keys.parse_nested_copy(keys.nested_copy(2, 9)) == (2, 9)
    assert keys.parse_turn(keys.turn(4, 12)) == (4, 12)
    assert keys.turn(4, 12).startswith(keys.turn_prefix(4))
    assert keys.parse_agent(keys.agent("alice")) == "alice"
    assert keys.agent("alice") == keys.agent(b"alice")
    version = keys.record_version(6, keys.dentry_suffix(3, b"f"), 41)
    assert keys.parse_record(version) == (6, 3, keys.KIND_DENTRY)
    assert keys.birth_of(version) == 41
    assert keys.version_base(version) == keys.record(6, keys.dentry_suffix(3, b"f"))
    tail = keys.version_tail(version, keys.record(6, keys.dentry_dir_suffix(3)))
    assert keys.parse_dentry_tail(tail) == (keys.name_hash(b"f"), b"f")
    assert keys.inode_prefix(version) == keys.record(6, keys.ino_suffix(3))
    for p in keys.VIEW_SCOPED:
        assert keys.parse_view_id(p.of_view(77)) == 77
        assert keys.prefix_of(p.of_view(77)) is p
    start, end = keys.span(keys.rec_prefix(6))
    assert start <= version < end and not start <= keys.rec_prefix(7) < end
    assert keys.prefix_of(b"Z") is None


# ----------------------------------------------------------------- no key literal elsewhere


def sources() -> Iterator[Path]:
    for top in ("agentfs", "daemon"):
        yield from sorted((REPO / top).rglob("*.py"))


def _is_tag(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in TAGS | HOLDER_TAGS


def _has_int(node: ast.AST | None) -> bool:
    return node is not None and any(isinstance(n, ast.Constant) and type(n.value) is int
                                    for n in ast.walk(node))


def _names_a_key(node: ast.AST) -> bool:
    while isinstance(node, ast.Subscript):  # first[0][:13] reads a key too
        node = node.value
    return isinstance(node, ast.Name) and (node.id in KEY_NAMES or node.id.endswith("_key"))


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def key_literals(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) for every place that builds or reads a key by hand."""
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            for side in (node.left, node.right):
                if _is_tag(side):
                    yield node.lineno, f"prefix byte {ast.unparse(side)} in {ast.unparse(node)}"
        elif isinstance(node, ast.Call):
            name = _callee(node)
            if name in KEY_METHODS:
                for arg in node.args:
                    if _is_tag(arg):
                        yield node.lineno, f"prefix byte in {ast.unparse(node)}"
            if name in OFFSET_READERS and len(node.args) >= 2 and _names_a_key(node.args[0]):
                yield node.lineno, f"key read at an offset: {ast.unparse(node)}"
        elif (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice)
              and _names_a_key(node.value)
              and any(_has_int(b) for b in (node.slice.lower, node.slice.upper))):
            yield node.lineno, f"key sliced at a fixed offset: {ast.unparse(node)}"


def offenders() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sources():
        rel = str(path.relative_to(REPO))
        if rel == "agentfs/storage/keys.py":
            continue
        hits = [f"{rel}:{line}: {what}" for line, what in key_literals(ast.parse(path.read_text()))]
        if hits:
            found[rel] = hits
    return found


def test_no_key_literal_outside_keys_py() -> None:
    found = {f: hits for f, hits in offenders().items() if f not in ALLOWLIST}
    assert found == {}, ("build and parse keys with agentfs.storage.keys:\n"
                         + "\n".join(h for hits in found.values() for h in hits))


def test_allowlist_is_needed() -> None:
    """An allowlisted file without key literals must leave the allowlist."""
    clean = ALLOWLIST - set(offenders())
    assert not clean, f"no key literal left, remove from ALLOWLIST: {sorted(clean)}"


@pytest.mark.parametrize("code", [
    'txn.get(b"A" + name)',
    'txn.scan(b"V", b"W")',
    "vid = read_u32(k, 1)",
    "holder = k[13:]",
    "first[0][:len(base) + 8]",
    "prefix = b'C' + u32(view)",
    'holder = b"v" + u32(vid)',
])
def test_the_scan_sees_key_literals(code: str) -> None:
    assert list(key_literals(ast.parse(code))), code


@pytest.mark.parametrize("code", [
    'name + b"\\0"',
    "keys.agent(name)",
    "read_u32(value, 1)",
    "data[1:]",
    'line + b"\\n"',
])
def test_the_scan_leaves_other_bytes_alone(code: str) -> None:
    assert list(key_literals(ast.parse(code))) == [], code


# ----------------------------------------------------------------- a real store


def line(i: int) -> bytes:
    return json.dumps({"role": "user" if i % 2 == 0 else "assistant",
                       "content": f"turn {i}"}).encode()


def send(agents: Agents, name: str, msg: bytes, nonce: int) -> None:
    a = agents.get(name)
    staged = stage_message(agents, a, msg, nonce, 0, 0)
    agents.fs.write(staged.ino, 0, b"hello " + msg)
    deliver_message(agents, a, b".in-%d-" % nonce + msg, "tester")


def workload(fs: FileSystem, host: Path) -> tuple[Agents, int]:
    """Something of every kind: files, links, xattrs, forks nested in forks,
    snapshots, an orphan, agents with turns, forks at a turn and messages,
    imports stopped halfway (of host directory `host`), a removal and a gc.
    Returns the agents and the view of the removed agent."""
    d = mkdir(fs, ROOT_INO, b"d")
    f = mkfile(fs, d.ino, b"f", b"data" * 3000)
    fs.setxattr(f.ino, b"user.k", b"v")
    fs.create(d.ino, b"l", stat.S_IFLNK | 0o777, 0, 0, target=b"f")
    inner = fs.fork(d.ino, d.ino, b"inner")
    mkfile(fs, inner.ino, b"g", b"g")
    outer = fs.fork(d.ino, ROOT_INO, b"outer")
    fs.lookup(fs.lookup(outer.ino, b"inner").ino, b"g")  # the outer fork's copy of inner
    fs.snapshot(d.ino, b"s")
    open_file = mkfile(fs, ROOT_INO, b"open", b"x")
    fs.unlink(ROOT_INO, b"open")  # still open: an orphan until forgotten
    agents = Agents(fs)
    agents.spawn(b"alice")
    for i in range(4):
        agents.append("alice", line(i))
    mkfile(fs, agents.get("alice").ino(Role.WORKSPACE), b"w", b"w")
    agents.fork("alice", b"bob")
    agents.fork("alice", b"carol", at_turn=2)
    for n in range(3):
        send(agents, "bob", b"m%d" % n, n)
    agents.spawn(b"dave")
    send(agents, "dave", b"bye", 9)
    (host / "sub").mkdir(parents=True, exist_ok=True)
    (host / "sub" / "f").write_text("imported")
    half_import(fs, host, "d/importing")
    half_import(fs, host, "agents/dave/workspace")  # goes with dave's view
    removed = agents.get("dave").view
    agents.remove("dave")
    collect(fs.store)
    fs.forget(open_file.ino)
    mkfile(fs, ROOT_INO, b"open2", b"y")
    return agents, removed


def half_import(fs: FileSystem, host: Path, dest: str) -> None:
    """An import stopped after its first batch: a staged tree."""
    imp = HostImport(fs, str(host), dest)
    imp.check()
    imp.scan()
    steps = imp.steps()
    next(steps)
    next(steps)


def stored_keys(fs: FileSystem) -> list[bytes]:
    with fs.store.read() as tx:
        return [k for k, _ in tx.txn.scan(b"")]


def test_a_workload_stores_only_keys_of_the_table(fs: FileSystem, tmp_path: Path) -> None:
    workload(fs, tmp_path)
    other = mkfile(fs, ROOT_INO, b"still-open", b"z")
    fs.unlink(ROOT_INO, b"still-open")
    present = {k[:1] for k in stored_keys(fs)}
    assert present <= TAGS, f"prefixes not in the key table: {sorted(present - TAGS)}"
    # The workload reaches every kind (H: lineage records the agent layer adds next).
    assert TAGS - present <= {keys.HISTORY.tag}, sorted(TAGS - present)
    fs.forget(other.ino)


def test_gc_leaves_no_key_of_a_dropped_view(fs: FileSystem, tmp_path: Path) -> None:
    agents, removed = workload(fs, tmp_path)
    with fs.store.read() as tx:
        assert not tx.view_exists(removed), "the removed agent's view was dropped"
    left = [k for k in stored_keys(fs)
            if keys.prefix_of(k) in keys.VIEW_SCOPED and keys.parse_view_id(k) == removed]
    assert left == [], [k.hex() for k in left]
    assert split_ino(agents.get("bob").ino(Role.INBOX))[0] != removed


def test_stored_inode_numbers_never_reach_the_virtual_bit() -> None:
    from agentfs.storage.codec import LOCAL_MASK, MAX_VIEW, fuse_ino, split_ino

    top = fuse_ino(MAX_VIEW, LOCAL_MASK)
    assert top < 1 << 63 and split_ino(top) == (MAX_VIEW, LOCAL_MASK)
    for view, local in ((MAX_VIEW + 1, 1), (0, 1), (1, LOCAL_MASK + 1), (1, -1)):
        with pytest.raises(OverflowError):
            fuse_ino(view, local)
