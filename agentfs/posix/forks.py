"""Views inside one transaction: pins, forks, snapshots, removal of whole trees.

`Tree` extends `Inodes` (inodes.py) with the operations on views: a fork or a
snapshot writes a constant number of keys whatever the size of the tree
(see storage/views.py); pins remember a tree as it is now; killing a view
hands what it held to gc. Like `Inodes`, a `Tree` is bound to one
transaction and composes: this is the piece the agent layer builds on.
"""

from __future__ import annotations

import errno
import os
import stat

from agentfs.errors import FsError
from agentfs.posix.inodes import ROOT_INO, SNAPDIR, Inodes, check_name
from agentfs.storage import keys
from agentfs.storage.codec import ROOT_VIEW, Attr, decode_dentry, fuse_ino, split_ino
from agentfs.storage.keys import attr_suffix


class Tree(Inodes):
    """Everything the POSIX model does, inside transaction `tx`."""

    def free_orphans(self) -> int:
        """Free every orphan (at mount: nothing is open any more), and the
        staged tree of every import the daemon did not finish."""
        n = 0
        for k, _ in list(self.tx.txn.scan(*keys.ORPHAN.span())):
            self.free(*keys.parse_orphan(k))
            n += 1
        for k, _ in list(self.tx.txn.scan(*keys.STAGED.span())):
            self.free_staged(*keys.parse_staged(k))
            n += 1
        return n

    # ------------------------------------------------------------ staged trees

    def stage(self, a: Attr) -> None:
        """Write directory `a` (its inode number allocated, its parent set) as
        the root of a staged tree: no entry leads to it until `unstage`, so
        nothing put under it is visible, and it is freed at the next mount if
        it is never linked in (an import the daemon did not finish)."""
        assert a.is_dir
        self.put_attr(a)
        self.tx.txn.put(keys.staged(*split_ino(a.ino)), b"")

    def unstage(self, ino: int) -> None:
        """The staged tree at `ino` is linked in (or gone): an ordinary tree again."""
        self.tx.txn.delete(keys.staged(*split_ino(ino)))

    def staged_roots(self, view: int) -> list[int]:
        """Local inode numbers of the staged trees of `view`."""
        return [keys.parse_staged(k)[1]
                for k, _ in self.tx.txn.scan(*keys.span(keys.STAGED.of_view(view)))]

    def free_staged(self, view: int, local: int, budget: int = 0) -> bool:
        """Free the staged tree rooted at directory `local`: up to `budget`
        inodes (0: all of it); True once nothing of it is left. Each inode goes
        with its entry (and its parent's link count), so what is left after
        any step is a consistent tree."""
        if not self.tx.view_exists(view) or self.tx.view(view).kind == "dead":
            self.tx.txn.delete(keys.staged(view, local))  # gc drops the view's records
            return True
        freed = 0
        stack: list[tuple[int, int, bytes]] = [(local, 0, b"")]  # (dir, its parent, its name)
        while stack:
            d, parent, name = stack[-1]
            dir_ino = fuse_ino(view, d)
            subdirs = []
            for sub, raw in list(self.tx.scan(view, keys.dentry_dir_suffix(d))):
                child_name = keys.parse_dentry_tail(sub)[1]
                _, child, ftype = decode_dentry(raw)
                if stat.S_ISDIR(ftype):
                    subdirs.append((child, d, child_name))
                    continue
                if budget and freed >= budget:
                    return False
                self.unlink_entry(dir_ino, child_name)
                a = self.attr(fuse_ino(view, child))
                a.nlink -= 1
                if a.nlink:
                    self.put_attr(a)  # a hard link: its last entry frees it
                else:
                    self.free(view, child)
                freed += 1
            if subdirs:
                stack.extend(subdirs)
                continue
            if budget and freed >= budget:
                return False
            stack.pop()
            self.free(view, d)
            freed += 1
            if not parent:
                self.unstage(dir_ino)
                return True
            self.unlink_entry(fuse_ino(view, parent), name)
            p = self.attr(fuse_ino(view, parent))
            p.nlink -= 1
            self.put_attr(p)
        return True

    def forget(self, ino: int) -> None:
        """The kernel holds no more references: free the inode if it is unlinked."""
        view, local = split_ino(ino)
        if self.tx.txn.get(keys.orphan(view, local)) is not None:
            self.free(view, local)

    def free(self, view: int, local: int) -> None:
        self.tx.txn.delete(keys.orphan(view, local))
        if not self.tx.view_exists(view) or self.tx.view(view).kind == "dead":
            return
        a = self.tx.get(view, attr_suffix(local))
        if a is not None and Attr.decode(a).is_dir and self.drop_dir_view(view, local):
            return
        for sub, _ in list(self.tx.scan(view, keys.ino_suffix(local))):
            self.tx.remove(view, keys.ino_suffix(local) + sub)
        self.tx.mark_dirty(view)

    def drop_dir_view(self, view: int, local: int) -> bool:
        """A removed directory takes its snapshots (and, if it was the root of a
        fork, the fork itself) with it. True if the whole view went."""
        for k, raw in list(self.tx.txn.scan(*keys.span(keys.snapshot_prefix(view, local)))):
            self.kill_view(keys.read_u32(raw))
            self.tx.txn.delete(k)
        v = self.tx.view(view)
        if v.root == local and view != ROOT_VIEW:
            self.kill_view(view)
            return True
        return False

    def pin_tree(self, view: int, holder: bytes, epoch: int | None = None,
                  top: int | None = None) -> int:
        """Pin `view` and every view nested in it (their state is part of the
        tree); only those mounted under directory `top` of the view if given
        (for "now" only: where a view sat at a past epoch is not tracked)."""
        e = self.tx.pin(view, holder, epoch)
        for k, _ in list(self.tx.txn.scan(*keys.span(keys.contained_prefix(view)))):
            inner = keys.parse_contained(k)[1]
            if self.tx.view(inner).kind in ("dead", "snapshot"):
                continue
            if top is not None and epoch is None and not self.mounted_under(view, top,
                                                                             inner):
                continue
            if epoch is None or self.tx.is_pinned(inner, e):
                self.tx.txn.put(keys.pin(inner, e, holder), b"")
                self.tx.store._maxpin[inner] = max(self.tx.maxpin(inner), e)
                self.pin_nested(inner, holder, e)
        return e

    def mounted_under(self, view: int, top: int, inner: int) -> bool:
        """Is nested view `inner`'s root entry inside directory `top` of `view`?
        (Unsure answers say yes: pinning too much is only a cost.)"""
        want = fuse_ino(view, top)
        try:
            root = self.attr(fuse_ino(inner, self.tx.view(inner).root))
            return any(a.ino == want for a in self.ancestors(root))
        except FsError:
            return True

    def pin_nested(self, view: int, holder: bytes, e: int) -> None:
        for k, _ in list(self.tx.txn.scan(*keys.span(keys.contained_prefix(view)))):
            inner = keys.parse_contained(k)[1]
            if self.tx.view(inner).kind in ("dead", "snapshot"):
                continue
            self.tx.txn.put(keys.pin(inner, e, holder), b"")
            self.tx.store._maxpin[inner] = max(self.tx.maxpin(inner), e)
            self.pin_nested(inner, holder, e)

    def release(self, holder: bytes, epochs: set[int] | None = None) -> None:
        """Release every pin `holder` has (only those at `epochs` if given). A
        dead view left unpinned by that lets go of the views it read through
        to, and so on down."""
        released = self._unpin_holder(holder, epochs)
        while released:
            v = released.pop()
            if self.tx.view_exists(v) and self.tx.view(v).kind == "dead" and not self.tx.pins(v):
                released |= self._unpin_holder(keys.view_holder(v), None)

    def _unpin_holder(self, holder: bytes, epochs: set[int] | None) -> set[int]:
        if epochs is None:
            return self.tx.release_holder(holder)
        released = set()
        for k, _ in list(self.tx.txn.scan(*keys.PIN.span())):
            vid, epoch, h = keys.parse_pin(k)
            if h == holder and epoch in epochs:
                self.tx.unpin(vid, epoch, holder)
                released.add(vid)
        return released

    def pin(self, dir_ino: int, holder: bytes) -> int:
        """Remember the tree under `dir_ino`'s view as it is now; returns the epoch."""
        self.dir(dir_ino)
        view, local = split_ino(dir_ino)
        return self.pin_tree(view, holder, top=local)

    def fork(self, src_dir: int, dst_dir: int, dst_name: bytes, epoch: int | None = None,
             uid: int = 0, gid: int = 0) -> Attr:
        """Make `dst_dir/dst_name` a copy-on-write copy of directory `src_dir`
        (as it is now, or as it was at a pinned `epoch`). Constant cost."""
        check_name(dst_name)
        if epoch is None:
            self.dir(src_dir)
        else:
            # The tree as it was: its view may have been removed since (an
            # agent's history outlives it while forks still need its turns).
            self.tx.view(split_ino(src_dir)[0])
        dd = self.live_dir(dst_dir)
        self.check_reserved(dst_dir, dst_name)
        if self.entry(dst_dir, dst_name) is not None:
            raise FsError(errno.EEXIST, "destination exists")
        if self.tx.view(split_ino(dst_dir)[0]).readonly:
            raise FsError(errno.EROFS, "snapshots are read-only")
        sview, slocal = split_ino(src_dir)
        sv = self.tx.view(sview)
        chain = self.tx.levels(sview)
        vid = self.tx.store.next_view
        holder = keys.view_holder(vid)
        if sv.readonly:
            # A fork of a snapshot: same frozen state, writable.
            if epoch is not None:
                raise FsError(errno.EINVAL, "a snapshot has a single epoch")
            e = sv.chain[0][1]
            self.tx.pin(sv.chain[0][0], holder, e)
            new_chain = list(sv.chain)
        else:
            e = self.pin_tree(sview, holder, epoch, top=slocal)
            new_chain = [(sview, e), *chain[1:]]
        nv = self.tx.new_view(new_chain, slocal, False, split_ino(dst_dir)[0], "fork",
                         self.tx.peek_next_ino(sview))
        assert nv.id == vid
        self.tx.txn.put(keys.contained(split_ino(dst_dir)[0], vid), b"")
        root_ino = fuse_ino(vid, slocal)
        root = self.attr(root_ino)  # as it was at the fork epoch
        now = self.clock()
        self.set_parent(root, dst_dir)
        root.ctime_ns = now
        self.put_attr(root)
        self.link_entry(dst_dir, dst_name, root)
        dd.nlink += 1
        self.touch(dd, now)
        return root

    def snapshot(self, dir_ino: int, name: bytes, epoch: int | None = None,
                 source: int | None = None) -> Attr:
        """Create read-only snapshot `name` of directory `dir_ino` (reached as
        DIR/.snapshots/NAME); at a pinned `epoch` if given. With `source` (a
        directory inode, maybe of a removed view), the snapshot shows that tree
        at `epoch` instead: an agent's turn snapshot of a turn it inherited."""
        check_name(name)
        self.dir(dir_ino)
        view, local = split_ino(dir_ino)
        if self.tx.view(view).readonly:
            raise FsError(errno.EROFS, "cannot snapshot inside a snapshot")
        key = keys.snapshot(view, local, name)
        if self.tx.txn.get(key) is not None:
            raise FsError(errno.EEXIST, "snapshot exists")
        sview, slocal = (view, local) if source is None else split_ino(source)
        if source is not None and epoch is None:
            raise FsError(errno.EINVAL, "a snapshot of another tree needs its epoch")
        sv = self.tx.view(sview)
        vid = self.tx.store.next_view
        e = self.pin_tree(sview, keys.view_holder(vid), epoch, top=slocal)
        nv = self.tx.new_view([(sview, e), *sv.chain], slocal, True, view, "snapshot",
                              self.tx.peek_next_ino(sview))
        self.tx.txn.put(keys.contained(view, nv.id), b"")
        self.tx.txn.put(key, keys.u32(nv.id))
        return self.attr(fuse_ino(nv.id, slocal))

    def snapshots(self, dir_ino: int) -> list[tuple[bytes, Attr]]:
        """Named snapshots of directory `dir_ino`, with their roots."""
        self.dir(dir_ino)
        view, local = split_ino(dir_ino)
        out = []
        for k, raw in self.tx.txn.scan(*keys.span(keys.snapshot_prefix(view, local))):
            sv = self.tx.view(keys.read_u32(raw))
            out.append((keys.parse_snapshot(k)[2], self.attr(fuse_ino(sv.id, sv.root))))
        return out

    def snapshot_root(self, dir_ino: int, name: bytes) -> Attr:
        view, local = split_ino(dir_ino)
        raw = self.tx.txn.get(keys.snapshot(view, local, name))
        if raw is None:
            raise FsError(errno.ENOENT, "no such snapshot")
        sv = self.tx.view(keys.read_u32(raw))
        return self.attr(fuse_ino(sv.id, sv.root))

    def delete_snapshot(self, dir_ino: int, name: bytes) -> None:
        view, local = split_ino(dir_ino)
        key = keys.snapshot(view, local, name)
        raw = self.tx.txn.get(key)
        if raw is None:
            raise FsError(errno.ENOENT, "no such snapshot")
        self.tx.txn.delete(key)
        self.kill_view(keys.read_u32(raw))

    def kill_view(self, vid: int) -> None:
        """Mark a view (and the views nested in it) dead; gc reclaims what they held.

        A dead view keeps its own pins (on the views it reads through to) for
        as long as something still pins it: a snapshot taken earlier may see
        it, and so everything under it. The last unpin releases them."""
        v = self.tx.view(vid)
        if v.kind == "dead":
            return
        v.kind = "dead"  # (the cached definition: release sees it)
        # Deletions first: on a full store, this is how space comes back.
        self.tx.txn.delete(keys.contained(v.container, vid))
        for k, _ in list(self.tx.txn.scan(*keys.span(keys.contained_prefix(vid)))):
            self.kill_view(keys.parse_contained(k)[1])
        if not self.tx.pins(vid):
            self.release(keys.view_holder(vid))
        self.tx.save_view(v)
        self.tx.mark_dirty(vid)

    def detach(self, dir_ino: int, name: bytes) -> None:
        """Remove fork root `dir_ino/name` and everything in it at once
        (`rm -rf` would write a tombstone per file)."""
        d = self.dir(dir_ino)
        child = self.entry(dir_ino, name)
        if child is None:
            raise FsError(errno.ENOENT, "no such entry")
        cview, clocal = split_ino(child)
        if cview == split_ino(dir_ino)[0] or self.tx.view(cview).root != clocal:
            raise FsError(errno.EINVAL, "not the root of a fork")
        self.kill_view(cview)  # first: it frees what it can
        self.unlink_entry(dir_ino, name)
        d.nlink -= 1
        self.touch(d, self.clock())

    def path_ino(self, path: str) -> int:
        """Resolve a path relative to the root (no symlinks followed)."""
        ino = ROOT_INO
        parts = iter(path.strip("/").split("/"))
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                ino = self.parent_of(self.attr(ino))
            elif part == SNAPDIR.decode():
                name = next(parts, "")
                if not name:
                    raise FsError(errno.EINVAL, "name a snapshot: DIR/.snapshots/NAME")
                ino = self.snapshot_root(ino, os.fsencode(name)).ino
            else:
                ino = self.lookup(ino, os.fsencode(part)).ino
        return ino
