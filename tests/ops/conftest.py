"""Fixtures of the ops-layer tests: a FileSystem on the in-memory engine
(fsck runs on it after every test), Operations over it, a readdir recorder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest
from agentfs.daemon.operations import Operations
from opsutil import Token

from agentfs.fsck import check_store
from agentfs.posix.fs import FileSystem
from agentfs.storage.kv import MemoryEngine


@pytest.fixture
def fs() -> Iterator[FileSystem]:
    f = FileSystem(MemoryEngine())
    yield f
    report = check_store(f.engine)
    assert not report.problems, "fsck after the test:\n" + "\n".join(report.problems)


@pytest.fixture
def ops(fs: FileSystem, tmp_path: Path) -> Operations:
    return Operations(fs, str(tmp_path))


@pytest.fixture
def readdir_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    def reply(token: Token, name: bytes, attr: pyfuse3.EntryAttributes, off: int) -> bool:
        if len(token.entries) >= token.room:
            return False
        token.entries.append((name, attr.st_ino, off))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
