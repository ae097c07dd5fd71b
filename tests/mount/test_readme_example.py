"""The README's runner example runs exactly as written, against the fake
Messages API started the way the README says, with the script the README
names (tests/scenarios/readme_runner.jsonl): the block is taken from
README.md itself, so the two cannot drift apart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "scenarios" / "readme_runner.jsonl"
SECTION = "## Running Claude agents on agentfs"

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("AGENTFS_TEST_TARGET")), reason="needs a real agentfs mount")


def readme_example() -> str:
    """The first ```sh block of the README's runner section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION):]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    assert m, f"no sh block in {SECTION!r}"
    return m.group(1)


def test_readme_runner_example_runs_as_written(mnt: Path, tmp_path: Path) -> None:
    block = readme_example()
    assert "agentfs run agents/lead" in block and "cd ~/agents" in block
    home = tmp_path / "home"
    home.mkdir()
    (home / "agents").symlink_to(mnt)  # ~/agents is the mount
    with subprocess.Popen([sys.executable, "-m", "agentfs.client.fake_messages_api",
                           "--script", str(SCRIPT)], stdout=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as api:
        assert api.stdout is not None
        url = api.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AGENTFS_", "ANTHROPIC_"))}
        # As after `. .venv/bin/activate`: `agentfs` is on PATH.
        env.update(HOME=str(home), ANTHROPIC_BASE_URL=url,
                   PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
        try:
            res = subprocess.run(["bash", "-e", "-c", block], env=env, cwd=str(home),
                                 capture_output=True, text=True, timeout=300,
                                 stdin=subprocess.DEVNULL)
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    agents = mnt / "agents"
    readme = (agents / "helper" / "workspace" / "README.md").read_text()
    assert readme.startswith("# tally\n")
    assert readme in res.stdout  # the block's `cat`
    assert "Shell users who know grep" in res.stdout  # agentfs log lead
    for name in ("lead", "helper"):
        assert (agents / name / "status").read_text().startswith("done"), name
        assert f"agent {name}" in res.stdout  # their usage files
    assert "cache_read_share" in res.stdout
