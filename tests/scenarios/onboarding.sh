#!/usr/bin/env bash
# (a) A parent spawns a child; the child asks its parent two questions through
# the parent's inbox and blocks for each answer; the parent answers.
# Only coreutils and the mount: usage: onboarding.sh MOUNT
set -euo pipefail
M=$1
mkdir -p "$M/agents"
mkdir "$M/agents/parent"
echo "Coordinate the release." > "$M/agents/parent/prompt"
# The child is spawned from inside the parent's directory: the parent is recorded.
(cd "$M/agents/parent" && mkdir ../child)
[ "$(cat "$M/agents/child/parent")" = parent ]
echo "Write the release notes." > "$M/agents/child/prompt"

# Each side runs as its own process with AGENTFS_AGENT in its environment
# (the daemon reads a writer's environment to record the sender).
child() {
    for q in "Which version?" "Who signs off?"; do
        echo "$q" > "$M/agents/parent/inbox/question"
        msg=$(cat "$M/agents/child/inbox/.wait-20")       # blocks until the answer arrives
        [ -n "$msg" ] || { echo "child: no answer" >&2; exit 1; }
        echo "child got: $(cat "$M/agents/child/inbox/$msg")"
        rm "$M/agents/child/inbox/$msg"
    done
}

parent() {
    for answer in "2.0" "Ada"; do
        msg=$(cat "$M/agents/parent/inbox/.wait-20")
        [ -n "$msg" ] || { echo "parent: no question" >&2; exit 1; }
        case "$msg" in *-child+question) ;; *) echo "unexpected sender: $msg" >&2; exit 1;; esac
        echo "parent got: $(cat "$M/agents/parent/inbox/$msg")"
        rm "$M/agents/parent/inbox/$msg"
        echo "$answer" > "$M/agents/child/inbox/answer"
    done
}

export M
AGENTFS_AGENT=child bash -c "set -euo pipefail; $(declare -f child); child" > "$M/../child.out" &
cpid=$!
AGENTFS_AGENT=parent bash -c "set -euo pipefail; $(declare -f parent); parent"
wait $cpid
cat "$M/../child.out"
grep -qx "child got: 2.0" "$M/../child.out"
grep -qx "child got: Ada" "$M/../child.out"
[ -z "$(ls "$M/agents/parent/inbox")" ]
[ -z "$(ls "$M/agents/child/inbox")" ]
echo "onboarding: ok"
