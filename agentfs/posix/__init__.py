"""The POSIX model over versioned views: inodes, directory entries, file data
(blocks and append-only logs), xattrs, forks and snapshots. Built on
`agentfs.storage` only."""
