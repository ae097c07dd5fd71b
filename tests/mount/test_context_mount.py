"""context.json and observations/ through the mount, over a 50-turn session.

Bulky tool results (10-200 KB) go into the transcript with `>>`; after every
turn `context.json` is read back. Its model-visible content must extend the
previous turn's except at the compaction steps the daemon records, stay under
the agent's budget, and every stub must name a file under observations/ that
restores the original output byte for byte. The transcript stores those
outputs compressed (st_blocks well under the size).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest

from agentfs.agents.render import CompactionState, Policy, estimate_tokens, is_extension, render

pytestmark = pytest.mark.agentfs_only

STUB = re.compile(r"\[observation (turn-\d{5}-[A-Za-z0-9_-]+): (\d+) bytes, stored at "
                  r"\./observations/(turn-\d{5}-[A-Za-z0-9_-]+) — read that file to restore "
                  r"it\. Excerpt: (.*)…\]\Z", re.S)


def words(rng: random.Random, n: int) -> str:
    vocab = ["alpha", "beta", "gamma", "delta", "parser", "token", "error:", "ok", "\n",
             "line", "42", "src/main.rs", "fn", "}", "{", "test", "passed", "failed"]
    out: list[str] = []
    size = 0
    while size < n:
        w = rng.choice(vocab)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n]


def session(seed: int, turns: int) -> tuple[list[bytes], dict[str, str]]:
    rng = random.Random(seed)
    lines, outputs = [], {}
    for t in range(1, turns + 1):
        if t % 2:
            msg: dict[str, Any] = {"role": "assistant", "content": [
                {"type": "text", "text": f"Step {t}."},
                {"type": "tool_use", "id": f"toolu_{t:03d}", "name": "bash",
                 "input": {"cmd": f"cat part{t}"}}]}
        else:
            tid = f"toolu_{t - 1:03d}"
            outputs[tid] = words(rng, rng.randint(10_000, 200_000))
            msg = {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tid, "content": outputs[tid]}]}
        lines.append(json.dumps(msg).encode() + b"\n")
    return lines, outputs


def test_fifty_turns_through_the_mount(mnt: Path) -> None:
    assert (mnt / "agents").is_dir()  # every mount has it
    a = mnt / "agents" / "coder"
    a.mkdir()
    system, prompt = "You port parsers.", "Port the parser."
    (a / "system").write_text(system)
    (a / "prompt").write_text(prompt)
    policy = Policy(budget_tokens=150_000, keep_recent_turns=2, excerpt_chars=100)
    (a / "config").write_text(policy.render())
    lines, outputs = session(99, 50)
    sent: list[dict[str, Any]] = []
    state, prev = CompactionState(), b""
    compactions = []
    for t, line in enumerate(lines, 1):
        with open(a / "transcript", "ab") as f:
            f.write(line)
        sent.append(json.loads(line))
        body = (a / "context.json").read_bytes()
        assert body == (a / "context.json").read_bytes(), "not deterministic"
        expected, new = render(".", system, [], prompt, sent, None, policy, state)
        assert body == expected + b"\n", f"turn {t}: not the oracle's bytes"
        assert estimate_tokens(body, policy) <= policy.budget_tokens, f"turn {t} over budget"
        if new != state:
            compactions.append(t)
        elif prev:
            assert is_extension(prev, body), f"turn {t} rewrote the past without a compaction"
        state, prev = new, body
        # Every stub names a file that restores the output byte for byte.
        for m in json.loads(body)["messages"]:
            for b in m["content"]:
                if b["type"] != "tool_result" or not isinstance(b["content"], list):
                    continue
                found = STUB.match(b["content"][0].get("text", ""))
                if found is None:
                    continue
                oid = found[1]
                assert found[3] == oid
                restored = (a / "observations" / oid).read_bytes()
                assert restored == outputs[b["tool_use_id"]].encode()
                assert int(found[2]) == len(restored)
    print(f"compactions at turns {compactions}")
    assert len(compactions) >= 2, compactions
    assert min(y - x for x, y in zip(compactions, compactions[1:], strict=False)) >= 3
    # All 25 outputs are files; the transcript holds them once, compressed.
    names = sorted(os.listdir(a / "observations"))
    assert len(names) == 25
    st = os.stat(a / "transcript")
    assert st.st_blocks * 512 < st.st_size / 2, (st.st_blocks * 512, st.st_size)
