"""The seed's workflows as plain bash scripts against a real mount (tests/scenarios)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.sh"))


@pytest.mark.agentfs_only
@pytest.mark.parametrize("script", SCENARIOS, ids=lambda p: p.stem)
def test_scenario(mount, script: Path) -> None:  # type: ignore[no-untyped-def]
    res = subprocess.run(["bash", str(script), str(mount.path)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, f"{script.name} failed:\n{res.stdout}\n{res.stderr}"
    assert f"{script.stem}: ok" in res.stdout
