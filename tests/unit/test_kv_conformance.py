"""Conformance suite for the KV seam: every test runs on MemoryEngine and LmdbEngine.

The model relies on exactly these behaviours; an engine that passes them can
carry agentfs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fsutil import EngineFactory

from agentfs.storage.kv import Engine, LmdbEngine, MemoryEngine, NoSpace, prefix_end


def put_all(engine: Engine, pairs: dict[bytes, bytes]) -> None:
    with engine.begin(write=True) as t:
        for k, v in pairs.items():
            t.put(k, v)


def dump(engine: Engine) -> dict[bytes, bytes]:
    with engine.begin() as t:
        return dict(t.scan(b""))


def keys(engine: Engine, start: bytes = b"", end: bytes | None = None) -> list[bytes]:
    with engine.begin() as t:
        return [k for k, _ in t.scan(start, end)]


class Boom(Exception):
    pass


# ----------------------------------------------------------------- basics


def test_get_missing_is_none(engine: Engine) -> None:
    with engine.begin() as t:
        assert t.get(b"nothing") is None


def test_put_get_overwrite_delete(engine: Engine) -> None:
    with engine.begin(write=True) as t:
        t.put(b"a", b"1")
        assert t.get(b"a") == b"1"  # a txn sees its own writes
        t.put(b"a", b"22")
        assert t.get(b"a") == b"22"
        t.put(b"b", b"")
        assert t.get(b"b") == b""  # the empty value is a value, not absence
    with engine.begin() as t:
        assert t.get(b"a") == b"22"
        assert t.get(b"b") == b""
        assert isinstance(t.get(b"a"), bytes)
    with engine.begin(write=True) as t:
        t.delete(b"a")
        assert t.get(b"a") is None
        t.delete(b"never-there")  # deleting a missing key is not an error
    assert dump(engine) == {b"b": b""}


def test_binary_keys_and_values(engine: Engine) -> None:
    pairs = {bytes([0]): b"\x00", b"\x00\x01": b"\xff" * 3, b"\xff\xfe": bytes(range(256)),
             b"\x7f\x80": b"x" * 100_000}
    put_all(engine, pairs)
    assert dump(engine) == pairs


def test_read_txn_sees_committed_data(engine: Engine) -> None:
    put_all(engine, {b"k": b"v1"})
    with engine.begin() as t:
        assert t.get(b"k") == b"v1"
    put_all(engine, {b"k": b"v2", b"j": b"w"})
    with engine.begin() as t:
        assert t.get(b"k") == b"v2"
        assert t.get(b"j") == b"w"


def test_data_survives_reopen_lmdb(tmp_path) -> None:  # type: ignore[no-untyped-def]
    e = LmdbEngine(tmp_path / "s")
    put_all(e, {b"a": b"1", b"b": b"2"})
    e.sync()
    e.close()
    e = LmdbEngine(tmp_path / "s")
    try:
        assert dump(e) == {b"a": b"1", b"b": b"2"}
    finally:
        e.close()


# ----------------------------------------------------------------- scan


SCAN_KEYS = [b"a", b"a\x00", b"a\x01", b"ab", b"abc", b"b", b"b\xff", b"c", b"\xff", b"\xff\xff"]


@pytest.fixture
def scanned(engine: Engine) -> Engine:
    # Insert in a scrambled order: the engine must sort.
    put_all(engine, {k: b"v" + k for k in reversed(SCAN_KEYS)})
    return engine


def test_scan_everything_in_byte_order(scanned: Engine) -> None:
    assert keys(scanned) == sorted(SCAN_KEYS)
    with scanned.begin() as t:
        assert all(v == b"v" + k for k, v in t.scan(b""))


@pytest.mark.parametrize("start,end,expected", [
    (b"a", b"b", [b"a", b"a\x00", b"a\x01", b"ab", b"abc"]),
    (b"a\x00", b"ab", [b"a\x00", b"a\x01"]),  # end is exclusive
    (b"aa", b"abc", [b"ab"]),  # start need not exist
    (b"b", None, [b"b", b"b\xff", b"c", b"\xff", b"\xff\xff"]),
    (b"c", b"c", []),  # empty range
    (b"d", b"c", []),  # inverted range
    (b"\xff\xff\x00", None, []),  # past the end
    (b"", b"a", []),
    (b"", b"a\x00", [b"a"]),
])
def test_scan_ranges(scanned: Engine, start: bytes, end: bytes | None,
                     expected: list[bytes]) -> None:
    assert keys(scanned, start, end) == expected


def test_scan_prefix_end(scanned: Engine) -> None:
    assert keys(scanned, b"a", prefix_end(b"a")) == [b"a", b"a\x00", b"a\x01", b"ab", b"abc"]
    assert keys(scanned, b"b", prefix_end(b"b")) == [b"b", b"b\xff"]
    assert keys(scanned, b"\xff", prefix_end(b"\xff")) == [b"\xff", b"\xff\xff"]


def test_prefix_end() -> None:
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\x01\xff\xff") == b"\x02"
    assert prefix_end(b"\xff\xff") > b"\xff\xff\xff\xff"


def test_scan_is_lazy_and_can_stop_early(scanned: Engine) -> None:
    with scanned.begin() as t:
        it = t.scan(b"")
        assert next(it)[0] == b"a"
        assert next(it)[0] == b"a\x00"
    with scanned.begin() as t:
        assert t.get(b"c") == b"vc"


def test_scan_deleting_current_key(scanned: Engine) -> None:
    """The model deletes the record it is looking at while scanning."""
    seen = []
    with scanned.begin(write=True) as t:
        for k, v in t.scan(b"a", b"c"):
            assert v == b"v" + k
            seen.append(k)
            t.delete(k)
    assert seen == [k for k in SCAN_KEYS if b"a" <= k < b"c"]
    assert keys(scanned) == [b"c", b"\xff", b"\xff\xff"]


def test_scan_deleting_keys_ahead(scanned: Engine) -> None:
    seen = []
    with scanned.begin(write=True) as t:
        for k, _ in t.scan(b""):
            seen.append(k)
            if k == b"a":
                t.delete(b"a\x01")
                t.delete(b"abc")
                t.delete(b"\xff\xff")
    assert seen == [b"a", b"a\x00", b"ab", b"b", b"b\xff", b"c", b"\xff"]


def test_scan_deleting_current_and_next(scanned: Engine) -> None:
    seen = []
    with scanned.begin(write=True) as t:
        for k, _ in t.scan(b""):
            seen.append(k)
            if k == b"ab":
                t.delete(b"ab")
                t.delete(b"abc")
                t.delete(b"b")
    assert seen == [b"a", b"a\x00", b"a\x01", b"ab", b"b\xff", b"c", b"\xff", b"\xff\xff"]


def test_scan_overwriting_while_scanning(scanned: Engine) -> None:
    seen = []
    with scanned.begin(write=True) as t:
        for k, v in t.scan(b""):
            seen.append((k, v))
            t.put(k, b"new" + k)  # the current key
            if k == b"a":
                t.put(b"b", b"changed")  # a key ahead: the scan shows the new value
    assert [k for k, _ in seen] == sorted(SCAN_KEYS)
    assert dict(seen)[b"b"] == b"changed"
    assert dump(scanned) == {k: b"new" + k for k in SCAN_KEYS}


def test_scan_putting_keys_behind(scanned: Engine) -> None:
    """Keys inserted before the cursor are not yielded; nothing repeats."""
    seen = []
    with scanned.begin(write=True) as t:
        for k, _ in t.scan(b"b"):
            seen.append(k)
            t.put(b"\x00" + k, b"behind")
    assert seen == [b"b", b"b\xff", b"c", b"\xff", b"\xff\xff"]
    assert len(keys(scanned)) == len(SCAN_KEYS) + 5


def test_scan_putting_keys_ahead_stays_ordered(scanned: Engine) -> None:
    """Whether a key inserted ahead of the cursor is yielded may differ between
    engines (the model never relies on it), but the scan stays ordered, never
    repeats a key, and yields every original key."""
    seen = []
    with scanned.begin(write=True) as t:
        for k, _ in t.scan(b"", b"c"):
            seen.append(k)
            if k == b"a":
                t.put(b"aa", b"new")
                t.put(b"b\x00", b"new")
    assert seen == sorted(set(seen))
    assert set(seen) - {b"aa", b"b\x00"} == {k for k in SCAN_KEYS if k < b"c"}


def test_scan_rewriting_whole_range(engine: Engine) -> None:
    """Delete-and-reinsert under a new key (as a version rewrite does) in one txn."""
    put_all(engine, {b"r%03d" % i: b"%d" % i for i in range(300)})
    with engine.begin(write=True) as t:
        n = 0
        for k, v in t.scan(b"r", b"s"):
            n += 1
            t.delete(k)
            t.put(b"q" + k, v)
        assert n == 300
    assert keys(engine, b"r", b"s") == []
    assert keys(engine, b"q", b"r") == [b"qr%03d" % i for i in range(300)]


def test_many_keys_order(engine: Engine) -> None:
    import random

    rng = random.Random(7)
    ks = {rng.randbytes(rng.randint(1, 20)) for _ in range(3000)}
    with engine.begin(write=True) as t:
        for k in ks:
            t.put(k, k[::-1])
    assert keys(engine) == sorted(ks)
    # Delete half in a scan and check the rest.
    with engine.begin(write=True) as t:
        for i, (k, _) in enumerate(t.scan(b"")):
            if i % 2:
                t.delete(k)
    assert keys(engine) == sorted(ks)[::2]


# ----------------------------------------------------------------- first / last


def test_first(scanned: Engine) -> None:
    with scanned.begin() as t:
        assert t.first(b"") == (b"a", b"va")
        assert t.first(b"a") == (b"a", b"va")
        assert t.first(b"aa") == (b"ab", b"vab")
        assert t.first(b"aa", b"ab") is None  # bound is exclusive
        assert t.first(b"aa", b"ab\x00") == (b"ab", b"vab")
        assert t.first(b"b\x00", b"c") == (b"b\xff", b"vb\xff")
        assert t.first(b"\xff\xff\x00") is None
        assert t.first(b"d", b"e") is None
        assert t.first(b"c", b"c") is None


def test_last(scanned: Engine) -> None:
    with scanned.begin() as t:
        assert t.last(b"", b"\xff" * 8) == (b"\xff\xff", b"v\xff\xff")
        assert t.last(b"a", b"b") == (b"abc", b"vabc")
        assert t.last(b"a", b"ab") == (b"a\x01", b"va\x01")  # end exclusive
        assert t.last(b"a", b"a\x00") == (b"a", b"va")
        assert t.last(b"a\x02", b"ab") is None  # nothing in [start, end)
        assert t.last(b"b", b"b") is None
        assert t.last(b"", b"a") is None  # before every key
        assert t.last(b"d", b"e") == None  # noqa: E711 - between keys, nothing
        assert t.last(b"c", b"d") == (b"c", b"vc")
        assert t.last(b"\xff\xff\x00", b"\xff" * 8) is None


def test_first_last_empty_store(engine: Engine) -> None:
    with engine.begin() as t:
        assert t.first(b"") is None
        assert t.last(b"", b"\xff" * 8) is None
        assert list(t.scan(b"")) == []


def test_first_last_see_own_writes(engine: Engine) -> None:
    put_all(engine, {b"m": b"1"})
    with engine.begin(write=True) as t:
        t.put(b"l", b"0")
        t.put(b"n", b"2")
        assert t.first(b"") == (b"l", b"0")
        assert t.last(b"", b"z") == (b"n", b"2")
        t.delete(b"l")
        t.delete(b"n")
        assert t.first(b"") == (b"m", b"1")
        assert t.last(b"", b"z") == (b"m", b"1")
        t.delete(b"m")
        assert t.first(b"") is None
        assert t.last(b"", b"z") is None


def test_version_seek_pattern(engine: Engine) -> None:
    """The seek views.py does: base + inverted epoch lands on the newest version
    at or before a limit."""
    from agentfs.storage.keys import inv

    base = b"Rrec"
    put_all(engine, {base + inv(e): b"%d" % e for e in (3, 7, 12)})
    with engine.begin() as t:
        def at(limit: int) -> bytes | None:
            hit = t.first(base + inv(limit), prefix_end(base))
            return None if hit is None else hit[1]

        assert at(2) is None
        assert at(3) == b"3"
        assert at(6) == b"3"
        assert at(7) == b"7"
        assert at(100) == b"12"


# ----------------------------------------------------------------- rollback


def test_rollback_on_exception(engine: Engine) -> None:
    put_all(engine, {b"keep": b"1", b"change": b"old", b"gone": b"x"})
    before = dump(engine)
    with pytest.raises(Boom), engine.begin(write=True) as t:
        t.put(b"new", b"n")
        t.put(b"change", b"new")
        t.put(b"change", b"newer")
        t.delete(b"gone")
        t.put(b"gone", b"back")
        t.delete(b"gone")
        t.put(b"new2", b"n")
        t.delete(b"new2")
        assert t.get(b"change") == b"newer"
        raise Boom()
    assert dump(engine) == before
    with engine.begin() as t:
        assert t.first(b"") == (b"change", b"old")
        assert t.last(b"", b"z") == (b"keep", b"1")
    # The engine still works.
    put_all(engine, {b"after": b"ok"})
    assert dump(engine) == {**before, b"after": b"ok"}


def test_rollback_of_many_writes(engine: Engine) -> None:
    put_all(engine, {b"k%04d" % i: b"v" for i in range(0, 2000, 2)})
    before = dump(engine)
    with pytest.raises(Boom), engine.begin(write=True) as t:
        for i in range(2000):
            if i % 2:
                t.put(b"k%04d" % i, b"odd")
            else:
                t.delete(b"k%04d" % i)
        raise Boom()
    assert dump(engine) == before


def test_rollback_keeps_earlier_commits(engine: Engine) -> None:
    put_all(engine, {b"a": b"1"})
    put_all(engine, {b"b": b"2"})
    with pytest.raises(Boom), engine.begin(write=True) as t:
        t.delete(b"a")
        t.delete(b"b")
        raise Boom()
    assert dump(engine) == {b"a": b"1", b"b": b"2"}


def test_read_txn_exception_propagates(engine: Engine) -> None:
    put_all(engine, {b"a": b"1"})
    with pytest.raises(Boom), engine.begin() as t:
        assert t.get(b"a") == b"1"
        raise Boom()
    assert dump(engine) == {b"a": b"1"}


# ----------------------------------------------------------------- NoSpace


def test_nospace_memory_limit() -> None:
    e = MemoryEngine(limit=10_000)
    put_all(e, {b"a": b"x" * 1000, b"b": b"y" * 1000})
    before = dump(e)
    used = e.usage()[0]
    with pytest.raises(NoSpace), e.begin(write=True) as t:
        t.delete(b"a")
        t.put(b"b", b"z" * 500)
        t.put(b"c", b"c" * 20_000)
    assert dump(e) == before
    assert e.usage()[0] == used
    # Smaller writes still fit.
    put_all(e, {b"c": b"c" * 1000})
    assert dump(e)[b"c"] == b"c" * 1000


def test_nospace_memory_fill_until_full() -> None:
    e = MemoryEngine(limit=100_000)
    n = 0
    with pytest.raises(NoSpace):
        while n < 1000:
            put_all(e, {b"k%04d" % n: b"v" * 3000})
            n += 1
    assert 20 <= n < 40
    assert dump(e) == {b"k%04d" % i: b"v" * 3000 for i in range(n)}
    with e.begin(write=True) as t:
        t.delete(b"k0000")
    put_all(e, {b"small": b"s"})
    assert dump(e)[b"small"] == b"s"


def _fill_until_nospace(e: Engine, value_size: int) -> int:
    n = 0
    with pytest.raises(NoSpace):
        while n < 100_000:
            with e.begin(write=True) as t:
                t.put(b"k%06d" % n, bytes([n % 256]) * value_size)
            n += 1
    return n


@pytest.fixture
def tiny_lmdb(tmp_path) -> Iterator[LmdbEngine]:  # type: ignore[no-untyped-def]
    e = LmdbEngine(tmp_path / "tiny", map_size=1 << 20)
    yield e
    e.close()


def test_nospace_lmdb_tiny_map(tiny_lmdb: LmdbEngine) -> None:
    e = tiny_lmdb
    put_all(e, {b"precious": b"p" * 100})
    n = _fill_until_nospace(e, 40_000)
    assert n > 0
    with e.begin() as t:
        assert t.get(b"precious") == b"p" * 100
        for i in range(n):
            assert t.get(b"k%06d" % i) == bytes([i % 256]) * 40_000
        assert t.get(b"k%06d" % n) is None  # the failed txn left nothing
    # The engine still works: free space and write again.
    with e.begin(write=True) as t:
        for i in range(n // 2):
            t.delete(b"k%06d" % i)
    put_all(e, {b"after": b"a" * 10_000})
    with e.begin() as t:
        assert t.get(b"after") == b"a" * 10_000
        assert t.get(b"precious") == b"p" * 100


def test_nospace_lmdb_in_big_txn_rolls_back(tiny_lmdb: LmdbEngine) -> None:
    """NoSpace part way through a txn: nothing of that txn is visible."""
    e = tiny_lmdb
    put_all(e, {b"a": b"1", b"b": b"2"})
    with pytest.raises(NoSpace), e.begin(write=True) as t:
        t.delete(b"a")
        t.put(b"b", b"changed")
        for i in range(1000):
            t.put(b"big%04d" % i, b"x" * 10_000)
    assert dump(e) == {b"a": b"1", b"b": b"2"}
    put_all(e, {b"c": b"3"})
    assert dump(e) == {b"a": b"1", b"b": b"2", b"c": b"3"}


def test_nospace_is_raised_by_both_engines(engines: EngineFactory) -> None:
    e = engines(limit=200_000) if engines.kind == "memory" else engines(map_size=1 << 20)
    put_all(e, {b"first": b"f"})
    n = _fill_until_nospace(e, 30_000)
    assert n > 0
    with e.begin() as t:
        assert t.get(b"first") == b"f"
        assert sum(1 for _ in t.scan(b"k", b"l")) == n


def test_usage(engine: Engine) -> None:
    used0, limit = engine.usage()
    assert used0 >= 0
    assert limit >= 0  # 0: bounded only by the disk
    assert limit == 0 or used0 <= limit
    put_all(engine, {b"k%d" % i: b"x" * 10_000 for i in range(50)})
    used1, limit1 = engine.usage()
    assert used1 > used0
    assert limit1 == limit


def test_grow_memory_cannot() -> None:
    e = MemoryEngine(limit=1000)
    assert e.grow() is False


def test_grow_lmdb_after_nospace(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """NoSpace, then grow() doubles the map up to its cap; the data survives."""
    e = LmdbEngine(tmp_path / "s", map_size=1 << 20, max_map_size=1 << 22)
    try:
        n = _fill_until_nospace(e, 40_000)
        assert e.grow() is True
        put_all(e, {b"k%06d" % n: b"after grow"})
        with e.begin() as t:
            assert t.get(b"k%06d" % 0) == bytes([0]) * 40_000
            assert t.get(b"k%06d" % n) == b"after grow"
        while e.grow():
            pass
        assert e.map_size == 1 << 22
        m = _fill_until_nospace(e, 40_000)
        assert m > n
        assert e.grow() is False
        with e.begin() as t:
            assert t.get(b"k%06d" % 0) == bytes([0]) * 40_000
    finally:
        e.close()


def test_sync_and_close(engine: Engine) -> None:
    put_all(engine, {b"a": b"1"})
    engine.sync()
    assert dump(engine) == {b"a": b"1"}
