"""The `agentfs` command. Daemon code is imported lazily, only by `mount`; the
client library (agentfs.client) only by the agent commands."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from agentfs.cli.completion import agent_names, agent_or_path
from agentfs.cli.events import events as events_command
from agentfs.cli.graph import FORMATS as TREE_FORMATS
from agentfs.cli.mounting import ExistingDir, refuse_dead


def default_store() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "agentfs" / "default"


def is_mountpoint(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def find_mount(path: str) -> Path:
    """The agentfs mount root that `path` (existing or not) lies in."""
    refuse_dead(path)
    p = Path(os.path.abspath(path))
    for cand in (p, *p.parents):
        if cand.exists() and is_mountpoint(str(cand)) and (cand / ".agentfs" / "ctl").exists():
            return cand
    raise click.ClickException(f"{path} is not inside an agentfs mount")


def control(mount: Path, *words: str) -> str:
    """Write one command to the mount's control file; raise with errstr on failure."""
    line = " ".join(shlex.quote(w) for w in words) + "\n"
    try:
        with open(mount / ".agentfs" / "ctl", "w") as f:
            f.write(line)
    except OSError as e:
        reason = (mount / ".agentfs" / "errstr").read_text().strip()
        raise click.ClickException(f"{words[0]} failed ({e.strerror}): {reason}")
    return (mount / ".agentfs" / "ctl").read_text().strip()


def rel(mount: Path, path: str) -> str:
    p = Path(os.path.abspath(path))
    try:
        return "/" + str(p.relative_to(mount))
    except ValueError:
        raise click.ClickException(f"{path} is not inside {mount}")


@click.group()
def main() -> None:
    """agentfs: a FUSE filesystem for multi-agent coordination."""


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--store", default=None,
              help="store URL: lmdb:DIR, or just DIR (default $XDG_DATA_HOME/agentfs/default)")
@click.option("--foreground/--background", default=False,
              help="stay attached (systemd, tests) or return once mounted")
@click.option("--debug", is_flag=True, help="log every request")
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]",
              help="mount options: store=URL, debug, ro, allow_root, fsname=NAME, nosuid, "
                   "noatime, ... (see fuse(8)); fstab's noauto, nofail, _netdev, x-* are "
                   "ignored")
def mount(mountpoint: str, store: str | None, foreground: bool, debug: bool,
          options: tuple[str, ...]) -> None:
    """Mount the store on MOUNTPOINT."""
    import logging

    from agentfs.cli.mounting import clear_dead_mount, parse_options, wait_for_store

    opts = parse_options(options)
    if store and opts.store and store_url(store) != store_url(opts.store):
        raise click.UsageError(f"--store {store} and -o store={opts.store} disagree")
    debug = debug or opts.debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    url = store_url(store or opts.store)
    if url.directory is None:
        raise click.ClickException(f"{url} cannot be mounted: a mount needs a store kept in "
                                   "a directory (lmdb:DIR)")
    check_store_directory(url)
    directory = url.directory

    def say(line: str) -> None:
        click.echo(f"agentfs: {line}", err=True)

    clear_dead_mount(mountpoint, say)
    wait_for_store(directory, say)
    where = os.path.abspath(mountpoint)
    from agentfs.daemon.main import MountError, daemonize_and_mount, run_mount

    if not foreground:
        code = daemonize_and_mount(mountpoint, directory, debug, opts.fuse)
        if code == 0:
            click.echo(f"mounted {url} at {where}")
        sys.exit(code)

    def ready() -> None:
        click.echo(f"mounted {url} at {where}")
        sys.stdout.flush()

    try:
        run_mount(mountpoint, directory, ready, debug=debug, fuse_options=opts.fuse)
    except MountError as e:
        raise click.ClickException(str(e))


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--timeout", default=60.0, help="seconds to wait for the daemon to finish")
def umount(mountpoint: str, timeout: float) -> None:
    """Flush and unmount MOUNTPOINT; waits until the daemon has exited.
    A dead mount (its daemon killed) is detached."""
    from agentfs.cli.mounting import detach, is_dead

    mnt = Path(os.path.abspath(mountpoint))
    if is_dead(mnt):
        detach(mnt)
        click.echo(f"{mnt} was a dead mount (its daemon is gone); detached it")
        return
    if not os.path.isdir(mnt):
        raise click.ClickException(f"{mountpoint} does not exist")
    if not is_mountpoint(str(mnt)):
        raise click.ClickException(f"{mountpoint} is not mounted")
    pid = 0
    try:
        status = (mnt / ".agentfs" / "ctl").read_text()
        pid = int(status.split("pid=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    res = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        raise click.ClickException(res.stderr.strip() or "fusermount3 failed")
    deadline = time.monotonic() + timeout
    while pid and os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)


def json_option(shape: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--json: print the command's result as JSON of the given (documented) shape."""
    return click.option("--json", "as_json", is_flag=True,
                        help=f"print JSON instead: {shape}")


def echo_json(value: Any) -> None:
    """One line, as recv --json and export print (pipe it to jq to read it)."""
    import json

    click.echo(json.dumps(value, ensure_ascii=False))


def mount_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--mount", "mount_opt", type=click.Path(file_okay=False), default=None,
        help="the agentfs mount agent names refer to (default: $AGENTFS_MOUNT, "
             "else the mount the current directory is in)")(f)


@contextmanager
def client_errors() -> Iterator[None]:
    """The client's errors (errno + the daemon's reason) as one-line CLI errors."""
    from agentfs.client import AgentfsError

    try:
        yield
    except AgentfsError as e:
        raise click.ClickException(str(e))


def client_mount(mount_opt: str | None) -> Any:
    """The agentfs.client.Mount agent names resolve against."""
    from agentfs.client import Mount

    with client_errors():
        return Mount.find(mount_opt) if mount_opt else Mount.find()


def looks_like_path(arg: str) -> bool:
    return "/" in arg or arg in (".", "..")


def agent_of_path(path: str, mount_opt: str | None = None) -> tuple[Any, str] | None:
    """(mount, NAME) when `path` is MOUNT/agents/NAME or lies inside it."""
    p = Path(os.path.abspath(path))
    m = client_mount(mount_opt or str(p))
    for base in {m.agents_dir, Path(os.path.realpath(m.agents_dir))}:
        for cand in {p, Path(os.path.realpath(p))}:
            try:
                parts = cand.relative_to(base).parts
            except ValueError:
                continue
            if parts:
                return m, parts[0]
    return None


def resolve_agent(arg: str, mount_opt: str | None) -> tuple[Any, str]:
    """An agent NAME, or a path to (or inside) MOUNT/agents/NAME."""
    if looks_like_path(arg):
        found = agent_of_path(arg, mount_opt)
        if found is None:
            raise click.ClickException(f"{arg} is not an agent's directory (MOUNT/agents/NAME)")
        return found
    return client_mount(mount_opt), arg


def the_agent(arg: str, mount_opt: str | None) -> Any:
    m, name = resolve_agent(arg, mount_opt)
    with client_errors():
        return m.agent(name)


@main.command()
@click.argument("src", shell_complete=agent_or_path)
@click.argument("dst")
@click.option("--at", "epoch", type=int, default=None,
              help="directories: fork the state at a pinned epoch; agents: fork the agent "
                   "as it was after turn N")
@mount_option
def fork(src: str, dst: str, epoch: int | None, mount_opt: str | None) -> None:
    """Fork directory SRC as DST (copy-on-write, same mount), or fork agent SRC as
    agent DST, conversation and files together (SRC an agent NAME or MOUNT/agents/NAME).

    A path that exists is taken as a directory unless it is an agent's directory;
    a bare name that is not a directory here is an agent's name."""
    refuse_dead(src)
    refuse_dead(dst)
    agent = fork_source_agent(src, mount_opt)
    if agent is None:
        if not os.path.exists(src):
            raise click.BadParameter(f"Directory {src!r} does not exist.", param_hint="'SRC'")
        if not os.path.isdir(src):
            raise click.BadParameter(f"Directory {src!r} is a file.", param_hint="'SRC'")
        m = find_mount(src)
        args = [rel(m, src), rel(m, dst)] + ([str(epoch)] if epoch else [])
        control(m, "fork", *args)
        click.echo(os.path.abspath(dst))
        return
    mount, name = agent
    new = dst
    if looks_like_path(dst):
        p = Path(os.path.abspath(dst))
        if p.parent not in (mount.agents_dir, Path(os.path.realpath(mount.agents_dir))):
            raise click.ClickException(f"{dst}: an agent forks into {mount.agents_dir}; "
                                       "give DST as a name (or MOUNT/agents/NAME)")
        new = p.name
    with client_errors():
        forked = mount.agent(name).fork(new, epoch)
    click.echo(str(forked.path))


def fork_source_agent(src: str, mount_opt: str | None) -> tuple[Any, str] | None:
    """(mount, NAME) if SRC names an agent; None for a directory fork."""
    if mount_opt and not looks_like_path(src):
        return client_mount(mount_opt), src
    if os.path.isdir(src):
        p = Path(os.path.abspath(src))
        if p.parent.name == "agents" and (p.parent.parent / ".agentfs" / "ctl").exists():
            return client_mount(str(p.parent.parent)), p.name
        return None
    if os.path.exists(src) or looks_like_path(src):
        return None
    from agentfs.client import AgentfsError, Mount

    try:
        m = Mount.find()
    except AgentfsError:
        raise click.BadParameter(f"Directory {src!r} does not exist, and no agentfs mount "
                                 "is known to look up an agent of that name (use --mount or "
                                 "AGENTFS_MOUNT).", param_hint="'SRC'")
    if not m.exists(src):
        raise click.ClickException(f"no agent named {src!r} in {m.path} "
                                   f"(and no directory {src!r} here)")
    return m, src


@main.command()
@click.argument("directory", type=ExistingDir())
@click.argument("name")
@click.option("--delete", is_flag=True, help="delete snapshot NAME instead")
@click.option("--at", "epoch", type=int, default=None, help="snapshot a pinned epoch")
def snapshot(directory: str, name: str, delete: bool, epoch: int | None) -> None:
    """Create (or --delete) read-only snapshot NAME of DIRECTORY: DIRECTORY/.snapshots/NAME."""
    m = find_mount(directory)
    if delete:
        control(m, "unsnapshot", rel(m, directory), name)
    else:
        control(m, "snapshot", rel(m, directory), name, *([str(epoch)] if epoch else []))


@main.command()
@click.argument("directory", type=ExistingDir())
@json_option("[{name, path}], by name")
def snapshots(directory: str, as_json: bool) -> None:
    """List the snapshots of DIRECTORY."""
    where = Path(os.path.abspath(directory)) / ".snapshots"
    names = sorted(os.listdir(where))
    if as_json:
        echo_json([{"name": n, "path": str(where / n)} for n in names])
        return
    for name in names:
        click.echo(name)


@main.command()
@click.option("--store", default=None, help="store URL or directory (lmdb:DIR)")
@click.option("--mount", "mountpoint", type=ExistingDir(), default=None,
              help="run gc inside the daemon serving this mount")
@json_option("{views, versions, dropped_views}: what this run collected")
def gc(store: str | None, mountpoint: str | None, as_json: bool) -> None:
    """Reclaim versions and blocks no view can see."""
    if mountpoint:
        status = control(find_mount(mountpoint), "gc")
        if as_json:
            echo_json(gc_counts(status))
        else:
            click.echo(status)
        return
    from agentfs.cli.progress import progress_bar
    from agentfs.posix.fs import FileSystem
    from agentfs.storage.gc import collect

    url = store_url(store)
    lock = _lock_unmounted(url.directory) if url.directory and url.directory.is_dir() else None
    fs = FileSystem(open_store(url))
    with progress_bar("gc", "views", plain=False) as bar:
        stats = collect(fs.store, everything=True, progress=bar)
    fs.engine.close()
    if lock is not None:
        os.close(lock)
    if as_json:
        echo_json(stats)
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in stats.items()))


def gc_counts(status: str) -> dict[str, int]:
    """The counts in the daemon's status line after `gc`: ... last='gc views=N ...'."""
    import ast

    try:
        last = ast.literal_eval(status.split(" last=", 1)[1].strip())
        return {k: int(v) for k, v in (w.split("=", 1) for w in last.split()[1:])}
    except (IndexError, ValueError, SyntaxError) as e:
        raise click.ClickException(f"unexpected status from the daemon after gc: {status!r} "
                                   f"({e})")


def store_url(store: str | None) -> Any:
    """The store named by --store (a URL, or a directory: an LMDB store)."""
    from agentfs.storage.engines import parse

    try:
        return parse(store or default_store())
    except ValueError as e:
        raise click.ClickException(str(e))


def check_store_directory(url: Any) -> None:
    """Refuse a --store directory that holds something else than a store."""
    from agentfs.storage.engines import NotAStore
    from agentfs.storage.engines import check_store_directory as check

    try:
        check(url)
    except NotAStore as e:
        raise click.ClickException(str(e))


def open_store(url: Any) -> Any:
    """The engine of an existing store (a clear error when there is none)."""
    from agentfs.storage.engines import StoreMissing, open_engine

    try:
        return open_engine(url, create=False)
    except StoreMissing as e:
        raise click.ClickException(str(e))


def _lock_unmounted(store: Path) -> int:
    """Hold the store's lock: refuse to work on a store a daemon is serving."""
    from agentfs.storage.lock import StoreBusy, lock_store

    try:
        return lock_store(store)
    except StoreBusy as e:
        raise click.ClickException(f"store {store} is mounted ({e.holder}); "
                                   "use agentfs gc --mount MOUNTPOINT")


@main.command()
@click.option("--store", default=None, help="store URL or directory (lmdb:DIR)")
@json_option("{clean, problems, summary}")
def fsck(store: str | None, as_json: bool) -> None:
    """Check every invariant of the store; exit 0 only when clean."""
    from agentfs.cli.progress import progress_bar
    from agentfs.fsck import check_store

    engine = open_store(store_url(store))
    with progress_bar("fsck", "keys+inodes", plain=False) as bar:
        report = check_store(engine, progress=bar)
    engine.close()
    if as_json:
        echo_json({"clean": not report.problems, "problems": report.problems,
                   "summary": report.summary()})
        sys.exit(1 if report.problems else 0)
    for line in report.problems:
        click.echo(f"PROBLEM {line}")
    click.echo(report.summary())
    sys.exit(1 if report.problems else 0)


# ----------------------------------------------------------------- agents


@main.command()
@click.argument("name")
@click.option("--parent", default=None, shell_complete=agent_names,
              help="record agent PARENT as the spawner (default: $AGENTFS_AGENT, or the "
                   "agent whose directory this runs in)")
@click.option("--prompt-file", type=click.File("r"), default=None,
              help="the agent's prompt, from a file or - for stdin")
@mount_option
def spawn(name: str, parent: str | None, prompt_file: Any, mount_opt: str | None) -> None:
    """Spawn agent NAME (mkdir MOUNT/agents/NAME); prints its directory."""
    m = client_mount(mount_opt)
    prompt = prompt_file.read() if prompt_file is not None else None
    with client_errors():
        a = m.spawn(name, prompt=prompt, parent=parent)
    click.echo(str(a.path))


@main.command()
@click.argument("name", shell_complete=agent_or_path)
@click.argument("text")
@click.option("--from", "sender", default=None, shell_complete=agent_names,
              help="send as agent SENDER (default: $AGENTFS_AGENT, or the agent whose "
                   "directory this runs in)")
@click.option("--name", "msg_name", default="msg", show_default=True,
              help="the message's name in the inbox (it becomes SEQ-SENDER+NAME)")
@mount_option
def send(name: str, text: str, sender: str | None, msg_name: str,
         mount_opt: str | None) -> None:
    """Send TEXT (or - for stdin) to agent NAME's inbox."""
    m, target = resolve_agent(name, mount_opt)
    if text == "-":
        data = sys.stdin.buffer.read()
    else:
        data = (text if text.endswith("\n") else text + "\n").encode()
    with client_errors():
        m.send(target, data, sender=sender, name=msg_name)


@main.command()
@click.argument("name", shell_complete=agent_or_path)
@click.option("--wait", "wait", type=float, default=None,
              help="give up after SECONDS (exit 1); default: wait until a message comes")
@click.option("--keep", is_flag=True, help="leave the message in the inbox")
@click.option("--json", "as_json", is_flag=True,
              help="print {seq, sender, name, text, path} as JSON")
@mount_option
def recv(name: str, wait: float | None, keep: bool, as_json: bool,
         mount_opt: str | None) -> None:
    """Take the first message from agent NAME's inbox; print "SENDER: TEXT"."""
    a = the_agent(name, mount_opt)
    with client_errors():
        msg = a.recv(timeout=wait, consume=not keep)
    if msg is None:
        click.echo(f"no message for {a.name} within {wait:g}s", err=True)
        sys.exit(1)
    if as_json:
        import json

        click.echo(json.dumps({"seq": msg.seq, "sender": msg.sender, "name": msg.name,
                               "text": msg.text, "path": str(msg.path)}, ensure_ascii=False))
    else:
        text = msg.text[:-1] if msg.text.endswith("\n") else msg.text
        click.echo(f"{msg.sender}: {text}")


@main.command()
@click.argument("agent", shell_complete=agent_or_path)
@click.option("--model", default=None,
              help="the Claude model (default: the one the agent last ran with, a fork's "
                   "origin's included; else $AGENTFS_MODEL; else claude-sonnet-4-6)")
@click.option("--max-turns", type=click.IntRange(min=1), default=100, show_default=True,
              help="model requests this run may make; then status idle")
@click.option("--max-tokens", type=click.IntRange(min=1), default=8192, show_default=True,
              help="max_tokens of each request")
@click.option("--wait", "wait", type=float, default=0.0, show_default=True,
              help="when the model ends its turn, wait this many seconds for a message")
@click.option("--children/--no-children", default=True, show_default=True,
              help="start runners for the agents this one spawns or forks")
@click.option("--max-retries", type=click.IntRange(min=0), default=8, show_default=True,
              help="SDK retries (with backoff) of 429, 5xx and overloaded answers")
@click.option("--quiet", "-q", is_flag=True, help="no progress lines on stderr")
@mount_option
def run(agent: str, model: str | None, max_turns: int, max_tokens: int, wait: float,
        children: bool, max_retries: int, quiet: bool, mount_opt: str | None) -> None:
    """Run AGENT (MOUNT/agents/NAME, or NAME) with Claude until it ends its turn.

    Sends the agent's context.json through the Anthropic SDK (ANTHROPIC_API_KEY,
    ANTHROPIC_BASE_URL), appends replies and tool results to its transcript,
    delivers its messages between turns, and keeps status and usage current.
    Ctrl-C leaves a consistent transcript; run again to resume."""
    from agentfs.client import runner

    m, name = resolve_agent(agent, mount_opt)
    problem = runner.api_key_problem()
    if problem:
        raise click.ClickException(problem)
    with client_errors():
        m.agent(name)
    runner.speak_as(name)  # re-executes with AGENTFS_AGENT=NAME when needed

    def progress(line: str) -> None:
        click.echo(f"[{name}] {line}", err=True)

    with client_errors():
        result = runner.run_agent(m.agent(name), model=model, max_turns=max_turns,
                                  max_tokens=max_tokens, wait=wait, children=children,
                                  max_retries=max_retries, log=None if quiet else progress)
    click.echo(result.summary())
    sys.exit(result.exit_code)


def lineage_records(mount_opt: str | None) -> list[dict[str, Any]]:
    m = client_mount(mount_opt)
    with client_errors():
        return m.lineage()  # type: ignore[no-any-return]


def agent_infos(mount_opt: str | None) -> list[dict[str, Any]]:
    """Every agent's lineage record with its usage (agentinfo.agent_info), parents first."""
    from agentfs.cli.agentinfo import agent_infos as join

    m = client_mount(mount_opt)
    with client_errors():
        return join(m, m.lineage())


@main.command(name="ls")
@json_option("[{name, status, turns, parent, origin, kind, shared_prefix_turns, usage}], "
             "by name")
@mount_option
def ls_agents(as_json: bool, mount_opt: str | None) -> None:
    """List the agents: name, status, turns, parent, origin (fork source@turn), cost
    and cache-read share (from agents/NAME/usage; - when it has none of its own)."""
    from agentfs.cli.agentinfo import ls_lines

    infos = agent_infos(mount_opt)
    if as_json:
        echo_json(sorted(infos, key=lambda i: i["name"]))
        return
    for line in ls_lines(infos):
        click.echo(line)


@main.command()
@click.option("--format", "fmt", type=click.Choice(TREE_FORMATS),
              default=None, help="text (default), json, Graphviz dot source, or svg/png "
                                 "drawn by Graphviz's dot (default: from -o FILE's suffix)")
@click.option("--json", "as_json", is_flag=True,
              help="the same as --format json: the roots, each agent as in ls --json with "
                   "its children nested")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="write to FILE instead of stdout")
@mount_option
def tree(fmt: str | None, as_json: bool, output: str | None, mount_opt: str | None) -> None:
    """Draw the spawn/fork tree (children under their parent), as text or a graph."""
    from agentfs.cli import graph, treeview

    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json and --format {fmt} contradict each other")
    fmt = "json" if as_json else graph.format_for(fmt, output)
    infos = agent_infos(mount_opt)
    if fmt == "text":
        data = "".join(line + "\n" for line in treeview.text_lines(infos)).encode()
    elif fmt == "json":
        data = treeview.nested_json_text(infos).encode()
    else:
        data = graph.dot_source(infos).encode()
        if fmt in graph.RENDERED:
            try:
                data = graph.render(data.decode(), fmt)
            except graph.RenderError as e:
                raise click.ClickException(str(e))
    write_output(data, output, binary=fmt == "png")


def write_output(data: bytes, output: str | None, binary: bool) -> None:
    """To -o FILE, else stdout (but no binary image onto a terminal)."""
    if output is None:
        if binary and sys.stdout.isatty():
            raise click.ClickException("not writing a PNG to a terminal: use -o FILE "
                                       "or redirect stdout")
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        with open(output, "wb") as f:
            f.write(data)
    except OSError as e:
        raise click.ClickException(f"cannot write {output}: {e.strerror}")


def summarise(text: str, full: bool, width: int = 100) -> str:
    if full or len(text) <= width:
        return text
    return text[:width] + f"… ({len(text)} chars)"


def block_lines(b: Any, full: bool) -> list[str]:
    """One content block, readable."""
    import json

    if not isinstance(b, dict):
        return [summarise(json.dumps(b, ensure_ascii=False), full)]
    t = b.get("type")
    if t == "text":
        return str(b.get("text", "")).splitlines() or [""]
    if t == "tool_use":
        args = json.dumps(b.get("input", {}), ensure_ascii=False, sort_keys=True)
        return [f"→ tool_use {b.get('name')} [{b.get('id')}] {summarise(args, full)}"]
    if t == "tool_result":
        c = b.get("content", "")
        if isinstance(c, list):
            texts = [str(x.get("text", "")) for x in c
                     if isinstance(x, dict) and x.get("type") == "text"]
            others = [str(x.get("type")) for x in c
                      if not (isinstance(x, dict) and x.get("type") == "text")]
            c = "\n".join(texts) + "".join(f" [{o}]" for o in others)
        text = str(c)
        err = " ERROR" if b.get("is_error") else ""
        nlines = text.count("\n") + 1 if text else 0
        head = f"← tool_result [{b.get('tool_use_id')}]{err} {nlines} line(s), {len(text)} chars"
        if full:
            return [head + ":", *text.splitlines()]
        first = text.strip().splitlines()[0] if text.strip() else ""
        return [head + (": " + summarise(first, False, 80) if first else "")]
    if t in ("thinking", "redacted_thinking"):
        body = str(b.get("thinking", b.get("data", "")))
        return [f"[{t}] " + summarise(body, full, 80)]
    if t == "image":
        src = b.get("source", {})
        return [f"[image {src.get('media_type', '') if isinstance(src, dict) else ''}]".replace(" ]", "]")]
    return [f"[{t}]"]


@main.command()
@click.argument("name", shell_complete=agent_or_path)
@click.option("--full", is_flag=True, help="do not shorten tool calls and results")
@mount_option
def log(name: str, full: bool, mount_opt: str | None) -> None:
    """Show agent NAME's transcript, readably."""
    a = the_agent(name, mount_opt)
    with client_errors():
        messages = a.transcript()
    for i, m in enumerate(messages, 1):
        head, lines = message_lines(i, m, full)
        click.echo(click.style(head, bold=True))
        for line in lines:
            click.echo(line)


def message_lines(i: int, m: Any, full: bool) -> tuple[str, list[str]]:
    """Transcript line `i` for a reader: its heading ("── I ROLE ───") and its
    content, indented (what `agentfs log` prints, and `agentfs top`'s log view)."""
    role = m.get("role", "?") if isinstance(m, dict) else "?"
    content = m.get("content", "") if isinstance(m, dict) else m
    if isinstance(content, str):
        lines = content.splitlines() or [""]
    else:
        lines = [line for b in content for line in block_lines(b, full)]
    head = f"── {i} {role} " + "─" * max(0, 60 - len(role))
    return head, ["  " + line if line else "" for line in lines]


@main.command()
@click.option("--once", is_flag=True,
              help="print the table once (at the terminal's width, else 80) and exit; "
                   "also what happens when stdout is not a terminal")
@mount_option
def top(once: bool, mount_opt: str | None) -> None:
    """A live view of the agents: tree, state, turns, tokens, cache share, cost,
    inbox depth, time since the last turn. Keys: arrows or j/k select; enter
    shows the log, t follows the transcript, m sends a message, f forks, s stops
    the runner; r re-reads; q quits."""
    from .top import run_top

    run_top(client_mount(mount_opt), once)


@main.command()
@mount_option
def export(mount_opt: str | None) -> None:
    """The fork/spawn tree as JSONL: name, parent, origin, kind, shared_prefix_turns,
    turns, status (and "inferred": true where the mount does not expose lineage)."""
    import json

    from agentfs.cli.progress import progress_bar

    records = lineage_records(mount_opt)
    with progress_bar("export", "records", plain=False) as bar:
        for i, r in enumerate(records, 1):
            click.echo(json.dumps(r, ensure_ascii=False, sort_keys=True))
            bar(i, len(records))


def _register_commands() -> None:
    """Commands kept in modules of their own."""
    from agentfs.cli.importer import import_command

    main.add_command(import_command)


_register_commands()


main.add_command(events_command)


if __name__ == "__main__":
    main()
