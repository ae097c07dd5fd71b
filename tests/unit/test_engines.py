"""Stores named by URL: one place chooses the engine (storage/engines.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.storage import engines
from agentfs.storage.kv import LmdbEngine, MemoryEngine


def test_a_plain_directory_is_an_lmdb_store(tmp_path: Path) -> None:
    u = engines.parse(tmp_path / "s")
    assert (u.scheme, u.location, u.directory) == ("lmdb", str(tmp_path / "s"), tmp_path / "s")
    assert engines.parse(f"lmdb:{tmp_path}/s") == u
    assert str(u) == f"lmdb:{tmp_path}/s"


def test_unknown_scheme_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown store scheme 'postgresql'.*lmdb:.*memory:"):
        engines.parse("postgresql://user@host/db")


def test_open_creates_or_refuses(tmp_path: Path) -> None:
    with pytest.raises(engines.StoreMissing, match="no store at"):
        engines.open_engine(tmp_path / "none", create=False)
    e = engines.open_engine(f"lmdb:{tmp_path}/s")
    assert isinstance(e, LmdbEngine) and (tmp_path / "s" / "lmdb").is_dir()
    FileSystem(e)
    e.close()
    again = engines.open_engine(tmp_path / "s", create=False)
    assert FileSystem(again).getattr(ROOT_INO).is_dir
    again.close()


def test_memory_store_is_not_local() -> None:
    u = engines.parse("memory:")
    assert u.directory is None
    assert isinstance(engines.open_engine(u), MemoryEngine)


def test_a_new_engine_is_one_registration(tmp_path: Path) -> None:
    engines.register("scratch", lambda url, create: MemoryEngine(), local=False)
    try:
        assert "scratch" in engines.schemes()
        assert isinstance(engines.open_engine("scratch:anything"), MemoryEngine)
    finally:
        engines._SCHEMES.pop("scratch")
