"""One module per mlpbench subcommand; see mlp.cli."""
