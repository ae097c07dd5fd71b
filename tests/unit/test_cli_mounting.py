"""The pieces of `agentfs mount` that need no mount: -o parsing, the
mount(8) helper's arguments, the --store directory check."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from agentfs.cli.fstab import mount_argv
from agentfs.cli.mounting import parse_options
from agentfs.storage.engines import NotAStore, check_store_directory, open_engine, parse


def test_options_are_sorted_into_ours_fuse_and_ignored() -> None:
    o = parse_options(("store=/s,debug,ro,noatime,relatime", "fsname=team,noauto,nofail,_netdev",
                       "x-systemd.requires=a.mount,comment=x,defaults"))
    assert o.store == "/s" and o.debug
    assert o.fuse == ["ro", "noatime", "fsname=team"]
    assert parse_options(()).fuse == [] and parse_options(()).store is None


@pytest.mark.parametrize("spec, says", [
    ("frob", "unknown mount option 'frob'"), ("store=", "unknown mount option 'store='"),
    ("subtype=x", "unknown mount option 'subtype=x'"), ("ro,rw", "contradict"),
    ("strictatime", "unknown mount option 'strictatime'"),
    ("allow_other,allow_root", "exclude each other")])
def test_bad_options_are_refused_by_name(spec: str, says: str) -> None:
    with pytest.raises(click.UsageError, match=says):
        parse_options((spec,))


def test_mount_helper_arguments() -> None:
    assert mount_argv(["/var/lib/s", "/srv/a", "-o", "rw,nofail"]) == [
        "mount", "/srv/a", "--store", "/var/lib/s", "-o", "rw,nofail"]
    assert mount_argv(["none", "/srv/a", "-n", "-o", "store=/s", "-t", "fuse.agentfs"]) == [
        "mount", "/srv/a", "-o", "store=/s"]
    assert mount_argv(["/s", "/srv/a", "-f", "-o", "rw"]) is None  # mount -f: pretend


def test_store_directory_must_be_a_store_empty_or_missing(tmp_path: Path) -> None:
    check_store_directory(parse(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    check_store_directory(parse(tmp_path / "empty"))
    half = tmp_path / "half"  # what a mount leaves before the environment exists
    half.mkdir()
    (half / "agentfs.lock").touch()
    (half / "daemon.log").touch()
    check_store_directory(parse(half))
    other = tmp_path / "other"
    other.mkdir()
    for i in range(7):
        (other / f"f{i}").touch()
    with pytest.raises(NotAStore, match=r"holds f0, f1, f2, f3, f4 and 2 more"):
        check_store_directory(parse(other))
    with pytest.raises(NotAStore):
        open_engine(parse(other))
    e = open_engine(parse(tmp_path / "store"))
    e.close()
    (tmp_path / "store" / "notes.txt").touch()  # a store with more beside it is a store
    check_store_directory(parse(tmp_path / "store"))
    (tmp_path / "file").touch()
    with pytest.raises(NotAStore, match="not a directory"):
        check_store_directory(parse(tmp_path / "file"))
