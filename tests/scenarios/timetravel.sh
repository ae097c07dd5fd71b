#!/usr/bin/env bash
# (c) An agent runs 20 turns that change its workspace, then is forked at
# turn 5: the fork's transcript has 5 lines and its workspace equals
# .snapshots/turn-5 of the parent; a message from the "future" lands in the
# fork's inbox. Usage: timetravel.sh MOUNT
set -euo pipefail
M=$1
A=$M/agents
mkdir -p "$A"
mkdir "$A/worker"
echo "Refactor the module." > "$A/worker/prompt"
for i in $(seq 1 20); do
    echo "step $i" > "$A/worker/workspace/step.txt"
    mkdir -p "$A/worker/workspace/dir-$i"
    if [ $((i % 2)) -eq 1 ]; then role=user; else role=assistant; fi
    echo '{"role":"'$role'","content":"turn '$i'"}' >> "$A/worker/transcript"
done
[ "$(cat "$A/worker/status")" = "idle turns=20" ]
echo "fork past at 5" > "$A/worker/ctl"
[ "$(wc -l < "$A/past/transcript")" -eq 5 ]
diff -r "$A/past/workspace" "$A/worker/.snapshots/turn-5/workspace"
[ "$(cat "$A/past/workspace/step.txt")" = "step 5" ]
[ ! -e "$A/past/workspace/dir-6" ]
AGENTFS_AGENT=worker sh -c "echo 'The answer, found at turn 20: 42.' > '$A/past/inbox/from-the-future'"
msg=$(cat "$A/past/inbox/.wait-5")
[ "$msg" = "000001-worker+from-the-future" ]
grep -q 42 "$A/past/inbox/$msg"
echo "timetravel: ok"
