"""The agent layer: agents as directories (spawn, fork, transcripts, inboxes),
control commands, and the rendering of `context.json`. Built on
`agentfs.posix` and `agentfs.storage`."""
