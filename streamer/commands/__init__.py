"""Sub-commands of the `streamer` CLI: each module has `register(subparsers)` and `run(args) -> int`."""
