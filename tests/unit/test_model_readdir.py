"""readdir: offsets, resuming exactly (no skip, no repeat) while the directory
changes between batches, and large directories."""

from __future__ import annotations

import errno
import random
import stat

from fsutil import mkdir, mkfile, names, raises, symlink

from agentfs.posix.fs import ROOT_INO, FileSystem
from agentfs.storage.keys import name_hash


def batch(fs: FileSystem, d: int, start: int, n: int) -> list[tuple[bytes, int]]:
    """Up to `n` (name, offset) pairs after offset `start` (one kernel READDIR call)."""
    out = []
    for e in fs.readdir(d, start):
        out.append((e.name, e.offset))
        if len(out) == n:
            break
    return out


def read_all_in_batches(fs: FileSystem, d: int, n: int) -> list[bytes]:
    seen: list[bytes] = []
    start = 0
    while True:
        b = batch(fs, d, start, n)
        if not b:
            return seen
        seen += [name for name, _ in b]
        start = b[-1][1]


def test_empty_dir(fs: FileSystem) -> None:
    d = mkdir(fs, ROOT_INO, b"d")
    assert list(fs.readdir(d.ino)) == []
    assert [e.name for e in fs.readdir(ROOT_INO)] == [b"d"]  # no '.' or '..' here


def test_entries_carry_attrs(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f", b"abc")
    d = mkdir(fs, ROOT_INO, b"d")
    s = symlink(fs, ROOT_INO, b"l", b"target")
    got = {e.name: e.attr for e in fs.readdir(ROOT_INO)}
    assert set(got) == {b"f", b"d", b"l"}
    assert got[b"f"].ino == f.ino and got[b"f"].size == 3
    assert got[b"d"].ino == d.ino and stat.S_ISDIR(got[b"d"].mode)
    assert got[b"l"].ino == s.ino and got[b"l"].target == b"target"
    assert got[b"f"] == fs.getattr(f.ino)


def test_offsets_are_stable_hashes_in_order(fs: FileSystem) -> None:
    for i in range(50):
        mkfile(fs, ROOT_INO, b"n%d" % i)
    ents = list(fs.readdir(ROOT_INO))
    offs = [e.offset for e in ents]
    assert offs == sorted(offs)
    assert len(set(offs)) == 50
    assert all(o >= 3 for o in offs)  # 0 means "from the start"
    for e in ents:
        assert e.offset == name_hash(e.name)
    # Resuming after any entry yields exactly the ones after it.
    for i, e in enumerate(ents):
        assert [x.name for x in fs.readdir(ROOT_INO, e.offset)] == [x.name for x in ents[i + 1:]]


def test_offsets_unchanged_by_other_entries(fs: FileSystem) -> None:
    mkfile(fs, ROOT_INO, b"stay")
    before = {e.name: e.offset for e in fs.readdir(ROOT_INO)}
    for i in range(30):
        mkfile(fs, ROOT_INO, b"x%d" % i)
    for i in range(0, 30, 2):
        fs.unlink(ROOT_INO, b"x%d" % i)
    after = {e.name: e.offset for e in fs.readdir(ROOT_INO)}
    assert after[b"stay"] == before[b"stay"]


def test_resume_in_small_batches(fs: FileSystem) -> None:
    want = {b"e%03d" % i for i in range(100)}
    for n in want:
        mkfile(fs, ROOT_INO, n)
    for size in (1, 2, 7, 99, 100, 101):
        got = read_all_in_batches(fs, ROOT_INO, size)
        assert len(got) == len(want)
        assert set(got) == want


def test_resume_with_churn_between_batches(fs: FileSystem) -> None:
    """Entries present throughout are returned exactly once; an entry removed
    before it was reached never appears; nothing repeats."""
    rng = random.Random(11)
    d = mkdir(fs, ROOT_INO, b"d").ino
    present = {b"orig%03d" % i for i in range(300)}
    for n in present:
        mkfile(fs, d, n)
    removed_at: dict[bytes, int] = {}  # name -> how many entries were seen when it went
    added: set[bytes] = set()
    seen: list[bytes] = []
    start = 0
    step = 0
    while True:
        b = batch(fs, d, start, 17)
        if not b:
            break
        seen += [n for n, _ in b]
        start = b[-1][1]
        step += 1
        # Churn: remove some entries (seen and unseen), add new ones.
        candidates = sorted(present - set(removed_at))
        for victim in rng.sample(candidates, min(3, len(candidates))):
            ino = fs.lookup(d, victim).ino
            fs.unlink(d, victim)
            fs.forget(ino)
            removed_at[victim] = len(seen)
        for j in range(4):
            n = b"new%03d_%d" % (step, j)
            mkfile(fs, d, n)
            added.add(n)
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    survivors = present - set(removed_at)
    assert survivors <= set(seen), f"skipped: {sorted(survivors - set(seen))[:5]}"
    for n, when in removed_at.items():
        if n in seen:
            assert seen.index(n) < when, f"{n!r} returned after it was removed"
    assert set(seen) <= present | added
    assert set(names(fs, d)) == survivors | added


def test_resume_after_removed_entry(fs: FileSystem) -> None:
    """The kernel resumes from the offset of an entry that is gone meanwhile."""
    for i in range(40):
        mkfile(fs, ROOT_INO, b"r%d" % i)
    ents = list(fs.readdir(ROOT_INO))
    cut = ents[19]
    fs.unlink(ROOT_INO, cut.name)
    rest = [e.name for e in fs.readdir(ROOT_INO, cut.offset)]
    assert rest == [e.name for e in ents[20:]]
    fs.forget(cut.attr.ino)


def test_resume_after_rename_of_seen_entry(fs: FileSystem) -> None:
    for i in range(30):
        mkfile(fs, ROOT_INO, b"m%d" % i)
    first = batch(fs, ROOT_INO, 0, 10)
    # Rename an entry already returned and one not yet returned.
    fs.rename(ROOT_INO, first[0][0], ROOT_INO, b"renamed-seen")
    all_names = [e.name for e in fs.readdir(ROOT_INO)]
    later = [n for n in all_names if name_hash(n) > first[-1][1]]
    rest = [e.name for e in fs.readdir(ROOT_INO, first[-1][1])]
    assert rest == later
    seen = [n for n, _ in first] + rest
    originals = {b"m%d" % i for i in range(30)} - {first[0][0]}
    assert originals <= set(seen)
    assert len(seen) == len(set(seen))


def test_large_directory(fs: FileSystem) -> None:
    """More entries than one internal batch (256), more than 1000 in all."""
    d = mkdir(fs, ROOT_INO, b"big").ino
    want = [b"file-%05d" % i for i in range(1300)]
    for n in want:
        mkfile(fs, d, n, n)
    ents = list(fs.readdir(d))
    assert len(ents) == 1300
    assert sorted(e.name for e in ents) == want
    assert [e.offset for e in ents] == sorted(e.offset for e in ents)
    # Resume from the middle of each internal batch boundary.
    for k in (255, 256, 257, 511, 512, 1000, 1298, 1299):
        tail = [e.name for e in fs.readdir(d, ents[k].offset)]
        assert tail == [e.name for e in ents[k + 1:]]
    # Batched like a kernel would, with deletions in between.
    seen: list[bytes] = []
    start = 0
    while True:
        b = batch(fs, d, start, 100)
        if not b:
            break
        seen += [n for n, _ in b]
        start = b[-1][1]
        gone = [e.name for e in ents if e.offset > start][:5]
        for n in gone:
            ino = fs.lookup(d, n).ino
            fs.unlink(d, n)
            fs.forget(ino)
    left = set(names(fs, d))
    assert len(seen) == len(set(seen))
    assert left <= set(seen)  # nothing that stayed was skipped
    assert set(seen) <= set(want)


def test_large_directory_churn_during_internal_batches(fs: FileSystem) -> None:
    """Changes while one readdir generator is part way through: entries removed
    beyond what it has fetched do not appear, the others appear exactly once."""
    d = mkdir(fs, ROOT_INO, b"d").ino
    for i in range(900):
        mkfile(fs, d, b"c%04d" % i)
    order = [e.name for e in fs.readdir(d)]
    it = fs.readdir(d)
    seen = [next(it).name for _ in range(300)]
    doomed = set(order[600:650])  # past the generator's second internal batch
    for n in doomed:
        ino = fs.lookup(d, n).ino
        fs.unlink(d, n)
        fs.forget(ino)
    seen += [e.name for e in it]
    assert len(seen) == len(set(seen))
    assert not doomed & set(seen)
    assert set(seen) == set(order) - doomed


def test_readdir_errors(fs: FileSystem) -> None:
    f = mkfile(fs, ROOT_INO, b"f")
    with raises(errno.ENOTDIR):
        list(fs.readdir(f.ino))
    with raises(errno.ENOENT):
        list(fs.readdir(ROOT_INO + 999))


def test_readdir_past_end(fs: FileSystem) -> None:
    mkfile(fs, ROOT_INO, b"a")
    assert list(fs.readdir(ROOT_INO, (1 << 62) - 1)) == []
    assert list(fs.readdir(ROOT_INO, 2)) != []
