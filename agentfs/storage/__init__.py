"""The storage layer: the one key-value seam (`kv`), its engines, the key
schema, record encoding, versioned views (`views`), garbage collection and
the store lock. Nothing here knows about files, agents, FUSE or trio."""
