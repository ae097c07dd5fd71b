"""The repository layout and the direction of dependencies.

    agentfs/   the core, in layers, each importing only the ones below it:
                 errors            the one error type
                 storage/          KV seam, engines, key schema, views, gc, lock
                 posix/            the POSIX model over views
                 agents/           agents, control commands, context rendering
                 fsck              checks every layer's records
                 cli/              the `agentfs` command: the top floor, the only
                                   part that may import daemon/ and client/ (lazily)
               No FUSE, no trio, no Anthropic API at import time.
    daemon/    installed as agentfs.daemon: the pyfuse3 front of the core.
    client/    installed as agentfs.client: what agents use; never the daemon.

daemon/ and client/ live at the top of the repository but install inside the
agentfs package (pyproject's package-dir): the wheel must hold
agentfs/daemon/... and agentfs/client/..., and no top-level daemon/ (a name
that belongs to python-daemon).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"agentfs": REPO / "agentfs", "agentfs.daemon": REPO / "daemon",
            "agentfs.client": REPO / "client"}


def sources(package: str) -> list[Path]:
    return sorted(PACKAGES[package].rglob("*.py"))


def module_name(package: str, path: Path) -> str:
    rel = path.relative_to(PACKAGES[package]).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([package, *parts])


def imports(path: Path, package: str, top_level_only: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for each import; relative ones resolved.

    With top_level_only, imports inside function bodies (run lazily) are
    skipped; everything else, including class bodies and `if TYPE_CHECKING:`
    blocks, counts.
    """
    tree = ast.parse(path.read_text(), str(path))
    mod = module_name(package, path)
    is_pkg = path.name == "__init__.py"
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]

    def walk(node: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef
                                             | ast.Lambda):
                continue
            yield child
            yield from walk(child)

    for node in walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - (node.level - 1)]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from . import daemon` imports agentfs.daemon
                yield node.lineno, f"{target}.{alias.name}"


def offenders(package: str, banned: set[str], top_level_only: bool) -> list[str]:
    found = []
    for path in sources(package):
        for line, name in imports(path, package, top_level_only):
            if any(name == b or name.startswith(b + ".") for b in banned):
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return found


def test_every_package_has_sources() -> None:
    for package, directory in PACKAGES.items():
        assert (directory / "__init__.py").exists(), f"{package}: no {directory}/__init__.py"
    assert (REPO / "daemon" / "operations.py").exists()
    assert (REPO / "daemon" / "main.py").exists()


CORE_LAYERS = ["agentfs.errors", "agentfs.storage", "agentfs.posix", "agentfs.agents",
               "agentfs.fsck", "agentfs.cli"]


def layer_of(module: str) -> int | None:
    for i, prefix in enumerate(CORE_LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


def test_every_core_module_is_in_a_layer() -> None:
    loose = [m for m in (module_name("agentfs", p) for p in sources("agentfs"))
             if m != "agentfs" and layer_of(m) is None]
    assert loose == [], f"core modules outside the layers {CORE_LAYERS}: {loose}"


def test_core_layers_import_only_downwards() -> None:
    """storage <- posix <- agents <- fsck <- cli, lazy imports included."""
    found = []
    for path in sources("agentfs"):
        mine = layer_of(module_name("agentfs", path))
        if mine is None:
            continue
        for line, name in imports(path, "agentfs", top_level_only=False):
            theirs = layer_of(name)
            if theirs is not None and theirs > mine:
                found.append(f"{path.relative_to(REPO)}:{line} imports {name} "
                             f"(layer {CORE_LAYERS[theirs]} is above {CORE_LAYERS[mine]})")
    assert found == []


def test_only_the_cli_reaches_the_daemon_and_the_client() -> None:
    banned = {"agentfs.daemon", "agentfs.client", "pyfuse3", "trio", "anthropic"}
    found = []
    for path in sources("agentfs"):
        if layer_of(module_name("agentfs", path)) == CORE_LAYERS.index("agentfs.cli"):
            continue
        found += [f"{path.relative_to(REPO)}:{line} imports {name}"
                  for line, name in imports(path, "agentfs", top_level_only=False)
                  if any(name == b or name.startswith(b + ".") for b in banned)]
    assert found == []


def test_core_imports_no_frontend_at_import_time() -> None:
    banned = {"pyfuse3", "trio", "anthropic", "agentfs.daemon", "agentfs.client"}
    assert offenders("agentfs", banned, top_level_only=True) == []


def test_daemon_never_imports_the_client() -> None:
    assert offenders("agentfs.daemon", {"agentfs.client"}, top_level_only=False) == []


def test_client_never_imports_the_daemon_or_fuse() -> None:
    banned = {"agentfs.daemon", "pyfuse3"}
    assert offenders("agentfs.client", banned, top_level_only=False) == []


def test_no_import_uses_the_repository_layout() -> None:
    """`import daemon` works from a checkout by accident and breaks once installed."""
    found = []
    for package in PACKAGES:
        found += offenders(package, {"daemon", "client"}, top_level_only=False)
    assert found == []


def test_importing_the_core_loads_no_frontend() -> None:
    """The same at run time: import every core module, then look at sys.modules."""
    modules = [module_name("agentfs", p) for p in sources("agentfs") if p.name != "__main__.py"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pyfuse3', 'trio', 'anthropic')"
        " or m.startswith(('agentfs.daemon', 'agentfs.client')))\n"
        "print(' '.join(bad))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"importing the core loaded: {res.stdout}"


# ----------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from a copy of the sources (keeps build/ out of the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("agentfs", "daemon", "client"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    out = base / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src),
                          "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (whl,) = out.glob("agentfs-*.whl")
    return whl


def test_wheel_installs_daemon_and_client_inside_agentfs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("agentfs/__init__.py", "agentfs/cli/main.py", "agentfs/daemon/__init__.py",
                     "agentfs/daemon/main.py", "agentfs/daemon/operations.py",
                     "agentfs/client/__init__.py"):
        assert required in names, f"{required} missing from {wheel.name}: {sorted(names)}"
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"agentfs", f"agentfs-{wheel.name.split('-')[1]}.dist-info"}, tops
    # Every source file made it, under its installed name.
    for package, directory in PACKAGES.items():
        for path in sources(package):
            inside = package.replace(".", "/") + "/" + str(path.relative_to(directory))
            assert inside in names, f"{path.relative_to(REPO)} is not in the wheel as {inside}"


def test_wheel_metadata(wheel: Path) -> None:
    z = zipfile.ZipFile(wheel)
    info = wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"
    entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert "agentfs = agentfs.cli.main:main" in entry_points
    metadata = z.read(f"{info}/METADATA").decode()
    for dep in ("pyfuse3", "trio", "lmdb", "msgpack", "click", "anthropic"):
        assert f"Requires-Dist: {dep}" in metadata, dep
    assert "agentfs" in metadata.split("\n\n", 1)[1], "README.md is not the long description"


def test_wheel_contents_import(wheel: Path, tmp_path: Path) -> None:
    """The installed layout imports (relative imports inside daemon/ resolve)."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "import agentfs.cli.main, agentfs.daemon.main, agentfs.daemon.operations, agentfs.client\n"
        "for m in (agentfs.cli.main, agentfs.daemon.main, agentfs.client):\n"
        f"    assert m.__file__.startswith({str(site)!r}), m.__file__\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
