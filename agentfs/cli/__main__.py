"""`python -m agentfs.cli`."""

from agentfs.cli.main import main

main()
