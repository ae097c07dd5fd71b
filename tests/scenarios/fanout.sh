#!/usr/bin/env bash
# (b) An onboarded child is forked ten times; each fork gets its own task
# message; every fork's context.json carries the child's content up to the
# fork point. Usage: fanout.sh MOUNT
set -euo pipefail
M=$1
A=$M/agents
mkdir -p "$A"
mkdir "$A/child"
echo "You will be given one of ten subtasks." > "$A/child/prompt"
echo '{"role":"assistant","content":"What conventions should I follow?"}' >> "$A/child/transcript"
echo '{"role":"user","content":"Small commits, tests first."}' >> "$A/child/transcript"
echo '{"role":"assistant","content":"Understood. Ready."}' >> "$A/child/transcript"
cp "$A/child/context.json" "$M/../child.json"
for i in $(seq 1 10); do
    echo "fork task-$i" > "$A/child/ctl"
    echo "Do subtask $i." > "$A/task-$i/inbox/task"
done
[ "$(ls -d "$A"/task-* | wc -l)" -eq 10 ]
for i in $(seq 1 10); do
    [ "$(wc -l < "$A/task-$i/transcript")" -eq 3 ]
    # The fork's context is the child's, byte for byte, until the fork appends.
    cmp "$A/task-$i/context.json" "$M/../child.json"
    ls "$A/task-$i/inbox" | grep -q -- "+task$"
    echo '{"role":"user","content":"Do subtask '"$i"'."}' >> "$A/task-$i/transcript"
done
# After the fork's own turn, the child's messages are still its prefix.
python3 - "$M/../child.json" "$A/task-7/context.json" <<'PY'
import json, sys
parent, fork = (json.load(open(p)) for p in sys.argv[1:])
strip = lambda m: json.loads(json.dumps(m).replace(', "cache_control": {"type": "ephemeral"}', "").replace('"cache_control": {"type": "ephemeral"}, ', ""))
pm = [strip(m) for m in parent["messages"]]
fm = [strip(m) for m in fork["messages"]]
assert parent["system"] == fork["system"]
assert fm[:len(pm) - 1] == pm[:-1], "fork does not carry the child's messages"
assert fm[len(pm) - 1]["content"][:len(pm[-1]["content"])] == pm[-1]["content"]
PY
echo "fanout: ok"
