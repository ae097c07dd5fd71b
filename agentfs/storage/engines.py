"""The one place an engine is chosen: stores are named by URL.

    lmdb:DIR      the embedded LMDB store kept in directory DIR (DIR/lmdb; the
                  store lock and the daemon's log sit beside it). A bare DIR
                  means the same.
    memory:       an in-memory store (tests, benchmarks of the model alone)

An engine registers its scheme (`register`) with an opener; the next engine
is one more registration, not an edit wherever a store is opened.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentfs.storage.kv import Engine, LmdbEngine, MemoryEngine


class StoreMissing(Exception):
    """`open_engine(..., create=False)` found no store at the URL."""


class NotAStore(ValueError):
    """A store would be made in a directory that already holds something else."""


# What an LMDB store's directory holds: the environment, and beside it the
# store lock and the daemon's log (both made before the environment is).
LMDB_STORE_ENTRIES = {"lmdb", "agentfs.lock", "daemon.log"}


@dataclass(frozen=True)
class StoreURL:
    scheme: str
    location: str  # after "SCHEME:" (a directory for lmdb)

    @property
    def directory(self) -> Path | None:
        """The local directory of a store kept on this machine (None: elsewhere)."""
        return Path(self.location) if _SCHEMES[self.scheme].local else None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.location}"


@dataclass(frozen=True)
class _Scheme:
    opener: Callable[[StoreURL, bool], Engine]
    local: bool  # kept in a directory of this machine (lock file, log beside it)


_SCHEMES: dict[str, _Scheme] = {}


def register(scheme: str, opener: Callable[[StoreURL, bool], Engine], local: bool) -> None:
    """Make `SCHEME:...` URLs open with `opener(url, create)`."""
    _SCHEMES[scheme] = _Scheme(opener, local)


def schemes() -> list[str]:
    return sorted(_SCHEMES)


def parse(url: str | os.PathLike[str]) -> StoreURL:
    """A store URL; a plain path (no `SCHEME:` prefix) is an LMDB directory."""
    text = os.fspath(url)
    scheme, sep, rest = text.partition(":")
    if sep and scheme in _SCHEMES:
        if _SCHEMES[scheme].local:
            rest = os.path.abspath(os.path.expanduser(rest))
        return StoreURL(scheme, rest)
    if sep and "/" not in scheme and scheme.isalpha():
        raise ValueError(f"unknown store scheme {scheme!r} in {text!r}; known: "
                         f"{', '.join(s + ':' for s in schemes())}")
    return StoreURL("lmdb", os.path.abspath(os.path.expanduser(text)))


def open_engine(url: str | os.PathLike[str] | StoreURL, create: bool = True) -> Engine:
    """Open the store named by `url` (create it if missing, unless `create` is
    False: then StoreMissing)."""
    u = url if isinstance(url, StoreURL) else parse(url)
    return _SCHEMES[u.scheme].opener(u, create)


def check_store_directory(url: StoreURL) -> None:
    """Refuse (NotAStore) to make a store in a directory that is neither empty
    (or missing) nor a store already: a mistyped --store must not scatter a
    store among someone's files."""
    if url.directory is None:
        return
    d = url.directory
    if d.exists() and not d.is_dir():
        raise NotAStore(f"store {d} is not a directory")
    if not d.is_dir() or (d / "lmdb" / "data.mdb").exists():
        return
    foreign = sorted(set(os.listdir(d)) - LMDB_STORE_ENTRIES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise NotAStore(f"{d} is not an agentfs store and is not empty (it holds {shown}); "
                        "give an existing store, or an empty or missing directory to make "
                        "one in")


def _open_lmdb(url: StoreURL, create: bool) -> Engine:
    path = Path(url.location) / "lmdb"
    if not create and not (path / "data.mdb").exists():
        raise StoreMissing(f"no store at {url.location}")
    check_store_directory(url)
    return LmdbEngine(path)


def _open_memory(url: StoreURL, create: bool) -> Engine:
    return MemoryEngine()


register("lmdb", _open_lmdb, local=True)
register("memory", _open_memory, local=False)
