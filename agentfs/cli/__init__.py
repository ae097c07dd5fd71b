"""The `agentfs` command: the top floor of the program (it alone may import the
daemon and the client, lazily)."""
