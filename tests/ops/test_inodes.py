"""The daemon's table of inode-number kinds: round trips, ranges, no collisions."""

from __future__ import annotations

import itertools

import pytest
from agentfs.daemon import inodes
from agentfs.daemon.inodes import LAYOUT, MAX_VIEW, Kind, decode, encode, fields, kind_of
from hypothesis import given
from hypothesis import strategies as st

from agentfs.storage.codec import LOCAL_BITS, fuse_ino


def _values(kind: Kind) -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(*(st.integers(0, (1 << bits) - 1) for _, bits in LAYOUT[kind]))


@given(st.sampled_from([k for k in Kind if k is not Kind.STORED]).flatmap(
    lambda k: st.tuples(st.just(k), _values(k))))
def test_round_trip(case: tuple[Kind, tuple[int, ...]]) -> None:
    kind, values = case
    ino = encode(kind, *values)
    assert 0 < ino < 1 << 64
    assert kind_of(ino) is kind
    assert decode(ino) == (kind, values)
    assert fields(ino, kind) == values


@given(st.integers(1, MAX_VIEW), st.integers(0, (1 << 40) - 1))
def test_stored_numbers_are_their_own_kind(view: int, local: int) -> None:
    ino = fuse_ino(view, local)
    assert kind_of(ino) is Kind.STORED
    assert decode(ino) == (Kind.STORED, (ino,))


def test_extremes_are_distinct() -> None:
    """Every kind at the low and high end of every field: no two numbers equal."""
    seen: dict[int, tuple[Kind, tuple[int, ...]]] = {}
    for kind in Kind:
        if kind is Kind.STORED:
            continue
        ends = [(0, 1, (1 << bits) - 2, (1 << bits) - 1) for _, bits in LAYOUT[kind]]
        for values in itertools.product(*ends):
            ino = encode(kind, *values)
            assert ino not in seen, (kind, values, seen.get(ino))
            seen[ino] = (kind, values)
            assert decode(ino) == (kind, values)


@pytest.mark.parametrize("kind", [k for k in Kind if k is not Kind.STORED and LAYOUT[k]])
def test_out_of_range_fields_raise(kind: Kind) -> None:
    layout = LAYOUT[kind]
    for i, (_, bits) in enumerate(layout):
        for bad in (-1, 1 << bits):
            values = [0] * len(layout)
            values[i] = bad
            with pytest.raises(OverflowError):
                encode(kind, *values)
    with pytest.raises(TypeError):
        encode(kind)


def test_agent_views_fit() -> None:
    """An agent's view is a stored view: the largest one a stored inode
    can name still encodes in every agent kind."""
    assert kind_of(fuse_ino(MAX_VIEW, (1 << 40) - 1)) is Kind.STORED
    for kind in (Kind.AGENT_FILE, Kind.WAIT, Kind.OBSERVATION):
        values = (MAX_VIEW,) + (0,) * (len(LAYOUT[kind]) - 1)
        assert fields(encode(kind, *values), kind) == values


def test_wrong_kind_and_foreign_numbers() -> None:
    with pytest.raises(ValueError):
        fields(inodes.GUIDE_INO, Kind.CTLDIR)
    with pytest.raises(ValueError):
        kind_of(inodes.VIRTUAL | 0x7F << inodes.KIND_SHIFT)  # no such kind
    with pytest.raises(ValueError):
        kind_of(inodes.VIRTUAL | 1)  # virtual, kind 0: neither stored nor virtual
    with pytest.raises(ValueError):  # what a view past MAX_VIEW would make of a stored number
        kind_of(MAX_VIEW << LOCAL_BITS | 1)  # (fuse_ino itself now refuses such a view)
    with pytest.raises(OverflowError):
        kind_of(1 << 64)
    assert inodes.CTLDIR_INO != inodes.GUIDE_INO
