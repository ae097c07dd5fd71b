"""fsck on staged imports (`I<view><ino>`, see agentfs/posix/hostimport.py): a
staged tree counts as reachable while its key names it, and a key that names
no directory is reported. Each store is damaged behind the model's back."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from fsutil import Clock, EngineFactory, mkfile

from agentfs.fsck import check_store
from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.posix.hostimport import HostImport
from agentfs.storage import keys
from agentfs.storage.codec import split_ino
from agentfs.storage.kv import Engine


@pytest.fixture
def staged(engines: EngineFactory, tmp_path: Path) -> tuple[Engine, FileSystem, int]:
    """A store with an import stopped halfway: (engine, fs, staged root inode)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(5):
        (src / "d" / f"f{i}").write_text(str(i))
    e = engines()
    fs = FileSystem(e, clock=Clock())
    imp = HostImport(fs, str(src), "dst")
    imp.check()
    imp.scan()
    steps = imp.steps()
    next(steps)
    next(steps)  # the staged root and a first batch
    assert check_store(e).problems == []
    return e, fs, imp.staged


def test_a_lost_staged_key_leaves_its_tree_unreachable(
        staged: tuple[Engine, FileSystem, int]) -> None:
    e, fs, root = staged
    with e.begin(write=True) as txn:
        txn.delete(keys.staged(*split_ino(root)))
    problems = check_store(e).problems
    assert any(f"inode {split_ino(root)[1]} is unreachable" in p for p in problems), problems


def test_a_staged_key_naming_nothing(staged: tuple[Engine, FileSystem, int]) -> None:
    e, fs, root = staged
    view, _ = split_ino(root)
    with e.begin(write=True) as txn:
        txn.put(keys.staged(view, 999_999), b"")
    problems = check_store(e).problems
    assert problems == [f"view {view}: staged import 999999 has no attributes"], problems


def test_a_staged_key_naming_a_file(staged: tuple[Engine, FileSystem, int]) -> None:
    e, fs, root = staged
    f = mkfile(fs, ROOT_INO, b"plain", b"x")
    assert stat.S_ISREG(f.mode)
    with e.begin(write=True) as txn:
        txn.put(keys.staged(*split_ino(f.ino)), b"")
    problems = check_store(e).problems
    assert any(f"staged import {split_ino(f.ino)[1]} is not a directory" in p
               for p in problems), problems


def test_a_staged_tree_that_is_also_linked(staged: tuple[Engine, FileSystem, int]) -> None:
    e, fs, root = staged
    with fs.transaction() as t:
        t.link_entry(ROOT_INO, b"early", t.attr(root))
        d = t.attr(ROOT_INO)
        d.nlink += 1
        t.put_attr(d)
    problems = check_store(e).problems
    assert any("reached twice" in p for p in problems), problems
