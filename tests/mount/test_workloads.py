"""Real tools running inside the mount: git, venv, sqlite (WAL), tar, rsync, make.

Every tool runs in a subprocess with a timeout, so a hung daemon fails the test
instead of hanging pytest.  Run against tmpfs to check the tests themselves:

    AGENTFS_TEST_TARGET=/dev/shm/t python -m pytest tests/mount/test_workloads.py
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TIMEOUT = 120


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    if check and res.returncode != 0:
        pytest.fail(f"{cmd!r} in {cwd} exited {res.returncode}\n"
                    f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res


# --------------------------------------------------------------------------- git

@pytest.fixture
def git_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
               LC_ALL="C", GIT_TERMINAL_PROMPT="0")
    return env


GIT_ID = ["-c", "user.name=Agent Test", "-c", "user.email=agent@example.com",
          "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]


def git(repo: Path, env: dict[str, str], *args: str, check: bool = True) -> str:
    return run(["git", *GIT_ID, *args], cwd=repo, env=env, check=check).stdout


def make_repo(repo: Path, env: dict[str, str]) -> None:
    repo.mkdir()
    git(repo, env, "init", "-q")
    (repo / "README.md").write_text("# hello\n")
    (repo / "src").mkdir()
    (repo / "src" / "main.py").write_text("print('hi')\n" * 50)
    (repo / "src" / "util.py").write_text("def f():\n    return 1\n")
    (repo / "data.bin").write_bytes(os.urandom(200_000))
    git(repo, env, "add", "-A")
    git(repo, env, "commit", "-q", "-m", "initial commit")


def test_git_init_add_commit_status_log(mnt: Path, git_env: dict[str, str]) -> None:
    repo = mnt / "repo"
    make_repo(repo, git_env)
    assert git(repo, git_env, "status", "--porcelain") == ""

    # Second commit: a modification, a new file, a deletion and a rename.
    with open(repo / "README.md", "a") as f:
        f.write("more\n")
    (repo / "src" / "new.py").write_text("x = 1\n")
    (repo / "src" / "util.py").unlink()
    git(repo, git_env, "mv", "data.bin", "renamed.bin")
    status = git(repo, git_env, "status", "--porcelain").splitlines()
    assert sorted(status) == sorted([
        " M README.md", "?? src/new.py", " D src/util.py", "R  data.bin -> renamed.bin",
    ])
    git(repo, git_env, "add", "-A")
    git(repo, git_env, "commit", "-q", "-m", "second commit")
    assert git(repo, git_env, "status", "--porcelain") == ""

    log = git(repo, git_env, "log", "--format=%s").splitlines()
    assert log == ["second commit", "initial commit"]
    files = git(repo, git_env, "ls-files").split()
    assert files == ["README.md", "renamed.bin", "src/main.py", "src/new.py"]
    assert git(repo, git_env, "show", "HEAD~1:src/util.py") == "def f():\n    return 1\n"

    # Repack everything (lots of temp files, renames, fsyncs) and verify the objects.
    git(repo, git_env, "gc", "-q", "--aggressive", "--prune=now")
    git(repo, git_env, "fsck", "--full", "--strict")
    assert git(repo, git_env, "status", "--porcelain") == ""
    assert git(repo, git_env, "log", "--format=%s").splitlines() == log

    # Clone inside the mount and check out the same tree.
    run(["git", *GIT_ID, "clone", "-q", str(repo), str(mnt / "clone")], env=git_env)
    assert (mnt / "clone" / "renamed.bin").read_bytes() == (repo / "renamed.bin").read_bytes()
    assert git(mnt / "clone", git_env, "rev-parse", "HEAD") == git(repo, git_env, "rev-parse", "HEAD")


@pytest.mark.agentfs_only
def test_fork_git_repo(mount, git_env: dict[str, str]) -> None:
    repo = mount.path / "repo"
    repo2 = mount.path / "repo2"
    make_repo(repo, git_env)
    head = git(repo, git_env, "rev-parse", "HEAD")

    mount.cli("fork", str(repo), str(repo2))

    assert git(repo2, git_env, "rev-parse", "HEAD") == head
    assert git(repo2, git_env, "status", "--porcelain") == ""
    with open(repo2 / "src" / "main.py", "a") as f:
        f.write("print('only in the fork')\n")
    assert git(repo2, git_env, "status", "--porcelain") == " M src/main.py\n"
    assert git(repo, git_env, "status", "--porcelain") == ""
    assert "only in the fork" not in (repo / "src" / "main.py").read_text()

    # Commits in the fork do not leak into the source repository either.
    git(repo2, git_env, "commit", "-q", "-am", "fork commit")
    assert git(repo2, git_env, "log", "--format=%s").splitlines() == ["fork commit", "initial commit"]
    assert git(repo, git_env, "log", "--format=%s").splitlines() == ["initial commit"]
    assert git(repo, git_env, "rev-parse", "HEAD") == head
    assert git(repo, git_env, "status", "--porcelain") == ""
    git(repo, git_env, "fsck", "--full", "--strict")
    git(repo2, git_env, "fsck", "--full", "--strict")


# -------------------------------------------------------------------------- venv

def test_venv(mnt: Path) -> None:
    venv = mnt / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    assert os.path.islink(py) or os.access(py, os.X_OK)
    out = run([str(py), "-c", "import sys; print(sys.prefix); print('hello from venv')"]).stdout
    assert out.splitlines() == [str(venv), "hello from venv"]

    # A module dropped into site-packages is importable from the venv.
    site = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    assert Path(site).is_relative_to(venv)
    (Path(site) / "agentfs_probe.py").write_text("VALUE = 42\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = run([str(py), "-c", "import agentfs_probe; print(agentfs_probe.VALUE)"], env=env).stdout
    assert out.strip() == "42"
    assert list((Path(site) / "__pycache__").glob("agentfs_probe.*.pyc"))


# ------------------------------------------------------------------------ sqlite

SQLITE_WRITER = textwrap.dedent("""
    import sqlite3, sys
    from contextlib import closing
    path = sys.argv[1]
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")
        n = 0
        for batch in range(4):
            db.execute("BEGIN")
            for i in range(750):
                db.execute("INSERT INTO t (k, v) VALUES (?, ?)",
                           (f"key-{n}", bytes([n % 251]) * (n % 700)))
                n += 1
            db.execute("COMMIT")
        # A second connection (shared -shm mapping) sees the committed rows
        # while the first one still holds the WAL open.
        with closing(sqlite3.connect(path)) as other:
            assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 3000
        db.execute("BEGIN")
        db.execute("UPDATE t SET v = zeroblob(100) WHERE id % 10 = 0")
        db.execute("DELETE FROM t WHERE id % 100 = 1")
        db.execute("COMMIT")
        db.execute("BEGIN")
        db.execute("INSERT INTO t (k, v) VALUES ('rolled-back', NULL)")
        db.execute("ROLLBACK")
        print(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0])
""")

SQLITE_CHECKER = textwrap.dedent("""
    import sqlite3, sys
    from contextlib import closing
    with closing(sqlite3.connect(sys.argv[1])) as db:
        print(db.execute("PRAGMA integrity_check").fetchone()[0])
        print(db.execute("PRAGMA journal_mode").fetchone()[0])
        print(db.execute("SELECT count(*) FROM t").fetchone()[0])
        print(db.execute("SELECT count(*) FROM t WHERE length(v) = 100").fetchone()[0])
        print(db.execute("SELECT count(*) FROM t WHERE k = 'rolled-back'").fetchone()[0])
""")


def test_sqlite_wal(mnt: Path) -> None:
    db = mnt / "db" / "test.sqlite"
    db.parent.mkdir()
    run([sys.executable, "-c", SQLITE_WRITER, str(db)])
    out = run([sys.executable, "-c", SQLITE_CHECKER, str(db)]).stdout.split()
    # 3000 rows, 30 deleted (ids 1, 101, ...); 300 updated (ids 10, 20, ...).
    assert out == ["ok", "wal", "2970", "300", "0"]
    assert db.stat().st_size > 3000 * 100
    # Plain sqlite3 CLI too, if present, on the same file.
    if os.path.exists("/usr/bin/sqlite3"):
        res = run(["/usr/bin/sqlite3", str(db), "PRAGMA integrity_check; SELECT count(*) FROM t;"])
        assert res.stdout.split() == ["ok", "2970"]


# ---------------------------------------------------------------- tree helpers

def build_tree(root: Path) -> None:
    """A tree with nested dirs, empty/small/large/sparse files, modes, links."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_text("hello world\n")
    (root / "a" / "big.bin").write_bytes(os.urandom(1_500_000))
    (root / "a" / "b" / "c" / "deep.txt").write_text("deep\n" * 1000)
    with open(root / "a" / "sparse", "wb") as f:
        f.seek(3_000_000)
        f.write(b"end")
    for i in range(40):
        (root / "a" / "b" / f"f{i:02}").write_bytes(bytes([i]) * (i * 97))
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho ok\n")
    script.chmod(0o755)
    (root / "secret").write_text("s\n")
    (root / "secret").chmod(0o600)
    (root / "a" / "b").chmod(0o750)
    os.symlink("a/b/c/deep.txt", root / "link_rel")
    os.symlink("dangling-target", root / "link_dangling")
    os.link(root / "small.txt", root / "a" / "hardlink.txt")
    past = time.time() - 86400
    os.utime(root / "small.txt", (past, past))


def tree_summary(root: Path) -> dict[str, tuple]:
    """Path -> (type, mode, size, mtime seconds, content or link target)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode))
            else:
                with open(p, "rb") as f:
                    data = f.read()
                out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_size, int(st.st_mtime), data)
    return out


def diff_r(a: Path, b: Path) -> None:
    res = run(["diff", "-r", "--no-dereference", str(a), str(b)], check=False)
    assert res.returncode == 0, f"diff -r {a} {b}:\n{res.stdout}{res.stderr}"


# --------------------------------------------------------------------------- tar

def test_tar_roundtrip(mnt: Path) -> None:
    src = mnt / "src"
    src.mkdir()
    build_tree(src)
    tarball = mnt / "tree.tar"
    run(["tar", "cf", str(tarball), "-C", str(mnt), "src"])
    assert tarball.stat().st_size > 1_500_000
    listing = run(["tar", "tf", str(tarball)]).stdout.split()
    assert "src/a/b/c/deep.txt" in listing

    dst = mnt / "extract"
    dst.mkdir()
    run(["tar", "xpf", str(tarball), "-C", str(dst)])
    diff_r(src, dst / "src")
    assert tree_summary(src) == tree_summary(dst / "src")
    # tar recreates the hard link as a hard link.
    a = os.stat(dst / "src" / "small.txt")
    b = os.stat(dst / "src" / "a" / "hardlink.txt")
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)

    # Compressed archive streamed through a pipe, extracted over the old copy.
    run(["tar", "czf", str(mnt / "tree.tgz"), "-C", str(src), "."])
    run(["tar", "xzf", str(mnt / "tree.tgz"), "-C", str(dst / "src")])
    diff_r(src, dst / "src")


# ------------------------------------------------------------------------- rsync

def test_rsync_roundtrip(mnt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    inside = mnt / "copy"
    back = tmp_path / "back"

    run(["rsync", "-aH", f"{src}/", f"{inside}/"])
    diff_r(src, inside)
    assert tree_summary(src) == tree_summary(inside)
    run(["rsync", "-aH", f"{inside}/", f"{back}/"])
    diff_r(src, back)
    assert tree_summary(src) == tree_summary(back)

    # Incremental update: modify (new size), add, delete; rsync --delete again.
    with open(src / "a" / "big.bin", "r+b") as f:
        f.seek(700_000)
        f.write(b"X" * 5000)
        f.truncate(1_400_000)
    (src / "a" / "b" / "f07").unlink()
    (src / "added.txt").write_text("new\n")
    run(["rsync", "-aH", "--delete", f"{src}/", f"{inside}/"])
    assert tree_summary(src) == tree_summary(inside)
    # Checksum mode from the mount back out: nothing must differ.
    res = run(["rsync", "-aHc", "--delete", "--itemize-changes", f"{inside}/", f"{back}/"])
    assert "a/big.bin" in res.stdout
    assert tree_summary(src) == tree_summary(back)
    res = run(["rsync", "-aHc", "--delete", "--itemize-changes", f"{src}/", f"{inside}/"])
    assert res.stdout == ""

    # Within the mount too (rsync writes temp files and renames them in place).
    run(["rsync", "-aH", f"{inside}/", f"{mnt / 'copy2'}/"])
    diff_r(inside, mnt / "copy2")


# -------------------------------------------------------------------------- make

MAKEFILE = """\
all: out/prog

out:
\tmkdir -p out

out/%.o: %.c | out
\t@echo "build $@"
\t( echo "obj($<)"; cat $< ) > $@

out/prog: out/a.o out/b.o common.h
\t@echo "link $@"
\tcat $^ > $@

clean:
\trm -rf out
"""


def test_make(mnt: Path) -> None:
    proj = mnt / "proj"
    proj.mkdir()
    (proj / "Makefile").write_text(MAKEFILE)
    (proj / "a.c").write_text("int a;\n")
    (proj / "b.c").write_text("int b;\n")
    (proj / "common.h").write_text("#define X 1\n")
    now = time.time()

    def set_time(path: str, age: float) -> None:
        os.utime(proj / path, (now - age, now - age))

    for f in ("Makefile", "a.c", "b.c", "common.h"):
        set_time(f, 100)

    out = run(["make", "-j2"], cwd=proj).stdout
    assert sorted(line for line in out.splitlines() if line.startswith(("build", "link"))) == [
        "build out/a.o", "build out/b.o", "link out/prog"]
    assert (proj / "out" / "prog").read_text() == (
        "obj(a.c)\nint a;\nobj(b.c)\nint b;\n#define X 1\n")
    assert run(["make", "-q"], cwd=proj, check=False).returncode == 0  # up to date

    # Make targets explicitly older than nothing but newer than the sources,
    # then touch a.c: only a.o and prog are rebuilt.
    for f in ("out/a.o", "out/b.o", "out/prog"):
        set_time(f, 50)
    set_time("a.c", 10)
    (proj / "a.c").write_text("int a2;\n")
    set_time("a.c", 10)
    assert run(["make", "-q"], cwd=proj, check=False).returncode == 1  # out of date
    out = run(["make"], cwd=proj).stdout
    assert [line for line in out.splitlines() if line.startswith(("build", "link"))] == [
        "build out/a.o", "link out/prog"]
    assert (proj / "out" / "prog").read_text().startswith("obj(a.c)\nint a2;\n")

    run(["make", "clean"], cwd=proj)
    assert not (proj / "out").exists()
    run(["make", "-j4"], cwd=proj)
    assert (proj / "out" / "prog").exists()
