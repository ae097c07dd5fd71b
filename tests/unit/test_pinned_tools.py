"""The test tools are pinned exactly in pyproject's `test` extra, and the
virtualenv holds those versions: lint and type-check results change only
when this repository does."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"pytest", "pytest-timeout", "hypothesis", "ruff", "mypy"}


def test_test_tools_are_pinned_and_installed() -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["test"]
    pins = {}
    for req in extra:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", req)
        assert m, f"test tool {req!r} is not pinned with =="
        pins[m.group(1).lower()] = m.group(2)
    assert set(pins) == TOOLS
    for name, version in pins.items():
        assert metadata.version(name) == version, (
            f"{name} {metadata.version(name)} installed, {version} pinned: run scripts/install")
