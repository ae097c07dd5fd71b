"""`mount.fuse.agentfs`: the helper mount(8) runs for `mount -t fuse.agentfs`
and for /etc/fstab lines of type fuse.agentfs.

mount(8) calls `/sbin/mount.fuse.agentfs SPEC DIR [-sfnv] [-o OPTS]`, with
fstab's own options (noauto, x-*, ...) mostly removed; scripts/install links
/sbin/mount.fuse.agentfs to this entry point. SPEC is the store (a directory
or a store URL); `none` as SPEC means the store given by
`-o store=...`, else the default one. Everything else is `agentfs mount DIR
--store SPEC -o OPTS`: the same checks, the same messages, and a return once
the mount is live (the daemon stays in the background).
"""

from __future__ import annotations

import argparse
import sys

PLACEHOLDER_SPECS = ("none",)  # mount(8) leaves "none" as it is (a path it canonicalizes)


def mount_argv(argv: list[str]) -> list[str] | None:
    """The `agentfs` arguments that do what mount(8) asked the helper for
    (None: nothing to do, `mount -f` only pretends)."""
    p = argparse.ArgumentParser(prog="mount.fuse.agentfs",
                                description="mount(8) helper for fuse.agentfs")
    p.add_argument("spec", help="the store (DIR or URL), or none for -o store= or the default")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", action="append", default=[])
    # mount(8)'s own flags: sloppy, fake, no mtab, verbose; and its fs type.
    for flag in ("-s", "-f", "-n", "-v"):
        p.add_argument(flag, action="store_true")
    p.add_argument("-t", dest="fstype", default="fuse.agentfs")
    args = p.parse_args(argv)
    if args.f:
        return None
    out = ["mount", args.mountpoint]
    if args.spec not in PLACEHOLDER_SPECS:
        out += ["--store", args.spec]
    for opts in args.options:
        out += ["-o", opts]
    return out


def main(argv: list[str] | None = None) -> None:
    from agentfs.cli.main import main as agentfs

    args = mount_argv(sys.argv[1:] if argv is None else argv)
    if args is not None:
        agentfs(args, prog_name="mount.fuse.agentfs")
