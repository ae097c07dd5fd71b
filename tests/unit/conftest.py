"""Fixtures for the unit layer: the model on both engines, checked by fsck.

`engine` and `fs` are parametrised over the in-memory engine and LMDB (in
tmp_path). Every store a test opens through `fs` or `make_fs` is checked by
fsck when the test ends (the autouse `_fsck_after_test`): a test that leaves
the store inconsistent fails even if its own assertions pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fsutil import ENGINES, Clock, EngineFactory

from agentfs.fsck import check_store
from agentfs.posix.fs import FileSystem
from agentfs.storage.kv import Engine


@pytest.fixture(params=ENGINES)
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engines(engine_kind: str, tmp_path: Path) -> Iterator[EngineFactory]:
    f = EngineFactory(engine_kind, tmp_path)
    yield f
    f.close_all()


@pytest.fixture
def engine(engines: EngineFactory) -> Engine:
    return engines()


@pytest.fixture
def make_fs(engines: EngineFactory) -> Callable[..., FileSystem]:
    """make_fs(engine=None, clock=None): a FileSystem on `engine` (default: a new
    one of the current kind), with a ticking fake clock; fsck'ed after the test."""

    def make(engine: Engine | None = None, clock: Callable[[], int] | None = None
             ) -> FileSystem:
        e = engine if engine is not None else engines()
        if e not in engines.checked:
            engines.checked.append(e)
        return FileSystem(e, clock=clock or Clock())

    return make


@pytest.fixture
def fs(make_fs: Callable[..., FileSystem]) -> FileSystem:
    return make_fs()


@pytest.fixture(autouse=True)
def _fsck_after_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """fsck every store the test opened a FileSystem on, after the test.

    `engines` is requested from here, so it is torn down (engines closed)
    only after this check has run.
    """
    factory: EngineFactory | None = None
    if "engines" in request.fixturenames:
        factory = request.getfixturevalue("engines")
    yield
    if factory is None:
        return
    for e in factory.checked:
        report = check_store(e)
        assert not report.problems, "fsck after the test:\n" + "\n".join(report.problems)
